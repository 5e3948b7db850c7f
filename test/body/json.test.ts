import { describe, expect, test, vi } from 'vitest';
import { createJsonEditor, editJson } from '../../src/body/json.js';
import { editInChunks } from '../../src/body/editor.js';
import type { EditOutcome, FieldRule, FieldRules } from '../../src/body/types.js';

const dropModel: FieldRules = new Map([['model', () => 'remove' as const]]);

/** The bytes a caller forwards: the edited body, or the input when nothing is to change. */
function forwarded(input: Buffer, outcome: EditOutcome): Buffer {
  return outcome.kind === 'edited' ? outcome.body : input;
}

/** `body` cut at each of `cuts`, into chunks for an incremental editor. */
const cut = (body: Buffer, cuts: number[]) => [0, ...cuts, body.length].slice(1).map((end, i, ends) => body.subarray(i === 0 ? 0 : ends[i - 1], end));

describe('editJson: removing top-level "model"', () => {
  test.each([
    ['first member', '{"model":"gpt-image-1","prompt":"cat"}', '{"prompt":"cat"}'],
    ['middle member', '{"prompt":"cat","model":"m","n":1}', '{"prompt":"cat","n":1}'],
    ['last member', '{"prompt":"cat","model":"m"}', '{"prompt":"cat"}'],
    ['only member', '{"model":"m"}', '{}'],
    // The space after the removed member goes with it: nothing is kept before it (see src/body/json.ts).
    ['only member, spaced', '{ "model" : "m" }', '{ }'],
    ['first member, spaced', '{ "model" : "m"  , "n":1 }', '{ "n":1 }'],
    ['pretty, first', '{\n  "model": "m",\n  "prompt": "cat"\n}\n', '{\n  "prompt": "cat"\n}\n'],
    ['pretty, middle', '{\n  "n": 1,\n  "model": "m",\n  "prompt": "cat"\n}', '{\n  "n": 1,\n  "prompt": "cat"\n}'],
    ['pretty, last', '{\r\n\t"prompt": "cat",\r\n\t"model": "m"\r\n}', '{\r\n\t"prompt": "cat"\r\n}'],
    ['space before comma', '{"a":1 , "model":2 , "b":3}', '{"a":1 , "b":3}'],
    ['duplicates apart', '{"model":"a","prompt":"p","model":"b"}', '{"prompt":"p"}'],
    ['duplicates together', '{"model":1,"model":2,"n":1}', '{"n":1}'],
    ['only duplicates', '{"model":1 , "model":2}', '{}'],
    ['nested model kept', '{"extra":{"model":1},"model":"x","tools":[{"model":"y"}]}', '{"extra":{"model":1},"tools":[{"model":"y"}]}'],
    ['escaped key', '{"mo\\u0064el":"x","n":1}', '{"n":1}'],
    ['fully escaped key', '{"n":1,"\\u006d\\u006F\\u0064\\u0065\\u006c":"x"}', '{"n":1}'],
    ['null value', '{"model":null,"n":1}', '{"n":1}'],
    ['empty string', '{"model":"","n":1}', '{"n":1}'],
    ['number', '{"model":-0.0,"n":1}', '{"n":1}'],
    ['object value', '{"model":{"name":"m","model":[1,{}]},"n":1}', '{"n":1}'],
    ['array value', '{"n":1,"model":[]}', '{"n":1}'],
    ['true', '{"model":true}', '{}'],
    ['BOM kept', '\ufeff{"model":"x","n":1}', '\ufeff{"n":1}'],
    ['BOM and whitespace kept', '\ufeff \r\n{"n":1,"model":"x"}\r\n', '\ufeff \r\n{"n":1}\r\n'],
    ['unicode kept', '{"prompt":"猫 🐈 é","model":"x","n":"\\u00e9\\ud83d\\udc08"}', '{"prompt":"猫 🐈 é","n":"\\u00e9\\ud83d\\udc08"}'],
    ['numbers spelled as-is', '{"model":"x","a":1e400,"b":-0.0,"c":123456789012345678901234567890,"d":1E+2}', '{"a":1e400,"b":-0.0,"c":123456789012345678901234567890,"d":1E+2}'],
    ['escapes kept', '{"model":"x","p":"a\\/b\\u00E9\\n\\"q\\"\\\\"}', '{"p":"a\\/b\\u00E9\\n\\"q\\"\\\\"}'],
    ['lone surrogate escape in a key', '{"\\ud800":1,"model":2}', '{"\\ud800":1}'],
  ])('%s', (_, input, expected) => {
    const outcome = editJson(Buffer.from(input), dropModel);
    expect(outcome.kind).toBe('edited');
    expect(forwarded(Buffer.from(input), outcome).toString()).toBe(expected);
  });

  test.each([
    ['no model', '{"prompt":"cat","n":1}'],
    ['empty object', '{}'],
    ['empty object, spaced', ' { \n } '],
    ['similar keys', '{"Model":"x","model ":"y","models":1,"mode":2,"model[]":3,"":4}'],
    ['nested only', '{"tools":[{"model":"x"}],"extra":{"model":{"model":1}}}'],
    ['model as a value', '{"name":"model","list":["model"]}'],
  ])('%s: unchanged', (_, input) => {
    expect(editJson(Buffer.from(input), dropModel)).toEqual({ kind: 'unchanged' });
  });

  test('touched names each removed name once: its first raw value and how many went', () => {
    const outcome = editJson(Buffer.from('{"model": "a" ,"n":1,"model" :\t{"x": [1, 2]}}'), dropModel);
    expect(outcome.kind).toBe('edited');
    if (outcome.kind !== 'edited') return;
    expect(outcome.touched.map((t) => [t.name, t.action, t.value.toString(), t.count])).toEqual([['model', 'remove', '"a"', 2]]);
  });
});

