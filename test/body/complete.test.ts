// `complete`: the editors say when a body's structure has ended, so a caller holding a streamed body for
// verification can release it even when no end_of_stream will come (a body followed by trailers).
import { describe, expect, test } from 'vitest';
import { createJsonEditor, createMultipartEditor } from '../../src/body/index.js';

const rules = new Map([['model', () => 'remove' as const]]);

describe('JSON', () => {
  test('complete once the top-level object closes, and stays so through trailing whitespace', () => {
    const editor = createJsonEditor(rules);
    editor.push(Buffer.from('{"model":"m","n":{"a":1}'));
    expect(editor.complete).toBe(false);
    editor.push(Buffer.from('}'));
    expect(editor.complete).toBe(true);
    editor.push(Buffer.from(' \n'));
    expect(editor.complete).toBe(true);
  });

  test('never complete for a malformed body, or one cut inside a UTF-8 sequence', () => {
    const broken = createJsonEditor(rules);
    broken.push(Buffer.from('{"a":}'));
    expect(broken.complete).toBe(false);
    const cut = createJsonEditor(rules);
    cut.push(Buffer.from('{"a":"caf'));
    cut.push(Buffer.from([0xc3]));
    expect(cut.complete).toBe(false);
  });

  test('garbage after the object: no longer complete', () => {
    const editor = createJsonEditor(rules);
    editor.push(Buffer.from('{}'));
    expect(editor.complete).toBe(true);
    editor.push(Buffer.from('x'));
    expect(editor.complete).toBe(false);
    expect(editor.outcome).toBe('invalid');
  });
});

describe('multipart', () => {
  test('complete at the close delimiter, epilogue allowed', () => {
    const editor = createMultipartEditor('b', rules);
    editor.push(Buffer.from('--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--b'));
    expect(editor.complete).toBe(false);
    editor.push(Buffer.from('--\r\n'));
    expect(editor.complete).toBe(true);
    editor.push(Buffer.from('epilogue'));
    expect(editor.complete).toBe(true);
  });
});
