// What the server does with one request, without Envoy: runs the request through the Envoy model of
// src/envoy-model/ (the same model the tests drive the server with) set up as the README recommends,
// with the server's real CallProcessor in this process instead of over gRPC, and reports the decision,
// the header mutations as Envoy applied them, the metadata and a body diff. src/explain.ts is the CLI.
// Credential header values are masked in everything it returns.
import { CallProcessor, PASS_REASONS, REJECT_REASONS, type CallContext, type CallResult } from './call/index.js';
import type { Config } from './config.js';
import { EnvoyModel, type BodySendMode, type ModelOptions, type Outcome, type TranscriptEntry } from './envoy-model/index.js';
import type { MutationEntry } from './envoy-model/headers.js';
import { InProcessTransport } from './envoy-model/in-process.js';
import type { WireProcessingResponse } from './envoy-model/processor-state.js';
import { diffBodies, notForwarded, printable, type BodyDiff, type HeaderList } from './explain-body.js';
import type { CommonResponse, HeaderMutation, ProcessingMode, ProcessingRequest, ProcessingResponse, ProtoValue, StructValue } from './proto.js';
import type { ImageRoute } from './routes.js';

export { printable, type BodyDiff, type BodyField, type PartSummary } from './explain-body.js';

/** Envoy's configured request_body_mode. NONE + allow_mode_override is the recommended set-up (README). */
export type ConfiguredBodyMode = BodySendMode;
export const BODY_MODES: readonly ConfiguredBodyMode[] = ['NONE', 'BUFFERED', 'STREAMED', 'BUFFERED_PARTIAL', 'FULL_DUPLEX_STREAMED'];

/** The DATA frames Envoy reads the client's body in: 64 KiB is a typical socket read. */
export const BODY_FRAME_BYTES = 64 * 1024;

const CREDENTIAL_HEADERS = new Set(['authorization', 'proxy-authorization', 'api-key', 'x-api-key', 'ocp-apim-subscription-key', 'cookie']);

export interface ExplainRequest {
  method: string;
  /** `:path` as the client sends it (path and query). */
  path: string;
  authority: string;
  /** Other request headers, in order, names as given. */
  headers: ReadonlyArray<readonly [string, string]>;
  body: Buffer;
  mode: ConfiguredBodyMode;
}

export interface HeaderChange {
  /** The answer that carried it: `request_headers`, `request_body` or `immediate_response`. */
  phase: string;
  action: 'set' | 'remove';
  name: string;
  /** Credential values are masked. */
  value?: string;
  applied: boolean;
  /** Why Envoy does not apply it. */
  ignored?: string;
}

export interface ExchangeStep {
  sent: { kind: string; endOfStream: boolean; bytes?: number };
  /** One line per answer, as the server sent it (credential values masked). */
  answers: string[];
}

export interface Explanation {
  request: { method: string; path: string; headers: Array<[string, string]>; bodyBytes: number; envoyRequestBodyMode: ConfiguredBodyMode };
  configFile: string | null;
  route: ImageRoute | null;
  result: CallResult;
  /** One sentence: what happens to the request. */
  decision: string;
  exchange: ExchangeStep[];
  /** How the body reached the server: the effective mode, or why it was not sent. */
  bodySentAs: string;
  headerChanges: HeaderChange[];
  path: { before: string; after: string; changed: boolean };
  clearRouteCache: boolean;
  modeOverride: ProcessingMode | null;
  dynamicMetadata: Record<string, unknown> | null;
  /** The local reply the client gets instead of Azure's answer, and who sent it. */
  immediateResponse: { status: number; body: string; details?: string; by: 'server' | 'envoy' } | null;
  /** The gRPC status the server ended the call with, when it was not OK. */
  serverError: { code: number; details: string } | null;
  body: BodyDiff;
  /** Problems with the request itself (a real client would not send it like this). */
  warnings: string[];
  notes: string[];
}

