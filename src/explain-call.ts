// What the server does with one request, without Envoy: plays Envoy's side of one ext_proc call (request
// path) against the real CallProcessor, following its answers the way Envoy does (reference/ENVOY-EXTPROC.md
// §2-§4: header mutation rules, mode_override, BUFFERED vs STREAMED bodies), and collects the decision, the
// mutations as applied, the metadata and a body diff. Pure: config + request in, a report out (src/explain.ts
// is the CLI). Credential header values are masked in everything it returns.
import { classifyBody } from './body/index.js';
import type { Config } from './config.js';
import { decompress, parseEncoding } from './encoding.js';
import type {
  BodySendMode,
  CommonResponse,
  HeaderMutation,
  ProcessingMode,
  ProcessingRequest,
  ProcessingResponse,
  ProtoValue,
  StructValue,
} from './proto.js';
import type { ImageRoute } from './routes.js';
import { CallProcessor, type CallContext, type CallResult, type PassReason, type RejectReason } from './stream.js';

/** Envoy's configured request_body_mode; NONE + allow_mode_override is the recommended set-up (README). */
export type ConfiguredBodyMode = 'NONE' | 'BUFFERED' | 'STREAMED';

/** STREAMED chunk size: Envoy forwards what each read returns; 64 KiB is a typical socket read. */
export const STREAMED_CHUNK_BYTES = 64 * 1024;

/** Results printed whole up to this size (JSON text); larger or binary bodies are summarised. */
const PRINTABLE_BODY_BYTES = 2048;

const CREDENTIAL_HEADERS = new Set(['authorization', 'proxy-authorization', 'api-key', 'x-api-key', 'ocp-apim-subscription-key', 'cookie']);

/** Envoy's default header mutation rules drop changes to these silently (reference §2.3). */
const IMMUTABLE_SET = new Set([':authority', 'host', ':method', ':scheme']);

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
  /** The answer that carried it: `request_headers` or `request_body`. */
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

export interface BodyField {
  name: string;
  before?: string;
  after?: string;
}

export interface BodyDiff {
  kind: 'json' | 'multipart' | 'other' | 'none';
  bytesBefore: number;
  bytesAfter: number;
  changed: boolean;
  removed: string[];
  added: string[];
  replaced: BodyField[];
  /** The resulting body when it is small JSON text. */
  result?: string;
  /** The resulting multipart parts (names and sizes, never content). */
  parts?: Array<{ name: string; filename?: string; contentType?: string; bytes: number }>;
  /** Why the fields could not be compared. */
  note?: string;
}

export interface Explanation {
  request: {
    method: string;
    path: string;
    headers: Array<[string, string]>;
    bodyBytes: number;
    envoyRequestBodyMode: ConfiguredBodyMode;
  };
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
  immediateResponse: { status: number; body: string; details?: string } | null;
  body: BodyDiff;
  notes: string[];
}

const PASS_REASONS: Record<PassReason, string> = {
  not_image_route: 'not an image generation or edit route',
  not_rewritten_route: 'an image route this configuration leaves alone (see the rewrite.* options)',
  method: 'not a POST',
  no_body: 'the request has no body',
  content_type: 'the body is neither application/json nor multipart/form-data with a boundary',
  content_encoding: 'the body is compressed in a way the server cannot edit here (stacked or unknown coding, over limits.maxDecompressedBytes, or not BUFFERED)',
  no_model: 'nothing in the body to change (no `model` or other configured field)',
  invalid_body: 'the body is not what its content-type says',
  partial_body: 'Envoy sent only part of the body (BUFFERED_PARTIAL)',
  body_mode_unknown: 'Envoy sent no protocol_config (< 1.34): the body mode is unknown',
  body_not_sent: 'the body never reached the server (Envoy body mode NONE and no mode_override possible)',
  needs_buffered_body:
    'this rewrite needs the whole body (deployment taken from `model`, compressed body, extra_body unwrap) but Envoy streams it: configure request_body_mode NONE with allow_mode_override, or BUFFERED',
  too_large: 'the body is over limits.maxBodyBytes or the memory budget (limits.overLimit: forward)',
  call_ended: 'the call ended before a decision',
};

