// Admin HTTP listener over real sockets: probes read the same state as grpc.health.v1, /metrics serves the
// registry the server's observer feeds.
import type * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthChecker, parseListen, startAdmin, type RunningAdmin } from '../src/admin.js';
import { buildConfig } from '../src/config.js';
import { createLogger } from '../src/log.js';
import { createMetrics } from '../src/metrics.js';
import { EXT_PROC_SERVICE } from '../src/proto.js';
import { startServer, type RunningServer } from '../src/server.js';
import { checkHealth, extProcClient, imageHeaders, runCall } from './support/extproc-client.js';
import { parsePrometheus, sampleValue } from './support/prometheus.js';

describe('parseListen', () => {
  it.each([
    ['127.0.0.1:9090', { host: '127.0.0.1', port: 9090 }],
    ['0.0.0.0:0', { host: '0.0.0.0', port: 0 }],
    ['[::1]:9090', { host: '::1', port: 9090 }],
    ['localhost:8080', { host: 'localhost', port: 8080 }],
  ])('%s', (listen, expected) => {
    expect(parseListen(listen)).toEqual(expected);
  });

  it.each(['9090', 'host', 'host:99999', 'unix:/tmp/admin.sock', '::1:9090', ':9090'])('refuses %s', (listen) => {
    expect(() => parseListen(listen)).toThrow(/host:port/);
  });
});

describe('healthChecker', () => {
  it('answers what grpc.health.v1 Check answers, including for unknown services', () => {
    const health = new HealthImplementation({ [EXT_PROC_SERVICE]: 'SERVING' });
    const status = healthChecker(health);
    expect(status()).toBe('SERVING');
    health.setStatus(EXT_PROC_SERVICE, 'NOT_SERVING');
    expect(status()).toBe('NOT_SERVING');
    expect(healthChecker(health, 'some.other.Service')()).toBe('SERVICE_UNKNOWN');
  });
});

describe('admin listener', () => {
  const metrics = createMetrics();
  let server: RunningServer;
  let admin: RunningAdmin;
  let client: grpc.Client;
  let live = true;
  const url = (path: string): string => `http://${admin.address}${path}`;

  beforeAll(async () => {
    const logger = createLogger('silent');
    server = await startServer({ config: () => buildConfig({ listen: '127.0.0.1:0' }), logger, observer: metrics.observer });
    metrics.watch(server);
    const status = healthChecker(server.health);
    admin = await startAdmin({
      listen: '127.0.0.1:0',
      registry: metrics.registry,
      isReady: () => status() === 'SERVING',
      isLive: () => live,
      logger,
    });
    client = extProcClient(server.addresses.listen);
  });

  afterAll(async () => {
    client?.close();
    await admin?.close();
    await server?.shutdown(1_000);
  });

  it('reports the bound port', () => {
    expect(admin.address).toMatch(/^127\.0\.0\.1:[1-9]\d*$/);
  });

  it('/healthz answers 200 ok while live, 503 otherwise', async () => {
    let response = await fetch(url('/healthz'));
    expect(response.status).toBe(200);
    expect(await response.text()).toBe('ok\n');
    live = false;
    response = await fetch(url('/healthz'));
    live = true;
    expect(response.status).toBe(503);
  });

  it('/readyz follows the gRPC health status of the ext_proc service on the ext_proc port', async () => {
    expect(await checkHealth(server.addresses.listen)).toBe('SERVING');
    expect((await fetch(url('/readyz'))).status).toBe(200);

    server.setServing(false);
    expect(await checkHealth(server.addresses.listen)).toBe('NOT_SERVING');
    const draining = await fetch(url('/readyz'));
    expect(draining.status).toBe(503);
    expect(await draining.text()).toBe('not serving\n');

    server.setServing(true);
    expect(await checkHealth(server.addresses.listen)).toBe('SERVING');
    expect((await fetch(url('/readyz'))).status).toBe(200);
  });

  it('/metrics serves Prometheus text including the calls just made', async () => {
    const body = '{"prompt":"a red kite","model":"gpt-image-1","n":1}';
    const { status } = await runCall(client, imageHeaders({ contentLength: body.length }), body);
    expect(status.code).toBe(0);

    const response = await fetch(url('/metrics'));
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(response.headers.get('cache-control')).toBe('no-store');
    const samples = parsePrometheus(await response.text());
    expect(sampleValue(samples, 'extproc_requests_rewritten_total', { route: 'deployment', operation: 'generations', body: 'json' })).toBe(1);
    expect(sampleValue(samples, 'extproc_calls_total', { end: 'completed' })).toBe(1);
    expect(sampleValue(samples, 'extproc_message_duration_seconds_count', { kind: 'request_body' })).toBe(1);
    expect(sampleValue(samples, 'extproc_process_resident_memory_bytes')).toBeGreaterThan(0);
  });

  it('ignores query strings, answers HEAD, refuses other methods and unknown paths', async () => {
    expect((await fetch(url('/readyz?verbose=1'))).status).toBe(200);
    const head = await fetch(url('/healthz'), { method: 'HEAD' });
    expect(head.status).toBe(200);
    const post = await fetch(url('/metrics'), { method: 'POST', body: 'x' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, HEAD');
    expect((await fetch(url('/'))).status).toBe(404);
    expect((await fetch(url('/metrics/extra'))).status).toBe(404);
  });

  it('close() returns promptly with a keep-alive connection open and frees the port', async () => {
    const extra = await startAdmin({
      listen: '127.0.0.1:0',
      registry: metrics.registry,
      isReady: () => true,
      isLive: () => true,
      logger: createLogger('silent'),
    });
    // fetch keeps the connection alive after this response.
    expect((await fetch(`http://${extra.address}/healthz`)).status).toBe(200);
    const started = performance.now();
    await extra.close();
    expect(performance.now() - started).toBeLessThan(1_000);
    await expect(fetch(`http://${extra.address}/healthz`)).rejects.toThrow();
  });

  it('refuses to start on a port already in use', async () => {
    await expect(
      startAdmin({ listen: admin.address, registry: metrics.registry, isReady: () => true, isLive: () => true, logger: createLogger('silent') }),
    ).rejects.toThrow(`adminListen: ${admin.address} is already in use`);
  });
});