function routeOf(result: CallResult): ImageRoute | undefined {
  return result.kind === 'rewritten' ? result.report.route : result.route;
}

function describeResult(result: CallResult): string {
  switch (result.kind) {
    case 'rewritten': {
      const { report } = result;
      const changes = report.changes.join(', ') || 'no change listed';
      if (report.bodyKind === 'none') return `rewritten (${changes}) at the request headers; body not edited`;
      return `rewritten (${changes}); ${report.bodyKind} body ${report.bytesIn} -> ${report.bytesOut} bytes; body mode ${report.mode}`;
    }
    case 'rejected':
      return `rejected (${result.reason}): ${REJECT_REASONS[result.reason]}; answered by the server, Azure never sees the request`;
    case 'passed':
      return `passed unchanged (${result.reason}): ${PASS_REASONS[result.reason]}${result.detail ? ` [${result.detail}]` : ''}`;
    default: {
      const unhandled: never = result;
      return unhandled;
    }
  }
}

/** A header value fit to print: credentials show their scheme and length only. */
export function shownValue(name: string, value: string): string {
  if (!CREDENTIAL_HEADERS.has(name.toLowerCase())) return value;
  const scheme = /^(Bearer|Basic)\s+/i.exec(value)?.[1];
  const secretLength = scheme ? value.length - value.indexOf(' ') - 1 : value.length;
  return `${scheme ? `${scheme} ` : ''}[hidden, ${secretLength} characters]`;
}

function protoToJs(value: ProtoValue): unknown {
  if ('structValue' in value) return structToJs(value.structValue);
  if ('stringValue' in value) return value.stringValue;
  if ('numberValue' in value) return value.numberValue;
  if ('boolValue' in value) return value.boolValue;
  return null;
}

function structToJs(struct: StructValue): Record<string, unknown> {
  return Object.fromEntries(Object.entries(struct.fields).map(([key, value]) => [key, protoToJs(value)]));
}

const ANSWER_KINDS = ['request_headers', 'request_body', 'request_trailers', 'response_headers', 'response_body', 'response_trailers', 'immediate_response'] as const;

function answerKind(answer: ProcessingResponse): string {
  return ANSWER_KINDS.find((kind) => kind in answer) ?? 'none';
}

function commonOf(answer: ProcessingResponse): CommonResponse | undefined {
  const member = (answer as unknown as Record<string, { response?: CommonResponse } | undefined>)[answerKind(answer)];
  return member?.response;
}

function headerValue(header: { raw_value?: Buffer; value?: string }): string {
  return header.raw_value && header.raw_value.length > 0 ? header.raw_value.toString('latin1') : (header.value ?? '');
}

function describeMutation(mutation: HeaderMutation | undefined): string[] {
  const parts: string[] = [];
  for (const option of mutation?.set_headers ?? []) {
    parts.push(`set ${option.header.key}: ${printable(shownValue(option.header.key, headerValue(option.header)))}`);
  }
  for (const name of mutation?.remove_headers ?? []) parts.push(`remove ${name}`);
  return parts;
}

export function describeMode(mode: ProcessingMode): string {
  return Object.entries(mode)
    .map(([key, value]) => `${key}=${String(value)}`)
    .join(' ');
}

/** One line describing an answer as the server sent it. */
function describeAnswer(answer: ProcessingResponse): string {
  const kind = answerKind(answer);
  if ('immediate_response' in answer) {
    const immediate = answer.immediate_response;
    return `${kind}: local reply ${String(immediate.status.code)}${immediate.details ? ` (details ${immediate.details})` : ''}`;
  }
  const common = commonOf(answer);
  const parts = [common?.status ?? 'CONTINUE', ...describeMutation(common?.header_mutation)];
  const mutation = common?.body_mutation;
  if (mutation && 'body' in mutation) parts.push(`body replaced (${mutation.body.length} bytes)`);
  if (mutation && 'clear_body' in mutation) parts.push('body cleared');
  if (mutation && 'streamed_response' in mutation) parts.push(`streamed body (${mutation.streamed_response.body.length} bytes)`);
  if (common?.clear_route_cache) parts.push('clear_route_cache');
  if (answer.mode_override) parts.push(`mode_override ${describeMode(answer.mode_override)}`);
  if (answer.dynamic_metadata) parts.push(`dynamic_metadata ${JSON.stringify(structToJs(answer.dynamic_metadata))}`);
  return `${kind}: ${parts.join(', ')}`;
}

