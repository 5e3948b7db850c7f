import { isUtf8 } from 'node:buffer';
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { Utf8Stream, controlByteSimd, controlByteWords, hasControlByte, simdModule } from '../../src/body/bytes.js';

function naiveControlByte(buf: Buffer, from: number, to: number): boolean {
  return buf.subarray(from, to).some((b) => b < 0x20);
}

/** Mostly printable bytes with a few of anything, so both answers come up often. */
const bytes = fc
  .tuple(fc.integer({ min: 0, max: 300_000 }), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 3 }))
  .map(([length, pokes]) => {
    const buf = Buffer.alloc(length + 8, 0x41);
    for (const [at, value] of pokes) buf[at % buf.length] = value;
    return buf;
  });

describe('control byte check', () => {
  test('the WebAssembly SIMD module loads on Node 20', () => {
    expect(simdModule).not.toBeNull();
  });

  test('SIMD, word loop and dispatcher agree with a plain loop on any range', () => {
    fc.assert(
      fc.property(bytes, fc.nat(), fc.nat(), fc.nat(7), (buf, a, b, shift) => {
        const view = buf.subarray(shift); // exercise unaligned byteOffsets
        const [from, to] = [a % (view.length + 1), b % (view.length + 1)].sort((x, y) => x - y) as [number, number];
        const expected = naiveControlByte(view, from, to);
        expect(controlByteWords(view, from, to)).toBe(expected);
        expect(controlByteSimd(simdModule, view, from, to)).toBe(expected);
        expect(hasControlByte(view, from, to)).toBe(expected);
      }),
      { numRuns: 200 },
    );
  });

  test.each([0x00, 0x09, 0x0a, 0x1f])('finds byte %i next to window edges', (value) => {
    const buf = Buffer.alloc(4 * 65536 + 40, 0x20);
    for (const at of [0, 1, 15, 16, 17, 65535, 4 * 65536 - 1, 4 * 65536, 4 * 65536 + 39]) {
      buf[at] = value;
      expect(controlByteSimd(simdModule, buf, 0, buf.length)).toBe(true);
      expect(controlByteWords(buf, 0, buf.length)).toBe(true);
      expect(controlByteSimd(simdModule, buf, at + 1, buf.length)).toBe(false);
      buf[at] = 0x20;
    }
  });
});

describe('Utf8Stream', () => {
  const text = fc.oneof(
    fc.string({ unit: 'binary', maxLength: 40 }).map((s) => Buffer.from(s)),
    fc.uint8Array({ maxLength: 40 }).map((u) => Buffer.from(u)),
  );

  test('agrees with Buffer.isUtf8 on the whole, however the bytes are cut', () => {
    fc.assert(
      fc.property(text, fc.array(fc.nat(), { maxLength: 6 }), (buf, cuts) => {
        const ends = [...new Set(cuts.map((c) => c % (buf.length + 1))), buf.length].sort((a, b) => a - b);
        const stream = new Utf8Stream();
        const pushed = ends.every((end, i) => stream.push(buf.subarray(i === 0 ? 0 : ends[i - 1], end)));
        expect(pushed && stream.end()).toBe(isUtf8(buf));
      }),
      { numRuns: 500 },
    );
  });
});
