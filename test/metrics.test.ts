// Metrics: the observer turns call reports into the documented series, and a real server drives them.
import type * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildConfig } from '../src/config.js';
import { createLogger } from '../src/log.js';
import { MESSAGE_DURATION_BUCKETS, createMetrics } from '../src/metrics.js';
import { startServer, type RunningServer } from '../src/server.js';
import type { CallResult } from '../src/call/index.js';
import { extProcClient, imageHeaders, openCall, requestHeaders, runCall } from './support/extproc-client.js';
import { metricTypes, parsePrometheus, sampleValue } from './support/prometheus.js';

const rewrittenResult: CallResult = {
  kind: 'rewritten',
  report: {
    route: { kind: 'deployment', deployment: 'customer-deployment-name', operation: 'edits', prefix: '', query: '', pathname: '/x' },
    bodyKind: 'multipart',
    mode: 'STREAMED',
    bytesIn: 1_000,
    bytesOut: 870,
    changes: ['model'],
  },
};

describe('createMetrics (observer -> series)', () => {
  it('declares every family with its type, and pre-creates bounded series at 0', async () => {
    const { registry } = createMetrics();
    const text = await registry.metrics();
    const types = metricTypes(text);
    expect(Object.fromEntries([...types].filter(([name]) => !name.startsWith('extproc_process_') && !name.startsWith('extproc_nodejs_')))).toEqual({
      extproc_message_duration_seconds: 'histogram',
      extproc_call_duration_seconds: 'histogram',
      extproc_active_calls: 'gauge',
      extproc_body_bytes_held: 'gauge',
      extproc_body_bytes_budget: 'gauge',
      extproc_build_info: 'gauge',
      extproc_requests_rewritten_total: 'counter',
      extproc_requests_passed_total: 'counter',
      extproc_requests_rejected_total: 'counter',
      extproc_body_bytes_removed_total: 'counter',
      extproc_calls_total: 'counter',
      extproc_config_reloads_total: 'counter',
    });
    // Process metrics come from collectDefaultMetrics under the same prefix.
    expect(types.get('extproc_process_cpu_user_seconds_total')).toBe('counter');
    expect(types.get('extproc_process_resident_memory_bytes')).toBe('gauge');
    expect(types.get('extproc_nodejs_eventloop_lag_seconds')).toBe('gauge');

    const samples = parsePrometheus(text);
    expect(sampleValue(samples, 'extproc_requests_passed_total', { reason: 'invalid_body' })).toBe(0);
    expect(sampleValue(samples, 'extproc_calls_total', { end: 'cancelled' })).toBe(0);
    expect(sampleValue(samples, 'extproc_config_reloads_total', { result: 'failure' })).toBe(0);
    expect(sampleValue(samples, 'extproc_message_duration_seconds_count', { kind: 'request_body' })).toBe(0);
    expect(sampleValue(samples, 'extproc_body_bytes_removed_total')).toBe(0);
  });

  it('uses message-duration buckets from 50 µs', async () => {
    const { registry, observer } = createMetrics();
    observer.messageProcessed!('request_headers', 0.00003);
    observer.messageProcessed!('request_headers', 0.0002);
    const samples = parsePrometheus(await registry.metrics());
    const buckets = samples
      .filter((s) => s.name === 'extproc_message_duration_seconds_bucket' && s.labels.kind === 'request_headers')
      .map((s) => [s.labels.le === '+Inf' ? Infinity : Number(s.labels.le), s.value]);
    expect(buckets.map(([le]) => le)).toEqual([...MESSAGE_DURATION_BUCKETS, Infinity]);
    expect(buckets[0]).toEqual([0.00005, 1]);
    expect(buckets[2]).toEqual([0.00025, 2]);
  });

  it('counts finished calls by outcome, never with deployment names as labels', async () => {
    const { registry, observer } = createMetrics();
    observer.callStarted!();
    observer.callStarted!();
    observer.callStarted!();
    observer.callFinished!(rewrittenResult, 40, 'completed');
    observer.callFinished!({ kind: 'passed', reason: 'content_type' }, 2, 'cancelled');
    const text = await registry.metrics();
    const samples = parsePrometheus(text);
    expect(sampleValue(samples, 'extproc_active_calls')).toBe(1);
    expect(sampleValue(samples, 'extproc_requests_rewritten_total', { route: 'deployment', operation: 'edits', body: 'multipart' })).toBe(1);
    expect(sampleValue(samples, 'extproc_body_bytes_removed_total')).toBe(130);
    expect(sampleValue(samples, 'extproc_requests_passed_total', { reason: 'content_type' })).toBe(1);
    expect(sampleValue(samples, 'extproc_calls_total', { end: 'completed' })).toBe(1);
    expect(sampleValue(samples, 'extproc_calls_total', { end: 'cancelled' })).toBe(1);
    expect(sampleValue(samples, 'extproc_call_duration_seconds_count')).toBe(2);
    expect(sampleValue(samples, 'extproc_call_duration_seconds_sum')).toBeCloseTo(0.042, 6);
    expect(text).not.toContain('customer-deployment-name');
  });

  it('exposes rejections, config reloads and the bytes held by the running server', async () => {
    const metrics = createMetrics();
    let held = 4_096;
    metrics.watch({ heldBytes: () => held });
    const route = { kind: 'deployment', deployment: 'd', operation: 'edits', prefix: '', query: '', pathname: '/' } as const;
    metrics.observer.callStarted?.();
    metrics.observer.callFinished?.({ kind: 'rejected', reason: 'body_too_large', route }, 1, 'completed');
    metrics.configReloaded(true);
    metrics.configReloaded(false);
    metrics.configReloaded(false);
    let samples = parsePrometheus(await metrics.registry.metrics());
    expect(sampleValue(samples, 'extproc_requests_rejected_total', { reason: 'body_too_large' })).toBe(1);
    expect(sampleValue(samples, 'extproc_config_reloads_total', { result: 'success' })).toBe(1);
    expect(sampleValue(samples, 'extproc_config_reloads_total', { result: 'failure' })).toBe(2);
    expect(sampleValue(samples, 'extproc_body_bytes_held')).toBe(4_096);
    held = 0;
    samples = parsePrometheus(await metrics.registry.metrics());
    expect(sampleValue(samples, 'extproc_body_bytes_held')).toBe(0);
  });
});

