// What the JSON and multipart editors share: the push/end protocol, the hold limit, the way an
// invalid body degrades to pass-through, and the whole-body entry point built on the incremental
// one (so both modes give the same bytes by construction).
import { EMPTY } from './bytes.js';
import { Sink } from './sink.js';
import type { EditFailure, EditOutcome, MemberAction, StreamEditor, TouchedName } from './types.js';

export const DEFAULT_MAX_HELD_BYTES = 1024 * 1024;

export interface StreamEditorOptions {
  /**
   * Before any change is made, holding more than this stops editing (outcome `invalid`, the body goes on
   * byte for byte). Default 1 MiB.
   */
  maxHeldBytes?: number;
}

export abstract class ByteEditor implements StreamEditor {
  readonly touched: TouchedName[] = [];
  /** The touched entry of each name (see TouchedName: one per name). */
  private readonly touchedByName = new Map<string, TouchedName>();
  /** Why the outcome is `invalid` (empty otherwise). */
  reason = '';
  failure: EditFailure | undefined;
  editedBeforeFailure = false;
  protected readonly sink = new Sink();
  protected failed = false;
  /** A rule changed a member/part: from here on the edit must be finished (see checkHeld). */
  protected changed = false;
  /** Body offset of the chunk being scanned, for error messages. */
  protected offset = 0;
  private ended = false;
  /** stop() was called: bytes pass as they come (see stop). */
  private stopped = false;
  /** The chunk being scanned may be reused by the caller once push() returns (streaming). */
  private borrowed = false;
  /** Bytes of the touched values copied out of the caller's chunks. */
  private touchedBytes = 0;
  private readonly maxHeldBytes: number;

  constructor(options: StreamEditorOptions | undefined) {
    this.maxHeldBytes = options?.maxHeldBytes ?? DEFAULT_MAX_HELD_BYTES;
  }

  get outcome(): 'unchanged' | 'edited' | 'invalid' {
    return this.failed ? 'invalid' : this.changed ? 'edited' : 'unchanged';
  }

  get heldBytes(): number {
    return this.sink.heldBytes;
  }

  get stateBytes(): number {
    return this.sink.slackBytes + this.parserStateBytes() + this.touchedBytes;
  }

  get complete(): boolean {
    return !this.failed && this.structureEnded();
  }

  push(chunk: Buffer): Buffer {
    this.take(chunk, true);
    return join(this.sink.release());
  }

  end(): Buffer {
    this.finishBody();
    return join(this.sink.release());
  }

  stop(): Buffer {
    if (this.ended) throw new Error('stop() after end()');
    if (!this.stopped && !this.failed) {
      this.stopped = true;
      this.sink.begin(EMPTY);
      if (!this.stopInside()) this.sink.abandon();
      this.sink.settle(false);
    }
    return join(this.sink.release());
  }

  /**
   * Edits a whole body in one pass; returns the edited bytes, or null when the outcome is not `edited`.
   * `inPlace`: the kept bytes are moved down inside `body` and a view of it is returned (no new buffer of
   * the body's size, no page faults on fresh memory); `body` no longer holds the original then.
   */
  editAll(body: Buffer, inPlace = false): Buffer | null {
    this.take(body, false);
    const pieces = this.sink.release();
    this.finishBody();
    if (this.outcome !== 'edited') return null;
    const all = [...pieces, ...this.sink.release()];
    if (inPlace) {
      // touched values are views into `body` too: detach them before their bytes are overwritten.
      for (const field of this.touched) field.value = Buffer.from(field.value);
      const compacted = compactInto(body, all);
      if (compacted) return compacted;
    }
    return join(all);
  }

  /** Scans a chunk; `copyHeld`: copy held bytes out of it, as a streaming caller may reuse its buffer. */
  private take(chunk: Buffer, copyHeld: boolean): void {
    if (this.ended) throw new Error('push() after end()');
    this.sink.begin(chunk);
    this.borrowed = copyHeld;
    if (this.stopped) this.scanStopped(chunk);
    else if (!this.failed) this.scan(chunk);
    this.sink.settle(copyHeld);
    if (!this.failed) this.checkHeld(this.sink.heldBytes);
    this.offset += chunk.length;
  }

  private finishBody(): void {
    if (this.ended) throw new Error('end() called twice');
    this.ended = true;
    this.sink.begin(EMPTY);
    if (!this.failed && !this.stopped) this.finish();
    this.sink.settle(false);
  }

