// The server over a real loopback gRPC connection, driven by the Envoy emulation (test/envoy/), in every
// body mode Envoy can be configured with. Assertions are what a user would check: what reaches Azure.
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { EXT_PROC_SERVICE, healthService } from '../src/proto.js';
import {
  DEPLOYMENT_PATH,
  EDITS_PATH,
  binary,
  frames,
  header,
  jsonRequest,
  multipartRequest,
  recommendedEnvoy,
  staticEnvoy,
  startTestServer,
  type TestServer,
  upstreamOf,
  serverAnswers,
} from './support/harness.js';

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await server.close();
});
const SEED = '{"model":"gpt-image-2-1","prompt":"a red circle","n":1,"size":"1024x1024"}';
const SEED_FIXED = '{"prompt":"a red circle","n":1,"size":"1024x1024"}';

const modes = [
  ['recommended (NONE + mode_override)', () => recommendedEnvoy(server.target)],
  ['static BUFFERED', () => staticEnvoy(server.target, 'BUFFERED')],
  ['static STREAMED', () => staticEnvoy(server.target, 'STREAMED')],
  ['static FULL_DUPLEX_STREAMED', () => staticEnvoy(server.target, 'FULL_DUPLEX_STREAMED')],
  ['static BUFFERED_PARTIAL', () => staticEnvoy(server.target, 'BUFFERED_PARTIAL')],
] as const;

describe.each(modes)('JSON generations, %s', (_name, makeEnvoy) => {
  test('the seed request reaches Azure without model, content-length consistent', async () => {
    const envoy = makeEnvoy();
    try {
      const upstream = upstreamOf(await envoy.request(jsonRequest(DEPLOYMENT_PATH, SEED)));
      expect(upstream.body.toString()).toBe(SEED_FIXED);
      const length = header(upstream.headers, 'content-length');
      if (length !== undefined) expect(Number(length)).toBe(upstream.body.length);
      expect(header(upstream.headers, ':path')).toBe(DEPLOYMENT_PATH);
      expect(header(upstream.headers, 'api-key')).toBe('test-key');
    } finally {
      envoy.close();
    }
  });

  test('bytes are preserved exactly: order, whitespace, escapes, unicode, nested model', async () => {
    const envoy = makeEnvoy();
    const body = '{\n  "prompt" : "caf\\u00e9 ☕ \\"q\\"",\r\n\t"model": "gpt-image-2-1" ,\n  "n": 1e0, "extra": {"model": "keep"}\n}';
    // The member goes with its preceding comma and the whitespace before it; every other byte stays.
    const expected = '{\n  "prompt" : "caf\\u00e9 ☕ \\"q\\"" ,\n  "n": 1e0, "extra": {"model": "keep"}\n}';
    try {
      const upstream = upstreamOf(await envoy.request(jsonRequest(DEPLOYMENT_PATH, body)));
      expect(upstream.body.toString('utf8')).toBe(expected);
    } finally {
      envoy.close();
    }
  });

  test('a body without model is forwarded byte-for-byte with no body mutation', async () => {
    const envoy = makeEnvoy();
    try {
      const outcome = await envoy.request(jsonRequest(DEPLOYMENT_PATH, SEED_FIXED));
      expect(upstreamOf(outcome).body.toString()).toBe(SEED_FIXED);
      for (const answer of serverAnswers(outcome, 'request_body')) {
        const common = (answer.request_body as { response: { body_mutation: unknown } }).response;
        const mutation = common.body_mutation as { mutation?: string; streamed_response?: { body: Buffer } } | null;
        // FULL_DUPLEX_STREAMED must echo the bytes; every other mode must leave the body alone.
        if (mutation?.mutation === 'streamed_response') expect(mutation.streamed_response!.body.length).toBeGreaterThan(0);
        else expect(mutation).toBeNull();
      }
    } finally {
      envoy.close();
    }
  });

  test('malformed JSON is forwarded unchanged, never a 500', async () => {
    const envoy = makeEnvoy();
    const broken = '{"model":"gpt-image-2-1","prompt":"unterminated';
    try {
      expect(upstreamOf(await envoy.request(jsonRequest(DEPLOYMENT_PATH, broken))).body.toString()).toBe(broken);
      // Split into 8-byte DATA frames: in STREAMED modes the malformation shows only in the last chunk.
      const split = jsonRequest(DEPLOYMENT_PATH, broken);
      expect(upstreamOf(await envoy.request({ headers: split.headers, body: frames(split.body, 8) })).body.toString()).toBe(broken);
      const array = '[{"model":"x"}]';
      expect(upstreamOf(await envoy.request(jsonRequest(DEPLOYMENT_PATH, array))).body.toString()).toBe(array);
    } finally {
      envoy.close();
    }
  });
});

