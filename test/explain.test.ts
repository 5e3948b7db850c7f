// `explain` as users run it: a child process, a request described on the command line, the report on
// stdout. The processor behind it is the server's own, so these check the CLI's emulation of Envoy and
// its report, not the rewrite rules (those have their own tests).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Explanation } from '../src/explain-call.js';

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

  it('exits 2 on bad arguments and on a bad configuration, naming the problem', () => {
    const noPath = explain('-H', 'content-type: application/json');
    expect(noPath.status).toBe(2);
    expect(noPath.stderr).toContain('--path (or a URL) is required');
    expect(noPath.stderr).toContain('usage: explain');
    expect(explain('--path', '/x', '--mode', 'SOMETIMES').status).toBe(2);
    expect(explain('--path', '/x', '--body-file', join(dir, 'missing.json')).stderr).toContain('ENOENT');

    const config = write('bad.yaml', 'rewrite:\n  openaiPaths:\n    prefx: /v1\n');
    const bad = explain('--config', config, '--path', '/x');
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain('rewrite.openaiPaths.prefx: unknown key');
    expect(bad.stdout).toBe('');
  });
});
