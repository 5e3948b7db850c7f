// Byte-exact editing of the top-level members of a JSON object (RFC 8259), whole or incremental.
//
// Output layout: the input without the removed members, where a removed member goes with the
// separator before it when a kept member precedes it (whitespace, comma, whitespace: "A , M" -> "A"),
// and otherwise with everything after it up to the next key or the closing "}" ("{ M , B }" -> "{ B }",
// "{ M }" -> "{ }"). So each removal takes exactly one comma, or none when no member is left. Every other
// byte is copied: key order, whitespace, number spelling, escapes.
//
// Incrementally, a top-level member is held from its separator (or key) while its key is read;
// once the key is known not to match a rule it is released and the member streams through. Only a
// matched member is held to its end. The whitespace after a kept top-level value waits for the next
// "," or "}" because it belongs to a separator that may go; after a removed member with nothing kept
// before it, what follows up to the next key is dropped as it comes, never held. So a failure (the hold
// cap, before any change) releases what is held with the rest of the body and the output is still the
// input with complete members removed.
import { EMPTY, Utf8Stream, describeByte, hasControlByte } from './bytes.js';
import { ByteEditor, editWhole, effectiveAction, type StreamEditorOptions } from './editor.js';
import type { EditOutcome, FieldRule, FieldRules, StreamEditor, WholeEditOptions } from './types.js';

// Parser states. T_* are top-level positions, V_* positions inside a nested value.
const T_BOM = 0; // at the start: an optional UTF-8 byte order mark
const T_BEFORE = 1; // whitespace before the top-level "{"
const T_FIRST = 2; // after "{": whitespace, "}" or the first key
const T_COLON = 3; // after a top-level key
const T_VALUE = 4; // after a top-level ":"
const T_AFTER_VALUE = 5; // after a top-level value: "," or "}"
const T_NEXT = 6; // after a top-level ",": a key
const T_END = 7; // after the closing "}": whitespace only
const V_VALUE = 10;
const V_OBJ_FIRST = 11;
const V_OBJ_KEY = 12;
const V_OBJ_COLON = 13;
const V_ARR_FIRST = 14;
const V_AFTER = 15;
const S_STRING = 20;
const S_ESCAPE = 21;
const S_UNICODE = 22;
const N_MINUS = 30;
const N_ZERO = 31;
const N_INT = 32;
const N_DOT = 33;
const N_FRAC = 34;
const N_E = 35;
const N_E_SIGN = 36;
const N_EXP = 37;
const L_LITERAL = 40;

// What the string being read is.
const STR_TOP_KEY = 0;
const STR_KEY = 1;
const STR_VALUE = 2;

// Fate of the top-level member being read.
const M_NONE = 0;
const M_KEY = 1; // key still being read (held)
const M_KEPT = 2; // streams through
const M_MATCHED = 3; // a rule decides at the value's end (held)

const OBJECT = 0;
const ARRAY = 1;

/**
 * How deep arrays and objects may nest inside the top-level object before the editor stops editing
 * (failure `too_deep`; the body goes on byte for byte). Request bodies nest a few levels, and common
 * JSON readers refuse much less (.NET's System.Text.Json stops at 64 levels by default), so nothing an
 * upstream accepts is lost, while a body of megabytes of "[" costs a fixed 125-byte nesting stack (one bit
 * per level) instead of memory growing with the body. Once a change is made the edit must be finished,
 * so the stack grows past this, still one bit per level, counted in stateBytes.
 */
export const MAX_JSON_DEPTH = 1000;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const BOM = [0xef, 0xbb, 0xbf];
const TRUE = Buffer.from('true');
const FALSE = Buffer.from('false');
const NULL = Buffer.from('null');

