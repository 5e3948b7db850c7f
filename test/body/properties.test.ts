// Property tests for both body editors: generated bodies with known structure, corrupted bodies
// checked against independent oracles, and every editor fed in random chunks.
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { editInChunks } from '../../src/body/editor.js';
import { createJsonEditor, editJson } from '../../src/body/json.js';
import { createMultipartEditor, editMultipart, listMultipartParts } from '../../src/body/multipart.js';
import type { EditOutcome, FieldRule, FieldRules, StreamEditor } from '../../src/body/types.js';

const dropModel: FieldRules = new Map([['model', () => 'remove' as const]]);

/** The bytes a caller forwards: the edited body, or the input when nothing is to change. */
function forwarded(input: Buffer, outcome: EditOutcome): Buffer {
  return outcome.kind === 'edited' ? outcome.body : input;
}

/** Pushes `body` cut at `cuts` (taken modulo its length + 1, any order) and returns everything released. */
function feed(editor: StreamEditor, body: Buffer, cuts: number[]): Buffer {
  const ends = [...new Set(cuts.map((cut) => cut % (body.length + 1))), body.length].sort((a, b) => a - b);
  return editInChunks(editor, ends.map((end, i) => body.subarray(i === 0 ? 0 : ends[i - 1], end)));
}

/**
 * Like feed, through one scratch buffer that is overwritten after every push, as a gRPC server may reuse
 * its buffers: the editor must copy what it holds, and the caller what it gets back.
 */
function feedReusing(editor: StreamEditor, body: Buffer, cuts: number[]): Buffer {
  const ends = [...new Set(cuts.map((cut) => cut % (body.length + 1))), body.length].sort((a, b) => a - b);
  const scratch = Buffer.alloc(body.length);
  const released: Buffer[] = [];
  ends.forEach((end, i) => {
    const start = i === 0 ? 0 : ends[i - 1]!;
    const chunk = scratch.subarray(0, body.copy(scratch, 0, start, end));
    released.push(Buffer.from(editor.push(chunk)));
    scratch.fill(0x7b);
  });
  released.push(editor.end());
  return Buffer.concat(released);
}

/** Random chunk boundaries, or 'bytes' for one byte per chunk. */
const chunking = fc.oneof(fc.array(fc.nat(), { maxLength: 8 }), fc.constant('bytes' as const));
const cutsFor = (body: Buffer, c: number[] | 'bytes') => (c === 'bytes' ? [...Array(body.length).keys()] : c);

type Mutation = { op: 'set' | 'insert'; at: number; byte: number } | { op: 'delete' | 'truncate'; at: number };

/** A byte changed, inserted or deleted, or the body cut short; bytes that are structure are favoured. */
const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({
    op: fc.constantFrom('set' as const, 'insert' as const),
    at: fc.nat(),
    byte: fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0x22, 0x2c, 0x3a, 0x5c, 0x7b, 0x7d, 0x5b, 0x5d, 0x20, 0x30, 0x0d, 0x0a, 0x2d, 0x3b)),
  }),
  fc.record({ op: fc.constantFrom('delete' as const, 'truncate' as const), at: fc.nat() }),
);

function mutate(body: Buffer, m: Mutation): Buffer {
  const at = m.at % (body.length + 1);
  switch (m.op) {
    case 'set':
      return at === body.length ? body : Buffer.concat([body.subarray(0, at), Buffer.from([m.byte]), body.subarray(at + 1)]);
    case 'insert':
      return Buffer.concat([body.subarray(0, at), Buffer.from([m.byte]), body.subarray(at)]);
    case 'delete':
      return Buffer.concat([body.subarray(0, at), body.subarray(at + 1)]);
    case 'truncate':
      return body.subarray(0, at);
  }
}

