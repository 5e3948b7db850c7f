// Size limits and the global memory budget (issue 4), end to end through the Envoy emulation: what
// reaches Azure, the status a client gets, and what the server holds. Policy under test:
// - limits.maxBodyBytes: a body announced (content-length) or found (a whole BUFFERED body) larger is
//   not edited; `overLimit: forward` passes it byte-for-byte, `overLimit: reject` answers 413 in Azure's
//   error shape. An announced one is decided at request headers, so its body is never asked for.
// - limits.globalHeldBytes: whole bodies are reserved before they are asked for; without room a
//   request that can be streamed is streamed, one that needs the whole body (compressed) gets the
//   overLimit policy, and a body Envoy already buffered (static BUFFERED) gets it too. What streaming
//   editors hold back is reserved as it grows; without room editing stops (same policy).
// - maxMessageBytes: a whole body announced larger than one ext_proc message gets the same policy.
// - Reservations last while the server holds the body, not while Azure works on the request.
// - A streamed body of unknown length that grows past maxBodyBytes: editing stops there (forward: the
//   rest passes as it comes; reject: 413 while the body is still arriving).
import { gzipSync } from 'node:zlib';
import { afterAll, afterEach, beforeAll, describe, expect, test, vi } from 'vitest';
import { MemoryBudget } from '../src/budget.js';
import type { Outcome } from './envoy/emulator.js';
import {
  DEPLOYMENT_PATH,
  EDITS_PATH,
  binary,
  frames,
  header,
  jsonRequest,
  multipartRequest,
  recommendedEnvoy,
  staticEnvoy,
  startTestServer,
  type TestServer,
  upstreamOf,
} from './support/harness.js';
import { peakHeld } from './support/peak-held.js';

const KiB = 1024;
const MiB = 1024 * KiB;

const servers: TestServer[] = [];
afterAll(async () => {
  await Promise.all(servers.map((server) => server.close()));
});