const REJECT_REASONS: Record<RejectReason, string> = {
  invalid_deployment: 'the deployment name could leave its path segment',
  missing_model: 'the route needs `model` in the body to choose a deployment and there is none',
  body_too_large: 'the body is over limits.maxBodyBytes or the memory budget and limits.overLimit is reject',
};

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

export function printable(value: string, limit = 80): string {
  return value.length <= limit ? value : `${value.slice(0, limit)}… (${value.length} characters)`;
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

type AnswerKind = 'request_headers' | 'request_body' | 'request_trailers' | 'response_headers' | 'response_body' | 'response_trailers' | 'immediate_response';
const ANSWER_KINDS: readonly AnswerKind[] = [
  'request_headers',
  'request_body',
  'request_trailers',
  'response_headers',
  'response_body',
  'response_trailers',
  'immediate_response',
];

function answerKind(answer: ProcessingResponse): AnswerKind {
  return ANSWER_KINDS.find((kind) => kind in answer) ?? 'request_headers';
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

interface Part {
  name: string;
  filename?: string;
  contentType?: string;
  content: Buffer;
}

/** Splits a multipart body into parts for display only (the server edits with src/body/multipart.ts). */
function multipartParts(body: Buffer, boundary: string): Part[] | undefined {
  const sections = `\r\n${body.toString('latin1')}`.split(`\r\n--${boundary}`);
  const parts: Part[] = [];
  for (const section of sections.slice(1)) {
    if (section.startsWith('--')) return parts;
    const headerEnd = section.indexOf('\r\n\r\n');
    if (headerEnd === -1) return undefined;
    const head = section.slice(section.indexOf('\r\n') + 2, headerEnd);
    const disposition = /^content-disposition:(.*)$/im.exec(head)?.[1] ?? '';
    const name = /(?:^|;)\s*name="([^"]*)"/i.exec(disposition)?.[1];
    if (name === undefined) return undefined;
    const filename = /;\s*filename="([^"]*)"/i.exec(disposition)?.[1];
    const contentType = /^content-type:\s*(.*)$/im.exec(head)?.[1]?.trim();
    parts.push({
      name,
      ...(filename !== undefined ? { filename } : {}),
      ...(contentType ? { contentType } : {}),
      content: Buffer.from(section.slice(headerEnd + 4), 'latin1'),
    });
  }
  return undefined;
}

/** Top-level fields of a body as name -> printable values (a repeated multipart name has several). */
function fieldsOf(body: Buffer, contentType: string | undefined): Map<string, string[]> | undefined {
  const kind = classifyBody(contentType);
  if (kind.kind === 'json') {
    try {
      const value: unknown = JSON.parse(body.toString('utf8'));
      if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
      return new Map(Object.entries(value).map(([key, member]) => [key, [JSON.stringify(member)]]));
    } catch {
      return undefined;
    }
  }
  if (kind.kind === 'multipart') {
    const parts = multipartParts(body, kind.boundary);
    if (!parts) return undefined;
    const fields = new Map<string, string[]>();
    for (const part of parts) {
      const shown = part.filename !== undefined ? `<file ${part.filename}, ${part.content.length} bytes>` : part.content.toString('utf8');
      fields.set(part.name, [...(fields.get(part.name) ?? []), shown]);
    }
    return fields;
  }
  return undefined;
}

function isPrintableText(body: Buffer): boolean {
  const text = body.toString('utf8');
  // eslint-disable-next-line no-control-regex
  return !text.includes('\uFFFD') && !/[\u0000-\u0008\u000e-\u001f\u007f]/.test(text);
}

