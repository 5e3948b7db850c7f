// Hostile input at the editor level: what a client can send to make an editor use unbounded memory or
// time, or to make it send something that is neither the input nor the finished edit.
import { describe, expect, test } from 'vitest';
import { createJsonEditor, createMultipartEditor, DEFAULT_MAX_HELD_BYTES, editInChunks, editJson, editMultipart } from '../../src/body/index.js';
import type { EditOutcome, FieldRules, StreamEditor } from '../../src/body/index.js';
import { MAX_JSON_DEPTH } from '../../src/body/json.js';

const MiB = 1024 * 1024;
const dropModel: FieldRules = new Map([['model', () => 'remove' as const]]);

/** `body` in chunks of `size` bytes. */
function chunks(body: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < body.length; at += size) out.push(body.subarray(at, at + size));
  return out;
}

/** Streams `body` through `editor` in `size`-byte chunks; returns the output and the most the editor cost. */
function stream(editor: StreamEditor, body: Buffer, size: number): { output: Buffer; peakHeld: number; peakState: number } {
  const released: Buffer[] = [];
  let peakHeld = 0;
  let peakState = 0;
  for (const chunk of chunks(body, size)) {
    released.push(editor.push(chunk));
    peakHeld = Math.max(peakHeld, editor.heldBytes);
    peakState = Math.max(peakState, editor.stateBytes);
  }
  released.push(editor.end());
  return { output: Buffer.concat(released), peakHeld, peakState };
}

const forwarded = (input: Buffer, outcome: EditOutcome) => (outcome.kind === 'edited' ? outcome.body : input);

describe('deep nesting', () => {
  test('16 MiB of "[" in a value: fixed parser state, too_deep, the body goes on byte for byte', () => {
    const body = Buffer.concat([Buffer.from('{"prompt":'), Buffer.alloc(16 * MiB, '['), Buffer.from(',"model":"m"}')]);
    const before = process.memoryUsage().heapUsed;
    const editor = createJsonEditor(dropModel);
    const { output, peakHeld, peakState } = stream(editor, body, 64 * 1024);
    // The editor is still referenced here, so whatever it grew is still on the heap.
    const grown = process.memoryUsage().heapUsed - before;
    expect(output.equals(body)).toBe(true);
    expect(editor.outcome).toBe('invalid');
    expect(editor.failure).toBe('too_deep');
    expect(editor.editedBeforeFailure).toBe(false);
    expect(peakHeld).toBe(0);
    expect(peakState).toBeLessThanOrEqual(Math.ceil(MAX_JSON_DEPTH / 8) + 16 * 1024);
    expect(grown).toBeLessThan(32 * MiB);
    expect(editor.reason).toBe(`JSON nested deeper than ${MAX_JSON_DEPTH} levels at byte ${10 + MAX_JSON_DEPTH}`);
  });

  test('the whole-body editor says the same, with its failure code', () => {
    const body = Buffer.from(`{"model":"m","prompt":${'['.repeat(MAX_JSON_DEPTH + 1)}${']'.repeat(MAX_JSON_DEPTH + 1)}}`);
    // Deep after a change: the edit is finished (the stack grows, one bit per level).
    expect(editJson(body, dropModel)).toMatchObject({ kind: 'edited' });
    const deepFirst = Buffer.from(`{"prompt":${'['.repeat(MAX_JSON_DEPTH + 1)}${']'.repeat(MAX_JSON_DEPTH + 1)},"model":"m"}`);
    expect(editJson(deepFirst, dropModel)).toMatchObject({ kind: 'invalid', failure: 'too_deep' });
    // Exactly the limit is fine.
    const atLimit = Buffer.from(`{"prompt":${'['.repeat(MAX_JSON_DEPTH)}${']'.repeat(MAX_JSON_DEPTH)},"model":"m"}`);
    expect(editJson(atLimit, dropModel)).toMatchObject({ kind: 'edited' });
  });

  test('after a change, deep nesting costs one bit per level, counted in stateBytes', () => {
    const depth = 1_000_000;
    const body = Buffer.concat([Buffer.from('{"model":"m","prompt":'), Buffer.alloc(depth, '['), Buffer.alloc(depth, ']'), Buffer.from('}')]);
    const editor = createJsonEditor(dropModel);
    const { output, peakState } = stream(editor, body, 64 * 1024);
    expect(editor.outcome).toBe('edited');
    expect(output.equals(Buffer.concat([Buffer.from('{"prompt":'), Buffer.alloc(depth, '['), Buffer.alloc(depth, ']'), Buffer.from('}')]))).toBe(true);
    expect(peakState).toBeGreaterThanOrEqual(depth / 8);
    expect(peakState).toBeLessThanOrEqual(depth / 4 + 16 * 1024);
  });
});