/** Strict oracle: RFC 3629 UTF-8 (one leading BOM allowed) and ECMA-404 JSON, via the platform. */
function strictParse(body: Buffer): { ok: true; value: unknown } | { ok: false } {
  try {
    return { ok: true, value: JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body)) };
  } catch {
    return { ok: false };
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

// ---------------------------------------------------------------------------------------------
// JSON. Bodies are generated as text with their structure known, so the expected output is
// computed from the pieces, independently of the editor; the platform's JSON.parse is a second oracle.

const ws = fc.constantFrom('', '', ' ', '\n', '\t', '\r\n', '\n    ', ' \t ');

const SHORT_ESCAPES: Record<string, string> = { '"': '\\"', '\\': '\\\\', '/': '\\/', '\b': '\\b', '\f': '\\f', '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/** One character, written raw when JSON allows it and `style` says so, else escaped. */
function writeChar(ch: string, style: number): string {
  const mustEscape = ch === '"' || ch === '\\' || ch.charCodeAt(0) < 0x20;
  const short = SHORT_ESCAPES[ch];
  if (style === 0 && !mustEscape) return ch;
  if (short !== undefined && (style === 0 || style === 3)) return short;
  return [...Array(ch.length).keys()]
    .map((i) => '\\u' + ch.charCodeAt(i).toString(16).padStart(4, '0'))
    .map((escape) => (style === 2 ? escape.toUpperCase().replace('\\U', '\\u') : escape))
    .join('');
}

const jsonChar = fc.oneof(
  fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }),
  fc.constantFrom('"', '\\', '/', '\n', '\t', '\u0000', '\u001f', '\u2028', 'm', 'é', '🐈'),
);
const jsonString = fc
  .array(fc.tuple(jsonChar, fc.nat(3)), { maxLength: 10 })
  .map((chars) => ({ name: chars.map(([ch]) => ch).join(''), raw: '"' + chars.map(([ch, style]) => writeChar(ch, style)).join('') + '"' }));

/** Keys: "model" spelled in several ways, near misses, anything. */
const key = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom('"model"', '"mo\\u0064el"', '"\\u006d\\u006F\\u0064\\u0065\\u006c"', '"mode\\u006C"').map((raw) => ({ name: 'model', raw })) },
  { weight: 2, arbitrary: fc.constantFrom('Model', 'model ', 'models', 'mode', 'model[]', '', 'prompt', 'n', 'size').map((name) => ({ name, raw: JSON.stringify(name) })) },
  { weight: 1, arbitrary: jsonString },
);

const jsonNumber = fc.oneof(
  fc.constantFrom('0', '-0', '-0.0', '1e400', '-1e400', '1E+2', '12.50', '-1.5e-7', '123456789012345678901234567890', '0.000001e-999'),
  fc.integer().map(String),
  fc.double({ noNaN: true, noDefaultInfinity: true }).map(String),
);

const { value: jsonValue } = fc.letrec<{ value: string; array: string; object: string }>((tie) => ({
  value: fc.oneof({ depthSize: 'small' }, fc.constantFrom('null', 'true', 'false'), jsonNumber, jsonString.map((s) => s.raw), tie('array'), tie('object')),
  array: fc
    .tuple(ws, fc.array(fc.tuple(ws, tie('value'), ws), { maxLength: 4 }))
    .map(([empty, items]) => '[' + (items.length === 0 ? empty : items.map((item) => item.join('')).join(',')) + ']'),
  object: fc
    .tuple(ws, fc.array(fc.tuple(ws, key, ws, ws, tie('value'), ws), { maxLength: 4 }))
    .map(([empty, members]) => '{' + (members.length === 0 ? empty : members.map(([a, k, b, c, v, d]) => a + k.raw + b + ':' + c + v + d).join(',')) + '}'),
}));

interface GeneratedBody {
  text: string;
  expected: string;
  modelValues: string[];
}

