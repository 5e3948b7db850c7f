// `explain` as users run it: a child process, a request described on the command line, the report on
// stdout. The processor behind it is the server's own, so these check the CLI's emulation of Envoy and
// its report, not the rewrite rules (those have their own tests).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BODY_MODES, type ConfiguredBodyMode, type Explanation } from '../src/explain-call.js';
import { runExplain } from '../src/explain.js';
import { jsonRequest, recommendedEnvoy, startTestServer, staticEnvoy, upstreamOf, type TestServer } from './support/harness.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CALLER_KEY = 'sk-PLANTED-CALLER-KEY-42';
const FILE_KEY = 'sk-PLANTED-FILE-KEY-77';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'extproc-explain-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function write(name: string, content: string | Buffer): string {
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
}

/** Runs the CLI with a clean environment (no EXTPROC_* from the developer's shell). */
function explain(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('EXTPROC_') && name !== 'LOG_LEVEL'));
  const run = spawnSync(process.execPath, ['--import', 'tsx', 'src/explain.ts', ...args], { cwd: ROOT, env, encoding: 'utf8', timeout: 20_000 });
  return { status: run.status, stdout: run.stdout, stderr: run.stderr };
}

const DEPLOYMENT_PATH = '/openai/deployments/gpt-image-1/images/generations?api-version=2025-04-01-preview';
const JSON_BODY = '{"model":"gpt-image-1","prompt":"a lighthouse at dawn","size":"1024x1024"}';
const EDITED = '{"prompt":"a lighthouse at dawn","size":"1024x1024"}';
const [BEFORE, AFTER] = [JSON_BODY.length, EDITED.length];

const multipart = (boundary: string): Buffer =>
  Buffer.concat([
    Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-image-1\r\n`),
    Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="image"; filename="cat.png"\r\nContent-Type: image/png\r\n\r\n`),
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0xff]),
    Buffer.from(`\r\n--${boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nadd a hat\r\n--${boundary}--\r\n`),
  ]);

