// Small helpers for tests that use the Envoy emulation: header lists, reading headers out of ext_proc
// messages, and a scripted (deliberately simple, possibly misbehaving) ext_proc server.
import * as grpc from '@grpc/grpc-js';
import { extProcService } from '../../src/proto.js';
import type { HeaderList } from '../../src/envoy-model/headers.js';

export type { HeaderList } from '../../src/envoy-model/headers.js';

/** First value of a header in a list (names compared case-insensitively). */
export function getHeader(list: HeaderList, name: string): string | undefined {
  const lower = name.toLowerCase();
  return list.find(([k]) => k.toLowerCase() === lower)?.[1];
}

export function getHeaders(list: HeaderList, name: string): string[] {
  const lower = name.toLowerCase();
  return list.filter(([k]) => k.toLowerCase() === lower).map(([, v]) => v);
}

export function headerList(headers: Record<string, string>): HeaderList {
  return Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]);
}

/** Request headers as a client would send them: method, path, host, then extras. */
export function requestHeaders(method: string, path: string, extra: Record<string, string> = {}, host = 'example.test'): HeaderList {
  return [[':method', method], [':path', path], ['host', host], ...headerList(extra)];
}

export function responseHeaders(status: number, extra: Record<string, string> = {}): HeaderList {
  return [[':status', String(status)], ...headerList(extra)];
}

// ---- the wire side (what a test server reads and writes) -----------------------------------------

/** A decoded ProcessingRequest (proto-loader keepCase/oneofs), loosely typed for tests. */
export interface WireRequest {
  request?: string;
  request_headers?: WireHttpHeaders | null;
  response_headers?: WireHttpHeaders | null;
  request_body?: { body: Buffer; end_of_stream: boolean } | null;
  response_body?: { body: Buffer; end_of_stream: boolean } | null;
  request_trailers?: { trailers?: { headers: WireHeaderValue[] } | null } | null;
  response_trailers?: { trailers?: { headers: WireHeaderValue[] } | null } | null;
  metadata_context?: { filter_metadata?: Record<string, unknown> } | null;
  attributes?: Record<string, unknown>;
  protocol_config?: { request_body_mode: string; response_body_mode: string; send_body_without_waiting_for_header_response: boolean } | null;
}

export interface WireHeaderValue {
  key: string;
  value: string;
  raw_value: Buffer;
}

export interface WireHttpHeaders {
  headers?: { headers: WireHeaderValue[] } | null;
  end_of_stream: boolean;
}

/** Header value from a headers/trailers message, read from raw_value (docs/envoy-ext-proc.md#headers-envoy-sends). */
export function wireHeader(message: WireHttpHeaders | { trailers?: { headers: WireHeaderValue[] } | null } | null | undefined, name: string): string | undefined {
  const list = message && 'trailers' in message ? message.trailers?.headers : (message as WireHttpHeaders | null | undefined)?.headers?.headers;
  const entry = list?.find((h) => h.key === name);
  return entry?.raw_value.toString('utf8');
}

/** A HeaderValueOption the way Envoy wants it: raw_value and an explicit append flag (docs/envoy-ext-proc.md#header-mutations). */
export function setHeader(key: string, value: string, append = false) {
  return { header: { key, raw_value: Buffer.from(value, 'utf8') }, append: { value: append } };
}

/** What a response to `message` must be called (request_headers -> request_headers, ...). */
export function responseKindFor(message: WireRequest): string {
  return message.request ?? 'unknown';
}

// ---- scripted ext_proc server --------------------------------------------------------------------

export interface ScriptedCall {
  readonly received: WireRequest[];
  /** Server-side call events in order: 'data:<kind>', 'end', 'cancelled', 'error:<msg>'. */
  readonly events: string[];
  /** The client's address as the server sees it (distinct per HTTP/2 connection). */
  readonly peer: string;
  /** Resolves with the next message (queued ones first); rejects if the call ends first. */
  next(): Promise<WireRequest>;
  send(response: object): void;
  /** Ends the call with OK. */
  end(): void;
  /** Ends the call with a gRPC error status. */
  fail(code: grpc.status, details?: string): void;
  /** Resolves when the call is over (end and cancel, or the server ended it). */
  readonly done: Promise<void>;
}

