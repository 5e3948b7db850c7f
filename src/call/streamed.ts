// The streamed strategy: Envoy sends the request body in chunks (STREAMED, FULL_DUPLEX_STREAMED) and an
// incremental editor releases what it can at once. While the body is small enough, everything is kept
// in a verification window until the body is known to be well-formed, so a body the editor cannot finish
// goes out byte for byte; past the window, bytes flow with only the editor's own hold-back in memory.
//
// Every byte not deliberately removed goes upstream, in order, whatever ends the body: end_of_stream,
// the announced length, the end of the body's structure, trailers (FULL_DUPLEX_STREAMED), a limit.
// What this holds (window, editor hold-back, parser state) is reserved in the call's lease as it grows.
import { createJsonEditor, createMultipartEditor, type StreamEditor } from '../body/index.js';
import { bodyResponse, streamedBodyResponse } from '../mutations.js';
import type { HttpBody, ProcessingResponse } from '../proto.js';
import { Accumulator } from './accumulator.js';
import type { PassReason, RewriteReport } from './outcomes.js';
import type { BodyRequest } from './request.js';
import { failureReason, overLimitRejection, type CallScope } from './scope.js';
import { undecidedBody, type BodyStrategy } from './strategy.js';

export type StreamedMode = 'STREAMED' | 'FULL_DUPLEX_STREAMED';

/** Input and edited output of a body still small enough to be verified before any of it is released. */
interface Window {
  input: Accumulator;
  output: Accumulator;
}

/** What an editor costs in memory: the bytes it holds back plus its parser state. */
function editorCost(editor: StreamEditor): number {
  return editor.heldBytes + editor.stateBytes;
}

export class Streamed implements BodyStrategy {
  /** The editor that reports what was edited; it stays after editing stops. */
  private readonly edits: StreamEditor;
  /** The editor while bytes go through it; undefined once the window sent the original bytes (the rest passes as it comes). */
  private editor: StreamEditor | undefined;
  private window: Window | undefined;
  /** The body's end was reached (bytes after it pass as they come). */
  private ended = false;
  /** Edited bytes have gone upstream: from here on the body cannot go out byte for byte any more. */
  private committed = false;
  /** Why editing stopped before the body ended, if it did. */
  private stopped: PassReason | undefined;

  constructor(
    private readonly scope: CallScope,
    private readonly request: BodyRequest,
    readonly mode: StreamedMode,
  ) {
    const { rules } = request.plan;
    this.edits = request.bodyKind === 'json' ? createJsonEditor(rules) : createMultipartEditor(request.boundary!, rules);
    this.editor = this.edits;
    // A body announced larger than the window would only be held to be released anyway.
    const declared = request.declaredLength;
    if (declared === undefined || declared <= scope.config.streamThresholdBytes) this.window = { input: new Accumulator(), output: new Accumulator() };
  }

  onBody(message: HttpBody): ProcessingResponse[] {
    const { request } = this;
    request.bytesIn += message.body.length;
    if (this.ended) {
      // Bytes after the body's end (whitespace, an epilogue, an empty end_of_stream chunk) pass as they are.
      request.bytesOut += message.body.length;
      return [this.answer(message.body, message, false)];
    }
    // The announced length reached is the end of the body even when trailers, not end_of_stream, follow.
    const declared = request.declaredLength;
    const ends = message.end_of_stream || (declared !== undefined && request.bytesIn >= declared);
    const released = this.take(message.body, ends);
    if (released === 'rejected') return [this.rejection!];
    if (released === undefined) {
      // Held for verification: STREAMED answers the chunk with no bytes, FULL_DUPLEX does not answer yet.
      return this.mode === 'FULL_DUPLEX_STREAMED' ? [] : [bodyResponse('request', { body: Buffer.alloc(0) })];
    }
    return this.mode === 'FULL_DUPLEX_STREAMED' && released.length === 0 && !this.ended ? [] : [this.answer(released, message, true)];
  }

