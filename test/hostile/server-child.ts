// The real ext_proc server in a process of its own for the hostile-input suite (test/hostile.test.ts):
// its memory is then its own and not the emulated Envoy's, and a crash shows as the process exiting
// instead of taking the test runner down. Started by test/hostile/server.ts through tsx with the
// production Node flags plus --expose-gc; driven over the fork IPC channel (HostileCommand).
//
// What it measures between a `reset` and a `sample`:
// - peakHeld: the largest heldBytes() after any message the server handled;
// - peakLive: the largest live memory (V8 heap used + ArrayBuffer memory, after a full GC) over the
//   baseline, sampled whenever heldBytes() reaches a new high by half again, and otherwise at least every
//   250 ms while messages arrive; heldAtPeakLive: what heldBytes() said then, to compare what is held
//   with what it costs;
// - liveNow (on request): live memory right now, e.g. while the upstream works on an answered request;
// - hwmGrowth: the kernel's peak RSS (VmHWM, reset through /proc/self/clear_refs) over the RSS at reset,
//   which also catches memory that lives and dies inside one synchronous edit.
import { readFileSync, writeFileSync } from 'node:fs';
import pino from 'pino';
import { buildConfig, type Config } from '../../src/config.js';
import { startServer, type CallObserver } from '../../src/server.js';

export type HostileCommand =
  | { id: number; cmd: 'config'; overrides: Record<string, unknown> }
  | { id: number; cmd: 'reset' }
  | { id: number; cmd: 'sample' }
  | { id: number; cmd: 'live' }
  | { id: number; cmd: 'exit' };

export interface FinishedCall {
  result: Record<string, unknown>;
  how: string;
}

export interface HostileSample {
  id: number;
  error?: string;
  peakHeld: number;
  peakLive: number;
  heldAtPeakLive: number;
  hwmGrowth: number;
  heldNow: number;
  /** `live` only: live memory over the baseline right now, after a full GC. */
  liveNow?: number;
  active: number;
  calls: FinishedCall[];
}

process.setSourceMapsEnabled(false);
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('server-child needs --expose-gc');

const LISTEN = { listen: '127.0.0.1:0', logLevel: 'silent' };
let config: Config = buildConfig(LISTEN);
let calls: FinishedCall[] = [];
let peakHeld = 0;
let peakLive = 0;
let heldAtPeakLive = 0;
let liveBase = 0;
let rssBase = 0;
let nextLiveSampleAtHeld = 4096;
let lastLiveSample = 0;

const status = (field: string): number => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(readFileSync('/proc/self/status', 'utf8'))![1]) * 1024;
const live = (): number => {
  const memory = process.memoryUsage();
  return memory.heapUsed + memory.arrayBuffers;
};

function sampleLive(held: number): void {
  gc!();
  lastLiveSample = performance.now();
  const growth = live() - liveBase;
  if (growth > peakLive) {
    peakLive = growth;
    heldAtPeakLive = held;
  }
}

const observer: CallObserver = {
  messageProcessed() {
    const held = server.heldBytes();
    peakHeld = Math.max(peakHeld, held);
    if (held >= nextLiveSampleAtHeld) {
      nextLiveSampleAtHeld = Math.ceil(held * 1.5);
      sampleLive(held);
    } else if (performance.now() - lastLiveSample > 250) {
      sampleLive(held);
    }
  },
  callFinished(result, _durationMs, how) {
    calls.push({ result: result as unknown as Record<string, unknown>, how });
  },
};

const server = await startServer({ config: () => config, logger: pino({ level: 'silent' }), observer });

function reset(): void {
  gc!();
  writeFileSync('/proc/self/clear_refs', '5');
  calls = [];
  peakHeld = 0;
  peakLive = 0;
  heldAtPeakLive = 0;
  nextLiveSampleAtHeld = 4096;
  lastLiveSample = performance.now();
  liveBase = live();
  rssBase = status('VmRSS');
}

process.on('message', (command: HostileCommand) => {
  const reply = (extra: Partial<HostileSample> = {}) =>
    process.send!({
      id: command.id,
      peakHeld,
      peakLive,
      heldAtPeakLive,
      hwmGrowth: Math.max(0, status('VmHWM') - rssBase),
      heldNow: server.heldBytes(),
      active: server.activeCalls(),
      calls,
      ...extra,
    } satisfies HostileSample);
  try {
    switch (command.cmd) {
      case 'config':
        // As a reload does (src/main.ts): new calls get the snapshot, the global budget takes its size.
        config = buildConfig({ ...command.overrides, ...LISTEN });
        server.applyPolicy(config);
        return reply();
      case 'reset':
        reset();
        return reply();
      case 'sample':
        return reply();
      case 'live':
        gc!();
        return reply({ liveNow: live() - liveBase });
      case 'exit':
        void server.shutdown(1000).then(() => process.exit(0));
        return;
    }
  } catch (error) {
    reply({ error: (error as Error).message });
  }
});

process.on('disconnect', () => process.exit(0));
process.send!({ ready: server.addresses.listen });