function diffBodies(before: Buffer, after: Buffer, headersBefore: HeaderList, headersAfter: HeaderList, config: Config): BodyDiff {
  const contentType = lookup(headersAfter, 'content-type') ?? lookup(headersBefore, 'content-type');
  const kind = before.length === 0 ? 'none' : classifyBody(contentType).kind;
  const diff: BodyDiff = {
    kind,
    bytesBefore: before.length,
    bytesAfter: after.length,
    changed: !before.equals(after),
    removed: [],
    added: [],
    replaced: [],
  };
  if (kind === 'none' || kind === 'other') return diff;

  // The server sends an edited compressed body decompressed (content-encoding removed): compare the
  // decoded original with the result.
  let original = before;
  const encodingBefore = parseEncoding(lookup(headersBefore, 'content-encoding'));
  const encodingAfter = parseEncoding(lookup(headersAfter, 'content-encoding'));
  if (encodingAfter !== 'identity') {
    diff.note = 'the body is compressed: fields are not compared';
    return diff;
  }
  if (encodingBefore !== 'identity') {
    const decoded = encodingBefore && decompress(before, encodingBefore, config.limits.maxDecompressedBytes);
    if (!decoded) {
      diff.note = 'the original body could not be decompressed: fields are not compared';
      return diff;
    }
    original = decoded;
  }

  const fieldsBefore = fieldsOf(original, contentType);
  const fieldsAfter = fieldsOf(after, contentType);
  if (!fieldsBefore || !fieldsAfter) {
    diff.note = `the ${fieldsBefore ? 'resulting' : 'original'} body is not valid ${kind}: fields are not compared`;
  } else {
    for (const [name, values] of fieldsBefore) {
      const now = fieldsAfter.get(name);
      if (!now) diff.removed.push(name);
      else if (now.join('\n') !== values.join('\n')) diff.replaced.push({ name, before: printable(values.join(', ')), after: printable(now.join(', ')) });
    }
    for (const name of fieldsAfter.keys()) if (!fieldsBefore.has(name)) diff.added.push(name);
  }

  if (kind === 'json' && after.length <= PRINTABLE_BODY_BYTES && isPrintableText(after)) diff.result = after.toString('utf8');
  if (kind === 'multipart') {
    const boundary = classifyBody(contentType);
    const parts = boundary.kind === 'multipart' ? multipartParts(after, boundary.boundary) : undefined;
    if (parts) {
      diff.parts = parts.map((part) => ({
        name: part.name,
        ...(part.filename !== undefined ? { filename: part.filename } : {}),
        ...(part.contentType ? { contentType: part.contentType } : {}),
        bytes: part.content.length,
      }));
    }
  }
  return diff;
}

type HeaderList = Array<[string, string]>;

function notForwarded(body: Buffer): BodyDiff {
  return {
    kind: body.length === 0 ? 'none' : 'other',
    bytesBefore: body.length,
    bytesAfter: 0,
    changed: false,
    removed: [],
    added: [],
    replaced: [],
    note: 'not forwarded: the server answered with a local reply',
  };
}

function lookup(headers: HeaderList, name: string): string | undefined {
  return headers.find(([key]) => key === name)?.[1];
}

function drop(headers: HeaderList, name: string): void {
  for (let i = headers.length - 1; i >= 0; i--) if (headers[i]![0] === name) headers.splice(i, 1);
}

/** Why Envoy would not apply a header mutation (reference §2.3, §2.5), or undefined when it does. */
function ignoredBecause(action: 'set' | 'remove', name: string, headersMutable: boolean): string | undefined {
  if (!headersMutable) return 'header mutations in STREAMED body answers are ignored';
  if (action === 'remove' && (name.startsWith(':') || name === 'host')) return 'Envoy never removes pseudo-headers or host';
  if (action === 'set' && IMMUTABLE_SET.has(name)) return "dropped by Envoy's default mutation rules";
  return undefined;
}

