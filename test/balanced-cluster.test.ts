// The emulated Envoy cluster over several ext_proc hosts (test/envoy/balanced-cluster.ts): health check
// thresholds, round robin over healthy hosts, panic mode, and real grpc.health.v1 servers changing state.
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { afterEach, describe, expect, it } from 'vitest';
import { EXT_PROC_SERVICE } from '../src/proto.js';
import { BalancedCluster } from './envoy/balanced-cluster.js';
import { EnvoyEmulator } from './envoy/emulator.js';

// A generous timeout: the first check also opens the connection, and other test files load the CPU.
const HEALTH = { intervalMs: 50, timeoutMs: 2_000, unhealthyThreshold: 2, healthyThreshold: 1 };
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface HealthServer {
  target: string;
  health: HealthImplementation;
  server: grpc.Server;
}

async function healthServer(status: 'SERVING' | 'NOT_SERVING'): Promise<HealthServer> {
  const health = new HealthImplementation({ [EXT_PROC_SERVICE]: status });
  const server = new grpc.Server();
  health.addToServer(server);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, p) => (error ? reject(error) : resolve(p))),
  );
  return { target: `127.0.0.1:${port}`, health, server };
}

const servers: HealthServer[] = [];
const clusters: BalancedCluster[] = [];
afterEach(() => {
  clusters.splice(0).forEach((c) => c.close());
  servers.splice(0).forEach((s) => s.server.forceShutdown());
});

function clusterOf(targets: string[], panicThresholdPercent?: number): BalancedCluster {
  const cluster = new BalancedCluster(targets, (target) => new EnvoyEmulator({ target }), { health: HEALTH, panicThresholdPercent });
  clusters.push(cluster);
  return cluster;
}

const picks = (cluster: BalancedCluster, n: number) => Array.from({ length: n }, () => cluster.hosts.indexOf(cluster.pick()));

describe('health check thresholds (Envoy health_checker_impl)', () => {
  it('a healthy host leaves after unhealthy_threshold consecutive failures and returns after healthy_threshold successes', () => {
    const host = clusterOf(['127.0.0.1:1']).hosts[0]!;
    expect(host.healthy).toBe(false); // warming: unhealthy until the first check passes
    host.record(true);
    expect(host.healthy).toBe(true);
    host.record(false);
    expect(host.healthy).toBe(true); // one failure is not enough
    host.record(true);
    host.record(false);
    expect(host.healthy).toBe(true); // the success in between reset the count
    host.record(false);
    expect(host.healthy).toBe(false);
    expect(host.markedUnhealthyAt).toBeDefined();
    host.record(true);
    expect(host.healthy).toBe(true);
  });
});

describe('load balancing', () => {
  it('round robin per call over the healthy hosts only', () => {
    const cluster = clusterOf(['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3']);
    cluster.hosts[0]!.record(true);
    cluster.hosts[2]!.record(true);
    expect(picks(cluster, 6)).toEqual([0, 2, 0, 2, 0, 2]);
  });

  it('panic mode: with fewer healthy hosts than healthy_panic_threshold, all hosts get calls', () => {
    const three = clusterOf(['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3']);
    three.hosts[1]!.record(true); // 33% healthy < 50%
    expect(new Set(picks(three, 6))).toEqual(new Set([0, 1, 2]));
    const two = clusterOf(['127.0.0.1:1', '127.0.0.1:2']);
    two.hosts[1]!.record(true); // 50% healthy: not below the threshold
    expect(picks(two, 4)).toEqual([1, 1, 1, 1]);
  });
});

describe('against real grpc.health.v1 servers', () => {
  it('starts with the hosts that answer SERVING, drops one that turns NOT_SERVING, and one that stops answering', async () => {
    for (const status of ['SERVING', 'SERVING', 'NOT_SERVING'] as const) servers.push(await healthServer(status));
    const cluster = clusterOf(servers.map((s) => s.target));
    await cluster.start();
    expect(cluster.hosts.map((h) => h.healthy)).toEqual([true, true, false]);

    servers[0]!.health.setStatus(EXT_PROC_SERVICE, 'NOT_SERVING');
    const changed = performance.now();
    while (cluster.hosts[0]!.healthy && performance.now() - changed < 10_000) await sleep(10);
    expect(cluster.hosts[0]!.healthy).toBe(false);
    // Two failed checks, each at most interval + answer time.
    expect(cluster.hosts[0]!.markedUnhealthyAt! - changed).toBeLessThan(2 * (HEALTH.intervalMs + HEALTH.timeoutMs) + 100);
    expect(cluster.hosts[0]!.markedUnhealthyAt! - changed).toBeGreaterThanOrEqual(HEALTH.intervalMs);

    servers[2]!.health.setStatus(EXT_PROC_SERVICE, 'SERVING');
    servers[1]!.server.forceShutdown();
    const stopped = performance.now();
    while ((cluster.hosts[1]!.healthy || !cluster.hosts[2]!.healthy) && performance.now() - stopped < 10_000) await sleep(10);
    expect(cluster.hosts.map((h) => h.healthy)).toEqual([false, false, true]);
    // 1 of 3 healthy is below the 50% panic threshold: Envoy spreads calls over all hosts again.
    expect(new Set(picks(cluster, 3))).toEqual(new Set([0, 1, 2]));
  }, 30_000);
});