describe.each(modes)('multipart edits, %s', (_name, makeEnvoy) => {
  test('the model part is removed, image bytes copied verbatim', async () => {
    const envoy = makeEnvoy();
    const image = binary(300_000, 7);
    const parts = [
      { name: 'image[]', filename: 'a.png', contentType: 'image/png', data: image },
      { name: 'model', data: 'gpt-image-2-1' },
      { name: 'prompt', data: 'add a hat' },
    ];
    const request = multipartRequest(EDITS_PATH, 'XyZ-boundary', parts);
    const expected = multipartRequest(EDITS_PATH, 'XyZ-boundary', [parts[0]!, parts[2]!]).body;
    try {
      const upstream = upstreamOf(await envoy.request({ headers: request.headers, body: frames(request.body, 16 * 1024) }));
      expect(upstream.body.equals(expected)).toBe(true);
    } finally {
      envoy.close();
    }
  });
});

describe('requests that are not ours pass through untouched', () => {
  test('chat completions: one headers message, no mode_override, Envoy closes the stream early (1.37+)', async () => {
    const envoy = recommendedEnvoy(server.target);
    const body = '{"model":"gpt-4o","messages":[]}';
    try {
      const outcome = await envoy.request(jsonRequest('/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21', body));
      expect(upstreamOf(outcome).body.toString()).toBe(body);
      expect(outcome.messagesSent).toBe(1);
      const headersAnswer = serverAnswers(outcome, 'request_headers')[0]!;
      expect(headersAnswer.mode_override).toBeNull();
      expect(outcome.streamClosedBy).toBe('envoy-early-close');
    } finally {
      envoy.close();
    }
  });

  test('with static BUFFERED, non-image requests are switched to NONE (not buffered, not sent)', async () => {
    const envoy = staticEnvoy(server.target, 'BUFFERED', { allowModeOverride: true });
    const body = '{"model":"gpt-4o","messages":[]}';
    try {
      const outcome = await envoy.request(jsonRequest('/openai/deployments/gpt-4o/chat/completions?api-version=x', body));
      expect(upstreamOf(outcome).body.toString()).toBe(body);
      expect(outcome.messagesSent).toBe(1);
    } finally {
      envoy.close();
    }
  });

  test.each([
    ['v1 route (model is the deployment there)', '/openai/v1/images/generations?api-version=preview'],
    ['Foundry partner route', '/providers/blackforestlabs/v1/flux-2-pro?api-version=preview'],
    ['MAI route', '/mai/v1/images/generations'],
    ['legacy async submit', '/openai/images/generations:submit?api-version=2023-06-01-preview'],
    ['deployment-less route', '/openai/images/generations?api-version=2025-04-01-preview'],
  ])('%s keeps model', async (_name, path) => {
    const envoy = recommendedEnvoy(server.target);
    try {
      const outcome = await envoy.request(jsonRequest(path, SEED));
      expect(upstreamOf(outcome).body.toString()).toBe(SEED);
      expect(outcome.messagesSent).toBe(1);
    } finally {
      envoy.close();
    }
  });

  test('GET on an image route (no body): answered at headers, never waits for a body', async () => {
    const envoy = recommendedEnvoy(server.target);
    try {
      const outcome = await envoy.request({ headers: [[':method', 'GET'], [':path', DEPLOYMENT_PATH]] });
      expect(outcome.kind).toBe('upstream');
      expect(outcome.messagesSent).toBe(1);
    } finally {
      envoy.close();
    }
  });

  test('a POST with an empty body and end_of_stream on headers', async () => {
    const envoy = recommendedEnvoy(server.target);
    try {
      const outcome = await envoy.request({ headers: jsonRequest(DEPLOYMENT_PATH, '').headers });
      expect(outcome.kind).toBe('upstream');
    } finally {
      envoy.close();
    }
  });

  test('text/plain body on an image route is not touched', async () => {
    const envoy = recommendedEnvoy(server.target);
    try {
      const request = jsonRequest(DEPLOYMENT_PATH, SEED);
      const headers = request.headers.map(([k, v]) => [k, k === 'content-type' ? 'text/plain' : v] as [string, string]);
      const outcome = await envoy.request({ headers, body: request.body });
      expect(upstreamOf(outcome).body.toString()).toBe(SEED);
      expect(outcome.messagesSent).toBe(1);
    } finally {
      envoy.close();
    }
  });
});

