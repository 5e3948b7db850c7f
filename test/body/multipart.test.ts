import { describe, expect, test } from 'vitest';
import { createMultipartEditor, editMultipart } from '../../src/body/multipart.js';
import { editInChunks } from '../../src/body/editor.js';
import type { EditOutcome, FieldRules } from '../../src/body/types.js';

const dropModel: FieldRules = new Map([['model', () => 'remove' as const]]);
const B = 'XyZ';

/** A part as clients send it; `headers` replaces the default Content-Disposition line. */
function part(name: string, content: string | Buffer, headers?: string[]): Buffer {
  const lines = headers ?? [`Content-Disposition: form-data; name="${name}"`];
  return Buffer.concat([Buffer.from(`--${B}\r\n${lines.map((l) => l + '\r\n').join('')}\r\n`, 'latin1'), Buffer.from(content), Buffer.from('\r\n')]);
}
const close = Buffer.from(`--${B}--`);
const body = (...pieces: Array<string | Buffer>) => Buffer.concat(pieces.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : p)));

function forwarded(input: Buffer, outcome: EditOutcome): Buffer {
  return outcome.kind === 'edited' ? outcome.body : input;
}

/** `input` cut at each of `cuts`, into chunks for an incremental editor. */
const cut = (input: Buffer, cuts: number[]) => [0, ...cuts, input.length].slice(1).map((end, i, ends) => input.subarray(i === 0 ? 0 : ends[i - 1], end));

// Bytes that look like structure: CRLFs, dashes, a delimiter cut short, the boundary without CRLF.
const tricky = Buffer.from(`\r\n--Xy\r\n-\r\n--X\r\r\n\n--${B}\r\n${B}--\x00\xff\xfe`, 'latin1');

describe('editMultipart: removing the "model" part', () => {
  const image = part('image', tricky, ['Content-Disposition: form-data; name="image"; filename="a.png"', 'Content-Type: image/png']);
  test.each([
    ['first', body(part('model', 'gpt-image-1'), part('prompt', 'cat'), close), body(part('prompt', 'cat'), close)],
    ['middle', body(part('prompt', 'cat'), part('model', 'm'), image, close), body(part('prompt', 'cat'), image, close)],
    ['last', body(image, part('prompt', 'cat'), part('model', 'm'), close, '\r\n'), body(image, part('prompt', 'cat'), close, '\r\n')],
    ['only', body(part('model', 'm'), close), close],
    ['every model part', body(part('model', 'a'), image, part('model', 'b'), part('model', ''), close), body(image, close)],
    ['preamble and epilogue kept', body('preamble --XyZ\r\n\r\n', part('model', 'm'), image, close, '\r\nepilogue\r\n--XyZ--'), body('preamble --XyZ\r\n\r\n', image, close, '\r\nepilogue\r\n--XyZ--')],
    ['unquoted name', body(part('', 'm', ['Content-Disposition: form-data; name=model']), image, close), body(image, close)],
    ['header case and LWS', body(part('', 'm', ['content-DISPOSITION :  Form-Data ;NAME = "model" ; filename="x"']), image, close), body(image, close)],
    ['folded header', body(part('', 'm', ['Content-Type: text/plain', 'Content-Disposition: form-data;', '\tname="model"']), image, close), body(image, close)],
    ['escaped quote in name', body(part('', 'm', ['Content-Disposition: form-data; name="mod\\el"']), image, close), body(image, close)],
    ['padding after the boundary', body(`--${B} \t\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n`, image, `--${B}--`), body(image, close)],
    ['model with binary content', body(part('model', tricky), image, close), body(image, close)],
    ['model with empty content', body(image, part('model', ''), close), body(image, close)],
  ])('%s', (_, input, expected) => {
    const outcome = editMultipart(input, B, dropModel);
    expect(outcome.kind).toBe('edited');
    expect(forwarded(input, outcome).toString('latin1')).toBe(expected.toString('latin1'));
  });

  test.each([
    ['no model', body(part('prompt', 'cat'), part('image', tricky), close)],
    ['model[] and other names', body(part('model[]', 'm'), part('Model', 'm'), part('models', 'm'), part('image[]', 'x'), part('image[]', 'y'), close)],
    ['filename "model"', body(part('', 'm', ['Content-Disposition: form-data; name="image"; filename="model"']), close)],
    ['name* (RFC 2231) is not name', body(part('', 'm', ["Content-Disposition: form-data; name*=utf-8''model"]), close)],
    ['not form-data', body(part('', 'm', ['Content-Disposition: attachment; name="model"']), close)],
    ['unparseable disposition', body(part('', 'm', ['Content-Disposition: form-data; name="model']), close)],
    ['no headers', body(`--${B}\r\n\r\nmodel\r\n`, close)],
    ['no disposition', body(part('', 'model', ['Content-Type: text/plain']), close)],
    ['the word model in content', body(part('prompt', 'name="model"\r\n\r\n'), close)],
    ['zero parts, a preamble', body('preamble\r\n', close)],
    ['zero parts', body(close, '\r\n')],
  ])('%s: unchanged', (_, input) => {
    expect(editMultipart(input, B, dropModel)).toEqual({ kind: 'unchanged' });
  });

  test('a long realistic boundary', () => {
    const b = '----WebKitFormBoundary7MA4YWxkTrZu0gW';
    const input = Buffer.from(`--${b}\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-image-1\r\n--${b}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\ncat\r\n--${b}--\r\n`);
    const outcome = editMultipart(input, b, dropModel);
    expect(forwarded(input, outcome).toString()).toBe(`--${b}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\ncat\r\n--${b}--\r\n`);
  });

  test('replace swaps the content only; touched keeps the original', () => {
    const rules: FieldRules = new Map([['n', () => ({ replace: Buffer.from('1') })]]);
    const input = body(part('n', '4'), part('model', 'm'), close);
    const outcome = editMultipart(input, B, rules);
    expect(forwarded(input, outcome).toString()).toBe(body(part('n', '1'), part('model', 'm'), close).toString());
    expect(outcome).toMatchObject({ kind: 'edited', touched: [{ name: 'n', action: 'replace', value: Buffer.from('4') }] });
  });

  test('rules see the raw content bytes; keep and same-bytes replace are no change', () => {
    const seen: Buffer[] = [];
    const rules: FieldRules = new Map([['model', (raw: Buffer) => (seen.push(Buffer.from(raw)), { replace: raw })]]);
    const input = body(part('model', tricky), part('model', ''), close);
    expect(editMultipart(input, B, rules)).toEqual({ kind: 'unchanged' });
    expect(seen).toEqual([tricky, Buffer.alloc(0)]);
    expect(editMultipart(input, B, new Map([['model', () => 'keep' as const]]))).toEqual({ kind: 'unchanged' });
  });
});