describe('megabytes of whitespace around a removed member', () => {
  const spaces = Buffer.alloc(Math.round(1.1 * MiB), ' ');

  test.each([
    ['after a removed first member', ['{"model":"x"', ',"prompt":"p"}'], '{"prompt":"p"}'],
    ['after a removed only member', ['{"model":"x"', '}'], '{}'],
    ['before the comma of a removed member', ['{"prompt":"p"', ',"model":"x"}'], null],
    ['after a removed member, a kept one before it', ['{"prompt":"p","model":"x"', ',"n":1}'], null],
    ['after the comma following a removed member', ['{"model":"x",', '"prompt":"p"}'], '{"prompt":"p"}'],
  ])('%s: streamed with the default hold cap, the output is the whole-body edit', (_, [head, tail], expected) => {
    const body = Buffer.concat([Buffer.from(head!), spaces, Buffer.from(tail!)]);
    const whole = editJson(Buffer.from(body), dropModel);
    if (expected !== null) expect(forwarded(body, whole).toString()).toBe(expected);
    for (const size of [64 * 1024, 1000, 1.5 * MiB]) {
      const editor = createJsonEditor(dropModel);
      const { output, peakHeld } = stream(editor, body, size);
      const valid = editor.outcome === 'edited' || output.equals(body);
      expect(valid).toBe(true);
      if (editor.outcome === 'edited') expect(output.equals(forwarded(body, whole))).toBe(true);
      // Whitespace that is certain to go is never held.
      if (expected !== null) expect(peakHeld).toBeLessThan(64 * 1024);
      expect(JSON.parse(output.toString())).toBeTypeOf('object');
    }
  });

  test('a caller that stops editing inside that whitespace (a body limit) still sends valid JSON', () => {
    const body = Buffer.concat([Buffer.from('{"model":"x"'), spaces, Buffer.from(',"prompt":"p"}')]);
    const pieces = chunks(body, 64 * 1024);
    const editor = createJsonEditor(dropModel);
    const out = [editor.push(pieces[0]!), editor.stop(), ...pieces.slice(1).map((piece) => editor.push(piece)), editor.end()];
    expect(Buffer.concat(out).toString()).toBe('{"prompt":"p"}');
    expect([editor.outcome, editor.heldBytes, editor.failure]).toEqual(['edited', 0, undefined]);
  });

  test('whitespace that may stay, held past the cap before any change, stops the edit: the body goes on byte for byte', () => {
    const body = Buffer.concat([Buffer.from('{"prompt":"p"'), spaces, Buffer.from(',"model":"x"}')]);
    const editor = createJsonEditor(dropModel);
    const { output } = stream(editor, body, 64 * 1024);
    expect(output.equals(body)).toBe(true);
    expect({ outcome: editor.outcome, failure: editor.failure, editedBeforeFailure: editor.editedBeforeFailure }).toEqual({
      outcome: 'invalid',
      failure: 'held_too_large',
      editedBeforeFailure: false,
    });
    expect(editor.reason).toBe(`held member exceeds ${DEFAULT_MAX_HELD_BYTES} bytes`);
  });
});

