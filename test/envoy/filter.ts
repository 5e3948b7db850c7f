// The ext_proc HTTP filter, ported from Envoy (source/extensions/filters/http/ext_proc: ext_proc.cc
// Filter::*, processor_state.cc ProcessorState::*, late 2025 = 1.37 semantics, with the version
// switches of reference §10). Method names follow Envoy's so the two can be read side by side; the
// comments cite /work/shared/reference/ENVOY-EXTPROC.md.
import type { BodySendMode, FilterConfig, FullProcessingMode } from './config.js';
import { effectiveModeOverride, fullMode, modeFromWire, overrideAllowed } from './config.js';
import type { HeaderMap, WireHeaderMutation } from './headers.js';
import { applyHeaderMutation, headersToProto, MutationChecker } from './headers.js';
import type { WireStruct } from './values.js';
import { evaluateAttributes, jsToStruct, statusCodeNumber, structToJs } from './values.js';

export type Direction = 'request' | 'response';

export type CallbackState =
  | 'Idle'
  | 'HeadersCallback'
  | 'BufferedBodyCallback'
  | 'StreamedBodyCallback'
  | 'BufferedPartialBodyCallback'
  | 'TrailersCallback';

export type HeadersStatus = 'Continue' | 'StopIteration';
export type DataStatus = 'Continue' | 'StopIterationAndBuffer' | 'StopIterationAndWatermark' | 'StopIterationNoBuffer';
export type TrailersStatus = 'Continue' | 'StopIteration';

/** The filter-manager services one direction offers the filter (Envoy's decoder/encoder callbacks). */
export interface DirectionCallbacks {
  continueProcessing(): void;
  injectData(data: Buffer, endStream: boolean): void;
  bufferedData(): Buffer | null;
  addBufferedData(data: Buffer): void;
  modifyBufferedData(fn: (data: Buffer) => Buffer): void;
  bufferLimit(): number;
}

export interface LocalReply {
  status: number;
  body: Buffer;
  details: string;
  grpcStatus?: number;
  mutateHeaders?: (headers: HeaderMap) => void;
}

export type StreamCloseReason =
  | 'not-opened'
  | 'envoy-early-close'
  | 'envoy-no-response-processing'
  | 'end'
  | 'envoy-immediate-response'
  | 'envoy-error'
  | 'envoy-spurious'
  | 'envoy-timeout'
  | 'server'
  | 'server-error'
  | 'aborted'
  | 'local-reply';

/** The gRPC side stream as the filter uses it (see grpc-stream.ts). */
export interface SideStream {
  send(message: unknown): void;
  close(): boolean;
}

export interface TranscriptEntry {
  atMs: number;
  direction: 'envoy->server' | 'server->envoy' | 'note';
  kind: string;
  message?: unknown;
}

/** What the surrounding HTTP stream provides (stream info, local replies, the gRPC client). */
export interface FilterEnvironment {
  decoder: DirectionCallbacks;
  encoder: DirectionCallbacks;
  openStream(initialMetadata: Array<[string, string]>): SideStream;
  sendLocalReply(reply: LocalReply): void;
  clearRouteCache(): void;
  /** Stream dynamic metadata (filter_metadata by namespace). */
  dynamicMetadata: Record<string, Record<string, unknown>>;
  requestId: string;
  initialMetadata: Array<[string, string]>;
  now(): number;
  /** Runs an asynchronous event (timer, gRPC message) against the stream. */
  event(fn: () => void): void;
}

export const COUNTER_NAMES = [
  'streams_started',
  'streams_closed',
  'streams_failed',
  'stream_msgs_sent',
  'stream_msgs_received',
  'spurious_msgs_received',
  'failure_mode_allowed',
  'message_timeouts',
  'rejected_header_mutations',
  'override_message_timeout_received',
  'override_message_timeout_ignored',
  'clear_route_cache_ignored',
  'clear_route_cache_disabled',
  'immediate_responses_sent',
] as const;
export type CounterName = (typeof COUNTER_NAMES)[number];
export type Counters = Record<CounterName, number>;

// ---- decoded server messages (proto-loader: keepCase, defaults, oneofs) --------------------------

interface WireBodyMutation {
  mutation?: 'body' | 'clear_body' | 'streamed_response';
  body?: Buffer;
  clear_body?: boolean;
  streamed_response?: { body?: Buffer; end_of_stream?: boolean } | null;
}

interface WireCommonResponse {
  status?: string | number;
  header_mutation?: WireHeaderMutation | null;
  body_mutation?: WireBodyMutation | null;
  clear_route_cache?: boolean;
}

interface WireImmediateResponse {
  status?: { code?: string | number } | null;
  headers?: WireHeaderMutation | null;
  body?: Buffer;
  grpc_status?: { status?: number } | null;
  details?: string;
}

interface WireProcessingResponse {
  response?: string;
  request_headers?: { response?: WireCommonResponse | null } | null;
  response_headers?: { response?: WireCommonResponse | null } | null;
  request_body?: { response?: WireCommonResponse | null } | null;
  response_body?: { response?: WireCommonResponse | null } | null;
  request_trailers?: { header_mutation?: WireHeaderMutation | null } | null;
  response_trailers?: { header_mutation?: WireHeaderMutation | null } | null;
  immediate_response?: WireImmediateResponse | null;
  dynamic_metadata?: WireStruct | null;
  mode_override?: Record<string, unknown> | null;
  override_message_timeout?: { seconds?: string | number; nanos?: number } | null;
}

/** null = OK; spurious = FailedPrecondition (§6.1); otherwise an error that becomes a local reply. */
type Status = null | { spurious: boolean; message: string };
const OK: Status = null;
const spurious = (message: string): Status => ({ spurious: true, message });
const failure = (message: string): Status => ({ spurious: false, message });

function commonStatus(c: WireCommonResponse): 'CONTINUE' | 'CONTINUE_AND_REPLACE' {
  return c.status === 'CONTINUE_AND_REPLACE' || c.status === 1 ? 'CONTINUE_AND_REPLACE' : 'CONTINUE';
}

/** BodyMutation::body() length as Envoy's validateContentLength sees it (0 unless `body` is set). */
function mutationBodyLength(m: WireBodyMutation): number {
  return m.mutation === 'body' ? (m.body?.length ?? 0) : 0;
}