function describeSent(message: ProcessingRequest): ExchangeStep['sent'] {
  const kind = message.request ?? 'unknown';
  if (message.request_headers) return { kind, endOfStream: message.request_headers.end_of_stream };
  if (message.request_body) return { kind, endOfStream: message.request_body.end_of_stream, bytes: message.request_body.body.length };
  return { kind, endOfStream: true };
}

/**
 * Envoy as envoy/envoy.yaml and the README set it up (request headers sent, responses skipped,
 * allow_mode_override, message_timeout 2 s, fail closed, 64 MiB buffer limit), with the request body
 * mode `mode`. FULL_DUPLEX_STREAMED needs request trailers sent (Envoy refuses the configuration
 * otherwise).
 */
export function recommendedEnvoyOptions(mode: ConfiguredBodyMode, metadataNamespace?: string): ModelOptions {
  return {
    envoyVersion: '1.40',
    processingMode: {
      requestHeaderMode: 'SEND',
      responseHeaderMode: 'SKIP',
      requestBodyMode: mode,
      responseBodyMode: 'NONE',
      requestTrailerMode: mode === 'FULL_DUPLEX_STREAMED' ? 'SEND' : 'SKIP',
      responseTrailerMode: 'SKIP',
    },
    allowModeOverride: true,
    messageTimeoutMs: 2000,
    failureModeAllow: false,
    bufferLimitBytes: 64 * 1024 * 1024,
    receivingNamespaces: metadataNamespace ? [metadataNamespace] : [],
  };
}

/** Local replies Envoy sends itself, by their response code details. */
const ENVOY_REPLIES = new Map([
  ['request_payload_too_large', "the body Envoy holds is over its buffer limit (per_connection_buffer_limit_bytes, 64 MiB in envoy/envoy.yaml)"],
  ['ext_proc_error_per-message_timeout_exceeded', 'the server did not answer within message_timeout'],
]);

/** Why Envoy did not apply the header mutation of an answer it got no mutation notes for. */
function notAppliedBecause(phase: string, mode: BodySendMode): string {
  if (phase === 'request_body' && (mode === 'STREAMED' || mode === 'FULL_DUPLEX_STREAMED')) {
    return `Envoy applies header mutations of body answers only in BUFFERED and BUFFERED_PARTIAL modes (in ${mode} the headers have already gone upstream)`;
  }
  return 'Envoy did not accept this answer';
}

/** The header mutations of each answer, as Envoy treated them (from the model's transcript notes). */
function headerChangesOf(transcript: TranscriptEntry[], effectiveMode: BodySendMode): HeaderChange[] {
  const changes: HeaderChange[] = [];
  for (let i = 0; i < transcript.length; i++) {
    const entry = transcript[i]!;
    if (entry.direction !== 'server->envoy') continue;
    const answer = entry.message as WireProcessingResponse;
    const phase = entry.kind;
    const notes: MutationEntry[] = [];
    for (let j = i + 1; j < transcript.length && transcript[j]!.direction === 'note'; j++) {
      if (transcript[j]!.kind === 'header mutation') notes.push(transcript[j]!.message as MutationEntry);
    }
    const member = answer[phase as 'request_headers'];
    const mutation = phase === 'immediate_response' ? answer.immediate_response?.headers : member?.response?.header_mutation;
    const asked = (mutation?.remove_headers?.length ?? 0) + (mutation?.set_headers?.length ?? 0);
    for (const note of notes) {
      changes.push({ phase, ...note, ...(note.value !== undefined ? { value: shownValue(note.name, note.value) } : {}) });
    }
    if (asked === 0 || notes.length > 0) continue;
    const ignored = notAppliedBecause(phase, effectiveMode);
    for (const name of mutation?.remove_headers ?? []) changes.push({ phase, action: 'remove', name, applied: false, ignored });
    for (const option of mutation?.set_headers ?? []) {
      const name = option.header?.key ?? '';
      changes.push({ phase, action: 'set', name, value: shownValue(name, (option.header?.raw_value ?? Buffer.alloc(0)).toString('latin1')), applied: false, ignored });
    }
  }
  return changes;
}