describe('editJson: invalid bodies', () => {
  const cases: Array<[string, string | Buffer]> = [
    ['array', '[{"model":1}]'],
    ['string', '"model"'],
    ['number', '1'],
    ['null', 'null'],
    ['empty', ''],
    ['whitespace only', ' \n'],
    ['trailing garbage', '{"model":1}x'],
    ['two objects', '{"model":1}{}'],
    ['extra brace', '{"a":1}}'],
    ['trailing comma', '{"model":1,}'],
    ['leading comma', '{,"a":1}'],
    ['missing colon', '{"a" 1}'],
    ['missing comma', '{"a":1 "model":2}'],
    ['unquoted key', '{model:1}'],
    ['single quotes', "{'model':1}"],
    ['leading zero', '{"a":01}'],
    ['bare dot', '{"a":1.}'],
    ['no integer part', '{"a":.5}'],
    ['plus sign', '{"a":+1}'],
    ['empty exponent', '{"a":1e}'],
    ['lone minus', '{"a":-}'],
    ['two exponents', '{"a":1e5e5}'],
    ['two dots', '{"a":1.5.5}'],
    ['exponent after zero without digits', '{"a":0e}'],
    ['negative leading zero', '{"a":-01}'],
    ['dot before exponent digits', '{"a":1.e5}'],
    ['NaN', '{"a":NaN}'],
    ['Infinity', '{"a":Infinity}'],
    ['short literal', '{"a":tru}'],
    ['long literal', '{"a":nulll}'],
    ['raw control char', '{"a":"x\u0001y"}'],
    ['raw newline in string', '{"model":"a\nb"}'],
    ['raw tab in key', '{"mo\tdel":1}'],
    ['bad escape', '{"a":"\\q"}'],
    ['bad unicode escape', '{"a":"\\u12G4"}'],
    ['unterminated string', '{"a":"abc}'],
    ['unterminated object', '{"model":1'],
    ['unterminated nested', '{"a":[1,2}'],
    ['mismatched nesting', '{"a":{"b":1]}'],
    ['nested trailing comma', '{"a":[1,]}'],
    ['NUL after object', '{"a":1}\u0000'],
    ['BOM after whitespace', ' \ufeff{}'],
    ['two BOMs', '\ufeff\ufeff{}'],
    ['invalid UTF-8', Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xff, 0x22, 0x7d])],
    ['overlong UTF-8', Buffer.from([0x7b, 0x22, 0xc0, 0xaf, 0x22, 0x3a, 0x31, 0x7d])],
    ['UTF-8 surrogate', Buffer.from([0x7b, 0x22, 0xed, 0xa0, 0x80, 0x22, 0x3a, 0x31, 0x7d])],
    ['UTF-8 cut at the end', Buffer.concat([Buffer.from('{"a":1}'), Buffer.from([0xe2, 0x82])])],
    ['UTF-16', Buffer.from('{"model":1}', 'utf16le')],
  ];
  test.each(cases)('%s', (_, input) => {
    const outcome = editJson(Buffer.isBuffer(input) ? input : Buffer.from(input), dropModel);
    expect(outcome.kind).toBe('invalid');
    if (outcome.kind === 'invalid') expect(outcome.reason).not.toBe('');
  });
});

