// One simulated HTTP request through Envoy: the HTTP connection manager's view (headers as the codec
// and HCM present them), a minimal filter manager around the ext_proc filter (iteration, buffering,
// buffer limits, local replies), and the router / downstream codec as the place data ends up.
// The ext_proc logic itself is in filter.ts; this file decides when data "arrives" and what reaches
// the upstream and the client.
import { randomUUID } from 'node:crypto';
import type { BodyArrival, FilterConfig } from './config.js';
import type { DirectionCallbacks, HeadersStatus, LocalReply, ProcessorState, SideStream } from './filter.js';
import { ExtProcFilter } from './filter.js';
import type { HeaderList } from './headers.js';
import { HeaderMap } from './headers.js';
import type { SideStreamHandle, Transport } from './transport.js';

export type BodyInput = Buffer | string | Array<Buffer | string>;

/** The upstream's answer, as the router would receive it. */
export interface ResponseSpec {
  /** Must carry ':status' (default '200'). */
  headers: HeaderList;
  body?: BodyInput;
  trailers?: HeaderList;
}

/** What the router sends upstream after the filter chain (router-added headers not included). */
export interface UpstreamRequest {
  /** Final request headers, pseudo-headers included (':path' as rewritten). */
  headers: HeaderList;
  body: Buffer;
  trailers?: HeaderList;
  /** clear_route_cache took effect (docs/envoy-ext-proc.md#changing-the-path-and-the-route-cache): Envoy would pick the route again. */
  routeRecomputed: boolean;
  /** The client sent content-length and it is gone (docs/envoy-ext-proc.md#content-length). */
  contentLengthRemoved: boolean;
}

/** The final downstream response after response-path processing. */
export interface DownstreamResponse {
  status: number;
  headers: HeaderList;
  body: Buffer;
  trailers?: HeaderList;
  contentLengthRemoved: boolean;
}

export type ResponseSource = ResponseSpec | ((upstream: UpstreamRequest, signal: AbortSignal) => ResponseSpec | Promise<ResponseSpec>);

export interface SimulatedRequest {
  /** Client request headers. 'host' becomes ':authority'; missing pseudo-headers get defaults. */
  headers: HeaderList;
  /** Undefined = no body (end_of_stream on the headers). A Buffer[] = the DATA frames Envoy sees. */
  body?: BodyInput;
  trailers?: HeaderList;
  /** The upstream response (static, or produced from the upstream request). Omit: request path only. */
  response?: ResponseSource;
  /** Client disconnect: after the headers message, after the first body chunk, or after N ms. */
  abortAfter?: 'headers' | 'firstBodyChunk' | number;
  /** Overrides the emulator's bodyArrival for this request (both directions). */
  bodyArrival?: BodyArrival;
  /** Dynamic metadata already on the stream (set by earlier filters), by namespace. */
  dynamicMetadata?: Record<string, Record<string, unknown>>;
}

type Terminal =
  | { kind: 'local_reply'; status: number; headers: HeaderMap; body: Buffer; details: string; grpcStatus?: number }
  | { kind: 'reset'; details: string }
  | { kind: 'aborted' };

export interface StreamSettings {
  config: FilterConfig;
  transport: Transport;
  initialMetadata: HeaderList;
  bodyArrival: BodyArrival;
  hcmHeaders: boolean;
  stallTimeoutMs: number;
}

function toChunks(body: BodyInput | undefined): Buffer[] | undefined {
  if (body === undefined) return undefined;
  const parts = Array.isArray(body) ? body : [body];
  return parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : p));
}

/** The filter manager's view of one direction around the ext_proc filter. */
class FilterManagerSide implements DirectionCallbacks {
  headers = new HeaderMap();
  trailers: HeaderMap | null = null;
  /** Everything below reached the next filter (router upstream, codec downstream). */
  headersForwarded = false;
  readonly out: Buffer[] = [];
  endForwarded = false;
  trailersForwarded = false;
  /** decodingBuffer()/encodingBuffer(): data the filter asked the filter manager to hold. */
  private held: Buffer[] | null = null;
  private heldBytes = 0;
  /** complete(): the codec delivered end of stream for this direction. */
  private complete = false;
  private stopped = false;

  constructor(
    private readonly stream: HttpStream,
    readonly direction: 'request' | 'response',
  ) {}

  private get filter(): ExtProcFilter {
    return this.stream.filter;
  }

  // -- codec -> filter --

