export type MemberAction = 'keep' | 'remove' | { replace: Buffer }; // replace = new raw bytes for the value

/** Decides what to do with a top-level JSON member / multipart part, given its raw value bytes. */
export type FieldRule = (rawValue: Buffer) => MemberAction;

/** Keyed by the DECODED JSON key (so "mo\u0064el" is "model") or the multipart part name. */
export type FieldRules = ReadonlyMap<string, FieldRule>;

/** A member/part a rule changed. */
export interface TouchedField {
  name: string;
  action: 'remove' | 'replace';
  /** Original raw value bytes; from a whole-body edit without inPlace, a view of the input body. */
  value: Buffer;
}

/**
 * What the editors report per name: the first member/part of that name a rule changed, plus how many
 * were changed, so a body repeating a name 100,000 times costs one entry, not 100,000.
 */
export interface TouchedName extends TouchedField {
  /** How many members/parts of this name were changed (1 or more). */
  count: number;
}

/**
 * Why an editor stopped editing, for metric labels (the `reason` text says where and what):
 * `malformed` the body is not what its content type claims (or ended early); `too_deep` JSON nested
 * deeper than the editor follows; `held_too_large` a member/part that must be held back to decide on
 * it is larger than the hold cap.
 */
export type EditFailure = 'malformed' | 'too_deep' | 'held_too_large';

export type EditOutcome =
  | { kind: 'unchanged' } // well-formed, no rule changed anything: caller sends NO mutation
  | { kind: 'edited'; body: Buffer; touched: TouchedName[] }
  | { kind: 'invalid'; reason: string; failure: EditFailure }; // caller forwards the original bytes unchanged

/** Incremental editor: feed chunks split at ANY byte position. */
export interface StreamEditor {
  /** Bytes released now (possibly empty); everything not possibly part of a rule-matched member/part is released at once. */
  push(chunk: Buffer): Buffer;
  /** Flush at end of body; afterwards outcome is final. */
  end(): Buffer;
  /**
   * Stops editing before the body ends (a limit reached): returns what is held, and from then on push()
   * returns its chunk as it came, except that a separator left by a removed member is still dropped (at
   * most up to the next comma), so a well-formed body stays well-formed: the edit up to here and the rest
   * as it came. Keep pushing every later chunk through push(), then call end(). The outcome reports
   * what was done before the stop (`edited` or `unchanged`); nothing is held after it.
   */
  stop(): Buffer;
  readonly outcome: 'unchanged' | 'edited' | 'invalid';
  /** With outcome `invalid`: why, as a code and as one line of text (never body content). */
  readonly failure: EditFailure | undefined;
  readonly reason: string;
  /**
   * With outcome `invalid`: a change had already been made (and possibly released) when editing stopped,
   * so what went out is not the input byte for byte. Only a malformed body gets here (a body cut short
   * counts as malformed: to stop editing part-way, call stop(), not end()): once a change is made, the
   * hold cap and the depth limit no longer stop the edit (see heldBytes and stateBytes).
   */
  readonly editedBeforeFailure: boolean;
  readonly touched: readonly TouchedName[];
  /**
   * Body bytes currently held back. Before any change this stays within the editor's hold cap (going over
   * stops the edit); after a change it may grow past the cap, as stopping then would leave a half-edited
   * body: the caller's own limits (body size, memory budget) bound it then.
   */
  readonly heldBytes: number;
  /**
   * Memory the editor uses besides the held bytes: parser state (the JSON nesting stack, a multipart
   * header block being read), spare packing room, and the touched values it keeps (one per name). What
   * an editor costs is heldBytes + stateBytes.
   */
  readonly stateBytes: number;
  /**
   * The body's structure has ended (the JSON object closed, the multipart close delimiter seen) and it is
   * well-formed so far: whatever follows can only be trailing whitespace or the multipart epilogue.
   */
  readonly complete: boolean;
}

export interface WholeEditOptions {
  /**
   * Reuse the input buffer for the output: the edited body is a view of it and the input no longer holds
   * the original. Only for a caller that owns the buffer and will not read it again.
   */
  inPlace?: boolean;
}

/** One part of a multipart/form-data body, as listMultipartParts reads it. */
export interface MultipartPart {
  /** The form-data name; null when the part has no Content-Disposition: form-data with a name. */
  name: string | null;
  /** The Content-Disposition filename parameter, when present. */
  filename?: string;
  /** The part's Content-Type header value (whitespace trimmed), when present. */
  contentType?: string;
  /** The part's header block as UTF-8 text, lines separated by CRLF, without the blank line that ends it. */
  headers: string;
  /** The part's content, byte-exact. */
  content: Buffer;
}