describe('editMultipart: invalid bodies', () => {
  test.each([
    ['empty', body('')],
    ['no delimiter at all', body('Content-Disposition: form-data; name="model"\r\n\r\nm\r\n')],
    ['no opening delimiter', body(`Content-Disposition: form-data; name="model"\r\n\r\nm\r\n--${B}-\r\n`)],
    ['only a preamble', body('hello\r\n--XyZZ\r\n')],
    ['no close delimiter', body(part('model', 'm'), part('prompt', 'p'))],
    ['close delimiter cut short', body(part('prompt', 'p'), `--${B}-`)],
    ['boundary followed by text', body(part('prompt', 'p'), `--${B}Q\r\n`, close)],
    ['boundary inside content', body(part('prompt', `a\r\n--${B}b`), close)],
    ['delimiter line with bare LF', body(`--${B}\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n`, close)],
    ['part without header terminator', body(`--${B}\r\nContent-Disposition: form-data; name="model"\r\nm\r\n`, close)],
    ['header line without colon', body(part('', 'm', ['Content-Disposition form-data; name="model"']), close)],
    ['continuation line first', body(part('', 'm', [' Content-Disposition: form-data; name="model"']), close)],
    ['control character in headers', body(part('', 'm', ['Content-Disposition: form-data; name="mo\u0001del"']), close)],
    ['header block over 16 KiB', body(part('', 'm', ['Content-Disposition: form-data; name="model"', `X-Pad: ${'p'.repeat(16 * 1024)}`]), close)],
  ])('%s', (_, input) => {
    const outcome = editMultipart(input, B, dropModel);
    expect(outcome.kind).toBe('invalid');
    if (outcome.kind === 'invalid') expect(outcome.reason).not.toBe('');
  });

  test('an invalid boundary makes every body invalid', () => {
    for (const boundary of ['', 'a'.repeat(71), 'ends in space ', 'bad\r\nchar', 'quote"']) {
      expect(editMultipart(body(part('model', 'm'), close), boundary, dropModel).kind).toBe('invalid');
    }
  });
});

