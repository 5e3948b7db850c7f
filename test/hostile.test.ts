// Hostile input against the running server, through the Envoy emulation (issue 9): deep nesting, 100,000
// `model` keys, 100,000 multipart parts, a multipart body that never closes, prototype names as model
// and deployment, bodies ended by trailers in every body mode, 1-byte chunks, megabytes of whitespace
// around a removed member, odd content-lengths and control bytes that would end up in a header.
//
// For every case: the server neither crashes nor hangs (it runs in a process of its own, see
// test/hostile/server-child.ts, and answers a normal request afterwards); what it holds (heldBytes) and
// what it really costs (live heap after a full GC, peak RSS) stay bounded; the body that reaches the
// upstream is either the client's bytes exactly or exactly the expected edit (the `model` members or
// parts removed, every other byte kept), never anything else; and the result the server reports for the
// call (the source of its log line and metrics) says what was actually done.
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import type { EnvoyEmulator, Outcome, SimulatedRequest } from './envoy/emulator.js';
import {
  DEPLOYMENT_PATH,
  EDITS_PATH,
  frames,
  header,
  jsonRequest,
  multipartBody,
  multipartRequest,
  recommendedEnvoy,
  staticEnvoy,
  type Part,
} from './support/harness.js';
import type { FinishedCall, HostileSample } from './hostile/server-child.js';
import { ServerProcess } from './hostile/server.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const API_VERSION = '2025-04-01-preview';
const STREAM_THRESHOLD = 1 * MiB; // the default streamThresholdBytes
const HOLD_CAP = 1 * MiB; // what a streaming editor may hold back for one member or part (src/body)

let server: ServerProcess;
beforeAll(async () => {
  server = await ServerProcess.start();
});
afterAll(async () => {
  await server?.stop();
});

/** After every case the server process is alive (each run() also waits until it holds nothing). */
afterEach(() => {
  expect(server.exited).toBeUndefined();
});

/** After each group of cases: the server still edits a normal request and holds nothing afterwards. */
async function stillServing(): Promise<void> {
  expect(server.exited).toBeUndefined();
  await server.ask({ cmd: 'config', overrides: {} });
  const envoy = recommendedEnvoy(server.target, { messageTimeoutMs: 10_000 });
  try {
    const outcome = await envoy.request(jsonRequest(DEPLOYMENT_PATH, '{"model":"gpt-image-2-1","prompt":"p"}'));
    expect(outcome.kind === 'upstream' && outcome.upstream.body.toString()).toBe('{"prompt":"p"}');
  } finally {
    envoy.close();
  }
  await drained();
}