const generatedBody: fc.Arbitrary<GeneratedBody> = fc
  .record({
    bom: fc.boolean(),
    lead: ws,
    first: ws,
    members: fc.array(fc.record({ key, colonBefore: ws, colonAfter: ws, value: jsonValue }), { maxLength: 6 }),
    separators: fc.array(fc.tuple(ws, ws), { minLength: 6, maxLength: 6 }),
    last: ws,
    trail: ws,
  })
  .map(({ bom, lead, first, members, separators, last, trail }) => {
    const texts = members.map((m) => m.key.raw + m.colonBefore + ':' + m.colonAfter + m.value);
    const separator = (i: number) => separators[i]![0] + ',' + separators[i]![1];
    const head = (bom ? '\ufeff' : '') + lead + '{' + first;
    const text = head + texts.map((t, i) => (i === 0 ? '' : separator(i - 1)) + t).join('') + last + '}' + trail;
    // Kept members, each but the first with the separator that preceded it in the input; a removed member
    // with no kept one before it goes with everything up to the next key or "}".
    const kept = texts.flatMap((t, i) => (members[i]!.key.name === 'model' ? [] : [{ t, i }]));
    const allRemoved = members.length > 0 && kept.length === 0;
    const expected = head + kept.map(({ t, i }, j) => (j === 0 ? '' : separator(i - 1)) + t).join('') + (allRemoved ? '' : last) + '}' + trail;
    const modelValues = members.filter((m) => m.key.name === 'model').map((m) => m.value);
    return { text, expected, modelValues };
  });

describe('editJson properties', () => {
  test('output is the input with exactly the top-level "model" members (and one comma each) cut out', () => {
    fc.assert(
      fc.property(generatedBody, ({ text, expected, modelValues }) => {
        const input = Buffer.from(text);
        const outcome = editJson(input, dropModel);
        expect(outcome.kind).toBe(modelValues.length === 0 ? 'unchanged' : 'edited');
        if (outcome.kind !== 'edited') return;
        expect(outcome.body.toString()).toBe(expected);
        // One entry per name: the first value and how many were removed.
        expect(outcome.touched.map((t) => [t.name, t.action, t.value.toString(), t.count])).toEqual(modelValues.length === 0 ? [] : [['model', 'remove', modelValues[0], modelValues.length]]);
        // And as JSON: the same object minus its top-level model.
        const parsedIn = strictParse(input);
        const parsedOut = strictParse(outcome.body);
        expect(parsedIn.ok && parsedOut.ok).toBe(true);
        if (!parsedIn.ok || !parsedOut.ok) return;
        const { model: _model, ...rest } = parsedIn.value as Record<string, unknown>;
        expect(parsedOut.value).toEqual(rest);
      }),
      { numRuns: 400 },
    );
  });

  test('corrupted bodies: valid ones are edited correctly, invalid ones are reported, nothing throws', () => {
    const seen = { invalid: 0, unchanged: 0, edited: 0 };
    fc.assert(
      fc.property(generatedBody, fc.array(mutation, { minLength: 1, maxLength: 3 }), ({ text }, mutations) => {
        const input = mutations.reduce(mutate, Buffer.from(text));
        const outcome = editJson(input, dropModel);
        seen[outcome.kind]++;
        const oracle = strictParse(input);
        if (!oracle.ok || !isObject(oracle.value)) {
          expect(outcome.kind).toBe('invalid');
          return;
        }
        expect(outcome.kind).toBe(Object.hasOwn(oracle.value, 'model') ? 'edited' : 'unchanged');
        const out = strictParse(forwarded(input, outcome));
        const { model: _model, ...rest } = oracle.value;
        expect(out).toEqual({ ok: true, value: rest });
      }),
      { numRuns: 1000 },
    );
    // Not vacuous: corruption leaves some bodies valid, with and without a model.
    expect(seen.edited).toBeGreaterThan(20);
    expect(seen.unchanged).toBeGreaterThan(15);
    expect(seen.invalid).toBeGreaterThan(100);
  });
});

// ---------------------------------------------------------------------------------------------
// Multipart. Generated bodies know their structure, so the expected output is assembled from the
// pieces. Corrupted bodies are checked against `referenceEdit`, a plain whole-body reading of the
// same rules (RFC 2046 delimiters, RFC 7578 names) written without the editor's incremental machinery.

const BCHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'()+_,-./:=? ";
const boundary = fc
  .oneof(fc.string({ unit: fc.constantFrom(...BCHARS), minLength: 1, maxLength: 70 }), fc.constantFrom('a', '-', '----WebKitFormBoundary7MA4YWxkTrZu0gW', 'X'.repeat(70)))
  .filter((b) => !b.endsWith(' '));

const names = fc.constantFrom('model', 'model', 'model[]', 'image', 'image[]', 'Model', 'prompt', 'mask', 'n', 'models');

