// One ext_proc call = one HTTP request. This state machine turns each Envoy message into exactly one
// answer of the matching kind, in order (reference §3.1, §6.1, P6, P8), except in FULL_DUPLEX_STREAMED
// where answers carry the bytes released so far and may be fewer than the chunks (§3.6).
// It never does I/O: the server writes what `handle` returns.
import { classifyBody, createJsonEditor, createMultipartEditor, editJson, editMultipart } from './body/index.js';
import type { EditOutcome, FieldRules, StreamEditor } from './body/index.js';
import type { Config } from './config.js';
import {
  bodyResponse,
  contentLengthFor,
  headersResponse,
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
} from './proto.js';
import { matchImageRoute, type ImageRoute } from './routes.js';

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
  /** The call ended (Envoy's close, a disconnect, an error) before the request was decided. */
  | 'call_ended';

export interface RewriteReport {
  route: ImageRoute;
  bodyKind: 'json' | 'multipart';
  mode: BodySendMode | 'unknown';
  bytesIn: number;
  bytesOut: number;
  removed: string[];
}

/** What the call did, reported once per call (for the log line and metrics). */
export type CallResult =
  | { kind: 'rewritten'; report: RewriteReport }
  | { kind: 'passed'; reason: PassReason; route?: ImageRoute; detail?: string };

export class ProtocolError extends Error {}

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

const REMOVE_MODEL: FieldRules = new Map([['model', () => 'remove' as const]]);

/** How the request body of a candidate reaches us. */
type BodyPlan =
  | { mode: 'BUFFERED' | 'BUFFERED_PARTIAL' | 'unknown'; seenBody: boolean }
  | { mode: 'STREAMED' | 'FULL_DUPLEX_STREAMED'; editor: StreamEditor };

interface Candidate {
  route: ImageRoute;
  bodyKind: 'json' | 'multipart';
  boundary?: string;
  rules: FieldRules;
  hadContentLength: boolean;
  plan?: BodyPlan;
  bytesIn: number;
  bytesOut: number;
}

export class CallProcessor {
  private protocol: ProtocolConfiguration | undefined;
  private candidate: Candidate | undefined;
  private headersSeen = false;
  private resultValue: CallResult | undefined;

  constructor(private readonly config: Config) {}

  /** The call's outcome, once known (undefined while undecided). */
  get result(): CallResult | undefined {
    return this.resultValue;
  }