function isWhitespace(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

function isHexDigit(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || ((c | 0x20) >= 0x61 && (c | 0x20) <= 0x66);
}

class JsonEditor extends ByteEditor {
  private readonly rules: FieldRules;
  private readonly matching: boolean;
  /** Longest raw key (quotes included) that can decode to a rule name: 6 bytes per UTF-16 unit (\uXXXX). */
  private readonly keyLimit: number;
  private readonly utf8 = new Utf8Stream();

  private state = T_BOM;
  private bomIndex = 0;
  /** Bit i: whether the container at nesting level i is an array (1) or an object (0). */
  private nesting = new Uint8Array(Math.ceil(MAX_JSON_DEPTH / 8));
  private depth = 0;
  private stringKind = STR_VALUE;
  private hexLeft = 0;
  private literal: Buffer = EMPTY;
  private literalIndex = 0;

  private member = M_NONE;
  private anyKept = false;
  private key = '';
  private rule: FieldRule | undefined;
  private keyOffset = 0; // held offset of the key's opening quote
  private valueOffset = 0; // held offset of the first value byte

  // Next quote / backslash in the current chunk at or after *From (-1: none).
  private quoteAt = -1;
  private quoteFrom = Infinity;
  private backslashAt = -1;
  private backslashFrom = Infinity;

  constructor(rules: FieldRules, options: StreamEditorOptions | undefined) {
    super(options);
    this.rules = rules;
    this.matching = rules.size > 0;
    let longest = 0;
    for (const name of rules.keys()) longest = Math.max(longest, name.length);
    this.keyLimit = 2 + 6 * longest;
  }

  protected scan(buf: Buffer): void {
    if (!this.utf8.push(buf)) return this.fail(`invalid UTF-8 in bytes ${this.offset}..${this.offset + buf.length}`);
    this.quoteFrom = Infinity;
    this.backslashFrom = Infinity;
    const len = buf.length;
    let p = 0;
    while (p < len && !this.failed) {
      const c = buf[p];
      switch (this.state) {
        case S_STRING: {
          const quote = this.nextQuote(buf, p);
          const backslash = this.nextBackslash(buf, p);
          let stop = quote < 0 ? len : quote;
          if (backslash >= 0 && backslash < stop) stop = backslash;
          if (hasControlByte(buf, p, stop)) return this.fail(`raw control character in a string in bytes ${this.at(p)}..${this.at(stop)}`);
          if (stop === len) {
            p = len;
          } else if (stop === backslash) {
            p = stop + 1;
            this.state = S_ESCAPE;
          } else {
            p = stop + 1;
            this.stringDone(p);
          }
          break;
        }
        case S_ESCAPE:
          if (c === 0x75 /* u */) {
            this.state = S_UNICODE;
            this.hexLeft = 4;
          } else if (c === QUOTE || c === BACKSLASH || c === 0x2f || c === 0x62 || c === 0x66 || c === 0x6e || c === 0x72 || c === 0x74) {
            this.state = S_STRING;
          } else {
            return this.unexpected(c, p, 'in an escape sequence');
          }
          p++;
          break;
        case S_UNICODE:
          if (!isHexDigit(c)) return this.unexpected(c, p, 'in a \\u escape');
          if (--this.hexLeft === 0) this.state = S_STRING;
          p++;
          break;

        case N_MINUS:
          if (c === 0x30) this.state = N_ZERO;
          else if (isDigit(c)) this.state = N_INT;
          else return this.unexpected(c, p, 'after "-"');
          p++;
          break;
        case N_INT:
        case N_FRAC:
        case N_EXP:
          while (p < len && isDigit(buf[p])) p++;
          if (p < len && this.numberGoesOn(buf[p], p)) p++;
          break;
        case N_ZERO:
          if (this.numberGoesOn(c, p)) p++;
          break;
        case N_DOT:
          if (!isDigit(c)) return this.unexpected(c, p, 'after "." in a number');
          this.state = N_FRAC;
          p++;
          break;
        case N_E:
          if (c === 0x2b || c === 0x2d) this.state = N_E_SIGN;
          else if (isDigit(c)) this.state = N_EXP;
          else return this.unexpected(c, p, 'in an exponent');
          p++;
          break;
        case N_E_SIGN:
          if (!isDigit(c)) return this.unexpected(c, p, 'in an exponent');
          this.state = N_EXP;
          p++;
          break;
        case L_LITERAL:
          if (c !== this.literal[this.literalIndex]) return this.unexpected(c, p, `in "${this.literal.toString()}"`);
          p++;
          if (++this.literalIndex === this.literal.length) this.valueDone(p);
          break;

        case T_BOM:
          if (this.bomIndex === 0 && c !== BOM[0]) {
            this.state = T_BEFORE;
            break;
          }
          if (c !== BOM[this.bomIndex]) return this.unexpected(c, p, 'in a byte order mark');
          if (++this.bomIndex === BOM.length) this.state = T_BEFORE;
          p++;
          break;

        default:
          if (!isWhitespace(c)) this.structural(c, p);
          p++;
      }
    }
    // A key too long to be a rule name cannot match: stop holding it even if it goes on.
    if (!this.failed && this.member === M_KEY && this.sink.heldOffset(len) - this.keyOffset > this.keyLimit) this.keepMember(len);
  }

  protected structureEnded(): boolean {
    return this.state === T_END && this.utf8.end();
  }

  protected finish(): void {
    if (!this.utf8.end()) return this.fail('body ends inside a UTF-8 sequence');
    if (this.state !== T_END) this.fail(`body ends before the JSON object does (${this.offset} bytes)`);
  }

  /** A non-whitespace byte in one of the T_* / V_* states; it is consumed. */
  private structural(c: number, p: number): void {
    switch (this.state) {
      case T_BEFORE:
        if (c !== 0x7b) return this.unexpected(c, p, 'where the body should start with "{"');
        this.state = T_FIRST;
        return;
      case T_FIRST:
        if (c === 0x7d) {
          this.state = T_END;
          return;
        }
        if (c !== QUOTE) return this.unexpected(c, p, 'where a key or "}" should follow "{"');
        return this.keyStart(p);
      case T_NEXT:
        if (c !== QUOTE) return this.unexpected(c, p, 'where a key should follow ","');
        return this.keyStart(p);
      case T_COLON:
        if (c !== 0x3a) return this.unexpected(c, p, 'where ":" should follow a key');
        this.state = T_VALUE;
        return;
      case T_VALUE:
        if (this.member === M_MATCHED) this.valueOffset = this.sink.heldOffset(p);
        return this.valueStart(c, p);
      case T_AFTER_VALUE:
        if (c === 0x2c) {
          // With nothing kept yet, this separator can never be emitted (see the layout above).
          if (this.matching && !this.anyKept) this.sink.discard(p);
          this.state = T_NEXT;
          return;
        }
        if (c !== 0x7d) return this.unexpected(c, p, 'where "," or "}" should follow a member');
        if (this.matching) this.sink.pass(p);
        this.state = T_END;
        return;
      case T_END:
        return this.unexpected(c, p, 'after the JSON object');

      case V_VALUE:
        return this.valueStart(c, p);
      case V_OBJ_FIRST:
        if (c === 0x7d) return this.close(p);
        if (c !== QUOTE) return this.unexpected(c, p, 'where a key or "}" should follow "{"');
        return this.stringStart(STR_KEY);
      case V_OBJ_KEY:
        if (c !== QUOTE) return this.unexpected(c, p, 'where a key should follow ","');
        return this.stringStart(STR_KEY);
      case V_OBJ_COLON:
        if (c !== 0x3a) return this.unexpected(c, p, 'where ":" should follow a key');
        this.state = V_VALUE;
        return;
      case V_ARR_FIRST:
        if (c === 0x5d) return this.close(p);
        return this.valueStart(c, p);
      case V_AFTER: {
        const inside = this.inside();
        if (c === 0x2c) this.state = inside === OBJECT ? V_OBJ_KEY : V_VALUE;
        else if (c === (inside === OBJECT ? 0x7d : 0x5d)) this.close(p);
        else this.unexpected(c, p, inside === OBJECT ? 'where "," or "}" should follow a value' : 'where "," or "]" should follow a value');
        return;
      }
    }
  }

  /** The first byte of a value. */
  private valueStart(c: number, p: number): void {
    switch (c) {
      case 0x7b:
        if (this.open(OBJECT, p)) this.state = V_OBJ_FIRST;
        return;
      case 0x5b:
        if (this.open(ARRAY, p)) this.state = V_ARR_FIRST;
        return;
      case QUOTE:
        return this.stringStart(STR_VALUE);
      case 0x2d:
        this.state = N_MINUS;
        return;
      case 0x30:
        this.state = N_ZERO;
        return;
      case 0x74:
        return this.literalStart(TRUE);
      case 0x66:
        return this.literalStart(FALSE);
      case 0x6e:
        return this.literalStart(NULL);
      default:
        if (isDigit(c)) {
          this.state = N_INT;
          return;
        }
        return this.unexpected(c, p, 'where a value should start');
    }
  }

  private literalStart(literal: Buffer): void {
    this.literal = literal;
    this.literalIndex = 1;
    this.state = L_LITERAL;
  }

  /** At a non-digit byte after a number's digits: true if it continues the number (and is consumed),
   * false if the number ended just before it (the byte is then read again in the state after the value). */
  private numberGoesOn(c: number, p: number): boolean {
    if (c === 0x2e && (this.state === N_ZERO || this.state === N_INT)) this.state = N_DOT;
    else if ((c === 0x65 || c === 0x45) && this.state !== N_EXP) this.state = N_E;
    else {
      this.valueDone(p);
      return false;
    }
    return true;
  }

  private stringStart(kind: number): void {
    this.stringKind = kind;
    this.state = S_STRING;
  }

  private stringDone(end: number): void {
    if (this.stringKind === STR_VALUE) return this.valueDone(end);
    if (this.stringKind === STR_KEY) {
      this.state = V_OBJ_COLON;
      return;
    }
    this.state = T_COLON;
    if (this.member === M_KEY) this.keyDone(end);
  }

  /** Enters an array or object; false when that goes deeper than the editor follows (it failed). */
  private open(kind: number, p: number): boolean {
    const depth = this.depth;
    if (depth >= MAX_JSON_DEPTH && !this.changed) {
      this.fail(`JSON nested deeper than ${MAX_JSON_DEPTH} levels at byte ${this.at(p)}`, 'too_deep');
      return false;
    }
    const byte = depth >> 3;
    if (byte >= this.nesting.length) {
      const grown = new Uint8Array(2 * this.nesting.length);
      grown.set(this.nesting);
      this.nesting = grown;
    }
    const bit = 1 << (depth & 7);
    this.nesting[byte] = kind === ARRAY ? this.nesting[byte] | bit : this.nesting[byte] & ~bit;
    this.depth = depth + 1;
    return true;
  }

  /** OBJECT or ARRAY: the innermost open container. */
  private inside(): number {
    const level = this.depth - 1;
    return (this.nesting[level >> 3] >> (level & 7)) & 1;
  }

  protected parserStateBytes(): number {
    return this.nesting.length;
  }

  /** Stopped right after a removed member with nothing kept before it: its comma must still go. */
  private dropToComma = false;

  protected override stopInside(): boolean {
    this.dropToComma = this.state === T_AFTER_VALUE && this.matching && !this.anyKept;
    return this.dropToComma;
  }

  protected override scanStopped(buf: Buffer): void {
    if (!this.dropToComma) return;
    for (let p = 0; p < buf.length; p++) {
      const c = buf[p];
      if (isWhitespace(c)) continue;
      this.dropToComma = false;
      return this.sink.pass(c === 0x2c ? p + 1 : p);
    }
  }

  private close(p: number): void {
    this.depth--;
    this.valueDone(p + 1);
  }

  private valueDone(end: number): void {
    if (this.depth > 0) {
      this.state = V_AFTER;
      return;
    }
    this.state = T_AFTER_VALUE;
    if (this.member === M_MATCHED) this.decide(end);
    // The whitespace after a value belongs to the separator that may go, or to the closing part.
    else if (this.matching) this.sink.hold(end);
    this.member = M_NONE;
  }

  private keyStart(p: number): void {
    this.stringStart(STR_TOP_KEY);
    if (!this.matching) {
      this.member = M_KEPT;
      return;
    }
    this.member = M_KEY;
    this.sink.hold(p);
    this.keyOffset = this.sink.heldOffset(p);
  }

  private keyDone(end: number): void {
    if (this.sink.heldOffset(end) - this.keyOffset > this.keyLimit) return this.keepMember(end);
    const raw = this.sink.peek(end).subarray(this.keyOffset);
    // The key was validated above, so JSON.parse decodes it exactly as a JSON reader would.
    const key = JSON.parse(raw.toString('utf8')) as string;
    const rule = this.rules.get(key);
    if (!rule) return this.keepMember(end);
    this.member = M_MATCHED;
    this.key = key;
    this.rule = rule;
  }

  private keepMember(at: number): void {
    this.sink.pass(at);
    this.member = M_KEPT;
    this.anyKept = true;
  }

  /** At the end of a matched member's value: apply its rule to the held bytes. */
  private decide(end: number): void {
    if (!this.checkHeld(this.sink.heldOffset(end))) return;
    const held = this.sink.take(end);
    const value = held.subarray(this.valueOffset);
    const change = effectiveAction(this.rule!(value), value);
    this.rule = undefined;
    if (change === 'remove') {
      this.touch(this.key, 'remove', value);
      // With nothing kept before it, what follows up to the next key (or "}") goes too (see the layout).
      if (!this.anyKept) return this.sink.discard(end);
    } else if (change === null) {
      this.sink.emit(held);
      this.anyKept = true;
    } else {
      this.touch(this.key, 'replace', value);
      this.sink.emit(held.subarray(0, this.valueOffset));
      this.sink.emit(change);
      this.anyKept = true;
    }
    this.sink.hold(end);
  }

  private nextQuote(buf: Buffer, p: number): number {
    if (p < this.quoteFrom || (this.quoteAt >= 0 && this.quoteAt < p)) {
      this.quoteAt = buf.indexOf(QUOTE, p);
      this.quoteFrom = p;
    }
    return this.quoteAt;
  }

  private nextBackslash(buf: Buffer, p: number): number {
    if (p < this.backslashFrom || (this.backslashAt >= 0 && this.backslashAt < p)) {
      this.backslashAt = buf.indexOf(BACKSLASH, p);
      this.backslashFrom = p;
    }
    return this.backslashAt;
  }

  private at(p: number): number {
    return this.offset + p;
  }

  private unexpected(c: number, p: number, where: string): void {
    this.fail(`unexpected ${describeByte(c)} at byte ${this.at(p)} ${where}`);
  }
}

/**
 * Applies `rules` to the top-level members of a JSON object body. With `inPlace` (for a caller that owns
 * `body` and will not read it again) an edited body is returned as a view of `body`, rewritten in place.
 */
export function editJson(body: Buffer, rules: FieldRules, options: WholeEditOptions = {}): EditOutcome {
  return editWhole(new JsonEditor(rules, { maxHeldBytes: Infinity }), body, options.inPlace);
}

/** The incremental form of editJson: same bytes for every way of cutting the body into chunks. */
export function createJsonEditor(rules: FieldRules, opts?: { maxHeldBytes?: number }): StreamEditor {
  return new JsonEditor(rules, opts);
}