describe('failure codes and edits before a failure', () => {
  test('malformed after a change: editedBeforeFailure, and what went out is the edit so far and the rest as it came', () => {
    const editor = createJsonEditor(dropModel);
    const output = editInChunks(editor, [Buffer.from('{"model":"x","n":'), Buffer.from('tru}')]);
    expect(output.toString()).toBe('{"n":tru}');
    expect([editor.outcome, editor.failure, editor.editedBeforeFailure]).toEqual(['invalid', 'malformed', true]);
  });

  test('malformed before any change: no edit before the failure', () => {
    const editor = createJsonEditor(dropModel);
    editInChunks(editor, [Buffer.from('{"n":tru}')]);
    expect([editor.outcome, editor.failure, editor.editedBeforeFailure]).toEqual(['invalid', 'malformed', false]);
  });

  test('a whole-body failure carries its code; a body that is fine has none', () => {
    expect(editJson(Buffer.from('[1]'), dropModel)).toMatchObject({ kind: 'invalid', failure: 'malformed' });
    expect(editMultipart(Buffer.from('--b\r\n'), 'b', dropModel)).toMatchObject({ kind: 'invalid', failure: 'malformed' });
    const editor = createJsonEditor(dropModel);
    editInChunks(editor, [Buffer.from('{"model":1}')]);
    expect([editor.outcome, editor.failure, editor.reason, editor.editedBeforeFailure]).toEqual(['edited', undefined, '', false]);
  });

  test('a member over the hold cap before any change: held_too_large, byte for byte', () => {
    const body = Buffer.from(`{"model":"${'m'.repeat(100)}","n":1}`);
    const editor = createJsonEditor(dropModel, { maxHeldBytes: 64 });
    expect(editInChunks(editor, chunks(body, 7)).equals(body)).toBe(true);
    expect([editor.failure, editor.editedBeforeFailure]).toEqual(['held_too_large', false]);
  });
});

describe('many repeated names', () => {
  test('100,000 "model" keys in one JSON body: one touched entry with a count, bounded hold', () => {
    const body = Buffer.from(`{"prompt":"p",${Array.from({ length: 100_000 }, (_, i) => `"model":"m${i}"`).join(',')},"n":1}`);
    const whole = editJson(Buffer.from(body), dropModel);
    expect(whole.kind).toBe('edited');
    if (whole.kind !== 'edited') return;
    expect(whole.body.toString()).toBe('{"prompt":"p","n":1}');
    expect(whole.touched.map((t) => [t.name, t.value.toString(), t.count])).toEqual([['model', '"m0"', 100_000]]);
    const editor = createJsonEditor(dropModel);
    const { output, peakHeld } = stream(editor, body, 16 * 1024);
    expect(output.toString()).toBe('{"prompt":"p","n":1}');
    expect(editor.touched).toHaveLength(1);
    expect(editor.touched[0]!.count).toBe(100_000);
    expect(peakHeld).toBeLessThan(16 * 1024);
  });

  test('100,000 multipart parts, half of them "model": one touched entry, output correct', () => {
    const part = (name: string, value: string) => `--B\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`;
    const parts = Array.from({ length: 100_000 }, (_, i) => (i % 2 === 0 ? part('model', `m${i}`) : part('p', `v${i}`)));
    const body = Buffer.from(parts.join('') + '--B--\r\n');
    const expected = parts.filter((_, i) => i % 2 === 1).join('') + '--B--\r\n';
    const whole = editMultipart(Buffer.from(body), 'B', dropModel);
    expect(whole.kind === 'edited' && whole.body.toString()).toBe(expected);
    if (whole.kind === 'edited') expect(whole.touched.map((t) => [t.value.toString(), t.count])).toEqual([['m0', 50_000]]);
    const editor = createMultipartEditor('B', dropModel);
    const { output, peakHeld } = stream(editor, body, 16 * 1024);
    expect(output.toString()).toBe(expected);
    expect(editor.touched).toHaveLength(1);
    expect(peakHeld).toBeLessThan(16 * 1024);
  });
});

