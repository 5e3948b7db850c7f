// Shutdown waits for calls, not for peers: once no call is active, a stream the peer never closed (a call
// ended with an error before Envoy half-closed) must not hold the process for the whole deadline.
import { connect } from 'node:http2';
import { describe, expect, test } from 'vitest';
import { EXT_PROC_SERVICE, extProcService } from '../src/proto.js';
import { imageHeaders, requestHeaders } from './support/extproc-client.js';
import { startTestServer } from './support/harness.js';

function grpcFrame(message: Record<string, unknown>): Buffer {
  const payload = extProcService().service.Process!.requestSerialize(message);
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(payload.length, 1);
  return Buffer.concat([prefix, payload]);
}

describe('shutdown', () => {
  test.each([
    ['request_headers twice (the call ends with a gRPC error)', [requestHeaders(imageHeaders(), true), requestHeaders(imageHeaders(), true)]],
    ['a message of no known kind', [{ observability_mode: false }]],
  ])('after %s, with the peer never half-closing: returns at once, not at the deadline', async (_name, messages) => {
    const server = await startTestServer();
    const session = connect(`http://${server.target}`);
    session.on('error', () => undefined);
    const stream = session.request({ ':method': 'POST', ':path': `/${EXT_PROC_SERVICE}/Process`, 'content-type': 'application/grpc', te: 'trailers' });
    stream.on('error', () => undefined);
    stream.on('data', () => undefined);
    let answered = 0;
    stream.on('response', () => answered++);
    for (const message of messages) stream.write(grpcFrame(message));
    // The call has ended for the server (grpc-js may hold its status until the peer half-closes).
    while (answered === 0 || server.server.activeCalls() > 0) await new Promise((resolve) => setTimeout(resolve, 10));

    const started = performance.now();
    const drained = await server.server.shutdown(10_000);
    const took = performance.now() - started;
    session.destroy();
    expect(drained).toBe(true);
    expect(took).toBeLessThan(3_000);
  }, 20_000);
});