async function serverWith(limits: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<TestServer> {
  // The stream threshold may not exceed maxBodyBytes (a body above it is never edited).
  const threshold = typeof limits.maxBodyBytes === 'number' ? { streamThresholdBytes: Math.min(MiB, limits.maxBodyBytes) } : {};
  const server = await startTestServer({ limits, ...threshold, ...extra });
  servers.push(server);
  return server;
}

/** A JSON generation body of about `size` bytes with `model` last, and the same body without it. */
function generation(size: number): { body: string; fixed: string } {
  const fixed = `{"prompt":"${'p'.repeat(size)}","n":1}`;
  return { body: `${fixed.slice(0, -1)},"model":"gpt-image-2-1"}`, fixed };
}
/** The request_body_mode the server asked for at request headers, or undefined for none. */
function overrideOf(outcome: Outcome): string | undefined {
  const answer = outcome.transcript.find((entry) => entry.direction === 'server->envoy' && entry.kind === 'request_headers');
  const override = (answer?.message as { mode_override?: { request_body_mode?: string } | null } | undefined)?.mode_override;
  return override?.request_body_mode ?? undefined;
}

function bodyMessagesSent(outcome: Outcome): number {
  return outcome.transcript.filter((entry) => entry.direction === 'envoy->server' && entry.kind === 'request_body').length;
}

/** The client's view of a 413 from the server: Azure's error shape, JSON, nothing sent upstream. */
function expectAzure413(outcome: Outcome): void {
  expect(outcome.kind).toBe('local_reply');
  if (outcome.kind !== 'local_reply') return;
  expect(outcome.status).toBe(413);
  expect(outcome.upstream).toBeUndefined();
  expect(header(outcome.headers, 'content-type')).toBe('application/json');
  const parsed = JSON.parse(outcome.body.toString('utf8')) as { error: Record<string, unknown> };
  expect(Object.keys(parsed)).toEqual(['error']);
  expect(Object.keys(parsed.error)).toEqual(['message', 'type', 'param', 'code']);
  expect(parsed.error).toMatchObject({ type: 'invalid_request_error', param: null, code: 'request_too_large' });
  expect(parsed.error.message).toEqual(expect.stringContaining('exceeds'));
}

/** One request's outcome and the result the server reported for it (once Envoy closed the stream). */
async function withResult(server: TestServer, request: () => Promise<Outcome>) {
  await vi.waitFor(() => expect(server.server.activeCalls()).toBe(0), { timeout: 5000, interval: 5 });
  const before = server.results.length;
  const outcome = await request();
  await vi.waitFor(() => expect(server.results.length).toBeGreaterThan(before), { timeout: 5000, interval: 5 });
  return { outcome, result: server.results[before] };
}

/** Resolves once the server holds nothing (all reservations released, no editor hold-back). */
async function heldDrainsToZero(server: TestServer): Promise<void> {
  await vi.waitFor(() => {
    expect(server.server.activeCalls()).toBe(0);
    expect(server.server.heldBytes()).toBe(0);
  }, { timeout: 5000, interval: 10 });
}

/** Tracks the largest amount the global budget ever had reserved, across every server in this file. */
let budgetPeak = 0;
const tryReserve = MemoryBudget.prototype.tryReserve;
beforeAll(() => {
  vi.spyOn(MemoryBudget.prototype, 'tryReserve').mockImplementation(function (this: MemoryBudget, bytes: number) {
    const granted = tryReserve.call(this, bytes);
    budgetPeak = Math.max(budgetPeak, this.held);
    return granted;
  });
});
afterEach(() => {
  budgetPeak = 0;
});

describe('limits.maxBodyBytes with overLimit forward (the default policy)', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await serverWith({ maxBodyBytes: 256 * KiB });
  });

  test('content-length above the limit: body never asked for, reaches Azure byte-for-byte with model', async () => {
    const { body } = generation(300 * KiB);
    const envoy = recommendedEnvoy(server.target);
    try {
      const { outcome, result } = await withResult(server, () => envoy.request(jsonRequest(DEPLOYMENT_PATH, body)));
      expect(upstreamOf(outcome).body.toString()).toBe(body);
      expect(header(upstreamOf(outcome).headers, 'content-length')).toBe(String(body.length));
      expect(overrideOf(outcome)).toBeUndefined();
      expect(bodyMessagesSent(outcome)).toBe(0);
      expect(result).toMatchObject({ kind: 'passed', reason: 'too_large' });
    } finally {
      envoy.close();
    }
  });

  test('static BUFFERED with allow_mode_override: the server switches the body off (NONE), Envoy buffers nothing', async () => {
    const { body } = generation(300 * KiB);
    const envoy = staticEnvoy(server.target, 'BUFFERED', { allowModeOverride: true });
    try {
      const outcome = await envoy.request(jsonRequest(DEPLOYMENT_PATH, body));
      expect(upstreamOf(outcome).body.toString()).toBe(body);
      expect(overrideOf(outcome)).toBe('NONE');
      expect(bodyMessagesSent(outcome)).toBe(0);
    } finally {
      envoy.close();
    }
  });

  test('a body just under the limit is still edited (the limit is not off by one)', async () => {
    const { body, fixed } = generation(200 * KiB);
    expect(body.length).toBeLessThanOrEqual(256 * KiB);
    const envoy = recommendedEnvoy(server.target);
    try {
      expect(upstreamOf(await envoy.request(jsonRequest(DEPLOYMENT_PATH, body))).body.toString()).toBe(fixed);
    } finally {
      envoy.close();
    }
  });

  test('unknown length (chunked) above the limit in static BUFFERED: found at body time, forwarded unchanged', async () => {
    const { body } = generation(300 * KiB);
    const request = jsonRequest(DEPLOYMENT_PATH, body);
    const chunked = request.headers.filter(([key]) => key !== 'content-length');
    const envoy = staticEnvoy(server.target, 'BUFFERED');
    try {
      const { outcome, result } = await withResult(server, () => envoy.request({ headers: chunked, body: frames(request.body, 16 * KiB) }));
      expect(upstreamOf(outcome).body.toString()).toBe(body);
      expect(bodyMessagesSent(outcome)).toBe(1);
      expect(result).toMatchObject({ kind: 'passed', reason: 'too_large' });
    } finally {
      envoy.close();
    }
  });
});

