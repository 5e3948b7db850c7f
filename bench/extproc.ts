// Server benchmarks through the Envoy emulation over loopback: pass-through calls against a no-op grpc-js
// server, image requests with a 1 KiB JSON body, memory idle / under load / after, the same server under
// a lean configuration of the same emulation, and a 100 MiB multipart edit streamed in 64 KiB chunks. The
// servers run in child processes (bench/server-child.ts) built with tsc, each with a core to itself on a
// two-core machine; this process is the load generator (the emulated Envoy) on the other.
//
// Run alone: npx tsx bench/extproc.ts
import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import type { EnvoyEmulator } from '../test/envoy/emulator.js';
import { EDITS_PATH, frames, multipartBody, multipartRequest, recommendedEnvoy } from '../test/support/harness.js';
import type { BenchRow } from './editors.js';
import { closedLoop, percentile, type LoadResult } from './load.js';
import type { ChildSample } from './server-child.js';
import { PRODUCTION_NODE_FLAGS, ServerProcess, buildServerChild } from './server-process.js';
import { PASS_THROUGH, imageJson, leanEnvoy, leanMix, run, type Workload } from './workload.js';

const MiB = 1024 * 1024;

const PASS_THROUGH_CONCURRENCY = 64;
const PASS_THROUGH_ROUNDS = 6;
const ROUND_MS = 2500;
const IMAGE_CONCURRENCY = 200;
const IMAGE_MS = 6000;
const WARM_UP_MS = 1500;
const P99_TARGET_MS = 2;
const RATIO_TARGET = 0.9;
/**
 * After load and a full GC, live heap may stay this far above idle: compiled code, inline caches and
 * metric series created on first use. A per-call leak of 100 bytes would add about 4 MiB over the bench.
 */
const HEAP_SETTLE_TARGET = 4 * MiB;
const STREAM_BYTES = 100 * MiB;
const STREAM_CHUNK = 64 * 1024;
const STREAM_GROWTH_TARGET = 32 * MiB;

/**
 * The emulated Envoy as load generator: the recommended set-up (max_requests_per_connection 900 included),
 * with a message_timeout that leaves room for the load generator's own queueing at 200 calls.
 */
function loadGenerator(target: string): EnvoyEmulator {
  return recommendedEnvoy(target, { messageTimeoutMs: 10_000 });
}

function drive(envoy: EnvoyEmulator, workload: Workload, concurrency: number, durationMs: number): Promise<LoadResult> {
  return closedLoop({ concurrency, durationMs, call: () => run(envoy, workload) });
}

