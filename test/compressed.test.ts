// Compressed request bodies (content-encoding) end to end through the Envoy emulation.
//
// The policy, as src/call/ implements it:
// - Envoy hands the body to ext_proc as the client sent it, compressed (docs/envoy-ext-proc.md#bodies).
// - One coding we can read (gzip, x-gzip, deflate = zlib, br) on a request with `model`: the body is
//   asked for BUFFERED whatever its size (the edit needs all of it; the budget reserves its compressed
//   size), inflated up to limits.maxDecompressedBytes, edited, and sent on decompressed: the body answer
//   removes content-encoding and sets content-length to the new length (BUFFERED with request headers
//   sent is the one mode where a body answer's header changes apply, docs/envoy-ext-proc.md#content-length). Not recompressed:
//   Azure gets an identity body, and the hop from Envoy to Azure does not need the bytes saved.
// - Everything else goes on byte-for-byte, still compressed, with no body mutation: no `model`, a
//   corrupt or truncated body, one that inflates past the limit (a zip bomb: inflation stops there),
//   stacked or unknown codings (their body is not even asked for), and every mode in which the header
//   changes could not accompany the edit (static STREAMED, FULL_DUPLEX_STREAMED, BUFFERED_PARTIAL: an
//   edited body under a stale content-encoding would be corrupt).
import { readFileSync, writeFileSync } from 'node:fs';
import { brotliCompressSync, deflateRawSync, deflateSync, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import type { Outcome } from './envoy/emulator.js';
import {
  DEPLOYMENT_PATH,
  EDITS_PATH,
  binary,
  frames,
  header,
  jsonRequest,
  multipartBody,
  recommendedEnvoy,
  staticEnvoy,
  startTestServer,
  type Part,
  type TestServer,
  upstreamOf,
  serverAnswers,
} from './support/harness.js';

const KiB = 1024;
const MiB = 1024 * KiB;

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer({ limits: { maxDecompressedBytes: 1 * MiB } });
});
afterAll(async () => {
  await server.close();
});

const SEED = '{"model":"gpt-image-2-1","prompt":"a red circle","n":1,"size":"1024x1024"}';
const SEED_FIXED = '{"prompt":"a red circle","n":1,"size":"1024x1024"}';

const CODINGS = {
  gzip: (bytes: Buffer) => gzipSync(bytes),
  deflate: (bytes: Buffer) => deflateSync(bytes),
  br: (bytes: Buffer) => brotliCompressSync(bytes),
} as const;

type Request = { headers: Array<[string, string]>; body: Buffer };

/** A JSON request whose body is `text` compressed with `coding` (content-length = compressed length). */
function compressedJson(text: string, coding: string, compress: (bytes: Buffer) => Buffer = CODINGS.gzip): Request {
  return jsonRequest(DEPLOYMENT_PATH, compress(Buffer.from(text)), [['content-encoding', coding]]);
}

function compressedMultipart(parts: Part[], boundary: string): Request {
  const body = gzipSync(multipartBody(boundary, parts));
  return {
    headers: [
      [':method', 'POST'],
      [':path', EDITS_PATH],
      ['content-type', `multipart/form-data; boundary=${boundary}`],
      ['content-encoding', 'gzip'],
      ['content-length', String(body.length)],
      ['api-key', 'test-key'],
    ],
    body,
  };
}
function overrideOf(outcome: Outcome): string | undefined {
  const override = serverAnswers(outcome, 'request_headers')[0]?.mode_override as { request_body_mode?: string } | null | undefined;
  return override?.request_body_mode ?? undefined;
}

/** Azure got the edited body decompressed, with headers that say so. */
function expectDecompressed(outcome: Outcome, expected: Buffer | string): void {
  const upstream = upstreamOf(outcome);
  expect(upstream.body.equals(Buffer.from(expected))).toBe(true);
  expect(header(upstream.headers, 'content-encoding')).toBeUndefined();
  expect(header(upstream.headers, 'content-length')).toBe(String(upstream.body.length));
}