describe('limits.maxBodyBytes on streamed bodies of unknown length', () => {
  test('forward: a model after the limit stays, the body reaches Azure whole', async () => {
    const server = await serverWith({ maxBodyBytes: 256 * KiB });
    const filler = 'x'.repeat(300 * KiB);
    const body = `{"prompt":"${filler}","model":"gpt-image-2-1"}`;
    const request = jsonRequest(DEPLOYMENT_PATH, body);
    const envoy = staticEnvoy(server.target, 'STREAMED');
    try {
      const { outcome, result } = await withResult(server, () =>
        envoy.request({ headers: request.headers.filter(([key]) => key !== 'content-length'), body: frames(request.body, 64 * KiB) }),
      );
      expect(upstreamOf(outcome).body.toString()).toBe(body);
      expect(result).toMatchObject({ kind: 'passed', reason: 'too_large' });
    } finally {
      envoy.close();
      await server.close();
    }
  });

  test('reject: 413 in Azure error shape once the body passes the limit', async () => {
    const server = await serverWith({ maxBodyBytes: 256 * KiB, overLimit: 'reject' });
    const request = jsonRequest(DEPLOYMENT_PATH, `{"prompt":"${'x'.repeat(300 * KiB)}","model":"m"}`);
    const envoy = staticEnvoy(server.target, 'STREAMED');
    try {
      expectAzure413(await envoy.request({ headers: request.headers.filter(([key]) => key !== 'content-length'), body: frames(request.body, 64 * KiB) }));
    } finally {
      envoy.close();
      await server.close();
    }
  });
});

describe('limits.maxBodyBytes with overLimit reject', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await serverWith({ maxBodyBytes: 256 * KiB, overLimit: 'reject' });
  });

  test.each([
    ['recommended (NONE + mode_override)', (target: string) => recommendedEnvoy(target)],
    ['static BUFFERED', (target: string) => staticEnvoy(target, 'BUFFERED')],
    ['static STREAMED', (target: string) => staticEnvoy(target, 'STREAMED')],
    ['static FULL_DUPLEX_STREAMED', (target: string) => staticEnvoy(target, 'FULL_DUPLEX_STREAMED')],
  ])('content-length above the limit, %s: 413 in Azure error shape at request headers', async (_name, makeEnvoy) => {
    const { body } = generation(300 * KiB);
    const envoy = makeEnvoy(server.target);
    try {
      const { outcome, result } = await withResult(server, () => envoy.request(jsonRequest(DEPLOYMENT_PATH, body)));
      expectAzure413(outcome);
      expect(result).toMatchObject({ kind: 'rejected', reason: 'body_too_large' });
    } finally {
      envoy.close();
    }
  });

  test('unknown length (chunked) above the limit in static BUFFERED: 413 in Azure error shape at body time', async () => {
    const { body } = generation(300 * KiB);
    const request = jsonRequest(DEPLOYMENT_PATH, body);
    const envoy = staticEnvoy(server.target, 'BUFFERED');
    try {
      const outcome = await envoy.request({ headers: request.headers.filter(([key]) => key !== 'content-length'), body: frames(request.body, 16 * KiB) });
      expectAzure413(outcome);
      expect(bodyMessagesSent(outcome)).toBe(1);
    } finally {
      envoy.close();
    }
  });

  test('a request under the limit is edited as usual', async () => {
    const { body, fixed } = generation(1 * KiB);
    const envoy = recommendedEnvoy(server.target);
    try {
      expect(upstreamOf(await envoy.request(jsonRequest(DEPLOYMENT_PATH, body))).body.toString()).toBe(fixed);
    } finally {
      envoy.close();
    }
  });
});