  undecided() {
    return undecidedBody(this.request);
  }

  beforeTrailers(): ProcessingResponse[] {
    if (this.ended) return [];
    // Envoy sends STREAMED trailers only once every chunk is answered, and a trailers answer carries no
    // body: bytes still held cannot be sent. A well-formed body never gets here holding any (it is
    // released when its structure ends), so this is a body cut short: counted, not lost silently.
    if (this.mode === 'STREAMED' && this.holding()) this.stopped = 'cut_by_trailers';
    // Trailers end the body: whatever is held goes now, as at end_of_stream.
    const released = this.take(Buffer.alloc(0), true);
    if (released === 'rejected') return [this.rejection!];
    const bytes = released ?? Buffer.alloc(0);
    if (this.mode === 'STREAMED') return [];
    // Trailers follow, so end_of_stream stays false; nothing to send means no answer at all (an empty
    // streamed_response would answer a chunk Envoy never sent).
    if (bytes.length === 0) return [];
    return [streamedBodyResponse('request', bytes, false, this.scope.record.extras())];
  }

  close(): void {
    this.window = undefined;
    this.editor = undefined;
  }

  /** Whether any body bytes are held (window or editor). */
  private holding(): boolean {
    return (this.window?.input.length ?? 0) > 0 || (this.editor?.heldBytes ?? 0) > 0;
  }

  private rejection: ProcessingResponse | undefined;

  /**
   * Runs a chunk through the editor and the window. Returns the bytes to send now, undefined while the
   * window holds them, or 'rejected' when a limit turned the call into a 413.
   */
  private take(chunk: Buffer, ends: boolean): Buffer | undefined | 'rejected' {
    const { config, lease } = this.scope;
    let out = chunk;
    const editor = this.editor;
    if (editor) {
      const pieces: Buffer[] = [];
      const editing = (): boolean => this.stopped === undefined;
      if (editing() && this.request.bytesIn > config.limits.maxBodyBytes) {
        // A body of unannounced size that grows past limits.maxBodyBytes is over the limit like an
        // announced one: editing stops before this chunk, and the rest goes on as it came.
        pieces.push(editor.stop());
        if (this.stop('too_large')) return 'rejected';
      }
      pieces.push(editor.push(chunk));
      // A body whose structure has ended is complete: nothing is held past this point, so trailers
      // cannot find bytes held back (STREAMED could not send them).
      if (ends || (editing() && editor.complete)) {
        pieces.push(editor.end());
        this.ended = true;
      } else if (editing() && !lease.track(editorCost(editor))) {
        // limits.globalHeldBytes covers held-back bytes too: without room, editing stops.
        pieces.push(editor.stop());
        if (this.stop('too_large')) return 'rejected';
      }
      out = pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces);
    }
    if (ends) this.ended = true;
    // The outcome is known once the body ended, editing stopped or the body proved malformed: record it
    // now. Envoy may never say that a body ended (trailers it does not send end it), and nothing is held
    // from here on.
    const decided = this.ended || this.stopped !== undefined || this.edits.outcome === 'invalid';
    if (decided) lease.track(0);