describe('explain', () => {
  it('shows the rewrite of a deployment-route JSON body with model, masking credentials', () => {
    const body = write('generation.json', JSON_BODY);
    const run = explain(
      '--path', DEPLOYMENT_PATH,
      '-H', 'content-type: application/json',
      '-H', `content-length: ${JSON_BODY.length}`,
      '-H', `api-key: ${CALLER_KEY}`,
      '--body-file', body,
    );
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/route +deployment generations, deployment "gpt-image-1"/);
    expect(run.stdout).toMatch(new RegExp(`result +rewritten \\(model\\); json body ${BEFORE} -> ${AFTER} bytes; body mode BUFFERED`));
    expect(run.stdout).toMatch(/<- request_headers: CONTINUE, mode_override request_body_mode=BUFFERED response_body_mode=NONE/);
    expect(run.stdout).toMatch(/body sent +BUFFERED in 1 message \(asked by the server with mode_override\)/);
    expect(run.stdout).toMatch(new RegExp(`body answer +set content-length: ${AFTER}\n`));
    expect(run.stdout).toMatch(new RegExp(`:path +${DEPLOYMENT_PATH.replace(/[?]/g, '\\?')} \\(unchanged\\)`));
    expect(run.stdout).toMatch(/clear_route_cache +no/);
    expect(run.stdout).toMatch(new RegExp(`bytes +${BEFORE} -> ${AFTER}\n`));
    expect(run.stdout).toMatch(/removed +model\n/);
    expect(run.stdout).toContain(`result            ${EDITED}\n`);
    expect(run.stdout).toMatch(/api-key +\[hidden, 24 characters\]/);
    expect(run.stdout).not.toContain(CALLER_KEY);
  });

  it('shows the multipart edit: model part removed, the remaining parts by name and size', () => {
    const body = multipart('----form7MA4YWxk');
    const path = write('edit.multipart', body);
    const run = explain(
      '--path', 'https://example.openai.azure.com/openai/deployments/img/images/edits?api-version=2025-04-01-preview',
      '-H', 'content-type: multipart/form-data; boundary=----form7MA4YWxk',
      '-H', `content-length: ${body.length}`,
      '--body-file', path,
      '--mode', 'STREAMED',
    );
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/route +deployment edits, deployment "img"/);
    expect(run.stdout).toMatch(/result +rewritten \(model\); multipart body \d+ -> \d+ bytes; body mode STREAMED/);
    expect(run.stdout).toMatch(/Envoy body mode +STREAMED/);
    expect(run.stdout).toMatch(/mode_override +none/);
    expect(run.stdout).toMatch(/removed part +model, 11 bytes\n/);
    expect(run.stdout).toMatch(/part +image filename="cat.png" image\/png, 10 bytes/);
    expect(run.stdout).toMatch(/part +prompt, 9 bytes/);
    expect(run.stdout).toContain('Envoy removes content-length in STREAMED mode');
    // Binary content is summarised, never printed.
    expect(run.stdout).not.toContain('PNG');
  });

  it('shows a non-image route passing untouched, its body never sent to the server', () => {
    const body = write('chat.json', '{"model":"gpt-4o","messages":[]}');
    const run = explain('--path', '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21', '-H', 'content-type: application/json', '--body-file', body);
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/route +none \(not an image route\)/);
    expect(run.stdout).toMatch(/result +passed unchanged \(not_image_route\)/);
    expect(run.stdout).toMatch(/<- request_headers: CONTINUE\n/);
    expect(run.stdout).toMatch(/body sent +not sent: it flows to the upstream unchanged/);
    expect(run.stdout).toMatch(/header mutations +none/);
    expect(run.stdout).toMatch(/bytes +32 -> 32 \(unchanged\)/);
  });

  it('prints a machine-readable report with --json, following a configuration file', () => {
    const keyFile = write('api-key', `${FILE_KEY}\n`);
    const config = write(
      'config.yaml',
      [
        'rewrite:',
        '  openaiPaths: { enabled: true }',
        '  apiVersion: { default: 2025-04-01-preview }',
        '  deployments: { gpt-image-1: images-prod }',
        'credentials:',
        `  apiKeyFile: ${keyFile}`,
        'metadataNamespace: azure_image_extproc',
      ].join('\n'),
    );
    const body = write('openai.json', JSON_BODY);
    const run = explain(
      '--config', config,
      '--path', '/v1/images/generations',
      '-H', 'content-type: application/json',
      '-H', `content-length: ${JSON_BODY.length}`,
      '-H', `authorization: Bearer ${CALLER_KEY}`,
      '--body-file', body,
      '--json',
    );
    expect(run.status).toBe(0);
    const report = JSON.parse(run.stdout) as Explanation;
    expect(report.configFile).toBe(config);
    expect(report.result.kind).toBe('rewritten');
    expect(report.route).toMatchObject({ kind: 'openai', operation: 'generations' });
    expect(report.path).toEqual({
      before: '/v1/images/generations',
      after: '/openai/deployments/images-prod/images/generations?api-version=2025-04-01-preview',
      changed: true,
    });
    expect(report.clearRouteCache).toBe(true);
    expect(report.modeOverride).toEqual({ request_body_mode: 'BUFFERED', response_body_mode: 'NONE' });
    expect(report.headerChanges).toContainEqual({ phase: 'request_headers', action: 'remove', name: 'authorization', applied: true });
    expect(report.headerChanges).toContainEqual({ phase: 'request_headers', action: 'set', name: 'api-key', value: '[hidden, 22 characters]', applied: true });
    expect(report.dynamicMetadata).toMatchObject({ azure_image_extproc: { action: 'rewritten', route: 'openai' } });
    expect(report.body).toMatchObject({ kind: 'json', removed: ['model'], bytesBefore: BEFORE, bytesAfter: AFTER, result: EDITED });
    expect(report.request.headers).toContainEqual(['authorization', 'Bearer [hidden, 24 characters]']);
    expect(run.stdout).not.toContain(CALLER_KEY);
    expect(run.stdout).not.toContain(FILE_KEY);
  });

  it('exits 2 on bad arguments and on a bad configuration, naming the problem', async () => {
    const noPath = explain('-H', 'content-type: application/json');
    expect(noPath.status).toBe(2);
    expect(noPath.stderr).toContain('--path (or a URL) is required');
    expect(noPath.stderr).toContain('usage: explain');
    // The rest in this process: the exit status and message come from the same runExplain.
    expect((await explainHere('--path', '/x', '--mode', 'SOMETIMES')).status).toBe(2);
    expect((await explainHere('--path', '/x', '--body-file', join(dir, 'missing.json'))).stderr).toContain('ENOENT');

    const config = write('bad.yaml', 'rewrite:\n  openaiPaths:\n    prefx: /v1\n');
    const bad = await explainHere('--config', config, '--path', '/x');
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain('rewrite.openaiPaths.prefx: unknown key');
    expect(bad.stdout).toBe('');
  });
});

