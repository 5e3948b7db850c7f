// One ext_proc call = one HTTP request. This state machine turns each Envoy message into exactly one
// answer of the matching kind, in order (reference §3.1, §6.1, P6, P8), except in FULL_DUPLEX_STREAMED
// where answers carry the bytes released so far and may be fewer than the chunks (§3.6).
// It never does I/O: the server writes what `handle` returns. Decisions come from src/rewrite.ts.
import { classifyBody, createJsonEditor, createMultipartEditor, editJson, editMultipart } from './body/index.js';
import type { EditOutcome, StreamEditor, TouchedField } from './body/index.js';
import type { MemoryBudget } from './budget.js';
import type { Config } from './config.js';
import { decompress, parseEncoding, type Encoding } from './encoding.js';
import {
  azureErrorResponse,
  bodyResponse,
  contentLengthFor,
  headersResponse,
  metadataStruct,
  requestBodyModeOverride,
  streamedBodyResponse,
  trailersResponse,
  type Direction,
  type HeaderChanges,
} from './mutations.js';
import type {
  BodySendMode,
  HeaderMap,
  HttpBody,
  HttpHeaders,
  ProcessingMode,
  ProcessingRequest,
  ProcessingResponse,
  ProtocolConfiguration,
  StructValue,
} from './proto.js';
import { isHandled, isRejection, pathFromBody, planRequest, routeFor, unwrapExtraBody, type Rejection, type RequestPlan } from './rewrite.js';
import type { ImageRoute } from './routes.js';

/** Why a request was forwarded untouched; each is a metrics label. */
export type PassReason =
  | 'not_image_route'
  | 'not_rewritten_route'
  | 'method'
  | 'no_body'
  | 'content_type'
  | 'content_encoding'
  | 'no_model'
  | 'invalid_body'
  | 'partial_body'
  | 'body_mode_unknown'
  | 'body_not_sent'
  /** The rewrite needs the whole body (path from `model`, compressed body) but Envoy streams it. */
  | 'needs_buffered_body'
  /** Over `limits.maxBodyBytes` or the global budget, with `limits.overLimit: forward`. */
  | 'too_large'
  /** The call ended (Envoy's close, a disconnect, an error) before the request was decided. */
  | 'call_ended';

export type RejectReason = Rejection['reason'];

export interface RewriteReport {
  route: ImageRoute;
  bodyKind: 'json' | 'multipart' | 'none';
  mode: BodySendMode | 'unknown' | 'headers';
  bytesIn: number;
  bytesOut: number;
  /** Body fields removed or replaced, and header-time actions (`alias`, `api_version`, `credentials`, `path`). */
  changes: string[];
}

/** What the call did, reported once per call (for the log line and metrics). */
export type CallResult =
  | { kind: 'rewritten'; report: RewriteReport }
  | { kind: 'rejected'; reason: RejectReason; route: ImageRoute }
  | { kind: 'passed'; reason: PassReason; route?: ImageRoute; detail?: string };

export class ProtocolError extends Error {}

/** What a streamed body goes through once editing has stopped (no memory budget left): unchanged. */
const PASS_THROUGH: StreamEditor = { push: (chunk) => chunk, end: () => Buffer.alloc(0), outcome: 'unchanged', touched: [], heldBytes: 0, complete: false };

/** Room for the ProcessingRequest fields around a body in one gRPC message (headers are not resent). */
const MESSAGE_OVERHEAD_BYTES = 64 * 1024;

/** Header lookup over Envoy's HeaderMap: keys are lower-case, values are bytes in raw_value (§2.1). */
export class HeaderView {
  private readonly map = new Map<string, string>();

  constructor(headers: HeaderMap | null | undefined) {
    for (const entry of headers?.headers ?? []) {
      const key = entry.key.toLowerCase();
      // Envoy >= 1.27 sends raw_value; a value-only entry comes from older Envoys (§2.1 history).
      const value = entry.raw_value && entry.raw_value.length > 0 ? entry.raw_value.toString('latin1') : (entry.value ?? '');
      if (!this.map.has(key)) this.map.set(key, value);
    }
  }