/** MutationUtils::applyBodyMutations (§3.8): body replaces, clear_body empties, anything else keeps. */
function applyBodyMutation(m: WireBodyMutation, data: Buffer): Buffer {
  if (m.mutation === 'body') return Buffer.from(m.body ?? Buffer.alloc(0));
  if (m.mutation === 'clear_body' && m.clear_body) return Buffer.alloc(0);
  return data;
}

interface QueuedChunk {
  data: Buffer;
  endStream: boolean;
}

/** ChunkQueue: body chunks sent to the server and held until their responses arrive. */
class ChunkQueue {
  chunks: QueuedChunk[] = [];
  push(data: Buffer, endStream: boolean): void {
    this.chunks.push({ data, endStream });
  }
  pop(): QueuedChunk | undefined {
    return this.chunks.shift();
  }
  empty(): boolean {
    return this.chunks.length === 0;
  }
  bytesEnqueued(): number {
    return this.chunks.reduce((n, c) => n + c.data.length, 0);
  }
  /** Merges everything queued into one chunk (end_stream of the last one). */
  consolidate(): QueuedChunk {
    const endStream = this.chunks.at(-1)?.endStream ?? false;
    const merged = { data: Buffer.concat(this.chunks.map((c) => c.data)), endStream };
    this.chunks = [merged];
    return merged;
  }
  clear(): void {
    this.chunks = [];
  }
}

// ---- ProcessorState ------------------------------------------------------------------------------

/** One direction's ext_proc state (processor_state.h/.cc). */
export class ProcessorState {
  callbackState: CallbackState = 'Idle';
  paused = false;
  noBody = false;
  completeBodyAvailable = false;
  trailersAvailable = false;
  trailersSentToServer = false;
  bodyReplaced = false;
  bodyReceived = false;
  partialBodyProcessed = false;
  attributesSent = false;
  sendHeaders = true;
  sendTrailers = false;
  bodyMode: BodySendMode = 'NONE';
  /** headers_: the header map while Envoy still holds it (mutable); null once forwarded. */
  headers: HeaderMap | null = null;
  trailers: HeaderMap | null = null;
  readonly chunkQueue = new ChunkQueue();
  private timer: NodeJS.Timeout | undefined;
  private newTimeoutReceived = false;

  constructor(
    private readonly filter: ExtProcFilter,
    readonly direction: Direction,
    readonly cb: DirectionCallbacks,
  ) {}

  /** setProcessingModeInternal: headers sent unless SKIP, trailers only if SEND (§1.5). */
  setProcessingMode(mode: FullProcessingMode): void {
    const request = this.direction === 'request';
    this.sendHeaders = (request ? mode.requestHeaderMode : mode.responseHeaderMode) !== 'SKIP';
    this.sendTrailers = (request ? mode.requestTrailerMode : mode.responseTrailerMode) === 'SEND';
    this.bodyMode = request ? mode.requestBodyMode : mode.responseBodyMode;
  }

  /** §3.9: Envoy drops content-length in these modes (1.38: unless allow_content_length_header). */
  shouldRemoveContentLength(): boolean {
    if (this.filter.config.allowContentLengthHeader) return false;
    return (
      this.bodyMode === 'STREAMED' ||
      this.bodyMode === 'FULL_DUPLEX_STREAMED' ||
      this.bodyMode === 'BUFFERED_PARTIAL' ||
      (this.bodyMode === 'BUFFERED' && !this.sendHeaders)
    );
  }

  /** Nothing configured for this direction (used for the response path, §6.6). */
  noExternalProcess(): boolean {
    return !this.sendHeaders && !this.sendTrailers && this.bodyMode === 'NONE';
  }

  // -- message timer (§6.3) --

  onStartProcessorCall(state: CallbackState): void {
    this.callbackState = state;
    // No timer in FULL_DUPLEX_STREAMED (§3.6).
    if (this.bodyMode !== 'FULL_DUPLEX_STREAMED') this.startTimer(this.filter.config.messageTimeoutMs);
    this.newTimeoutReceived = false;
  }

  onFinishProcessorCall(next: CallbackState = 'Idle'): void {
    this.stopMessageTimer();
    this.callbackState = next;
    this.newTimeoutReceived = false;
  }

  stopMessageTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** override_message_timeout: only while the timer runs, once per state. */
  restartMessageTimer(ms: number): boolean {
    if (this.timer && !this.newTimeoutReceived) {
      this.startTimer(ms);
      this.newTimeoutReceived = true;
      return true;
    }
    return false;
  }