/** The CLI in this process (no tsx start-up per case), with a clean environment. */
async function explainHere(...args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const status = await runExplain(args, {
    stdout: (text) => void (stdout += text),
    stderr: (text) => void (stderr += text),
    env: {},
    readStdin: () => Buffer.alloc(0),
  });
  return { status, stdout, stderr };
}

async function report(...args: string[]): Promise<Explanation> {
  const run = await explainHere(...args, '--json');
  expect(run.status).toBe(0);
  return JSON.parse(run.stdout) as Explanation;
}

/** Shell words of a command as the README writes it: single quotes, backslash-newline continuations. */
function shellWords(command: string): string[] {
  const words: string[] = [];
  for (const match of command.replace(/\\\n/g, ' ').matchAll(/'([^']*)'|(\S+)/g)) words.push(match[1] ?? match[2]!);
  return words;
}

/** Every `npm run explain -- ...` command in a markdown file's sh blocks. */
function explainCommands(markdown: string): string[][] {
  const commands: string[][] = [];
  for (const block of markdown.matchAll(/```sh\n([\s\S]*?)```/g)) {
    for (const command of block[1]!.split(/\n(?=npm )/)) {
      if (command.startsWith('npm run explain -- ')) commands.push(shellWords(command.replace(/#.*$/gm, '')).slice(4));
    }
  }
  return commands;
}

describe('explain: requests as curl users write them', () => {
  it('runs every explain example of the README and examples/bodies as written', async () => {
    const commands = [readFileSync(join(ROOT, 'README.md'), 'utf8'), readFileSync(join(ROOT, 'examples/bodies/README.md'), 'utf8')].flatMap(explainCommands);
    expect(commands.length).toBeGreaterThanOrEqual(5);
    const cwd = process.cwd();
    process.chdir(ROOT);
    try {
      for (const args of commands) {
        const run = await explainHere(...args);
        expect({ args, stderr: run.stderr, status: run.status }).toEqual({ args, stderr: '', status: 0 });
        expect(run.stdout).toMatch(/result +rewritten \(model\)/);
      }
    } finally {
      process.chdir(cwd);
    }
  });

  it('-d takes the body inline and gives the same report as the body from a file', async () => {
    const inline = await report('--path', DEPLOYMENT_PATH, '-H', 'content-type: application/json', '-d', JSON_BODY);
    const fromFile = await report('--path', DEPLOYMENT_PATH, '-H', 'content-type: application/json', '--body-file', write('inline.json', JSON_BODY));
    expect(inline.request.method).toBe('POST');
    expect(inline.request.headers).toContainEqual(['content-length', String(BEFORE)]);
    expect(inline.body).toMatchObject({ kind: 'json', removed: ['model'], bytesBefore: BEFORE, bytesAfter: AFTER, result: EDITED });
    expect(fromFile.body).toEqual(inline.body);
    expect(fromFile.decision).toBe(inline.decision);
  });

  it('-d @file drops line breaks as curl does, --data-binary @file keeps them', async () => {
    const pretty = '{\n"model":"gpt-image-1",\r\n"prompt":"p"\n}\n';
    const file = write('pretty.json', pretty);
    const squeezed = await report('--path', DEPLOYMENT_PATH, '-H', 'content-type: application/json', '-d', `@${file}`);
    const exact = await report('--path', DEPLOYMENT_PATH, '-H', 'content-type: application/json', '--data-binary', `@${file}`);
    expect(squeezed.body.bytesBefore).toBe(pretty.replace(/[\r\n]/g, '').length);
    expect(exact.body.bytesBefore).toBe(pretty.length);
    expect(squeezed.body.removed).toEqual(['model']);
    expect(exact.body.removed).toEqual(['model']);
  });

  it('like curl: GET without a body, POST with one, repeated -d joined with &', async () => {
    const get = await report(DEPLOYMENT_PATH);
    expect(get.request.method).toBe('GET');
    expect(get.result).toMatchObject({ kind: 'passed', reason: 'method' });
    const joined = await report(DEPLOYMENT_PATH, '-d', 'a=1', '-d', 'b=2');
    expect(joined.request.method).toBe('POST');
    expect(joined.request.headers).toContainEqual(['content-length', '7']);
  });

  it('-d without a content-type is sent as curl sends it (form-urlencoded), and says so', async () => {
    const run = await report('--path', DEPLOYMENT_PATH, '-d', JSON_BODY);
    expect(run.request.headers).toContainEqual(['content-type', 'application/x-www-form-urlencoded']);
    expect(run.result).toMatchObject({ kind: 'passed', reason: 'content_type' });
    expect(run.notes.join('\n')).toContain("add -H 'content-type: application/json'");
  });

  it('-F builds a multipart/form-data body as curl does: fields, a file part with its type, a fresh boundary', async () => {
    const png = write('cat.png', Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0xff]));
    const edits = '/openai/deployments/img/images/edits?api-version=2025-04-01-preview';
    const run = await explainHere('--path', edits, '-F', 'model=gpt-image-1', '-F', `image[]=@${png}`, '-F', 'prompt=add a hat');
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/content-type +multipart\/form-data; boundary=-{24}[0-9a-f]{16}\n/);
    expect(run.stdout).toMatch(/result +rewritten \(model\); multipart body \d+ -> \d+ bytes; body mode BUFFERED/);
    expect(run.stdout).toMatch(/removed part +model, 11 bytes\n/);
    expect(run.stdout).toMatch(/part +image\[\] filename="cat.png" image\/png, 10 bytes\n/);
    expect(run.stdout).toMatch(/part +prompt, 9 bytes\n/);
    const typed = await report('--path', edits, '-F', 'model=gpt-image-1', '-F', `image=@${png};type=image/webp;filename=x.webp`, '-F', `prompt=<${write('prompt.txt', 'from a file')}`);
    expect(typed.body.parts).toEqual([
      { name: 'image', filename: 'x.webp', contentType: 'image/webp', bytes: 10 },
      { name: 'prompt', bytes: 11 },
    ]);
  });

  it('refuses two kinds of body, and a -F without a name', async () => {
    const both = await explainHere('--path', DEPLOYMENT_PATH, '-d', '{}', '-F', 'a=b');
    expect(both.status).toBe(2);
    expect(both.stderr).toContain('use one kind of body, not -d and -F');
    const nameless = await explainHere('--path', DEPLOYMENT_PATH, '-F', '=x');
    expect(nameless.status).toBe(2);
    expect(nameless.stderr).toContain('bad -F "=x"');
  });

  it('flags a content-length that disagrees with the body, on stderr and in the report', async () => {
    const run = await explainHere('--path', DEPLOYMENT_PATH, '-H', 'content-type: application/json', '-H', 'content-length: 10', '-d', JSON_BODY);
    expect(run.status).toBe(0);
    expect(run.stderr).toBe(`explain: warning: content-length says 10 but the body has ${BEFORE} bytes: Envoy would wait for the missing bytes (HTTP/1) or reset the stream (HTTP/2) instead of forwarding this. Drop the -H 'content-length' (explain sets it) or fix the body.\n`);
    expect(run.stdout).toContain(`  ! content-length says 10 but the body has ${BEFORE} bytes`);
    const right = await explainHere('--path', DEPLOYMENT_PATH, '-H', 'content-type: application/json', '-H', `content-length: ${BEFORE}`, '-d', JSON_BODY);
    expect(right.stderr).toBe('');
    expect(right.stdout).not.toContain('  ! ');
  });

  it('lists each removed multipart part in the text output, as the JSON report does (a repeated name too)', async () => {
    const boundary = 'twice-7MA4YWxk';
    const body = Buffer.concat([
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-image-1\r\n`),
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ndall-e-2\r\n`),
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nadd a hat\r\n--${boundary}--\r\n`),
    ]);
    const args = ['--path', '/openai/deployments/img/images/edits?api-version=2025-04-01-preview', '-H', `content-type: multipart/form-data; boundary=${boundary}`, '--data-binary', `@${write('twice.multipart', body)}`];
    const json = await report(...args);
    expect(json.body.removedParts).toEqual([
      { name: 'model', bytes: 11 },
      { name: 'model', bytes: 8 },
    ]);
    const text = await explainHere(...args);
    expect(text.stdout).toMatch(/removed part +model, 11 bytes\n +removed part +model, 8 bytes\n +part +prompt, 9 bytes\n/);
  });

  it('--help lists every option and every body mode', async () => {
    const help = await explainHere('--help');
    expect(help.status).toBe(0);
    for (const option of ['--path', '--method', '-X', '--header', '-H', '--data', '-d', '--data-binary', '--body-file', '--form', '-F', '--mode', '--config', '--json', '--help']) {
      expect(help.stdout).toContain(option);
    }
    for (const mode of ['NONE', 'BUFFERED', 'STREAMED', 'BUFFERED_PARTIAL', 'FULL_DUPLEX_STREAMED']) expect(help.stdout).toContain(mode);
    expect(help.stdout).toContain('examples/bodies/');
  });
  it("shows a local reply Envoy sends itself: a BUFFERED body over Envoy's 64 MiB buffer limit is a 413", async () => {
    const big = write('big.json', Buffer.concat([Buffer.from('{"model":"gpt-image-1","prompt":"'), Buffer.alloc(65 * 1024 * 1024, 0x61), Buffer.from('"}')]));
    // Chunked: with a content-length the server would see the size and not ask for the body at all.
    const run = await explainHere('--path', DEPLOYMENT_PATH, '-H', 'content-type: application/json', '-H', 'transfer-encoding: chunked', '--data-binary', `@${big}`, '--mode', 'BUFFERED');
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/Local reply from Envoy \(the request does not reach Azure\)\n +status +413\n/);
    expect(run.stdout).toContain('Envoy itself answers 413 (request_payload_too_large): the body Envoy holds is over its buffer limit');
    expect(run.stdout).toMatch(/body sent +not sent \(the request is answered locally\)/);
  });
});

describe('explain: one model of Envoy, every body mode', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(() => server?.close());

  const request = jsonRequest(DEPLOYMENT_PATH, JSON_BODY);
  // What the gRPC emulation (the tests' Envoy) delivers upstream for the same request and set-up.
  async function throughEmulation(mode: ConfiguredBodyMode): Promise<Buffer> {
    const envoy = mode === 'NONE' ? recommendedEnvoy(server.target) : staticEnvoy(server.target, mode);
    try {
      return upstreamOf(await envoy.request({ headers: request.headers, body: request.body })).body;
    } finally {
      envoy.close();
    }
  }

  it.each(BODY_MODES)('--mode %s: explain forwards what the emulated Envoy forwards, and says how the body went', async (mode) => {
    const explained = await report('--path', DEPLOYMENT_PATH, '-H', 'content-type: application/json', '-d', JSON_BODY, '--mode', mode);
    expect(explained.request.envoyRequestBodyMode).toBe(mode);
    expect(explained.result.kind).toBe('rewritten');
    expect(explained.body.result).toBe((await throughEmulation(mode)).toString());
    expect(explained.body.result).toBe(EDITED);
    const sentAs = mode === 'NONE' ? 'BUFFERED in 1 message (asked by the server with mode_override)' : `${mode} in 1 message`;
    expect(explained.bodySentAs).toBe(sentAs);
    // Envoy drops content-length when it streams the body itself; BUFFERED keeps it and takes the new length.
    const lengthSet = explained.headerChanges.find((change) => change.name === 'content-length');
    if (mode === 'NONE' || mode === 'BUFFERED') expect(lengthSet).toMatchObject({ action: 'set', value: String(AFTER), applied: true });
    else expect(explained.notes).toContain(`Envoy removes content-length in ${mode} mode; the upstream request is chunked.`);
  });
});
