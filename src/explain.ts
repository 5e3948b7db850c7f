#!/usr/bin/env node
// `explain`: the CLI that shows what the server would do with one request (method, path, headers, body
// file) without Envoy: matched route and decision, header and :path mutations, clear_route_cache,
// mode_override, dynamic metadata and a body diff (src/explain-call.ts does the work). It is how users
// debug a configuration. Run as `node dist/explain.js` or `npx tsx src/explain.ts`.
import { readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ConfigError, type Config } from './config.js';
import { configFilePath, loadConfigFrom } from './config-file.js';
import { describeMode, explain, printable, type BodyDiff, type ConfiguredBodyMode, type ExplainRequest, type Explanation } from './explain-call.js';
import type { ImageRoute } from './routes.js';
import { readSecretFile } from './secrets.js';
import type { CallContext } from './stream.js';

const CONFIGURED_MODES: readonly ConfiguredBodyMode[] = ['NONE', 'BUFFERED', 'STREAMED'];

function describeRoute(route: ImageRoute | null): string {
  if (!route) return 'none (not an image route)';
  const deployment = route.kind === 'deployment' ? `, deployment "${route.deployment}"` : '';
  const prefix = route.prefix ? `, prefix ${route.prefix}` : '';
  return `${route.kind} ${route.operation}${deployment}${prefix}`;
}

/** The human-readable report. */
export function formatExplanation(explanation: Explanation, config: Config): string {
  const lines: string[] = [];
  const section = (title: string): void => void lines.push('', title);
  const row = (label: string, value: string): void => void lines.push(`  ${label.padEnd(18)}${value}`);
  const { request, body } = explanation;

  lines.push(`${request.method} ${request.path}`);
  row('body', request.bodyBytes === 0 ? 'none' : `${request.bodyBytes} bytes`);
  for (const [name, value] of request.headers) row(name, value);
  row('config', explanation.configFile ?? 'built-in defaults (+ environment)');
  row('Envoy body mode', `${request.envoyRequestBodyMode}${request.envoyRequestBodyMode === 'NONE' ? ' (recommended: the server asks for bodies it edits)' : ''}`);

  section('Decision');
  row('route', describeRoute(explanation.route));
  row('result', explanation.decision);

  section('Envoy <-> server');
  explanation.exchange.forEach((step, index) => {
    const bytes = step.sent.bytes !== undefined ? `, ${step.sent.bytes} bytes` : '';
    lines.push(`  ${index + 1}. -> ${step.sent.kind} (end_of_stream ${step.sent.endOfStream}${bytes})`);
    for (const answer of step.answers) lines.push(`     <- ${answer}`);
    if (step.answers.length === 0) lines.push('     <- (no answer yet)');
  });
  row('body sent', explanation.bodySentAs);

  if (explanation.immediateResponse) {
    section('Local reply (the request does not reach Azure)');
    row('status', String(explanation.immediateResponse.status));
    row('body', printable(explanation.immediateResponse.body, 400));
    if (explanation.immediateResponse.details) row('details', explanation.immediateResponse.details);
  }

  section(explanation.immediateResponse ? 'Headers and route (moot: the request is answered locally)' : 'Headers and route');
  const changed = explanation.path.changed;
  row(':path', changed ? `${explanation.path.before}\n  ${''.padEnd(18)}-> ${explanation.path.after}` : `${explanation.path.after} (unchanged)`);
  if (explanation.headerChanges.length === 0) row('header mutations', 'none');
  for (const change of explanation.headerChanges) {
    const what = change.action === 'set' ? `set ${change.name}: ${change.value}` : `remove ${change.name}`;
    row(change.phase === 'request_headers' ? 'headers answer' : 'body answer', `${what}${change.applied ? '' : `  [ignored: ${change.ignored}]`}`);
  }
  row('clear_route_cache', explanation.clearRouteCache ? 'yes: Envoy picks the route again with the new headers' : 'no');
  row('mode_override', explanation.modeOverride ? describeMode(explanation.modeOverride) : 'none');
  const metadata = explanation.dynamicMetadata
    ? JSON.stringify(explanation.dynamicMetadata)
    : config.metadataNamespace
      ? 'none'
      : 'none (metadataNamespace is not configured)';
  row('dynamic metadata', metadata);

  section('Body');
  if (explanation.immediateResponse) row('note', body.note ?? '');
  else if (body.kind === 'none') row('body', 'none');
  else {
    row('bytes', `${body.bytesBefore} -> ${body.bytesAfter}${body.changed ? '' : ' (unchanged)'}`);
    if (body.removed.length > 0) row('removed', body.removed.join(', '));
    if (body.added.length > 0) row('added', body.added.join(', '));
    for (const field of body.replaced) row('replaced', `${field.name}: ${field.before} -> ${field.after}`);
    if (body.note) row('note', body.note);
    if (body.result !== undefined) row('result', body.result);
    else if (body.parts) for (const part of body.parts) row('part', describePart(part));
    else if (body.changed || body.kind === 'other') row('result', `${body.bytesAfter} bytes (${body.kind === 'other' ? 'not JSON or multipart' : 'too large or not text to print'})`);
  }

  if (explanation.notes.length > 0) {
    section('Notes');
    for (const note of explanation.notes) lines.push(`  - ${note}`);
  }
  return `${lines.join('\n')}\n`;
}

function describePart(part: NonNullable<BodyDiff['parts']>[number]): string {
  const file = part.filename !== undefined ? ` filename="${part.filename}"` : '';
  const type = part.contentType ? ` ${part.contentType}` : '';
  return `${part.name}${file}${type}, ${part.bytes} bytes`;
}