/** Azure got exactly what the client sent, still compressed, and the server mutated no body. */
function expectUntouched(outcome: Outcome, request: Request, coding: string): void {
  const upstream = upstreamOf(outcome);
  expect(upstream.body.equals(request.body)).toBe(true);
  expect(header(upstream.headers, 'content-encoding')).toBe(coding);
  for (const answer of serverAnswers(outcome, 'request_body')) {
    const mutation = (answer.request_body as { response: { body_mutation: { mutation?: string; streamed_response?: { body: Buffer } } | null } }).response.body_mutation;
    // FULL_DUPLEX_STREAMED must echo what it drained; every other mode leaves the body alone.
    if (mutation?.mutation !== 'streamed_response') expect(mutation).toBeNull();
  }
}

/** One request's outcome and the result the server reported for it (once Envoy closed the stream). */
async function withResult(run: () => Promise<Outcome>) {
  await vi.waitFor(() => expect(server.server.activeCalls()).toBe(0), { timeout: 5000, interval: 5 });
  const before = server.results.length;
  const outcome = await run();
  await vi.waitFor(() => expect(server.results.length).toBeGreaterThan(before), { timeout: 5000, interval: 5 });
  return { outcome, result: server.results[before]! };
}

const editingModes = [
  ['recommended (NONE + mode_override)', (target: string) => recommendedEnvoy(target)],
  ['static BUFFERED', (target: string) => staticEnvoy(target, 'BUFFERED')],
] as const;

describe.each(editingModes)('compressed bodies with model, %s: edited and sent decompressed', (name, makeEnvoy) => {
  test.each(Object.entries(CODINGS))('%s JSON', async (coding, compress) => {
    const envoy = makeEnvoy(server.target);
    try {
      const outcome = await envoy.request(compressedJson(SEED, coding, compress));
      expectDecompressed(outcome, SEED_FIXED);
      if (name.startsWith('recommended')) expect(overrideOf(outcome)).toBe('BUFFERED');
    } finally {
      envoy.close();
    }
  });

  test('gzip multipart with two images, in 8 KiB frames', async () => {
    const parts: Part[] = [
      { name: 'image[]', filename: 'a.png', contentType: 'image/png', data: binary(200 * KiB, 1) },
      { name: 'model', data: 'gpt-image-2-1' },
      { name: 'image[]', filename: 'b.png', contentType: 'image/png', data: binary(100 * KiB, 2) },
      { name: 'prompt', data: 'two hats' },
    ];
    const request = compressedMultipart(parts, 'gz-boundary');
    const envoy = makeEnvoy(server.target);
    try {
      const outcome = await envoy.request({ headers: request.headers, body: frames(request.body, 8 * KiB) });
      expectDecompressed(outcome, multipartBody('gz-boundary', parts.filter((part) => part.name !== 'model')));
    } finally {
      envoy.close();
    }
  });

  test.each([['x-gzip'], ['GZIP'], [' gzip ']])('content-encoding %j is gzip', async (coding) => {
    const envoy = makeEnvoy(server.target);
    try {
      expectDecompressed(await envoy.request(compressedJson(SEED, coding)), SEED_FIXED);
    } finally {
      envoy.close();
    }
  });
});

describe('how a compressed body is asked for (recommended set-up)', () => {
  test('compressed size above the stream threshold: still BUFFERED, as the edit needs all of it', async () => {
    const parts: Part[] = [
      { name: 'model', data: 'gpt-image-2-1' },
      // Random bytes do not compress: the gzip body stays above the 1 MiB threshold.
      { name: 'image', filename: 'big.png', contentType: 'image/png', data: binary(900 * KiB, 3) },
      { name: 'mask', filename: 'mask.png', contentType: 'image/png', data: binary(300 * KiB, 4) },
    ];
    const request = compressedMultipart(parts, 'big');
    expect(request.body.length).toBeGreaterThan(MiB);
    const roomy = await startTestServer({ limits: { maxDecompressedBytes: 8 * MiB } });
    const envoy = recommendedEnvoy(roomy.target);
    try {
      const outcome = await envoy.request({ headers: request.headers, body: frames(request.body, 64 * KiB) });
      expect(overrideOf(outcome)).toBe('BUFFERED');
      expectDecompressed(outcome, multipartBody('big', parts.slice(1)));
    } finally {
      envoy.close();
      await roomy.close();
    }
  });

  test('unknown length (chunked): BUFFERED, edited, and no content-length invented', async () => {
    const request = compressedJson(SEED, 'gzip');
    const envoy = recommendedEnvoy(server.target);
    try {
      const outcome = await envoy.request({ headers: request.headers.filter(([key]) => key !== 'content-length'), body: frames(request.body, 7) });
      expect(overrideOf(outcome)).toBe('BUFFERED');
      const upstream = upstreamOf(outcome);
      expect(upstream.body.toString()).toBe(SEED_FIXED);
      expect(header(upstream.headers, 'content-encoding')).toBeUndefined();
      expect(header(upstream.headers, 'content-length')).toBeUndefined();
    } finally {
      envoy.close();
    }
  });
});