describe("Envoy's own buffer limit (per_connection_buffer_limit_bytes), not the server's", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await serverWith({}, { streamThresholdBytes: 2 * MiB });
  });

  test("static BUFFERED body above Envoy's buffer limit: Envoy's plain-text 413, the server never sees the body", async () => {
    const { body } = generation(300 * KiB);
    const envoy = staticEnvoy(server.target, 'BUFFERED', { bufferLimitBytes: 256 * KiB });
    try {
      const outcome = await envoy.request({ ...jsonRequest(DEPLOYMENT_PATH, body), body: frames(Buffer.from(body), 16 * KiB) });
      expect(outcome.kind).toBe('local_reply');
      if (outcome.kind !== 'local_reply') return;
      expect(outcome.status).toBe(413);
      expect(outcome.details).toBe('request_payload_too_large');
      expect(outcome.body.toString()).toBe('Payload Too Large');
      expect(bodyMessagesSent(outcome)).toBe(0);
    } finally {
      envoy.close();
    }
  });

  test("streamThresholdBytes above Envoy's buffer limit: bodies in between are asked BUFFERED and get Envoy's 413 (keep the threshold at or below the limit)", async () => {
    const { body } = generation(1 * MiB);
    const envoy = recommendedEnvoy(server.target, { bufferLimitBytes: 1 * MiB });
    try {
      const outcome = await envoy.request({ ...jsonRequest(DEPLOYMENT_PATH, body), body: frames(Buffer.from(body), 64 * KiB) });
      expect(overrideOf(outcome)).toBe('BUFFERED');
      expect(outcome.kind === 'local_reply' && outcome.status).toBe(413);
    } finally {
      envoy.close();
    }
  });
});

describe('maxMessageBytes: a whole body must fit one ext_proc message', () => {
  // Static BUFFERED sends the whole body in one message; grpc-js refuses one above maxMessageBytes and
  // the call fails (Envoy: 500). A body announced larger gets the overLimit policy at request headers.
  const { body } = generation(3 * MiB);

  test('static BUFFERED, content-length above it, overLimit reject: 413 in Azure error shape at request headers, not a 500', async () => {
    const server = await serverWith({ overLimit: 'reject' }, { maxMessageBytes: 2 * MiB });
    const envoy = staticEnvoy(server.target, 'BUFFERED');
    try {
      const outcome = await envoy.request({ ...jsonRequest(DEPLOYMENT_PATH, body), body: frames(Buffer.from(body), 64 * KiB) });
      expectAzure413(outcome);
      expect(bodyMessagesSent(outcome)).toBe(0);
    } finally {
      envoy.close();
    }
  });

  test('static BUFFERED with allow_mode_override, content-length above it, overLimit forward: switched to NONE, forwarded unchanged', async () => {
    const server = await serverWith({}, { maxMessageBytes: 2 * MiB });
    const envoy = staticEnvoy(server.target, 'BUFFERED', { allowModeOverride: true });
    try {
      const outcome = await envoy.request({ ...jsonRequest(DEPLOYMENT_PATH, body), body: frames(Buffer.from(body), 64 * KiB) });
      expect(overrideOf(outcome)).toBe('NONE');
      expect(upstreamOf(outcome).body.toString()).toBe(body);
    } finally {
      envoy.close();
    }
  });

  test("static BUFFERED, unknown length above it: the call fails (500), so keep Envoy's buffer limit at or below maxMessageBytes", async () => {
    const server = await serverWith({}, { maxMessageBytes: 2 * MiB });
    const request = jsonRequest(DEPLOYMENT_PATH, body);
    const envoy = staticEnvoy(server.target, 'BUFFERED');
    try {
      const outcome = await envoy.request({ headers: request.headers.filter(([key]) => key !== 'content-length'), body: frames(request.body, 64 * KiB) });
      expect(outcome.kind === 'local_reply' && [outcome.status, outcome.details]).toEqual([500, expect.stringContaining('Received_message_larger_than_max')]);
    } finally {
      envoy.close();
    }
  });
});

