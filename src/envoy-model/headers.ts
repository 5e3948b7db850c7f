// Envoy's header map and the ext_proc header-mutation rules, as the emulation applies them.
// What Envoy sends and accepts: docs/envoy-ext-proc.md#headers-envoy-sends, #header-mutations and #mutation-rules (the
// mutation-rule checker). Source: envoy mutation_utils.cc (applyHeaderMutations, headersToProto) and
// common/mutation_rules/mutation_rules.cc (Checker::check / isAllowed / isValidValue).

/** A header list as tests write it: lower-case names, duplicates allowed, order kept. */
export type HeaderList = Array<[string, string]>;

interface Entry {
  key: string;
  value: Buffer;
}

// Envoy keeps some headers "inline" (O(1) slots). addCopy() on an inline header that already exists
// joins the values with ',' instead of adding a second entry (docs/envoy-ext-proc.md#header-mutations, `append: true`). The list is the
// built-in request/response inline set of Envoy's headers.h, approximately (bootstrap `inline_headers`
// and extensions can register more).
const INLINE_HEADERS = new Set([
  ':authority', ':path', ':method', ':scheme', ':protocol', ':status',
  'content-length', 'content-type', 'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding',
  'upgrade', 'via', 'te', 'expect', 'user-agent', 'date', 'location', 'server', 'early-data',
  'x-request-id', 'x-client-trace-id', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host',
  'x-forwarded-client-cert', 'grpc-timeout', 'x-envoy-internal', 'x-envoy-original-path',
  'x-envoy-retry-on', 'x-envoy-max-retries', 'x-envoy-upstream-rq-timeout-ms',
  'x-envoy-expected-rq-timeout-ms', 'x-envoy-attempt-count',
]);

/** Envoy's HeaderMapImpl semantics that matter to ext_proc. Values are bytes (raw_value). */
export class HeaderMap {
  private entries: Entry[] = [];

  static fromList(list: HeaderList): HeaderMap {
    const map = new HeaderMap();
    for (const [key, value] of list) map.addRaw(key.toLowerCase(), Buffer.from(value, 'utf8'));
    return map;
  }

  clone(): HeaderMap {
    const copy = new HeaderMap();
    copy.entries = this.entries.map((e) => ({ key: e.key, value: Buffer.from(e.value) }));
    return copy;
  }

  /** Appends an entry as a codec would (no inline joining); pseudo-headers stay in front. */
  addRaw(key: string, value: Buffer): void {
    if (key.startsWith(':')) {
      const firstRegular = this.entries.findIndex((e) => !e.key.startsWith(':'));
      if (firstRegular >= 0) {
        this.entries.splice(firstRegular, 0, { key, value });
        return;
      }
    }
    this.entries.push({ key, value });
  }

  get(key: string): Buffer[] {
    return this.entries.filter((e) => e.key === key).map((e) => e.value);
  }

  getString(key: string): string | undefined {
    const first = this.entries.find((e) => e.key === key);
    return first?.value.toString('utf8');
  }

  has(key: string): boolean {
    return this.entries.some((e) => e.key === key);
  }

  remove(key: string): void {
    this.entries = this.entries.filter((e) => e.key !== key);
  }

  /** setCopy(): every existing entry of the name is removed, then one entry added. */
  setCopy(key: string, value: Buffer): void {
    this.remove(key);
    this.addRaw(key, value);
  }

  /** addCopy(): inline headers get the value comma-joined; others get a duplicate entry. */
  addCopy(key: string, value: Buffer): void {
    const existing = this.entries.find((e) => e.key === key);
    if (existing && INLINE_HEADERS.has(key)) {
      existing.value = existing.value.length === 0 ? Buffer.from(value) : Buffer.concat([existing.value, Buffer.from(','), value]);
      return;
    }
    this.addRaw(key, value);
  }

  size(): number {
    return this.entries.length;
  }

  /** HeaderMap::byteSize(): sum of key and value lengths. */
  byteSize(): number {
    return this.entries.reduce((n, e) => n + Buffer.byteLength(e.key) + e.value.length, 0);
  }

  list(): ReadonlyArray<Readonly<Entry>> {
    return this.entries;
  }