describe('multipart that never closes', () => {
  const head = (name: string) => Buffer.from(`--B\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n`);
  const content = Buffer.alloc(4 * MiB, 'x');

  test('an unmatched part: nothing held, the body goes on byte for byte, malformed at the end', () => {
    const body = Buffer.concat([head('image'), content]);
    const editor = createMultipartEditor('B', dropModel);
    const { output, peakHeld } = stream(editor, body, 64 * 1024);
    expect(output.equals(body)).toBe(true);
    expect(peakHeld).toBeLessThanOrEqual(64);
    expect([editor.outcome, editor.failure]).toEqual(['invalid', 'malformed']);
  });

  test('a "model" part: held up to the cap, then byte for byte', () => {
    const body = Buffer.concat([head('model'), content]);
    const editor = createMultipartEditor('B', dropModel);
    const { output, peakHeld } = stream(editor, body, 64 * 1024);
    expect(output.equals(body)).toBe(true);
    expect(peakHeld).toBeLessThanOrEqual(DEFAULT_MAX_HELD_BYTES + 64 * 1024);
    expect([editor.outcome, editor.failure]).toEqual(['invalid', 'held_too_large']);
  });

  test('a header block that never ends: stopped at 16 KiB, byte for byte', () => {
    const body = Buffer.concat([Buffer.from('--B\r\nX-Long: '), content]);
    const editor = createMultipartEditor('B', dropModel);
    const { output, peakState } = stream(editor, body, 1000);
    expect(output.equals(body)).toBe(true);
    expect(peakState).toBeLessThanOrEqual(64 * 1024);
    expect(editor.failure).toBe('malformed');
  });
});

describe('1-byte chunks', () => {
  test('a 1 MiB JSON body with a 512 KiB "model" value, one byte per push: right output, memory as held', { timeout: 60_000 }, () => {
    const value = `"${'v'.repeat(512 * 1024)}"`;
    const body = Buffer.from(`{"prompt":"${'p'.repeat(512 * 1024)}","model":${value},"n":1}`);
    const expected = `{"prompt":"${'p'.repeat(512 * 1024)}","n":1}`;
    const before = process.memoryUsage().heapUsed;
    const editor = createJsonEditor(dropModel);
    const output = Buffer.alloc(body.length);
    let length = 0;
    let peakCost = 0;
    let peakHeap = 0;
    for (let at = 0; at < body.length; at++) {
      // A fresh buffer per push, as gRPC gives one per message.
      length += editor.push(Buffer.from(body.subarray(at, at + 1))).copy(output, length);
      if ((at & 0xffff) === 0) {
        peakCost = Math.max(peakCost, editor.heldBytes + editor.stateBytes);
        peakHeap = Math.max(peakHeap, process.memoryUsage().heapUsed - before);
      }
    }
    length += editor.end().copy(output, length);
    expect(output.subarray(0, length).toString()).toBe(expected);
    expect(editor.touched[0]!.value.toString()).toBe(value);
    // The touched value it keeps (a copy: the caller's chunks are not its own) is counted too.
    expect(editor.stateBytes).toBeGreaterThanOrEqual(value.length);
    // What the editor reports is what it costs: held bytes plus at most one packing block and the stack.
    expect(peakCost).toBeLessThanOrEqual(value.length + 16 * 1024 + 200);
    // Held bytes are packed, not one Buffer object per byte (which costs ~100 bytes of heap each).
    expect(peakHeap).toBeLessThan(24 * MiB);
  });

  test('a 1 MiB multipart body, one byte per push, the "model" part 256 KiB', { timeout: 60_000 }, () => {
    const model = Buffer.alloc(256 * 1024, 'm');
    const image = Buffer.alloc(768 * 1024, 'i');
    const part = (name: string, value: Buffer) => Buffer.concat([Buffer.from(`--B\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n`), value, Buffer.from('\r\n')]);
    const body = Buffer.concat([part('model', model), part('image', image), Buffer.from('--B--')]);
    const editor = createMultipartEditor('B', dropModel);
    const released: Buffer[] = [];
    for (let at = 0; at < body.length; at++) released.push(editor.push(Buffer.from(body.subarray(at, at + 1))));
    released.push(editor.end());
    expect(Buffer.concat(released).equals(Buffer.concat([part('image', image), Buffer.from('--B--')]))).toBe(true);
    expect(editor.touched[0]!.value.equals(model)).toBe(true);
  });
});