  private startTimer(ms: number): void {
    this.stopMessageTimer();
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.filter.env.event(() => this.filter.onMessageTimeout());
    }, ms);
  }

  continueIfNecessary(): void {
    if (this.paused) {
      this.paused = false;
      this.cb.continueProcessing();
    }
  }

  // -- handling responses --

  private processHeaderMutation(c: WireCommonResponse): Status {
    if (!c.header_mutation || !this.headers) return OK;
    const result = applyHeaderMutation(c.header_mutation, this.headers, {
      ...this.filter.mutationContext(),
      replacingMessage: commonStatus(c) === 'CONTINUE_AND_REPLACE',
      removeContentLength: this.shouldRemoveContentLength(),
    });
    return result.ok ? OK : failure(result.error);
  }

  private callbackStateAfterHeaderResponse(c: WireCommonResponse): CallbackState {
    if (commonStatus(c) === 'CONTINUE_AND_REPLACE') return 'Idle';
    if (this.bodyMode === 'STREAMED' && this.filter.config.sendBodyWithoutWaitingForHeaderResponse && !this.chunkQueue.empty()) {
      return 'StreamedBodyCallback';
    }
    if (this.bodyMode === 'FULL_DUPLEX_STREAMED') {
      if (this.bodyReceived) return 'StreamedBodyCallback';
      if (this.trailersAvailable) return 'TrailersCallback';
    }
    return 'Idle';
  }

  handleHeadersResponse(c: WireCommonResponse): Status {
    if (this.callbackState !== 'HeadersCallback') return spurious('spurious message');
    const mutated = this.processHeaderMutation(c);
    if (mutated) return mutated;
    this.clearRouteCache(c);
    const next = this.callbackStateAfterHeaderResponse(c);
    this.onFinishProcessorCall(next);

    if (commonStatus(c) === 'CONTINUE_AND_REPLACE') {
      // §3.8: replace (or create) the body, drop content-length, stop processing this direction.
      if (c.body_mutation) {
        this.headers?.remove('content-length');
        this.bodyReplaced = true;
        const current = this.cb.bufferedData();
        if (current === null) this.cb.addBufferedData(applyBodyMutation(c.body_mutation, Buffer.alloc(0)));
        else this.cb.modifyBufferedData((data) => applyBodyMutation(c.body_mutation!, data));
      }
      this.chunkQueue.clear();
      this.bodyMode = 'NONE';
      this.sendTrailers = false;
    } else if (this.noBody) {
      // P7: the message had no body; no body message will ever be sent, whatever the mode now says.
    } else if (this.completeBodyAvailable && this.bodyMode !== 'NONE') {
      // The whole body arrived while the headers call was pending: one message, whatever the mode.
      if (next === 'Idle') {
        const buffered = this.cb.bufferedData();
        if (buffered !== null) {
          this.filter.sendBodyChunk(this, 'BufferedBodyCallback', this.filter.setupBodyChunk(this, buffered, !this.trailersAvailable));
          return OK;
        }
      } else {
        this.sendBufferedDataInStreamedMode(!this.trailersAvailable);
        return OK;
      }
    } else if (this.bodyMode === 'BUFFERED') {
      // Keep the headers: they may still change in the body response (§3.3).
      return OK;
    } else if (this.bodyMode === 'STREAMED') {
      this.sendBufferedDataInStreamedMode(false);
      this.continueIfNecessary();
      return OK;
    } else if (this.bodyMode === 'FULL_DUPLEX_STREAMED') {
      this.continueIfNecessary();
      return OK;
    } else if (this.bodyMode === 'BUFFERED_PARTIAL') {
      const buffered = this.cb.bufferedData();
      if (buffered !== null && buffered.length > 0) {
        this.cb.modifyBufferedData(() => Buffer.alloc(0));
        this.chunkQueue.push(buffered, false);
      }
      if (this.queueOverHighLimit()) {
        const all = this.chunkQueue.consolidate();
        this.filter.sendBodyChunk(this, 'BufferedPartialBodyCallback', this.filter.setupBodyChunk(this, all.data, false));
      }
      return OK;
    }
    if (commonStatus(c) !== 'CONTINUE_AND_REPLACE' && this.sendTrailers && this.trailersAvailable && this.trailers) {
      this.filter.sendTrailers(this, this.trailers);
      return OK;
    }
    this.headers = null;
    this.continueIfNecessary();
    return OK;
  }

  private sendBufferedDataInStreamedMode(endStream: boolean): void {
    const buffered = this.cb.bufferedData();
    if (buffered !== null && buffered.length > 0) {
      this.cb.modifyBufferedData(() => Buffer.alloc(0));
      const request = this.filter.setupBodyChunk(this, buffered, endStream);
      this.chunkQueue.push(buffered, endStream);
      this.filter.sendBodyChunk(this, 'StreamedBodyCallback', request);
    }
  }

  queueOverHighLimit(): boolean {
    return this.chunkQueue.bytesEnqueued() > this.cb.bufferLimit();
  }

  handleBodyResponse(c: WireCommonResponse): Status {
    let result: Status | boolean;
    switch (this.callbackState) {
      case 'BufferedBodyCallback':
        result = this.handleBufferedBodyCallback(c);
        break;
      case 'StreamedBodyCallback':
        result = this.handleStreamedBodyCallback(c);
        break;
      case 'BufferedPartialBodyCallback':
        result = this.handleBufferedPartialBodyCallback(c);
        break;
      default:
        return spurious('spurious message');
    }
    if (typeof result !== 'boolean') return result;
    this.clearRouteCache(c);
    return this.finalizeBodyResponse(result);
  }

  private handleBufferedBodyCallback(c: WireCommonResponse): Status | boolean {
    // §3.3 / P18: header mutations apply here (BUFFERED holds the headers), before the CL check.
    const mutated = this.processHeaderMutation(c);
    if (mutated) return mutated;
    if (c.body_mutation) {
      // §3.9 / P3: BUFFERED + headers SEND keeps content-length; it must match the mutated body.
      const cl = this.headers?.getString('content-length');
      if (cl !== undefined && /^\s*\d+\s*$/.test(cl) && Number(cl) !== mutationBodyLength(c.body_mutation)) {
        return failure('mismatch between content length and the length of the mutated body');
      }
      const m = c.body_mutation;
      this.cb.modifyBufferedData((data) => applyBodyMutation(m, data));
    }
    this.onFinishProcessorCall();
    return true;
  }

  private handleStreamedBodyCallback(c: WireCommonResponse): Status | boolean {
    if (c.body_mutation?.mutation === 'streamed_response') {
      if (this.bodyMode !== 'FULL_DUPLEX_STREAMED') {
        return spurious('spurious message: streamed_response is received while body_mode_ is not FULL_DUPLEX_STREAMED');
      }
      return this.handleDuplexStreamedBodyResponse(c.body_mutation.streamed_response ?? {});
    }
    if (this.bodyMode === 'FULL_DUPLEX_STREAMED') {
      return spurious('spurious message: Normal body mutation response is received while body_mode_ is FULL_DUPLEX_STREAMED');
    }
    // STREAMED: one answer per chunk, in order; header mutations are ignored here (§2.5, P18).
    const chunk = this.chunkQueue.pop();
    if (!chunk) return spurious('spurious message');
    const data = c.body_mutation ? applyBodyMutation(c.body_mutation, chunk.data) : chunk.data;
    if (data.length > 0) this.cb.injectData(data, chunk.endStream);
    this.onFinishProcessorCall(this.chunkQueue.empty() ? 'Idle' : this.callbackState);
    return chunk.endStream;
  }

  private handleDuplexStreamedBodyResponse(streamed: { body?: Buffer; end_of_stream?: boolean }): boolean {
    const body = streamed.body ?? Buffer.alloc(0);
    const endOfStream = streamed.end_of_stream ?? false;
    if (body.length > 0) this.cb.injectData(Buffer.from(body), endOfStream);
    this.onFinishProcessorCall(endOfStream ? 'Idle' : 'StreamedBodyCallback');
    return endOfStream;
  }

  private handleBufferedPartialBodyCallback(c: WireCommonResponse): Status | boolean {
    const chunk = this.chunkQueue.pop();
    if (!chunk) return failure('Invalid chunk in partial body callback');
    const mutated = this.processHeaderMutation(c);
    if (mutated) return mutated;
    const data = c.body_mutation ? applyBodyMutation(c.body_mutation, chunk.data) : chunk.data;
    if (data.length > 0) this.cb.injectData(data, chunk.endStream);
    this.onFinishProcessorCall();
    if (!this.chunkQueue.empty()) {
      const rest = this.chunkQueue.consolidate();
      this.chunkQueue.clear();
      this.cb.injectData(rest.data, rest.endStream);
    }
    this.partialBodyProcessed = true;
    return true;
  }

  private finalizeBodyResponse(shouldContinue: boolean): Status {
    this.headers = null;
    if (this.sendTrailers && this.trailersAvailable && this.chunkQueue.empty() && this.trailers) {
      this.filter.sendTrailers(this, this.trailers);
      return OK;
    }
    if (shouldContinue || (this.trailersAvailable && this.chunkQueue.empty())) this.continueIfNecessary();
    return OK;
  }

  handleTrailersResponse(mutation: WireHeaderMutation | null | undefined): Status {
    // FULL_DUPLEX: the trailers answer may come while body answers are still expected.
    if (this.callbackState !== 'TrailersCallback' && this.bodyMode !== 'FULL_DUPLEX_STREAMED') return spurious('spurious message');
    if (!this.trailers) return spurious('spurious message');
    if (mutation) {
      const result = applyHeaderMutation(mutation, this.trailers, {
        ...this.filter.mutationContext(),
        replacingMessage: false,
        removeContentLength: false,
      });
      if (!result.ok) return failure(result.error);
    }
    this.trailers = null;
    this.onFinishProcessorCall();
    this.continueIfNecessary();
    return OK;
  }

  /** Regardless of state: back to Idle, re-inject queued data, let the HTTP stream continue. */
  clearAsyncState(): void {
    this.onFinishProcessorCall();
    if (!this.chunkQueue.empty()) {
      const all = this.chunkQueue.consolidate();
      this.chunkQueue.clear();
      this.cb.injectData(all.data, all.endStream);
    }
    this.continueIfNecessary();
  }

  /** §2.4: only request direction, only with a header_mutation in the same response. */
  private clearRouteCache(c: WireCommonResponse): void {
    if (this.direction !== 'request') return;
    const asked = c.clear_route_cache ?? false;
    if (!c.header_mutation) {
      if (asked) this.filter.counters.clear_route_cache_ignored++;
      return;
    }
    switch (this.filter.config.routeCacheAction) {
      case 'DEFAULT':
        if (asked) this.filter.env.clearRouteCache();
        break;
      case 'CLEAR':
        this.filter.env.clearRouteCache();
        break;
      case 'RETAIN':
        if (asked) this.filter.counters.clear_route_cache_disabled++;
        break;
    }
  }
}