  headersIn(headers: HeaderMap, endStream: boolean): void {
    this.headers = headers;
    this.complete = endStream;
    const status: HeadersStatus =
      this.direction === 'request' ? this.filter.decodeHeaders(headers, endStream) : this.filter.encodeHeaders(headers, endStream);
    if (this.stream.terminal) return;
    if (status === 'Continue') this.forwardHeaders();
    else this.stopped = true;
  }

  dataIn(chunk: Buffer, endStream: boolean): void {
    if (endStream) this.complete = true;
    const holder = { data: chunk };
    const state = this.direction === 'request' ? this.filter.decoding : this.filter.encoding;
    const status = this.filter.onData(state, holder, endStream);
    if (this.stream.terminal) return;
    switch (status) {
      case 'Continue':
        if (this.stopped) {
          this.append(holder.data);
          this.continueProcessing();
        } else {
          this.forwardData(holder.data, endStream);
        }
        break;
      case 'StopIterationAndBuffer':
        // A non-streaming buffer over the limit is an error: 413 / 500 (docs/envoy-ext-proc.md#buffered).
        this.stopped = true;
        this.append(holder.data);
        if (this.heldBytes > this.bufferLimit()) this.stream.dataTooLarge(this.direction);
        break;
      case 'StopIterationAndWatermark':
        // Flow control only: held, never an error.
        this.stopped = true;
        this.append(holder.data);
        break;
      case 'StopIterationNoBuffer':
        this.stopped = true;
        break;
    }
  }

  trailersIn(trailers: HeaderMap): void {
    this.trailers = trailers;
    this.complete = true;
    const state = this.direction === 'request' ? this.filter.decoding : this.filter.encoding;
    const status = this.filter.onTrailers(state, trailers);
    if (this.stream.terminal) return;
    if (status === 'StopIteration') this.stopped = true;
    else if (this.stopped) this.continueProcessing();
    else this.forwardTrailers();
  }

  // -- filter -> filter manager (DirectionCallbacks) --

  continueProcessing(): void {
    if (this.stream.terminal) return;
    this.stopped = false;
    if (!this.headersForwarded) this.forwardHeaders();
    if (this.held !== null) {
      const data = this.bufferedData()!;
      this.clearHeld();
      this.forwardData(data, this.complete && this.trailers === null);
    }
    if (this.trailers !== null) this.forwardTrailers();
    // A zero-length end_stream when everything was consumed by the filter (e.g. an emptied last chunk).
    if (this.complete && this.trailers === null && !this.endForwarded) this.forwardData(Buffer.alloc(0), true);
  }

  injectData(data: Buffer, endStream: boolean): void {
    if (this.stream.terminal) return;
    if (!this.headersForwarded) this.headersForwarded = true;
    this.forwardData(data, endStream);
  }

  bufferedData(): Buffer | null {
    // Held as a list of chunks and joined when read: appending 1,000 chunks must not copy the body 1,000 times.
    if (this.held !== null && this.held.length !== 1) this.held = [Buffer.concat(this.held)];
    return this.held?.[0] ?? null;
  }

  addBufferedData(data: Buffer): void {
    this.append(data);
    if (this.heldBytes > this.bufferLimit()) this.stream.dataTooLarge(this.direction);
  }

  modifyBufferedData(fn: (data: Buffer) => Buffer): void {
    const data = fn(this.bufferedData() ?? Buffer.alloc(0));
    this.held = [data];
    this.heldBytes = data.length;
  }

  bufferLimit(): number {
    return this.stream.settings.config.bufferLimitBytes;
  }

  // -- helpers --

  private append(data: Buffer): void {
    (this.held ??= []).push(Buffer.from(data));
    this.heldBytes += data.length;
  }

  private clearHeld(): void {
    this.held = null;
    this.heldBytes = 0;
  }

  private forwardHeaders(): void {
    if (this.headersForwarded) return;
    this.headersForwarded = true;
    if (this.complete && this.held === null && this.trailers === null) this.endForwarded = true;
  }

  private forwardData(data: Buffer, endStream: boolean): void {
    if (!this.headersForwarded) this.forwardHeaders();
    if (data.length > 0) this.out.push(data);
    if (endStream) this.endForwarded = true;
  }

  private forwardTrailers(): void {
    if (this.trailersForwarded) return;
    if (!this.headersForwarded) this.headersForwarded = true;
    if (this.held !== null) {
      this.out.push(this.bufferedData()!);
      this.clearHeld();
    }
    this.trailersForwarded = true;
    this.endForwarded = true;
  }

