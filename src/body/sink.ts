// Where the bytes of the chunk being scanned go. An editor walks a chunk once and, at positions
// where the fate of what follows changes, switches the current run between three destinations:
// released now (pass), held back until a rule decides (hold), or cut out (drop). Held bytes are
// addressed by "held offsets" so a decision can split them (key / value / next delimiter) later.
import { EMPTY } from './bytes.js';

const PASS = 0;
const HOLD = 1;
const DROP = 2;
type Mode = typeof PASS | typeof HOLD | typeof DROP;

export class Sink {
  private chunk: Buffer = EMPTY;
  /** Chunk offset where the current run starts. */
  private start = 0;
  private mode: Mode = PASS;
  private out: Buffer[] = [];
  private held: Buffer[] = [];
  private heldLength = 0;

  begin(chunk: Buffer): void {
    this.chunk = chunk;
    this.start = 0;
  }

  /** Bytes held back, not counting the unflushed part of the current run. */
  get heldBytes(): number {
    return this.heldLength;
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
    this.held = [];
    this.heldLength = 0;
    this.mode = DROP;
  }

  /** While holding: the held offset of chunk position `at` (negative `at` reaches into earlier chunks). */
  heldOffset(at: number): number {
    return this.heldLength + at - this.start;
  }

  /** Held bytes up to `at` as one buffer, left in place. */
  peek(at: number): Buffer {
    this.flush(at);
    if (this.held.length > 1) this.held = [Buffer.concat(this.held, this.heldLength)];
    return this.held[0] ?? EMPTY;
  }

  /** Held bytes up to `at` as one buffer, removed from the hold (which goes on from `at`). */
  take(at: number): Buffer {
    const all = this.peek(at);
    this.held = [];
    this.heldLength = 0;
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
    if (!copyHeld) return;
    for (let i = 0; i < this.held.length; i++) {
      if (this.held[i].buffer === source) this.held[i] = Buffer.from(this.held[i]);
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
    this.held = [];
    this.heldLength = 0;
  }
}
