// What a broken or hostile peer can send on the ext_proc port, and what must come of it: the server never
// crashes and keeps serving other calls; each bad call either ends with a gRPC error status (Envoy's
// failure_mode_allow then decides, docs/envoy-ext-proc.md#failures) or is answered per protocol. Messages out of order and
// unknown kinds go through a grpc-js client (the emulator only sends what Envoy sends); bytes that are not
// protobuf, or not gRPC, go through a raw HTTP/2 client or a plain socket.
import { connect as connectHttp2, type ClientHttp2Session } from 'node:http2';
import { connect as connectTcp } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { EXT_PROC_SERVICE, extProcService } from '../src/proto.js';
import {
  checkHealth,
  extProcClient,
  imageHeaders,
  openCall,
  requestBody,
  requestHeaders,
  runCall,
  type DecodedResponse,
} from './support/extproc-client.js';
import { startTestServer, type TestServer } from './support/harness.js';

const MiB = 1024 * 1024;
const PROCESS_PATH = `/${EXT_PROC_SERVICE}/Process`;
const SEED = '{"model":"gpt-image-1","prompt":"a red circle"}';

let server: TestServer;
let client: grpc.Client;

beforeAll(async () => {
  server = await startTestServer();
  client = extProcClient(server.target);
});

afterAll(async () => {
  client?.close();
  await server?.close();
});

/** After every bad call: a normal image call on a fresh connection is still answered, and nothing leaks. */
afterEach(async () => {
  const fresh = extProcClient(server.target);
  try {
    const { answers, status } = await runCall(fresh, imageHeaders({ contentLength: SEED.length }), SEED);
    expect(status.code).toBe(grpc.status.OK);
    expect(bodyOf(answers[1]!)).toBe('{"prompt":"a red circle"}');
    expect(await checkHealth(server.target)).toBe('SERVING');
  } finally {
    fresh.close();
  }
  await until(() => server.server.activeCalls() === 0);
  expect(server.server.heldBytes()).toBe(0);
});

function bodyOf(answer: DecodedResponse): string | undefined {
  const mutation = (answer.request_body as { response?: { body_mutation?: { body?: Buffer } } }).response?.body_mutation;
  return mutation?.body?.toString();
}

