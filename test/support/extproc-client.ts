// A minimal Envoy stand-in for operations tests: opens Process() calls over loopback grpc-js and reads the
// answers one at a time, so a test can pause mid-call (drain) or plant data (redaction).
import * as grpc from '@grpc/grpc-js';
import { EXT_PROC_SERVICE, extProcService, healthService } from '../../src/proto.js';

/** A decoded ProcessingResponse as the client sees it: `response` names the oneof member that is set. */
export type DecodedResponse = { response?: string } & Record<string, unknown>;

export interface TestCall {
  send(message: Record<string, unknown>): void;
  /** The next answer; rejects if the call ends first. */
  next(timeoutMs?: number): Promise<DecodedResponse>;
  /** Half-close (Envoy's end of a call) and wait for the status. */
  finish(): Promise<grpc.StatusObject>;
  readonly status: Promise<grpc.StatusObject>;
  cancel(): void;
}

export function extProcClient(address: string): grpc.Client {
  const Client = extProcService();
  return new Client(address, grpc.credentials.createInsecure());
}

export function openCall(client: grpc.Client): TestCall {
  const stream = (client as unknown as { Process(): grpc.ClientDuplexStream<unknown, DecodedResponse> }).Process();
  const queued: DecodedResponse[] = [];
  const waiting: Array<{ resolve: (value: DecodedResponse) => void; reject: (error: Error) => void }> = [];
  let ended: Error | undefined;
  stream.on('data', (message: DecodedResponse) => {
    const waiter = waiting.shift();
    if (waiter) waiter.resolve(message);
    else queued.push(message);
  });
  const status = new Promise<grpc.StatusObject>((resolve) => stream.on('status', resolve));
  // Errors also arrive as 'status'; the listener keeps them from being thrown as unhandled.
  stream.on('error', () => undefined);
  void status.then((s) => {
    ended = new Error(`call ended before the next answer: ${s.code} ${s.details}`);
    waiting.splice(0).forEach((waiter) => waiter.reject(ended!));
  });
  return {
    send: (message) => void stream.write(message),
    next(timeoutMs = 5_000) {
      const ready = queued.shift();
      if (ready) return Promise.resolve(ready);
      if (ended) return Promise.reject(ended);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
        waiting.push({
          resolve: (value) => (clearTimeout(timer), resolve(value)),
          reject: (error) => (clearTimeout(timer), reject(error)),
        });
      });
    },
    finish() {
      stream.end();
      return status;
    },
    status,
    cancel: () => stream.cancel(),
  };
}

function headerMap(headers: Record<string, string>): { headers: Array<{ key: string; raw_value: Buffer }> } {
  return { headers: Object.entries(headers).map(([key, value]) => ({ key, raw_value: Buffer.from(value, 'latin1') })) };
}

/**
 * The first message of a call as Envoy >= 1.34 sends it with the recommended set-up: body NONE, so the
 * processor asks for the body with mode_override.
 */
export function requestHeaders(headers: Record<string, string>, endOfStream = false): Record<string, unknown> {
  return {
    request_headers: { headers: headerMap(headers), end_of_stream: endOfStream },
    protocol_config: { request_body_mode: 'NONE', response_body_mode: 'NONE' },
  };
}

export function requestBody(body: Buffer | string, endOfStream: boolean): Record<string, unknown> {
  return { request_body: { body: Buffer.from(body), end_of_stream: endOfStream } };
}

export function imageHeaders(options: { deployment?: string; contentLength?: number; extra?: Record<string, string> } = {}): Record<string, string> {
  return {
    ':method': 'POST',
    ':path': `/openai/deployments/${options.deployment ?? 'gpt-image-1'}/images/generations?api-version=2025-04-01-preview`,
    ':authority': 'example.openai.azure.com',
    'content-type': 'application/json',
    ...(options.contentLength !== undefined ? { 'content-length': String(options.contentLength) } : {}),
    ...options.extra,
  };
}

/** Headers, whole body, half-close: returns every answer and the final status. */
export async function runCall(
  client: grpc.Client,
  headers: Record<string, string>,
  body?: Buffer | string,
): Promise<{ answers: DecodedResponse[]; status: grpc.StatusObject }> {
  const call = openCall(client);
  const answers: DecodedResponse[] = [];
  call.send(requestHeaders(headers, body === undefined));
  answers.push(await call.next());
  if (body !== undefined) {
    call.send(requestBody(body, true));
    answers.push(await call.next());
  }
  return { answers, status: await call.finish() };
}

/** grpc.health.v1 Check over the same connection kind Envoy and kubelet use. */
export function checkHealth(address: string, service = EXT_PROC_SERVICE): Promise<string> {
  const Health = healthService();
  const client = new Health(address, grpc.credentials.createInsecure()) as unknown as {
    check(request: { service: string }, callback: (error: grpc.ServiceError | null, response?: { status: string }) => void): void;
    close(): void;
  };
  return new Promise((resolve, reject) =>
    client.check({ service }, (error, response) => {
      client.close();
      if (error) reject(error);
      else resolve(response!.status);
    }),
  );
}
