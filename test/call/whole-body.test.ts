// The whole-body strategy: one body message, edited at once, answered with the body and its headers.
import { gzipSync } from 'node:zlib';
import { describe, expect, test } from 'vitest';
import { body, headers, jsonHeaders, startCall, trailers, transcript } from './transcript.js';

const OPENAI_PATH = '/v1/images/generations';
const openai = { rewrite: { openaiPaths: { enabled: true, prefix: '/v1' }, apiVersion: { default: '2025-04-01-preview' } } };

describe('BUFFERED (asked with mode_override for a small announced body)', () => {
  test('model removed, content-length follows the new body, budget released once answered', () => {
    const sent = '{"model":"gpt-image-1","prompt":"a cat"}';
    const call = startCall();
    const answers = transcript(call, [headers(jsonHeaders({ 'content-length': String(sent.length) })), body(sent, true)]);
    expect(answers).toEqual([['headers: override BUFFERED'], ['body: set content-length=18; replace {"prompt":"a cat"}']]);
    expect(call.budget.held).toBe(0);
    expect(call.processor.finalResult()).toMatchObject({ kind: 'rewritten', report: { changes: ['model'], bytesIn: 40, bytesOut: 18, mode: 'BUFFERED' } });
  });

  test('static BUFFERED, body followed by trailers (end_of_stream false): still whole, still edited', () => {
    const call = startCall();
    const answers = transcript(call, [headers(jsonHeaders(), 'BUFFERED'), body('{"model":"m","n":1}', false), trailers()]);
    expect(answers).toEqual([['headers: continue'], ['body: replace {"n":1}'], ['trailers']]);
  });

  test('malformed body: forwarded byte for byte (bare CONTINUE), reported invalid_body', () => {
    const call = startCall();
    const answers = transcript(call, [headers(jsonHeaders({ 'content-length': '12' })), body('{"model":"x"', true)]);
    expect(answers).toEqual([['headers: override BUFFERED'], ['body: continue']]);
    expect(call.processor.finalResult()).toMatchObject({ kind: 'passed', reason: 'invalid_body' });
  });

  test('nesting deeper than the editor follows: forwarded byte for byte, reported nesting_too_deep', () => {
    const deep = `{"prompt":${'['.repeat(100_000)}${']'.repeat(100_000)},"model":"x"}`;
    const call = startCall();
    const answers = transcript(call, [headers(jsonHeaders(), 'BUFFERED'), body(deep, true)]);
    expect(answers).toEqual([['headers: continue'], ['body: continue']]);
    expect(call.processor.finalResult()).toMatchObject({ kind: 'passed', reason: 'nesting_too_deep' });
  });

  test('gzip body: inflated, edited, sent uncompressed; sizes compare decoded bytes, the compressed size apart', () => {
    const call = startCall();
    const gz = gzipSync('{"model":"m","prompt":"p"}');
    const answers = transcript(call, [
      headers(jsonHeaders({ 'content-encoding': 'gzip', 'content-length': String(gz.length) })),
      body(gz, true),
    ]);
    expect(answers).toEqual([['headers: override BUFFERED'], ['body: set content-length=14; remove content-encoding; replace {"prompt":"p"}']]);
    expect(call.processor.finalResult()).toMatchObject({ kind: 'rewritten', report: { bytesIn: 26, bytesOut: 14, decompressed: { encoding: 'gzip', bytes: gz.length } } });
  });
});

describe('OpenAI paths: the deployment comes from the body', () => {
  test.each(['toString', 'constructor', '__proto__', 'hasOwnProperty'])('model %j is a deployment name like any other', (name) => {
    const call = startCall(openai);
    const sent = `{"model":"${name}","prompt":"p"}`;
    const answers = transcript(call, [headers(jsonHeaders({ 'content-length': String(sent.length) }, OPENAI_PATH)), body(sent, true)]);
    expect(answers[1]).toEqual([
      `body: set :path=/openai/deployments/${encodeURIComponent(name)}/images/generations?api-version=2025-04-01-preview; set content-length=14; clear route cache; replace {"prompt":"p"}`,
    ]);
  });

  test('mapModels on v1 routes with model "constructor": kept as sent, no error', () => {
    const call = startCall({ rewrite: { v1: { mapModels: true }, deployments: { small: 'gpt-image-1' } } });
    const sent = '{"model":"constructor","prompt":"p"}';
    const answers = transcript(call, [
      headers(jsonHeaders({ 'content-length': String(sent.length) }, '/openai/v1/images/generations')),
      body(sent, true),
    ]);
    expect(answers).toEqual([['headers: override BUFFERED'], ['body: continue']]);
    expect(call.processor.finalResult()).toMatchObject({ kind: 'passed', reason: 'no_model' });
  });

  test('a deployment name longer than configuration allows (64) is refused here too', () => {
    const call = startCall(openai);
    const sent = `{"model":"${'d'.repeat(65)}"}`;
    const answers = transcript(call, [headers(jsonHeaders({ 'content-length': String(sent.length) }, OPENAI_PATH)), body(sent, true)]);
    expect(answers[1]).toEqual(['immediate 400 azure_image_extproc_invalid_deployment']);
    const fits = startCall(openai);
    const ok = `{"model":"${'d'.repeat(64)}"}`;
    expect(transcript(fits, [headers(jsonHeaders({ 'content-length': String(ok.length) }, OPENAI_PATH)), body(ok, true)])[1]![0]).toMatch(/^body: set :path=/);
  });

  test('a query pair with a control byte cannot reach :path: 400', () => {
    const call = startCall(openai);
    const sent = '{"model":"m"}';
    const answers = transcript(call, [headers(jsonHeaders({ 'content-length': '13' }, `${OPENAI_PATH}?x=\r`)), body(sent, true)]);
    expect(answers[1]).toEqual(['immediate 400 azure_image_extproc_invalid_header_value']);
  });
});