describe('limits.globalHeldBytes', () => {
  const gzipJson = (text: string) => {
    const compressed = gzipSync(text);
    const request = jsonRequest(DEPLOYMENT_PATH, compressed, [['content-encoding', 'gzip']]);
    return { ...request, compressed };
  };

  test('no room for a BUFFERED-size body: it is streamed instead (content-length removed) and still edited', async () => {
    const server = await serverWith({ globalHeldBytes: 64 * KiB });
    const { body, fixed } = generation(100 * KiB);
    const envoy = recommendedEnvoy(server.target);
    try {
      const outcome = await envoy.request({ ...jsonRequest(DEPLOYMENT_PATH, body), body: frames(Buffer.from(body), 16 * KiB) });
      expect(overrideOf(outcome)).toBe('STREAMED');
      expect(upstreamOf(outcome).contentLengthRemoved).toBe(true);
      expect(upstreamOf(outcome).body.toString()).toBe(fixed);
      expect(budgetPeak).toBeLessThanOrEqual(64 * KiB);
      await heldDrainsToZero(server);
    } finally {
      envoy.close();
    }
  });

  test('no room for a body that must be whole (gzip), overLimit forward: forwarded compressed and unchanged', async () => {
    const server = await serverWith({ globalHeldBytes: 64 * KiB });
    // Random bytes barely compress: 120 KiB of them keep the gzip body above the 64 KiB of room.
    const request = gzipJson(`{"model":"m","noise":"${binary(120 * KiB, 5).toString('base64')}"}`);
    expect(request.compressed.length).toBeGreaterThan(64 * KiB);
    const envoy = recommendedEnvoy(server.target);
    try {
      const { outcome, result } = await withResult(server, () => envoy.request(request));
      expect(upstreamOf(outcome).body.equals(request.compressed)).toBe(true);
      expect(header(upstreamOf(outcome).headers, 'content-encoding')).toBe('gzip');
      expect(overrideOf(outcome)).toBeUndefined();
      expect(result).toMatchObject({ kind: 'passed', reason: 'too_large' });
    } finally {
      envoy.close();
    }
  });

  test('no room for a body that must be whole (gzip), overLimit reject: 413 in Azure error shape', async () => {
    const server = await serverWith({ globalHeldBytes: 64 * KiB, overLimit: 'reject' });
    const envoy = recommendedEnvoy(server.target);
    try {
      expectAzure413(await envoy.request(gzipJson(`{"model":"m","noise":"${binary(120 * KiB, 6).toString('base64')}"}`)));
    } finally {
      envoy.close();
    }
  });

  test.each(['forward', 'reject'] as const)('static BUFFERED, Envoy already buffered the body and there is no room, overLimit %s', async (overLimit) => {
    const server = await serverWith({ globalHeldBytes: 64 * KiB, overLimit });
    const { body } = generation(100 * KiB);
    const envoy = staticEnvoy(server.target, 'BUFFERED');
    try {
      const outcome = await envoy.request(jsonRequest(DEPLOYMENT_PATH, body));
      if (overLimit === 'reject') expectAzure413(outcome);
      else expect(upstreamOf(outcome).body.toString()).toBe(body);
      expect(budgetPeak).toBeLessThanOrEqual(64 * KiB);
      await heldDrainsToZero(server);
    } finally {
      envoy.close();
    }
  });

  test('a burst of 40 concurrent BUFFERED-size uploads against room for 3: some buffered, the rest streamed, all edited, budget never exceeded', async () => {
    const server = await serverWith({ globalHeldBytes: 1 * MiB });
    const image = binary(300 * KiB, 11);
    const parts = [
      { name: 'image', filename: 'a.png', contentType: 'image/png', data: image },
      { name: 'model', data: 'gpt-image-2-1' },
      { name: 'prompt', data: 'a hat' },
    ];
    const request = multipartRequest(EDITS_PATH, 'burst', parts);
    const expected = multipartRequest(EDITS_PATH, 'burst', [parts[0]!, parts[2]!]).body;
    const envoy = recommendedEnvoy(server.target, { messageTimeoutMs: 15_000 });
    try {
      const outcomes = await Promise.all(Array.from({ length: 40 }, () => envoy.request({ headers: request.headers, body: frames(request.body, 32 * KiB) })));
      expect(outcomes.filter((outcome) => upstreamOf(outcome).body.equals(expected)).length).toBe(40);
      const modes = outcomes.map(overrideOf);
      expect(modes.filter((mode) => mode === 'BUFFERED').length).toBeGreaterThanOrEqual(1);
      expect(modes.filter((mode) => mode === 'STREAMED').length).toBeGreaterThanOrEqual(1);
      expect(modes.every((mode) => mode === 'BUFFERED' || mode === 'STREAMED')).toBe(true);
      expect(budgetPeak).toBeGreaterThan(0);
      expect(budgetPeak).toBeLessThanOrEqual(1 * MiB);
      await heldDrainsToZero(server);
    } finally {
      envoy.close();
    }
  });
});