describe('editJson: rules', () => {
  test('replace swaps the raw value and keeps everything else', () => {
    const rules: FieldRules = new Map([['model', () => ({ replace: Buffer.from('"dall-e-3"') })]]);
    const outcome = editJson(Buffer.from('{ "model" : "x" , "n": 1 }'), rules);
    expect(outcome).toMatchObject({ kind: 'edited', touched: [{ name: 'model', action: 'replace' }] });
    if (outcome.kind !== 'edited') return;
    expect(outcome.body.toString()).toBe('{ "model" : "dall-e-3" , "n": 1 }');
    expect(outcome.touched[0]!.value.toString()).toBe('"x"');
  });

  test('a replacement equal to the original, or keep, is no change', () => {
    const same: FieldRules = new Map([['model', (raw: Buffer) => ({ replace: Buffer.from(raw) })]]);
    const keep: FieldRules = new Map([['model', () => 'keep' as const]]);
    expect(editJson(Buffer.from('{"model":"x"}'), same)).toEqual({ kind: 'unchanged' });
    expect(editJson(Buffer.from('{"model":"x"}'), keep)).toEqual({ kind: 'unchanged' });
  });

  test('rules see raw value bytes of any type, and only for top-level keys', () => {
    const seen: string[] = [];
    const rule = vi.fn((raw: Buffer) => {
      seen.push(raw.toString());
      return 'keep' as const;
    });
    const body = '{"model":null,"x":{"model":1},"model" :  {"a": [1, 2]} ,"model":"","model":-1.5e+3}';
    expect(editJson(Buffer.from(body), new Map([['model', rule]]))).toEqual({ kind: 'unchanged' });
    expect(seen).toEqual(['null', '{"a": [1, 2]}', '""', '-1.5e+3']);
  });

  test('several rules in one pass; a rule can decide by value', () => {
    const rules: FieldRules = new Map<string, FieldRule>([
      ['model', () => 'remove'],
      ['style', () => 'remove'],
      ['n', (raw: Buffer) => (Number(raw.toString()) > 1 ? { replace: Buffer.from('1') } : 'keep')],
    ]);
    const outcome = editJson(Buffer.from('{"style":"vivid","model":"m","n":4,"prompt":"p","size":"1024x1024"}'), rules);
    expect(forwarded(Buffer.alloc(0), outcome).toString()).toBe('{"n":1,"prompt":"p","size":"1024x1024"}');
    expect(editJson(Buffer.from('{"n":1}'), rules)).toEqual({ kind: 'unchanged' });
  });

  test('no rules: valid bodies are unchanged, invalid ones still invalid', () => {
    expect(editJson(Buffer.from('{"model":1}'), new Map())).toEqual({ kind: 'unchanged' });
    expect(editJson(Buffer.from('{"model":1'), new Map()).kind).toBe('invalid');
  });

  test('a large body with a base64 image edits byte-exactly', () => {
    const image = Buffer.alloc(3 * 1024 * 1024, 7).toString('base64');
    const input = Buffer.from(`{"prompt":"a cat","image":"${image}","model":"gpt-image-1","n":1}`);
    const outcome = editJson(input, dropModel);
    expect(forwarded(input, outcome).equals(Buffer.from(`{"prompt":"a cat","image":"${image}","n":1}`))).toBe(true);
  });

  test('a control character deep inside a long string is found', () => {
    const text = 'A'.repeat(100_003);
    for (const at of [0, 1, 2, 3, 4, 77, 50_000, 100_002]) {
      const bad = Buffer.from(`{"p":"${text}"}`);
      bad[6 + at] = 0x1f;
      expect(editJson(bad, dropModel).kind).toBe('invalid');
      bad[6 + at] = 0x20;
      expect(editJson(bad, dropModel).kind).toBe('unchanged');
    }
  });
});