async function drained(): Promise<HostileSample> {
  const deadline = performance.now() + 5000;
  for (;;) {
    const sample = await server.ask({ cmd: 'sample' });
    if ((sample.active === 0 && sample.heldNow === 0) || performance.now() > deadline) {
      expect({ active: sample.active, heldNow: sample.heldNow }).toEqual({ active: 0, heldNow: 0 });
      return sample;
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

// ---- running one request ---------------------------------------------------------------------------

type EnvoySetup = 'override' | 'BUFFERED' | 'STREAMED' | 'FULL_DUPLEX_STREAMED';

/** One emulated Envoy per set-up, reused across cases (a connection each, as Envoy keeps one). */
const envoys = new Map<EnvoySetup, EnvoyEmulator>();
afterAll(() => envoys.forEach((envoy) => envoy.close()));

function envoyFor(setup: EnvoySetup): EnvoyEmulator {
  let envoy = envoys.get(setup);
  if (!envoy) {
    // A loaded 2-core machine runs this file beside others: timeouts a real Envoy would not need.
    const options = { messageTimeoutMs: 15_000, stallTimeoutMs: 30_000 };
    envoy = setup === 'override' ? recommendedEnvoy(server.target, options) : staticEnvoy(server.target, setup, options);
    envoys.set(setup, envoy);
  }
  return envoy;
}

interface Run {
  outcome: Outcome;
  call: FinishedCall;
  sample: HostileSample;
  /** Live memory and held bytes while the upstream worked on the request (the call still open). */
  whileUpstream?: { live: number; held: number };
  /** The request body's size. */
  bodyLength: number;
}

/**
 * One request through the emulated Envoy of its set-up, with `config` as the server's configuration and
 * the server's measurements for that request alone (HOSTILE_VERBOSE=1 prints them).
 */
async function run(setup: EnvoySetup, request: SimulatedRequest, config: Record<string, unknown> = {}): Promise<Run> {
  const configured = await server.ask({ cmd: 'config', overrides: config });
  if (configured.error) throw new Error(`configuration refused: ${configured.error}`);
  await server.ask({ cmd: 'reset' });
  let whileUpstream: Run['whileUpstream'];
  // Azure takes seconds to minutes to answer; Envoy >= 1.37 keeps the ext_proc call open meanwhile.
  const response = async () => {
    const now = await server.ask({ cmd: 'live' });
    whileUpstream = { live: now.liveNow!, held: now.heldNow };
    return { headers: [[':status', '200'], ['content-type', 'application/json']] as Array<[string, string]>, body: '{"created":1,"data":[]}' };
  };
  const outcome = await envoyFor(setup).request({ response, ...request });
  const sample = await drained();
  if (process.env.HOSTILE_VERBOSE) {
    const { peakHeld, peakLive, heldAtPeakLive, hwmGrowth } = sample;
    console.info(`${expect.getState().currentTestName}: ${JSON.stringify({ peakHeld, peakLive, heldAtPeakLive, hwmGrowth, whileUpstream, result: sample.calls[0]?.result.kind })}`);
  }
  expect(sample.calls.length).toBe(1);
  const chunks = request.body === undefined ? [] : Array.isArray(request.body) ? request.body : [request.body];
  const bodyLength = chunks.reduce((sum, chunk) => sum + Buffer.byteLength(chunk), 0);
  return { outcome, call: sample.calls[0]!, sample, whileUpstream, bodyLength };
}

function withoutContentLength(headers: Array<[string, string]>): Array<[string, string]> {
  return headers.filter(([key]) => key !== 'content-length');
}

function overrideOf(outcome: Outcome): string | undefined {
  const answer = outcome.transcript.find((entry) => entry.direction === 'server->envoy' && entry.kind === 'request_headers');
  const override = (answer?.message as { mode_override?: { request_body_mode?: string } | null } | undefined)?.mode_override;
  return override?.request_body_mode ?? undefined;
}

// ---- what must be true of every call -----------------------------------------------------------------

/** Where two buffers first differ, for a readable failure. */
function firstDifference(a: Buffer, b: Buffer): string {
  let at = 0;
  while (at < a.length && at < b.length && a[at] === b[at]) at++;
  const show = (x: Buffer) => JSON.stringify(x.subarray(Math.max(0, at - 16), at + 24).toString('latin1'));
  return `length ${a.length} vs ${b.length}, first difference at ${at}: ${show(a)} vs ${show(b)}`;
}

interface Expectation {
  /** The body the client sent. */
  original: Buffer;
  /** The exact body with the `model` members or parts removed (every other byte kept). */
  edited: Buffer;
  /** Only this one of the two is correct here. */
  only?: 'original' | 'edited';
  trailers?: Array<[string, string]>;
}

/**
 * Every byte that reached the upstream is accounted for: the body is the original or the exact edit, the
 * trailers are the client's, a content-length (if any) matches, and the reported result says which.
 */
function expectAccounted({ outcome, call, whileUpstream }: Run, expectation: Expectation): 'original' | 'edited' {
  if (outcome.kind !== 'upstream') throw new Error(`expected the request to reach the upstream, got ${outcome.kind}: ${JSON.stringify({ ...outcome, transcript: undefined }).slice(0, 300)}`);
  const { body, headers, trailers } = outcome.upstream;
  const which = body.equals(expectation.original) ? 'original' : body.equals(expectation.edited) ? 'edited' : undefined;
  if (!which) {
    throw new Error(
      `the upstream body is neither the original nor the expected edit: vs original ${firstDifference(body, expectation.original)}; ` +
        `vs edit ${firstDifference(body, expectation.edited)}; reported ${JSON.stringify(call.result).slice(0, 300)}`,
    );
  }
  if (expectation.only) expect(which, `reported ${JSON.stringify(call.result).slice(0, 300)}`).toBe(expectation.only);
  // The request is upstream: the call holds nothing any more (Azure may take minutes to answer).
  expect(whileUpstream?.held, 'bytes still held while the upstream works').toBe(0);
  // An edited body's content-length is the server's to set (or remove); the original keeps the client's.
  const length = header(headers, 'content-length');
  if (which === 'edited' && length !== undefined) expect(Number(length)).toBe(body.length);
  expect(trailers ?? []).toEqual(expectation.trailers ?? []);
  const result = call.result as { kind: string; report?: { changes: string[]; bytesIn: number; bytesOut: number } };
  if (which === 'edited') {
    expect(result.kind, JSON.stringify(result).slice(0, 300)).toBe('rewritten');
    expect(result.report!.changes).toContain('model');
    expect(result.report!.bytesOut).toBe(expectation.edited.length);
  } else if (result.kind === 'rewritten') {
    // A header-only rewrite (path, credentials) may leave the body as sent; a body edit may not.
    expect(result.report!.changes, JSON.stringify(result).slice(0, 300)).not.toContain('model');
  } else {
    expect(result.kind).toBe('passed');
  }
  return which;
}

interface Bounds {
  /** Largest heldBytes() allowed. */
  held: number;
  /**
   * Live memory (heap + buffers after GC) may exceed twice what is held by this much. Default: three
   * times the body and 8 MiB: a whole body is in memory as the request, the edit and the encoded answer
   * at once (measured: 16 MB for 100,000 parts in 5.6 MB), and on a loaded machine gRPC can have most of
   * a streamed body queued in each direction.
   */
  liveSlack?: number;
  /** Peak RSS growth allowed. */
  rss: number;
}

/**
 * What the server holds, what its live memory costs beyond that, and its peak RSS, stay bounded; once
 * the request went upstream, the call (still open while Azure works) keeps no more than gRPC does.
 */
function expectBounded({ sample, whileUpstream, bodyLength }: Run, bounds: Bounds): void {
  const seen = `peakHeld ${sample.peakHeld}, live +${sample.peakLive} at held ${sample.heldAtPeakLive}, RSS +${sample.hwmGrowth}, while upstream ${JSON.stringify(whileUpstream)}`;
  expect(sample.peakHeld, seen).toBeLessThanOrEqual(bounds.held);
  expect(sample.peakLive, seen).toBeLessThanOrEqual(2 * sample.heldAtPeakLive + (bounds.liveSlack ?? 3 * bodyLength + 8 * MiB));
  expect(sample.hwmGrowth, seen).toBeLessThanOrEqual(bounds.rss);
  if (whileUpstream) {
    // Measured: until the call ends, gRPC's side of it keeps one to two times the body's bytes (a no-op
    // grpc-js server keeps one; none of it is reachable from the server's objects in a heap snapshot),
    // and a few MiB more on a loaded machine. What the call itself would keep (a parser stack, an entry
    // per removed member) comes on top.
    expect(whileUpstream.live, seen).toBeLessThanOrEqual(2 * bodyLength + 8 * MiB);
  }
}

/** A JSON object from members, and the same object with the members marked `remove` taken out. */
function jsonObject(lead: string, members: Array<{ sep: string; text: string; remove?: boolean }>, tail = '}'): Expectation {
  // Output layout of the editor (src/body/json.ts): "{" + the whitespace before the first member, the
  // kept members each but the first with the separator that preceded it, then the input from the end
  // of the last member on.
  const original = `{${lead}${members.map((m, i) => (i === 0 ? '' : m.sep) + m.text).join('')}${tail}`;
  const kept = members.filter((m) => !m.remove);
  const edited = `{${lead}${kept.map((m, i) => (i === 0 ? '' : m.sep) + m.text).join('')}${tail}`;
  return { original: Buffer.from(original), edited: Buffer.from(edited) };
}

/** A JSON generation request without content-length (chunked), in DATA frames of `frameSize`. */
function chunked(expectation: Expectation, frameSize: number): SimulatedRequest {
  return { headers: withoutContentLength(jsonRequest(DEPLOYMENT_PATH, expectation.original).headers), body: frames(expectation.original, frameSize) };
}

/** The same with its content-length. */
function announced(expectation: Expectation, frameSize: number): SimulatedRequest {
  return { headers: jsonRequest(DEPLOYMENT_PATH, expectation.original).headers, body: frames(expectation.original, frameSize) };
}

/** Frames for a body in a given set-up: one big DATA frame per MiB where Envoy buffers, 64 KiB otherwise. */
function frameSizeFor(setup: EnvoySetup): number {
  return setup === 'BUFFERED' ? 1 * MiB : 64 * KiB;
}

const ALL_SETUPS: EnvoySetup[] = ['override', 'BUFFERED', 'STREAMED', 'FULL_DUPLEX_STREAMED'];

/**
 * The most a streamed body may hold: while it is no larger than the stream threshold, the verification
 * window (what came in and what will go out); past it, one member or part up to the hold cap and the
 * chunk being read.
 */
function streamedHeldBound(bodyLength: number, frameSize = 64 * KiB): number {
  return 2 * Math.min(bodyLength, STREAM_THRESHOLD) + HOLD_CAP + frameSize;
}

// ---- the cases -----------------------------------------------------------------------------------------

describe('deep nesting: 16 MiB of "[" inside a member', () => {
  afterAll(() => stillServing());
  // Parser state is bounded: past a sane depth the body is forwarded unchanged (or, once an edit was
  // already released in a streamed body, the edit completes), never an unbounded heap.
  const depth = 16 * MiB;
  const unclosed: Expectation = (() => {
    const head = Buffer.from('{"model":"gpt-image-2-1","prompt":');
    const original = Buffer.concat([head, Buffer.alloc(depth, '['), Buffer.from('}')]);
    const edited = Buffer.concat([Buffer.from('{"prompt":'), Buffer.alloc(depth, '['), Buffer.from('}')]);
    return { original, edited };
  })();

  test.each(['override', 'BUFFERED'] as const)('%s, model first: forwarded as sent or with model removed, memory bounded', async (setup) => {
    const result = await run(setup, announced(unclosed, setup === 'BUFFERED' ? 4 * MiB : 256 * KiB));
    expectAccounted(result, unclosed);
    // A whole body is held once (BUFFERED) and goes out once more as the answer; a streamed one is not
    // held beyond the editor's hold-back.
    const whole = setup === 'BUFFERED';
    const length = unclosed.original.length;
    // Once model is removed the edit must be finished, so the nesting stack (one bit per level, counted)
    // may grow with the body: at most a quarter of it with the stack's doubling.
    expectBounded(result, { held: whole ? length : streamedHeldBound(length, 256 * KiB) + length / 4, rss: whole ? 96 * MiB : 48 * MiB });
  });

  test.each(['override', 'FULL_DUPLEX_STREAMED'] as const)('%s, model after 4 MiB of "[" and 4 MiB of "]": the whole body as sent or exactly without model', async (setup) => {
    const nest = 4 * MiB;
    const inner = Buffer.concat([Buffer.alloc(nest, '['), Buffer.alloc(nest, ']')]);
    const original = Buffer.concat([Buffer.from('{"prompt":'), inner, Buffer.from(',"model":"gpt-image-2-1","n":1}')]);
    const edited = Buffer.concat([Buffer.from('{"prompt":'), inner, Buffer.from(',"n":1}')]);
    const result = await run(setup, announced({ original, edited }, 256 * KiB));
    expectAccounted(result, { original, edited });
    expectBounded(result, { held: streamedHeldBound(original.length, 256 * KiB), rss: 48 * MiB });
  });
});

describe('100,000 model keys', () => {
  afterAll(() => stillServing());
  const count = 100_000;
  const keys = Array.from({ length: count }, (_, i) => ({ sep: ',', text: `"model":"m${i % 10}"`, remove: true }));
  const first = jsonObject('', [...keys, { sep: ',', text: '"prompt":"a red circle"' }]);
  const last = jsonObject('', [{ sep: '', text: '"prompt":"a red circle"' }, ...keys]);

  test.each([
    ['override, content-length (streamed)', 'override', first, 'announced'],
    ['static BUFFERED', 'BUFFERED', first, 'announced'],
    ['static FULL_DUPLEX_STREAMED, chunked, keys after the prompt', 'FULL_DUPLEX_STREAMED', last, 'chunked'],
  ] as const)('%s: every top-level model removed, nothing else', async (_name, setup, body, framing) => {
    const frameSize = frameSizeFor(setup);
    const result = await run(setup, framing === 'announced' ? announced(body, frameSize) : chunked(body, frameSize));
    expectAccounted(result, { ...body, only: 'edited' });
    // The log line and the access-log metadata name each change once, not once per removed member.
    expect((result.call.result as { report: { changes: string[] } }).report.changes).toEqual(['model']);
    const length = body.original.length;
    const whole = setup === 'BUFFERED';
    expectBounded(result, { held: whole ? length : streamedHeldBound(length, frameSize), rss: 64 * MiB });
  });
});

describe('100,000 multipart parts', () => {
  afterAll(() => stillServing());
  const boundary = 'hostile-parts-7MA4YWxk';
  const parts: Part[] = Array.from({ length: 100_000 }, (_, i) => (i % 10 === 3 ? { name: 'model', data: 'gpt-image-2-1' } : { name: `field${i}`, data: 'v' }));
  const original = multipartBody(boundary, parts);
  const edited = multipartBody(
    boundary,
    parts.filter((part) => part.name !== 'model'),
  );

  test.each(['override', 'BUFFERED'] as const)('%s: every model part removed, every other byte kept', async (setup) => {
    const request = multipartRequest(EDITS_PATH, boundary, parts);
    const result = await run(setup, { headers: request.headers, body: frames(original, frameSizeFor(setup)) });
    expectAccounted(result, { original, edited, only: 'edited' });
    const whole = setup === 'BUFFERED';
    expectBounded(result, { held: whole ? original.length : streamedHeldBound(original.length), rss: 96 * MiB });
  });
});

describe('a multipart body that never closes', () => {
  afterAll(() => stillServing());
  const boundary = 'hostile-open-7MA4YWxk';
  const image = (size: number) => Buffer.alloc(size, 0x89);
  const headersFor = (body: Buffer, announce: boolean) => {
    const request = multipartRequest(EDITS_PATH, boundary, []);
    const headers = request.headers.map(([key, value]): [string, string] => (key === 'content-length' ? [key, String(body.length)] : [key, value]));
    return announce ? headers : withoutContentLength(headers);
  };

  test.each([
    ['override, small (buffered)', 'override', 64 * KiB, true, 'original'],
    ['override, 3 MiB (streamed)', 'override', 3 * MiB, true, undefined],
    ['override, chunked', 'override', 600 * KiB, false, 'original'],
    ['static STREAMED', 'STREAMED', 3 * MiB, false, undefined],
    ['static FULL_DUPLEX_STREAMED', 'FULL_DUPLEX_STREAMED', 3 * MiB, false, undefined],
  ] as const)('no close delimiter after the last part, %s', async (_name, setup, size, announce, only) => {
    const parts: Part[] = [
      { name: 'model', data: 'gpt-image-2-1' },
      { name: 'image', filename: 'a.png', contentType: 'image/png', data: image(size) },
    ];
    // Cut the close delimiter ("--boundary--\r\n") off.
    const cut = Buffer.byteLength(`--${boundary}--\r\n`);
    const original = multipartBody(boundary, parts).subarray(0, -cut);
    const edited = multipartBody(boundary, parts.slice(1)).subarray(0, -cut);
    const result = await run(setup, { headers: headersFor(original, announce), body: frames(original, 64 * KiB) });
    expectAccounted(result, { original, edited, ...(only ? { only } : {}) });
    expectBounded(result, { held: streamedHeldBound(original.length), rss: 48 * MiB });
  });

  test.each(['override', 'STREAMED', 'FULL_DUPLEX_STREAMED'] as const)('a model part whose data never ends (3 MiB, no delimiter), %s: forwarded as sent, hold-back capped', async (setup) => {
    const original = Buffer.concat([Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n`), Buffer.alloc(3 * MiB, 'm')]);
    const result = await run(setup, { headers: headersFor(original, true), body: frames(original, 64 * KiB) });
    expectAccounted(result, { original, edited: Buffer.alloc(0), only: 'original' });
    expectBounded(result, { held: streamedHeldBound(original.length), rss: 48 * MiB });
  });
});

describe('prototype names as model and deployment behave like any other name', () => {
  afterAll(() => stillServing());
  const NAMES = ['toString', 'constructor', '__proto__', 'hasOwnProperty'];
  const body = (model: string) => `{"model":${JSON.stringify(model)},"prompt":"p"}`;
  const openaiPaths = { rewrite: { openaiPaths: { enabled: true, prefix: '/v1' }, deployments: { 'gpt-image-2': 'gpt-image-2-1' }, apiVersion: { default: API_VERSION } } };

  function upstreamPath(outcome: Outcome): string | undefined {
    return outcome.kind === 'upstream' ? header(outcome.upstream.headers, ':path') : undefined;
  }

  test.each(NAMES)('deployment route /openai/deployments/%s/…: path as sent, model removed', async (name) => {
    const path = `/openai/deployments/${name}/images/generations?api-version=${API_VERSION}`;
    for (const config of [{}, { rewrite: { aliasDeploymentRoutes: true, deployments: { images: 'gpt-image-2-1' } } }]) {
      const result = await run('override', jsonRequest(path, body(name)), config);
      expectAccounted(result, { original: Buffer.from(body(name)), edited: Buffer.from('{"prompt":"p"}'), only: 'edited' });
      expect(upstreamPath(result.outcome)).toBe(path);
    }
  });

  test.each(NAMES)('OpenAI path with model %s: routed to the deployment of that name', async (name) => {
    const result = await run('override', jsonRequest('/v1/images/generations', body(name)), openaiPaths);
    expectAccounted(result, { original: Buffer.from(body(name)), edited: Buffer.from('{"prompt":"p"}'), only: 'edited' });
    expect(upstreamPath(result.outcome)).toBe(`/openai/deployments/${encodeURIComponent(name)}/images/generations?api-version=${API_VERSION}`);
  });

  test.each(NAMES)('OpenAI path with model %s and modelAsDeployment off: 400 "no deployment configured", like any unknown name', async (name) => {
    const config = { rewrite: { ...openaiPaths.rewrite, modelAsDeployment: false } };
    const { outcome, call } = await run('override', jsonRequest('/v1/images/generations', body(name)), config);
    expectAzureError(outcome, 400, { param: 'model', code: 'invalid_value' });
    expect(call.result).toMatchObject({ kind: 'rejected', reason: 'invalid_deployment' });
  });

  test.each(NAMES)('deployment-less route with model %s: routed to the deployment of that name', async (name) => {
    const result = await run('override', jsonRequest(`/openai/images/generations?api-version=${API_VERSION}`, body(name)), { rewrite: { deploymentlessRoutes: true } });
    expectAccounted(result, { original: Buffer.from(body(name)), edited: Buffer.from('{"prompt":"p"}'), only: 'edited' });
    expect(upstreamPath(result.outcome)).toBe(`/openai/deployments/${encodeURIComponent(name)}/images/generations?api-version=${API_VERSION}`);
  });

  test.each(NAMES)('/openai/v1 with rewrite.v1.mapModels and model %s: not in the table, forwarded as sent', async (name) => {
    const config = { rewrite: { deployments: { 'gpt-image-2': 'gpt-image-2-1' }, v1: { mapModels: true } } };
    const result = await run('override', jsonRequest('/openai/v1/images/generations', body(name)), config);
    expectAccounted(result, { original: Buffer.from(body(name)), edited: Buffer.from('{"prompt":"p"}'), only: 'original' });
    expect(upstreamPath(result.outcome)).toBe('/openai/v1/images/generations');
  });

  test('a prototype name that is configured maps like any configured name', async () => {
    const config = { rewrite: { ...openaiPaths.rewrite, deployments: { constructor: 'gpt-image-2-1', toString: 'dep-b' } } };
    for (const [model, deployment] of [['constructor', 'gpt-image-2-1'], ['toString', 'dep-b']] as const) {
      const result = await run('override', jsonRequest('/v1/images/generations', body(model)), config);
      expect(upstreamPath(result.outcome)).toBe(`/openai/deployments/${deployment}/images/generations?api-version=${API_VERSION}`);
    }
  });
});

/** A local reply in Azure's error shape: exactly {"error":{"message","type","param","code"}}, JSON. */
function expectAzureError(outcome: Outcome, status: number, fields: Record<string, unknown> = {}): void {
  if (outcome.kind !== 'local_reply') throw new Error(`expected a ${status} local reply, got ${outcome.kind}: ${JSON.stringify({ ...outcome, transcript: undefined }).slice(0, 300)}`);
  expect(outcome.status).toBe(status);
  expect(outcome.upstream).toBeUndefined();
  expect(header(outcome.headers, 'content-type')).toBe('application/json');
  const parsed = JSON.parse(outcome.body.toString('utf8')) as { error: Record<string, unknown> };
  expect(Object.keys(parsed)).toEqual(['error']);
  expect(Object.keys(parsed.error)).toEqual(['message', 'type', 'param', 'code']);
  expect(typeof parsed.error.message).toBe('string');
  expect(parsed.error).toMatchObject(fields);
}

describe('bodies ended by trailers, in every body mode', () => {
  afterAll(() => stillServing());
  const TRAILERS: Array<[string, string]> = [['x-client-checksum', 'abc123']];
  const wellFormed = jsonObject('', [
    { sep: '', text: '"model":"gpt-image-2-1"', remove: true },
    { sep: ',', text: '"prompt":"a red circle"' },
    { sep: ',', text: '"n":1' },
    { sep: ',', text: '"size":"1024x1024"' },
  ]);
  // 175 bytes: well-formed up to a "]" where "," or "}" belongs.
  const malformed = (() => {
    const text = `{"model":"gpt-image-2-1","prompt":"${'p'.repeat(137)}"]}`;
    return { original: Buffer.from(text), edited: Buffer.from(text.replace('"model":"gpt-image-2-1",', '')) };
  })();
  // Ends in the middle of the prompt: the client's body stops, its trailers follow.
  const truncated = (() => {
    const text = `{"model":"gpt-image-2-1","prompt":"${'p'.repeat(140)}`;
    return { original: Buffer.from(text), edited: Buffer.from(text.replace('"model":"gpt-image-2-1",', '')) };
  })();
  const large = jsonObject('', [
    { sep: '', text: '"model":"gpt-image-2-1"', remove: true },
    { sep: ',', text: `"prompt":"${'q'.repeat(1536 * KiB)}"` },
  ]);

  const request = (expectation: Expectation, announce: boolean, frameSize: number): SimulatedRequest => ({
    ...(announce ? announced(expectation, frameSize) : chunked(expectation, frameSize)),
    trailers: TRAILERS,
  });

  test.each(ALL_SETUPS)('%s: a well-formed body with model is edited, trailers forwarded', async (setup) => {
    for (const announce of [true, false]) {
      const result = await run(setup, request(wellFormed, announce, 16));
      expectAccounted(result, { ...wellFormed, only: 'edited', trailers: TRAILERS });
    }
  });

  test.each(ALL_SETUPS)('%s: a 1.5 MiB well-formed body with model is edited, trailers forwarded', async (setup) => {
    const result = await run(setup, request(large, true, frameSizeFor(setup)));
    expectAccounted(result, { ...large, only: 'edited', trailers: TRAILERS });
    const whole = setup === 'BUFFERED';
    expectBounded(result, { held: whole ? large.original.length : streamedHeldBound(large.original.length), rss: 48 * MiB });
  });

  test.each(ALL_SETUPS)('%s: a malformed 175-byte body reaches the upstream whole, trailers forwarded', async (setup) => {
    expect(malformed.original.length).toBe(175);
    for (const announce of [true, false]) {
      const result = await run(setup, request(malformed, announce, 16));
      expectAccounted(result, { ...malformed, only: 'original', trailers: TRAILERS });
      expect(result.call.result).toMatchObject({ kind: 'passed', reason: 'invalid_body' });
    }
  });

  test.each(['override', 'BUFFERED', 'FULL_DUPLEX_STREAMED'] as const)('%s: a body cut short by its trailers reaches the upstream whole', async (setup) => {
    const result = await run(setup, request(truncated, true, 16));
    expectAccounted(result, { ...truncated, only: 'original', trailers: TRAILERS });
    expect(result.call.result).toMatchObject({ kind: 'passed' });
  });

  test.each(ALL_SETUPS)('%s: a chunked body that crosses maxBodyBytes (forward) after model: as sent or the edit, reported as what was done', async (setup) => {
    const body = jsonObject('', [
      { sep: '', text: '"model":"gpt-image-2-1"', remove: true },
      { sep: ',', text: `"prompt":"${'r'.repeat(200 * KiB)}"` },
    ]);
    const config = { streamThresholdBytes: 32 * KiB, limits: { maxBodyBytes: 64 * KiB } };
    const result = await run(setup, request(body, false, 16 * KiB), config);
    expectAccounted(result, { ...body, trailers: TRAILERS });
  });
});

describe('1-byte chunks without content-length', () => {
  afterAll(() => stillServing());
  // Every DATA frame is one ext_proc message: what the server keeps per chunk must cost what it counts.
  const bodyOf = (size: number) =>
    jsonObject('', [
      { sep: '', text: '"model":"gpt-image-2-1"', remove: true },
      { sep: ',', text: `"prompt":"${'s'.repeat(size - 40)}"` },
    ]);

  // 16,384 frames take the emulated Envoy seconds (its gRPC client queues every write); FULL_DUPLEX_STREAMED
  // needs no answer per frame, so it carries the larger count.
  test.each([
    ['FULL_DUPLEX_STREAMED', 16 * KiB],
    ['override', 4 * KiB],
  ] as const)('%s: %i bytes in frames of 1 byte: edited, memory as counted', async (setup, size) => {
    const body = bodyOf(size);
    const result = await run(setup, chunked(body, 1));
    expectAccounted(result, { ...body, only: 'edited' });
    // Measured before the fix: ~230 bytes of live memory per 1-byte chunk held (3.7 MB for 16 KiB in
    // FULL_DUPLEX_STREAMED); after it, under 0.4 MB (1.1 MB for 64 KiB). The window keeps what came in
    // and what will go out, reserved in steps.
    expectBounded(result, { held: 2 * size + 64 * KiB, liveSlack: 2 * MiB, rss: 48 * MiB });
  });
});

describe('megabytes of whitespace around a removed member', () => {
  afterAll(() => stillServing());
  // An edit is either finished or the body goes out byte-exact: never a comma without its member.
  const shapes = (ws: string) => ({
    'after the first member': jsonObject('', [
      { sep: '', text: '"model":"gpt-image-2-1"', remove: true },
      { sep: `${ws},`, text: '"prompt":"p"' },
    ]),
    'around a middle member': jsonObject('', [
      { sep: '', text: '"n":1' },
      { sep: `,${ws}`, text: '"model":"gpt-image-2-1"', remove: true },
      { sep: `${ws},`, text: '"prompt":"p"' },
    ]),
    'around the last member': jsonObject('', [
      { sep: '', text: '"prompt":"p"' },
      { sep: `${ws},${ws}`, text: '"model":"gpt-image-2-1"', remove: true },
    ]),
  });
  // The whole-body editor (BUFFERED) is exercised with these shapes by its own tests; here the streamed
  // ones, under mode_override and static STREAMED / FULL_DUPLEX_STREAMED.
  const SETUPS: EnvoySetup[] = ['override', 'STREAMED', 'FULL_DUPLEX_STREAMED'];

  // Below the hold cap (256 KiB each side, 0.5 MiB at most held, content-length below the stream
  // threshold): the edit is always possible and must be exact in every mode.
  for (const [where, body] of Object.entries(shapes('\n'.repeat(256 * KiB)))) {
    test.each(SETUPS)(`256 KiB of whitespace ${where}, %s: the exact edit, reported as rewritten`, async (setup) => {
      const result = await run(setup, announced(body, frameSizeFor(setup)));
      expectAccounted(result, { ...body, only: 'edited' });
      const whole = setup === 'BUFFERED' || setup === 'override';
      const length = body.original.length;
      expectBounded(result, { held: whole ? length : streamedHeldBound(length), rss: 48 * MiB });
    });
  }

  // 1.1 MiB each side, above the stream threshold and the hold cap: the server may give up the edit
  // (a well-formed body then goes out as sent, and is not reported as malformed) or finish it exactly.
  for (const [where, body] of Object.entries(shapes(' '.repeat(STREAM_THRESHOLD + 100 * KiB)))) {
    test.each(SETUPS)(`1.1 MiB of whitespace ${where}, %s: as sent or the exact edit, reported as what was done`, async (setup) => {
      const result = await run(setup, announced(body, frameSizeFor(setup)));
      if (expectAccounted(result, body) === 'original') expect(result.call.result).not.toMatchObject({ reason: 'invalid_body' });
      const whole = setup === 'BUFFERED';
      const length = body.original.length;
      expectBounded(result, { held: whole ? length : streamedHeldBound(length), rss: 64 * MiB });
    });
  }
});

describe('odd content-lengths', () => {
  afterAll(() => stillServing());
  // Only a string of decimal digits is a length; anything else is an unknown length (streamed).
  const body = jsonObject('', [
    { sep: '', text: '"model":"gpt-image-2-1"', remove: true },
    { sep: ',', text: '"prompt":"p"' },
  ]);
  const withLength = (value: string): SimulatedRequest => ({
    headers: jsonRequest(DEPLOYMENT_PATH, body.original).headers.map(([key, v]): [string, string] => [key, key === 'content-length' ? value : v]),
    body: frames(body.original, 7),
  });

  test.each(['-1073741824', '1e3', '0x10', '', ' 12', '12 ', '+26', '26.0'])('content-length %j: treated as unknown (streamed), edited', async (value) => {
    const result = await run('override', withLength(value));
    expect(overrideOf(result.outcome)).toBe('STREAMED');
    expectAccounted(result, { ...body, only: 'edited' });
  });

  test('content-length of 30 digits: never asked BUFFERED (over every limit, or not a usable length)', async () => {
    const result = await run('override', withLength('9'.repeat(30)));
    expect(overrideOf(result.outcome)).not.toBe('BUFFERED');
    expectAccounted(result, body);
  });

  test('a negative content-length does not enlarge the global budget', async () => {
    const limits = { limits: { globalHeldBytes: 64 * KiB } };
    // 100 KiB would be asked BUFFERED (below the stream threshold) if there were room: there is not.
    const big = jsonObject('', [
      { sep: '', text: '"model":"gpt-image-2-1"', remove: true },
      { sep: ',', text: `"prompt":"${'t'.repeat(100 * KiB)}"` },
    ]);
    expect(overrideOf((await run('override', announced(big, 16 * KiB), limits)).outcome)).toBe('STREAMED');
    for (let i = 0; i < 3; i++) expectAccounted(await run('override', withLength('-1073741824'), limits), body);
    const after = await run('override', announced(big, 16 * KiB), limits);
    expect(overrideOf(after.outcome)).toBe('STREAMED');
    expectAccounted(after, { ...big, only: 'edited' });
    expect(after.sample.peakHeld).toBeLessThanOrEqual(64 * KiB);
  });
});

describe('control bytes that would be copied into a header mutation', () => {
  afterAll(() => stillServing());
  // Envoy answers 500 to a header mutation carrying CR, LF or NUL; the client gets a 400 in Azure's
  // error shape instead, and no answer of the server carries such a byte.
  const CONTROL = [
    ['CR', '\r'],
    ['LF', '\n'],
    ['NUL', '\0'],
  ] as const;
  const body = '{"model":"gpt-image-2-1","prompt":"p"}';
  const withDefaultVersion = { rewrite: { apiVersion: { default: API_VERSION } } };

  function expectRefused({ outcome, call }: Run): void {
    const written = JSON.stringify(outcome.transcript.filter((entry) => entry.direction === 'server->envoy').map((entry) => entry.message), (_key, value: unknown) =>
      value && typeof value === 'object' && (value as { type?: string }).type === 'Buffer' ? Buffer.from((value as { data: number[] }).data).toString('latin1') : value,
    );
    expect(/\\r|\\n|\\u0000/.test(written), 'an answer of the server carries a control byte').toBe(false);
    expectAzureError(outcome, 400, { type: 'invalid_request_error' });
    expect(call.result).toMatchObject({ kind: 'rejected' });
  }

  test.each(CONTROL)('%s in the path prefix, api-version to add', async (_name, byte) => {
    const path = `/apim${byte}x/openai/deployments/gpt-image-2-1/images/generations`;
    expectRefused(await run('override', jsonRequest(path, body), withDefaultVersion));
  });

  test.each(CONTROL)('%s in the path prefix, alias route', async (_name, byte) => {
    const path = `/apim${byte}x/openai/deployments/images/images/generations?api-version=${API_VERSION}`;
    expectRefused(await run('override', jsonRequest(path, body), { rewrite: { aliasDeploymentRoutes: true, deployments: { images: 'gpt-image-2-1' } } }));
  });

  test.each(CONTROL)('%s in another query pair, api-version forced', async (_name, byte) => {
    const path = `/openai/deployments/gpt-image-2-1/images/generations?api-version=2024-02-01&trace=a${byte}b`;
    expectRefused(await run('override', jsonRequest(path, body), { rewrite: { apiVersion: { default: API_VERSION, force: true } } }));
  });

  test.each(CONTROL)('%s in a query pair of an OpenAI path', async (_name, byte) => {
    const config = { rewrite: { openaiPaths: { enabled: true, prefix: '/v1' }, apiVersion: { default: API_VERSION } } };
    expectRefused(await run('override', jsonRequest(`/v1/images/generations?trace=a${byte}b`, body), config));
  });

  test.each(CONTROL)('%s inside the Bearer token, bearerToApiKey on', async (_name, byte) => {
    const request = jsonRequest(DEPLOYMENT_PATH, body, [['authorization', `Bearer sk-live${byte}injected`]]);
    request.headers = request.headers.filter(([key]) => key !== 'api-key');
    expectRefused(await run('override', request, { credentials: { bearerToApiKey: true } }));
  });
});
