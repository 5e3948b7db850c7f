// The streamed strategy: chunks through an incremental editor, a verification window while the body is
// small, every byte not deliberately removed sent upstream in order, whatever ends the body.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, test } from 'vitest';
import type { ProcessingRequest } from '../../src/proto.js';
import { body, headers, jsonHeaders, startCall, streamedChunksUpstream, streamedUpstream, trailers, transcript } from './transcript.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function split(bytes: Buffer, size: number): Buffer[] {
  const chunks: Buffer[] = [];
  for (let at = 0; at < bytes.length; at += size) chunks.push(bytes.subarray(at, at + size));
  return chunks;
}

describe('STREAMED (asked with mode_override: large or unknown length)', () => {
  test('announced above the threshold: no window, each chunk answered at once, model cut out', () => {
    const call = startCall({ streamThresholdBytes: 16 });
    const answers = transcript(call, [
      headers(jsonHeaders({ 'content-length': '30' })),
      body('{"model":"m",'),
      body('"prompt":"a cat"'),
      body('}', true),
    ]);
    expect(answers).toEqual([
      ['headers: remove content-length; override STREAMED'],
      ['body: replace {'],
      ['body: continue'],
      ['body: continue'],
    ]);
    expect(call.processor.finalResult()).toMatchObject({ kind: 'rewritten', report: { mode: 'STREAMED', bytesIn: 30, bytesOut: 18, changes: ['model'] } });
  });

  test('unknown length: the window holds until the body is whole, then the last answer carries it edited', () => {
    const call = startCall();
    const answers = transcript(call, [headers(jsonHeaders()), body('{"prompt":"p",'), body('"model":"m"}', true)]);
    expect(answers).toEqual([['headers: override STREAMED'], ['body: clear'], ['body: replace {"prompt":"p"}']]);
    expect(call.budget.held).toBe(0);
  });

  test('a malformed body inside the window goes out byte for byte', () => {
    const call = startCall();
    const chunks = [Buffer.from('{"model":"m",'), Buffer.from('"prompt":"p"'), Buffer.from('x}')];
    transcript(call, [headers(jsonHeaders()), ...chunks.map((chunk, i) => body(chunk, i === 2))]);
    expect(streamedChunksUpstream(chunks, call.answers.slice(1)).toString()).toBe('{"model":"m","prompt":"p"x}');
    expect(call.processor.finalResult()).toMatchObject({ kind: 'passed', reason: 'invalid_body' });
  });

  test('megabytes of whitespace after a removed first member: valid JSON upstream, reported rewritten', () => {
    const sent = Buffer.from(`{"model":"x"${' '.repeat(1.1 * MiB)},"prompt":"p"}`);
    const chunks = split(sent, 64 * KiB);
    const call = startCall();
    transcript(call, [headers(jsonHeaders({ 'content-length': String(sent.length) })), ...chunks.map((chunk, i) => body(chunk, i === chunks.length - 1))]);
    const upstream = streamedChunksUpstream(chunks, call.answers.slice(1));
    expect(JSON.parse(upstream.toString())).toEqual({ prompt: 'p' });
    expect(call.processor.finalResult()).toMatchObject({ kind: 'rewritten', report: { changes: ['model'], bytesOut: upstream.length } });
    expect(call.processor.finalResult()).not.toHaveProperty('report.stopped');
  });

  test('a well-formed body of unknown length followed by trailers: released when its structure ends, before the trailers', () => {
    const call = startCall();
    const answers = transcript(call, [headers(jsonHeaders(), 'STREAMED'), body('{"model":"m",'), body('"n":1}'), trailers()]);
    expect(answers).toEqual([['headers: continue'], ['body: clear'], ['body: replace {"n":1}'], ['trailers']]);
  });

  test('a body still incomplete when trailers arrive: the held bytes cannot be sent; counted as cut_by_trailers', () => {
    const call = startCall();
    const answers = transcript(call, [headers(jsonHeaders(), 'STREAMED'), body('{"model":"m","prompt":"unfinished'), trailers()]);
    expect(answers).toEqual([['headers: continue'], ['body: clear'], ['trailers']]);
    expect(call.processor.finalResult()).toMatchObject({ kind: 'passed', reason: 'cut_by_trailers' });
    expect(call.budget.held).toBe(0);
  });

  test('a chunked body that crosses maxBodyBytes after model went out without it: reported rewritten, stopped too_large', () => {
    const call = startCall({ streamThresholdBytes: 1 * KiB, limits: { maxBodyBytes: 4 * KiB } });
    const sent = Buffer.from(`{"model":"m","prompt":"${'p'.repeat(6 * KiB)}","model":"again"}`);
    const chunks = split(sent, 512);
    transcript(call, [headers(jsonHeaders()), ...chunks.map((chunk, i) => body(chunk, i === chunks.length - 1))]);
    const upstream = streamedChunksUpstream(chunks, call.answers.slice(1));
    // Edited up to the limit (the first model is gone), the rest as it came (the second stays).
    expect(upstream.toString()).toBe(`{"prompt":"${'p'.repeat(6 * KiB)}","model":"again"}`);
    expect(call.processor.finalResult()).toMatchObject({ kind: 'rewritten', report: { changes: ['model'], stopped: 'too_large' } });
  });

  test('crossing maxBodyBytes inside the whitespace after a removed first member: the rest passes, still valid JSON', () => {
    const call = startCall({ streamThresholdBytes: 256, limits: { maxBodyBytes: 1 * KiB } });
    const sent = Buffer.from(`{"model":"x"${' '.repeat(2 * KiB)},"prompt":"p"}`);
    const chunks = split(sent, 128);
    transcript(call, [headers(jsonHeaders()), ...chunks.map((chunk, i) => body(chunk, i === chunks.length - 1))]);
    const upstream = streamedChunksUpstream(chunks, call.answers.slice(1));
    expect(JSON.parse(upstream.toString())).toEqual({ prompt: 'p' });
    expect(call.processor.finalResult()).toMatchObject({ kind: 'rewritten', report: { changes: ['model'], stopped: 'too_large' } });
  });

  test('crossing maxBodyBytes while the window still holds everything: the body goes out byte for byte, passed too_large', () => {
    const call = startCall({ streamThresholdBytes: 4 * KiB, limits: { maxBodyBytes: 4 * KiB } });
    const sent = Buffer.from(`{"model":"m","prompt":"${'p'.repeat(5 * KiB)}"}`);
    const chunks = split(sent, 512);
    transcript(call, [headers(jsonHeaders()), ...chunks.map((chunk, i) => body(chunk, i === chunks.length - 1))]);
    expect(streamedChunksUpstream(chunks, call.answers.slice(1)).equals(sent)).toBe(true);
    expect(call.processor.finalResult()).toMatchObject({ kind: 'passed', reason: 'too_large' });
  });
});