  /**
   * Fails when `size` held bytes are over the limit. Checked when a push ends and again when a
   * matched member/part is complete, so a member too large fails however the body was cut.
   *
   * Only until the first change: stopping after it would send a body edited up to some point and not
   * after (a second `model` member left in, say). The bytes held from then on are counted in heldBytes,
   * so the caller's body-size limit and memory budget still bound them.
   */
  protected checkHeld(size: number): boolean {
    if (size <= this.maxHeldBytes || this.changed) return true;
    this.fail(`held member exceeds ${this.maxHeldBytes} bytes`, 'held_too_large');
    return false;
  }

  /** Stops editing for good: what is held is released verbatim and the rest passes through. */
  protected fail(reason: string, failure: EditFailure = 'malformed'): void {
    if (this.failed) return;
    this.failed = true;
    this.reason = reason;
    this.failure = failure;
    this.editedBeforeFailure = this.changed;
    this.sink.abandon();
  }

  /** Records that a rule changed the member/part `name` whose original value is `value`. */
  protected touch(name: string, action: 'remove' | 'replace', value: Buffer): void {
    this.changed = true;
    const known = this.touchedByName.get(name);
    if (known !== undefined) {
      known.count++;
      return;
    }
    // A streaming caller may reuse its buffer: keep a copy (of the first value per name only).
    if (this.borrowed) this.touchedBytes += value.length;
    const field: TouchedName = { name, action, value: this.borrowed ? Buffer.from(value) : value, count: 1 };
    this.touchedByName.set(name, field);
    this.touched.push(field);
  }

  /** Bytes of parser state that grow with the input (see stateBytes). */
  protected abstract parserStateBytes(): number;

  /**
   * At stop(): true when the output so far needs bytes still to come dropped before the rest can pass
   * (JSON: the comma after a removed member with nothing kept before it); scanStopped drops them.
   * False: what is held is released and everything passes.
   */
  protected stopInside(): boolean {
    return false;
  }

  /** After stop(), with stopInside() true: drops what must go and passes the rest. */
  protected scanStopped(_chunk: Buffer): void {}

  /** Scans one chunk, steering its bytes through the sink; calls fail() on malformed input. */
  protected abstract scan(chunk: Buffer): void;

  /** At end of body: fail() unless the body was complete. */
  protected abstract finish(): void;
  /** Whether the scanner is past the end of the body's structure. */
  protected abstract structureEnded(): boolean;
}

/** Pushes `chunks` through `editor`, ends it, and returns everything it released. */
export function editInChunks(editor: StreamEditor, chunks: Iterable<Buffer>): Buffer {
  const released: Buffer[] = [];
  for (const chunk of chunks) released.push(editor.push(chunk));
  released.push(editor.end());
  return join(released);
}

/** Runs an incremental editor over a whole body. */
export function editWhole(editor: ByteEditor, body: Buffer, inPlace = false): EditOutcome {
  const edited = editor.editAll(body, inPlace);
  if (edited !== null) return { kind: 'edited', body: edited, touched: [...editor.touched] };
  return editor.failure !== undefined ? { kind: 'invalid', reason: editor.reason, failure: editor.failure } : { kind: 'unchanged' };
}

/**
 * Moves `pieces`, in order, to the start of `body`, when every piece is a view of `body` (no replacement
 * bytes from elsewhere): each piece then starts at or after the place it moves to, so copyWithin never
 * overwrites bytes still to be moved. Returns null when some piece is not a view of `body`.
 */
function compactInto(body: Buffer, pieces: Buffer[]): Buffer | null {
  const start = body.byteOffset;
  const end = start + body.length;
  for (const piece of pieces) {
    if (piece.length > 0 && (piece.buffer !== body.buffer || piece.byteOffset < start || piece.byteOffset + piece.length > end)) return null;
  }
  let target = 0;
  for (const piece of pieces) {
    const from = piece.byteOffset - start;
    if (from !== target) body.copyWithin(target, from, from + piece.length);
    target += piece.length;
  }
  return body.subarray(0, target);
}

/** One buffer of `pieces`, copying only when there is more than one. */
function join(pieces: Buffer[]): Buffer {
  if (pieces.length === 0) return EMPTY;
  return pieces.length === 1 ? pieces[0] : Buffer.concat(pieces);
}

/** The change an action makes to `value`: 'remove', the replacement bytes, or null for none (a
 * replacement identical to the original changes nothing, so the body stays `unchanged`). */
export function effectiveAction(action: MemberAction, value: Buffer): 'remove' | Buffer | null {
  if (action === 'keep') return null;
  if (action === 'remove') return 'remove';
  return action.replace.equals(value) ? null : action.replace;
}
