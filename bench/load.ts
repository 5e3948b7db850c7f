// Closed-loop load: `concurrency` workers, each starting its next call as soon as the last one ended, for
// a time or a number of calls. Used by the bench and by the load tests (test/load.test.ts, test/p25.test.ts)
// with the Envoy emulation as the client.

export interface LoadOptions {
  concurrency: number;
  /** Stop starting calls after this long (ms)... */
  durationMs?: number;
  /** ...or after this many calls, whichever comes first. */
  calls?: number;
  /** Makes call `index`; resolves to undefined when it went as expected, else a description of what went wrong. */
  call(index: number): Promise<string | undefined>;
}

export interface LoadResult {
  calls: number;
  failures: number;
  /** Failure descriptions and how often each occurred. */
  failureKinds: Record<string, number>;
  seconds: number;
  /** Calls per second. */
  rate: number;
  /** Latency of every call as the client saw it, in ms, sorted. */
  latencies: Float64Array;
}

export async function closedLoop(options: LoadOptions): Promise<LoadResult> {
  const { concurrency, durationMs = Infinity, calls: maxCalls = Infinity } = options;
  if (!Number.isFinite(durationMs) && !Number.isFinite(maxCalls)) throw new Error('closedLoop needs durationMs or calls');
  const failureKinds: Record<string, number> = {};
  const latencies: number[] = [];
  let started = 0;
  let failures = 0;
  const begin = performance.now();
  const deadline = begin + durationMs;

  async function worker(): Promise<void> {
    while (started < maxCalls && performance.now() < deadline) {
      const index = started++;
      const callStart = performance.now();
      let failure: string | undefined;
      try {
        failure = await options.call(index);
      } catch (error) {
        failure = `threw: ${(error as Error).message}`;
      }
      latencies.push(performance.now() - callStart);
      if (failure !== undefined) {
        failures++;
        failureKinds[failure] = (failureKinds[failure] ?? 0) + 1;
      }
    }
  }

  // grpc-js captures a stack trace for every call it starts and every call that ends cancelled (each
  // Envoy >= 1.37 close), and vitest or tsx then source-map each one: a fifth of the load generator's
  // time. Envoy pays nothing of the kind; failures are still recorded, by message.
  const stackTraceLimit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    Error.stackTraceLimit = stackTraceLimit;
  }
  const seconds = (performance.now() - begin) / 1000;
  return { calls: latencies.length, failures, failureKinds, seconds, rate: latencies.length / seconds, latencies: Float64Array.from(latencies).sort() };
}

/** The value at fraction `q` (0..1) of an ascending array; 0 for an empty one. */
export function percentile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}