describe('limits.globalHeldBytes covers what streaming editors hold back', () => {
  // A streamed body is held back only while it may belong to `model`: a part header block, a JSON key,
  // a matched member. A huge `model` (up to the editor's 1 MiB cap) is held whole, so many such uploads
  // at once would hold that much each: the hold counts against the same budget as buffered bodies.
  const upload = () => {
    const parts = [
      { name: 'model', data: 'm'.repeat(200 * KiB) },
      { name: 'image', filename: 'a.png', contentType: 'image/png', data: binary(3 * MiB, 12) },
    ];
    return multipartRequest(EDITS_PATH, 'hold', parts);
  };


  test('no room to hold a 200 KiB model part (64 KiB of room), overLimit forward: held bytes stay within the budget, body forwarded unchanged', async () => {
    const server = await serverWith({ globalHeldBytes: 64 * KiB });
    const request = upload();
    const envoy = recommendedEnvoy(server.target);
    try {
      const { value, peak } = await peakHeld(server, () =>
        withResult(server, () => envoy.request({ headers: request.headers, body: frames(request.body, 16 * KiB) })),
      );
      expect(overrideOf(value.outcome)).toBe('STREAMED');
      expect(upstreamOf(value.outcome).body.equals(request.body)).toBe(true);
      expect(value.result).toMatchObject({ kind: 'passed', reason: 'too_large' });
      expect(peak).toBeLessThanOrEqual(64 * KiB);
      await heldDrainsToZero(server);
    } finally {
      envoy.close();
    }
  });

  test('the same with overLimit reject: 413 in Azure error shape', async () => {
    const server = await serverWith({ globalHeldBytes: 64 * KiB, overLimit: 'reject' });
    const request = upload();
    const envoy = recommendedEnvoy(server.target);
    try {
      const { value: outcome, peak } = await peakHeld(server, () => envoy.request({ headers: request.headers, body: frames(request.body, 16 * KiB) }));
      expectAzure413(outcome);
      expect(peak).toBeLessThanOrEqual(64 * KiB);
      await heldDrainsToZero(server);
    } finally {
      envoy.close();
    }
  });

  test('with room, the same upload is edited and its hold is reserved, then released', async () => {
    const server = await serverWith({ globalHeldBytes: 1 * MiB });
    const request = upload();
    const envoy = recommendedEnvoy(server.target);
    try {
      const outcome = await envoy.request({ headers: request.headers, body: frames(request.body, 16 * KiB) });
      expect(upstreamOf(outcome).body.equals(multipartRequest(EDITS_PATH, 'hold', [{ name: 'image', filename: 'a.png', contentType: 'image/png', data: binary(3 * MiB, 12) }]).body)).toBe(true);
      // Reserved as it grows, chunk by chunk: most of the 200 KiB part before its end drops it.
      expect(budgetPeak).toBeGreaterThan(150 * KiB);
      await heldDrainsToZero(server);
    } finally {
      envoy.close();
    }
  });
});