describe('FULL_DUPLEX_STREAMED (Envoy drains every chunk: the answers are the body)', () => {
  test('a well-formed body and trailers: the edit goes out when the body is complete, end_of_stream false', () => {
    const call = startCall();
    const answers = transcript(call, [headers(jsonHeaders(), 'FULL_DUPLEX_STREAMED'), body('{"model":"m",'), body('"n":1}'), trailers()]);
    expect(answers).toEqual([['headers: continue'], [], ['body: stream {"n":1}'], ['trailers']]);
  });

  test('a malformed body ended by trailers after going over maxBodyBytes: all 175 bytes reach the upstream, in order', () => {
    const call = startCall({ streamThresholdBytes: 100, limits: { maxBodyBytes: 100 } });
    const sent = Buffer.from(`{"model":"m","prompt":"${'a'.repeat(152)}`);
    expect(sent.length).toBe(175);
    transcript(call, [headers(jsonHeaders(), 'FULL_DUPLEX_STREAMED'), body(sent.subarray(0, 100)), body(sent.subarray(100)), trailers()]);
    expect(streamedUpstream(call.answers).equals(sent)).toBe(true);
    expect(call.processor.finalResult()).toMatchObject({ kind: 'passed', reason: 'too_large' });
  });

  test('a malformed body ended by trailers: every byte reaches the upstream before the trailers answer', () => {
    const call = startCall();
    const sent = Buffer.from(`{"model":"m","prompt":"${'a'.repeat(152)}`);
    const answers = transcript(call, [headers(jsonHeaders(), 'FULL_DUPLEX_STREAMED'), body(sent.subarray(0, 100)), body(sent.subarray(100)), trailers()]);
    expect(answers.at(-1)).toEqual(['body: stream 175 bytes', 'trailers']);
    expect(streamedUpstream(call.answers).equals(sent)).toBe(true);
    expect(call.processor.finalResult()).toMatchObject({ kind: 'passed', reason: 'invalid_body' });
  });

  test('end_of_stream: the last answer carries end_of_stream true', () => {
    const call = startCall();
    const answers = transcript(call, [headers(jsonHeaders(), 'FULL_DUPLEX_STREAMED'), body('{"model":"m",'), body('"n":1}', true)]);
    expect(answers).toEqual([['headers: continue'], [], ['body: stream (end) {"n":1}']]);
  });
});

describe('what a call holds costs what the budget counts', () => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;

  test('a body of unknown length in 1-byte chunks: the verification window is counted as it really costs', () => {
    const call = startCall();
    call.send(headers(jsonHeaders()));
    const sent = Buffer.from(`{"prompt":"${'p'.repeat(256 * KiB)}","model":"m"}`);
    gc();
    const before = process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
    let peakReserved = 0;
    for (let at = 0; at < sent.length - 1; at++) {
      const message: ProcessingRequest = body(sent.subarray(at, at + 1));
      call.processor.handle(message);
      peakReserved = Math.max(peakReserved, call.budget.held);
    }
    gc();
    const held = process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers - before;
    // Input and output kept in two growing buffers: at most 4x the body (the bound leaves room for what
    // the test runner allocates meanwhile). One Buffer per chunk (the previous design) cost over 100 bytes
    // of heap per body byte here.
    expect(held).toBeLessThan(16 * sent.length);
    expect(peakReserved).toBeGreaterThanOrEqual(2 * sent.length - 2);
    // Each buffer at most doubles what it stores, plus the editor's fixed working storage.
    expect(peakReserved).toBeLessThanOrEqual(4 * sent.length + 64 * KiB);
    const last = call.processor.handle(body(sent.subarray(sent.length - 1), true));
    expect(last).toHaveLength(1);
    expect(call.budget.held).toBe(0);
  }, 60_000);
});
