// One direction's ext_proc state, ported from Envoy's processor_state.h/.cc (late 2025): what the
// filter is waiting for, the message timer, and how header/body/trailer responses are applied.
// Comments cite docs/envoy-ext-proc.md.
import type { BodySendMode, FullProcessingMode } from './config.js';
import type { CallbackState, Direction, DirectionCallbacks, ExtProcFilter } from './filter.js';
import type { HeaderMap, WireHeaderMutation } from './headers.js';
import { applyHeaderMutation } from './headers.js';
import type { WireStruct } from './values.js';

// ---- decoded server messages (proto-loader: keepCase, defaults, oneofs) -------------------------

export interface WireBodyMutation {
  mutation?: 'body' | 'clear_body' | 'streamed_response';
  body?: Buffer;
  clear_body?: boolean;
  streamed_response?: { body?: Buffer; end_of_stream?: boolean } | null;
}

export interface WireCommonResponse {
  status?: string | number;
  header_mutation?: WireHeaderMutation | null;
  body_mutation?: WireBodyMutation | null;
  clear_route_cache?: boolean;
}

export interface WireImmediateResponse {
  status?: { code?: string | number } | null;
  headers?: WireHeaderMutation | null;
  body?: Buffer;
  grpc_status?: { status?: number } | null;
  details?: string;
}

export interface WireProcessingResponse {
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

/** null = OK; spurious = FailedPrecondition (docs/envoy-ext-proc.md#answer-matching); otherwise an error that becomes a local reply. */
export type Status = null | { spurious: boolean; message: string };
export const OK: Status = null;
export const spurious = (message: string): Status => ({ spurious: true, message });
export const failure = (message: string): Status => ({ spurious: false, message });

function commonStatus(c: WireCommonResponse): 'CONTINUE' | 'CONTINUE_AND_REPLACE' {
  return c.status === 'CONTINUE_AND_REPLACE' || c.status === 1 ? 'CONTINUE_AND_REPLACE' : 'CONTINUE';
}

/** BodyMutation::body() length as Envoy's validateContentLength sees it (0 unless `body` is set). */
function mutationBodyLength(m: WireBodyMutation): number {
  return m.mutation === 'body' ? (m.body?.length ?? 0) : 0;
}

/** MutationUtils::applyBodyMutations (docs/envoy-ext-proc.md#body-mutations): body replaces, clear_body empties, anything else keeps. */
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

// ---- ProcessorState -----------------------------------------------------------------------------

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

  /** setProcessingModeInternal: headers sent unless SKIP, trailers only if SEND (docs/envoy-ext-proc.md#processing-modes). */
  setProcessingMode(mode: FullProcessingMode): void {
    const request = this.direction === 'request';
    this.sendHeaders = (request ? mode.requestHeaderMode : mode.responseHeaderMode) !== 'SKIP';
    this.sendTrailers = (request ? mode.requestTrailerMode : mode.responseTrailerMode) === 'SEND';
    this.bodyMode = request ? mode.requestBodyMode : mode.responseBodyMode;
  }

  /** docs/envoy-ext-proc.md#content-length: Envoy drops content-length in these modes (1.38: unless allow_content_length_header). */
  shouldRemoveContentLength(): boolean {
    if (this.filter.config.allowContentLengthHeader) return false;
    return (
      this.bodyMode === 'STREAMED' ||
      this.bodyMode === 'FULL_DUPLEX_STREAMED' ||
      this.bodyMode === 'BUFFERED_PARTIAL' ||
      (this.bodyMode === 'BUFFERED' && !this.sendHeaders)
    );
  }

  /** Nothing configured for this direction (used for the response path, docs/envoy-ext-proc.md#how-envoy-ends-a-call). */
  noExternalProcess(): boolean {
    return !this.sendHeaders && !this.sendTrailers && this.bodyMode === 'NONE';
  }

  // -- message timer (docs/envoy-ext-proc.md#timeouts) --

  onStartProcessorCall(state: CallbackState): void {
    this.callbackState = state;
    // No timer in FULL_DUPLEX_STREAMED (docs/envoy-ext-proc.md#full_duplex_streamed).
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
      // docs/envoy-ext-proc.md#body-mutations: replace (or create) the body, drop content-length, stop processing this direction.
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
      // docs/envoy-ext-proc.md#bodies: the message had no body; no body message will ever be sent, whatever the mode now says.
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
      // Keep the headers: they may still change in the body response (docs/envoy-ext-proc.md#buffered).
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
    // docs/envoy-ext-proc.md#buffered, docs/envoy-ext-proc.md#header-changes-in-body-answers: header mutations apply here (BUFFERED holds the headers), before the CL check.
    const mutated = this.processHeaderMutation(c);
    if (mutated) return mutated;
    if (c.body_mutation) {
      // docs/envoy-ext-proc.md#content-length: BUFFERED + headers SEND keeps content-length; it must match the mutated body.
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
    // STREAMED: one answer per chunk, in order; header mutations are ignored here (docs/envoy-ext-proc.md#header-changes-in-body-answers).
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

  /** docs/envoy-ext-proc.md#changing-the-path-and-the-route-cache: only request direction, only with a header_mutation in the same response. */
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