// ---- Filter --------------------------------------------------------------------------------------

type OpenState = 'Ok' | 'IgnoreError' | 'Error';

export class ExtProcFilter {
  readonly decoding: ProcessorState;
  readonly encoding: ProcessorState;
  readonly counters: Counters = Object.fromEntries(COUNTER_NAMES.map((n) => [n, 0])) as Counters;
  readonly transcript: TranscriptEntry[] = [];
  processingComplete = false;
  streamClosedBy: StreamCloseReason = 'not-opened';
  serverStatus: { code: number; details: string } | undefined;
  private stream: SideStream | null = null;
  private protocolConfigEncoded = false;
  private failureModeAllowSetting: boolean;
  private initialMetadata: Array<[string, string]>;
  private readonly checker: MutationChecker;

  constructor(
    readonly config: FilterConfig,
    readonly env: FilterEnvironment,
  ) {
    this.decoding = new ProcessorState(this, 'request', env.decoder);
    this.encoding = new ProcessorState(this, 'response', env.encoder);
    this.decoding.setProcessingMode(config.processingMode);
    this.encoding.setProcessingMode(config.processingMode);
    this.failureModeAllowSetting = config.failureModeAllow;
    this.initialMetadata = env.initialMetadata.map(([k, v]) => [k, v]);
    this.checker = new MutationChecker(config.mutationRules);
  }

  mutationContext() {
    return {
      checker: this.checker,
      rawValue: this.config.features.rawValue,
      maxHeadersCount: this.config.maxHeadersCount,
      maxHeadersKb: this.config.maxHeadersKb,
      onRejected: () => {
        this.counters.rejected_header_mutations++;
      },
    };
  }

  note(kind: string, message?: unknown): void {
    this.transcript.push({ atMs: this.env.now(), direction: 'note', kind, message });
  }

  // -- stream lifecycle --

  private openStream(): OpenState {
    if (this.processingComplete) return 'IgnoreError';
    if (!this.stream) {
      // One gRPC stream per HTTP request, opened lazily when there is something to send (§5).
      this.stream = this.env.openStream(this.initialMetadata);
      this.counters.streams_started++;
    }
    return 'Ok';
  }

  private closeStream(reason: StreamCloseReason): void {
    if (!this.stream) return;
    if (this.stream.close()) {
      this.counters.streams_closed++;
      this.streamClosedBy = reason;
      this.note('envoy closes stream (END_STREAM + RST_STREAM)', reason);
    }
    this.stream = null;
  }

  /** closeStreamMaybeGraceful: graceful close is off by default (§6.6), so a plain close. */
  private closeStreamMaybeGraceful(reason: StreamCloseReason): void {
    this.processingComplete = true;
    this.closeStream(reason);
  }