describe('body size and mode choice', () => {
  test('small bodies are requested BUFFERED, content-length set in the same body answer', async () => {
    const envoy = recommendedEnvoy(server.target);
    try {
      const outcome = await envoy.request(jsonRequest(DEPLOYMENT_PATH, SEED));
      const headersAnswer = serverAnswers(outcome, 'request_headers')[0]!;
      expect((headersAnswer.mode_override as { request_body_mode: string }).request_body_mode).toBe('BUFFERED');
      const upstream = upstreamOf(outcome);
      expect(header(upstream.headers, 'content-length')).toBe(String(SEED_FIXED.length));
    } finally {
      envoy.close();
    }
  });

  test('bodies above the stream threshold are requested STREAMED; content-length removed, body correct', async () => {
    const envoy = recommendedEnvoy(server.target);
    const image = binary(3 * 1024 * 1024, 3);
    const parts = [
      { name: 'model', data: 'gpt-image-2-1' },
      { name: 'image', filename: 'big.png', contentType: 'image/png', data: image },
      { name: 'prompt', data: 'p' },
    ];
    const request = multipartRequest(EDITS_PATH, 'b', parts);
    const expected = multipartRequest(EDITS_PATH, 'b', parts.slice(1)).body;
    try {
      const outcome = await envoy.request({ headers: request.headers, body: frames(request.body, 64 * 1024) });
      const headersAnswer = serverAnswers(outcome, 'request_headers')[0]!;
      expect((headersAnswer.mode_override as { request_body_mode: string }).request_body_mode).toBe('STREAMED');
      const upstream = upstreamOf(outcome);
      expect(upstream.contentLengthRemoved).toBe(true);
      expect(upstream.body.equals(expected)).toBe(true);
      expect(serverAnswers(outcome, 'request_body').length).toBe(frames(request.body, 64 * 1024).length);
    } finally {
      envoy.close();
    }
  });

  test('a 10 MiB BUFFERED body (one ext_proc message above gRPC default 4 MiB) is edited', async () => {
    const envoy = staticEnvoy(server.target, 'BUFFERED');
    const prompt = 'x'.repeat(10 * 1024 * 1024);
    const body = `{"prompt":"${prompt}","model":"gpt-image-2-1"}`;
    try {
      const upstream = upstreamOf(await envoy.request(jsonRequest(DEPLOYMENT_PATH, body)));
      expect(upstream.body.length).toBe(body.length - ',"model":"gpt-image-2-1"'.length);
      expect(header(upstream.headers, 'content-length')).toBe(String(upstream.body.length));
    } finally {
      envoy.close();
    }
  });
});

describe('response direction, if Envoy is configured to send it', () => {
  test.each(['BUFFERED', 'STREAMED', 'FULL_DUPLEX_STREAMED'] as const)('response body %s passes through unchanged', async (responseBodyMode) => {
    const envoy = recommendedEnvoy(server.target, {
      processingMode: {
        requestHeaderMode: 'SEND',
        responseHeaderMode: 'SEND',
        requestBodyMode: 'NONE',
        responseBodyMode,
        ...(responseBodyMode === 'FULL_DUPLEX_STREAMED' ? { responseTrailerMode: 'SEND' as const } : {}),
      },
      // mode_override is unsupported when either body mode is FULL_DUPLEX_STREAMED (docs/envoy-ext-proc.md#mode_override).
      allowModeOverride: responseBodyMode !== 'FULL_DUPLEX_STREAMED',
    });
    const answerBody = '{"created":1,"data":[{"b64_json":"AAAA"}]}';
    try {
      const outcome = await envoy.request({
        ...jsonRequest(DEPLOYMENT_PATH, SEED),
        response: { headers: [[':status', '200'], ['content-type', 'application/json']], body: [answerBody.slice(0, 10), answerBody.slice(10)] },
      });
      expect(outcome.kind).toBe('upstream');
      if (outcome.kind !== 'upstream') return;
      expect(outcome.response?.status).toBe(200);
      expect(outcome.response?.body.toString()).toBe(answerBody);
      if (responseBodyMode !== 'FULL_DUPLEX_STREAMED') expect(outcome.upstream.body.toString()).toBe(SEED_FIXED);
    } finally {
      envoy.close();
    }
  });
});