/** Plays Envoy's side of one ext_proc call (request path only) against the real processor. */
export function explain(config: Config, request: ExplainRequest, options: { context?: CallContext; configFile?: string } = {}): Explanation {
  const processor = new CallProcessor(config, options.context ?? {});
  const notes: string[] = [];
  // What Envoy sends: pseudo-headers first, names lower-cased (HTTP/2 and Envoy's header map).
  const sentHeaders: HeaderList = [
    [':authority', request.authority],
    [':path', request.path],
    [':method', request.method.toUpperCase()],
    [':scheme', 'https'],
    ...request.headers.map(([name, value]): [string, string] => [name.toLowerCase(), value]),
  ];
  const forwarded: HeaderList = sentHeaders.map(([name, value]) => [name, value]);
  const exchange: ExchangeStep[] = [];
  const headerChanges: HeaderChange[] = [];
  let clearRouteCache = false;
  let modeOverride: ProcessingMode | null = null;
  let immediateResponse: Explanation['immediateResponse'] = null;
  const metadata: Record<string, Record<string, unknown>> = {};

  const send = (message: ProcessingRequest, sent: ExchangeStep['sent']): ProcessingResponse[] => {
    const answers = processor.handle(message);
    exchange.push({ sent, answers: answers.map(describeAnswer) });
    return answers;
  };

  /** Applies one answer as Envoy does; returns the body mutation it carries, if any. */
  const apply = (answer: ProcessingResponse, phase: string, headersMutable: boolean): CommonResponse['body_mutation'] => {
    if (answer.dynamic_metadata) {
      for (const [namespace, value] of Object.entries(structToJs(answer.dynamic_metadata))) {
        metadata[namespace] = { ...metadata[namespace], ...(value as Record<string, unknown>) };
      }
    }
    if ('immediate_response' in answer) {
      const immediate = answer.immediate_response;
      immediateResponse = {
        status: Number(immediate.status.code),
        body: immediate.body ? immediate.body.toString('utf8') : '',
        ...(immediate.details ? { details: immediate.details } : {}),
      };
      return undefined;
    }
    const common = commonOf(answer);
    const mutation = common?.header_mutation;
    // Envoy applies removals, then sets (mutation_utils.cc applyHeaderMutations).
    for (const name of mutation?.remove_headers ?? []) {
      const ignored = ignoredBecause('remove', name, headersMutable);
      headerChanges.push({ phase, action: 'remove', name, applied: !ignored, ...(ignored ? { ignored } : {}) });
      if (!ignored) drop(forwarded, name);
    }
    for (const option of mutation?.set_headers ?? []) {
      const name = option.header.key;
      const value = headerValue(option.header);
      const ignored = ignoredBecause('set', name, headersMutable);
      headerChanges.push({ phase, action: 'set', name, value: shownValue(name, value), applied: !ignored, ...(ignored ? { ignored } : {}) });
      if (ignored) continue;
      if (!option.append?.value) drop(forwarded, name);
      forwarded.push([name, value]);
    }
    // Envoy clears the route cache only together with a header mutation (§2.4).
    if (common?.clear_route_cache && mutation && headersMutable) clearRouteCache = true;
    return common?.body_mutation;
  };

  const hasBody = request.body.length > 0;
  const headerAnswers = send(
    {
      request: 'request_headers',
      request_headers: { headers: { headers: sentHeaders.map(([key, value]) => ({ key, raw_value: Buffer.from(value, 'latin1') })) }, end_of_stream: !hasBody },
      protocol_config: { request_body_mode: request.mode, response_body_mode: 'NONE', send_body_without_waiting_for_header_response: false },
    },
    { kind: 'request_headers', endOfStream: !hasBody },
  );
  for (const answer of headerAnswers) {
    apply(answer, 'request_headers', true);
    if (answer.mode_override && !('immediate_response' in answer)) modeOverride = answer.mode_override;
  }

  // Since Envoy 1.34 both body modes come from the override; an omitted one means NONE (§4, P10).
  const effective: BodySendMode = modeOverride ? (modeOverride.request_body_mode ?? 'NONE') : request.mode;
  // Envoy drops content-length itself when the mode configured at header time streams the body (§3.9).
  if (request.mode === 'STREAMED' && lookup(forwarded, 'content-length') !== undefined) {
    drop(forwarded, 'content-length');
    notes.push('Envoy removes content-length in STREAMED mode; the upstream request is chunked.');
  }

  let bodyAfter = request.body;
  let bodySentAs: string;
  if (immediateResponse) bodySentAs = 'not sent (the server answered with a local reply)';
  else if (!hasBody) bodySentAs = 'none (the request has no body)';
  else if (effective === 'NONE') bodySentAs = 'not sent: it flows to the upstream unchanged';
  else {
    const buffered = effective === 'BUFFERED' || effective === 'BUFFERED_PARTIAL';
    const chunks: Buffer[] = [];
    if (buffered) chunks.push(request.body);
    else for (let at = 0; at < request.body.length; at += STREAMED_CHUNK_BYTES) chunks.push(request.body.subarray(at, at + STREAMED_CHUNK_BYTES));
    bodySentAs = `${effective} in ${chunks.length} message${chunks.length === 1 ? '' : 's'}${modeOverride ? ' (asked by the server with mode_override)' : ''}`;
    const out: Buffer[] = [];
    for (const [index, chunk] of chunks.entries()) {
      const last = index === chunks.length - 1;
      const answers = send({ request: 'request_body', request_body: { body: chunk, end_of_stream: last } }, { kind: 'request_body', endOfStream: last, bytes: chunk.length });
      if (answers.length === 0 && effective !== 'FULL_DUPLEX_STREAMED') out.push(chunk);
      for (const answer of answers) {
        const mutation = apply(answer, 'request_body', buffered);
        if (immediateResponse) break;
        if (!mutation) out.push(chunk);
        else if ('body' in mutation) out.push(mutation.body);
        else if ('streamed_response' in mutation) out.push(mutation.streamed_response.body);
        // clear_body: the chunk becomes empty
      }
      if (immediateResponse) break;
    }
    bodyAfter = Buffer.concat(out);
  }

  const result = processor.finalResult();
  processor.close();
  const route = routeOf(result);
  const declared = lookup(sentHeaders, 'content-length');
  if (route && hasBody && declared === undefined) notes.push('No content-length header: the request is chunked, so the server cannot know its size in advance.');
  if (declared !== undefined && Number(declared) !== request.body.length) {
    notes.push(`content-length says ${declared} but the body has ${request.body.length} bytes: a real client would not send this.`);
  }
  if (request.mode === 'NONE' && modeOverride) notes.push('Assumes allow_mode_override: true on the ext_proc filter (recommended set-up); without it Envoy ignores mode_override.');

  const pathAfter = lookup(forwarded, ':path') ?? request.path;
  const shownHeaders = request.headers.map(([name, value]): [string, string] => [name.toLowerCase(), shownValue(name, value)]);
  return {
    request: { method: request.method.toUpperCase(), path: request.path, headers: shownHeaders, bodyBytes: request.body.length, envoyRequestBodyMode: request.mode },
    configFile: options.configFile ?? null,
    route: route ?? null,
    result,
    decision: describeResult(result),
    exchange,
    bodySentAs,
    headerChanges,
    path: { before: request.path, after: pathAfter, changed: pathAfter !== request.path },
    clearRouteCache,
    modeOverride,
    dynamicMetadata: Object.keys(metadata).length > 0 ? metadata : null,
    immediateResponse,
    body: immediateResponse ? notForwarded(request.body) : diffBodies(request.body, bodyAfter, sentHeaders, forwarded, config),
    notes,
  };
}