  get(name: string): string | undefined {
    return this.map.get(name);
  }

  has(name: string): boolean {
    return this.map.has(name);
  }
}

/**
 * While a streamed body is no larger than this window, nothing is released until the whole body is known
 * to be well-formed, so a malformed body is forwarded byte-for-byte even in STREAMED mode. Past it, bytes
 * flow with bounded memory and only the editor's own hold-back.
 */
interface VerifyWindow {
  input: Buffer[];
  output: Buffer[];
  bytes: number;
}

/** How the request body of a candidate reaches us. */
type BodyPlan =
  | { mode: 'BUFFERED' | 'BUFFERED_PARTIAL' | 'unknown'; seenBody: boolean }
  | { mode: 'STREAMED' | 'FULL_DUPLEX_STREAMED'; editor: StreamEditor; window?: VerifyWindow; ended?: boolean };

interface Candidate {
  plan: RequestPlan;
  bodyKind: 'json' | 'multipart';
  boundary?: string;
  encoding: Encoding;
  hadContentLength: boolean;
  body?: BodyPlan;
  bytesIn: number;
  bytesOut: number;
}

export interface CallContext {
  /** Global budget of held body bytes (absent: unbounded, e.g. in `explain`). */
  budget?: MemoryBudget;
  /** The API key from `credentials.apiKeyFile`, read at call time. */
  apiKey?: () => string | undefined;
}

export class CallProcessor {
  private protocol: ProtocolConfiguration | undefined;
  private candidate: Candidate | undefined;
  private plan: RequestPlan | undefined;
  private headersSeen = false;
  private resultValue: CallResult | undefined;
  private reservedBytes = 0;
  /** The part of reservedBytes that covers what the streaming editor holds back. */
  private holdReserved = 0;
  private declaredLength: number | undefined;

  constructor(
    private readonly config: Config,
    private readonly context: CallContext = {},
  ) {}

  /** The call's outcome, once known (undefined while undecided). */
  get result(): CallResult | undefined {
    return this.resultValue;
  }

  /** The outcome when the call is over: an undecided candidate either never got its body or was cut off. */
  finalResult(): CallResult {
    if (this.resultValue) return this.resultValue;
    const candidate = this.candidate;
    const route = this.plan?.route;
    if (candidate && candidate.bytesIn === 0) return { kind: 'passed', reason: 'body_not_sent', route: candidate.plan.route };
    return { kind: 'passed', reason: 'call_ended', ...(route ? { route } : {}) };
  }

  /** Bytes the editors hold back for this call beyond what it reserved from the budget. */
  get heldBytes(): number {
    const body = this.candidate?.body;
    return body && 'editor' in body ? Math.max(0, body.editor.heldBytes - this.holdReserved) : 0;
  }

  /** Releases what the call reserved from the global budget; the server calls it when the call ends. */
  close(): void {
    this.context.budget?.release(this.reservedBytes);
    this.reservedBytes = 0;
  }