function lookup(headers: HeaderList, name: string): string | undefined {
  return headers.find(([key]) => key === name)?.[1];
}

/** Problems with the request as given: what a real client would not send. */
function requestWarnings(request: ExplainRequest): string[] {
  const declared = request.headers.find(([name]) => name.toLowerCase() === 'content-length')?.[1];
  if (declared === undefined || declared.trim() === String(request.body.length)) return [];
  return [
    `content-length says ${declared} but the body has ${request.body.length} bytes: Envoy would wait for the missing bytes (HTTP/1) or reset the stream (HTTP/2) instead of forwarding this. Drop the -H 'content-length' (explain sets it) or fix the body.`,
  ];
}

/** The frames the model delivers: the body in BODY_FRAME_BYTES reads; undefined when there is none. */
function frames(body: Buffer): Buffer[] | undefined {
  if (body.length === 0) return undefined;
  const out: Buffer[] = [];
  for (let at = 0; at < body.length; at += BODY_FRAME_BYTES) out.push(body.subarray(at, at + BODY_FRAME_BYTES));
  return out;
}

interface Recorded {
  exchange: ExchangeStep[];
  answers: ProcessingResponse[];
  processor?: CallProcessor;
}

/** Runs one request through the Envoy model against the real processor. */
async function run(config: Config, request: ExplainRequest, context: CallContext): Promise<{ outcome: Outcome; recorded: Recorded; sent: HeaderList }> {
  const recorded: Recorded = { exchange: [], answers: [] };
  const transport = new InProcessTransport(() => {
    const processor = new CallProcessor(config, context);
    recorded.processor = processor;
    return {
      handle(message) {
        const step: ExchangeStep = { sent: describeSent(message), answers: [] };
        recorded.exchange.push(step);
        try {
          const answers = processor.handle(message);
          recorded.answers.push(...answers);
          step.answers = answers.map(describeAnswer);
          return answers;
        } catch (error) {
          step.answers = [`(the server ends the call with gRPC status INTERNAL: ${(error as Error).message})`];
          throw error;
        }
      },
      close: () => processor.close(),
    };
  });
  const model = new EnvoyModel(recommendedEnvoyOptions(request.mode, config.metadataNamespace), transport);
  // What Envoy's codec hands the filter: pseudo-headers first, names lower-cased.
  const sent: HeaderList = [
    [':authority', request.authority],
    [':path', request.path],
    [':method', request.method.toUpperCase()],
    [':scheme', 'https'],
    ...request.headers.map(([name, value]): [string, string] => [name.toLowerCase(), value]),
  ];
  const outcome = await model.request({ headers: sent, body: frames(request.body) });
  return { outcome, recorded, sent };
}

