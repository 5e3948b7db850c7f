// Body editor benchmarks: the JSON editor against JSON.parse + JSON.stringify on generation-like
// bodies (target: at least 5x faster), and incremental throughput on large bodies in 64 KiB chunks
// (Envoy's STREAMED chunks are typically this size or smaller).
//
// Run alone: npx tsx bench/editors.ts
import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { createJsonEditor, createMultipartEditor, editInChunks, editJson } from '../src/body/index.js';
import type { FieldRules, StreamEditor } from '../src/body/index.js';

export interface BenchRow {
  name: string;
  value: string;
  target?: string;
  ok?: boolean;
}

const MiB = 1024 * 1024;
const CHUNK = 64 * 1024;
const SPEED_UP_TARGET = 5;
const dropModel: FieldRules = new Map([['model', () => 'remove' as const]]);

/** A generation-like JSON body of about `size` bytes: a prompt, `model`, a large base64 image. */
function generationBody(size: number): Buffer {
  const prompt = 'A watercolour painting of a lighthouse at dawn, soft light, "high detail" \\ 4k. '.repeat(20);
  const head = JSON.stringify({ prompt, model: 'gpt-image-1', size: '1024x1024', quality: 'high' }).slice(0, -1);
  const image = randomBytes(Math.floor(((size - head.length - 40) * 3) / 4)).toString('base64');
  return Buffer.from(`${head},"image":"${image}","n":1}`);
}

/** A multipart edit body of about `size` bytes: model, prompt, one large binary image. */
function multipartBody(boundary: string, size: number): Buffer {
  const field = (name: string, value: string) => `--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`;
  const imageHead = `--${boundary}\r\nContent-Disposition: form-data; name="image[]"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n`;
  return Buffer.concat([
    Buffer.from(field('prompt', 'Add a red scarf to the cat') + field('model', 'gpt-image-1') + imageHead),
    randomBytes(size),
    Buffer.from(`\r\n${field('n', '1')}--${boundary}--\r\n`),
  ]);
}

/** Milliseconds per call of `fn`: the median of several timed batches. */
function timeMs(fn: () => unknown, batches = 7, perBatch = 3): number {
  fn();
  const samples: number[] = [];
  for (let b = 0; b < batches; b++) {
    const start = performance.now();
    for (let i = 0; i < perBatch; i++) fn();
    samples.push((performance.now() - start) / perBatch);
  }
  return median(samples);
}

function median(values: number[]): number {
  return [...values].sort((x, y) => x - y)[Math.floor(values.length / 2)]!;
}

/**
 * Samples `a` and `b` (milliseconds per call each) in alternating rounds, after a warm-up for the JIT and
 * the heap, and returns the median of each and of the per-round ratio a/b, so load from other processes
 * and garbage collection weigh on both alike.
 */
function alternate(sampleA: () => number, sampleB: () => number, rounds = 15): { aMs: number; bMs: number; ratio: number } {
  for (let i = 0; i < 5; i++) {
    sampleA();
    sampleB();
  }
  const as: number[] = [];
  const bs: number[] = [];
  for (let round = 0; round < rounds; round++) {
    as.push(sampleA());
    bs.push(sampleB());
  }
  return { aMs: median(as), bMs: median(bs), ratio: median(as.map((value, i) => value / bs[i]!)) };
}

function compare(a: () => unknown, b: () => unknown): { aMs: number; bMs: number; ratio: number } {
  return alternate(() => timeMs(a, 1, 3), () => timeMs(b, 1, 3));
}

/**
 * Like compare, for an `a` that consumes its input (an in-place edit): each timed call gets its own copy
 * of `body`, made before the clock starts, as the server gets a fresh buffer from each gRPC message.
 */
function compareOwned(body: Buffer, a: (owned: Buffer) => unknown, b: () => unknown): { aMs: number; bMs: number; ratio: number } {
  const timeOwned = (): number => {
    const copies = [Buffer.from(body), Buffer.from(body), Buffer.from(body)];
    const start = performance.now();
    for (const copy of copies) a(copy);
    return (performance.now() - start) / copies.length;
  };
  return alternate(timeOwned, () => timeMs(b, 1, 3));
}

