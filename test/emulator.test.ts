// Self-tests of the Envoy emulation (test/envoy/) against small scripted ext_proc servers, most of
// them misbehaving on purpose. Each test pins one rule of docs/envoy-ext-proc.md.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { EmulatorOptions, Outcome } from './envoy/emulator.js';
import { EnvoyEmulator } from './envoy/emulator.js';
import { startDataPath } from './envoy/data-path.js';
import { ExtProcStream } from './envoy/grpc-stream.js';
import { EnvoyModel } from '../src/envoy-model/index.js';
import { InProcessTransport } from '../src/envoy-model/in-process.js';
import type { ScriptedCall, ScriptedServer, WireRequest } from './envoy/fixtures.js';
import { answering, answeringKind, continueFor, getHeader, requestHeaders, setHeader, startScriptedServer, wireHeader } from './envoy/fixtures.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function server(script: (call: ScriptedCall) => void | Promise<void>, address?: string): Promise<ScriptedServer> {
  const s = await startScriptedServer(script, address);
  cleanups.push(() => s.close());
  return s;
}

function envoy(target: string, options: Omit<EmulatorOptions, 'target'> = {}): EnvoyEmulator {
  const e = new EnvoyEmulator({ target, messageTimeoutMs: 2000, ...options });
  cleanups.push(() => e.close());
  return e;
}

async function until(done: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !done(); i++) await new Promise((r) => setTimeout(r, 5));
}

function upstreamOf(outcome: Outcome) {
  if (outcome.kind !== 'upstream') throw new Error(`expected upstream, got ${outcome.kind}: ${'details' in outcome ? outcome.details : ''}`);
  return outcome.upstream;
}

function localReplyOf(outcome: Outcome) {
  if (outcome.kind !== 'local_reply') throw new Error(`expected local_reply, got ${outcome.kind}`);
  return outcome;
}

/** A server that answers request_headers with this header_mutation and everything else with CONTINUE. */
const mutatingRequestHeaders = (mutation: object) => answeringKind('request_headers', { request_headers: { response: { header_mutation: mutation } } });

const POST = (path = '/v1/x', extra: Record<string, string> = {}) => requestHeaders('POST', path, extra);
const GET = (path = '/v1/x') => requestHeaders('GET', path);