  body(): Buffer {
    return Buffer.concat(this.out);
  }
}

export class HttpStream {
  readonly filter: ExtProcFilter;
  readonly decoder: FilterManagerSide;
  readonly encoder: FilterManagerSide;
  terminal: Terminal | null = null;
  routeRecomputed = false;
  readonly dynamicMetadata: Record<string, Record<string, unknown>>;
  readonly requestId = randomUUID();
  private readonly started = Date.now();
  private readonly abortController = new AbortController();
  private readonly waiters = new Set<() => void>();
  private fatal: unknown;
  private sideStream: SideStreamHandle | undefined;
  private upstream: UpstreamRequest | undefined;
  private bodyArrival: BodyArrival;

  constructor(
    readonly settings: StreamSettings,
    request: SimulatedRequest,
  ) {
    this.bodyArrival = request.bodyArrival ?? settings.bodyArrival;
    this.dynamicMetadata = structuredClone(request.dynamicMetadata ?? {});
    this.decoder = new FilterManagerSide(this, 'request');
    this.encoder = new FilterManagerSide(this, 'response');
    this.filter = new ExtProcFilter(settings.config, {
      decoder: this.decoder,
      encoder: this.encoder,
      openStream: (metadata) => this.openSideStream(metadata),
      sendLocalReply: (reply) => this.sendLocalReply(reply),
      clearRouteCache: () => {
        this.routeRecomputed = true;
      },
      dynamicMetadata: this.dynamicMetadata,
      requestId: this.requestId,
      initialMetadata: settings.initialMetadata,
      now: () => Date.now() - this.started,
      event: (fn) => this.event(fn),
    });
  }

  private openSideStream(initialMetadata: HeaderList): SideStream {
    this.sideStream = this.settings.transport.start(initialMetadata, {
      onReceiveMessage: (message) => this.event(() => this.filter.onReceiveMessage(message)),
      onRemoteClose: (code, details) => this.event(() => this.filter.onRemoteClose(code, details)),
    });
    return this.sideStream;
  }

