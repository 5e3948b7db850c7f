// Byte-exact removal/replacement of multipart/form-data parts (RFC 2046 §5.1.1, RFC 7578), whole
// or incremental. Structure comes only from the delimiters "\r\n--" + boundary (the first may open
// the body without the CRLF); content is never decoded, so binary images cross untouched.
//
// Part i spans from the "--" of its delimiter to the "--" of the next one, so removing it takes its
// delimiter line, headers, content and the CRLF that ends the content; what remains is again
// preamble, delimiters and parts, ending with the close delimiter and the epilogue.
//
// Incrementally, only these are held: the delimiter line and header block of a part being read
// (until its name is known), a possible delimiter prefix at a chunk's end, and the whole of a part
// whose name has a rule (until its closing delimiter).
import { EMPTY, describeByte } from './bytes.js';
import { ByteEditor, editWhole, effectiveAction, type StreamEditorOptions } from './editor.js';
import { parseHeaderValue, trimOws } from './params.js';
import type { EditOutcome, FieldRule, FieldRules, MultipartPart, StreamEditor, WholeEditOptions } from './types.js';

// RFC 2046 §5.1.1: bchars, 1..70 of them, not ending in a space.
const BOUNDARY = /^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$/;

/** busboy's limit for one part's header block (lib/types/multipart.js MAX_HEADER_SIZE). */
const MAX_HEADER_BYTES = 16 * 1024;

const SEARCH = 0; // looking for the next delimiter (preamble or part content)
const LINE = 1; // after "--boundary": "--", or transport padding and CRLF
const HEADERS = 2; // reading a part's header block
const EPILOGUE = 3; // after the close delimiter

// Where the bytes being searched belong.
const IN_PREAMBLE = 0;
const IN_PART = 1; // a part without a rule: streams through
const IN_MATCHED = 2; // a part with a rule: held until its end

const CR = 0x0d;
const LF = 0x0a;
const DASH = 0x2d;

/** The boundary parameter of a Content-Type, or null if absent, malformed, ambiguous or not RFC 2046. */
export function parseBoundary(contentType: string): string | null {
  const parsed = parseHeaderValue(contentType);
  if (!parsed) return null;
  let boundary: string | null = null;
  for (const [name, value] of parsed.params) {
    if (name !== 'boundary') continue;
    if (boundary !== null && boundary !== value) return null;
    boundary = value;
  }
  return boundary !== null && BOUNDARY.test(boundary) ? boundary : null;
}

class MultipartEditor extends ByteEditor {
  private readonly rules: FieldRules;
  private readonly matching: boolean;
  /** "\r\n--" + boundary. */
  private readonly delimiter: Buffer;

  private state = SEARCH;
  private where = IN_PREAMBLE;
  /** Bytes of the delimiter matched so far; the body starts as if after a CRLF. */
  private matched = 2;
  /** The "--boundary" of a possible delimiter at the end of a passing chunk is being held. */
  private tentative = false;
  /** Progress through the delimiter line: 0 start, 1 after "-", 2 in padding, 3 after CR. */
  private lineStep = 0;
  /** Bytes of "\r\n\r\n" matched in the header block (starts at 2: the delimiter line's CRLF). */
  private headerEnd = 0;
  private headerBytes = 0;
  /** A copy of the header block read so far (kept apart from the hold so it is checked even when nothing is held). */
  private header: Buffer = EMPTY;
  private contentOffset = 0; // held offset of a matched part's content
  private name = '';
  private rule: FieldRule | undefined;
  /** Reading, not editing: every part is held to its end and reported here (see listMultipartParts). */
  private readonly onPart: ((part: MultipartPart) => void) | undefined;
  private fields: PartFields = { name: null, headers: '' };

  constructor(boundary: string, rules: FieldRules, options: StreamEditorOptions | undefined, onPart?: (part: MultipartPart) => void) {
    super(options);
    this.rules = rules;
    this.onPart = onPart;
    this.matching = rules.size > 0 || onPart !== undefined;
    this.delimiter = Buffer.from(`\r\n--${boundary}`, 'latin1');
    if (!BOUNDARY.test(boundary)) this.fail('boundary is not a valid RFC 2046 boundary');
  }

  protected scan(buf: Buffer): void {
    const len = buf.length;
    let p = 0;
    while (p < len && !this.failed) {
      switch (this.state) {
        case SEARCH:
          p = this.search(buf, p);
          break;
        case LINE:
          this.delimiterLine(buf[p], p);
          p++;
          break;
        case HEADERS:
          p = this.headers(buf, p);
          break;
        case EPILOGUE:
          p = len;
          break;
      }
    }
    if (!this.failed && this.state === SEARCH && this.matched > 2 && this.where !== IN_MATCHED && !this.tentative && this.matching) {
      // The chunk ends inside "--boundary": the next part's delimiter may go with it.
      this.sink.hold(len - (this.matched - 2));
      this.tentative = true;
    }
  }

