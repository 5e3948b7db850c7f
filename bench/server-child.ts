// One ext_proc server in a process of its own for the bench: the real one (src/server.ts, with the
// production logger and metrics) or the no-op baseline (test/support/noop-server.ts). Its own process so
// RSS and CPU time are the server's alone, and so the load generator and the server each get a core.
// The parent (bench/extproc.ts) talks to it over the fork IPC channel: see ChildRequest / ChildSample.
//
// The bench runs a tsc build of it on plain `node`, as in production (tsx's loader thread alone adds
// ~40 MiB of RSS); the load test runs the source through tsx (bench/server-process.ts).
import { monitorEventLoopDelay } from 'node:perf_hooks';
import pino from 'pino';
import { buildConfig } from '../src/config.js';
import { createLogger } from '../src/log.js';
import { createMetrics } from '../src/metrics.js';
import type { RequestKind } from '../src/proto.js';
import { startServer, type CallObserver } from '../src/server.js';
import { startNoopServer } from '../test/support/noop-server.js';
import { percentile } from './load.js';

export type ServerKind = 'extproc' | 'noop';

export type ChildRequest = { id: number; cmd: 'sample' | 'reset' | 'gc' | 'exit' };

export interface LatencySummary {
  count: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

/** What the child reports about itself since the last `reset`. */
export interface ChildSample {
  rssBytes: number;
  heapUsedBytes: number;
  /** Heap V8 has reserved (live objects plus the young generation and free space it keeps). */
  heapTotalBytes: number;
  /** Highest RSS seen by a 20 ms sampler. */
  peakRssBytes: number;
  /** User + system CPU time. */
  cpuMicros: number;
  /** Calls the server finished, and how many of them ended with a gRPC error (real server only). */
  calls: number;
  errors: number;
  /** Time the server spent deciding the answer to each message, by message kind (real server only). */
  messages: Partial<Record<RequestKind, LatencySummary>>;
  /** Event-loop delay: how long a ready message can wait behind others. */
  loopDelayP99Ms: number;
  /** Calls in progress and body bytes held right now (real server only). */
  activeCalls: number;
  heldBytes: number;
}

export type ChildMessage = { ready: string } | ({ id: number } & Partial<ChildSample>);

const kind = process.argv[2] as ServerKind;
// Under tsx (the tests) every stack grpc-js builds for a cancelled call would be source-mapped; production
// runs compiled JavaScript without --enable-source-maps.
process.setSourceMapsEnabled(false);
const send = (message: ChildMessage) => process.send!(message);

let durations = new Map<RequestKind, number[]>();
let calls = 0;
let errors = 0;
let cpuAtReset = process.cpuUsage();
let peakRss = process.memoryUsage.rss();
const loopDelay = monitorEventLoopDelay({ resolution: 1 });
loopDelay.enable();
setInterval(() => {
  peakRss = Math.max(peakRss, process.memoryUsage.rss());
}, 20).unref();

function summary(values: number[]): LatencySummary {
  const sorted = Float64Array.from(values).sort();
  return { count: sorted.length, p50Ms: percentile(sorted, 0.5) * 1000, p99Ms: percentile(sorted, 0.99) * 1000, maxMs: (sorted.at(-1) ?? 0) * 1000 };
}

interface Started {
  address: string;
  activeCalls(): number;
  heldBytes(): number;
  close(): Promise<unknown>;
}

async function start(): Promise<Started> {
  if (kind === 'noop') return { ...(await startNoopServer()), activeCalls: () => 0, heldBytes: () => 0 };
  // Production logging (one JSON line per rewritten request) to /dev/null: its cost counts, its output not.
  const logger = createLogger('info', pino.destination({ dest: '/dev/null', sync: false }));
  const metrics = createMetrics();
  const observer: CallObserver = {
    callStarted: () => metrics.observer.callStarted?.(),
    messageProcessed(messageKind, seconds) {
      metrics.observer.messageProcessed?.(messageKind, seconds);
      let list = durations.get(messageKind);
      if (!list) durations.set(messageKind, (list = []));
      list.push(seconds);
    },
    callFinished(result, durationMs, how) {
      metrics.observer.callFinished?.(result, durationMs, how);
      calls++;
      if (how === 'error') errors++;
    },
  };
  const config = buildConfig({ listen: '127.0.0.1:0' });
  const server = await startServer({ config: () => config, logger, observer });
  metrics.watch(server);
  return { address: server.addresses.listen, activeCalls: server.activeCalls, heldBytes: server.heldBytes, close: () => server.shutdown(2000) };
}

const server = await start();

process.on('message', async (request: ChildRequest) => {
  switch (request.cmd) {
    case 'reset':
      durations = new Map();
      calls = 0;
      errors = 0;
      cpuAtReset = process.cpuUsage();
      peakRss = process.memoryUsage.rss();
      loopDelay.reset();
      send({ id: request.id });
      return;
    case 'gc':
      // Several passes, then a pause: V8 hands freed pages back to the OS after a full GC, not during it.
      for (let i = 0; i < 3; i++) global.gc?.();
      await new Promise((resolve) => setTimeout(resolve, 500));
      global.gc?.();
      send({ id: request.id, rssBytes: process.memoryUsage.rss() });
      return;
    case 'sample': {
      const cpu = process.cpuUsage(cpuAtReset);
      const memory = process.memoryUsage();
      send({
        id: request.id,
        rssBytes: memory.rss,
        heapUsedBytes: memory.heapUsed,
        heapTotalBytes: memory.heapTotal,
        peakRssBytes: Math.max(peakRss, memory.rss),
        cpuMicros: cpu.user + cpu.system,
        calls,
        errors,
        messages: Object.fromEntries([...durations].map(([name, values]) => [name, summary(values)])),
        loopDelayP99Ms: loopDelay.percentile(99) / 1e6,
        activeCalls: server.activeCalls(),
        heldBytes: server.heldBytes(),
      });
      return;
    }
    case 'exit':
      await server.close();
      process.exit(0);
  }
});

// Orphaned (the bench was interrupted): nothing will ask for samples any more.
process.on('disconnect', () => process.exit(0));
send({ ready: server.address });