  /** Filter destruction at the end of the HTTP stream (or a client reset). */
  onDestroy(reason: StreamCloseReason): void {
    this.processingComplete = true;
    this.decoding.stopMessageTimer();
    this.encoding.stopMessageTimer();
    this.closeStreamMaybeGraceful(reason);
  }

  private send(request: Record<string, unknown>): void {
    this.stream?.send(request);
    this.counters.stream_msgs_sent++;
    const kind = Object.keys(request).find((k) => /^(request|response)_(headers|body|trailers)$/.test(k)) ?? 'unknown';
    this.transcript.push({ atMs: this.env.now(), direction: 'envoy->server', kind, message: request });
  }

  /** Per-route ExtProcPerRoute, merged once at decodeHeaders (§4). */
  private mergePerRouteConfig(headers: HeaderMap): void {
    const perRoute = this.config.perRoute?.(headers.toList());
    if (!perRoute) return;
    if (perRoute.disabled) {
      const allDisabled = fullMode({ requestHeaderMode: 'SKIP', responseHeaderMode: 'SKIP' });
      this.decoding.setProcessingMode(allDisabled);
      this.encoding.setProcessingMode(allDisabled);
      return;
    }
    if (perRoute.processingMode) {
      this.decoding.setProcessingMode(fullMode(perRoute.processingMode));
      this.encoding.setProcessingMode(fullMode(perRoute.processingMode));
    }
    if (perRoute.grpcInitialMetadata) {
      for (const [key, value] of perRoute.grpcInitialMetadata) {
        const existing = this.initialMetadata.filter(([k]) => k === key);
        if (existing.length > 0) for (const e of existing) e[1] = value;
        else this.initialMetadata.push([key, value]);
      }
    }
    if (perRoute.failureModeAllow !== undefined && this.config.features.perRouteFailureModeAllow) {
      this.failureModeAllowSetting = perRoute.failureModeAllow;
    }
  }

  /** Once body data went out in FULL_DUPLEX_STREAMED, failure_mode_allow no longer applies (§3.6). */
  private failureModeAllow(): boolean {
    const duplexBody = (s: ProcessorState) => s.bodyMode === 'FULL_DUPLEX_STREAMED' && s.bodyReceived;
    if (duplexBody(this.decoding) || duplexBody(this.encoding)) return false;
    return this.failureModeAllowSetting;
  }

  // -- building requests (§1.2, §2.1) --

  private encodeProtocolConfig(request: Record<string, unknown>): void {
    // protocol_config on the first message of the stream only (1.34+, P20).
    if (this.protocolConfigEncoded || !this.config.features.protocolConfig) return;
    request.protocol_config = {
      request_body_mode: this.decoding.bodyMode,
      response_body_mode: this.encoding.bodyMode,
      send_body_without_waiting_for_header_response: this.config.sendBodyWithoutWaitingForHeaderResponse,
    };
    this.protocolConfigEncoded = true;
  }

  /** metadata_context is set on every message (empty unless forwarding namespaces match). */
  private addDynamicMetadata(request: Record<string, unknown>): void {
    const filterMetadata: Record<string, WireStruct> = {};
    for (const ns of this.config.forwardingNamespaces) {
      const value = this.env.dynamicMetadata[ns];
      if (value) filterMetadata[ns] = jsToStruct(value);
    }
    request.metadata_context = { filter_metadata: filterMetadata, typed_filter_metadata: {} };
  }

  /** attributes: first message of a direction, only when configured (§6.5). */
  private addAttributes(state: ProcessorState, request: Record<string, unknown>, requestHeaders: HeaderMap | null): void {
    const names = state.direction === 'request' ? this.config.requestAttributes : this.config.responseAttributes;
    if (state.attributesSent || names.length === 0 || !requestHeaders) return;
    const values = evaluateAttributes(names, {
      requestHeaders,
      responseHeaders: state.direction === 'response' ? (state.headers ?? undefined) : undefined,
      requestId: this.env.requestId,
    });
    state.attributesSent = true;
    request.attributes = { 'envoy.filters.http.ext_proc': jsToStruct(values) };
  }

  private requestHeaders: HeaderMap | null = null;

  private buildHeaderRequest(state: ProcessorState, headers: HeaderMap, endStream: boolean): Record<string, unknown> {
    const request: Record<string, unknown> = {};
    this.addAttributes(state, request, this.requestHeaders);
    this.addDynamicMetadata(request);
    request[`${state.direction}_headers`] = {
      headers: headersToProto(headers, this.config.forwardRules, this.config.features.rawValue),
      end_of_stream: endStream,
    };
    this.encodeProtocolConfig(request);
    return request;
  }

  setupBodyChunk(state: ProcessorState, data: Buffer, endStream: boolean): Record<string, unknown> {
    const request: Record<string, unknown> = {};
    this.addAttributes(state, request, this.requestHeaders);
    this.addDynamicMetadata(request);
    request[`${state.direction}_body`] = { body: Buffer.from(data), end_of_stream: endStream };
    this.encodeProtocolConfig(request);
    return request;
  }

  sendBodyChunk(state: ProcessorState, next: CallbackState, request: Record<string, unknown>): void {
    state.onStartProcessorCall(next);
    this.send(request);
  }

  sendTrailers(state: ProcessorState, trailers: HeaderMap): void {
    if (state.trailersSentToServer) return;
    state.trailersSentToServer = true;
    const request: Record<string, unknown> = {};
    this.addAttributes(state, request, this.requestHeaders);
    this.addDynamicMetadata(request);
    request[`${state.direction}_trailers`] = {
      trailers: headersToProto(trailers, this.config.forwardRules, this.config.features.rawValue),
    };
    state.onStartProcessorCall(state.callbackState === 'Idle' ? 'TrailersCallback' : state.callbackState);
    this.encodeProtocolConfig(request);
    this.send(request);
  }

  // -- HTTP filter callbacks --

  private onHeaders(state: ProcessorState, headers: HeaderMap, endStream: boolean): HeadersStatus {
    const open = this.openStream();
    if (open === 'Error') return 'StopIteration';
    if (open === 'IgnoreError') return 'Continue';
    state.headers = headers;
    state.noBody = endStream;
    const request = this.buildHeaderRequest(state, headers, endStream);
    state.onStartProcessorCall('HeadersCallback');
    this.send(request);
    state.paused = true;
    return 'StopIteration';
  }