  protected structureEnded(): boolean {
    return this.state === EPILOGUE;
  }

  protected finish(): void {
    if (this.state === EPILOGUE) return;
    if (this.state === SEARCH && this.where === IN_PREAMBLE) return this.fail('no opening delimiter');
    if (this.state === HEADERS) return this.fail('body ends inside a part header block');
    this.fail('no close delimiter');
  }

  /** Looks for the delimiter from `p`; returns where scanning goes on. */
  private search(buf: Buffer, p: number): number {
    const delimiter = this.delimiter;
    const size = delimiter.length;
    const len = buf.length;
    if (this.matched > 0) {
      // Continue a match begun in an earlier chunk (or at the body's start).
      let k = this.matched;
      while (p < len && k < size && buf[p] === delimiter[k]) {
        p++;
        k++;
      }
      this.matched = k;
      if (k === size) {
        this.delimiterFound(p - size, p);
        return p;
      }
      if (p === len) return p;
      // Not a delimiter. The delimiter has a CR only at its start, so a new match can only begin at p.
      this.matched = 0;
      if (this.tentative) {
        this.tentative = false;
        this.sink.pass(p);
      }
    }
    const found = buf.indexOf(delimiter, p);
    if (found >= 0) {
      this.delimiterFound(found, found + size);
      return found + size;
    }
    const from = Math.max(p, len - size + 1);
    const cr = buf.subarray(from).lastIndexOf(CR);
    if (cr >= 0 && buf.compare(delimiter, 0, len - from - cr, from + cr, len) === 0) this.matched = len - from - cr;
    return len;
  }

  /** A delimiter at chunk positions [start, end) (start < 0 if it began in an earlier chunk). */
  private delimiterFound(start: number, end: number): void {
    const dashes = start + 2;
    if (this.where === IN_MATCHED) this.partDone(dashes, end);
    else if (!this.tentative && this.matching) this.sink.hold(dashes);
    this.tentative = false;
    this.where = IN_PART;
    this.matched = 0;
    this.state = LINE;
    this.lineStep = 0;
  }

  private delimiterLine(c: number, p: number): void {
    switch (this.lineStep) {
      case 0:
        if (c === DASH) this.lineStep = 1;
        else if (c === 0x20 || c === 0x09) this.lineStep = 2;
        else if (c === CR) this.lineStep = 3;
        else this.fail(`boundary followed by ${describeByte(c)} at byte ${this.offset + p}`);
        return;
      case 1:
        if (c !== DASH) return this.fail(`boundary followed by "-" and ${describeByte(c)} at byte ${this.offset + p}`);
        this.sink.pass(p + 1);
        this.state = EPILOGUE;
        return;
      case 2:
        if (c === CR) this.lineStep = 3;
        else if (c !== 0x20 && c !== 0x09) this.fail(`${describeByte(c)} in delimiter padding at byte ${this.offset + p}`);
        return;
      case 3:
        if (c !== LF) return this.fail(`delimiter line not ended by CRLF at byte ${this.offset + p}`);
        this.state = HEADERS;
        this.headerEnd = 2;
        this.headerBytes = 0;
        return;
    }
  }

  /** Reads header bytes until the blank line; returns where scanning goes on. */
  private headers(buf: Buffer, p: number): number {
    const len = buf.length;
    const start = p;
    // Like the hold cap, the limit applies until a change is made (then the edit must be finished).
    const stop = this.changed ? len : Math.min(len, p + MAX_HEADER_BYTES + 1 - this.headerBytes);
    let k = this.headerEnd;
    while (p < stop && k < 4) {
      const c = buf[p++];
      if (c === CR) k = k === 2 ? 3 : 1;
      else if (c === LF && (k === 1 || k === 3)) k++;
      else k = 0;
    }
    this.headerEnd = k;
    if (this.headerBytes + p - start > MAX_HEADER_BYTES && !this.changed) {
      this.fail(`part header block over ${MAX_HEADER_BYTES} bytes at byte ${this.offset + p}`);
      return len;
    }
    this.keepHeader(buf.subarray(start, p));
    if (k === 4) this.headersDone(p);
    return p;
  }

  /** Appends header bytes to the copy of the block (grown by doubling, so 1-byte chunks cost no more). */
  private keepHeader(bytes: Buffer): void {
    const need = this.headerBytes + bytes.length;
    if (need > this.header.length) {
      const grown = Buffer.allocUnsafe(Math.max(256, 2 * this.header.length, need));
      this.header.copy(grown, 0, 0, this.headerBytes);
      this.header = grown;
    }
    bytes.copy(this.header, this.headerBytes);
    this.headerBytes = need;
  }

  protected parserStateBytes(): number {
    return this.header.length;
  }

