#!/usr/bin/env node
// `explain`: the CLI that shows what the server would do with one request (described with curl-style
// arguments, src/explain-request.ts) without Envoy: matched route and decision, header and :path
// mutations, clear_route_cache, mode_override, dynamic metadata and a body diff (src/explain-call.ts
// does the work). It is how users debug a configuration. Run as `node dist/explain.js` or
// `npx tsx src/explain.ts`.
import { readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { CallContext } from './call/index.js';
import { ConfigError, type Config } from './config.js';
import { configFilePath, loadConfigFrom } from './config-file.js';
import { injectsKeys, keyFileFor } from './credentials.js';
import { describeMode, explain, printable, type Explanation, type PartSummary } from './explain-call.js';
import { HELP, USAGE, UsageError, requestFromArgs, type ExplainIo, type ParsedArgs } from './explain-request.js';
import type { ImageRoute } from './routes.js';
import { readSecretFile } from './secrets.js';

export type { ExplainIo } from './explain-request.js';

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
  for (const warning of explanation.warnings) lines.push(`  ! ${warning}`);

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
    section(`Local reply from ${explanation.immediateResponse.by === 'server' ? 'the server' : 'Envoy'} (the request does not reach Azure)`);
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
    row(PHASE_LABELS[change.phase] ?? change.phase, `${what}${change.applied ? '' : `  [ignored: ${change.ignored}]`}`);
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
    // Multipart: each removed part by name and size (a repeated name may lose one part of several).
    if (body.removedParts) for (const part of body.removedParts) row('removed part', describePart(part));
    else if (body.removed.length > 0) row('removed', body.removed.join(', '));
    if (body.added.length > 0) row('added', body.added.join(', '));
    for (const field of body.replaced) row('replaced', `${field.name}: ${field.before} -> ${field.after}`);
    if (body.note) row('note', body.note);
    if (body.result !== undefined) row('result', body.result.trimEnd());
    else if (body.parts) for (const part of body.parts) row('part', describePart(part));
    else if (body.changed || body.kind === 'other') row('result', `${body.bytesAfter} bytes (${body.kind === 'other' ? 'not JSON or multipart' : 'too large or not text to print'})`);
  }

  if (explanation.notes.length > 0) {
    section('Notes');
    for (const note of explanation.notes) lines.push(`  - ${note}`);
  }
  return `${lines.join('\n')}\n`;
}

const PHASE_LABELS: Record<string, string> = {
  request_headers: 'headers answer',
  request_body: 'body answer',
  request_trailers: 'trailers answer',
  immediate_response: 'local reply',
};

function describePart(part: PartSummary): string {
  const file = part.filename !== undefined ? ` filename="${part.filename}"` : '';
  const type = part.contentType ? ` ${part.contentType}` : '';
  return `${part.name}${file}${type}, ${part.bytes} bytes`;
}

/** The CLI: resolves with the exit status. */
export async function runExplain(argv: string[], io: ExplainIo): Promise<number> {
  let parsed: ParsedArgs | 'help';
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
  const { request, configOption, json, notes } = parsed;

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
  let keyProblem: string | undefined;
  if (injectsKeys(config.credentials)) {
    // The key file the request's path selects (credentials.apiKeyFiles, else apiKeyFile), as the server picks it.
    context.apiKey = (pathname?: string) => {
      const keyFile = keyFileFor(config.credentials, pathname ?? '/');
      if (keyFile === undefined) return undefined;
      const secret = readSecretFile(keyFile);
      if ('value' in secret) return secret.value;
      keyProblem = `credentials key file ${keyFile} cannot be used (${secret.problem}): the server would not inject api-key until it can read it.`;
      return undefined;
    };
  }

  const explanation: Explanation = await explain(config, request, { context, ...(configFile ? { configFile } : {}) });
  explanation.notes.unshift(...notes);
  if (keyProblem) explanation.notes.push(keyProblem);
  for (const warning of explanation.warnings) io.stderr(`explain: warning: ${warning}\n`);
  io.stdout(json ? `${JSON.stringify(explanation, null, 2)}\n` : formatExplanation(explanation, config));
  if (!explanation.serverError) return 0;
  // A surprise in the server ends the call with a gRPC status; with failure_mode_allow: false Envoy answers 500.
  io.stderr(`explain: the server would end this call with a gRPC error: ${explanation.serverError.details}\n`);
  return 1;
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
  process.exitCode = await runExplain(process.argv.slice(2), {
    stdout: (text) => void process.stdout.write(text),
    stderr: (text) => void process.stderr.write(text),
    env: process.env,
    readStdin: () => readFileSync(0),
  });
}
