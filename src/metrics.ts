// Prometheus metrics for the processor itself: Envoy's own ext_proc stats have no
// latency histogram, so the time we add to every image request is only visible here.
// Every label takes values from a closed set (message kinds, pass reasons, route kinds...): deployment
// names, paths and hosts never become labels, so the number of series stays bounded whatever the traffic.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RequestKind } from './proto.js';
import type { CallEnd, CallObserver } from './server.js';
import { PASS_REASONS, REJECT_REASONS, type CallResult } from './call/index.js';

export const METRIC_PREFIX = 'extproc_';

/**
 * Per-message processing is synchronous byte work: tens of microseconds for headers, up to milliseconds
 * for a large buffered body. Buckets start at 50 µs so the headers-only path is not one bucket.
 */
export const MESSAGE_DURATION_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25];

/**
 * A call lasts as long as Envoy keeps the stream open: the client's upload time for a STREAMED body, and
 * with response phases enabled the whole upstream image generation (tens of seconds). Hence up to 2 min.
 */
export const CALL_DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

// Every label value is listed (message kinds and call ends here, pass and reject reasons in
// src/call/outcomes.ts), so every series exists (at 0) from the first scrape and alerts on rate() work
// before the first occurrence. The Records are keyed by the union types: a new member fails type-checking.
const MESSAGE_KINDS: Record<RequestKind, true> = {
  request_headers: true,
  request_body: true,
  request_trailers: true,
  response_headers: true,
  response_body: true,
  response_trailers: true,
};
const CALL_ENDS: Record<CallEnd, true> = { completed: true, cancelled: true, error: true };

/** What the metrics read on each scrape from the running server. */
export interface MetricsSource {
  heldBytes(): number;
  /** The global budget's size (limits.globalHeldBytes in force, after reloads). */
  budgetBytes?(): number;
}

export interface MetricsOptions {
  registry?: Registry;
  /** The server's version, for extproc_build_info (src/version.ts). */
  version?: string;
}

export interface Metrics {
  readonly registry: Registry;
  /** Pass as `observer` to startServer. */
  readonly observer: CallObserver;
  /** A configuration reload attempt: applied (`true`) or refused and the old snapshot kept (`false`). */
  configReloaded(ok: boolean): void;
  /** Reads `extproc_body_bytes_held` from this source at scrape time (the server exists after the metrics). */
  watch(source: MetricsSource): void;
}

export function createMetrics({ registry = new Registry(), version = 'unknown' }: MetricsOptions = {}): Metrics {
  collectDefaultMetrics({ register: registry, prefix: METRIC_PREFIX });

  // The build_info convention: a constant 1 whose labels say what runs, to join with other series.
  new Gauge({
    name: 'extproc_build_info',
    help: 'Always 1; the labels give the server version and the Node.js version it runs on.',
    labelNames: ['version', 'node'] as const,
    registers: [registry],
  }).set({ version, node: process.versions.node }, 1);

  const messageDuration = new Histogram({
    name: 'extproc_message_duration_seconds',
    help: 'Time spent deciding the answer to one ext_proc message, by message kind.',
    labelNames: ['kind'] as const,
    buckets: MESSAGE_DURATION_BUCKETS,
    registers: [registry],
  });
  const callDuration = new Histogram({
    name: 'extproc_call_duration_seconds',
    help: 'Lifetime of one ext_proc call (one HTTP request), from stream open to its end.',
    buckets: CALL_DURATION_BUCKETS,
    registers: [registry],
  });
  const activeCalls = new Gauge({
    name: 'extproc_active_calls',
    help: 'ext_proc calls in progress.',
    registers: [registry],
  });
  let source: MetricsSource | undefined;
  new Gauge({
    name: 'extproc_body_bytes_held',
    help: 'Request body bytes currently held back by the streaming editors, across all calls.',
    registers: [registry],
    collect() {
      this.set(source?.heldBytes() ?? 0);
    },
  });
  new Gauge({
    name: 'extproc_body_bytes_budget',
    help: 'Size of the global budget for held body bytes (limits.globalHeldBytes in force; a reload resizes it).',
    registers: [registry],
    collect() {
      this.set(source?.budgetBytes?.() ?? 0);
    },
  });
  const rewritten = new Counter({
    name: 'extproc_requests_rewritten_total',
    help: 'Requests whose body was rewritten (model removed), by route kind, operation and body kind.',
    labelNames: ['route', 'operation', 'body'] as const,
    registers: [registry],
  });
  const passed = new Counter({
    name: 'extproc_requests_passed_total',
    help: 'Requests forwarded unchanged, by reason.',
    labelNames: ['reason'] as const,
    registers: [registry],
  });
  const rejectedCounter = new Counter({
    name: 'extproc_requests_rejected_total',
    help: 'Requests answered by the processor with an ImmediateResponse instead of being forwarded, by reason.',
    labelNames: ['reason'] as const,
    registers: [registry],
  });
  const bytesRemoved = new Counter({
    name: 'extproc_body_bytes_removed_total',
    help: 'Request body bytes removed by rewrites (bytes in minus bytes out).',
    registers: [registry],
  });
  const calls = new Counter({
    name: 'extproc_calls_total',
    help: 'Finished ext_proc calls by how they ended: completed (half-close), cancelled (Envoy >= 1.37 close, client gone), error.',
    labelNames: ['end'] as const,
    registers: [registry],
  });
  const reloads = new Counter({
    name: 'extproc_config_reloads_total',
    help: 'Configuration reload attempts by result.',
    labelNames: ['result'] as const,
    registers: [registry],
  });

  for (const kind of Object.keys(MESSAGE_KINDS)) messageDuration.zero({ kind });
  for (const reason of Object.keys(PASS_REASONS)) passed.inc({ reason }, 0);
  for (const end of Object.keys(CALL_ENDS)) calls.inc({ end }, 0);
  for (const result of ['success', 'failure']) reloads.inc({ result }, 0);
  for (const reason of Object.keys(REJECT_REASONS)) rejectedCounter.inc({ reason }, 0);
  bytesRemoved.inc(0);

  const countResult = (result: CallResult): void => {
    switch (result.kind) {
      case 'rewritten': {
        const { report } = result;
        rewritten.inc({ route: report.route.kind, operation: report.route.operation, body: report.bodyKind });
        bytesRemoved.inc(Math.max(0, report.bytesIn - report.bytesOut));
        return;
      }
      case 'passed':
        passed.inc({ reason: result.reason });
        return;
      case 'rejected':
        rejectedCounter.inc({ reason: result.reason });
        return;
      default: {
        // A new CallResult kind must be counted somewhere: this fails type-checking until it is.
        const unhandled: never = result;
        return unhandled;
      }
    }
  };

  const observer: CallObserver = {
    callStarted() {
      activeCalls.inc();
    },
    messageProcessed(kind, seconds) {
      messageDuration.observe({ kind }, seconds);
    },
    callFinished(result, durationMs, how) {
      activeCalls.dec();
      callDuration.observe(durationMs / 1000);
      calls.inc({ end: how });
      countResult(result);
    },
  };

  return {
    registry,
    observer,
    configReloaded(ok) {
      reloads.inc({ result: ok ? 'success' : 'failure' });
    },
    watch(next) {
      source = next;
    },
  };
}