  private headersDone(end: number): void {
    this.state = SEARCH;
    this.matched = 0;
    const read = this.header.subarray(0, this.headerBytes);
    // The block without its final CRLF CRLF; empty when the delimiter line is followed by a blank line.
    const fields = partFields(read.subarray(0, Math.max(0, read.length - 4)));
    // A usual block fits the first allocation; a large one is not kept for the next part.
    if (this.header.length > 1024) this.header = EMPTY;
    if (fields instanceof Error) return this.fail(`${fields.message} in the part headers ending at byte ${this.offset + end}`);
    const name = fields.name;
    const rule = this.onPart !== undefined ? KEEP : name === null ? undefined : this.rules.get(name);
    if (rule === undefined) {
      if (this.matching) this.sink.pass(end);
      return;
    }
    this.where = IN_MATCHED;
    this.name = name ?? '';
    this.fields = fields;
    this.rule = rule;
    this.contentOffset = this.sink.heldOffset(end);
  }

  /** A matched part ends where the delimiter's "--" starts: apply its rule. */
  private partDone(dashes: number, end: number): void {
    if (!this.checkHeld(this.sink.heldOffset(end))) return;
    const dashOffset = this.sink.heldOffset(dashes);
    const held = this.sink.take(end);
    const content = held.subarray(this.contentOffset, dashOffset - 2);
    this.onPart?.({ ...this.fields, content });
    const change = effectiveAction(this.rule!(content), content);
    if (change === null) {
      this.sink.emit(held.subarray(0, dashOffset));
    } else {
      this.touch(this.name, change === 'remove' ? 'remove' : 'replace', content);
      if (change !== 'remove') {
        this.sink.emit(held.subarray(0, this.contentOffset));
        this.sink.emit(change);
        this.sink.emit(held.subarray(dashOffset - 2, dashOffset));
      }
    }
    // The next delimiter is held as the start of whatever follows.
    this.sink.put(held.subarray(dashOffset));
    this.rule = undefined;
  }
}

const KEEP: FieldRule = () => 'keep';

/** What a part's header block says: its form-data name (null when it has none, or its Content-Disposition
 * is not form-data or cannot be parsed), filename, Content-Type and the block itself. */
type PartFields = Omit<MultipartPart, 'content'>;

/** The fields of a part from its header block (without the blank line), an Error when it is not headers. */
function partFields(block: Buffer): PartFields | Error {
  // UTF-8, as browsers send non-ASCII names raw (RFC 7578 §5.1.3).
  const headers = block.toString('utf8');
  if (block.length === 0) return { name: null, headers };
  const lines = headers.split('\r\n');
  const fields: string[] = [];
  for (const line of lines) {
    if (/[\x00-\x08\x0a-\x1f\x7f]/.test(line)) return new Error('control character in part headers');
    if (line.startsWith(' ') || line.startsWith('\t')) {
      // obs-fold (RFC 5322 §2.2.3): a continuation line.
      if (fields.length === 0) return new Error('part headers start with a continuation line');
      fields[fields.length - 1] += line;
    } else {
      fields.push(line);
    }
  }
  let disposition: string | undefined;
  let contentType: string | undefined;
  for (const field of fields) {
    const header = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*:(.*)$/s.exec(field);
    if (!header) return new Error('malformed part header line');
    const fieldName = header[1].toLowerCase();
    if (disposition === undefined && fieldName === 'content-disposition') disposition = header[2];
    if (contentType === undefined && fieldName === 'content-type') contentType = trimOws(header[2]);
  }
  const result: PartFields = { name: null, headers };
  if (contentType !== undefined) result.contentType = contentType;
  const parsed = disposition === undefined ? null : parseHeaderValue(disposition);
  if (!parsed || parsed.type !== 'form-data') return result;
  result.name = parsed.params.find(([param]) => param === 'name')?.[1] ?? null;
  const filename = parsed.params.find(([param]) => param === 'filename')?.[1];
  if (filename !== undefined) result.filename = filename;
  return result;
}

/**
 * The parts of a whole multipart/form-data body, read by the same scanner the editor uses (so a body
 * this reads is exactly a body the editor can edit), or undefined when it is malformed (no close
 * delimiter, a broken delimiter line, header block or part headers). `content` is a view of `body`.
 */
export function listMultipartParts(body: Buffer, boundary: string): MultipartPart[] | undefined {
  const parts: MultipartPart[] = [];
  const reader = new MultipartEditor(boundary, new Map(), { maxHeldBytes: Infinity }, (part) => parts.push(part));
  reader.editAll(body);
  return reader.outcome === 'invalid' ? undefined : parts;
}

/** Applies `rules` to the parts of a multipart/form-data body, matched by their form-data name. */
export function editMultipart(body: Buffer, boundary: string, rules: FieldRules, options: WholeEditOptions = {}): EditOutcome {
  return editWhole(new MultipartEditor(boundary, rules, { maxHeldBytes: Infinity }), body, options.inPlace);
}

/** The incremental form of editMultipart: same bytes for every way of cutting the body into chunks. */
export function createMultipartEditor(boundary: string, rules: FieldRules, opts?: { maxHeldBytes?: number }): StreamEditor {
  return new MultipartEditor(boundary, rules, opts);
}