    const released = this.window ? this.throughWindow(chunk, out) : out;
    // In STREAMED, bytes released by trailers cannot be sent (see beforeTrailers): they are not counted.
    if (released !== undefined && this.stopped !== 'cut_by_trailers') this.request.bytesOut += released.length;
    // Edited bytes went out (not the window's original bytes, after which the editor is gone).
    if (released !== undefined && released.length > 0 && this.editor !== undefined && this.edits.outcome === 'edited') this.committed = true;
    if (decided) this.finish();
    return released;
  }

  /**
   * Editing stops for good (the editor has been told to stop: later chunks still go through it, which
   * passes them as they come but for a separator a removed member left, so the body stays well-formed).
   * True when the policy is to reject (the rejection is then ready).
   */
  private stop(reason: PassReason): boolean {
    this.stopped = reason;
    const rejection = overLimitRejection(this.scope.config);
    if (rejection) {
      this.rejection = this.scope.record.reject(rejection, this.request.plan.route);
      this.close();
      return true;
    }
    return false;
  }

  /**
   * Keeps input and output while the body fits the window. Returns the bytes to release, or undefined
   * while holding: the edited body once it is complete and well-formed, the original bytes when the edit
   * cannot be finished, and the edited bytes so far when the window is full (editing goes on).
   */
  private throughWindow(chunk: Buffer, out: Buffer): Buffer | undefined {
    const window = this.window!;
    const { lease, config } = this.scope;
    const before = window.input.capacity + window.output.capacity;
    const after = window.input.capacityFor(chunk.length) + window.output.capacityFor(out.length);
    const fits = window.input.length + chunk.length + window.output.length + out.length <= 2 * config.streamThresholdBytes && lease.reserve(after - before);
    if (!fits) {
      // Full: what was edited so far goes; from here on the edit is committed to streaming.
      this.window = undefined;
      lease.release(before);
      if (this.stopped || this.edits.outcome === 'invalid') {
        // The original bytes go: the editor's view of the body no longer matches what was sent.
        this.editor = undefined;
        return Buffer.concat([window.input.contents(), chunk]);
      }
      return Buffer.concat([window.output.contents(), out]);
    }
    window.input.append(chunk);
    window.output.append(out);
    const unfinished = this.stopped !== undefined || this.edits.outcome === 'invalid';
    if (!this.ended && !unfinished) return undefined;
    this.window = undefined;
    const released = Buffer.from(unfinished ? window.input.contents() : window.output.contents());
    lease.release(after);
    if (unfinished) this.editor = undefined;
    return released;
  }

  /** Records what was done, once it is known; later calls bring the reported byte counts up to date. */
  private finish(): void {
    const { record } = this.scope;
    const { plan } = this.request;
    const editor = this.edits;
    if (record.decided) {
      const result = record.result;
      if (result?.kind === 'rewritten' && result.report === this.reported) {
        result.report.bytesIn = this.request.bytesIn;
        result.report.bytesOut = this.request.bytesOut;
      }
      return;
    }
    const failure = editor.outcome === 'invalid' ? failureReason(editor.failure) : undefined;
    const stopped = this.stopped ?? failure;
    if (this.committed && editor.touched.length > 0) {
      // Edited bytes went upstream before the edit stopped: report the edit, and what stopped it.
      record.rewritten((this.reported = this.report(editor, stopped)));
    } else if (stopped) {
      record.pass(stopped, plan.route, failure ? editor.reason : undefined);
    } else if (editor.outcome === 'edited') {
      record.rewritten((this.reported = this.report(editor, undefined)));
    } else {
      record.pass('no_model', plan.route);
    }
  }

  /** The report this strategy recorded, kept up to date with the bytes that follow the decision. */
  private reported: RewriteReport | undefined;

  private report(editor: StreamEditor, stopped: PassReason | undefined): RewriteReport {
    const { request } = this;
    return {
      route: request.plan.route,
      bodyKind: request.bodyKind,
      mode: this.mode,
      bytesIn: request.bytesIn,
      bytesOut: request.bytesOut,
      changes: [...request.plan.actions, ...editor.touched.map((field) => field.name)],
      ...(stopped ? { stopped } : {}),
    };
  }

  /** One answer for one body message (STREAMED), or for the bytes released (FULL_DUPLEX_STREAMED). */
  private answer(released: Buffer, message: HttpBody, withMetadata: boolean): ProcessingResponse {
    const extras = withMetadata && this.ended ? this.scope.record.extras() : {};
    if (this.mode === 'FULL_DUPLEX_STREAMED') return streamedBodyResponse('request', released, message.end_of_stream, extras);
    // STREAMED: an unchanged chunk gets a bare CONTINUE, so other filters' changes to it stand.
    if (released.equals(message.body)) return bodyResponse('request', undefined, extras);
    return bodyResponse('request', { body: released }, extras);
  }
}
