export type MemberAction = 'keep' | 'remove' | { replace: Buffer }; // replace = new raw bytes for the value

/** Decides what to do with a top-level JSON member / multipart part, given its raw value bytes. */
export type FieldRule = (rawValue: Buffer) => MemberAction;

/** Keyed by the DECODED JSON key (so "mo\u0064el" is "model") or the multipart part name. */
export type FieldRules = ReadonlyMap<string, FieldRule>;

export interface TouchedField {
  name: string;
  action: 'remove' | 'replace';
  /** Original raw value bytes; may share memory with the input buffers. */
  value: Buffer;
}

export type EditOutcome =
  | { kind: 'unchanged' } // well-formed, no rule changed anything: caller sends NO mutation
  | { kind: 'edited'; body: Buffer; touched: TouchedField[] }
  | { kind: 'invalid'; reason: string }; // not what it claims: caller forwards the original bytes unchanged

/** Incremental editor: feed chunks split at ANY byte position. */
export interface StreamEditor {
  /** Bytes released now (possibly empty); everything not possibly part of a rule-matched member/part is released at once. */
  push(chunk: Buffer): Buffer;
  /** Flush at end of body; afterwards outcome is final. */
  end(): Buffer;
  readonly outcome: 'unchanged' | 'edited' | 'invalid';
  readonly touched: readonly TouchedField[];
  /** Bytes currently held back (for memory accounting). */
  readonly heldBytes: number;
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