/** Header lines for a part named `name`, and whether they make it a form-data part with that name. */
const headerStyles: Array<(name: string) => { lines: string[]; named: boolean; canonical: boolean }> = [
  (name) => ({ lines: [`Content-Disposition: form-data; name="${name}"`], named: true, canonical: true }),
  (name) => ({ lines: [`Content-Disposition: form-data; name="${name}"; filename="f.png"`, 'Content-Type: image/png'], named: true, canonical: true }),
  (name) => ({ lines: [`content-disposition:form-data;name=${name}`], named: true, canonical: false }),
  (name) => ({ lines: ['X-Extra: 1', `CONTENT-DISPOSITION :  form-data ; filename="model" ;\tname="${name}" `], named: true, canonical: false }),
  (name) => ({ lines: ['Content-Disposition: form-data;', `\tname="${name}"`], named: true, canonical: false }),
  (name) => ({ lines: [`Content-Disposition: attachment; name="${name}"`], named: false, canonical: false }),
  () => ({ lines: [], named: false, canonical: false }),
];

const contentPiece = (b: string) =>
  fc.oneof(
    fc.uint8Array({ maxLength: 24 }).map((bytes) => Buffer.from(bytes)),
    fc.constantFrom('\r\n', '--', '\r\n--', '\r\n-', '\r', '\n', `--${b}`, `${b}--`).map((s) => Buffer.from(s, 'latin1')),
    fc.nat(b.length - 1).map((n) => Buffer.from(`\r\n--${b.slice(0, n)}`, 'latin1')),
  );

interface GeneratedMultipart {
  boundary: string;
  text: Buffer;
  expected: Buffer;
  models: Buffer[];
  canonical: boolean;
  delimiters: number;
}

const generatedMultipart: fc.Arbitrary<GeneratedMultipart> = boundary.chain((b) => {
  const delimiter = Buffer.from(`\r\n--${b}`, 'latin1');
  const noDelimiter = (bytes: Buffer) => Buffer.concat([Buffer.from('\r\n'), bytes]).indexOf(delimiter) < 0;
  const partArb = fc.record({
    name: names,
    style: fc.nat(headerStyles.length - 1),
    padding: fc.constantFrom('', '', '', ' ', '\t '),
    content: fc.array(contentPiece(b), { maxLength: 5 }).map((pieces) => Buffer.concat(pieces)).filter(noDelimiter),
  });
  return fc
    .record({
      preamble: fc.oneof(fc.constant(''), fc.string({ maxLength: 12 }).map((s) => s + ' preamble')).filter((s) => noDelimiter(Buffer.from(s, 'latin1'))),
      parts: fc.array(partArb, { maxLength: 5 }),
      epilogue: fc.oneof(fc.constant(''), fc.constant('\r\n'), fc.uint8Array({ maxLength: 16 }).map((u) => Buffer.from(u).toString('latin1'))),
    })
    .map(({ preamble, parts, epilogue }) => {
      const head = Buffer.from(preamble === '' ? '' : preamble + '\r\n', 'latin1');
      const tail = Buffer.from(`--${b}--${epilogue}`, 'latin1');
      const built = parts.map((p) => {
        const headers = headerStyles[p.style]!(p.name);
        const lines = Buffer.from(`--${b}${p.padding}\r\n${headers.lines.map((l) => l + '\r\n').join('')}\r\n`, 'latin1');
        return { bytes: Buffer.concat([lines, p.content, Buffer.from('\r\n')]), model: headers.named && p.name === 'model', content: p.content, canonical: headers.canonical && p.padding === '' };
      });
      return {
        boundary: b,
        text: Buffer.concat([head, ...built.map((p) => p.bytes), tail]),
        expected: Buffer.concat([head, ...built.filter((p) => !p.model).map((p) => p.bytes), tail]),
        models: built.filter((p) => p.model).map((p) => p.content),
        canonical: preamble === '' && (epilogue === '' || epilogue === '\r\n') && built.every((p) => p.canonical),
        delimiters: parts.length + 1,
      };
    });
});