describe('stream lifecycle', () => {
  test('a client that disconnects mid-body does not disturb other calls', async () => {
    const envoy = recommendedEnvoy(server.target);
    const big = multipartRequest(EDITS_PATH, 'q', [{ name: 'image', data: binary(2 * 1024 * 1024) }, { name: 'model', data: 'm' }]);
    try {
      const aborted = await Promise.all(
        Array.from({ length: 20 }, () => envoy.request({ headers: big.headers, body: frames(big.body, 64 * 1024), abortAfter: 'firstBodyChunk' })),
      );
      expect(aborted.every((outcome) => outcome.kind === 'aborted')).toBe(true);
      const fine = await envoy.request(jsonRequest(DEPLOYMENT_PATH, SEED));
      expect(upstreamOf(fine).body.toString()).toBe(SEED_FIXED);
    } finally {
      envoy.close();
    }
  });

  test('STREAMED: an empty end_of_stream chunk after the announced length passes through', async () => {
    const envoy = staticEnvoy(server.target, 'STREAMED');
    const request = jsonRequest(DEPLOYMENT_PATH, SEED);
    try {
      const upstream = upstreamOf(await envoy.request({ headers: request.headers, body: [request.body, Buffer.alloc(0)] }));
      expect(upstream.body.toString()).toBe(SEED_FIXED);
    } finally {
      envoy.close();
    }
  });

  test('STREAMED with request trailers and a content-length: edited, the call reports the rewrite', async () => {
    const envoy = staticEnvoy(server.target, 'STREAMED', { processingMode: { requestBodyMode: 'STREAMED', requestTrailerMode: 'SEND', responseHeaderMode: 'SKIP' } });
    const request = jsonRequest(DEPLOYMENT_PATH, SEED);
    const before = server.results.length;
    try {
      const upstream = upstreamOf(await envoy.request({ headers: request.headers, body: frames(request.body, 10), trailers: [['x-checksum', 'abc']] }));
      expect(upstream.body.toString()).toBe(SEED_FIXED);
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(server.results.slice(before).map((result) => result.kind)).toContain('rewritten');
    } finally {
      envoy.close();
    }
  });

  test('Envoy < 1.37 (stream kept open until the request ends) works the same', async () => {
    const envoy = recommendedEnvoy(server.target, { envoyVersion: '1.34' });
    try {
      expect(upstreamOf(await envoy.request(jsonRequest(DEPLOYMENT_PATH, SEED))).body.toString()).toBe(SEED_FIXED);
    } finally {
      envoy.close();
    }
  });

  test('1,000 concurrent calls closed the 1.37 way (half-close + cancel): zero failures', async () => {
    // Emulator and server share one process and two cores with another test worker: a 1,000-call burst
    // takes ~1-2 s end to end here, so the 2 s message timeout would measure the emulator, not the server.
    const envoy = recommendedEnvoy(server.target, { messageTimeoutMs: 15_000 });
    try {
      const outcomes = await Promise.all(
        Array.from({ length: 1000 }, (_, i) =>
          i % 2 === 0
            ? envoy.request(jsonRequest(DEPLOYMENT_PATH, SEED))
            : envoy.request(jsonRequest('/openai/deployments/gpt-4o/chat/completions?api-version=x', '{"model":"gpt-4o"}')),
        ),
      );
      const failed = outcomes.filter((outcome) => outcome.kind !== 'upstream');
      expect(failed.length).toBe(0);
      expect(outcomes.filter((o, i) => i % 2 === 0 && upstreamOf(o).body.toString() === SEED_FIXED).length).toBe(500);
    } finally {
      envoy.close();
    }
  });
});

describe('health', () => {
  test.each(['', EXT_PROC_SERVICE])('grpc.health.v1 Check(%j) is SERVING on the ext_proc port', async (service) => {
    const Health = healthService();
    const client = new Health(server.target, grpc.credentials.createInsecure()) as unknown as {
      Check(request: { service: string }, callback: (error: Error | null, response: { status: string }) => void): void;
      close(): void;
    };
    const status = await new Promise<string>((resolve, reject) =>
      client.Check({ service }, (error, response) => (error ? reject(error) : resolve(response.status))),
    );
    client.close();
    expect(status).toBe('SERVING');
  });
});