describe('budget release', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await serverWith({});
  });

  test.each([
    ['recommended, Envoy 1.40 (stream open until the response headers)', (target: string) => recommendedEnvoy(target)],
    ['recommended, Envoy 1.34 (stream open until the request ends)', (target: string) => recommendedEnvoy(target, { envoyVersion: '1.34' })],
    ['static BUFFERED', (target: string) => staticEnvoy(target, 'BUFFERED')],
  ])('%s: a buffered body is released once answered, not when Azure answers', async (_name, makeEnvoy) => {
    const { body, fixed } = generation(500 * KiB);
    const envoy = makeEnvoy(server.target);
    let heldWhileAzureWorks = -1;
    try {
      const outcome = await envoy.request({
        ...jsonRequest(DEPLOYMENT_PATH, body),
        // Azure takes seconds to generate an image; the ext_proc call of a BUFFERED request stays open meanwhile.
        response: async () => {
          await new Promise((resolve) => setTimeout(resolve, 50));
          heldWhileAzureWorks = server.server.heldBytes();
          return { headers: [[':status', '200'], ['content-type', 'application/json']], body: '{"created":1,"data":[]}' };
        },
      });
      expect(upstreamOf(outcome).body.toString()).toBe(fixed);
      expect(budgetPeak).toBeGreaterThanOrEqual(body.length);
      expect(heldWhileAzureWorks).toBe(0);
    } finally {
      envoy.close();
    }
  });

  test('clients aborting right after the request headers leave nothing held', async () => {
    // Whether a reset overtakes the headers message it follows is up to grpc-js; either way nothing stays.
    const { body } = generation(200 * KiB);
    const envoy = recommendedEnvoy(server.target);
    try {
      const outcomes = await Promise.all(Array.from({ length: 20 }, () => envoy.request({ ...jsonRequest(DEPLOYMENT_PATH, body), abortAfter: 'headers' })));
      expect(outcomes.every((outcome) => outcome.kind === 'aborted')).toBe(true);
      await heldDrainsToZero(server);
    } finally {
      envoy.close();
    }
  });

  test('clients aborting mid-body leave nothing held (unknown length: streamed, the verification window reserves)', async () => {
    const request = multipartRequest(EDITS_PATH, 'abort', [
      { name: 'image', filename: 'a.png', contentType: 'image/png', data: binary(750 * KiB, 4) },
      { name: 'model', data: 'gpt-image-2-1' },
    ]);
    const headers = request.headers.filter(([key]) => key !== 'content-length');
    const envoy = recommendedEnvoy(server.target, { messageTimeoutMs: 15_000 });
    try {
      await envoy.request(jsonRequest(DEPLOYMENT_PATH, generation(8).body)); // connection up
      // Envoy hands all 3,000 frames over at once; the server takes well over 50 ms to work through
      // them, so the reset lands mid-body, after the window has reserved part of it.
      const outcomes = await Promise.all(Array.from({ length: 3 }, () => envoy.request({ headers, body: frames(request.body, 256), abortAfter: 50 })));
      expect(outcomes.map((outcome) => outcome.kind)).toEqual(['aborted', 'aborted', 'aborted']);
      expect(budgetPeak).toBeGreaterThan(0);
      await heldDrainsToZero(server);
    } finally {
      envoy.close();
    }
  });
});