  /** The outcome when the call is over: an undecided candidate either never got its body or was cut off. */
  finalResult(): CallResult {
    if (this.resultValue) return this.resultValue;
    const candidate = this.candidate;
    if (candidate && candidate.bytesIn === 0) return { kind: 'passed', reason: 'body_not_sent', route: candidate.route };
    return { kind: 'passed', reason: 'call_ended', ...(candidate ? { route: candidate.route } : {}) };
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
        return [trailersResponse('request')];
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

  private pass(reason: PassReason, route?: ImageRoute, detail?: string): void {
    this.resultValue ??= { kind: 'passed', reason, ...(route ? { route } : {}), ...(detail ? { detail } : {}) };
  }

  private onRequestHeaders(message: HttpHeaders): ProcessingResponse {
    if (this.headersSeen) throw new ProtocolError('request_headers received twice');
    this.headersSeen = true;
    const headers = new HeaderView(message.headers);
    const route = matchImageRoute(headers.get(':path') ?? '');
    const refusal = this.refuse(route, headers, message.end_of_stream);
    if (refusal || !route) {
      this.pass(refusal ?? 'not_image_route', route);
      return headersResponse('request', undefined, { modeOverride: this.skipBodyOverride() });
    }

    const body = classifyBody(headers.get('content-type'));
    const bodyKind = body.kind === 'multipart' ? 'multipart' : 'json';
    const contentLength = Number(headers.get('content-length'));
    this.candidate = {
      route,
      bodyKind,
      ...(body.kind === 'multipart' ? { boundary: body.boundary } : {}),
      rules: REMOVE_MODEL,
      hadContentLength: headers.has('content-length'),
      bytesIn: 0,
      bytesOut: 0,
    };
    return this.requestBody(Number.isFinite(contentLength) && headers.has('content-length') ? contentLength : undefined);
  }

  /** Why a request is not a candidate for editing, or undefined when it is. */
  private refuse(route: ImageRoute | undefined, headers: HeaderView, endOfStream: boolean): PassReason | undefined {
    if (!route) return 'not_image_route';
    if (route.kind !== 'deployment') return 'not_rewritten_route';
    if (headers.get(':method')?.toUpperCase() !== 'POST') return 'method';
    // No body => Envoy never sends a body message, whatever the mode (§3.1, P7).
    if (endOfStream) return 'no_body';
    if (classifyBody(headers.get('content-type')).kind === 'other') return 'content_type';
    const encoding = headers.get('content-encoding')?.trim().toLowerCase();
    if (encoding && encoding !== 'identity') return 'content_encoding';
    return undefined;
  }

  /**
   * Decides how the body of a candidate reaches us. With the recommended Envoy set-up (body NONE,
   * allow_mode_override) we ask for it: BUFFERED when small, STREAMED when large or of unknown size.
   * When Envoy already sends bodies, its mode is kept.
   */
  private requestBody(contentLength: number | undefined): ProcessingResponse {
    const candidate = this.candidate!;
    const configured = this.protocol?.request_body_mode;
    if (configured === undefined) {
      // Envoy < 1.34 sends no protocol_config: its mode is unknown, and mode_override semantics differ.
      candidate.plan = { mode: 'unknown', seenBody: false };
      return headersResponse('request');
    }
    if (configured !== 'NONE') {
      candidate.plan = this.planFor(configured);
      return headersResponse('request');
    }
    if (!this.overridable()) {
      this.pass('body_not_sent', candidate.route);
      return headersResponse('request');
    }
    const mode: BodySendMode =
      contentLength !== undefined && contentLength <= this.config.streamThresholdBytes ? 'BUFFERED' : 'STREAMED';
    candidate.plan = this.planFor(mode);
    // Overriding NONE -> STREAMED leaves the original content-length in place (the removal decision ran
    // before our answer) yet blocks setting it later, so it must go now if the length may change (§3.9, P5).
    const headers: HeaderChanges | undefined = mode === 'STREAMED' && candidate.hadContentLength ? { remove: ['content-length'] } : undefined;
    return headersResponse('request', headers ? { headers } : undefined, {
      modeOverride: requestBodyModeOverride(mode, this.protocol!.response_body_mode),
    });
  }

  private planFor(mode: BodySendMode): BodyPlan {
    const candidate = this.candidate!;
    if (mode === 'STREAMED' || mode === 'FULL_DUPLEX_STREAMED') {
      const editor =
        candidate.bodyKind === 'json'
          ? createJsonEditor(candidate.rules)
          : createMultipartEditor(candidate.boundary!, candidate.rules);
      return { mode, editor };
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

  private onRequestBody(message: HttpBody): ProcessingResponse[] {
    const candidate = this.candidate;
    const plan = candidate?.plan;
    if (!candidate || !plan) return this.passBody('request', message);
    candidate.bytesIn += message.body.length;

    if ('editor' in plan) return this.streamChunk(candidate, plan, message);

    if (plan.seenBody) {
      // BUFFERED and BUFFERED_PARTIAL send one body message; anything after it flows unprocessed.
      candidate.bytesOut += message.body.length;
      return [bodyResponse('request')];
    }
    plan.seenBody = true;
    // A BUFFERED body with end_of_stream false is still whole (trailers follow, §3.3); a partial or
    // unknown-mode body without end_of_stream may be cut anywhere, so it is not edited.
    if (!message.end_of_stream && plan.mode !== 'BUFFERED') {
      candidate.bytesOut += message.body.length;
      this.pass(plan.mode === 'BUFFERED_PARTIAL' ? 'partial_body' : 'body_mode_unknown', candidate.route);
      return [bodyResponse('request')];
    }
    return [this.editWhole(candidate, message.body)];
  }

  private editWhole(candidate: Candidate, body: Buffer): ProcessingResponse {
    const outcome: EditOutcome =
      candidate.bodyKind === 'json' ? editJson(body, candidate.rules) : editMultipart(body, candidate.boundary!, candidate.rules);
    if (outcome.kind !== 'edited') {
      candidate.bytesOut += body.length;
      this.pass(outcome.kind === 'invalid' ? 'invalid_body' : 'no_model', candidate.route, outcome.kind === 'invalid' ? outcome.reason : undefined);
      return bodyResponse('request');
    }
    candidate.bytesOut += outcome.body.length;
    this.rewritten(candidate, outcome.touched.map((field) => field.name));
    const headers = contentLengthFor(outcome.body, candidate.hadContentLength);
    return bodyResponse('request', { body: outcome.body, ...(headers ? { headers } : {}) });
  }

  private streamChunk(
    candidate: Candidate,
    plan: Extract<BodyPlan, { editor: StreamEditor }>,
    message: HttpBody,
  ): ProcessingResponse[] {
    const { editor } = plan;
    let released = editor.push(message.body);
    if (message.end_of_stream) released = Buffer.concat([released, editor.end()]);
    candidate.bytesOut += released.length;
    if (message.end_of_stream) this.finishStream(candidate, editor);

    if (plan.mode === 'FULL_DUPLEX_STREAMED') {
      // Answers carry released bytes; nothing to release yet means no answer yet (§3.6: M chunks -> N answers).
      if (released.length === 0 && !message.end_of_stream) return [];
      return [streamedBodyResponse('request', released, message.end_of_stream)];
    }
    // STREAMED: one answer per chunk; an unchanged chunk gets a bare CONTINUE (lesson 5).
    if (released.equals(message.body)) return [bodyResponse('request')];
    return [bodyResponse('request', { body: released })];
  }

  private finishStream(candidate: Candidate, editor: StreamEditor): void {
    if (editor.outcome === 'edited') this.rewritten(candidate, editor.touched.map((field) => field.name));
    else this.pass(editor.outcome === 'invalid' ? 'invalid_body' : 'no_model', candidate.route);
  }

  private rewritten(candidate: Candidate, removed: string[]): void {
    const plan = candidate.plan!;
    this.resultValue = {
      kind: 'rewritten',
      report: {
        route: candidate.route,
        bodyKind: candidate.bodyKind,
        mode: plan.mode,
        bytesIn: candidate.bytesIn,
        bytesOut: candidate.bytesOut,
        removed,
      },
    };
  }

  /** A body we do not edit. FULL_DUPLEX_STREAMED drains the original, so it must be echoed back (§3.6). */
  private passBody(direction: Direction, message: HttpBody): ProcessingResponse[] {
    const mode = direction === 'request' ? this.protocol?.request_body_mode : this.protocol?.response_body_mode;
    if (mode === 'FULL_DUPLEX_STREAMED') return [streamedBodyResponse(direction, message.body, message.end_of_stream)];
    return [bodyResponse(direction)];
  }

  /** Bytes the editors currently hold for this call (memory accounting). */
  get heldBytes(): number {
    const plan = this.candidate?.plan;
    return plan && 'editor' in plan ? plan.editor.heldBytes : 0;
  }
}