  decodeHeaders(headers: HeaderMap, endStream: boolean): HeadersStatus {
    this.mergePerRouteConfig(headers);
    if (endStream) this.decoding.completeBodyAvailable = true;
    this.requestHeaders = headers;
    let status: HeadersStatus = 'Continue';
    if (this.decoding.sendHeaders) status = this.onHeaders(this.decoding, headers, endStream);
    // §3.9: removed after the headers message was built (the server saw it), by the mode in force now.
    if (!this.processingComplete && this.decoding.shouldRemoveContentLength()) headers.remove('content-length');
    return status;
  }

  encodeHeaders(headers: HeaderMap, endStream: boolean): HeadersStatus {
    if (endStream) this.encoding.completeBodyAvailable = true;
    let status: HeadersStatus = 'Continue';
    if (!this.processingComplete && this.encoding.sendHeaders) status = this.onHeaders(this.encoding, headers, endStream);
    if (!this.processingComplete && this.encoding.shouldRemoveContentLength()) headers.remove('content-length');
    // §6.6 (b), 1.37 (PR #41425): nothing to do on the response path, so close now.
    if (this.config.features.earlyClose && this.encoding.noExternalProcess()) {
      this.closeStreamMaybeGraceful('envoy-no-response-processing');
    }
    return status;
  }

  /** decodeData/encodeData. `holder.data` is what stays in the filter chain (drained when taken). */
  onData(state: ProcessorState, holder: { data: Buffer }, endStream: boolean): DataStatus {
    state.bodyReceived = true;
    if (endStream) state.completeBodyAvailable = true;
    if (state.bodyReplaced) {
      holder.data = Buffer.alloc(0); // CONTINUE_AND_REPLACE already supplied the body
      return 'Continue';
    }
    if (this.processingComplete) return 'Continue';

    if (state.callbackState === 'HeadersCallback') {
      const sendsNow =
        (state.bodyMode === 'STREAMED' && this.config.sendBodyWithoutWaitingForHeaderResponse) || state.bodyMode === 'FULL_DUPLEX_STREAMED';
      if (!sendsNow) {
        // §3.1: held until the headers response. BUFFERED buffers against the limit (413, 1.35+),
        // other modes apply flow control only.
        state.paused = true;
        return state.bodyMode === 'BUFFERED' && this.config.features.bufferedOverflowWhileWaiting
          ? 'StopIterationAndBuffer'
          : 'StopIterationAndWatermark';
      }
    }

    switch (state.bodyMode) {
      case 'BUFFERED':
        return this.handleDataBufferedMode(state, holder, endStream);
      case 'STREAMED':
      case 'FULL_DUPLEX_STREAMED':
        return this.handleDataStreamedModeBase(state, holder, endStream);
      case 'BUFFERED_PARTIAL':
        return this.handleDataBufferedPartialMode(state, holder, endStream);
      default:
        return 'Continue';
    }
  }

  /** §3.3: buffer everything; one message with the whole body at end of stream. */
  private handleDataBufferedMode(state: ProcessorState, holder: { data: Buffer }, endStream: boolean): DataStatus {
    if (!endStream) {
      state.paused = true;
      return 'StopIterationAndBuffer';
    }
    const open = this.openStream();
    if (open === 'Error') return 'StopIterationNoBuffer';
    if (open === 'IgnoreError') return 'Continue';
    state.cb.addBufferedData(holder.data);
    holder.data = Buffer.alloc(0);
    // Over the buffer limit: the filter manager already sent the 413 and destroyed the filter.
    if (this.processingComplete) return 'StopIterationNoBuffer';
    this.sendBodyChunk(state, 'BufferedBodyCallback', this.setupBodyChunk(state, state.cb.bufferedData() ?? Buffer.alloc(0), true));
    state.paused = true;
    return 'StopIterationNoBuffer';
  }

  /** §3.4 / §3.6: every chunk goes out at once (pipelined); FULL_DUPLEX drains the original data. */
  private handleDataStreamedModeBase(state: ProcessorState, holder: { data: Buffer }, endStream: boolean): DataStatus {
    const open = this.openStream();
    if (open === 'Error') return 'StopIterationNoBuffer';
    if (open === 'IgnoreError') return 'Continue';
    const request = this.setupBodyChunk(state, holder.data, endStream);
    if (state.bodyMode !== 'FULL_DUPLEX_STREAMED') state.chunkQueue.push(holder.data, endStream);
    holder.data = Buffer.alloc(0);
    const waitingForHeaders = state.callbackState === 'HeadersCallback';
    this.sendBodyChunk(state, waitingForHeaders ? 'HeadersCallback' : 'StreamedBodyCallback', request);
    if (endStream || waitingForHeaders) {
      state.paused = true;
      return 'StopIterationNoBuffer';
    }
    return 'Continue';
  }

  /** §3.5: queue up to the buffer limit, send once (eos or limit), then let the rest flow. */
  private handleDataBufferedPartialMode(state: ProcessorState, holder: { data: Buffer }, endStream: boolean): DataStatus {
    if (state.partialBodyProcessed) {
      state.headers = null;
      return 'Continue';
    }
    state.chunkQueue.push(holder.data, endStream);
    holder.data = Buffer.alloc(0);
    if (state.callbackState === 'BufferedPartialBodyCallback') {
      state.paused = true;
      return 'StopIterationNoBuffer';
    }
    if (endStream || state.queueOverHighLimit()) {
      const open = this.openStream();
      if (open === 'Error') return 'StopIterationNoBuffer';
      if (open === 'IgnoreError') return 'Continue';
      const all = state.chunkQueue.consolidate();
      this.sendBodyChunk(state, 'BufferedPartialBodyCallback', this.setupBodyChunk(state, all.data, all.endStream));
      state.paused = true;
    }
    return 'StopIterationNoBuffer';
  }

