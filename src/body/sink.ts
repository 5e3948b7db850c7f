// Where the bytes of the chunk being scanned go. An editor walks a chunk once and, at positions
// where the fate of what follows changes, switches the current run between three destinations:
// released now (pass), held back until a rule decides (hold), or cut out (drop). Held bytes are
// addressed by "held offsets" so a decision can split them (key / value / next delimiter) later.
//
// Held bytes are views of the chunk while it is scanned. A whole body stays put while it is edited, so
// they stay views of it (and what is released or taken out of adjacent views is again one view: the
// in-place edit depends on this). A streaming caller may reuse its buffer, so at the end of each chunk
// the bytes held from it are copied into storage of the sink's own, packed together so that a body cut
// into tiny chunks costs what it holds, not one Buffer object per chunk.
import { EMPTY } from './bytes.js';

const PASS = 0;
const HOLD = 1;
const DROP = 2;
type Mode = typeof PASS | typeof HOLD | typeof DROP;

/** Held pieces shorter than this are packed into shared storage of at most this size; longer ones get their own copy. */
const PACK_BYTES = 16 * 1024;

export class Sink {
  private chunk: Buffer = EMPTY;
  /** Chunk offset where the current run starts. */
  private start = 0;
  private mode: Mode = PASS;
  private out: Buffer[] = [];
  private held: Buffer[] = [];
  private heldLength = 0;
  /** held[fromChunk..] may be views of the current chunk (earlier pieces are the sink's own). */
  private fromChunk = 0;
  /** The unused end of the storage the last small held piece was packed into. */
  private spare: Buffer = EMPTY;

  begin(chunk: Buffer): void {
    this.chunk = chunk;
    this.start = 0;
    this.fromChunk = this.held.length;
  }

  /** Bytes held back, not counting the unflushed part of the current run. */
  get heldBytes(): number {
    return this.heldLength;
  }

  /** Memory allocated for holding but not holding anything (the spare end of the packing storage). */
  get slackBytes(): number {
    return this.spare.length;
  }

  /** Holds from `at` on (bytes before it keep their current destination). */
  hold(at: number): void {
    this.flush(at);
    this.mode = HOLD;
  }

  /** Releases everything held up to `at` and passes what follows. */
  pass(at: number): void {
    this.flush(at);
    this.releaseHeld();
    this.mode = PASS;
  }

  /** Drops everything held up to `at` and what follows. */
  discard(at: number): void {
    this.flush(at);
    this.clearHeld();
    this.mode = DROP;
  }

  /** While holding: the held offset of chunk position `at` (negative `at` reaches into earlier chunks). */
  heldOffset(at: number): number {
    return this.heldLength + at - this.start;
  }

  /** Held bytes up to `at` as one buffer, left in place: a view when they are adjacent in one buffer. */
  peek(at: number): Buffer {
    this.flush(at);
    if (this.held.length > 1) {
      const first = this.held[0];
      let end = first.byteOffset;
      let adjacent = true;
      for (const piece of this.held) {
        if (piece.buffer !== first.buffer || piece.byteOffset !== end) adjacent = false;
        end += piece.length;
      }
      const joined = adjacent ? Buffer.from(first.buffer, first.byteOffset, this.heldLength) : Buffer.concat(this.held, this.heldLength);
      // Still a view of the chunk if its first piece was.
      this.fromChunk = this.fromChunk === 0 ? 0 : 1;
      this.held = [joined];
    }
    return this.held[0] ?? EMPTY;
  }

  /** Held bytes up to `at` as one buffer, removed from the hold (which goes on from `at`). */
  take(at: number): Buffer {
    const all = this.peek(at);
    this.clearHeld();
    return all;
  }

  /** Puts bytes back at the end of the hold. */
  put(bytes: Buffer): void {
    if (bytes.length === 0) return;
    this.held.push(bytes);
    this.heldLength += bytes.length;
  }

  /** Releases bytes that do not come from the chunk (a kept member taken from the hold, a replacement). */
  emit(bytes: Buffer): void {
    if (bytes.length > 0) this.output(bytes);
  }

  /** Gives up editing: held bytes are released and the current run, whatever it was, passes. */
  abandon(): void {
    this.releaseHeld();
    this.mode = PASS;
  }

  /**
   * Ends the chunk: flushes the current run and, if `copyHeld`, copies held bytes out of the
   * caller's buffer (a streaming caller may reuse it; a whole body stays put while it is edited).
   */
  settle(copyHeld: boolean): void {
    const source = this.chunk.buffer;
    this.flush(this.chunk.length);
    this.chunk = EMPTY;
    if (!copyHeld || this.fromChunk >= this.held.length) return;
    // Only pieces added while scanning this chunk can be views of it; earlier ones are already copies.
    const pieces = this.held.splice(this.fromChunk);
    for (const piece of pieces) {
      if (piece.buffer === source) this.keep(piece);
      else this.held.push(piece);
    }
  }

  /** Bytes released since the last call, in order; adjacent slices of one buffer are joined. */
  release(): Buffer[] {
    const out = this.out;
    this.out = [];
    return out;
  }

  private flush(at: number): void {
    if (at > this.start) {
      const run = this.chunk.subarray(this.start, at);
      if (this.mode === PASS) this.output(run);
      else if (this.mode === HOLD) {
        this.held.push(run);
        this.heldLength += run.length;
      }
      this.start = at;
    }
  }

  private output(bytes: Buffer): void {
    const last = this.out[this.out.length - 1];
    if (last !== undefined && last.buffer === bytes.buffer && last.byteOffset + last.length === bytes.byteOffset) {
      this.out[this.out.length - 1] = Buffer.from(last.buffer, last.byteOffset, last.length + bytes.length);
    } else {
      this.out.push(bytes);
    }
  }

  private releaseHeld(): void {
    for (const bytes of this.held) this.output(bytes);
    this.clearHeld();
  }

  private clearHeld(): void {
    this.held = [];
    this.heldLength = 0;
    this.fromChunk = 0;
  }

  /** Appends a copy of `piece` to the hold: packed after the previous small piece when there is room. */
  private keep(piece: Buffer): void {
    const length = piece.length;
    if (length >= PACK_BYTES) {
      this.held.push(Buffer.from(piece));
      return;
    }
    const last = this.held[this.held.length - 1];
    // Sized to what is held (a key cut by a chunk's end needs little), up to PACK_BYTES.
    if (this.spare.length < length) this.spare = Buffer.allocUnsafeSlow(Math.min(PACK_BYTES, Math.max(256, 4 * length, this.heldLength)));
    piece.copy(this.spare);
    const spare = this.spare;
    this.spare = spare.subarray(length);
    if (last !== undefined && last.buffer === spare.buffer && last.byteOffset + last.length === spare.byteOffset) {
      this.held[this.held.length - 1] = Buffer.from(spare.buffer, last.byteOffset, last.length + length);
    } else {
      this.held.push(spare.subarray(0, length));
    }
  }
}