  handle(message: ProcessingRequest): ProcessingResponse[] {
    // protocol_config arrives on the first message only (Envoy >= 1.34, §1.2, P20).
    if (message.protocol_config && !this.protocol) this.protocol = message.protocol_config;
    // In observability mode Envoy ignores answers; sending none is the documented contract (§6.7).
    if (message.observability_mode) return [];

    switch (message.request) {
      case 'request_headers':
        return [this.onRequestHeaders(message.request_headers ?? { end_of_stream: false })];
      case 'request_body':
        return this.onRequestBody(message.request_body ?? { body: Buffer.alloc(0), end_of_stream: false });
      case 'request_trailers':
        return [...this.flushBeforeTrailers(), trailersResponse('request')];
      case 'response_headers':
        return [headersResponse('response')];
      case 'response_body':
        return this.passBody('response', message.response_body ?? { body: Buffer.alloc(0), end_of_stream: false });
      case 'response_trailers':
        return [trailersResponse('response')];
      default:
        throw new ProtocolError('ProcessingRequest without a known request kind');
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Request headers: choose what to do with this request.

  private onRequestHeaders(message: HttpHeaders): ProcessingResponse {
    if (this.headersSeen) throw new ProtocolError('request_headers received twice');
    this.headersSeen = true;
    const headers = new HeaderView(message.headers);
    const route = routeFor(headers.get(':path') ?? '', this.config.rewrite);
    if (!route || !isHandled(route, this.config)) {
      this.pass(route ? 'not_rewritten_route' : 'not_image_route', route);
      return this.headersAnswer(undefined, this.skipBodyOverride());
    }

    const plan = planRequest(this.config, { route, authorization: headers.get('authorization'), apiKey: this.context.apiKey ?? (() => undefined) });
    if (isRejection(plan)) return this.reject(plan, route);
    this.plan = plan;
    const headerChanges = plan.headers;
    const pathChanged = headerChanges.set?.some(([key]) => key === ':path') ?? false;

    const refusal = this.refuseBody(plan, headers, message.end_of_stream);
    if (refusal) {
      if (pathChanged || plan.actions.length > 0) this.rewrittenAtHeaders(plan);
      else this.pass(refusal, route);
      return this.headersAnswer({ headers: headerChanges, clearRouteCache: pathChanged }, this.skipBodyOverride());
    }

    const body = classifyBody(headers.get('content-type'));
    this.candidate = {
      plan,
      bodyKind: body.kind === 'multipart' ? 'multipart' : 'json',
      ...(body.kind === 'multipart' ? { boundary: body.boundary } : {}),
      encoding: parseEncoding(headers.get('content-encoding'))!,
      hadContentLength: headers.has('content-length'),
      bytesIn: 0,
      bytesOut: 0,
    };
    const declared = headers.has('content-length') ? Number(headers.get('content-length')) : undefined;
    this.declaredLength = Number.isFinite(declared) ? declared : undefined;
    return this.requestBody(this.declaredLength, headerChanges, pathChanged);
  }

  /** Why the body of a handled request is not edited, or undefined when it is. */
  private refuseBody(plan: RequestPlan, headers: HeaderView, endOfStream: boolean): PassReason | undefined {
    if (headers.get(':method')?.toUpperCase() !== 'POST') return 'method';
    // No body => Envoy never sends a body message, whatever the mode (§3.1, P7).
    if (endOfStream) return 'no_body';
    if (plan.rules.size === 0) return 'no_model';
    if (classifyBody(headers.get('content-type')).kind === 'other') return 'content_type';
    if (parseEncoding(headers.get('content-encoding')) === undefined) return 'content_encoding';
    return undefined;
  }

  /**
   * Decides how the body of a candidate reaches us. With the recommended Envoy set-up (body NONE,
   * allow_mode_override) we ask for it: BUFFERED when small or when the edit needs the whole body,
   * STREAMED when large or of unknown size. When Envoy already sends bodies, its mode is kept.
   */
  private requestBody(declared: number | undefined, headerChanges: HeaderChanges, pathChanged: boolean): ProcessingResponse {
    const candidate = this.candidate!;
    const route = candidate.plan.route;
    const common = { headers: headerChanges, clearRouteCache: pathChanged };
    const limits = this.config.limits;
    const needsWhole = this.needsWholeBody(candidate);

    if (declared !== undefined && declared > limits.maxBodyBytes) return this.overLimit(route, common);
    const configured = this.protocol?.request_body_mode;
    // A whole body arrives as one ext_proc message (static BUFFERED sends every body so): one above
    // maxMessageBytes would fail the gRPC call.
    const whole = needsWhole || configured === 'BUFFERED';
    if (whole && declared !== undefined && declared > this.wholeBodyLimit()) return this.overLimit(route, common);

    if (configured === undefined) {
      // Envoy < 1.34 sends no protocol_config: its mode is unknown, and mode_override semantics differ.
      // Header changes in a body answer only count in BUFFERED mode, so edits that need them are off.
      if (needsWhole) return this.giveUp('body_mode_unknown', route, common);
      candidate.body = { mode: 'unknown', seenBody: false };
      return this.headersAnswer(common);
    }
    if (configured !== 'NONE') {
      if (needsWhole && configured !== 'BUFFERED') return this.giveUp('needs_buffered_body', route, common);
      candidate.body = this.bodyPlanFor(configured);
      return this.headersAnswer(common);
    }
    if (!this.overridable()) {
      this.pass('body_not_sent', route);
      return this.headersAnswer(common);
    }

    let mode: BodySendMode = declared !== undefined && declared <= this.config.streamThresholdBytes ? 'BUFFERED' : 'STREAMED';
    if (needsWhole) mode = 'BUFFERED';
    // A whole body is held in memory: reserve it from the global budget first (STYLE lesson 6).
    if (mode === 'BUFFERED' && declared !== undefined && !this.reserve(declared)) {
      if (needsWhole) return this.overLimit(route, common);
      mode = 'STREAMED';
    }
    candidate.body = this.bodyPlanFor(mode);
    // Overriding NONE -> STREAMED leaves the original content-length in place (the removal decision ran
    // before our answer) yet blocks setting it later, so it must go now as the length may change (§3.9, P5).
    const headers: HeaderChanges =
      mode === 'STREAMED' && candidate.hadContentLength
        ? { set: headerChanges.set ?? [], remove: [...(headerChanges.remove ?? []), 'content-length'] }
        : headerChanges;
    return this.headersAnswer({ headers, clearRouteCache: pathChanged }, requestBodyModeOverride(mode, this.protocol!.response_body_mode));
  }

  /** The largest body that can be asked for whole: it must fit one ext_proc message (with framing to spare). */
  private wholeBodyLimit(): number {
    return Math.min(this.config.limits.maxBodyBytes, this.config.maxMessageBytes - MESSAGE_OVERHEAD_BYTES);
  }

  /** Edits that need the complete body: a path taken from `model`, a compressed body, unwrapping extra_body. */
  private needsWholeBody(candidate: Candidate): boolean {
    const { plan } = candidate;
    return plan.pathFromModel || candidate.encoding !== 'identity' || (plan.unwrapExtraBody && candidate.bodyKind === 'json');
  }

  private bodyPlanFor(mode: BodySendMode): BodyPlan {
    const candidate = this.candidate!;
    if (mode === 'STREAMED' || mode === 'FULL_DUPLEX_STREAMED') {
      const { rules } = candidate.plan;
      const editor = candidate.bodyKind === 'json' ? createJsonEditor(rules) : createMultipartEditor(candidate.boundary!, rules);
      // A body announced larger than the window would only be held to be released anyway.
      const fitsWindow = this.declaredLength === undefined || this.declaredLength <= this.config.streamThresholdBytes;
      return { mode, editor, ...(fitsWindow ? { window: { input: [], output: [], bytes: 0 } } : {}) };
    }
    return { mode: mode === 'BUFFERED_PARTIAL' ? 'BUFFERED_PARTIAL' : 'BUFFERED', seenBody: false };
  }

  /** mode_override is honoured only under these conditions (§4 items 2-3); allow_mode_override is unknowable. */
  private overridable(): boolean {
    const protocol = this.protocol;
    if (!protocol || protocol.send_body_without_waiting_for_header_response) return false;
    return protocol.request_body_mode !== 'FULL_DUPLEX_STREAMED' && protocol.response_body_mode !== 'FULL_DUPLEX_STREAMED';
  }

  /** For requests we will not edit while Envoy is configured to send bodies: ask it to stop (no buffering). */
  private skipBodyOverride(): ProcessingMode | undefined {
    const configured = this.protocol?.request_body_mode;
    if (!configured || configured === 'NONE' || !this.overridable()) return undefined;
    return requestBodyModeOverride('NONE', this.protocol!.response_body_mode);
  }

  private reserve(bytes: number): boolean {
    if (!this.context.budget) return true;
    if (!this.context.budget.tryReserve(bytes)) return false;
    this.reservedBytes += bytes;
    return true;
  }

  private release(bytes: number): void {
    const released = Math.min(bytes, this.reservedBytes);
    this.context.budget?.release(released);
    this.reservedBytes -= released;
  }

  /** Keeps the reservation for the editor's hold-back at `held` bytes; false when the budget has no room. */
  private reserveHold(held: number): boolean {
    if (held > this.holdReserved && !this.reserve(held - this.holdReserved)) return false;
    if (held < this.holdReserved) this.release(this.holdReserved - held);
    this.holdReserved = held;
    return true;
  }

  // ---------------------------------------------------------------------------------------------
  // Request body.

  private onRequestBody(message: HttpBody): ProcessingResponse[] {
    const candidate = this.candidate;
    const body = candidate?.body;
    if (!candidate || !body) return this.passBody('request', message);
    candidate.bytesIn += message.body.length;

    if ('editor' in body) return this.streamChunk(candidate, body, message);
    const answers = this.wholeBody(candidate, body, message);
    // The whole body is answered (handed to grpc-js, which pauses reading while writes back up), yet
    // Envoy keeps a BUFFERED call open until the request ends or (1.37+) the response headers arrive
    // (§6.6): the reservation goes now, or every image Azure is still generating would count.
    this.release(this.reservedBytes);
    return answers;
  }

  private wholeBody(candidate: Candidate, body: Extract<BodyPlan, { seenBody: boolean }>, message: HttpBody): ProcessingResponse[] {
    if (body.seenBody) {
      // BUFFERED and BUFFERED_PARTIAL send one body message; anything after it flows unprocessed.
      candidate.bytesOut += message.body.length;
      return [bodyResponse('request')];
    }
    body.seenBody = true;
    // A BUFFERED body with end_of_stream false is still whole (trailers follow, §3.3); a partial or
    // unknown-mode body without end_of_stream may be cut anywhere, so it is not edited.
    if (!message.end_of_stream && body.mode !== 'BUFFERED') {
      return this.leaveBody(candidate, message, body.mode === 'BUFFERED_PARTIAL' ? 'partial_body' : 'body_mode_unknown');
    }
    // Over maxBodyBytes, or (a body of unannounced size, not reserved at headers time, is in memory now)
    // no room for it in the global budget: the overLimit policy.
    if (message.body.length > this.config.limits.maxBodyBytes || (this.reservedBytes === 0 && !this.reserve(message.body.length))) {
      const rejection = this.overLimitRejection();
      if (rejection) return [this.reject(rejection, candidate.plan.route)];
      return this.leaveBody(candidate, message, 'too_large');
    }
    // The editors work on decoded bytes; a compressed body is only edited when Envoy will apply the
    // header changes of a BUFFERED answer (content-encoding removed with it).
    if (candidate.encoding !== 'identity' && body.mode !== 'BUFFERED') return this.leaveBody(candidate, message, 'content_encoding');
    return [this.editWhole(candidate, message.body)];
  }

  private leaveBody(candidate: Candidate, message: HttpBody, reason: PassReason): ProcessingResponse[] {
    candidate.bytesOut += message.body.length;
    this.pass(reason, candidate.plan.route);
    return [bodyResponse('request', undefined, this.metadata())];
  }

  private editWhole(candidate: Candidate, original: Buffer): ProcessingResponse {
    const { plan } = candidate;
    let body = original;
    if (candidate.encoding !== 'identity') {
      // The edited body goes back in one ext_proc message: one past maxMessageBytes fails the call (a 500).
      const limit = Math.min(this.config.limits.maxDecompressedBytes, this.config.maxMessageBytes - MESSAGE_OVERHEAD_BYTES);
      const inflated = decompress(original, candidate.encoding, limit);
      if (!inflated) {
        candidate.bytesOut += original.length;
        this.pass('content_encoding', plan.route, 'cannot decompress within limits');
        return bodyResponse('request', undefined, this.metadata());
      }
      body = inflated;
    }
    const outcome: EditOutcome =
      // The body was decoded from this call's gRPC message and is not read again: edit it in place.
      candidate.bodyKind === 'json' ? editJson(body, plan.rules, { inPlace: true }) : editMultipart(body, candidate.boundary!, plan.rules, { inPlace: true });
    if (outcome.kind === 'unchanged' && plan.pathFromModel) {
      // The route names no deployment and the body has no `model` to name one: say so (400), as Azure would.
      const missing = pathFromBody(plan, this.config, [], candidate.bodyKind);
      if (missing !== undefined && typeof missing !== 'string') return this.reject(missing, plan.route);
    }
    if (outcome.kind !== 'edited') {
      candidate.bytesOut += original.length;
      const invalid = outcome.kind === 'invalid';
      // A rewrite that needed `model` from the body cannot happen without one: Azure's answer stays as it was.
      this.pass(invalid ? 'invalid_body' : 'no_model', plan.route, invalid ? outcome.reason : undefined);
      return bodyResponse('request', undefined, this.metadata());
    }

    const path = pathFromBody(plan, this.config, outcome.touched, candidate.bodyKind);
    if (path !== undefined && typeof path !== 'string') return this.reject(path, plan.route);
    const edited = plan.unwrapExtraBody && candidate.bodyKind === 'json' ? unwrapExtraBody(outcome.body, outcome.touched) : outcome.body;
    candidate.bytesOut += edited.length;

    const set: Array<readonly [string, string]> = [];
    const remove: string[] = [];
    if (path !== undefined) set.push([':path', path]);
    // Sent decompressed: the coding header goes, and content-length follows the new body (§3.9).
    if (candidate.encoding !== 'identity') remove.push('content-encoding');
    set.push(...(contentLengthFor(edited, candidate.hadContentLength)?.set ?? []));
    this.rewritten(candidate, outcome.touched, path !== undefined ? ['path'] : []);
    return bodyResponse('request', { body: edited, headers: { set, remove }, clearRouteCache: path !== undefined }, this.metadata());
  }

  /**
   * `ends`: this is the body's last chunk, with end_of_stream, or (FULL_DUPLEX_STREAMED) an empty one
   * standing for the trailers that end it.
   */
  private streamChunk(
    candidate: Candidate,
    body: Extract<BodyPlan, { editor: StreamEditor }>,
    message: HttpBody,
    ends = message.end_of_stream,
  ): ProcessingResponse[] {
    const { editor } = body;
    // The announced length reached is the end of the body even when trailers, not end_of_stream, follow.
    if (!ends && this.declaredLength !== undefined && candidate.bytesIn >= this.declaredLength) ends = true;
    if (body.ended) {
      // Bytes after the end (an empty end_of_stream chunk after the announced length) pass as they are.
      candidate.bytesOut += message.body.length;
      return body.mode === 'FULL_DUPLEX_STREAMED' ? [streamedBodyResponse('request', message.body, message.end_of_stream)] : [bodyResponse('request')];
    }
    let released: Buffer;
    let overLimit = false;
    if (editor !== PASS_THROUGH && candidate.bytesIn > this.config.limits.maxBodyBytes) {
      // A body of unannounced size that grows past limits.maxBodyBytes is over the limit like an announced
      // one: editing stops before this chunk and what the editor holds goes on as it came.
      released = Buffer.concat([editor.end(), message.body]);
      overLimit = true;
    } else {
      released = editor.push(message.body);
      if (ends) released = Buffer.concat([released, editor.end()]);
      // limits.globalHeldBytes covers held-back bytes too (a huge `model` is held whole, up to the
      // editor's cap): without room, editing stops and what is held goes on as it came.
      if (!this.reserveHold(editor.heldBytes)) {
        released = Buffer.concat([released, editor.end()]);
        overLimit = true;
      }
    }
    if (ends) body.ended = true;
    if (overLimit) {
      // Bytes already released stay as they were sent.
      this.reserveHold(0);
      body.editor = PASS_THROUGH;
      const rejection = this.overLimitRejection();
      if (rejection) return [this.reject(rejection, candidate.plan.route)];
      this.pass('too_large', candidate.plan.route);
    }
    if (body.window) {
      const verified = this.throughWindow(body, message, released, ends);
      if (verified === undefined) {
        // Held for verification: STREAMED answers the chunk with no bytes, FULL_DUPLEX does not answer yet.
        return body.mode === 'FULL_DUPLEX_STREAMED' ? [] : [bodyResponse('request', { body: Buffer.alloc(0) })];
      }
      released = verified;
    }
    candidate.bytesOut += released.length;
    if (ends) {
      if (editor.outcome === 'edited') this.rewritten(candidate, editor.touched, []);
      else this.pass(editor.outcome === 'invalid' ? 'invalid_body' : 'no_model', candidate.plan.route);
    }
    const metadata = ends ? this.metadata() : {};

    if (body.mode === 'FULL_DUPLEX_STREAMED') {
      // Answers carry released bytes; nothing to release yet means no answer yet (§3.6: M chunks -> N answers).
      if (released.length === 0 && !ends) return [];
      return [{ ...streamedBodyResponse('request', released, message.end_of_stream), ...(metadata.dynamicMetadata ? { dynamic_metadata: metadata.dynamicMetadata } : {}) }];
    }
    // STREAMED: one answer per chunk; an unchanged chunk gets a bare CONTINUE (lesson 5).
    if (released.equals(message.body)) return [bodyResponse('request', undefined, metadata)];
    return [bodyResponse('request', { body: released }, metadata)];
  }

  /**
   * Keeps input and edited output while the body fits the verification window. Returns the bytes to
   * release now, or undefined while still holding: at the end, the edited body if it proved well-formed,
   * else the original bytes; past the window (or the memory budget), everything held so far.
   */
  private throughWindow(body: Extract<BodyPlan, { editor: StreamEditor }>, message: HttpBody, released: Buffer, ends: boolean): Buffer | undefined {
    const window = body.window!;
    const added = message.body.length + released.length;
    window.input.push(message.body);
    window.output.push(released);
    window.bytes += added;
    const fits = window.bytes <= 2 * this.config.streamThresholdBytes && this.reserve(added);
    // Verified: the body ended, or its structure did (what may follow is whitespace or an epilogue; a body
    // followed by trailers never brings end_of_stream, §3.4), or it proved malformed (only the original
    // bytes can go out then).
    const invalid = body.editor.outcome === 'invalid';
    if (ends || !fits || invalid || body.editor.complete) {
      body.window = undefined;
      if (fits) this.release(window.bytes);
      else this.release(window.bytes - added);
      return Buffer.concat(invalid ? window.input : window.output);
    }
    return undefined;
  }

  /**
   * In FULL_DUPLEX_STREAMED a body followed by trailers has no end_of_stream: the trailers tell that it is
   * complete (processing_mode.proto). What the editor or the window still holds goes out before the
   * trailers answer (headers -> body -> trailers, §3.6), with end_of_stream false as the trailers end the
   * request, as in Envoy's ServerWaitForBodyAndTrailerBeforeSendsHeaderRespDuplexStreamedSmallBody.
   * STREAMED cannot do this: Envoy sends the trailers only once every chunk is answered (§3.4).
   */
  private flushBeforeTrailers(): ProcessingResponse[] {
    const candidate = this.candidate;
    const body = candidate?.body;
    if (!candidate || !body || !('editor' in body) || body.mode !== 'FULL_DUPLEX_STREAMED' || this.resultValue) return [];
    return this.streamChunk(candidate, body, { body: Buffer.alloc(0), end_of_stream: false }, true);
  }

  /** A body we do not edit. FULL_DUPLEX_STREAMED drains the original, so it must be echoed back (§3.6). */
  private passBody(direction: Direction, message: HttpBody): ProcessingResponse[] {
    const mode = direction === 'request' ? this.protocol?.request_body_mode : this.protocol?.response_body_mode;
    if (mode === 'FULL_DUPLEX_STREAMED') return [streamedBodyResponse(direction, message.body, message.end_of_stream)];
    return [bodyResponse(direction)];
  }

  // ---------------------------------------------------------------------------------------------
  // Outcomes.

  private headersAnswer(changes?: { headers?: HeaderChanges; clearRouteCache?: boolean }, modeOverride?: ProcessingMode): ProcessingResponse {
    return headersResponse('request', changes, {
      ...(modeOverride ? { modeOverride } : {}),
      ...(this.resultValue ? this.metadata() : {}),
    });
  }

  private overLimitRejection(): Rejection | undefined {
    if (this.config.limits.overLimit !== 'reject') return undefined;
    return {
      status: 413,
      message: `The request body exceeds the ${this.config.limits.maxBodyBytes} bytes this gateway edits, or the gateway is out of memory budget.`,
      type: 'invalid_request_error',
      code: 'request_too_large',
      reason: 'body_too_large',
    };
  }

  private overLimit(route: ImageRoute, common: { headers?: HeaderChanges; clearRouteCache?: boolean }): ProcessingResponse {
    const rejection = this.overLimitRejection();
    if (rejection) return this.reject(rejection, route);
    return this.giveUp('too_large', route, common);
  }

  /** Forward the body unchanged; header-time changes (credentials, api-version) still apply. */
  private giveUp(reason: PassReason, route: ImageRoute, common: { headers?: HeaderChanges; clearRouteCache?: boolean }): ProcessingResponse {
    this.candidate = undefined;
    this.pass(reason, route);
    return this.headersAnswer(common, this.skipBodyOverride());
  }

  private reject(rejection: Rejection, route: ImageRoute): ProcessingResponse {
    this.resultValue = { kind: 'rejected', reason: rejection.reason, route };
    const { status, reason, ...error } = rejection;
    const response = azureErrorResponse(status, error, `azure_image_extproc_${reason}`);
    const { dynamicMetadata } = this.metadata();
    return dynamicMetadata ? { ...response, dynamic_metadata: dynamicMetadata } : response;
  }

  private pass(reason: PassReason, route?: ImageRoute, detail?: string): void {
    this.resultValue ??= { kind: 'passed', reason, ...(route ? { route } : {}), ...(detail ? { detail } : {}) };
  }

  private rewrittenAtHeaders(plan: RequestPlan): void {
    this.resultValue = {
      kind: 'rewritten',
      report: { route: plan.route, bodyKind: 'none', mode: 'headers', bytesIn: 0, bytesOut: 0, changes: [...plan.actions] },
    };
  }

  private rewritten(candidate: Candidate, touched: readonly TouchedField[], extra: string[]): void {
    this.resultValue = {
      kind: 'rewritten',
      report: {
        route: candidate.plan.route,
        bodyKind: candidate.bodyKind,
        mode: candidate.body?.mode ?? 'unknown',
        bytesIn: candidate.bytesIn,
        bytesOut: candidate.bytesOut,
        changes: [...candidate.plan.actions, ...touched.map((field) => field.name), ...extra],
      },
    };
  }

  /** Dynamic metadata describing the decision, for Envoy access logs (only when a namespace is configured). */
  private metadata(): { dynamicMetadata?: StructValue } {
    const namespace = this.config.metadataNamespace;
    const result = this.resultValue;
    if (!namespace || !result) return {};
    const route = result.kind === 'rewritten' ? result.report.route : result.route;
    const fields: Record<string, string | number> = { action: result.kind };
    if (route) fields.route = route.kind;
    if (route?.kind === 'deployment') fields.deployment = route.deployment;
    if (result.kind === 'rewritten') {
      fields.changes = result.report.changes.join(',');
      fields.bytes_before = result.report.bytesIn;
      fields.bytes_after = result.report.bytesOut;
    } else {
      fields.reason = result.reason;
    }
    return { dynamicMetadata: metadataStruct(namespace, fields) };
  }
}