/** The form-data name in a header block (latin1 text), null for none, 'invalid' for a malformed block. */
function referenceName(block: string): string | null | 'invalid' {
  if (block === '') return null;
  if (/^[ \t]/.test(block) || block.split('\r\n').some((line) => /[\x00-\x08\x0a-\x1f\x7f]/.test(line))) return 'invalid';
  const fields = block.replace(/\r\n(?=[ \t])/g, '').split('\r\n');
  const parsed = fields.map((field) => /^([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*:(.*)$/s.exec(field));
  if (parsed.some((m) => m === null)) return 'invalid';
  const disposition = parsed.find((m) => m![1]!.toLowerCase() === 'content-disposition');
  if (!disposition) return null;
  const value = disposition[2]!;
  const type = /^[ \t]*([^;]*?)[ \t]*(?=;|$)/y.exec(value)!;
  if (type[1]!.toLowerCase() !== 'form-data') return null;
  const param = /;[ \t]*(?:;[ \t]*)*(?:([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*(?:"((?:[^"\\]|\\[\s\S])*)"|([^; \t"]+))[ \t]*(?=;|$))?/y;
  param.lastIndex = type[0].length;
  let name: string | null = null;
  while (param.lastIndex < value.length) {
    const m = param.exec(value);
    if (!m) return null;
    if (m[1] === undefined) continue;
    if (name === null && m[1].toLowerCase() === 'name') name = m[2] !== undefined ? m[2].replace(/\\([\s\S])/g, '$1') : m[3]!;
  }
  return name;
}

/** Whole-body reading of the same rules, from the RFCs: the expected forwarded bytes or 'invalid'. */
function referenceEdit(input: Buffer, b: string): Buffer | 'invalid' {
  const s = '\r\n' + input.toString('latin1');
  const delimiter = `\r\n--${b}`;
  let at = s.indexOf(delimiter);
  if (at < 0) return 'invalid';
  let out = s.slice(2, at + 2);
  for (;;) {
    const after = at + delimiter.length;
    if (s.startsWith('--', after)) return Buffer.from(out + s.slice(at + 2), 'latin1');
    const line = /[ \t]*\r\n/y;
    line.lastIndex = after;
    if (!line.exec(s)) return 'invalid';
    const blank = s.indexOf('\r\n\r\n', line.lastIndex - 2);
    if (blank < 0 || blank + 4 - line.lastIndex > 16 * 1024) return 'invalid';
    const name = referenceName(s.slice(line.lastIndex, Math.max(line.lastIndex, blank)));
    const next = s.indexOf(delimiter, blank + 4);
    if (name === 'invalid' || next < 0) return 'invalid';
    if (name !== 'model') out += s.slice(at + 2, next + 2);
    at = next;
  }
}

async function formEntries(input: Buffer, b: string): Promise<Array<[string, string]>> {
  const form = await new Response(input, { headers: { 'content-type': `multipart/form-data; boundary="${b}"` } }).formData();
  const entries: Array<[string, string]> = [];
  for (const [name, value] of form) entries.push([name, typeof value === 'string' ? value : Buffer.from(await value.arrayBuffer()).toString('latin1')]);
  return entries;
}