describe('createMultipartEditor', () => {
  const inputs = [
    body(part('model', 'gpt'), part('image', tricky), close, '\r\n'),
    body('pre\r\n', part('image', tricky), part('model', tricky), close, 'epi'),
    body(`--${B}  \r\n\r\nx\r\n--${B}\r\nContent-Disposition: form-data;\r\n name=model\r\n\r\n\r\n`, close),
    body(part('prompt', 'p'), part('model', 'm')),
    body(part('prompt', 'p'), `--${B}Q`, close),
  ];

  test.each(inputs.map((input) => [input.toString('latin1'), input]))('every two-chunk split and 1-byte chunks match editMultipart: %j', (_, input) => {
    const whole = editMultipart(input, B, dropModel);
    const cutsList = [...Array(input.length + 1).keys()].map((cut) => [cut]);
    cutsList.push([...Array(input.length).keys()]);
    for (const cuts of cutsList) {
      const editor = createMultipartEditor(B, dropModel);
      const released = editInChunks(editor, cut(input, cuts));
      expect(editor.outcome).toBe(whole.kind);
      if (whole.kind !== 'invalid') expect(released.toString('latin1')).toBe(forwarded(input, whole).toString('latin1'));
    }
  });

  test('image bytes of other parts flow out at once; only a possible delimiter is held', () => {
    const image = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < image.length; i++) image[i] = (i * 7919) % 251;
    const input = body(part('image', image), part('model', 'm'), close);
    const editor = createMultipartEditor(B, dropModel);
    let released = 0;
    for (let at = 0; at < input.length; at += 65536) {
      released += editor.push(input.subarray(at, at + 65536)).length;
      expect(editor.heldBytes).toBeLessThanOrEqual(100);
      if (at + 65536 < image.length) expect(released).toBe(at + 65536 - editor.heldBytes);
    }
    released += editor.end().length;
    expect(editor.outcome).toBe('edited');
    expect(released).toBe(input.length - part('model', 'm').length);
  });

  test('a chunk ending in "\\r\\n--" + a boundary prefix holds just the dashes and prefix', () => {
    const editor = createMultipartEditor(B, dropModel);
    expect(editor.push(body(part('prompt', 'p'), 'xx\r\n--Xy')).toString()).toBe(body(part('prompt', 'p'), 'xx\r\n').toString());
    expect(editor.heldBytes).toBe(4);
    expect(editor.push(Buffer.from('Q')).toString()).toBe('--XyQ');
    expect(editor.heldBytes).toBe(0);
  });

  test('a matched part is held until the next delimiter', () => {
    const editor = createMultipartEditor(B, dropModel);
    const head = part('prompt', 'p');
    expect(editor.push(body(head, `--${B}\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-`)).toString()).toBe(head.toString());
    expect(editor.push(Buffer.from('image-1\r\n--'))).toEqual(Buffer.alloc(0));
    expect(editor.push(Buffer.from(`${B}--\r\n`)).toString()).toBe(`--${B}--\r\n`);
    expect(editor.end()).toEqual(Buffer.alloc(0));
    expect(editor.touched).toMatchObject([{ name: 'model', action: 'remove', value: Buffer.from('gpt-image-1') }]);
  });

  test('a held part over maxHeldBytes stops editing and releases everything verbatim', () => {
    const input = body(part('model', 'x'.repeat(100)), part('prompt', 'p'), close);
    for (const cuts of [[], [10, 50, 90], [...Array(input.length).keys()]]) {
      const editor = createMultipartEditor(B, dropModel, { maxHeldBytes: 64 });
      expect(editInChunks(editor, cut(input, cuts)).toString()).toBe(input.toString());
      expect(editor.outcome).toBe('invalid');
    }
  });

  test('held bytes do not depend on the caller keeping its chunks intact', () => {
    const input = body(part('prompt', 'p'), part('model', 'gpt-image-1'), part('image', tricky), close);
    const scratch = Buffer.alloc(7);
    const editor = createMultipartEditor(B, dropModel);
    const released: Buffer[] = [];
    for (let at = 0; at < input.length; at += scratch.length) {
      const size = input.copy(scratch, 0, at, at + scratch.length);
      released.push(Buffer.from(editor.push(scratch.subarray(0, size))));
      scratch.fill(0x2d);
    }
    released.push(editor.end());
    expect(Buffer.concat(released).toString('latin1')).toBe(body(part('prompt', 'p'), part('image', tricky), close).toString('latin1'));
    expect(editor.touched.map((t) => t.value.toString())).toEqual(['gpt-image-1']);
  });

  test('an invalid boundary passes everything through as invalid', () => {
    const editor = createMultipartEditor('bad"', dropModel);
    const input = body(part('model', 'm'), close);
    expect(editInChunks(editor, cut(input, [3]))).toEqual(input);
    expect(editor.outcome).toBe('invalid');
  });
});

