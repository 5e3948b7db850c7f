// The request headers decide the call: whether it is ours, the header changes, and the one body strategy.
import { describe, expect, test } from 'vitest';
import { body, DEPLOYMENT_PATH, headers, jsonHeaders, startCall, trailers, transcript } from './transcript.js';

describe('pass-through', () => {
  test('not an image route: bare CONTINUE for every message, nothing held', () => {
    const call = startCall();
    const answers = transcript(call, [
      headers({ ':method': 'POST', ':path': '/openai/deployments/d/chat/completions', 'content-type': 'application/json' }),
      body('{"model":"x"}', true),
    ]);
    expect(answers).toEqual([['headers: continue'], ['body: continue']]);
    expect(call.processor.finalResult()).toEqual({ kind: 'passed', reason: 'not_image_route' });
  });

  test('static BUFFERED and a request we do not edit: asks Envoy not to send the body', () => {
    const call = startCall();
    expect(transcript(call, [headers({ ':method': 'GET', ':path': DEPLOYMENT_PATH }, 'BUFFERED')])).toEqual([['headers: override NONE']]);
  });

  test('FULL_DUPLEX_STREAMED pass-through echoes each chunk (Envoy has drained the original)', () => {
    const call = startCall();
    const answers = transcript(call, [
      headers({ ':method': 'POST', ':path': '/other', 'content-type': 'application/json' }, 'FULL_DUPLEX_STREAMED'),
      body('ab'),
      body('c', true),
    ]);
    expect(answers).toEqual([['headers: continue'], ['body: stream ab'], ['body: stream (end) c']]);
  });

  test('a body message before any headers passes as it came', () => {
    const call = startCall();
    expect(call.send(body('x', true))).toEqual(['body: continue']);
  });

  test('FULL_DUPLEX_STREAMED, trailers and no body: only the trailers answer (no streamed_response for a chunk never sent)', () => {
    const call = startCall();
    const answers = transcript(call, [headers(jsonHeaders(), 'FULL_DUPLEX_STREAMED'), trailers()]);
    expect(answers).toEqual([['headers: continue'], ['trailers']]);
  });
});

describe('content-length: only decimal digits announce a length', () => {
  test.each(['-1073741824', '1e3', '0x10', '', ' 12', '12 ', '+5', '99999999999999999999'])('%j is an unknown length: STREAMED, nothing reserved', (value) => {
    const call = startCall();
    const [answer] = transcript(call, [headers(jsonHeaders({ 'content-length': value }))]);
    expect(answer).toEqual(['headers: remove content-length; override STREAMED']);
    // A negative reservation would have enlarged the budget for every other call.
    expect(call.budget.held).toBe(0);
    expect(call.budget.tryReserve(256 * 1024 * 1024)).toBe(true);
  });

  test('a small announced length is asked BUFFERED and reserved from the budget', () => {
    const call = startCall();
    expect(call.send(headers(jsonHeaders({ 'content-length': '100' })))).toEqual(['headers: override BUFFERED']);
    expect(call.budget.held).toBe(100);
    call.processor.close();
    expect(call.budget.held).toBe(0);
  });
});

describe('header values with control bytes are refused (Envoy answers 500 to such a mutation)', () => {
  const rewrites = { rewrite: { apiVersion: { default: '2025-04-01-preview', force: true } }, credentials: { bearerToApiKey: true } };

  test.each([
    ['CR LF in the path prefix', '/a\r\nb/openai/deployments/d/images/generations?api-version=old', {}],
    ['LF in another query pair', '/openai/deployments/d/images/generations?api-version=old&x=1\n2', {}],
    ['NUL in the Bearer token', '/openai/deployments/d/images/generations', { authorization: 'Bearer abc\u0000def' }],
    ['CR in the Bearer token', '/openai/deployments/d/images/generations', { authorization: 'Bearer abc\rdef' }],
  ])('%s: 400 in Azure error shape, no mutation', (_name, path, extra) => {
    const call = startCall(rewrites);
    const [answer] = transcript(call, [headers(jsonHeaders(extra, path))]);
    expect(answer).toEqual(['immediate 400 azure_image_extproc_invalid_header_value']);
    const reply = (call.answers[0] as { immediate_response: { body: Buffer } }).immediate_response;
    expect(JSON.parse(reply.body.toString())).toMatchObject({ error: { type: 'invalid_request_error', code: 'invalid_value' } });
    expect(call.processor.finalResult()).toMatchObject({ kind: 'rejected', reason: 'invalid_header_value' });
  });

  test('a tab is allowed', () => {
    const call = startCall(rewrites);
    const [answer] = transcript(call, [headers(jsonHeaders({ authorization: 'Bearer abc' }, '/openai/deployments/d/images/generations?x=a\tb'), 'NONE', true)]);
    expect(answer).toEqual([
      'headers: set api-key=abc; set :path=/openai/deployments/d/images/generations?x=a\tb&api-version=2025-04-01-preview; remove authorization; clear route cache',
    ]);
  });
});

describe('names from clients never reach Object.prototype', () => {
  test.each(['toString', 'constructor', '__proto__', 'hasOwnProperty'])('alias route /openai/deployments/%s: no alias, no path change', (name) => {
    const call = startCall({ rewrite: { aliasDeploymentRoutes: true, deployments: { small: 'gpt-image-1' } } });
    const [answer] = transcript(call, [headers(jsonHeaders({}, `/openai/deployments/${name}/images/generations?api-version=v`), 'NONE', true)]);
    expect(answer).toEqual(['headers: continue']);
  });
});

describe('dynamic metadata', () => {
  test('names the decision and the request id, to join with Envoy access logs', () => {
    const call = startCall({ metadataNamespace: 'azure_image_extproc' });
    call.send(headers({ ...jsonHeaders({ 'x-request-id': 'req-1' }), ':method': 'GET' }, 'NONE', true));
    expect(call.answers[0]!.dynamic_metadata).toEqual({
      fields: {
        azure_image_extproc: {
          structValue: {
            fields: {
              action: { stringValue: 'passed' },
              request_id: { stringValue: 'req-1' },
              route: { stringValue: 'deployment' },
              deployment: { stringValue: 'gpt-image-1' },
              reason: { stringValue: 'method' },
            },
          },
        },
      },
    });
  });
});
