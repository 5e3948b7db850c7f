// `inPlace` whole-body edits (what the server uses on bodies it owns) give exactly the bytes and touched
// values of the copying edit, for JSON and multipart, and fall back to copying when a replacement is
// longer than what it replaces.
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { editJson, editMultipart, type EditOutcome, type FieldRules } from '../../src/body/index.js';

const remove: FieldRules = new Map([['model', () => 'remove' as const]]);
const replaceLonger: FieldRules = new Map([['model', () => ({ replace: Buffer.from('"a much longer deployment name than before"') })]]);

function snapshot(outcome: EditOutcome) {
  if (outcome.kind !== 'edited') return outcome;
  return { kind: outcome.kind, body: Buffer.from(outcome.body).toString('latin1'), touched: outcome.touched.map((t) => ({ ...t, value: Buffer.from(t.value).toString('latin1') })) };
}

const member = fc.tuple(fc.constantFrom('model', 'prompt', 'n', 'size', 'x'), fc.jsonValue({ maxDepth: 2 }));
const jsonBody = fc
  .tuple(fc.array(member, { maxLength: 8 }), fc.constantFrom('', ' ', '\n  '))
  .map(([members, ws]) => `{${ws}${members.map(([k, v]) => `${JSON.stringify(k)}:${ws}${JSON.stringify(v)}`).join(`,${ws}`)}${ws}}`);

describe('editJson inPlace', () => {
  test('same outcome as the copying edit', () => {
    fc.assert(
      fc.property(jsonBody, fc.boolean(), (text, longer) => {
        const rules = longer ? replaceLonger : remove;
        const expected = snapshot(editJson(Buffer.from(text), rules));
        const owned = Buffer.from(text);
        const actual = snapshot(editJson(owned, rules, { inPlace: true }));
        expect(actual).toEqual(expected);
      }),
      { numRuns: 400 },
    );
  });

  test('the result is the input buffer itself, rewritten (no new body-sized allocation)', () => {
    // Larger than Node's 8 KiB pool, so a copy could not share the input's ArrayBuffer by chance.
    const image = 'A'.repeat(20_000);
    const owned = Buffer.from(`{"prompt":"p", "model":"m" ,"image":"${image}","n":1}`);
    const outcome = editJson(owned, remove, { inPlace: true });
    expect(outcome.kind).toBe('edited');
    if (outcome.kind !== 'edited') return;
    // The same memory: same ArrayBuffer, same start; writing through one shows in the other.
    expect(outcome.body.buffer).toBe(owned.buffer);
    expect(outcome.body.byteOffset).toBe(owned.byteOffset);
    expect(outcome.body.toString()).toBe(`{"prompt":"p" ,"image":"${image}","n":1}`);
    owned[1] = 0x20;
    expect(outcome.body[1]).toBe(0x20);
    expect(outcome.touched[0]!.value.toString()).toBe('"m"');
  });

  test('an unchanged or invalid body leaves the input untouched', () => {
    for (const text of ['{"prompt":"p"}', '{"model":"m",', '[1]']) {
      const owned = Buffer.from(text);
      editJson(owned, remove, { inPlace: true });
      expect(owned.toString()).toBe(text);
    }
  });
});

describe('editMultipart inPlace', () => {
  const part = fc.tuple(fc.constantFrom('model', 'image', 'prompt'), fc.uint8Array({ maxLength: 64 }));
  test('same outcome as the copying edit', () => {
    fc.assert(
      fc.property(fc.array(part, { maxLength: 6 }), (parts) => {
        const body = Buffer.concat([
          ...parts.flatMap(([name, data]) => [Buffer.from(`--b0undary\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n`), Buffer.from(data), Buffer.from('\r\n')]),
          Buffer.from('--b0undary--\r\n'),
        ]);
        const expected = snapshot(editMultipart(Buffer.from(body), 'b0undary', remove));
        const actual = snapshot(editMultipart(Buffer.from(body), 'b0undary', remove, { inPlace: true }));
        expect(actual).toEqual(expected);
      }),
      { numRuns: 300 },
    );
  });

  test('the result is the input buffer itself, rewritten', () => {
    const image = Buffer.alloc(20_000, 0x2d);
    const owned = Buffer.concat([
      Buffer.from('--b0undary\r\nContent-Disposition: form-data; name="prompt"\r\n\r\np\r\n--b0undary\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n'),
      // A second matched part right after the first: its hold starts with bytes put back from the first.
      Buffer.from('--b0undary\r\nContent-Disposition: form-data; name="model"\r\n\r\nm2\r\n'),
      Buffer.from('--b0undary\r\nContent-Disposition: form-data; name="image"\r\n\r\n'),
      image,
      Buffer.from('\r\n--b0undary--\r\n'),
    ]);
    const expected = editMultipart(Buffer.from(owned), 'b0undary', remove);
    const outcome = editMultipart(owned, 'b0undary', remove, { inPlace: true });
    expect(outcome.kind).toBe('edited');
    if (outcome.kind !== 'edited' || expected.kind !== 'edited') return;
    expect(outcome.body.buffer).toBe(owned.buffer);
    expect(outcome.body.byteOffset).toBe(owned.byteOffset);
    expect(outcome.body.equals(expected.body)).toBe(true);
  });
});
