// Logs are safe by default (no bodies, prompts or credentials): credentials and prompts sent through the server never reach
// the log, at info or at debug, whatever happens to the request. The log is captured in memory and
// searched for planted values, both as text and inside any serialised Buffer.
import type * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildConfig } from '../src/config.js';
import { createLogger } from '../src/log.js';
import { startServer, type RunningServer } from '../src/server.js';
import { extProcClient, imageHeaders, openCall, requestBody, requestHeaders, runCall } from './support/extproc-client.js';

const PLANTED = ['sk-PLANTED-KEY-123', 'sk-PLANTED-BEARER', 'PLANTED-PROMPT-xyz', 'PLANTED-SUBSCRIPTION', 'PLANTED-COOKIE'];

const credentials = {
  'api-key': 'sk-PLANTED-KEY-123',
  authorization: 'Bearer sk-PLANTED-BEARER',
  'ocp-apim-subscription-key': 'PLANTED-SUBSCRIPTION',
  cookie: 'session=PLANTED-COOKIE',
};

/** The planted values found in `log`, as text or as bytes of a JSON-serialised Buffer. */
function leaks(log: string): string[] {
  const decoded = [...log.matchAll(/"type":"Buffer","data":\[([\d,]*)\]/g)].map((match) =>
    Buffer.from(match[1]!.split(',').filter(Boolean).map(Number)).toString('latin1'),
  );
  const haystack = [log, ...decoded].join('\n');
  return PLANTED.filter((value) => haystack.includes(value));
}

const multipart = (boundary: string): string =>
  [
    `--${boundary}`,
    'Content-Disposition: form-data; name="model"',
    '',
    'gpt-image-1',
    `--${boundary}`,
    'Content-Disposition: form-data; name="prompt"',
    '',
    'PLANTED-PROMPT-xyz',
    `--${boundary}--`,
    '',
  ].join('\r\n');