  onTrailers(state: ProcessorState, trailers: HeaderMap): TrailersStatus {
    if (this.processingComplete) return 'Continue';
    const bodyDelivered = state.completeBodyAvailable;
    state.completeBodyAvailable = true;
    state.trailers = trailers;
    state.trailersAvailable = true;
    if (state.callbackState !== 'Idle' && state.bodyMode !== 'FULL_DUPLEX_STREAMED') {
      state.paused = true;
      return 'StopIteration';
    }
    const buffered = state.cb.bufferedData();
    if (
      !bodyDelivered &&
      ((buffered !== null && state.bodyMode === 'BUFFERED') || (!state.chunkQueue.empty() && state.bodyMode === 'BUFFERED_PARTIAL'))
    ) {
      const open = this.openStream();
      if (open === 'Error') return 'StopIteration';
      if (open === 'IgnoreError') return 'Continue';
      // §3.3: the body message ends with end_of_stream false; trailers follow if SEND.
      if (state.bodyMode === 'BUFFERED') {
        this.sendBodyChunk(state, 'BufferedBodyCallback', this.setupBodyChunk(state, buffered!, false));
      } else {
        const all = state.chunkQueue.consolidate();
        this.sendBodyChunk(state, 'BufferedPartialBodyCallback', this.setupBodyChunk(state, all.data, false));
      }
      state.paused = true;
      return 'StopIteration';
    }
    if (!state.sendTrailers) return 'Continue';
    const open = this.openStream();
    if (open === 'Error') return 'StopIteration';
    if (open === 'IgnoreError') return 'Continue';
    this.sendTrailers(state, trailers);
    state.paused = true;
    return 'StopIteration';
  }

  // -- responses from the server (§6.1) --

  private inHeaderProcessState(): boolean {
    return this.decoding.callbackState === 'HeadersCallback' || this.encoding.callbackState === 'HeadersCallback';
  }

  private setDynamicMetadata(response: WireProcessingResponse): void {
    // §6.5 / P12: only configured receiving namespaces; each top-level field's struct_value.
    if (this.config.receivingNamespaces.length === 0 || !response.dynamic_metadata) return;
    for (const [ns, value] of Object.entries(response.dynamic_metadata.fields ?? {})) {
      if (!this.config.receivingNamespaces.includes(ns)) continue;
      const struct = value?.kind === 'structValue' ? structToJs(value.structValue) : {};
      this.env.dynamicMetadata[ns] = { ...(this.env.dynamicMetadata[ns] ?? {}), ...struct };
    }
  }

  onReceiveMessage(raw: unknown): void {
    const response = raw as WireProcessingResponse;
    this.transcript.push({ atMs: this.env.now(), direction: 'server->envoy', kind: response.response ?? 'none', message: raw });
    // P8: anything after processing completed is ignored.
    if (this.processingComplete) return;

    // §6.3: a timeout extension is handled first and nothing else in the message is applied.
    if (response.override_message_timeout) {
      this.onNewTimeout(response.override_message_timeout);
      return;
    }

    // §4: mode_override only while a headers response is awaited, only if allowed.
    const configBodies = [this.config.processingMode.requestBodyMode, this.config.processingMode.responseBodyMode];
    if (
      this.config.allowModeOverride &&
      !this.config.sendBodyWithoutWaitingForHeaderResponse &&
      !configBodies.includes('FULL_DUPLEX_STREAMED') &&
      this.inHeaderProcessState() &&
      response.mode_override
    ) {
      const features = this.config.features;
      const mode = effectiveModeOverride(modeFromWire(response.mode_override), this.config.processingMode, features.modeOverrideKeepsDefaults);
      const allowed = !features.allowedOverrideModes || overrideAllowed(mode, this.config.allowedOverrideModes, features.modeOverrideKeepsDefaults);
      if (allowed) {
        this.decoding.setProcessingMode(mode);
        this.encoding.setProcessingMode(mode);
        this.note('mode_override applied', mode);
      } else {
        this.note('mode_override not in allowed_override_modes', mode);
      }
    }

    let isLastBodyResponse = false;
    let status: Status;
    switch (response.response) {
      case 'request_headers':
        this.setDynamicMetadata(response);
        status = this.decoding.handleHeadersResponse(response.request_headers?.response ?? {});
        break;
      case 'response_headers':
        this.setDynamicMetadata(response);
        status = this.encoding.handleHeadersResponse(response.response_headers?.response ?? {});
        break;
      case 'request_body':
        isLastBodyResponse = this.isLastBodyResponse(this.decoding, response.request_body?.response ?? {});
        this.setDynamicMetadata(response);
        status = this.decoding.handleBodyResponse(response.request_body?.response ?? {});
        break;
      case 'response_body':
        isLastBodyResponse = this.isLastBodyResponse(this.encoding, response.response_body?.response ?? {});
        this.setDynamicMetadata(response);
        status = this.encoding.handleBodyResponse(response.response_body?.response ?? {});
        break;
      case 'request_trailers':
        this.setDynamicMetadata(response);
        status = this.decoding.handleTrailersResponse(response.request_trailers?.header_mutation);
        break;
      case 'response_trailers':
        this.setDynamicMetadata(response);
        status = this.encoding.handleTrailersResponse(response.response_trailers?.header_mutation);
        break;
      case 'immediate_response':
        if (this.config.disableImmediateResponse) {
          status = spurious('unhandled immediate response due to config disabled it');
        } else {
          // §6.4: processing complete, stream closed, metadata applied, then the local reply.
          this.setDynamicMetadata(response);
          this.processingComplete = true;
          this.onFinishProcessorCalls();
          this.closeStreamMaybeGraceful('envoy-immediate-response');
          if (this.config.features.earlyClose) this.counters.immediate_responses_sent++;
          this.sendImmediateResponse(response.immediate_response ?? {});
          status = OK;
        }
        break;
      case 'streamed_immediate_response':
        throw new Error('EnvoyEmulator: StreamedImmediateResponse (Envoy 1.37+) is not emulated');
      default:
        // An unset oneof (e.g. only dynamic_metadata or mode_override, P19) is spurious too.
        status = spurious('unhandled message');
    }

    if (status === null) {
      this.counters.stream_msgs_received++;
    } else if (status.spurious) {
      this.counters.spurious_msgs_received++;
      this.note('spurious response', status.message);
      // §6.2: since 1.35 fail closed unless failure_mode_allow; before, ignore and carry on.
      if (this.failureModeAllow() || !this.config.failCloseSpuriousResp) {
        if (this.failureModeAllow()) this.counters.failure_mode_allowed++;
        this.closeStream('envoy-spurious');
        this.clearAsyncState();
        this.processingComplete = true;
      } else {
        this.handleErrorResponse(status.message);
      }
    } else {
      this.counters.stream_msgs_received++;
      this.handleErrorResponse(status.message);
    }
    this.closeGrpcStreamIfLastRespReceived(response, isLastBodyResponse);
  }