function median(values: number[]): number {
  return [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
}

const mib = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;
const ms = (value: number) => `${value.toFixed(3)} ms`;
const perSecond = (value: number) => `${Math.round(value)} calls/s`;
const failuresOf = (result: LoadResult) =>
  result.failures === 0 ? '0' : `${result.failures} (${Object.entries(result.failureKinds).map(([kind, n]) => `${n}x ${kind}`).join('; ').slice(0, 120)})`;

interface Measured {
  result: LoadResult;
  server: ChildSample;
}

async function measure(server: ServerProcess, envoy: EnvoyEmulator, workload: Workload, concurrency: number, durationMs: number): Promise<Measured> {
  await server.ask('reset');
  const result = await drive(envoy, workload, concurrency, durationMs);
  return { result, server: await server.sample() };
}

/** (a) Pass-through calls/s, real server vs no-op, alternating rounds so drift and neighbours hit both alike. */
async function passThrough(extproc: ServerProcess, noop: ServerProcess): Promise<BenchRow[]> {
  const envoys = { extproc: loadGenerator(extproc.address), noop: loadGenerator(noop.address) };
  const servers = { extproc, noop };
  for (const name of ['extproc', 'noop'] as const) await drive(envoys[name], PASS_THROUGH, PASS_THROUGH_CONCURRENCY, WARM_UP_MS);
  const rounds: Record<'extproc' | 'noop', Measured[]> = { extproc: [], noop: [] };
  for (let round = 0; round < PASS_THROUGH_ROUNDS; round++) {
    const order = round % 2 === 0 ? (['extproc', 'noop'] as const) : (['noop', 'extproc'] as const);
    for (const name of order) rounds[name].push(await measure(servers[name], envoys[name], PASS_THROUGH, PASS_THROUGH_CONCURRENCY, ROUND_MS));
  }
  envoys.extproc.close();
  envoys.noop.close();

  const rate = (name: 'extproc' | 'noop') => median(rounds[name].map((m) => m.result.rate));
  // CPU per call over all rounds together: one round's figure moves by tens of percent with the neighbours.
  const cpuPerCall = (name: 'extproc' | 'noop') => {
    const total = (pick: (m: Measured) => number) => rounds[name].reduce((sum, m) => sum + pick(m), 0);
    return total((m) => m.server.cpuMicros) / total((m) => m.result.calls);
  };
  const ratio = median(rounds.extproc.map((m, i) => m.result.rate / rounds.noop[i]!.result.rate));
  const failures = [...rounds.extproc, ...rounds.noop].reduce((sum, m) => sum + m.result.failures, 0);
  const c = PASS_THROUGH_CONCURRENCY;
  return [
    { name: `pass-through (headers only), extproc, ${c} concurrent`, value: perSecond(rate('extproc')) },
    { name: `pass-through (headers only), no-op grpc-js server, ${c} concurrent`, value: perSecond(rate('noop')) },
    { name: 'pass-through calls/s ratio extproc / no-op', value: ratio.toFixed(2), target: `>= ${RATIO_TARGET}`, ok: ratio >= RATIO_TARGET },
    { name: 'pass-through server CPU per call, extproc / no-op', value: `${cpuPerCall('extproc').toFixed(0)} / ${cpuPerCall('noop').toFixed(0)} µs` },
    { name: 'pass-through capacity ratio (no-op CPU / extproc CPU per call)', value: (cpuPerCall('noop') / cpuPerCall('extproc')).toFixed(2) },
    {
      name: 'pass-through server event-loop delay p99, extproc / no-op',
      value: `${ms(median(rounds.extproc.map((m) => m.server.loopDelayP99Ms)))} / ${ms(median(rounds.noop.map((m) => m.server.loopDelayP99Ms)))}`,
    },
    { name: 'pass-through failed calls', value: String(failures), target: '0', ok: failures === 0 },
  ];
}

/** RSS and heap after start and a full GC, before any call. */
interface Idle {
  rss: number;
  heapUsed: number;
  heapTotal: number;
}

async function idleOf(server: ServerProcess): Promise<Idle> {
  const rss = await server.settledRss();
  const sample = await server.sample();
  return { rss, heapUsed: sample.heapUsedBytes, heapTotal: sample.heapTotalBytes };
}

const growth = (after: number, before: number) => `${mib(after)} (${after >= before ? '+' : ''}${mib(after - before)})`;

/** (b) + (c) Image requests with a 1 KiB JSON body at 200 concurrent calls, and memory around them. */
async function images(extproc: ServerProcess, idle: Idle): Promise<BenchRow[]> {
  const workload = imageJson(1024);
  const envoy = loadGenerator(extproc.address);
  await drive(envoy, workload, IMAGE_CONCURRENCY, WARM_UP_MS);
  const { result, server } = await measure(extproc, envoy, workload, IMAGE_CONCURRENCY, IMAGE_MS);
  envoy.close();
  const after = await idleOf(extproc);

  const headers = server.messages.request_headers!;
  const body = server.messages.request_body!;
  const p99 = Math.max(headers.p99Ms, body.p99Ms);
  const c = IMAGE_CONCURRENCY;
  return [
    { name: `image 1 KiB JSON (model removed), ${c} concurrent`, value: perSecond(result.rate) },
    { name: 'image: server time per message p50, headers / body', value: `${ms(headers.p50Ms)} / ${ms(body.p50Ms)}` },
    { name: 'image: server time per message p99, headers / body', value: `${ms(headers.p99Ms)} / ${ms(body.p99Ms)}`, target: `<= ${P99_TARGET_MS} ms`, ok: p99 <= P99_TARGET_MS },
    { name: 'image: server time per message max, headers / body', value: `${ms(headers.maxMs)} / ${ms(body.maxMs)}` },
    { name: 'image: server event-loop delay p99', value: ms(server.loopDelayP99Ms) },
    { name: 'image: server CPU per call', value: `${(server.cpuMicros / result.calls).toFixed(0)} µs` },
    {
      name: 'image: call latency seen by the emulated Envoy p50 / p99',
      value: `${percentile(result.latencies, 0.5).toFixed(1)} / ${percentile(result.latencies, 0.99).toFixed(1)} ms`,
    },
    { name: 'image: failed calls (wrong body included)', value: failuresOf(result), target: '0', ok: result.failures === 0 },
    { name: 'RSS idle (after start, full GC)', value: mib(idle.rss) },
    { name: `RSS under load (peak, ${c} concurrent image calls)`, value: growth(server.peakRssBytes, idle.rss) },
    { name: 'RSS after load (full GC, 0.5 s settle)', value: growth(after.rss, idle.rss) },
    // What V8 keeps reserved after growing its young generation under load; the no-op server does the same.
    { name: 'V8 heap reserved idle -> after load (full GC)', value: `${mib(idle.heapTotal)} -> ${growth(after.heapTotal, idle.heapTotal)}` },
    {
      name: 'heap used idle -> after load (full GC)',
      value: `${mib(idle.heapUsed)} -> ${growth(after.heapUsed, idle.heapUsed)}`,
      target: `<= idle + ${mib(HEAP_SETTLE_TARGET)}`,
      ok: after.heapUsed - idle.heapUsed <= HEAP_SETTLE_TARGET,
    },
  ];
}

/** The same server driven by the lean generator: a higher rate, the server's CPU per call nearer to saturation. */
async function leanRows(extproc: ServerProcess): Promise<BenchRow[]> {
  const lean = leanEnvoy(extproc.address);
  const call = (i: number) => run(lean, leanMix(i));
  await closedLoop({ concurrency: IMAGE_CONCURRENCY, durationMs: WARM_UP_MS, call });
  await extproc.ask('reset');
  const result = await closedLoop({ concurrency: IMAGE_CONCURRENCY, durationMs: IMAGE_MS, call });
  const server = await extproc.sample();
  lean.close();
  const name = `lean Envoy, ${IMAGE_CONCURRENCY} concurrent, half image / half pass-through`;
  return [
    { name, value: perSecond(result.rate) },
    {
      name: `${name}: server CPU`,
      value: `${((server.cpuMicros / 1e6 / result.seconds) * 100).toFixed(0)}% of a core, ${(server.cpuMicros / result.calls).toFixed(0)} µs per call`,
    },
    { name: `${name}: peak RSS`, value: mib(server.peakRssBytes) },
    { name: `${name}: failed calls`, value: failuresOf(result), target: '0', ok: result.failures === 0 },
  ];
}

interface StreamRun {
  seconds: number;
  megabytes: number;
  cpuMicros: number;
  correct: boolean;
  growthBytes: number;
}

/**
 * (e) Issue 4's 100 MiB multipart edit, streamed (NONE + mode_override -> STREAMED) in 64 KiB chunks, in
 * a fresh server: growth is measured from its own idle, not from a heap another run already grew.
 */
async function streamedMultipart(entry: string, execArgv: string[] = PRODUCTION_NODE_FLAGS): Promise<StreamRun> {
  const boundary = '----bench-boundary-7MA4YWxkTrZu0gW';
  const parts = [
    { name: 'prompt', data: 'Add a red scarf to the cat' },
    { name: 'model', data: 'gpt-image-1' },
    { name: 'image[]', filename: 'big.png', contentType: 'image/png', data: randomBytes(STREAM_BYTES) },
  ];
  const request = multipartRequest(EDITS_PATH, boundary, parts);
  const expected = multipartBody(boundary, [parts[0]!, parts[2]!]);
  const server = await ServerProcess.start(entry, 'extproc', execArgv);
  const envoy = loadGenerator(server.address);
  try {
    const baseline = await server.settledRss();
    await server.ask('reset');
    const started = performance.now();
    const outcome = await envoy.request({ headers: request.headers, body: frames(request.body, STREAM_CHUNK) });
    const seconds = (performance.now() - started) / 1000;
    const sample = await server.sample();
    return {
      seconds,
      megabytes: request.body.length / 1e6,
      cpuMicros: sample.cpuMicros,
      correct: outcome.kind === 'upstream' && outcome.upstream.body.equals(expected),
      growthBytes: sample.peakRssBytes - baseline,
    };
  } finally {
    envoy.close();
    await server.stop();
  }
}

async function streamRows(entry: string): Promise<BenchRow[]> {
  const run = await streamedMultipart(entry);
  // The same on Node's default young generation: how much of the growth is garbage waiting for a scavenge.
  const small = await streamedMultipart(entry, []);
  const name = '100 MiB multipart edit, STREAMED in 64 KiB chunks';
  return [
    { name: `${name}: end-to-end throughput`, value: `${(run.megabytes / run.seconds).toFixed(0)} MB/s` },
    { name: `${name}: server CPU`, value: `${(run.cpuMicros / 1000).toFixed(0)} ms (${(run.megabytes / (run.cpuMicros / 1e6)).toFixed(0)} MB per CPU-second)` },
    { name: `${name}: model part removed, image intact`, value: run.correct ? 'yes' : 'no', target: 'yes', ok: run.correct },
    { name: `${name}: server peak RSS growth`, value: mib(run.growthBytes), target: `<= ${mib(STREAM_GROWTH_TARGET)}`, ok: run.growthBytes <= STREAM_GROWTH_TARGET },
    { name: `${name}: the same, Node's default young generation`, value: `${mib(small.growthBytes)}${small.correct ? '' : ' (body NOT correct)'}` },
  ];
}

export async function benchExtProc(log: (line: string) => void = () => undefined): Promise<BenchRow[]> {
  // The load generator is Node too: grpc-js builds an Error with a stack for every cancelled call, and
  // with source maps on (tsx) each stack is mapped. Envoy pays neither; keep them off this process's bill.
  process.setSourceMapsEnabled(false);
  log('building the bench server (tsc)');
  const entry = await buildServerChild();
  const extproc = await ServerProcess.start(entry, 'extproc');
  const noop = await ServerProcess.start(entry, 'noop');
  try {
    const idle = await idleOf(extproc);
    log('pass-through vs no-op');
    const rows = await passThrough(extproc, noop);
    log('image requests, 200 concurrent');
    rows.push(...(await images(extproc, idle)));
    log('lean Envoy mix, 200 concurrent');
    rows.push(...(await leanRows(extproc)));
    log('100 MiB streamed multipart edit');
    rows.push(...(await streamRows(entry)));
    return rows;
  } finally {
    await Promise.all([extproc.stop(), noop.stop()]);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  for (const row of await benchExtProc((line) => process.stderr.write(`${line}\n`))) {
    console.log(`${row.name.padEnd(70)} ${row.value.padStart(24)}  ${row.target ?? ''} ${row.ok === undefined ? '' : row.ok ? 'ok' : 'MISSED'}`);
  }
}