async function until(condition: () => boolean, timeoutMs = 2_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('messages out of protocol order', () => {
  test('a request_body before any request_headers: answered with a request_body CONTINUE', async () => {
    const call = openCall(client);
    call.send(requestBody(SEED, true));
    const answer = await call.next();
    expect(answer.response).toBe('request_body');
    expect(bodyOf(answer)).toBeUndefined();
    expect((await call.finish()).code).toBe(grpc.status.OK);
  });

  test('a response_body first: answered with a response_body CONTINUE', async () => {
    const call = openCall(client);
    call.send({ response_body: { body: Buffer.from('{"data":[]}'), end_of_stream: true } });
    expect((await call.next()).response).toBe('response_body');
    expect((await call.finish()).code).toBe(grpc.status.OK);
  });

  test('trailers and response headers before request headers: each answered with its own kind', async () => {
    const call = openCall(client);
    call.send({ request_trailers: { trailers: { headers: [] } } });
    expect((await call.next()).response).toBe('request_trailers');
    call.send({ response_headers: { headers: { headers: [{ key: ':status', raw_value: Buffer.from('200') }] }, end_of_stream: true } });
    expect((await call.next()).response).toBe('response_headers');
    expect((await call.finish()).code).toBe(grpc.status.OK);
  });

  test('request_headers twice: the first is answered, the second ends the call with INTERNAL', async () => {
    const call = openCall(client);
    call.send(requestHeaders(imageHeaders({ contentLength: SEED.length })));
    expect((await call.next()).response).toBe('request_headers');
    call.send(requestHeaders(imageHeaders({ contentLength: SEED.length })));
    const status = await call.status;
    expect(status.code).toBe(grpc.status.INTERNAL);
    expect(status.details).toMatch(/request_headers received twice/);
  });

  test('a second body after the whole BUFFERED body was edited: answered with a bare CONTINUE', async () => {
    const call = openCall(client);
    call.send(requestHeaders(imageHeaders({ contentLength: SEED.length })));
    await call.next();
    call.send(requestBody(SEED, true));
    expect(bodyOf(await call.next())).toBe('{"prompt":"a red circle"}');
    call.send(requestBody(SEED, true));
    const late = await call.next();
    expect(late.response).toBe('request_body');
    expect(bodyOf(late)).toBeUndefined();
    expect((await call.finish()).code).toBe(grpc.status.OK);
  });
});

describe('unknown message kinds', () => {
  test('a ProcessingRequest with no oneof set ends the call with INTERNAL', async () => {
    const call = openCall(client);
    call.send({});
    const status = await call.status;
    expect(status.code).toBe(grpc.status.INTERNAL);
    expect(status.details).toMatch(/without a known request kind/);
  });

  test('protocol_config alone (no oneof) ends the call with INTERNAL', async () => {
    const call = openCall(client);
    call.send({ protocol_config: { request_body_mode: 'NONE', response_body_mode: 'NONE' } });
    expect((await call.status).code).toBe(grpc.status.INTERNAL);
  });

  test('an observability_mode message with no oneof gets no answer, as Envoy ignores answers there', async () => {
    const call = openCall(client);
    call.send({ observability_mode: true });
    await expect(call.next(300)).rejects.toThrow(/no answer/);
    expect((await call.finish()).code).toBe(grpc.status.OK);
  });
});

describe('oversized header maps', () => {
  test('10,000 headers on an image route: answered, and the body still edited', async () => {
    const many = Object.fromEntries(Array.from({ length: 10_000 }, (_, i) => [`x-filler-${i}`, `value-${i}`]));
    const { answers, status } = await runCall(client, imageHeaders({ contentLength: SEED.length, extra: many }), SEED);
    expect(status.code).toBe(grpc.status.OK);
    expect(bodyOf(answers[1]!)).toBe('{"prompt":"a red circle"}');
  });

  test('a 1 MiB header value, a 1 MiB :path and a 1 MiB content-type: each answered, quickly', async () => {
    const huge = 'a'.repeat(MiB);
    const cases: Array<Record<string, string>> = [
      imageHeaders({ contentLength: SEED.length, extra: { 'x-huge': huge } }),
      // The route patterns must stay linear on a path that almost matches.
      { ...imageHeaders({ contentLength: SEED.length }), ':path': `/openai/deployments/${huge}/images/generations` },
      { ...imageHeaders({ contentLength: SEED.length }), ':path': `/${'x/'.repeat(MiB / 2)}openai/deployments/d/images/edit` },
      { ...imageHeaders({ contentLength: SEED.length }), 'content-type': `multipart/form-data; boundary=${huge}` },
    ];
    for (const headers of cases) {
      const started = performance.now();
      const call = openCall(client);
      call.send(requestHeaders(headers));
      expect((await call.next(5_000)).response).toBe('request_headers');
      call.send(requestBody(SEED, true));
      expect((await call.next(5_000)).response).toBe('request_body');
      expect((await call.finish()).code).toBe(grpc.status.OK);
      expect(performance.now() - started).toBeLessThan(2_000);
    }
  });

  test('a header map larger than maxMessageBytes ends the call with RESOURCE_EXHAUSTED', async () => {
    const small = await startTestServer({ maxMessageBytes: MiB, streamThresholdBytes: MiB / 2 });
    const smallClient = extProcClient(small.target);
    try {
      const call = openCall(smallClient);
      call.send(requestHeaders(imageHeaders({ extra: { 'x-huge': 'a'.repeat(2 * MiB) } })));
      expect((await call.status).code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      const { status } = await runCall(smallClient, imageHeaders({ contentLength: SEED.length }), SEED);
      expect(status.code).toBe(grpc.status.OK);
    } finally {
      smallClient.close();
      await small.close();
    }
  });
});

// ---- bytes that are not protobuf, or not gRPC ----------------------------------------------------

/** A gRPC length-prefixed message: flag byte, 4-byte big-endian length (default: the real one), payload. */
function grpcFrame(payload: Buffer, options: { compressed?: number; length?: number } = {}): Buffer {
  const prefix = Buffer.alloc(5);
  prefix[0] = options.compressed ?? 0;
  prefix.writeUInt32BE(options.length ?? payload.length, 1);
  return Buffer.concat([prefix, payload]);
}

const serialize = (message: Record<string, unknown>): Buffer => extProcService().service.Process!.requestSerialize(message);
const deserialize = (bytes: Buffer): DecodedResponse => extProcService().service.Process!.responseDeserialize(bytes) as DecodedResponse;

interface RawResult {
  httpStatus?: number;
  /** From the trailers, or from the headers of a trailers-only response. */
  grpcStatus?: number;
  grpcMessage?: string;
  /** Decoded answers (each DATA chunk is assumed to hold whole messages, as grpc-js writes them). */
  answers: DecodedResponse[];
}

/** One Process call on `session`: sends `frames` (ending the stream after the last unless `keepOpen`). */
function rawCall(session: ClientHttp2Session, frames: Buffer[], keepOpen = false): { result: Promise<RawResult>; write(bytes: Buffer, end?: boolean): void } {
  const stream = session.request({ ':method': 'POST', ':path': PROCESS_PATH, 'content-type': 'application/grpc', te: 'trailers' });
  const out: RawResult = { answers: [] };
  let pending = Buffer.alloc(0);
  stream.on('response', (headers) => {
    out.httpStatus = Number(headers[':status']);
    if (headers['grpc-status'] !== undefined) out.grpcStatus = Number(headers['grpc-status']);
    if (headers['grpc-message'] !== undefined) out.grpcMessage = decodeURIComponent(String(headers['grpc-message']));
  });
  stream.on('data', (chunk: Buffer) => {
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 5 && pending.length >= 5 + pending.readUInt32BE(1)) {
      const length = pending.readUInt32BE(1);
      out.answers.push(deserialize(pending.subarray(5, 5 + length)));
      pending = pending.subarray(5 + length);
    }
  });
  stream.on('trailers', (trailers) => {
    out.grpcStatus = Number(trailers['grpc-status']);
    out.grpcMessage = decodeURIComponent(String(trailers['grpc-message'] ?? ''));
  });
  const result = new Promise<RawResult>((resolve) => {
    stream.on('close', () => resolve(out));
    stream.on('error', () => undefined);
  });
  frames.forEach((frame, i) => stream.write(frame, i === frames.length - 1 && !keepOpen ? () => stream.end() : undefined));
  if (frames.length === 0 && !keepOpen) stream.end();
  return { result, write: (bytes, end = false) => (end ? stream.end(bytes) : stream.write(bytes)) };
}

describe('garbage on the gRPC stream', () => {
  let session: ClientHttp2Session;

  beforeAll(() => {
    session = connectHttp2(`http://${server.target}`);
    session.on('error', () => undefined);
  });

  afterAll(() => session?.close());

  test.each([
    ['a field with wire type 7', Buffer.from([0x0f, 0x01, 0x02, 0x03])],
    ['a varint that never ends', Buffer.alloc(12, 0xff)],
    ['text', Buffer.from('GET / HTTP/1.1\r\nthis is not protobuf\r\n\r\n')],
    ['random bytes', Buffer.from([0x12, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x01, 0xfe])],
  ])('bytes that are not a ProcessingRequest (%s): INTERNAL "Error deserializing request"', async (_name, payload) => {
    const { grpcStatus, grpcMessage, answers } = await rawCall(session, [grpcFrame(payload)]).result;
    expect(grpcStatus).toBe(grpc.status.INTERNAL);
    expect(grpcMessage).toMatch(/deserializ/i);
    expect(answers).toEqual([]);
  });

  test('a well-formed message of field numbers the server does not know: INTERNAL, not a guess', async () => {
    // Field 111, varint 1: what a newer Envoy's unknown request kind looks like to this proto subset.
    const { grpcStatus, grpcMessage } = await rawCall(session, [grpcFrame(Buffer.from([0xf8, 0x06, 0x01]))]).result;
    expect(grpcStatus).toBe(grpc.status.INTERNAL);
    expect(grpcMessage).toMatch(/without a known request kind/);
  });

  test('a length prefix larger than maxMessageBytes: RESOURCE_EXHAUSTED', async () => {
    const { grpcStatus } = await rawCall(session, [grpcFrame(Buffer.from([0x0a]), { length: 0xffff_ffff })]).result;
    expect(grpcStatus).toBe(grpc.status.RESOURCE_EXHAUSTED);
  });

  test('the compressed flag without a grpc-encoding: grpc-js reads the message as is, and it is answered', async () => {
    // The gRPC spec calls this an error; grpc-js 1.14 tolerates it. Either way nothing breaks: the message
    // is a valid ProcessingRequest, so it is answered per protocol and the call ends OK.
    const { grpcStatus, answers } = await rawCall(session, [grpcFrame(serialize(requestHeaders(imageHeaders(), true)), { compressed: 1 })]).result;
    expect(answers.map((answer) => answer.response)).toEqual(['request_headers']);
    expect(grpcStatus).toBe(grpc.status.OK);
  });

  test.each([
    ['a length prefix longer than the bytes that follow', grpcFrame(Buffer.from([0x12, 0x00]), { length: 1000 })],
    ['two bytes of a five-byte prefix', Buffer.from([0x00, 0x00])],
  ])('a truncated gRPC frame, then end of stream (%s): no message, so nothing answered; the call ends', async (_name, frame) => {
    // grpc-js drops the incomplete message at end of stream, so the server sees a call with no message and
    // ends it like any other Envoy half-close. Envoy itself never sends a partial message.
    const { grpcStatus, answers } = await rawCall(session, [frame]).result;
    expect(answers).toEqual([]);
    expect(grpcStatus).toBeDefined();
  });

  test('a request that is not gRPC at all (content-type text/plain): HTTP 415, no call', async () => {
    const stream = session.request({ ':method': 'POST', ':path': PROCESS_PATH, 'content-type': 'text/plain' });
    const status = await new Promise<number>((resolve) => stream.on('response', (headers) => resolve(Number(headers[':status']))));
    stream.close();
    expect(status).toBe(415);
  });

  test('garbage on one stream leaves another call on the same connection running', async () => {
    const good = rawCall(session, [grpcFrame(serialize(requestHeaders(imageHeaders({ contentLength: SEED.length }))))], true);
    await until(() => server.server.activeCalls() >= 1);
    const bad = await rawCall(session, [grpcFrame(Buffer.alloc(12, 0xff))]).result;
    expect(bad.grpcStatus).toBe(grpc.status.INTERNAL);
    good.write(grpcFrame(serialize(requestBody(SEED, true))), true);
    const { grpcStatus, answers } = await good.result;
    expect(grpcStatus).toBe(grpc.status.OK);
    expect(answers.map((answer) => answer.response)).toEqual(['request_headers', 'request_body']);
    expect(bodyOf(answers[1]!)).toBe('{"prompt":"a red circle"}');
  });
});

describe('garbage on the socket', () => {
  test.each([
    ['an HTTP/1.1 request', Buffer.from('POST /envoy.service.ext_proc.v3.ExternalProcessor/Process HTTP/1.1\r\nHost: x\r\n\r\n')],
    ['random bytes', Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 2654435761) >>> 24))],
    ['the HTTP/2 preface, then a frame of garbage', Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.alloc(64, 0xee)])],
  ])('%s: the server closes that connection', async (_name, bytes) => {
    const [host, port] = server.target.split(':') as [string, string];
    const closed = await new Promise<boolean>((resolve) => {
      const socket = connectTcp(Number(port), host, () => socket.write(bytes));
      // Read what the server sends (its SETTINGS and GOAWAY): an unread socket never sees the server's FIN.
      socket.resume();
      socket.on('error', () => undefined);
      socket.on('close', () => resolve(true));
      setTimeout(() => {
        socket.destroy();
        resolve(false);
      }, 3_000);
    });
    expect(closed).toBe(true);
  });
});