  /** isLastBodyResponse: only STREAMED / FULL_DUPLEX body answers can be "last" (§6.6). */
  private isLastBodyResponse(state: ProcessorState, c: WireCommonResponse): boolean {
    switch (state.bodyMode) {
      case 'STREAMED':
        return state.chunkQueue.chunks[0]?.endStream ?? false;
      case 'FULL_DUPLEX_STREAMED':
        return c.body_mutation?.mutation === 'streamed_response' ? (c.body_mutation.streamed_response?.end_of_stream ?? false) : false;
      default:
        return false; // BUFFERED / BUFFERED_PARTIAL: closed at the end of the request instead
    }
  }

  /** §6.6 (a), 1.37+: close as soon as the last response this stream will carry has arrived. */
  private closeGrpcStreamIfLastRespReceived(response: WireProcessingResponse, isLastBodyResponse: boolean): void {
    if (!this.stream || !this.config.streamCloseOptimization) return;
    const dec = this.decoding;
    const enc = this.encoding;
    let last = false;
    switch (response.response) {
      case 'request_headers':
        last = (dec.noBody || (dec.bodyMode === 'NONE' && !dec.sendTrailers)) && enc.noExternalProcess();
        break;
      case 'request_body':
        last = isLastBodyResponse && enc.noExternalProcess();
        break;
      case 'request_trailers':
        last = enc.noExternalProcess();
        break;
      case 'response_headers':
        last = enc.noBody || (enc.bodyMode === 'NONE' && !enc.sendTrailers);
        break;
      case 'response_body':
        last = isLastBodyResponse;
        break;
      case 'response_trailers':
        last = true;
        break;
    }
    if (last) this.closeStreamMaybeGraceful('envoy-early-close');
  }

  private onNewTimeout(duration: { seconds?: string | number; nanos?: number }): void {
    const ms = Number(duration.seconds ?? 0) * 1000 + Math.trunc((duration.nanos ?? 0) / 1e6);
    if (!Number.isFinite(ms) || ms < 1 || ms > this.config.maxMessageTimeoutMs) {
      this.counters.override_message_timeout_ignored++;
      return;
    }
    const restartedDecoding = this.decoding.restartMessageTimer(ms);
    const restartedEncoding = this.encoding.restartMessageTimer(ms);
    if (!restartedDecoding && !restartedEncoding) this.counters.override_message_timeout_ignored++;
    else this.counters.override_message_timeout_received++;
  }

  private handleErrorResponse(message: string): void {
    this.processingComplete = true;
    this.onFinishProcessorCalls();
    this.closeStream('envoy-error');
    this.sendImmediateResponse({ status: { code: this.config.statusOnError }, details: message });
  }

  private onFinishProcessorCalls(): void {
    this.decoding.onFinishProcessorCall();
    this.encoding.onFinishProcessorCall();
  }

  private clearAsyncState(): void {
    this.decoding.clearAsyncState();
    this.encoding.clearAsyncState();
  }

  /** §6.4: status < 200 or missing = 200; headers under the filter's mutation rules (failures only logged). */
  private sendImmediateResponse(response: WireImmediateResponse): void {
    let code = response.status ? statusCodeNumber(response.status.code ?? 0) : 200;
    if (code < 200) code = 200;
    const mutation = response.headers;
    this.env.sendLocalReply({
      status: code,
      body: Buffer.from(response.body ?? Buffer.alloc(0)),
      details: (response.details ?? '').replace(/[ \t\f\v\n\r]/g, '_'),
      grpcStatus: response.grpc_status ? (response.grpc_status.status ?? 0) : undefined,
      mutateHeaders: mutation
        ? (headers) => {
            const result = applyHeaderMutation(mutation, headers, { ...this.mutationContext(), replacingMessage: false, removeContentLength: false });
            if (!result.ok) this.note('immediate response header mutation failed (logged only)', result.error);
          }
        : undefined,
    });
  }

  // -- gRPC stream events (§6.2) --

  onRemoteClose(code: number, details: string): void {
    this.serverStatus = { code, details };
    this.note('server ended the call', { code, details });
    if (this.stream) this.streamClosedBy = code === 0 ? 'server' : 'server-error';
    this.stream = null;
    if (code === 0) this.onGrpcCloseWithStatus();
    else this.onGrpcError(code, details);
  }

  private onGrpcError(code: number, message: string): void {
    this.counters.streams_failed++;
    if (this.processingComplete) return;
    if (this.failureModeAllow()) {
      this.onGrpcCloseWithStatus();
      this.counters.failure_mode_allowed++;
      return;
    }
    this.processingComplete = true;
    this.onFinishProcessorCalls();
    this.sendImmediateResponse({ status: { code: this.config.statusOnError }, details: `ext_proc_error_gRPC_error_${code}{${message}}` });
  }

  /** Server ended the call with OK (or failure_mode_allow): continue without further processing. */
  private onGrpcCloseWithStatus(): void {
    if (this.processingComplete) return;
    this.processingComplete = true;
    this.counters.streams_closed++;
    this.clearAsyncState();
  }

  onMessageTimeout(): void {
    this.counters.message_timeouts++;
    this.note('message timeout');
    if (this.failureModeAllow()) {
      this.processingComplete = true;
      this.closeStream('envoy-timeout');
      this.counters.failure_mode_allowed++;
      this.clearAsyncState();
      return;
    }
    this.processingComplete = true;
    this.closeStream('envoy-timeout');
    this.onFinishProcessorCalls();
    // 504 is hard-coded (not status_on_error).
    this.sendImmediateResponse({ status: { code: 504 }, details: 'ext_proc_error_per-message_timeout_exceeded' });
  }
}