describe('editMultipart properties', () => {
  test('output is the input with exactly the "model" parts (from their delimiter) cut out', () => {
    fc.assert(
      fc.property(generatedMultipart, ({ boundary: b, text, expected, models }) => {
        const outcome = editMultipart(text, b, dropModel);
        expect(outcome.kind).toBe(models.length > 0 ? 'edited' : 'unchanged');
        expect(forwarded(text, outcome).toString('latin1')).toBe(expected.toString('latin1'));
        if (outcome.kind === 'edited') expect(outcome.touched.map((t) => [t.value, t.count])).toEqual([[models[0], models.length]]);
        expect(referenceEdit(text, b)).toEqual(expected);
      }),
      { numRuns: 400 },
    );
  });

  test('a second parser (undici FormData) reads the output as the input minus "model"', async () => {
    await fc.assert(
      fc.asyncProperty(
        // Node 20's undici rejects bodies with the boundary text anywhere but in delimiters.
        generatedMultipart.filter((g) => g.canonical && g.text.toString('latin1').split(g.boundary).length === g.delimiters + 1),
        async ({ boundary: b, text }) => {
          const out = forwarded(text, editMultipart(text, b, dropModel));
          const before = await formEntries(text, b);
          expect(await formEntries(out, b)).toEqual(before.filter(([name]) => name !== 'model'));
        },
      ),
      { numRuns: 150 },
    );
  });

  test('listMultipartParts reads the parts a second parser (undici FormData) reads', async () => {
    await fc.assert(
      fc.asyncProperty(
        generatedMultipart.filter((g) => g.canonical && g.text.toString('latin1').split(g.boundary).length === g.delimiters + 1),
        async ({ boundary: b, text }) => {
          const parts = listMultipartParts(text, b);
          expect(parts).toBeDefined();
          const entries = parts!.map((part) => [part.name, part.filename !== undefined ? part.content.toString('latin1') : part.content.toString('utf8')]);
          expect(entries).toEqual(await formEntries(text, b));
        },
      ),
      { numRuns: 150 },
    );
  });

  test('listMultipartParts: a list exactly when the editor finds the body well-formed, its model parts those the editor removes', () => {
    fc.assert(
      fc.property(generatedMultipart, fc.array(mutation, { maxLength: 2 }), ({ boundary: b, text }, mutations) => {
        const input = mutations.reduce(mutate, text);
        const parts = listMultipartParts(input, b);
        const outcome = editMultipart(input, b, dropModel);
        expect(parts === undefined).toBe(outcome.kind === 'invalid');
        const models = (parts ?? []).filter((part) => part.name === 'model');
        expect(outcome.kind === 'edited' ? outcome.touched[0]!.count : 0).toBe(models.length);
        if (outcome.kind === 'edited') expect(outcome.touched[0]!.value.equals(models[0]!.content)).toBe(true);
      }),
      { numRuns: 600 },
    );
  });

  test('corrupted bodies: the edit the RFC reading gives, or invalid; nothing throws', () => {
    const seen = { invalid: 0, unchanged: 0, edited: 0 };
    fc.assert(
      fc.property(generatedMultipart, fc.array(mutation, { minLength: 1, maxLength: 3 }), ({ boundary: b, text }, mutations) => {
        const input = mutations.reduce(mutate, text);
        const outcome = editMultipart(input, b, dropModel);
        seen[outcome.kind]++;
        const expected = referenceEdit(input, b);
        if (expected === 'invalid') {
          expect(outcome.kind).toBe('invalid');
          return;
        }
        expect(outcome.kind).toBe(expected.equals(input) ? 'unchanged' : 'edited');
        expect(forwarded(input, outcome).toString('latin1')).toBe(expected.toString('latin1'));
      }),
      { numRuns: 600 },
    );
    // Not vacuous: corruption leaves some bodies valid, with and without a model.
    expect(seen.edited).toBeGreaterThan(20);
    expect(seen.unchanged).toBeGreaterThan(40);
    expect(seen.invalid).toBeGreaterThan(100);
  });
});