describe.each(editingModes)('compressed bodies forwarded unchanged, %s', (_name, makeEnvoy) => {
  test.each(Object.entries(CODINGS))('%s JSON without model', async (coding, compress) => {
    const request = compressedJson(SEED_FIXED, coding, compress);
    const envoy = makeEnvoy(server.target);
    try {
      const { outcome, result } = await withResult(() => envoy.request(request));
      expectUntouched(outcome, request, coding);
      expect(header(upstreamOf(outcome).headers, 'content-length')).toBe(String(request.body.length));
      expect(result).toMatchObject({ kind: 'passed', reason: 'no_model' });
    } finally {
      envoy.close();
    }
  });

  const gzipSeed = gzipSync(SEED);
  test.each([
    ['corrupt gzip (valid header, garbage after it)', 'gzip', Buffer.concat([gzipSeed.subarray(0, 10), binary(200, 8)])],
    ['truncated gzip', 'gzip', gzipSeed.subarray(0, gzipSeed.length - 12)],
    ['gzip with a wrong CRC', 'gzip', Buffer.concat([gzipSeed.subarray(0, -8), Buffer.from([1, 2, 3, 4]), gzipSeed.subarray(-4)])],
    ['raw deflate without the zlib wrapper HTTP requires', 'deflate', deflateRawSync(SEED)],
    ['br that is not brotli', 'br', Buffer.from(SEED)],
  ])('%s', async (_case, coding, body) => {
    const request = jsonRequest(DEPLOYMENT_PATH, body, [['content-encoding', coding]]);
    const envoy = makeEnvoy(server.target);
    try {
      const { outcome, result } = await withResult(() => envoy.request(request));
      expectUntouched(outcome, request, coding);
      expect(result).toMatchObject({ kind: 'passed', reason: 'content_encoding' });
    } finally {
      envoy.close();
    }
  });
});

describe('zip bombs (limits.maxDecompressedBytes = 1 MiB)', () => {
  /** JSON with model that inflates to about `size` bytes: a real edit candidate, if it were inflated. */
  const bombText = (size: number) => `{"model":"gpt-image-2-1","prompt":"${'a'.repeat(size)}"}`;

  test.each(Object.entries(CODINGS))('%s: 10 MiB of JSON in ~10 KiB is forwarded unchanged', async (coding, compress) => {
    const request = compressedJson(bombText(10 * MiB), coding, compress);
    expect(request.body.length).toBeLessThan(64 * KiB);
    const envoy = recommendedEnvoy(server.target);
    try {
      const { outcome, result } = await withResult(() => envoy.request(request));
      expectUntouched(outcome, request, coding);
      expect(result).toMatchObject({ kind: 'passed', reason: 'content_encoding', detail: 'cannot decompress within limits' });
    } finally {
      envoy.close();
    }
  });

  test('gzip, 1 GiB in 1 MiB (concatenated members): stops at the limit, no large allocation', async () => {
    // gzip members may be concatenated (RFC 1952 §2.2) and decoders inflate them all: 16 members of
    // 64 MiB of 'a' between a head and a tail make one JSON body of 1 GiB.
    const member = gzipSync(Buffer.alloc(64 * MiB, 'a'));
    const body = Buffer.concat([gzipSync('{"model":"gpt-image-2-1","prompt":"'), ...Array<Buffer>(16).fill(member), gzipSync('"}')]);
    expect(body.length).toBeLessThan(MiB);
    const request = jsonRequest(DEPLOYMENT_PATH, body, [['content-encoding', 'gzip']]);
    const envoy = recommendedEnvoy(server.target);
    // Peak RSS (VmHWM) of this process, which runs the server: reset it, send, read it.
    const peakRss = () => Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) * KiB;
    try {
      await envoy.request(compressedJson(SEED, 'gzip')); // connection up
      writeFileSync('/proc/self/clear_refs', '5');
      const before = peakRss();
      const started = performance.now();
      const outcome = await envoy.request(request);
      const elapsedMs = performance.now() - started;
      expectUntouched(outcome, request, 'gzip');
      // Inflating it all takes seconds and 1 GiB at least (measured: 4-19 s); stopping at 1 MiB, milliseconds.
      expect(peakRss() - before).toBeLessThan(64 * MiB);
      expect(elapsedMs).toBeLessThan(2000);
    } finally {
      envoy.close();
    }
  });
});