describe.each(['info', 'debug'] as const)('logs at %s', (level) => {
  const lines: string[] = [];
  let server: RunningServer;
  let client: grpc.Client;

  beforeAll(async () => {
    const logger = createLogger(level, { write: (line: string) => void lines.push(line) });
    server = await startServer({ config: () => buildConfig({ listen: '127.0.0.1:0', logLevel: level }), logger });
    client = extProcClient(server.addresses.listen);
  });

  afterAll(async () => {
    client?.close();
    await server?.shutdown(1_000);
  });

  const send = async (headers: Record<string, string>, body?: string): Promise<void> => {
    const { status } = await runCall(client, { ...headers, ...credentials }, body);
    expect(status.code).toBe(0);
  };
  const json = (body: string, extra: Record<string, string> = {}): Promise<void> =>
    send(imageHeaders({ contentLength: Buffer.byteLength(body), extra }), body);

  it('never logs planted credentials or prompts', async () => {
    // Rewritten: JSON and multipart, BUFFERED; the first carries Envoy's request id.
    await json('{"model":"gpt-image-1","prompt":"PLANTED-PROMPT-xyz"}', { 'x-request-id': 'req-7f3a' });
    const form = multipart('PLANTEDxyzBoundary');
    await send(
      {
        ...imageHeaders({ contentLength: Buffer.byteLength(form) }),
        ':path': '/openai/deployments/gpt-image-1/images/edits?api-version=2025-04-01-preview',
        'content-type': 'multipart/form-data; boundary=PLANTEDxyzBoundary',
      },
      form,
    );
    // Passed through: no model, another route, the v1 route, a content type we do not edit.
    await json('{"prompt":"PLANTED-PROMPT-xyz"}');
    await send({ ...imageHeaders(), ':path': '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21' }, '{"messages":[{"role":"user","content":"PLANTED-PROMPT-xyz"}]}');
    await send({ ...imageHeaders(), ':path': '/openai/v1/images/generations' }, '{"model":"gpt-image-1","prompt":"PLANTED-PROMPT-xyz"}');
    await send({ ...imageHeaders(), 'content-type': 'text/plain' }, 'PLANTED-PROMPT-xyz');
    // Invalid bodies: the parser's own error messages must not quote the input.
    await json('{"model":"gpt-image-1","prompt":"PLANTED-PROMPT-xyz"');
    await json('{"prompt":"PLANTED-PROMPT-xyz" "model":"gpt-image-1"}');
    await json('PLANTED-PROMPT-xyz');
    await json('{"model":"gpt-image-1","prompt":"PLANTED-PROMPT-xyz"}{"prompt":"PLANTED-PROMPT-xyz"}');
    const truncatedForm = '--PLANTEDxyzBoundary\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nPLANTED-PROMPT-xyz';
    await send(
      {
        ...imageHeaders({ contentLength: truncatedForm.length }),
        'content-type': 'multipart/form-data; boundary=PLANTEDxyzBoundary',
      },
      truncatedForm,
    );

    // STREAMED (no content-length): rewritten and invalid.
    for (const chunks of [
      ['{"prompt":"PLANTED-', 'PROMPT-xyz","model":"gpt-image-1"}'],
      ['{"prompt":"PLANTED-', 'PROMPT-xyz",,"model"}'],
    ]) {
      const call = openCall(client);
      call.send(requestHeaders({ ...imageHeaders(), ...credentials }));
      await call.next();
      chunks.forEach((chunk, index) => call.send(requestBody(chunk, index === chunks.length - 1)));
      for (const _ of chunks) await call.next();
      expect((await call.finish()).code).toBe(0);
    }

    // A protocol violation ends the call with a gRPC error, which is logged with its stack.
    const twice = openCall(client);
    twice.send(requestHeaders({ ...imageHeaders({ contentLength: 10 }), ...credentials }));
    await twice.next();
    twice.send(requestHeaders({ ...imageHeaders({ contentLength: 10 }), ...credentials }));
    expect((await twice.status).code).not.toBe(0);

    const log = lines.join('');
    // The log is not empty: rewrites, invalid bodies and the protocol error were reported.
    expect(log).toContain('request rewritten');
    expect(log).toContain('forwarded unchanged');
    expect(log).toContain('ext_proc call failed');
    expect(leaks(log)).toEqual([]);

    // One structured line per rewritten request: route, deployment, sizes, duration; nothing of the body.
    const rewritten = lines
      .flatMap((line) => line.split('\n'))
      .filter((line) => line.includes('"msg":"request rewritten"'))
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(rewritten.length).toBeGreaterThan(0);
    // The request id joins the line with Envoy's access log (%REQ(X-REQUEST-ID)%).
    expect(rewritten[0]).toMatchObject({ requestId: 'req-7f3a' });
    for (const entry of rewritten) {
      expect(entry).toMatchObject({ level: 'info', route: 'deployment', changes: ['model'] });
      expect(['generations', 'edits']).toContain(entry.operation);
      expect(typeof entry.deployment).toBe('string');
      expect(entry.bytesAfter as number).toBeLessThan(entry.bytesBefore as number);
      expect(typeof entry.durationMs).toBe('number');
      expect(Object.keys(entry)).not.toContain('body');
    }
  });

  it('redacts credentials and bodies even when a request is logged whole by mistake', () => {
    const captured: string[] = [];
    const logger = createLogger(level, { write: (line: string) => void captured.push(line) });
    const envoyMessage = {
      request_headers: {
        headers: { headers: Object.entries(credentials).map(([key, value]) => ({ key, raw_value: Buffer.from(value) })) },
      },
    };
    logger.info({ headers: credentials }, 'plain header object');
    logger.info({ request: { headers: credentials } }, 'nested header object');
    logger.info(envoyMessage, 'Envoy header map');
    logger.info({ call: envoyMessage.request_headers }, 'nested Envoy header map');
    logger.info(
      { request_trailers: { trailers: { headers: [{ key: 'x-api-key', raw_value: Buffer.from('sk-PLANTED-KEY-123') }] } } },
      'Envoy trailers',
    );
    logger.info({ request_body: { body: Buffer.from('{"prompt":"PLANTED-PROMPT-xyz"}'), end_of_stream: true } }, 'Envoy body');
    logger.info({ prompt: 'PLANTED-PROMPT-xyz', apiKey: 'sk-PLANTED-KEY-123' }, 'fields');
    const log = captured.join('');
    expect(captured).toHaveLength(7);
    expect(leaks(log)).toEqual([]);
  });
});
