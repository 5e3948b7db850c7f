// listMultipartParts: the multipart reader for tools (explain, the Azure stand-in), built on the editor's
// own scanner, so what it reads as well-formed is what the editor edits.
import { describe, expect, test } from 'vitest';
import { editMultipart, listMultipartParts } from '../../src/body/index.js';

const B = 'XyZ';
const body = (...pieces: Array<string | Buffer>) => Buffer.concat(pieces.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : p)));
const png = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0xff, 0x2d, 0x2d]);

describe('listMultipartParts', () => {
  test('names, filenames, content types, header blocks and byte-exact contents, in order', () => {
    const input = body(
      'preamble\r\n',
      `--${B}\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-image-1\r\n`,
      `--${B}\r\nContent-Disposition: form-data; name="image[]"; filename="cat.png"\r\nContent-Type:  image/png \r\n\r\n`,
      png,
      `\r\n--${B}\r\ncontent-disposition: FORM-DATA; NAME=prompt\r\n\r\n\r\n--${B}--\r\nepilogue`,
    );
    const parts = listMultipartParts(input, B);
    expect(parts?.map(({ content, ...rest }) => ({ ...rest, content: content.toString('latin1') }))).toEqual([
      { name: 'model', headers: 'Content-Disposition: form-data; name="model"', content: 'gpt-image-1' },
      {
        name: 'image[]',
        filename: 'cat.png',
        contentType: 'image/png',
        headers: 'Content-Disposition: form-data; name="image[]"; filename="cat.png"\r\nContent-Type:  image/png ',
        content: png.toString('latin1'),
      },
      { name: 'prompt', headers: 'content-disposition: FORM-DATA; NAME=prompt', content: '' },
    ]);
    expect(parts![1]!.content.equals(png)).toBe(true);
  });

  test('a part without a form-data name is listed with name null', () => {
    const input = body(`--${B}\r\nContent-Type: text/plain\r\n\r\nx\r\n--${B}\r\n\r\ny\r\n--${B}--`);
    expect(listMultipartParts(input, B)?.map((p) => [p.name, p.contentType, p.content.toString()])).toEqual([
      [null, 'text/plain', 'x'],
      [null, undefined, 'y'],
    ]);
  });

  test('a body with no parts (only the close delimiter) has an empty list', () => {
    expect(listMultipartParts(Buffer.from(`--${B}--\r\n`), B)).toEqual([]);
  });

  test.each([
    ['no close delimiter', `--${B}\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n`],
    ['no delimiter at all', 'just text'],
    ['body ends in a header block', `--${B}\r\nContent-Disposition: form-data; name="a"\r\n`],
    ['a malformed header line', `--${B}\r\nnot a header\r\n\r\nx\r\n--${B}--`],
    ['junk after the boundary', `--${B}x\r\n\r\nx\r\n--${B}--`],
  ])('undefined when malformed: %s', (_, text) => {
    expect(listMultipartParts(Buffer.from(text, 'latin1'), B)).toBeUndefined();
    // The editor calls the same bodies malformed.
    expect(editMultipart(Buffer.from(text, 'latin1'), B, new Map([['a', () => 'remove' as const]])).kind).toBe('invalid');
  });

  test('an invalid boundary gives undefined', () => {
    expect(listMultipartParts(Buffer.from('--a b \r\n\r\n\r\n--a b --'), 'a b ')).toBeUndefined();
  });

  test('does not modify the body', () => {
    const input = body(`--${B}\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--${B}--`);
    const copy = Buffer.from(input);
    listMultipartParts(input, B);
    expect(input.equals(copy)).toBe(true);
  });
});