export interface ScriptedServer {
  target: string;
  calls: ScriptedCall[];
  close(): Promise<void>;
}

class Call implements ScriptedCall {
  readonly received: WireRequest[] = [];
  readonly events: string[] = [];
  readonly peer: string;
  readonly done: Promise<void>;
  private queue: WireRequest[] = [];
  private waiters: Array<{ resolve: (m: WireRequest) => void; reject: (e: Error) => void }> = [];
  private finished = false;
  private markDone!: () => void;

  constructor(private readonly call: grpc.ServerDuplexStream<WireRequest, object>) {
    this.peer = call.getPeer();
    this.done = new Promise((resolve) => (this.markDone = resolve));
    call.on('data', (message: WireRequest) => {
      this.events.push(`data:${message.request}`);
      this.received.push(message);
      const waiter = this.waiters.shift();
      if (waiter) waiter.resolve(message);
      else this.queue.push(message);
    });
    call.on('end', () => {
      this.events.push('end');
      this.rejectWaiters('client half-closed');
    });
    call.on('cancelled', () => {
      this.events.push('cancelled');
      this.rejectWaiters('cancelled');
      this.finish();
    });
    call.on('error', (err) => this.events.push(`error:${err.message}`));
    call.on('finish', () => this.finish());
  }

  next(): Promise<WireRequest> {
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    if (this.finished) return Promise.reject(new Error('call finished'));
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  send(response: object): void {
    if (!this.finished) this.call.write(response);
  }

  end(): void {
    if (this.finished) return;
    this.call.end();
    this.finish();
  }

  fail(code: grpc.status, details = 'scripted failure'): void {
    if (this.finished) return;
    this.call.emit('error', { code, details });
    this.finish();
  }

  private rejectWaiters(reason: string): void {
    for (const w of this.waiters.splice(0)) w.reject(new Error(reason));
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.rejectWaiters('call finished');
    this.markDone();
  }
}

/**
 * Starts an ext_proc server whose Process() runs `script` for every call. Scripts may misbehave on
 * purpose (wrong kinds, value instead of raw_value, silence); the emulation must react like Envoy.
 */
export async function startScriptedServer(script: (call: ScriptedCall) => void | Promise<void>, address = '127.0.0.1:0'): Promise<ScriptedServer> {
  const server = new grpc.Server();
  const calls: ScriptedCall[] = [];
  server.addService(extProcService().service, {
    Process(call: grpc.ServerDuplexStream<WireRequest, object>) {
      const scripted = new Call(call);
      calls.push(scripted);
      Promise.resolve(script(scripted)).catch(() => undefined);
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  const target = address.startsWith('unix:') ? address : `127.0.0.1:${port}`;
  return {
    target,
    calls,
    close: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())).then(() => undefined),
  };
}

/**
 * A script that answers every message with `answer(message, call)` (one or several responses, or
 * nothing). The default answer to each kind is a bare CONTINUE of the matching kind.
 */
export function answering(
  answer: (message: WireRequest, call: ScriptedCall) => object | object[] | undefined | Promise<object | object[] | undefined> = continueFor,
): (call: ScriptedCall) => Promise<void> {
  return async (call) => {
    for (;;) {
      let message: WireRequest;
      try {
        message = await call.next();
      } catch {
        return;
      }
      const responses = await answer(message, call);
      if (responses === undefined) continue;
      for (const r of Array.isArray(responses) ? responses : [responses]) call.send(r);
    }
  };
}

/** A bare CONTINUE answer of the kind the message asks for. */
export function continueFor(message: WireRequest): object {
  const kind = message.request ?? 'request_headers';
  if (kind.endsWith('_trailers')) return { [kind]: {} };
  return { [kind]: { response: {} } };
}

/** A script answering messages of `kind` with `response` (whole ProcessingResponse) and the rest with CONTINUE. */
export function answeringKind(kind: string, response: object | ((message: WireRequest) => object)): (call: ScriptedCall) => Promise<void> {
  return answering((m) => (m.request === kind ? (typeof response === 'function' ? response(m) : response) : continueFor(m)));
}