/** Plays Envoy's side of one ext_proc call (request path only) against the real processor. */
export async function explain(config: Config, request: ExplainRequest, options: { context?: CallContext; configFile?: string } = {}): Promise<Explanation> {
  const { outcome, recorded, sent } = await run(config, request, options.context ?? {});
  if (outcome.kind === 'reset' || outcome.kind === 'aborted') throw new Error(`unexpected end of the simulated request: ${outcome.kind}`);
  const processor = recorded.processor;
  if (!processor) throw new Error('Envoy never opened an ext_proc call');
  const result = processor.finalResult();
  const notes: string[] = [];

  const override = recorded.answers.find((answer) => answer.mode_override)?.mode_override ?? null;
  const applied = outcome.transcript.find((entry) => entry.kind === 'mode_override applied')?.message as { requestBodyMode: BodySendMode } | undefined;
  const effective: BodySendMode = applied?.requestBodyMode ?? request.mode;
  if (override && !applied) {
    notes.push(`Envoy ignored the server's mode_override: it applies one only with allow_mode_override, and never when the filter's body mode is FULL_DUPLEX_STREAMED.`);
  } else if (override) {
    notes.push('Assumes allow_mode_override: true on the ext_proc filter (recommended set-up); without it Envoy ignores mode_override.');
  }

  const bodiesSent = outcome.transcript.filter((entry) => entry.direction === 'envoy->server' && entry.kind === 'request_body').length;
  const serverReplied = recorded.answers.some((answer) => 'immediate_response' in answer);
  const hasBody = request.body.length > 0;
  let bodySentAs: string;
  if (!hasBody) bodySentAs = 'none (the request has no body)';
  else if (bodiesSent > 0) bodySentAs = `${effective} in ${bodiesSent} message${bodiesSent === 1 ? '' : 's'}${applied ? ' (asked by the server with mode_override)' : ''}`;
  else if (outcome.kind === 'local_reply') bodySentAs = 'not sent (the request is answered locally)';
  else bodySentAs = 'not sent: it flows to the upstream unchanged';

  const upstream = outcome.kind === 'upstream' ? outcome.upstream : undefined;
  const forwarded: HeaderList = upstream?.headers ?? sent;
  if (upstream?.contentLengthRemoved) notes.push(`Envoy removes content-length in ${effective} mode; the upstream request is chunked.`);
  const route = routeOf(result);
  if (route && hasBody && lookup(sent, 'content-length') === undefined) {
    notes.push('No content-length header: the request is chunked, so the server cannot know its size in advance.');
  }
  const serverError = outcome.serverStatus && outcome.serverStatus.code !== 0 ? outcome.serverStatus : null;

  let immediateResponse: Explanation['immediateResponse'] = null;
  if (outcome.kind === 'local_reply') {
    immediateResponse = {
      status: outcome.status,
      body: outcome.body.toString('utf8'),
      ...(outcome.details ? { details: outcome.details } : {}),
      by: serverReplied ? 'server' : 'envoy',
    };
    if (!serverReplied) notes.push(`Envoy itself answers ${outcome.status} (${outcome.details}): ${ENVOY_REPLIES.get(outcome.details) ?? 'see the exchange above'}.`);
  }

  const pathAfter = lookup(forwarded, ':path') ?? request.path;
  const shownHeaders = request.headers.map(([name, value]): [string, string] => [name.toLowerCase(), shownValue(name, value)]);
  return {
    request: { method: request.method.toUpperCase(), path: request.path, headers: shownHeaders, bodyBytes: request.body.length, envoyRequestBodyMode: request.mode },
    configFile: options.configFile ?? null,
    route: route ?? null,
    result,
    decision: describeResult(result),
    exchange: recorded.exchange,
    bodySentAs,
    headerChanges: headerChangesOf(outcome.transcript, effective),
    path: { before: request.path, after: pathAfter, changed: pathAfter !== request.path },
    clearRouteCache: upstream?.routeRecomputed ?? false,
    modeOverride: override,
    dynamicMetadata: Object.keys(outcome.dynamicMetadata).length > 0 ? outcome.dynamicMetadata : null,
    immediateResponse,
    serverError,
    body: upstream ? diffBodies(request.body, upstream.body, sent, forwarded, config) : notForwarded(request.body),
    warnings: requestWarnings(request),
    notes,
  };
}
