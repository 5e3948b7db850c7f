// The ext_proc HTTP filter, ported from Envoy (source/extensions/filters/http/ext_proc/ext_proc.cc,
// Filter::*, late 2025 = 1.37 semantics, with the version switches of docs/envoy-ext-proc.md#version-history); the
// per-direction state is in processor-state.ts. Method names follow Envoy's so the two can be read side by
// side; the comments cite docs/envoy-ext-proc.md, which says the same in words, with links to Envoy's docs.
import type { FilterConfig } from './config.js';
import { effectiveModeOverride, fullMode, modeFromWire, overrideAllowed } from './config.js';
import type { HeaderMap } from './headers.js';
import { applyHeaderMutation, headersToProto, MutationChecker, type MutationEntry } from './headers.js';
import type { Status, WireCommonResponse, WireImmediateResponse, WireProcessingResponse } from './processor-state.js';
import { OK, ProcessorState, spurious } from './processor-state.js';
import type { WireStruct } from './values.js';
import { evaluateAttributes, jsToStruct, statusCodeNumber, structToJs } from './values.js';

export { ProcessorState } from './processor-state.js';

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

// ---- Filter -------------------------------------------------------------------------------------

type OpenState = 'Ok' | 'IgnoreError' | 'Error';

export class ExtProcFilter {
  readonly decoding: ProcessorState;
  readonly encoding: ProcessorState;
  readonly counters: Counters = Object.fromEntries(COUNTER_NAMES.map((n) => [n, 0])) as Counters;
  readonly transcript: TranscriptEntry[] = [];
  /** Every message the server sent, accepted or not. */
  messagesReceived = 0;
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
      observe: (entry: MutationEntry) => this.note('header mutation', entry),
    };
  }

  note(kind: string, message?: unknown): void {
    if (this.config.transcript) this.transcript.push({ atMs: this.env.now(), direction: 'note', kind, message });
  }

  // -- stream lifecycle --

  private openStream(): OpenState {
    if (this.processingComplete) return 'IgnoreError';
    if (!this.stream) {
      // One gRPC stream per HTTP request, opened lazily when there is something to send (docs/envoy-ext-proc.md#message-order).
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

  /** closeStreamMaybeGraceful: graceful close is off by default (docs/envoy-ext-proc.md#how-envoy-ends-a-call), so a plain close. */
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
    if (!this.config.transcript) return;
    const kind = Object.keys(request).find((k) => /^(request|response)_(headers|body|trailers)$/.test(k)) ?? 'unknown';
    this.transcript.push({ atMs: this.env.now(), direction: 'envoy->server', kind, message: request });
  }

  /** Per-route ExtProcPerRoute, merged once at decodeHeaders (docs/envoy-ext-proc.md#per-route-settings). */
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

  /** Once body data went out in FULL_DUPLEX_STREAMED, failure_mode_allow no longer applies (docs/envoy-ext-proc.md#full_duplex_streamed). */
  private failureModeAllow(): boolean {
    const duplexBody = (s: ProcessorState) => s.bodyMode === 'FULL_DUPLEX_STREAMED' && s.bodyReceived;
    if (duplexBody(this.decoding) || duplexBody(this.encoding)) return false;
    return this.failureModeAllowSetting;
  }

  // -- building requests (docs/envoy-ext-proc.md#the-service-and-its-messages, #headers-envoy-sends) --

  private encodeProtocolConfig(request: Record<string, unknown>): void {
    // protocol_config on the first message of the stream only (1.34+, docs/envoy-ext-proc.md#the-service-and-its-messages).
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

  /** attributes: first message of a direction, only when configured (docs/envoy-ext-proc.md#dynamic-metadata). */
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
    // docs/envoy-ext-proc.md#content-length: removed after the headers message was built (the server saw it), by the mode in force now.
    if (!this.processingComplete && this.decoding.shouldRemoveContentLength()) headers.remove('content-length');
    return status;
  }

  encodeHeaders(headers: HeaderMap, endStream: boolean): HeadersStatus {
    if (endStream) this.encoding.completeBodyAvailable = true;
    let status: HeadersStatus = 'Continue';
    if (!this.processingComplete && this.encoding.sendHeaders) status = this.onHeaders(this.encoding, headers, endStream);
    if (!this.processingComplete && this.encoding.shouldRemoveContentLength()) headers.remove('content-length');
    // docs/envoy-ext-proc.md#how-envoy-ends-a-call, 1.37 (PR #41425): nothing to do on the response path, so close now.
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
        // docs/envoy-ext-proc.md#bodies: held until the headers response. BUFFERED buffers against the limit (413, 1.35+),
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

  /** docs/envoy-ext-proc.md#buffered: buffer everything; one message with the whole body at end of stream. */
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

  /** docs/envoy-ext-proc.md#streamed, docs/envoy-ext-proc.md#full_duplex_streamed: every chunk goes out at once (pipelined); FULL_DUPLEX drains the original data. */
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

  /** docs/envoy-ext-proc.md#buffered_partial: queue up to the buffer limit, send once (eos or limit), then let the rest flow. */
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
      // docs/envoy-ext-proc.md#buffered: the body message ends with end_of_stream false; trailers follow if SEND.
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

  // -- responses from the server (docs/envoy-ext-proc.md#answer-matching) --

  private inHeaderProcessState(): boolean {
    return this.decoding.callbackState === 'HeadersCallback' || this.encoding.callbackState === 'HeadersCallback';
  }

  private setDynamicMetadata(response: WireProcessingResponse): void {
    // docs/envoy-ext-proc.md#dynamic-metadata: only configured receiving namespaces; each top-level field's struct_value.
    if (this.config.receivingNamespaces.length === 0 || !response.dynamic_metadata) return;
    for (const [ns, value] of Object.entries(response.dynamic_metadata.fields ?? {})) {
      if (!this.config.receivingNamespaces.includes(ns)) continue;
      const struct = value?.kind === 'structValue' ? structToJs(value.structValue) : {};
      this.env.dynamicMetadata[ns] = { ...(this.env.dynamicMetadata[ns] ?? {}), ...struct };
    }
  }

  onReceiveMessage(raw: unknown): void {
    const response = raw as WireProcessingResponse;
    this.messagesReceived++;
    if (this.config.transcript) this.transcript.push({ atMs: this.env.now(), direction: 'server->envoy', kind: response.response ?? 'none', message: raw });
    // docs/envoy-ext-proc.md#answer-matching: anything after processing completed is ignored.
    if (this.processingComplete) return;

    // docs/envoy-ext-proc.md#timeouts: a timeout extension is handled first and nothing else in the message is applied.
    if (response.override_message_timeout) {
      this.onNewTimeout(response.override_message_timeout);
      return;
    }

    // docs/envoy-ext-proc.md#mode_override: mode_override only while a headers response is awaited, only if allowed.
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
          // docs/envoy-ext-proc.md#local-replies: processing complete, stream closed, metadata applied, then the local reply.
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
        // An unset oneof (e.g. only dynamic_metadata or mode_override, docs/envoy-ext-proc.md#answer-matching) is spurious too.
        status = spurious('unhandled message');
    }

    if (status === null) {
      this.counters.stream_msgs_received++;
    } else if (status.spurious) {
      this.counters.spurious_msgs_received++;
      this.note('spurious response', status.message);
      // docs/envoy-ext-proc.md#failures: since 1.35 fail closed unless failure_mode_allow; before, ignore and carry on.
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

  /** isLastBodyResponse: only STREAMED / FULL_DUPLEX body answers can be "last" (docs/envoy-ext-proc.md#how-envoy-ends-a-call). */
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

  /** docs/envoy-ext-proc.md#how-envoy-ends-a-call, 1.37+: close as soon as the last response this stream will carry has arrived. */
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

  /** docs/envoy-ext-proc.md#local-replies: status < 200 or missing = 200; headers under the filter's mutation rules (failures only logged). */
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

  // -- gRPC stream events (docs/envoy-ext-proc.md#failures) --

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