describe('incremental editors', () => {
  const subjects = [
    {
      name: 'JSON',
      body: generatedBody.map(({ text }) => ({
        input: Buffer.from(text),
        whole: (input: Buffer) => editJson(input, dropModel),
        editor: () => createJsonEditor(dropModel),
      })),
    },
    {
      name: 'multipart',
      body: generatedMultipart.map(({ boundary: b, text }) => ({
        input: text,
        whole: (input: Buffer) => editMultipart(input, b, dropModel),
        editor: () => createMultipartEditor(b, dropModel),
      })),
    },
  ];

  test.each(subjects)('$name: same bytes and outcome as the whole-body editor, however the body is cut', ({ body }) => {
    fc.assert(
      fc.property(body, fc.option(mutation, { freq: 3 }), chunking, ({ input: text, whole, editor: create }, m, cuts) => {
        const input = m === null ? text : mutate(text, m);
        const expected = whole(input);
        const editor = create();
        const released = feed(editor, input, cutsFor(input, cuts));
        expect(editor.outcome).toBe(expected.kind);
        if (expected.kind === 'invalid') return;
        expect(released.toString('latin1')).toBe(forwarded(input, expected).toString('latin1'));
        expect(editor.touched.length).toBe(expected.kind === 'edited' ? expected.touched.length : 0);
        expect(editor.heldBytes).toBe(0);
      }),
      { numRuns: 400 },
    );
  });

  // An edit is finished or the body goes out byte for byte: with a hold cap so small that members, keys,
  // separators and delimiters overflow it anywhere, a valid body cut anywhere comes out either as it came
  // (the cap was hit before any change) or exactly as the whole-body edit, never half-edited.
  const rules: FieldRules = new Map<string, FieldRule>([
    ['model', () => 'remove'],
    ['n', (value) => ({ replace: Buffer.from(value.length > 3 ? '7' : '"a longer replacement"') })],
    ['prompt', () => 'keep'],
  ]);
  const valid = [
    {
      name: 'JSON',
      body: generatedBody.map(({ text }) => ({
        input: Buffer.from(text),
        whole: (input: Buffer) => editJson(input, rules),
        editor: (maxHeldBytes: number) => createJsonEditor(rules, { maxHeldBytes }),
        /** Asserts that `output` is well-formed. */
        check: (output: Buffer) => expect(strictParse(output).ok).toBe(true),
      })),
    },
    {
      name: 'multipart',
      body: generatedMultipart.map(({ boundary: b, text }) => ({
        input: text,
        whole: (input: Buffer) => editMultipart(input, b, rules),
        editor: (maxHeldBytes: number) => createMultipartEditor(b, rules, { maxHeldBytes }),
        check: (output: Buffer) => expect(listMultipartParts(output, b)).toBeDefined(),
      })),
    },
  ];

  test.each(valid)('$name: any small hold cap, any cuts: the input byte for byte or exactly the whole-body edit', ({ body }) => {
    fc.assert(
      fc.property(body, fc.integer({ min: 1, max: 64 }), chunking, ({ input, whole, editor: create }, maxHeldBytes, cuts) => {
        const expected = whole(input);
        if (expected.kind === 'invalid') return; // the generators make some multipart bodies a reader must refuse
        const editor = create(maxHeldBytes);
        const released = feedReusing(editor, input, cutsFor(input, cuts));
        expect(editor.editedBeforeFailure).toBe(false);
        if (editor.outcome === 'invalid') {
          expect(editor.failure).toBe('held_too_large');
          expect(released.toString('latin1')).toBe(input.toString('latin1'));
        } else {
          expect(editor.outcome).toBe(expected.kind);
          expect(released.toString('latin1')).toBe(forwarded(input, expected).toString('latin1'));
          expect(editor.touched).toEqual(expected.kind === 'edited' ? expected.touched : []);
          expect(editor.heldBytes).toBe(0);
        }
      }),
      { numRuns: 600 },
    );
  });

  // A caller that stops editing part-way (a body limit, the memory budget) gets a well-formed body: the
  // edit so far and the rest as it came, or the input itself when nothing had changed yet.
  test.each(valid)('$name: stop() anywhere leaves a well-formed body', ({ body }) => {
    fc.assert(
      fc.property(body, fc.oneof(fc.integer({ min: 1, max: 64 }), fc.constant(Infinity)), chunking, fc.nat(), (subject, maxHeldBytes, cuts, stopAt) => {
        const { input, whole, editor: create, check } = subject;
        if (whole(input).kind === 'invalid') return;
        const ends = [...new Set(cutsFor(input, cuts).map((cut) => cut % (input.length + 1))), input.length].sort((x, y) => x - y);
        const pieces = ends.map((end, i) => input.subarray(i === 0 ? 0 : ends[i - 1], end));
        const stopBefore = stopAt % (pieces.length + 1);
        const editor = create(maxHeldBytes);
        const released: Buffer[] = [];
        let changed = false;
        pieces.forEach((piece, i) => {
          if (i === stopBefore) {
            changed = editor.outcome === 'edited';
            released.push(editor.stop());
          }
          released.push(editor.push(piece));
        });
        if (stopBefore === pieces.length) {
          changed = editor.outcome === 'edited';
          released.push(editor.stop());
        }
        released.push(editor.end());
        const output = Buffer.concat(released);
        expect(editor.heldBytes).toBe(0);
        expect(editor.editedBeforeFailure).toBe(false);
        if (!changed) expect(output.toString('latin1')).toBe(input.toString('latin1'));
        check(output);
      }),
      { numRuns: 600 },
    );
  });
});
