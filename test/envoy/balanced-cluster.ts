// An Envoy cluster of several ext_proc servers, as the shared pool's cluster (deploy/pool/envoy-cluster.yaml)
// behaves: one HTTP/2 connection pool per host (an EnvoyEmulator each), round robin per call over the hosts
// that pass grpc.health.v1 active health checks, and Envoy's panic mode when too few do.
//
// Health checking follows Envoy's active health checker (health_checker_impl.cc, grpc_health_check): a
// check every `intervalMs` (+ up to `jitterMs`) after the previous one finished, on its own connection,
// failed when it does not answer SERVING within `timeoutMs`; `unhealthyThreshold` consecutive failures
// take a healthy host out of rotation, `healthyThreshold` consecutive successes bring it back. Hosts start
// unhealthy and `start()` runs the first round (Envoy's cluster warming waits for it). Panic
// (common_lb_config.healthy_panic_threshold, default 50%): with fewer healthy hosts than that share,
// Envoy balances over all hosts.
import * as grpc from '@grpc/grpc-js';
import { EXT_PROC_SERVICE, healthService } from '../../src/proto.js';
import type { EnvoyEmulator, Outcome, SimulatedRequest } from './emulator.js';

export interface HealthCheckOptions {
  intervalMs: number;
  jitterMs?: number;
  timeoutMs: number;
  unhealthyThreshold: number;
  healthyThreshold: number;
  /** grpc_health_check.service_name (default the ext_proc service). */
  serviceName?: string;
}

export interface BalancedClusterOptions {
  health: HealthCheckOptions;
  /** healthy_panic_threshold in percent (Envoy's default 50). */
  panicThresholdPercent?: number;
}

interface HealthClient {
  check(request: { service: string }, options: { deadline: number }, callback: (error: grpc.ServiceError | null, response?: { status: string }) => void): void;
  close(): void;
}

/** One endpoint of the cluster. */
export class Host {
  healthy = false;
  /** Calls started on this host, and those still running. */
  started = 0;
  active = 0;
  /** Health check results, oldest first (true = SERVING), with when each finished. */
  readonly checks: Array<{ ok: boolean; at: number }> = [];
  /** When the host last left rotation (performance.now()), if it did. */
  markedUnhealthyAt: number | undefined;
  private failures = 0;
  private successes = 0;
  private readonly client: HealthClient;

  constructor(
    readonly target: string,
    readonly emulator: EnvoyEmulator,
    private readonly options: HealthCheckOptions,
  ) {
    const Health = healthService();
    this.client = new Health(target, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }) as unknown as HealthClient;
  }

  /** One health check; updates the host's state like Envoy's health checker. */
  check(): Promise<boolean> {
    return new Promise((resolve) => {
      this.client.check({ service: this.options.serviceName ?? EXT_PROC_SERVICE }, { deadline: Date.now() + this.options.timeoutMs }, (error, response) => {
        const ok = !error && response?.status === 'SERVING';
        this.record(ok);
        resolve(ok);
      });
    });
  }

  /** Applies one check result (exported for the unit tests of the thresholds). */
  record(ok: boolean): void {
    this.checks.push({ ok, at: performance.now() });
    if (ok) {
      this.failures = 0;
      this.successes++;
      if (!this.healthy && this.successes >= this.options.healthyThreshold) this.healthy = true;
    } else {
      this.successes = 0;
      this.failures++;
      // A host that never passed (warming) is unhealthy already; a healthy one needs the threshold.
      if (this.healthy && this.failures >= this.options.unhealthyThreshold) {
        this.healthy = false;
        this.markedUnhealthyAt = performance.now();
      }
    }
  }

  close(): void {
    this.client.close();
    this.emulator.close();
  }
}

export class BalancedCluster {
  readonly hosts: Host[];
  private next = 0;
  private timers = new Set<NodeJS.Timeout>();
  private closed = false;

  constructor(
    targets: string[],
    /** Builds the filter (with its connection pool) for one host, e.g. the harness' recommendedEnvoy. */
    emulatorFor: (target: string) => EnvoyEmulator,
    private readonly options: BalancedClusterOptions,
  ) {
    if (targets.length === 0) throw new Error('a cluster needs at least one host');
    this.hosts = targets.map((t) => new Host(t, emulatorFor(t), options.health));
  }

  /** Runs the first round of health checks, then keeps checking every host on its own schedule. */
  async start(): Promise<void> {
    await Promise.all(this.hosts.map((h) => h.check()));
    for (const host of this.hosts) this.schedule(host);
  }

  private schedule(host: Host): void {
    if (this.closed) return;
    const { intervalMs, jitterMs = 0 } = this.options.health;
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      void host.check().then(() => this.schedule(host));
    }, intervalMs + Math.random() * jitterMs);
    this.timers.add(timer);
  }

  /** The host the next call goes to: round robin over healthy hosts, over all of them in panic. */
  pick(): Host {
    const healthy = this.hosts.filter((h) => h.healthy);
    const panic = (healthy.length * 100) / this.hosts.length < (this.options.panicThresholdPercent ?? 50);
    const candidates = panic ? this.hosts : healthy;
    const host = candidates[this.next % candidates.length]!;
    this.next++;
    return host;
  }

  /** One HTTP request through the ext_proc filter of the host the balancer picks. */
  async request(request: SimulatedRequest): Promise<{ host: Host; outcome: Outcome }> {
    const host = this.pick();
    host.started++;
    host.active++;
    try {
      return { host, outcome: await host.emulator.request(request) };
    } finally {
      host.active--;
    }
  }

  close(): void {
    this.closed = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    for (const host of this.hosts) host.close();
  }
}