const USAGE = `usage: explain --path PATH [--method POST] [-H 'name: value']... [--body-file FILE|-]
               [--config config.yaml] [--mode NONE|BUFFERED|STREAMED] [--json]`;

const HELP = `${USAGE}

Shows what azure-image-extproc would do with one request: the matched route and decision, the header and
:path mutations, clear_route_cache, mode_override, dynamic metadata and a body diff. --path may also be
a full URL (https://host/openai/...). --mode is the request_body_mode configured on Envoy's ext_proc
filter (default NONE with allow_mode_override, the recommended set-up). The configuration comes from
--config, else EXTPROC_CONFIG, else the defaults, with the same environment overrides as the server.
Exit status: 0 explained, 2 bad arguments or configuration, 1 the server would fail the call.`;

export interface ExplainIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  env: NodeJS.ProcessEnv;
  readStdin: () => Buffer;
}

class UsageError extends Error {}

function parseHeader(text: string): [string, string] {
  // `:authority: x` names a pseudo-header, so the separator is the first colon after the name's first character.
  const colon = text.indexOf(':', 1);
  const name = colon === -1 ? '' : text.slice(0, colon).trim();
  if (!name || /\s/.test(name)) throw new UsageError(`bad header ${JSON.stringify(text)}: expected 'name: value'`);
  return [name.toLowerCase(), text.slice(colon + 1).trim()];
}

function requestFromArgs(argv: string[], io: ExplainIo): { request: ExplainRequest; configOption?: string; json: boolean } | 'help' {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        method: { type: 'string', short: 'X', default: 'POST' },
        path: { type: 'string' },
        header: { type: 'string', short: 'H', multiple: true, default: [] },
        'body-file': { type: 'string' },
        config: { type: 'string' },
        mode: { type: 'string', default: 'NONE' },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (values.help) return 'help';
  if (!values.path) throw new UsageError('--path is required');
  const mode = values.mode.toUpperCase() as ConfiguredBodyMode;
  if (!CONFIGURED_MODES.includes(mode)) throw new UsageError(`--mode must be one of ${CONFIGURED_MODES.join(', ')}`);
  if (!/^[A-Za-z]+$/.test(values.method)) throw new UsageError(`bad --method ${JSON.stringify(values.method)}`);

  const headers = values.header.map(parseHeader);
  let path = values.path;
  let authority = 'example.openai.azure.com';
  const url = /^https?:\/\/([^/?#]+)(.*)$/i.exec(path);
  if (url) {
    authority = url[1]!;
    path = url[2] || '/';
  }
  if (!path.startsWith('/')) throw new UsageError('--path must start with "/" (or be a full https:// URL)');
  // HTTP/1 `host` and HTTP/2 `:authority` are the same to Envoy: it forwards :authority.
  const given = headers.find(([name]) => name === 'host' || name === ':authority');
  if (given) authority = given[1];
  const rest = headers.filter(([name]) => name !== 'host' && name !== ':authority');
  const pseudo = rest.find(([name]) => name.startsWith(':'));
  if (pseudo) throw new UsageError(`set ${pseudo[0]} with --method/--path, not -H`);

  let body: Buffer = Buffer.alloc(0);
  const bodyFile = values['body-file'];
  if (bodyFile !== undefined) {
    try {
      body = bodyFile === '-' ? io.readStdin() : readFileSync(bodyFile);
    } catch (error) {
      throw new UsageError(`cannot read --body-file ${bodyFile}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
    }
  }
  return {
    request: { method: values.method, path, authority, headers: rest, body, mode },
    ...(values.config !== undefined ? { configOption: values.config } : {}),
    json: values.json,
  };
}

/** The CLI: returns the exit status. */
export function runExplain(argv: string[], io: ExplainIo): number {
  let parsed: ReturnType<typeof requestFromArgs>;
  try {
    parsed = requestFromArgs(argv, io);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    io.stderr(`explain: ${error.message}\n${USAGE}\n`);
    return 2;
  }
  if (parsed === 'help') {
    io.stdout(`${HELP}\n`);
    return 0;
  }
  const { request, configOption, json } = parsed;

  let config: Config;
  const configFile = configFilePath({ env: io.env, file: configOption });
  try {
    config = loadConfigFrom({ env: io.env, file: configFile });
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    io.stderr(`explain: ${error.message}\n`);
    return 2;
  }

  const context: CallContext = {};
  const keyFile = config.credentials.apiKeyFile;
  let keyProblem: string | undefined;
  if (keyFile) {
    const secret = readSecretFile(keyFile);
    if ('value' in secret) context.apiKey = () => secret.value;
    else keyProblem = `credentials.apiKeyFile ${keyFile} cannot be used (${secret.problem}): the server would not inject api-key until it can read it.`;
  }

  let explanation: Explanation;
  try {
    explanation = explain(config, request, { context, ...(configFile ? { configFile } : {}) });
  } catch (error) {
    // What the server turns into a gRPC INTERNAL status; Envoy's failure_mode_allow decides (STYLE lesson 7).
    io.stderr(`explain: the server would end this call with a gRPC error: ${(error as Error).message}\n`);
    return 1;
  }
  if (keyProblem) explanation.notes.push(keyProblem);
  io.stdout(json ? `${JSON.stringify(explanation, null, 2)}\n` : formatExplanation(explanation, config));
  return 0;
}

function isEntryPoint(): boolean {
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  process.exitCode = runExplain(process.argv.slice(2), {
    stdout: (text) => void process.stdout.write(text),
    stderr: (text) => void process.stderr.write(text),
    env: process.env,
    readStdin: () => readFileSync(0),
  });
}