describe('createJsonEditor', () => {
  const inputs = [
    '{"model":"gpt-image-1","prompt":"cat"}',
    '\ufeff {\n  "prompt": "猫",\n  "model" : "m" ,\n  "n": 12.5e-3\n}\n',
    '{"a":[1,{"model":true}],"mo\\u0064el":null,"model":-0,"b":"\\"\\\\"}',
    '{"model":1,"model":2}',
    '{"prompt":"no model here","n":1}',
    '{"model":1,"n":[1,2',
    '{"n":1,"model":"x"}  garbage',
  ];

  test.each(inputs)('every two-chunk split and 1-byte chunks match editJson: %j', (input) => {
    const body = Buffer.from(input);
    const whole = editJson(body, dropModel);
    const cutsList = [...Array(body.length + 1).keys()].map((cut) => [cut]);
    cutsList.push([...Array(body.length).keys()]);
    for (const cuts of cutsList) {
      const editor = createJsonEditor(dropModel);
      const released = editInChunks(editor, cut(body, cuts));
      expect(editor.outcome).toBe(whole.kind);
      if (whole.kind !== 'invalid') expect(released.toString()).toBe(forwarded(body, whole).toString());
      if (whole.kind === 'edited') expect(editor.touched.map((t) => t.value.toString())).toEqual(whole.touched.map((t) => t.value.toString()));
    }
  });

  test('members that cannot match stream out at once; only a key being read is held', () => {
    const prompt = 'x'.repeat(200_000);
    const body = Buffer.from(`{"prompt":"${prompt}","image":"${prompt}","model":"m"}`);
    const editor = createJsonEditor(dropModel);
    let released = 0;
    for (let at = 0; at < body.length; at += 1000) {
      released += editor.push(body.subarray(at, at + 1000)).length;
      const consumed = Math.min(at + 1000, body.length);
      expect(editor.heldBytes).toBeLessThanOrEqual(40);
      if (consumed < body.length - 20) expect(consumed - released).toBe(editor.heldBytes);
    }
    released += editor.end().length;
    expect(editor.outcome).toBe('edited');
    expect(released).toBe(body.length - ',"model":"m"'.length);
    expect(editor.heldBytes).toBe(0);
  });

  test('a matched member is held until its value ends', () => {
    const editor = createJsonEditor(dropModel);
    expect(editor.push(Buffer.from('{"n":1,"model":"gpt-'))).toEqual(Buffer.from('{"n":1'));
    expect(editor.heldBytes).toBe(',"model":"gpt-'.length);
    expect(editor.push(Buffer.from('image-1"'))).toEqual(Buffer.alloc(0));
    expect(editor.push(Buffer.from('}\n'))).toEqual(Buffer.from('}\n'));
    expect(editor.end()).toEqual(Buffer.alloc(0));
    expect(editor.outcome).toBe('edited');
    expect(editor.touched).toMatchObject([{ name: 'model', action: 'remove' }]);
  });

  test('a held member over maxHeldBytes stops editing and releases everything verbatim', () => {
    const body = Buffer.from('{"model":"gpt-image-1","n":1}');
    for (const size of [1, 3, 64]) {
      const editor = createJsonEditor(dropModel, { maxHeldBytes: 10 });
      const out = editInChunks(editor, cut(body, [...Array(Math.ceil(body.length / size)).keys()].map((i) => i * size)));
      expect(editor.outcome).toBe('invalid');
      expect(out.toString()).toBe(body.toString());
      expect(editor.heldBytes).toBe(0);
    }
    const big = Buffer.from(`{"model":"${'m'.repeat(2 * 1024 * 1024)}"}`);
    const editor = createJsonEditor(dropModel);
    expect(editInChunks(editor, cut(big, [65536, 131072])).equals(big)).toBe(true);
    expect(editor.outcome).toBe('invalid');
  });

  test('input found invalid mid-stream: edits already released stay, the rest passes verbatim', () => {
    const editor = createJsonEditor(dropModel);
    const first = editor.push(Buffer.from('{"model":"m","n":1,"size"'));
    const second = editor.push(Buffer.from(' 2}'));
    const last = editor.end();
    expect(editor.outcome).toBe('invalid');
    expect(Buffer.concat([first, second, last]).toString()).toBe('{"n":1,"size" 2}');
  });

  test('held bytes do not depend on the caller keeping its chunks intact', () => {
    const input = Buffer.from('{"n":1,"model":"gpt-image-1","prompt":"p","model":{"x":[1,2]}}');
    const scratch = Buffer.alloc(5);
    const editor = createJsonEditor(dropModel);
    const released: Buffer[] = [];
    for (let at = 0; at < input.length; at += scratch.length) {
      const size = input.copy(scratch, 0, at, at + scratch.length);
      released.push(Buffer.from(editor.push(scratch.subarray(0, size))));
      scratch.fill(0x7b);
    }
    released.push(editor.end());
    expect(Buffer.concat(released).toString()).toBe('{"n":1,"prompt":"p"}');
    expect(editor.touched.map((t) => [t.value.toString(), t.count])).toEqual([['"gpt-image-1"', 2]]);
  });

  test('push after end is a programming error', () => {
    const editor = createJsonEditor(dropModel);
    editor.push(Buffer.from('{}'));
    editor.end();
    expect(() => editor.push(Buffer.from(' '))).toThrow();
  });
});