describe('what Envoy sends', () => {
  it('sends lower-case keys with values in raw_value, pseudo-headers and HCM extras, end_of_stream without a body', async () => {
    const s = await server(answering());
    const out = await envoy(s.target).request({ headers: [[':method', 'GET'], [':path', '/a?b=1'], ['Host', 'h.test'], ['X-Custom', 'V1'], ['x-custom', 'v2']] });
    upstreamOf(out);
    const msg = s.calls[0].received[0];
    expect(msg.request).toBe('request_headers');
    expect(msg.request_headers?.end_of_stream).toBe(true);
    const headers = msg.request_headers!.headers!.headers;
    expect(headers.every((h) => h.value === '' && h.key === h.key.toLowerCase())).toBe(true);
    expect(wireHeader(msg.request_headers, ':authority')).toBe('h.test');
    expect(wireHeader(msg.request_headers, ':path')).toBe('/a?b=1');
    expect(wireHeader(msg.request_headers, ':scheme')).toBe('http');
    expect(headers.some((h) => h.key === 'host')).toBe(false);
    expect(headers.filter((h) => h.key === 'x-custom').map((h) => h.raw_value.toString())).toEqual(['V1', 'v2']);
    expect(wireHeader(msg.request_headers, 'x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
    expect(wireHeader(msg.request_headers, 'x-forwarded-proto')).toBe('http');
  });

  it('puts protocol_config on the first message only and metadata_context on every message', async () => {
    const s = await server(answering());
    const e = envoy(s.target, { processingMode: { requestBodyMode: 'BUFFERED', responseHeaderMode: 'SKIP' } });
    await e.request({ headers: POST(), body: Buffer.from('{}') });
    const [first, second] = s.calls[0].received;
    expect(first.protocol_config).toMatchObject({ request_body_mode: 'BUFFERED', response_body_mode: 'NONE' });
    expect(second.request).toBe('request_body');
    expect(second.protocol_config).toBeNull();
    expect(first.metadata_context).not.toBeNull();
    expect(second.metadata_context).not.toBeNull();
  });

  it('sends no protocol_config before 1.34', async () => {
    const s = await server(answering());
    await envoy(s.target, { envoyVersion: '1.33' }).request({ headers: GET() });
    expect(s.calls[0].received[0].protocol_config).toBeNull();
  });
});

describe('header mutations', () => {
  it('a value-only header becomes an empty header', async () => {
    const s = await server(mutatingRequestHeaders({ set_headers: [{ header: { key: 'x-api-key', value: 'secret' } }] }));
    const up = upstreamOf(await envoy(s.target).request({ headers: GET() }));
    expect(getHeader(up.headers, 'x-api-key')).toBe('');
  });

  it('value and raw_value both set is an error: 500', async () => {
    const s = await server(mutatingRequestHeaders({ set_headers: [{ header: { key: 'x-a', value: 'v', raw_value: Buffer.from('v') } }] }));
    const out = localReplyOf(await envoy(s.target).request({ headers: GET() }));
    expect(out.status).toBe(500);
    expect(out.details).toContain('Only_one_of_value_or_raw_value');
  });

  it('an invalid header value is an error, and status_on_error picks the status', async () => {
    const s = await server(mutatingRequestHeaders({ set_headers: [setHeader('x-a', 'bad\r\nvalue')] }));
    expect(localReplyOf(await envoy(s.target, { statusOnError: 503 }).request({ headers: GET() })).status).toBe(503);
  });

  it(':authority, :method, x-envoy-* changes and removing :path are dropped silently; :path is allowed', async () => {
    const s = await server(
      mutatingRequestHeaders({
        set_headers: [setHeader(':authority', 'evil.test'), setHeader(':method', 'PUT'), setHeader('x-envoy-foo', '1'), setHeader(':path', '/rewritten')],
        remove_headers: [':path', 'host'],
      }),
    );
    const out = await envoy(s.target).request({ headers: GET('/orig') });
    const up = upstreamOf(out);
    expect(getHeader(up.headers, ':authority')).toBe('example.test');
    expect(getHeader(up.headers, ':method')).toBe('GET');
    expect(getHeader(up.headers, 'x-envoy-foo')).toBeUndefined();
    expect(getHeader(up.headers, ':path')).toBe('/rewritten');
    expect(out.counters.rejected_header_mutations).toBe(5);
  });

  it('with disallow_is_error a refused mutation is a 500; allow_all_routing lets :authority through', async () => {
    const answer = mutatingRequestHeaders({ set_headers: [setHeader(':authority', 'other.test')] });
    const s = await server(answer);
    expect(localReplyOf(await envoy(s.target, { mutationRules: { disallowIsError: true } }).request({ headers: GET() })).status).toBe(500);
    const up = upstreamOf(await envoy(s.target, { mutationRules: { allowAllRouting: true } }).request({ headers: GET() }));
    expect(getHeader(up.headers, ':authority')).toBe('other.test');
  });

  it('removes come before sets; append defaults to overwrite; append:true adds an entry; append_action is ignored', async () => {
    const s = await server(
      mutatingRequestHeaders({
        set_headers: [
          setHeader('x-a', 'new'),
          { header: { key: 'x-b', raw_value: Buffer.from('2') }, append_action: 'APPEND_IF_EXISTS_OR_ADD' },
          setHeader('x-c', '2', true),
        ],
        remove_headers: ['x-a'],
      }),
    );
    const up = upstreamOf(await envoy(s.target).request({ headers: requestHeaders('GET', '/', { 'x-a': 'old', 'x-b': '1', 'x-c': '1' }) }));
    expect(up.headers.filter(([k]) => k === 'x-a').map(([, v]) => v)).toEqual(['new']);
    expect(up.headers.filter(([k]) => k === 'x-b').map(([, v]) => v)).toEqual(['2']);
    expect(up.headers.filter(([k]) => k === 'x-c').map(([, v]) => v)).toEqual(['1', '2']);
  });

  it('more than max_headers_count set_headers is an error', async () => {
    const many = Array.from({ length: 101 }, (_, i) => setHeader(`x-h${i}`, 'v'));
    const s = await server(mutatingRequestHeaders({ set_headers: many }));
    expect(localReplyOf(await envoy(s.target).request({ headers: GET() })).status).toBe(500);
  });
});

describe('response matching and failures', () => {
  const wrongKind = answeringKind('request_headers', { response_headers: { response: {} } });

  it('a response of the wrong kind is spurious: 500 from 1.35 on', async () => {
    const s = await server(wrongKind);
    const out = localReplyOf(await envoy(s.target, { envoyVersion: '1.40' }).request({ headers: GET() }));
    expect(out.status).toBe(500);
    expect(out.details).toBe('spurious_message');
    expect(out.counters.spurious_msgs_received).toBe(1);
  });

  it('a response of the wrong kind is ignored before 1.35 (request continues unmodified)', async () => {
    const s = await server(wrongKind);
    const out = await envoy(s.target, { envoyVersion: '1.34' }).request({ headers: GET() });
    expect(upstreamOf(out).headers).toContainEqual([':path', '/v1/x']);
    expect(out.counters.spurious_msgs_received).toBe(1);
    expect(out.streamClosedBy).toBe('envoy-spurious');
  });

  it('a response without any oneof member (only dynamic_metadata) is spurious', async () => {
    const s = await server(answering(() => ({ dynamic_metadata: { fields: {} } })));
    expect(localReplyOf(await envoy(s.target).request({ headers: GET() })).details).toBe('unhandled_message');
  });

  it('an immediate_response while disable_immediate_response is spurious', async () => {
    const s = await server(answering(() => ({ immediate_response: { status: { code: 403 } } })));
    const out = localReplyOf(await envoy(s.target, { disableImmediateResponse: true }).request({ headers: GET() }));
    expect(out.status).toBe(500);
  });

  it('no answer within message_timeout: 504, or pass-through with failure_mode_allow', async () => {
    const s = await server(() => undefined);
    const out = localReplyOf(await envoy(s.target, { messageTimeoutMs: 50 }).request({ headers: GET() }));
    expect(out.status).toBe(504);
    expect(out.details).toBe('ext_proc_error_per-message_timeout_exceeded');
    expect(out.counters.message_timeouts).toBe(1);
    const open = await envoy(s.target, { messageTimeoutMs: 50, failureModeAllow: true }).request({ headers: GET() });
    expect(open.kind).toBe('upstream');
    expect(open.counters.failure_mode_allowed).toBe(1);
  });

  it('override_message_timeout extends the timer once, only up to max_message_timeout', async () => {
    const s = await server(async (call) => {
      const m = await call.next();
      call.send({ override_message_timeout: { seconds: 3, nanos: 0 } });
      await new Promise((r) => setTimeout(r, 1200));
      call.send(continueFor(m));
    });
    // Timeouts with room for a busy machine: the override must arrive within 1 s, the answer after 1.2 s.
    const extended = await envoy(s.target, { messageTimeoutMs: 1000, maxMessageTimeoutMs: 5000 }).request({ headers: GET() });
    expect(extended.kind).toBe('upstream');
    expect(extended.counters.override_message_timeout_received).toBe(1);
    const notAllowed = await envoy(s.target, { messageTimeoutMs: 1000 }).request({ headers: GET() });
    expect(localReplyOf(notAllowed).status).toBe(504);
    expect(notAllowed.counters.override_message_timeout_ignored).toBe(1);
  });

  it('the server ending the call with OK before answering: continue unmodified', async () => {
    const s = await server(async (call) => {
      await call.next();
      call.end();
    });
    const out = await envoy(s.target, { processingMode: { requestBodyMode: 'BUFFERED' } }).request({ headers: POST(), body: Buffer.from('abc') });
    expect(upstreamOf(out).body.toString()).toBe('abc');
    expect(out.streamClosedBy).toBe('server');
    expect(s.calls[0].received).toHaveLength(1);
  });

  it('the server failing the call: 500 with the gRPC status in the details, or pass-through', async () => {
    const s = await server(async (call) => {
      await call.next();
      call.fail(grpc.status.UNAVAILABLE, 'going away');
    });
    const out = localReplyOf(await envoy(s.target).request({ headers: GET() }));
    expect(out.status).toBe(500);
    expect(out.details).toBe('ext_proc_error_gRPC_error_14{going_away}');
    expect((await envoy(s.target, { failureModeAllow: true }).request({ headers: GET() })).kind).toBe('upstream');
  });

  it('an unreachable server: 500', async () => {
    const out = await envoy('127.0.0.1:1').request({ headers: GET() });
    expect(localReplyOf(out).status).toBe(500);
  });

  it('ending with an error after the last answer still fails the request while Envoy keeps the stream (< 1.37)', async () => {
    const s = await server(async (call) => {
      const m = await call.next();
      call.send(continueFor(m));
      call.fail(grpc.status.INTERNAL, 'oops');
    });
    const response = async () => {
      await new Promise((r) => setTimeout(r, 100));
      return { headers: [[':status', '200']] as Array<[string, string]> };
    };
    const opts = { processingMode: { responseHeaderMode: 'SKIP' as const } };
    const old = await envoy(s.target, { ...opts, envoyVersion: '1.36' }).request({ headers: GET(), response });
    expect(localReplyOf(old).status).toBe(500);
    // 1.37+ closed the stream right after the headers answer, so the late error is never seen.
    const current = await envoy(s.target, { ...opts, envoyVersion: '1.37' }).request({ headers: GET(), response });
    expect(current.kind).toBe('upstream');
  });
});

describe('content-length', () => {
  const mutateBody = (fixLength: boolean) =>
    answeringKind('request_body', {
      request_body: {
        response: {
          body_mutation: { body: Buffer.from('longer body') },
          ...(fixLength ? { header_mutation: { set_headers: [setHeader('content-length', '11')] } } : {}),
        },
      },
    });

  it('BUFFERED + headers SEND: a mutated body with the old content-length is a 500', async () => {
    const s = await server(mutateBody(false));
    const out = localReplyOf(await envoy(s.target, { processingMode: { requestBodyMode: 'BUFFERED' } }).request({ headers: POST('/x', { 'content-length': '3' }), body: Buffer.from('abc') }));
    expect(out.status).toBe(500);
    expect(out.details).toBe('mismatch_between_content_length_and_the_length_of_the_mutated_body');
  });

  it('BUFFERED + headers SEND: content-length fixed in the same body response passes', async () => {
    const s = await server(mutateBody(true));
    const up = upstreamOf(await envoy(s.target, { processingMode: { requestBodyMode: 'BUFFERED' } }).request({ headers: POST('/x', { 'content-length': '3' }), body: Buffer.from('abc') }));
    expect(up.body.toString()).toBe('longer body');
    expect(getHeader(up.headers, 'content-length')).toBe('11');
  });

  it('STREAMED removes content-length at header time (server still sees it) and drops it from set_headers', async () => {
    const s = await server(mutatingRequestHeaders({ set_headers: [setHeader('content-length', '3')] }));
    const up = upstreamOf(await envoy(s.target, { processingMode: { requestBodyMode: 'STREAMED' } }).request({ headers: POST('/x', { 'content-length': '3' }), body: Buffer.from('abc') }));
    expect(wireHeader(s.calls[0].received[0].request_headers, 'content-length')).toBe('3');
    expect(getHeader(up.headers, 'content-length')).toBeUndefined();
    expect(up.contentLengthRemoved).toBe(true);
  });

  it('NONE overridden to STREAMED keeps the original content-length', async () => {
    const s = await server(answeringKind('request_headers', { request_headers: { response: {} }, mode_override: { request_body_mode: 'STREAMED' } }));
    const out = await envoy(s.target, { allowModeOverride: true }).request({ headers: POST('/x', { 'content-length': '3' }), body: Buffer.from('abc') });
    const up = upstreamOf(out);
    expect(getHeader(up.headers, 'content-length')).toBe('3');
    expect(s.calls[0].received.map((m) => m.request)).toEqual(['request_headers', 'request_body']);
  });

  it('CONTINUE_AND_REPLACE with a body removes content-length and replaces the body', async () => {
    const s = await server(answeringKind('request_headers', { request_headers: { response: { status: 'CONTINUE_AND_REPLACE', body_mutation: { body: Buffer.from('replaced') } } } }));
    const up = upstreamOf(await envoy(s.target).request({ headers: POST('/x', { 'content-length': '3' }), body: Buffer.from('abc') }));
    expect(up.body.toString()).toBe('replaced');
    expect(up.contentLengthRemoved).toBe(true);
  });
});

describe('mode_override', () => {
  const toBuffered = answeringKind('request_headers', { request_headers: { response: {} }, mode_override: { request_body_mode: 'BUFFERED' } });

  it('NONE -> BUFFERED with end_of_stream headers: no body message ever', async () => {
    const s = await server(toBuffered);
    const out = await envoy(s.target, { allowModeOverride: true }).request({ headers: GET() });
    upstreamOf(out);
    expect(s.calls[0].received.map((m) => m.request)).toEqual(['request_headers']);
  });

  it('NONE -> BUFFERED with a body: one body message with the whole body', async () => {
    const s = await server(toBuffered);
    await envoy(s.target, { allowModeOverride: true }).request({ headers: POST(), body: [Buffer.from('ab'), Buffer.from('cd')] });
    const body = s.calls[0].received[1];
    expect(body.request).toBe('request_body');
    expect(body.request_body).toMatchObject({ end_of_stream: true });
    expect(body.request_body!.body.toString()).toBe('abcd');
  });

  it('is ignored when allow_mode_override is false', async () => {
    const s = await server(toBuffered);
    await envoy(s.target).request({ headers: POST(), body: Buffer.from('abc') });
    expect(s.calls[0].received.map((m) => m.request)).toEqual(['request_headers']);
  });

  it('is ignored unless it equals an allowed_override_modes entry (raw enum values)', async () => {
    const s = await server(toBuffered);
    // Filter config leaves response_header_mode DEFAULT, so an entry saying SEND does not match.
    await envoy(s.target, { allowModeOverride: true, allowedOverrideModes: [{ requestBodyMode: 'BUFFERED', responseHeaderMode: 'SEND' }] }).request({ headers: POST(), body: Buffer.from('abc') });
    expect(s.calls[0].received.map((m) => m.request)).toEqual(['request_headers']);
    await envoy(s.target, { allowModeOverride: true, allowedOverrideModes: [{ requestBodyMode: 'BUFFERED' }] }).request({ headers: POST(), body: Buffer.from('abc') });
    expect(s.calls[1].received.map((m) => m.request)).toEqual(['request_headers', 'request_body']);
  });

  it('omitted header modes keep the filter config (1.34+) but meant SEND before; body modes always come from the override', async () => {
    const s = await server(toBuffered);
    const opts = { allowModeOverride: true, processingMode: { responseHeaderMode: 'SKIP' as const } };
    const response = { headers: [[':status', '200']] as Array<[string, string]> };
    await envoy(s.target, { ...opts, envoyVersion: '1.34' }).request({ headers: POST(), body: Buffer.from('a'), response });
    expect(s.calls[0].received.map((m) => m.request)).toEqual(['request_headers', 'request_body']);
    await envoy(s.target, { ...opts, envoyVersion: '1.33' }).request({ headers: POST(), body: Buffer.from('a'), response });
    expect(s.calls[1].received.map((m) => m.request)).toEqual(['request_headers', 'request_body', 'response_headers']);
  });

  it('is ignored outside header responses', async () => {
    const s = await server(answeringKind('request_body', { request_body: { response: {} }, mode_override: { response_header_mode: 'SKIP' } }));
    await envoy(s.target, { allowModeOverride: true, processingMode: { requestBodyMode: 'BUFFERED' } }).request({
      headers: POST(),
      body: Buffer.from('a'),
      response: { headers: [[':status', '200']] },
    });
    expect(s.calls[0].received.map((m) => m.request)).toEqual(['request_headers', 'request_body', 'response_headers']);
  });
});

describe('route cache', () => {
  const rewrite = (withMutation: boolean) =>
    answeringKind('request_headers', {
      request_headers: { response: { clear_route_cache: true, ...(withMutation ? { header_mutation: { set_headers: [setHeader(':path', '/new')] } } : {}) } },
    });

  it('clear_route_cache without a header_mutation is ignored', async () => {
    const s = await server(rewrite(false));
    const out = await envoy(s.target).request({ headers: GET() });
    expect(upstreamOf(out).routeRecomputed).toBe(false);
    expect(out.counters.clear_route_cache_ignored).toBe(1);
  });

  it('clear_route_cache with a header_mutation recomputes the route, unless route_cache_action RETAIN', async () => {
    const s = await server(rewrite(true));
    expect(upstreamOf(await envoy(s.target).request({ headers: GET() })).routeRecomputed).toBe(true);
    const retained = await envoy(s.target, { routeCacheAction: 'RETAIN' }).request({ headers: GET() });
    expect(upstreamOf(retained).routeRecomputed).toBe(false);
    expect(retained.counters.clear_route_cache_disabled).toBe(1);
  });
});

describe('body modes', () => {
  it('STREAMED pipelines every chunk before any answer and re-injects answers in order', async () => {
    const s = await server(async (call) => {
      const headers = await call.next();
      call.send(continueFor(headers));
      const chunks: WireRequest[] = [];
      for (let i = 0; i < 3; i++) chunks.push(await call.next()); // all three arrive unanswered
      for (const c of chunks) call.send({ request_body: { response: { body_mutation: { body: Buffer.from(c.request_body!.body.toString().toUpperCase()) } } } });
    });
    const out = await envoy(s.target, { processingMode: { requestBodyMode: 'STREAMED', responseHeaderMode: 'SKIP' } }).request({
      headers: POST(),
      body: [Buffer.from('ab'), Buffer.from('cd'), Buffer.from('ef')],
    });
    expect(upstreamOf(out).body.toString()).toBe('ABCDEF');
    const eos = s.calls[0].received.slice(1).map((m) => m.request_body!.end_of_stream);
    expect(eos).toEqual([false, false, true]);
    expect(out.streamClosedBy).toBe('envoy-early-close');
  });

  it("STREAMED with the body already there when the headers answer comes: one message ('with-headers')", async () => {
    const s = await server(answering());
    await envoy(s.target, { processingMode: { requestBodyMode: 'STREAMED' } }).request({
      headers: POST(),
      body: [Buffer.from('ab'), Buffer.from('cd')],
      bodyArrival: 'with-headers',
    });
    const bodies = s.calls[0].received.filter((m) => m.request === 'request_body');
    expect(bodies).toHaveLength(1);
    expect(bodies[0].request_body).toMatchObject({ end_of_stream: true });
    expect(bodies[0].request_body!.body.toString()).toBe('abcd');
  });

  it('BUFFERED with trailers: body with end_of_stream false, then the trailers message (trailer mode SEND)', async () => {
    const s = await server(answering());
    const out = await envoy(s.target, { processingMode: { requestBodyMode: 'BUFFERED', requestTrailerMode: 'SEND', responseHeaderMode: 'SKIP' } }).request({
      headers: POST(),
      body: Buffer.from('abc'),
      trailers: [['x-checksum', '1']],
    });
    expect(s.calls[0].received.map((m) => m.request)).toEqual(['request_headers', 'request_body', 'request_trailers']);
    expect(s.calls[0].received[1].request_body!.end_of_stream).toBe(false);
    expect(upstreamOf(out).trailers).toEqual([['x-checksum', '1']]);
  });

  it('header mutations in STREAMED body responses are ignored, in BUFFERED applied', async () => {
    const script = answeringKind('request_body', { request_body: { response: { header_mutation: { set_headers: [setHeader('x-from-body', '1')] } } } });
    const s = await server(script);
    const streamed = upstreamOf(await envoy(s.target, { processingMode: { requestBodyMode: 'STREAMED' } }).request({ headers: POST(), body: Buffer.from('a') }));
    expect(getHeader(streamed.headers, 'x-from-body')).toBeUndefined();
    const buffered = upstreamOf(await envoy(s.target, { processingMode: { requestBodyMode: 'BUFFERED' } }).request({ headers: POST(), body: Buffer.from('a') }));
    expect(getHeader(buffered.headers, 'x-from-body')).toBe('1');
  });

  it('FULL_DUPLEX_STREAMED: chunks go out at once, streamed_response answers, no per-message timer', async () => {
    const s = await server(async (call) => {
      const headers = await call.next();
      const first = await call.next(); // arrives before the headers answer
      const second = await call.next();
      await new Promise((r) => setTimeout(r, 120)); // longer than message_timeout: no timer in this mode
      call.send(continueFor(headers));
      const joined = Buffer.concat([first.request_body!.body, second.request_body!.body]).toString();
      call.send({ request_body: { response: { body_mutation: { streamed_response: { body: Buffer.from(`[${joined}]`), end_of_stream: false } } } } });
      call.send({ request_body: { response: { body_mutation: { streamed_response: { body: Buffer.from('!'), end_of_stream: true } } } } });
    });
    const out = await envoy(s.target, { messageTimeoutMs: 50, processingMode: { requestBodyMode: 'FULL_DUPLEX_STREAMED', requestTrailerMode: 'SEND', responseHeaderMode: 'SKIP' } }).request({
      headers: POST(),
      body: [Buffer.from('ab'), Buffer.from('cd')],
    });
    expect(upstreamOf(out).body.toString()).toBe('[abcd]!');
    expect(out.counters.message_timeouts).toBe(0);
    expect(out.streamClosedBy).toBe('envoy-early-close');
  });

  it('FULL_DUPLEX_STREAMED rejects a plain body mutation as spurious', async () => {
    const s = await server(answeringKind('request_body', { request_body: { response: { body_mutation: { body: Buffer.from('x') } } } }));
    const out = await envoy(s.target, { processingMode: { requestBodyMode: 'FULL_DUPLEX_STREAMED', requestTrailerMode: 'SEND' } }).request({ headers: POST(), body: Buffer.from('a') });
    expect(localReplyOf(out).status).toBe(500);
  });

  it('BUFFERED over the buffer limit: 413 on requests', async () => {
    const s = await server(answering());
    const out = localReplyOf(
      await envoy(s.target, { bufferLimitBytes: 1024, processingMode: { requestBodyMode: 'BUFFERED' } }).request({
        headers: POST(),
        body: [Buffer.alloc(600), Buffer.alloc(600)],
      }),
    );
    expect(out.status).toBe(413);
    expect(out.details).toBe('request_payload_too_large');
    expect(s.calls[0].received.map((m) => m.request)).toEqual(['request_headers']);
  });

  it('BUFFERED over the buffer limit on responses: 500 (headers not sent yet)', async () => {
    const s = await server(answering());
    const out = await envoy(s.target, { bufferLimitBytes: 1024, processingMode: { responseBodyMode: 'BUFFERED' } }).request({
      headers: GET(),
      response: { headers: [[':status', '200']], body: [Buffer.alloc(600), Buffer.alloc(600)] },
    });
    expect(localReplyOf(out).status).toBe(500);
    expect(localReplyOf(out).details).toBe('response_payload_too_large');
  });

  it('STREAMED is not limited by the buffer (flow control only)', async () => {
    const s = await server(answering());
    const out = await envoy(s.target, { bufferLimitBytes: 1024, processingMode: { requestBodyMode: 'STREAMED' } }).request({ headers: POST(), body: [Buffer.alloc(900), Buffer.alloc(900)] });
    expect(upstreamOf(out).body.length).toBe(1800);
  });
});

describe('immediate responses and dynamic metadata', () => {
  it('status below 200 becomes 200; body, details and header mutation (raw_value) are applied', async () => {
    const s = await server(answering(() => ({ immediate_response: { status: { code: 100 }, body: Buffer.from('{"e":1}'), details: 'bad request shape', headers: { set_headers: [setHeader('content-type', 'application/json')] } } })));
    const out = localReplyOf(await envoy(s.target).request({ headers: GET() }));
    expect(out.status).toBe(200);
    expect(out.body.toString()).toBe('{"e":1}');
    expect(out.details).toBe('bad_request_shape');
    expect(getHeader(out.headers, 'content-type')).toBe('application/json');
    expect(out.streamClosedBy).toBe('envoy-immediate-response');
  });

  it('dynamic_metadata is kept only for receiving namespaces, from structValue fields', async () => {
    const metadata = { fields: { keep: { structValue: { fields: { route: { stringValue: 'images' } } } }, drop: { structValue: { fields: { a: { numberValue: 1 } } } } } };
    const s = await server(answering((m) => ({ ...(continueFor(m) as object), dynamic_metadata: metadata })));
    expect((await envoy(s.target).request({ headers: GET() })).dynamicMetadata).toEqual({});
    const out = await envoy(s.target, { receivingNamespaces: ['keep'] }).request({ headers: GET() });
    expect(out.dynamicMetadata).toEqual({ keep: { route: 'images' } });
  });
});

describe('stream lifecycle', () => {
  it('Envoy closes with half-close then cancel: the server sees end, then cancelled', async () => {
    const s = await server(answering());
    const out = await envoy(s.target, { processingMode: { responseHeaderMode: 'SKIP' } }).request({ headers: GET() });
    expect(out.streamClosedBy).toBe('envoy-early-close');
    await s.calls[0].done;
    expect(s.calls[0].events).toEqual(['data:request_headers', 'end', 'cancelled']);
  });

  it('close() half-closes then cancels, once, after pending writes (grpc-js server events cannot tell the two apart)', () => {
    const calls: string[] = [];
    let flush: () => void = () => undefined;
    const fake = {
      on: () => fake,
      write: (_m: unknown, cb: () => void) => {
        calls.push('write');
        flush = cb;
      },
      end: () => calls.push('end'),
      cancel: () => calls.push('cancel'),
    };
    const stream = new ExtProcStream(fake as unknown as ConstructorParameters<typeof ExtProcStream>[0], { onReceiveMessage: () => undefined, onRemoteClose: () => undefined }, () => undefined);
    stream.send({});
    expect(stream.close()).toBe(true);
    expect(calls).toEqual(['write']); // the message goes out before the reset
    flush();
    expect(calls).toEqual(['write', 'end', 'cancel']);
    expect(stream.close()).toBe(false);
  });

  it('1.37+: closes after the request-headers answer when nothing else is needed; before 1.37 at the end', async () => {
    const s = await server(answering());
    const opts = { processingMode: { responseHeaderMode: 'SKIP' as const } };
    const response = { headers: [[':status', '200']] as Array<[string, string]> };
    expect((await envoy(s.target, { ...opts, envoyVersion: '1.37' }).request({ headers: GET(), response })).streamClosedBy).toBe('envoy-early-close');
    expect((await envoy(s.target, { ...opts, envoyVersion: '1.36' }).request({ headers: GET(), response })).streamClosedBy).toBe('end');
  });

  it('does not close early after a BUFFERED body answer; closes at the end of the request', async () => {
    const s = await server(answering());
    const out = await envoy(s.target, { processingMode: { requestBodyMode: 'BUFFERED', responseHeaderMode: 'SKIP' } }).request({ headers: POST(), body: Buffer.from('a') });
    expect(out.streamClosedBy).toBe('end');
  });

  it('closes after the response-headers answer when the response needs nothing more', async () => {
    const s = await server(answering());
    const out = await envoy(s.target).request({ headers: GET(), response: { headers: [[':status', '200']], body: 'ok' } });
    expect(out.streamClosedBy).toBe('envoy-early-close');
    expect(s.calls[0].received.map((m) => m.request)).toEqual(['request_headers', 'response_headers']);
    expect(out.kind === 'upstream' && out.response?.body.toString()).toBe('ok');
  });

  it('ignores a message sent after processing completed', async () => {
    const s = await server(answering((m) => [continueFor(m), continueFor(m)]));
    const out = await envoy(s.target, { envoyVersion: '1.37', processingMode: { responseHeaderMode: 'SKIP' } }).request({ headers: GET() });
    expect(out.kind).toBe('upstream');
    expect(out.counters.spurious_msgs_received).toBe(0);
  });

  it('abortAfter cancels mid-request like a client disconnect', async () => {
    const s = await server(answering((m) => (m.request === 'request_headers' && s.calls.length > 1 ? undefined : continueFor(m))));
    const e = envoy(s.target, { processingMode: { responseHeaderMode: 'SKIP' } });
    await e.request({ headers: GET() }); // connection established, as it usually is in Envoy
    const out = await e.request({ headers: POST(), body: Buffer.from('a'), abortAfter: 'headers' });
    expect(out.kind).toBe('aborted');
    expect(out.streamClosedBy).toBe('aborted');
    await until(() => s.calls.length === 2);
    await s.calls[1].done;
    expect(s.calls[1].events).toEqual(['data:request_headers', 'end', 'cancelled']);
  });

  it('maxRequestsPerConnection opens a new HTTP/2 connection every N streams', async () => {
    const s = await server(answering());
    const e = envoy(s.target, { maxRequestsPerConnection: 2, processingMode: { responseHeaderMode: 'SKIP' } });
    for (let i = 0; i < 5; i++) await e.request({ headers: GET() });
    const peers = s.calls.map((c) => c.peer);
    expect(new Set(peers).size).toBe(3);
    expect(peers[0]).toBe(peers[1]);
    expect(peers[1]).not.toBe(peers[2]);
    expect(e.connectionsOpened).toBe(3);
  });

  it('works over a unix socket', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'extproc-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const s = await server(answering(), `unix:${join(dir, 'ext.sock')}`);
    expect((await envoy(s.target).request({ headers: GET() })).kind).toBe('upstream');
  });
});

describe('configuration around the stream', () => {
  it('a per-route disabled filter opens no stream; a per-route processing mode replaces the filter mode', async () => {
    const s = await server(answering());
    const e = envoy(s.target, {
      perRoute: (headers) => {
        const path = getHeader(headers, ':path');
        if (path === '/health') return { disabled: true };
        if (path === '/upload') return { processingMode: { requestBodyMode: 'BUFFERED', responseHeaderMode: 'SKIP' } };
        return undefined;
      },
    });
    const health = await e.request({ headers: GET('/health'), response: { headers: [[':status', '200']] } });
    expect(health.streamClosedBy).toBe('not-opened');
    expect(health.messagesSent).toBe(0);
    await e.request({ headers: POST('/upload'), body: Buffer.from('x'), response: { headers: [[':status', '200']] } });
    expect(s.calls[0].received.map((m) => m.request)).toEqual(['request_headers', 'request_body']);
  });

  it('forward_rules filter what is sent; forwarding namespaces fill metadata_context; attributes on the first message', async () => {
    const s = await server(answering());
    await envoy(s.target, {
      forwardRules: { disallowedHeaders: ['authorization'] },
      forwardingNamespaces: ['auth'],
      requestAttributes: ['request.path', 'request.method'],
      processingMode: { requestBodyMode: 'BUFFERED', responseHeaderMode: 'SKIP' },
    }).request({ headers: requestHeaders('POST', '/p', { authorization: 'Bearer x' }), body: Buffer.from('b'), dynamicMetadata: { auth: { user: 'u1' } } });
    const [headers, body] = s.calls[0].received;
    expect(wireHeader(headers.request_headers, 'authorization')).toBeUndefined();
    expect(headers.metadata_context?.filter_metadata).toEqual({ auth: { fields: { user: { stringValue: 'u1', kind: 'stringValue' } } } });
    const attributes = headers.attributes?.['envoy.filters.http.ext_proc'] as { fields: Record<string, { stringValue: string }> };
    expect(attributes.fields['request.path'].stringValue).toBe('/p');
    expect(body.attributes).toEqual({});
  });

  it('an immediate response after the response headers went to the client can only reset the stream', async () => {
    const s = await server(answeringKind('response_body', { immediate_response: { status: { code: 400 } } }));
    const out = await envoy(s.target, { processingMode: { responseBodyMode: 'STREAMED' } }).request({
      headers: GET(),
      response: { headers: [[':status', '200']], body: 'chunk' },
    });
    expect(out.kind).toBe('reset');
  });
});

describe('data path', () => {
  it('runs a real HTTP request through the emulation to an upstream and back', async () => {
    const seen: Array<{ url?: string; host?: string; body: string; headers: http.IncomingHttpHeaders }> = [];
    const upstream = http.createServer((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (c: Buffer) => parts.push(c));
      req.on('end', () => {
        seen.push({ url: req.url, host: req.headers.host, body: Buffer.concat(parts).toString(), headers: req.headers });
        res.setHeader('content-type', 'application/json');
        res.end('{"ok":true}');
      });
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise((r) => upstream.close(r)));
    const upstreamPort = (upstream.address() as AddressInfo).port;

    const s = await server(
      answering((m) =>
        m.request === 'request_headers'
          ? { request_headers: { response: { header_mutation: { set_headers: [setHeader(':path', '/rewritten'), setHeader('x-added', 'yes')] }, clear_route_cache: true } } }
          : m.request === 'request_body'
            ? { request_body: { response: { body_mutation: { body: Buffer.from('{"b":2}') }, header_mutation: { set_headers: [setHeader('content-length', '7')] } } } }
            : continueFor(m),
      ),
    );
    const e = envoy(s.target, { processingMode: { requestBodyMode: 'BUFFERED' } });
    const dp = await startDataPath({ emulator: e, upstream: `http://127.0.0.1:${upstreamPort}` });
    cleanups.push(() => dp.close());

    const res = await fetch(`${dp.url}/orig?q=1`, { method: 'POST', body: '{"a":1}', headers: { 'content-type': 'application/json' } });
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('{"ok":true}');
    expect(seen[0].url).toBe('/rewritten');
    expect(seen[0].host).toBe(`127.0.0.1:${upstreamPort}`);
    expect(seen[0].body).toBe('{"b":2}');
    expect(seen[0].headers['x-added']).toBe('yes');
  });

  it('returns local replies to the client', async () => {
    const s = await server(answering(() => ({ immediate_response: { status: { code: 403 }, body: Buffer.from('denied') } })));
    const dp = await startDataPath({ emulator: envoy(s.target), upstream: 'http://127.0.0.1:1' });
    cleanups.push(() => dp.close());
    const res = await fetch(`${dp.url}/x`);
    expect(res.status).toBe(403);
    expect(await res.text()).toBe('denied');
  });
});

describe('the in-process transport (explain): the same filter, the server in this process', () => {
  const options = { processingMode: { requestBodyMode: 'BUFFERED' as const } };
  const request = { headers: [[':method', 'POST'], [':path', '/x'], ['host', 'h'], ['content-type', 'application/json']] as Array<[string, string]>, body: '{"a":1}' };

  it('hands the server decoded messages and Envoy decoded answers, on later turns, in order', async () => {
    const seen: string[] = [];
    let closed = false;
    const transport = new InProcessTransport(() => ({
      handle(message) {
        seen.push(`${message.request}:${message.protocol_config?.request_body_mode ?? '-'}`);
        if (message.request === 'request_headers') return [{ request_headers: { response: { header_mutation: { set_headers: [setHeader('x-added', 'yes')] } } } }];
        return [{ request_body: { response: { body_mutation: { body: Buffer.from('{"b":22}') }, header_mutation: { set_headers: [setHeader('content-length', '8')] } } } }];
      },
      close: () => void (closed = true),
    }));
    const outcome = await new EnvoyModel(options, transport).request(request);
    // protocol_config on the first message only, as Envoy sends it; enum values as names, as decoded off the wire.
    expect(seen).toEqual(['request_headers:BUFFERED', 'request_body:-']);
    expect(upstreamOf(outcome).body.toString()).toBe('{"b":22}');
    expect(getHeader(upstreamOf(outcome).headers, 'x-added')).toBe('yes');
    expect(getHeader(upstreamOf(outcome).headers, 'content-length')).toBe('8');
    expect(outcome.transcript.filter((entry) => entry.kind === 'header mutation').map((entry) => entry.message)).toEqual([
      { action: 'set', name: 'x-added', value: 'yes', applied: true },
      { action: 'set', name: 'content-length', value: '8', applied: true },
    ]);
    expect(closed).toBe(true);
  });

  it('a server that throws ends the call with INTERNAL: Envoy (failure_mode_allow false) answers 500', async () => {
    const transport = new InProcessTransport(() => ({
      handle() {
        throw new Error('boom');
      },
      close: () => undefined,
    }));
    const outcome = await new EnvoyModel(options, transport).request(request);
    expect(outcome.serverStatus).toEqual({ code: 13, details: 'boom' });
    expect(outcome).toMatchObject({ kind: 'local_reply', status: 500, details: 'ext_proc_error_gRPC_error_13{boom}' });
  });
});