  /** Every asynchronous input goes through here: errors surface from request(), waiters re-check. */
  private event(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.fatal ??= err;
    }
    for (const check of [...this.waiters]) check();
  }

  private until(done: () => boolean, what: string): Promise<void> {
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const check = () => {
        if (this.fatal !== undefined) finish(() => reject(this.fatal));
        else if (this.terminal || done()) finish(resolve);
      };
      const finish = (settle: () => void) => {
        this.waiters.delete(check);
        if (timer) clearTimeout(timer);
        settle();
      };
      this.waiters.add(check);
      check();
      if (!this.waiters.has(check) || this.settings.stallTimeoutMs === 0) return;
      timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(
          new Error(
            `EnvoyEmulator: no progress for ${this.settings.stallTimeoutMs} ms waiting for ${what} ` +
              `(request ${this.filter.decoding.callbackState}, response ${this.filter.encoding.callbackState}); ` +
              'real Envoy would hang here until a route or idle timeout',
          ),
        );
      }, this.settings.stallTimeoutMs);
    });
  }

  sendLocalReply(reply: LocalReply): void {
    if (this.terminal) return;
    if (this.encoder.headersForwarded) {
      // Response headers already went to the client: Envoy can only reset the stream.
      this.terminal = { kind: 'reset', details: reply.details };
    } else {
      const headers = new HeaderMap();
      headers.addRaw(':status', Buffer.from(String(reply.status)));
      if (reply.body.length > 0) {
        headers.addRaw('content-length', Buffer.from(String(reply.body.length)));
        headers.addRaw('content-type', Buffer.from('text/plain'));
      }
      reply.mutateHeaders?.(headers);
      const status = Number(headers.getString(':status') ?? reply.status);
      this.terminal = { kind: 'local_reply', status, headers, body: reply.body, details: reply.details, grpcStatus: reply.grpcStatus };
    }
    this.abortController.abort();
    // The HTTP stream is done: the filter is destroyed, which closes the side stream if still open.
    this.filter.onDestroy('local-reply');
  }

  /** The filter manager's buffer limit handling (requestDataTooLarge / responseDataTooLarge). */
  dataTooLarge(direction: 'request' | 'response'): void {
    if (direction === 'request') {
      this.sendLocalReply({ status: 413, body: Buffer.from('Payload Too Large'), details: 'request_payload_too_large' });
    } else {
      this.sendLocalReply({ status: 500, body: Buffer.from('Internal Server Error'), details: 'response_payload_too_large' });
    }
  }

  private abort(): void {
    if (this.terminal) return;
    this.terminal = { kind: 'aborted' };
    this.abortController.abort();
    this.filter.onDestroy('aborted');
  }

  private async abortAfterFlush(): Promise<void> {
    await this.sideStream?.flushed();
    this.event(() => this.abort());
  }

  /** Does Envoy hold this direction's body while the headers call is pending (docs/envoy-ext-proc.md#bodies)? */
  private holdsBody(state: ProcessorState): boolean {
    const streamsNow =
      state.bodyMode === 'FULL_DUPLEX_STREAMED' ||
      (state.bodyMode === 'STREAMED' && this.settings.config.sendBodyWithoutWaitingForHeaderResponse);
    return !streamsNow;
  }

  private async deliverBody(
    side: FilterManagerSide,
    state: ProcessorState,
    chunks: Buffer[] | undefined,
    trailers: HeaderMap | null,
    abortAfterFirstChunk: boolean,
  ): Promise<void> {
    if (chunks === undefined && trailers === null) return;
    if (this.bodyArrival === 'after-headers-response' && this.holdsBody(state)) {
      await this.until(() => state.callbackState !== 'HeadersCallback', `the ${side.direction} headers response`);
    }
    const list = chunks ?? [];
    for (let i = 0; i < list.length && !this.terminal; i++) {
      this.event(() => side.dataIn(list[i], i === list.length - 1 && trailers === null));
      if (abortAfterFirstChunk && i === 0) {
        await this.abortAfterFlush();
        return;
      }
    }
    if (trailers && !this.terminal) this.event(() => side.trailersIn(trailers));
  }

  async run(request: SimulatedRequest): Promise<Outcome> {
    const abortTimer =
      typeof request.abortAfter === 'number' ? setTimeout(() => this.event(() => this.abort()), request.abortAfter) : undefined;
    try {
      // -- request path --
      const chunks = toChunks(request.body);
      const trailers = request.trailers ? HeaderMap.fromList(request.trailers) : null;
      const headers = this.requestHeaderMap(request.headers, chunks !== undefined);
      const hadContentLength = headers.has('content-length');
      this.event(() => this.decoder.headersIn(headers, chunks === undefined && trailers === null));
      if (request.abortAfter === 'headers') await this.abortAfterFlush();
      await this.deliverBody(this.decoder, this.filter.decoding, chunks, trailers, request.abortAfter === 'firstBodyChunk');
      await this.until(() => this.decoder.endForwarded, 'the request to reach the router');
      if (this.terminal) return this.finish();

      this.upstream = {
        headers: this.decoder.headers.toList(),
        body: this.decoder.body(),
        trailers: this.decoder.trailersForwarded && this.decoder.trailers ? this.decoder.trailers.toList() : undefined,
        routeRecomputed: this.routeRecomputed,
        contentLengthRemoved: hadContentLength && !this.decoder.headers.has('content-length'),
      };
      if (!request.response) return this.finish();

      // -- upstream --
      const source = request.response;
      let spec: ResponseSpec;
      try {
        spec = typeof source === 'function' ? await source(this.upstream, this.abortController.signal) : source;
      } catch (err) {
        // A local reply while the upstream call was in flight aborts that call (docs/envoy-ext-proc.md#how-envoy-ends-a-call): the reply wins.
        if (this.terminal && this.fatal === undefined) return this.finish();
        throw err;
      }
      if (this.fatal !== undefined) throw this.fatal;
      if (this.terminal) return this.finish();

      // -- response path --
      const respChunks = toChunks(spec.body);
      const respTrailers = spec.trailers ? HeaderMap.fromList(spec.trailers) : null;
      const respHeaders = HeaderMap.fromList(spec.headers);
      if (!respHeaders.has(':status')) respHeaders.addRaw(':status', Buffer.from('200'));
      const respHadContentLength = respHeaders.has('content-length');
      this.event(() => this.encoder.headersIn(respHeaders, respChunks === undefined && respTrailers === null));
      await this.deliverBody(this.encoder, this.filter.encoding, respChunks, respTrailers, false);
      await this.until(() => this.encoder.endForwarded, 'the response to reach the client');
      return this.finish(respHadContentLength);
    } finally {
      if (abortTimer) clearTimeout(abortTimer);
      this.filter.onDestroy('end');
    }
  }

  /** Filter destruction at the end of the HTTP stream (docs/envoy-ext-proc.md#how-envoy-ends-a-call) closes the stream if still open. */
  private finish(responseHadContentLength = false): Outcome {
    this.filter.onDestroy('end');
    return this.outcome(responseHadContentLength);
  }

  /** HTTP/1 Host is presented as :authority; the HCM adds x-forwarded-proto and x-request-id (docs/envoy-ext-proc.md#headers-envoy-sends). */
  private requestHeaderMap(list: HeaderList, hasBody: boolean): HeaderMap {
    const lower = list.map(([k, v]) => [k.toLowerCase(), v] as [string, string]);
    const find = (name: string) => lower.find(([k]) => k === name)?.[1];
    const scheme = find(':scheme') ?? 'http';
    const map = new HeaderMap();
    const add = (k: string, v: string) => map.addRaw(k, Buffer.from(v, 'utf8'));
    add(':authority', find(':authority') ?? find('host') ?? 'localhost');
    add(':path', find(':path') ?? '/');
    add(':method', find(':method') ?? (hasBody ? 'POST' : 'GET'));
    add(':scheme', scheme);
    for (const [k, v] of lower) {
      if ([':authority', ':path', ':method', ':scheme', 'host'].includes(k)) continue;
      add(k, v);
    }
    if (this.settings.hcmHeaders) {
      if (!map.has('x-forwarded-proto')) add('x-forwarded-proto', scheme);
      if (!map.has('x-request-id')) add('x-request-id', this.requestId);
    }
    return map;
  }

  private outcome(responseHadContentLength = false): Outcome {
    if (this.fatal !== undefined) throw this.fatal;
    const f = this.filter;
    const base: OutcomeBase = {
      counters: { ...f.counters },
      dynamicMetadata: structuredClone(this.dynamicMetadata),
      messagesSent: f.counters.stream_msgs_sent,
      messagesReceived: f.messagesReceived,
      streamClosedBy: f.streamClosedBy,
      serverStatus: f.serverStatus,
      transcript: f.transcript,
    };
    const t = this.terminal;
    if (t?.kind === 'aborted') return { kind: 'aborted', ...base };
    if (t?.kind === 'reset') return { kind: 'reset', details: t.details, upstream: this.upstream, ...base };
    if (t?.kind === 'local_reply') {
      return {
        kind: 'local_reply',
        status: t.status,
        headers: t.headers.toList(),
        body: t.body,
        details: t.details,
        grpcStatus: t.grpcStatus,
        upstream: this.upstream,
        ...base,
      };
    }
    if (!this.upstream) throw new Error('EnvoyEmulator: outcome requested before the request reached the router');
    const response: DownstreamResponse | undefined = this.encoder.headersForwarded
      ? {
          status: Number(this.encoder.headers.getString(':status')),
          headers: this.encoder.headers.toList(),
          body: this.encoder.body(),
          trailers: this.encoder.trailersForwarded && this.encoder.trailers ? this.encoder.trailers.toList() : undefined,
          contentLengthRemoved: responseHadContentLength && !this.encoder.headers.has('content-length'),
        }
      : undefined;
    return { kind: 'upstream', upstream: this.upstream, response, ...base };
  }
}

export interface OutcomeBase {
  /** Envoy's ext_proc stats for this request (stat names as Envoy spells them). */
  counters: Record<string, number>;
  /** Stream dynamic metadata after the request (namespaces the server wrote, if received). */
  dynamicMetadata: Record<string, Record<string, unknown>>;
  messagesSent: number;
  messagesReceived: number;
  /** Who ended the ext_proc stream and why (see StreamCloseReason in filter.ts). */
  streamClosedBy: ExtProcFilter['streamClosedBy'];
  /** The gRPC status the server ended the call with, if it did. */
  serverStatus?: { code: number; details: string };
  transcript: ExtProcFilter['transcript'];
}

export type Outcome =
  | (OutcomeBase & { kind: 'upstream'; upstream: UpstreamRequest; response?: DownstreamResponse })
  | (OutcomeBase & {
      kind: 'local_reply';
      status: number;
      headers: HeaderList;
      body: Buffer;
      details: string;
      grpcStatus?: number;
      /** Present when the local reply happened after the request went upstream. */
      upstream?: UpstreamRequest;
    })
  | (OutcomeBase & { kind: 'reset'; details: string; upstream?: UpstreamRequest })
  | (OutcomeBase & { kind: 'aborted' });