describe('the edited body must fit one ext_proc message back to Envoy', () => {
  test('maxMessageBytes 2 MiB, maxDecompressedBytes 8 MiB: a body inflating to 3 MiB is forwarded unchanged, not a 500', async () => {
    const small = await startTestServer({ maxMessageBytes: 2 * MiB, limits: { maxDecompressedBytes: 8 * MiB } });
    const envoy = recommendedEnvoy(small.target);
    try {
      const large = compressedJson(`{"model":"gpt-image-2-1","prompt":"${'a'.repeat(3 * MiB)}"}`, 'gzip');
      expectUntouched(await envoy.request(large), large, 'gzip');
      // Control: one that inflates to 1 MiB is still edited.
      const fits = compressedJson(`{"model":"gpt-image-2-1","prompt":"${'a'.repeat(MiB)}"}`, 'gzip');
      expectDecompressed(await envoy.request(fits), `{"prompt":"${'a'.repeat(MiB)}"}`);
    } finally {
      envoy.close();
      await small.close();
    }
  });
});

describe('compressed bodies the server does not try to edit', () => {
  test.each([['gzip, br'], ['br, gzip'], ['zstd'], ['compress']])('content-encoding %j: body not even asked for, forwarded unchanged', async (coding) => {
    const request = jsonRequest(DEPLOYMENT_PATH, gzipSync(SEED), [['content-encoding', coding]]);
    const envoy = recommendedEnvoy(server.target);
    try {
      const { outcome, result } = await withResult(() => envoy.request(request));
      expectUntouched(outcome, request, coding);
      expect(overrideOf(outcome)).toBeUndefined();
      expect(outcome.messagesSent).toBe(1);
      expect(result).toMatchObject({ kind: 'passed', reason: 'content_encoding' });
    } finally {
      envoy.close();
    }
  });

  test.each([
    ['static STREAMED', (target: string) => staticEnvoy(target, 'STREAMED')],
    ['static FULL_DUPLEX_STREAMED', (target: string) => staticEnvoy(target, 'FULL_DUPLEX_STREAMED')],
    ['static BUFFERED_PARTIAL', (target: string) => staticEnvoy(target, 'BUFFERED_PARTIAL')],
  ])('%s: gzip with model forwarded compressed and unchanged (its headers cannot change with the edit)', async (_name, makeEnvoy) => {
    const request = compressedJson(SEED, 'gzip');
    const envoy = makeEnvoy(server.target);
    try {
      const { outcome, result } = await withResult(() => envoy.request({ headers: request.headers, body: frames(request.body, 16) }));
      expectUntouched(outcome, request, 'gzip');
      // Envoy itself drops content-length in these modes (docs/envoy-ext-proc.md#content-length); the body is the client's.
      expect(upstreamOf(outcome).contentLengthRemoved).toBe(true);
      expect(result).toMatchObject({ kind: 'passed', reason: 'needs_buffered_body' });
    } finally {
      envoy.close();
    }
  });

  test('static STREAMED with allow_mode_override: the server switches the body off (NONE) instead of reading it', async () => {
    const request = compressedJson(SEED, 'gzip');
    const envoy = staticEnvoy(server.target, 'STREAMED', { allowModeOverride: true });
    try {
      const outcome = await envoy.request({ headers: request.headers, body: frames(request.body, 16) });
      expectUntouched(outcome, request, 'gzip');
      expect(overrideOf(outcome)).toBe('NONE');
      expect(outcome.messagesSent).toBe(1);
    } finally {
      envoy.close();
    }
  });
});