  toList(): HeaderList {
    return this.entries.map((e) => [e.key, e.value.toString('utf8')]);
  }
}

// ---- validity checks (Envoy HeaderUtility) ------------------------------------------------------

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const LOWER_TOKEN = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/;

/**
 * HeaderUtility::headerNameIsValid: pseudo-headers use HTTP/2 rules (lower-case token after ':'),
 * other names HTTP/1 token rules (upper case allowed; the name is lower-cased afterwards).
 * Envoy's loop accepts an empty non-pseudo name; the emulation rejects it instead of forwarding a
 * nameless header (UNVERIFIED corner).
 */
export function headerNameIsValid(name: string): boolean {
  if (name.startsWith(':')) return LOWER_TOKEN.test(name.slice(1));
  return TOKEN.test(name);
}

/** HeaderUtility::headerValueIsValid (oghttp2 rules, obs-text allowed): HTAB, 0x20-0x7E, 0x80-0xFF. */
export function headerValueIsValid(value: Buffer): boolean {
  for (const byte of value) {
    if (byte === 0x09 || (byte >= 0x20 && byte !== 0x7f)) continue;
    return false;
  }
  return true;
}

function authorityIsValid(value: Buffer): boolean {
  return /^[A-Za-z0-9\-._~!$&'()*+,;=:@[\]%]+$/.test(value.toString('latin1'));
}

function schemeIsValid(value: Buffer): boolean {
  const scheme = value.toString('latin1').toLowerCase();
  return scheme === 'http' || scheme === 'https';
}

// ---- mutation rules (docs/envoy-ext-proc.md#mutation-rules) -------------------------------------

export interface MutationRules {
  allowAllRouting?: boolean;
  allowEnvoy?: boolean;
  disallowSystem?: boolean;
  disallowAll?: boolean;
  disallowIsError?: boolean;
  /** RE2 full match in Envoy; a string is anchored here, a RegExp is used as given. */
  allowExpression?: string | RegExp;
  disallowExpression?: string | RegExp;
}

export type CheckOperation = 'SET' | 'APPEND' | 'REMOVE';
export type CheckResult = 'OK' | 'IGNORE' | 'FAIL';

function toRegExp(expr: string | RegExp | undefined): RegExp | undefined {
  if (expr === undefined) return undefined;
  return typeof expr === 'string' ? new RegExp(`^(?:${expr})$`) : expr;
}

/** Filters::Common::MutationRules::Checker. */
export class MutationChecker {
  private readonly allow?: RegExp;
  private readonly disallow?: RegExp;

  constructor(private readonly rules: MutationRules = {}) {
    this.allow = toRegExp(rules.allowExpression);
    this.disallow = toRegExp(rules.disallowExpression);
  }

  check(op: CheckOperation, name: string, value: Buffer): CheckResult {
    return this.verdict(op, name, value).result;
  }

  /** The result and, when refused, why (in words a user can act on). */
  verdict(op: CheckOperation, name: string, value: Buffer): { result: CheckResult; reason?: string } {
    const reason = this.refusal(op, name) ?? (op === 'REMOVE' ? undefined : this.invalidValue(name, value));
    if (reason === undefined) return { result: 'OK' };
    return { result: this.rules.disallowIsError ? 'FAIL' : 'IGNORE', reason };
  }

  private refusal(op: CheckOperation, name: string): string | undefined {
    // 1. Removing ':'-prefixed headers or host is never allowed (HeaderUtility::isModifiableHeader).
    if (op === 'REMOVE' && (name.startsWith(':') || name === 'host')) return 'Envoy never removes pseudo-headers or host';
    if (this.disallow?.test(name)) return 'matches disallow_expression of the mutation rules'; // 2.
    if (this.allow?.test(name)) return undefined; // 3.
    if (this.rules.disallowAll) return 'the mutation rules set disallow_all'; // 4.
    // 5. Routing headers.
    if (!this.rules.allowAllRouting && ['host', ':authority', ':method', ':scheme'].includes(name)) {
      return "Envoy's default mutation rules do not let ext_proc change host, :authority, :method or :scheme";
    }
    // 6. Pseudo-headers never take a second value; disallow_system refuses them altogether.
    if (name.startsWith(':') && op === 'APPEND') return 'a pseudo-header cannot take a second value';
    if (name.startsWith(':') && this.rules.disallowSystem) return 'the mutation rules set disallow_system';
    // 7. The x-envoy prefix.
    if (!this.rules.allowEnvoy && name.startsWith('x-envoy')) return "Envoy's default mutation rules protect x-envoy-* headers";
    return undefined;
  }

  private invalidValue(name: string, value: Buffer): string | undefined {
    if (!name.startsWith(':') && !headerValueIsValid(value)) return 'the value has control characters';
    if ((name === 'host' || name === ':authority') && !authorityIsValid(value)) return 'not a valid authority';
    if (name === ':scheme' && !schemeIsValid(value)) return 'the scheme must be http or https';
    if (name === ':status') {
      const text = value.toString('latin1');
      if (!/^\d+$/.test(text) || Number(text) < 200) return 'not a final status code';
    }
    return undefined;
  }
}

// ---- applying a HeaderMutation (docs/envoy-ext-proc.md#header-mutations) ------------------------

/** A decoded config.core.v3.HeaderValueOption (proto-loader, keepCase, defaults). */
export interface WireHeaderValueOption {
  header?: { key?: string; value?: string; raw_value?: Buffer | null } | null;
  append?: { value?: boolean } | null;
  append_action?: unknown;
  keep_empty_value?: boolean;
}

export interface WireHeaderMutation {
  set_headers?: WireHeaderValueOption[] | null;
  remove_headers?: string[] | null;
}

export interface MutationContext {
  checker: MutationChecker;
  /** CONTINUE_AND_REPLACE: `:method` may be set regardless of the rules. */
  replacingMessage: boolean;
  /** shouldRemoveContentLength() of the current mode: `content-length` in set_headers is skipped. */
  removeContentLength: boolean;
  /** Envoy >= 1.27 reads raw_value (>= 1.32 only raw_value); older Envoy read `value`. */
  rawValue: boolean;
  maxHeadersCount: number;
  maxHeadersKb: number;
  onRejected(): void;
  /** Told about every set and remove, applied or not (explain reports them). */
  observe?(entry: MutationEntry): void;
}

/** One set or remove of a header mutation as Envoy treated it. */
export interface MutationEntry {
  action: 'set' | 'remove';
  name: string;
  value?: string;
  applied: boolean;
  /** Why it was not applied. */
  ignored?: string;
}

export type MutationResult = { ok: true } | { ok: false; error: string };

/** MutationUtils::applyHeaderMutations, step by step. Errors become a local reply (docs/envoy-ext-proc.md#failures). */
export function applyHeaderMutation(mutation: WireHeaderMutation, headers: HeaderMap, ctx: MutationContext): MutationResult {
  const removes = mutation.remove_headers ?? [];
  const sets = mutation.set_headers ?? [];
  // responseHeaderSizeCheck: more entries than the HCM header-count limit is an error.
  if (removes.length > ctx.maxHeadersCount || sets.length > ctx.maxHeadersCount) {
    ctx.onRejected();
    return { ok: false, error: `Header mutation remove header count ${removes.length} or set header count ${sets.length} exceed the HCM header count limit ${ctx.maxHeadersCount}` };
  }

  // All removes first.
  for (const raw of removes) {
    if (!headerNameIsValid(raw)) {
      ctx.onRejected();
      return { ok: false, error: 'Invalid character in remove_headers mutation.' };
    }
    const name = raw.toLowerCase();
    const { result, reason } = ctx.checker.verdict('REMOVE', name, Buffer.alloc(0));
    ctx.observe?.({ action: 'remove', name, applied: result === 'OK', ...(reason ? { ignored: reason } : {}) });
    if (result === 'OK') headers.remove(name);
    else {
      ctx.onRejected();
      if (result === 'FAIL') return { ok: false, error: `Invalid attempt to remove ${name}` };
    }
  }

  // Then sets, in list order.
  for (const option of sets) {
    if (!option.header) continue;
    const key = option.header.key ?? '';
    // content-length is silently skipped when the mode makes Envoy remove it (docs/envoy-ext-proc.md#content-length).
    if (ctx.removeContentLength && key.toLowerCase() === 'content-length') {
      ctx.observe?.({ action: 'set', name: 'content-length', value: (option.header.raw_value ?? Buffer.alloc(0)).toString('latin1'), applied: false, ignored: 'Envoy removes content-length in this body mode' });
      continue;
    }
    const value = option.header.value ?? '';
    const rawValue = option.header.raw_value ?? Buffer.alloc(0);
    if (ctx.rawValue && value.length > 0 && rawValue.length > 0) {
      ctx.onRejected();
      return { ok: false, error: 'Only one of value or raw_value in the HeaderValue message should be set.' };
    }
    // docs/envoy-ext-proc.md#header-mutations: only raw_value is read; a value-only entry sets the header to the empty string.
    const bytes = ctx.rawValue ? rawValue : Buffer.from(value, 'utf8');
    if (!headerNameIsValid(key) || !headerValueIsValid(bytes)) {
      ctx.onRejected();
      return { ok: false, error: 'Invalid character in set_headers mutation.' };
    }
    const name = key.toLowerCase();
    // docs/envoy-ext-proc.md#header-mutations: only the deprecated `append` BoolValue counts (default false = overwrite); append_action and
    // keep_empty_value are ignored.
    const append = option.append?.value ?? false;
    const op: CheckOperation = append && headers.has(name) ? 'APPEND' : 'SET';
    let { result, reason } = ctx.checker.verdict(op, name, bytes);
    if (ctx.replacingMessage && name === ':method') [result, reason] = ['OK', undefined];
    ctx.observe?.({ action: 'set', name, value: bytes.toString('latin1'), applied: result === 'OK', ...(reason ? { ignored: reason } : {}) });
    if (result === 'OK') {
      if (append) headers.addCopy(name, bytes);
      else headers.setCopy(name, bytes);
    } else {
      ctx.onRejected();
      if (result === 'FAIL') return { ok: false, error: `Invalid attempt to modify ${name}` };
    }
  }

  // headerMutationResultCheck: the resulting map must stay within the HCM limits.
  if (headers.byteSize() > ctx.maxHeadersKb * 1024 || headers.size() > ctx.maxHeadersCount) {
    ctx.onRejected();
    return { ok: false, error: `Header mutation causes end result header count ${headers.size()} or header size ${headers.byteSize()} bytes, exceeding the count limit ${ctx.maxHeadersCount} or the size limit ${ctx.maxHeadersKb} kilobytes` };
  }
  return { ok: true };
}

// ---- what Envoy sends (docs/envoy-ext-proc.md#headers-envoy-sends) ------------------------------

export type HeaderMatcher = string | RegExp;

export interface ForwardRules {
  allowedHeaders?: HeaderMatcher[];
  disallowedHeaders?: HeaderMatcher[];
}

function matches(name: string, matchers: HeaderMatcher[]): boolean {
  return matchers.some((m) => (typeof m === 'string' ? m === name : m.test(name)));
}

/** MutationUtils::headerCanBeForwarded: disallow wins; an empty allow list allows everything. */
function canForward(name: string, rules: ForwardRules): boolean {
  const allowed = rules.allowedHeaders ?? [];
  const disallowed = rules.disallowedHeaders ?? [];
  if (disallowed.length > 0 && matches(name, disallowed)) return false;
  return allowed.length === 0 || matches(name, allowed);
}

export interface WireHeaderValue {
  key: string;
  value: string;
  raw_value: Buffer;
}

/**
 * MutationUtils::headersToProto: one HeaderValue per entry (duplicates kept), lower-case key, bytes in
 * raw_value and `value` empty. Before 1.27 the value went into `value`, with invalid UTF-8 sanitised.
 */
export function headersToProto(headers: HeaderMap, rules: ForwardRules, rawValue: boolean): { headers: WireHeaderValue[] } {
  const out: WireHeaderValue[] = [];
  for (const e of headers.list()) {
    if (!canForward(e.key, rules)) continue;
    if (rawValue) out.push({ key: e.key, value: '', raw_value: Buffer.from(e.value) });
    else out.push({ key: e.key, value: e.value.toString('utf8').replace(/\uFFFD/g, '!'), raw_value: Buffer.alloc(0) });
  }
  return { headers: out };
}