/** Throws unless the in-place edit of a copy of `body` returns that copy's own memory. */
function assertInPlace(body: Buffer): void {
  const owned = Buffer.from(body);
  const outcome = editJson(owned, dropModel, { inPlace: true });
  if (outcome.kind !== 'edited' || outcome.body.buffer !== owned.buffer || outcome.body.byteOffset !== owned.byteOffset) {
    throw new Error('the in-place edit did not run in place');
  }
}

function feedChunks(editor: StreamEditor, body: Buffer): number {
  const chunks = Array.from({ length: Math.ceil(body.length / CHUNK) }, (_, i) => body.subarray(i * CHUNK, (i + 1) * CHUNK));
  const released = editInChunks(editor, chunks).length;
  if (editor.outcome !== 'edited') throw new Error(`benchmark body not edited: ${editor.outcome}`);
  return released;
}

const ms = (value: number) => `${value.toFixed(2)} ms`;
const mbPerSecond = (bytes: number, millis: number) => `${(bytes / 1e6 / (millis / 1000)).toFixed(0)} MB/s`;

export async function benchEditors(): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const size of [1 * MiB, 10 * MiB]) {
    const body = generationBody(size);
    const label = `${size / MiB} MiB`;
    const outcome = editJson(body, dropModel);
    if (outcome.kind !== 'edited') throw new Error(`benchmark body not edited: ${outcome.kind}`);
    const baseline = () => {
      const parsed = JSON.parse(body.toString()) as Record<string, unknown>;
      delete parsed.model;
      return JSON.stringify(parsed);
    };
    const editor = () => editJson(body, dropModel);
    const { aMs: baselineMs, bMs: editorMs, ratio } = compare(baseline, editor);
    rows.push({ name: `editJson, ${label} generation body`, value: ms(editorMs) });
    rows.push({ name: `JSON.parse + delete + JSON.stringify, ${label}`, value: ms(baselineMs) });
    rows.push({ name: `editJson speed-up, ${label}`, value: `${ratio.toFixed(1)}x`, target: `>= ${SPEED_UP_TARGET}x`, ok: ratio >= SPEED_UP_TARGET });
    // What the server runs (src/call/whole-body.ts): the body is its own (decoded from the gRPC message), so
    // it is edited in place. Checked first, so the row cannot silently time the copying fallback.
    assertInPlace(body);
    const inPlace = compareOwned(body, (owned) => editJson(owned, dropModel, { inPlace: true }), baseline);
    rows.push({ name: `editJson in place (as the server runs it), ${label}`, value: ms(inPlace.aMs) });
    rows.push({
      name: `editJson in place speed-up, ${label}`,
      value: `${(1 / inPlace.ratio).toFixed(1)}x`,
      target: `>= ${SPEED_UP_TARGET}x`,
      ok: 1 / inPlace.ratio >= SPEED_UP_TARGET,
    });
  }

  const json = generationBody(20 * MiB);
  const jsonMs = timeMs(() => feedChunks(createJsonEditor(dropModel), json), 5, 1);
  rows.push({ name: 'createJsonEditor, 20 MiB in 64 KiB chunks', value: mbPerSecond(json.length, jsonMs) });

  const boundary = '----WebKitFormBoundary7MA4YWxkTrZu0gW';
  const multipart = multipartBody(boundary, 20 * MiB);
  const multipartMs = timeMs(() => feedChunks(createMultipartEditor(boundary, dropModel), multipart), 5, 1);
  rows.push({ name: 'createMultipartEditor, 20 MiB in 64 KiB chunks', value: mbPerSecond(multipart.length, multipartMs) });
  return rows;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  for (const row of await benchEditors()) {
    const verdict = row.ok === undefined ? '' : `  (target ${row.target}: ${row.ok ? 'ok' : 'MISSED'})`;
    console.log(`${row.name.padEnd(52)} ${row.value.padStart(10)}${verdict}`);
  }
}