describe('metrics driven by real calls', () => {
  const metrics = createMetrics();
  let server: RunningServer;
  let client: grpc.Client;

  beforeAll(async () => {
    server = await startServer({
      config: () => buildConfig({ listen: '127.0.0.1:0' }),
      logger: createLogger('silent'),
      observer: metrics.observer,
    });
    metrics.watch(server);
    client = extProcClient(server.addresses.listen);
  });

  afterAll(async () => {
    client?.close();
    await server?.shutdown(1_000);
  });

  it('counts rewritten and passed calls and times each message kind', async () => {
    const body = '{"model":"gpt-image-1","prompt":"a lighthouse at dawn"}';
    const rewritten = await runCall(client, imageHeaders({ contentLength: body.length }), body);
    expect(rewritten.status.code).toBe(0);
    const invalid = '{"model":"gpt-image-1","prompt":';
    expect((await runCall(client, imageHeaders({ contentLength: invalid.length }), invalid)).status.code).toBe(0);
    const chat = { ...imageHeaders(), ':path': '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21' };
    expect((await runCall(client, chat)).status.code).toBe(0);

    const samples = parsePrometheus(await metrics.registry.metrics());
    expect(sampleValue(samples, 'extproc_calls_total', { end: 'completed' })).toBe(3);
    expect(sampleValue(samples, 'extproc_calls_total', { end: 'error' })).toBe(0);
    expect(sampleValue(samples, 'extproc_requests_rewritten_total', { route: 'deployment', operation: 'generations', body: 'json' })).toBe(1);
    expect(sampleValue(samples, 'extproc_body_bytes_removed_total')).toBe('"model":"gpt-image-1",'.length);
    expect(sampleValue(samples, 'extproc_requests_passed_total', { reason: 'invalid_body' })).toBe(1);
    expect(sampleValue(samples, 'extproc_requests_passed_total', { reason: 'not_image_route' })).toBe(1);
    expect(sampleValue(samples, 'extproc_message_duration_seconds_count', { kind: 'request_headers' })).toBe(3);
    expect(sampleValue(samples, 'extproc_message_duration_seconds_count', { kind: 'request_body' })).toBe(2);
    expect(sampleValue(samples, 'extproc_message_duration_seconds_sum', { kind: 'request_body' })).toBeGreaterThan(0);
    expect(sampleValue(samples, 'extproc_call_duration_seconds_count')).toBe(3);
    expect(sampleValue(samples, 'extproc_active_calls')).toBe(0);
    expect(sampleValue(samples, 'extproc_body_bytes_held')).toBe(0);
  });

  it('shows a call in progress as active', async () => {
    const open = openCall(client);
    open.send(requestHeaders(imageHeaders({ contentLength: 100 })));
    await open.next();
    expect(sampleValue(parsePrometheus(await metrics.registry.metrics()), 'extproc_active_calls')).toBe(1);
    expect((await open.finish()).code).toBe(0);
    expect(sampleValue(parsePrometheus(await metrics.registry.metrics()), 'extproc_active_calls')).toBe(0);
  });

  // Node's HTTP/2 layer ends the readable side when the client resets the stream, so grpc-js emits 'end'
  // before 'cancelled': a client that went away mid-call must still count as cancelled.
  it('counts a client that resets mid-call as cancelled, not completed', async () => {
    const before = parsePrometheus(await metrics.registry.metrics());
    const abandoned = openCall(client);
    abandoned.send(requestHeaders(imageHeaders({ contentLength: 100 })));
    await abandoned.next();
    abandoned.cancel();
    await abandoned.status;
    let samples = before;
    for (let i = 0; i < 50 && sampleValue(samples, 'extproc_active_calls') !== 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      samples = parsePrometheus(await metrics.registry.metrics());
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
    samples = parsePrometheus(await metrics.registry.metrics());
    const delta = (end: string): number =>
      sampleValue(samples, 'extproc_calls_total', { end })! - sampleValue(before, 'extproc_calls_total', { end })!;
    expect({ cancelled: delta('cancelled'), completed: delta('completed') }).toEqual({ cancelled: 1, completed: 0 });
  });
});
