// A strict decoder for Envoy YAML configs, built on Envoy's own API protos (the snapshot vendored in
// @grpc/grpc-js-xds under deps/{envoy-api,xds,googleapis,protoc-gen-validate}).
//
// There is no Envoy binary on our machines, so `envoy --mode validate` cannot run; this does the part of
// it that is about the schema, the way Envoy's YAML loader does (YAML -> JSON -> proto3 JSON mapping, with
// unknown fields rejected): every key must be a field of the message (proto name or json name), enums must
// be value names, `google.protobuf.Any` needs a resolvable `@type` and its body is checked recursively,
// well-known types use their JSON forms (Duration "2s", wrappers as bare scalars, Struct as any object),
// at most one member per oneof, arrays exactly where fields are repeated. On top of that it applies the
// protoc-gen-validate rules Envoy enforces at load (required messages and oneofs, string/array minimums,
// numeric and duration bounds) and refuses deprecated fields. It also returns the config normalised to
// proto field names, which the semantic tests read.
//
// The snapshot predates Envoy 1.40 (docs/envoy-ext-proc.md#versions-covered) and lacks e.g. ext_proc's
// allowed_override_modes and FULL_DUPLEX_STREAMED; a field that only newer Envoys know fails here, which is
// why the shipped configs use none.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import protobuf from 'protobufjs';
import YAML from 'yaml';

const require = createRequire(import.meta.url);
const DEPS = path.join(path.dirname(require.resolve('@grpc/grpc-js-xds/package.json')), 'deps');
const ENVOY_API_DIR = path.join(DEPS, 'envoy-api');
/** Import roots, in protoc -I order. protobufjs' own dir provides google/protobuf/descriptor.proto. */
const IMPORT_ROOTS = [
  ENVOY_API_DIR,
  path.join(DEPS, 'xds'),
  path.join(DEPS, 'googleapis'),
  path.join(DEPS, 'protoc-gen-validate'),
  path.dirname(require.resolve('protobufjs/package.json')),
];
export const BOOTSTRAP_TYPE = 'envoy.config.bootstrap.v3.Bootstrap';
export const TYPE_URL_PREFIX = 'type.googleapis.com/';

export interface DecodeIssue {
  /** JSONPath-like location, e.g. `$.static_resources.clusters[0].typed_extension_protocol_options`. */
  path: string;
  message: string;
}

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

export class StrictDecodeError extends Error {
  constructor(
    readonly source: string,
    readonly issues: DecodeIssue[],
  ) {
    super(`${source}: ${issues.length} schema error(s)\n${issues.map((i) => `  ${i.path}: ${i.message}`).join('\n')}`);
  }
}

// ----------------------------------------------------------------------------------------------------
// Loading: a package index over the snapshot, files loaded on demand when a type is first needed.

function protoFilesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...protoFilesUnder(full));
    else if (entry.name.endsWith('.proto')) out.push(full);
  }
  return out;
}

/** proto package -> files declaring it, for every .proto under the import roots that hold APIs. */
function indexPackages(): Map<string, string[]> {
  const index = new Map<string, string[]>();
  for (const root of IMPORT_ROOTS.slice(0, 4)) {
    for (const file of protoFilesUnder(root)) {
      const pkg = /^\s*package\s+([\w.]+)\s*;/m.exec(readFileSync(file, 'utf8'))?.[1];
      if (!pkg) continue;
      const list = index.get(pkg) ?? [];
      list.push(file);
      index.set(pkg, list);
    }
  }
  return index;
}

export class EnvoyApi {
  readonly root = new protobuf.Root();
  private readonly packages = indexPackages();
  private readonly loadedPackages = new Set<string>();

  constructor() {
    this.root.resolvePath = (_origin, target) => {
      if (path.isAbsolute(target)) return target;
      for (const dir of IMPORT_ROOTS) {
        const candidate = path.join(dir, target);
        if (existsSync(candidate)) return candidate;
      }
      return target;
    };
    this.loadFiles(['envoy/config/bootstrap/v3/bootstrap.proto']);
  }

  private loadFiles(files: string[]): void {
    this.root.loadSync(files, { keepCase: true });
    this.root.resolveAll();
  }

  /** The message type `name` (no leading dot), loading its package from the snapshot if needed. */
  findType(name: string): protobuf.Type | undefined {
    const found = this.lookupType(name);
    if (found) return found;
    // `a.b.v3.Outer.Inner`: try each prefix as the package, longest first.
    const parts = name.split('.');
    for (let cut = parts.length - 1; cut > 0; cut--) {
      const pkg = parts.slice(0, cut).join('.');
      const files = this.packages.get(pkg);
      if (!files || this.loadedPackages.has(pkg)) continue;
      this.loadedPackages.add(pkg);
      this.loadFiles(files);
      return this.lookupType(name);
    }
    return undefined;
  }

  private lookupType(name: string): protobuf.Type | undefined {
    try {
      const found = this.root.lookup(name);
      return found instanceof protobuf.Type ? found : undefined;
    } catch {
      return undefined;
    }
  }

  /** Decodes `value` as message `typeName`; returns the normalised value and every issue found. */
  decode(typeName: string, value: unknown): { value: Json; issues: DecodeIssue[] } {
    const type = this.findType(typeName);
    if (!type) throw new Error(`type ${typeName} is not in the Envoy API snapshot`);
    const issues: DecodeIssue[] = [];
    const out = new Decoder(this, issues).message(type, value, '$');
    return { value: out, issues };
  }

  /** Parses YAML text and decodes it as a Bootstrap; throws StrictDecodeError listing every issue. */
  decodeBootstrapYaml(text: string, source = '<yaml>'): JsonObject {
    const doc = YAML.parseDocument(text, { uniqueKeys: true, strict: true, prettyErrors: false });
    if (doc.errors.length > 0) {
      throw new StrictDecodeError(source, doc.errors.map((e) => ({ path: '$', message: `YAML: ${e.message}` })));
    }
    const { value, issues } = this.decode(BOOTSTRAP_TYPE, doc.toJS({ maxAliasCount: 100 }));
    if (issues.length > 0) throw new StrictDecodeError(source, issues);
    return value as JsonObject;
  }

  decodeBootstrapFile(file: string): JsonObject {
    return this.decodeBootstrapYaml(readFileSync(file, 'utf8'), file);
  }
}

let shared: EnvoyApi | undefined;
/** One loaded API per test worker (loading the closure takes a few hundred ms). */
export function envoyApi(): EnvoyApi {
  shared ??= new EnvoyApi();
  return shared;
}

// ----------------------------------------------------------------------------------------------------
// The walk.

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** protoc's json_name: lowerCamelCase of the proto name. */
export function jsonName(protoName: string): string {
  return protoName.replace(/_+([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
}

const DURATION = /^(-)?(\d+)(?:\.(\d{1,9}))?s$/;
const MAX_DURATION_SECONDS = 315_576_000_000;
const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$|^[A-Za-z0-9_-]*$/;

/** Seconds (as a float) of a proto3 JSON Duration, or undefined if it is not one. */
export function parseDuration(text: string): number | undefined {
  const m = DURATION.exec(text);
  if (!m) return undefined;
  const seconds = Number(m[2]) + (m[3] ? Number(`0.${m[3]}`) : 0);
  if (seconds > MAX_DURATION_SECONDS) return undefined;
  return m[1] ? -seconds : seconds;
}

const INT_RANGES: Record<string, [number, number]> = {
  int32: [-(2 ** 31), 2 ** 31 - 1],
  sint32: [-(2 ** 31), 2 ** 31 - 1],
  sfixed32: [-(2 ** 31), 2 ** 31 - 1],
  uint32: [0, 2 ** 32 - 1],
  fixed32: [0, 2 ** 32 - 1],
  int64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
  sint64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
  sfixed64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
  uint64: [0, Number.MAX_SAFE_INTEGER],
  fixed64: [0, Number.MAX_SAFE_INTEGER],
};

/** google.protobuf wrapper -> the scalar type its JSON form is. */
const WRAPPERS: Record<string, string> = {
  '.google.protobuf.DoubleValue': 'double',
  '.google.protobuf.FloatValue': 'float',
  '.google.protobuf.Int64Value': 'int64',
  '.google.protobuf.UInt64Value': 'uint64',
  '.google.protobuf.Int32Value': 'int32',
  '.google.protobuf.UInt32Value': 'uint32',
  '.google.protobuf.BoolValue': 'bool',
  '.google.protobuf.StringValue': 'string',
  '.google.protobuf.BytesValue': 'bytes',
};
/** Well-known types whose JSON form is not an object of their fields (Any wraps them as {"value": ...}). */
const SPECIAL_JSON = new Set([
  ...Object.keys(WRAPPERS),
  '.google.protobuf.Duration',
  '.google.protobuf.Timestamp',
  '.google.protobuf.FieldMask',
  '.google.protobuf.Struct',
  '.google.protobuf.Value',
  '.google.protobuf.ListValue',
]);

/** Flattened protoc-gen-validate options as protobufjs exposes them: '(validate.rules).string.min_len'. */
function rule(obj: protobuf.ReflectionObject, key: string): unknown {
  return obj.options?.[`(validate.rules).${key}`];
}

class Decoder {
  constructor(
    private readonly api: EnvoyApi,
    private readonly issues: DecodeIssue[],
  ) {}

  private fail(p: string, message: string): Json {
    this.issues.push({ path: p, message });
    return null;
  }

  message(type: protobuf.Type, value: unknown, p: string): Json {
    const full = type.fullName;
    if (full === '.google.protobuf.Any') return this.any(value, p);
    if (full in WRAPPERS) return this.scalar(WRAPPERS[full]!, value, p);
    switch (full) {
      case '.google.protobuf.Duration':
        if (typeof value !== 'string' || parseDuration(value) === undefined) {
          return this.fail(p, `expected a Duration string like "2s" or "0.5s", got ${JSON.stringify(value)}`);
        }
        return value;
      case '.google.protobuf.Timestamp':
        return typeof value === 'string' && RFC3339.test(value) ? value : this.fail(p, 'expected an RFC 3339 Timestamp');
      case '.google.protobuf.FieldMask':
        return typeof value === 'string' ? value : this.fail(p, 'expected a FieldMask string');
      case '.google.protobuf.Struct':
        return isObject(value) ? (value as Json) : this.fail(p, 'expected an object (google.protobuf.Struct)');
      case '.google.protobuf.Value':
        return value === undefined ? this.fail(p, 'expected a JSON value') : (value as Json);
      case '.google.protobuf.ListValue':
        return Array.isArray(value) ? (value as Json) : this.fail(p, 'expected an array (google.protobuf.ListValue)');
      case '.google.protobuf.Empty':
        return isObject(value) && Object.keys(value).length === 0 ? {} : this.fail(p, 'expected {} (google.protobuf.Empty)');
    }
    if (value === null) return this.fail(p, `null for message ${full.slice(1)}: write {} or remove the key`);
    if (!isObject(value)) return this.fail(p, `expected an object (${full.slice(1)}), got ${describe(value)}`);
    return this.fields(type, value, p);
  }

  private fields(type: protobuf.Type, value: Record<string, unknown>, p: string): JsonObject {
    const out: JsonObject = {};
    const byName = new Map<string, protobuf.Field>();
    for (const field of type.fieldsArray) {
      byName.set(field.name, field);
      byName.set(jsonName(field.name), field);
    }
    for (const [key, raw] of Object.entries(value)) {
      const here = `${p}.${key}`;
      const field = byName.get(key);
      if (!field) {
        this.fail(here, `unknown field "${key}" in ${type.fullName.slice(1)}`);
        continue;
      }
      if (field.name in out) {
        this.fail(here, `field ${field.name} given twice (proto name and json name)`);
        continue;
      }
      if (field.options?.deprecated === true) this.fail(here, `deprecated field ${field.name}: use its replacement`);
      if (raw === null) {
        this.fail(here, `null for ${field.name}: remove the key or give a value`);
        continue;
      }
      out[field.name] = this.field(field, raw, here);
    }
    for (const oneof of type.oneofsArray) {
      const set = oneof.fieldsArray.filter((f) => f.name in out).map((f) => f.name);
      if (set.length > 1) this.fail(p, `oneof ${oneof.name} has more than one member: ${set.join(', ')}`);
      if (set.length === 0 && oneof.options?.['(validate.required)'] === true) {
        this.fail(p, `oneof ${oneof.name} of ${type.fullName.slice(1)} requires one of: ${oneof.oneof.join(', ')}`);
      }
    }
    this.checkPresence(type, out, p);
    return out;
  }

  /** PGV rules that also bite when a field is absent (Envoy applies them at load). */
  private checkPresence(type: protobuf.Type, out: JsonObject, p: string): void {
    for (const field of type.fieldsArray) {
      if (field.name in out || field.partOf) continue;
      if (rule(field, 'message.required') === true || rule(field, 'duration.required') === true) {
        this.fail(p, `required field ${field.name} of ${type.fullName.slice(1)} is missing`);
      } else if (field.repeated && Number(rule(field, 'repeated.min_items') ?? 0) > 0) {
        this.fail(p, `field ${field.name} needs at least ${String(rule(field, 'repeated.min_items'))} item(s)`);
      } else if (!field.repeated && field.type === 'string' && Number(rule(field, 'string.min_len') ?? rule(field, 'string.min_bytes') ?? 0) > 0) {
        this.fail(p, `field ${field.name} of ${type.fullName.slice(1)} must be a non-empty string`);
      }
    }
  }

  private field(field: protobuf.Field, raw: unknown, p: string): Json {
    if (field.map) {
      if (!isObject(raw)) return this.fail(p, `map field ${field.name} expects an object, got ${describe(raw)}`);
      const keyType = (field as unknown as protobuf.MapField).keyType;
      const out: JsonObject = {};
      for (const [k, v] of Object.entries(raw)) {
        const keyOk = keyType === 'string' || (keyType === 'bool' ? k === 'true' || k === 'false' : /^-?\d+$/.test(k));
        if (!keyOk) {
          this.fail(`${p}["${k}"]`, `map key "${k}" is not a ${keyType}`);
          continue;
        }
        out[k] = this.single(field, v, `${p}["${k}"]`);
      }
      return out;
    }
    if (field.repeated) {
      if (!Array.isArray(raw)) return this.fail(p, `repeated field ${field.name} expects a list, got ${describe(raw)}`);
      const minItems = Number(rule(field, 'repeated.min_items') ?? 0);
      if (raw.length < minItems) this.fail(p, `field ${field.name} needs at least ${minItems} item(s)`);
      return raw.map((item, i) => this.single(field, item, `${p}[${i}]`));
    }
    return this.single(field, raw, p);
  }

  /** One value of `field`'s element type. */
  private single(field: protobuf.Field, raw: unknown, p: string): Json {
    const resolved = field.resolvedType;
    if (resolved instanceof protobuf.Enum) return this.enumValue(resolved, raw, p);
    if (resolved instanceof protobuf.Type) {
      const out = this.message(resolved, raw, p);
      if (resolved.fullName in WRAPPERS) this.checkNumericRules(field, WRAPPERS[resolved.fullName]!, out, p);
      if (resolved.fullName === '.google.protobuf.Duration' && typeof out === 'string') this.checkDurationRules(field, out, p);
      return out;
    }
    const out = this.scalar(field.type, raw, p);
    this.checkNumericRules(field, field.type, out, p);
    if (field.type === 'string' && typeof out === 'string') {
      const min = Number(rule(field, 'string.min_len') ?? rule(field, 'string.min_bytes') ?? 0);
      if (out.length < min) this.fail(p, `string shorter than ${min}`);
    }
    if (field.type === 'bool' && rule(field, 'bool.const') !== undefined && out !== rule(field, 'bool.const')) {
      this.fail(p, `must be ${String(rule(field, 'bool.const'))}`);
    }
    return out;
  }

  private enumValue(e: protobuf.Enum, raw: unknown, p: string): Json {
    if (e.fullName === '.google.protobuf.NullValue') return raw === null ? null : this.fail(p, 'expected null');
    if (typeof raw !== 'string') {
      return this.fail(p, `enum ${e.fullName.slice(1)} expects a value name (${Object.keys(e.values).join(', ')}), got ${describe(raw)}`);
    }
    if (!(raw in e.values)) {
      return this.fail(p, `"${raw}" is not a value of enum ${e.fullName.slice(1)} (${Object.keys(e.values).join(', ')})`);
    }
    if (e.valuesOptions?.[raw]?.deprecated === true) this.fail(p, `enum value ${raw} is deprecated`);
    return raw;
  }

  private scalar(type: string, raw: unknown, p: string): Json {
    switch (type) {
      case 'string':
        return typeof raw === 'string' ? raw : this.fail(p, `expected a string, got ${describe(raw)}`);
      case 'bool':
        return typeof raw === 'boolean' ? raw : this.fail(p, `expected true or false, got ${describe(raw)}`);
      case 'bytes':
        return typeof raw === 'string' && BASE64.test(raw) ? raw : this.fail(p, 'expected base64 bytes');
      case 'double':
      case 'float':
        if (typeof raw === 'number' || raw === 'NaN' || raw === 'Infinity' || raw === '-Infinity') return raw;
        return this.fail(p, `expected a number, got ${describe(raw)}`);
    }
    const range = INT_RANGES[type];
    if (!range) return this.fail(p, `unsupported scalar type ${type}`);
    const n = typeof raw === 'number' ? raw : typeof raw === 'string' && /^-?\d+$/.test(raw) ? Number(raw) : NaN;
    if (!Number.isInteger(n)) return this.fail(p, `expected an integer (${type}), got ${describe(raw)}`);
    if (n < range[0] || n > range[1]) return this.fail(p, `${n} is out of range for ${type}`);
    return n;
  }

  private checkNumericRules(field: protobuf.Field, type: string, value: Json, p: string): void {
    if (typeof value !== 'number') return;
    const bound = (op: string) => rule(field, `${type}.${op}`) as number | undefined;
    const checks: Array<[string, (a: number, b: number) => boolean]> = [
      ['gt', (a, b) => a > b],
      ['gte', (a, b) => a >= b],
      ['lt', (a, b) => a < b],
      ['lte', (a, b) => a <= b],
      ['const', (a, b) => a === b],
    ];
    for (const [op, ok] of checks) {
      const b = bound(op);
      if (b !== undefined && !ok(value, Number(b))) this.fail(p, `${value} violates ${op} ${b}`);
    }
  }

  private checkDurationRules(field: protobuf.Field, value: string, p: string): void {
    const seconds = parseDuration(value)!;
    for (const op of ['gt', 'gte', 'lt', 'lte'] as const) {
      const s = rule(field, `duration.${op}.seconds`);
      const n = rule(field, `duration.${op}.nanos`);
      if (s === undefined && n === undefined) continue;
      const b = Number(s ?? 0) + Number(n ?? 0) / 1e9;
      const ok = op === 'gt' ? seconds > b : op === 'gte' ? seconds >= b : op === 'lt' ? seconds < b : seconds <= b;
      if (!ok) this.fail(p, `${value} violates ${op} ${b}s`);
    }
  }

  private any(value: unknown, p: string): Json {
    if (!isObject(value)) return this.fail(p, `expected an object with "@type" (google.protobuf.Any), got ${describe(value)}`);
    const typeUrl = value['@type'];
    if (typeof typeUrl !== 'string') return this.fail(p, 'google.protobuf.Any without "@type"');
    if (!typeUrl.startsWith(TYPE_URL_PREFIX)) return this.fail(`${p}.@type`, `"@type" must start with ${TYPE_URL_PREFIX}`);
    const name = typeUrl.slice(TYPE_URL_PREFIX.length);
    const type = this.api.findType(name);
    if (!type) return this.fail(`${p}.@type`, `unknown @type ${name}: not a message in the Envoy API snapshot`);
    const { '@type': _dropped, ...body } = value;
    if (SPECIAL_JSON.has(type.fullName)) {
      const keys = Object.keys(body);
      if (keys.length !== 1 || keys[0] !== 'value') return this.fail(p, `Any of ${name} needs exactly {"@type", "value"}`);
      return { '@type': typeUrl, value: this.message(type, body.value, `${p}.value`) };
    }
    const decoded = this.fields(type, body, p);
    return { '@type': typeUrl, ...decoded };
  }
}

function describe(v: unknown): string {
  if (Array.isArray(v)) return 'a list';
  if (v === null) return 'null';
  return typeof v === 'object' ? 'an object' : `${typeof v} ${JSON.stringify(v)}`;
}

// ----------------------------------------------------------------------------------------------------
// Reading the shipped configs.

export const EXT_PROC_TYPE = 'envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor';
export const EXT_PROC_PER_ROUTE_TYPE = 'envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute';
export const HCM_TYPE = 'envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager';
export const HTTP_PROTOCOL_OPTIONS_TYPE = 'envoy.extensions.upstreams.http.v3.HttpProtocolOptions';

export const typeOf = (any: unknown): string | undefined =>
  isObject(any) && typeof any['@type'] === 'string' ? (any['@type'] as string).slice(TYPE_URL_PREFIX.length) : undefined;

// Small typed views over the normalised bootstrap (only what the tests read).
export interface NamedTyped {
  name: string;
  typed_config?: JsonObject;
}
export interface RouteView {
  name?: string;
  match: JsonObject;
  route?: JsonObject;
  direct_response?: JsonObject;
  typed_per_filter_config?: Record<string, JsonObject>;
}
export interface HcmView {
  listener: string;
  port: number | undefined;
  hcm: JsonObject;
  httpFilters: NamedTyped[];
  routes: RouteView[];
}

export function listeners(bootstrap: JsonObject): JsonObject[] {
  return ((bootstrap.static_resources as JsonObject | undefined)?.listeners ?? []) as JsonObject[];
}

export function clusters(bootstrap: JsonObject): JsonObject[] {
  return ((bootstrap.static_resources as JsonObject | undefined)?.clusters ?? []) as JsonObject[];
}

export function cluster(bootstrap: JsonObject, name: string): JsonObject | undefined {
  return clusters(bootstrap).find((c) => c.name === name);
}

/** Every HttpConnectionManager in the static listeners, with its filters and (inline) routes. */
export function connectionManagers(bootstrap: JsonObject): HcmView[] {
  const out: HcmView[] = [];
  for (const listener of listeners(bootstrap)) {
    const address = (listener.address as JsonObject | undefined)?.socket_address as JsonObject | undefined;
    for (const chain of (listener.filter_chains ?? []) as JsonObject[]) {
      for (const filter of (chain.filters ?? []) as unknown as NamedTyped[]) {
        if (typeOf(filter.typed_config) !== HCM_TYPE) continue;
        const hcm = filter.typed_config!;
        const vhosts = ((hcm.route_config as JsonObject | undefined)?.virtual_hosts ?? []) as JsonObject[];
        out.push({
          listener: String(listener.name),
          port: address?.port_value as number | undefined,
          hcm,
          httpFilters: (hcm.http_filters ?? []) as unknown as NamedTyped[],
          routes: vhosts.flatMap((vh) => (vh.routes ?? []) as unknown as RouteView[]),
        });
      }
    }
  }
  return out;
}

/** Seconds of a Duration string ("600s"). */
export function seconds(duration: Json | undefined): number | undefined {
  return typeof duration === 'string' ? parseDuration(duration) : undefined;
}

export interface ExtProcFilterConfig {
  /** The filter's name in http_filters (the key ExtProcPerRoute configs must use). */
  filterName: string;
  /** Proto enum names; fields the YAML omits carry their proto default (DEFAULT / NONE). */
  processingMode: {
    request_header_mode: string;
    response_header_mode: string;
    request_body_mode: string;
    response_body_mode: string;
    request_trailer_mode: string;
    response_trailer_mode: string;
  };
  allowModeOverride: boolean;
  /** message_timeout in ms; Envoy's default is 200 ms (docs/envoy-ext-proc.md#timeouts). */
  messageTimeoutMs: number;
  failureModeAllow: boolean;
  /** The ext_proc cluster's HttpProtocolOptions max_requests_per_connection, if set
   * (docs/envoy-ext-proc.md#node-and-http2-stream-resets). */
  maxRequestsPerConnection: number | undefined;
  /** grpc_service.envoy_grpc.cluster_name. */
  clusterName: string;
}

/** The ext_proc filter of a decoded bootstrap, or undefined when it has none. Throws if it has several. */
export function extProcFilterOf(bootstrap: JsonObject): ExtProcFilterConfig | undefined {
  const found = connectionManagers(bootstrap).flatMap((m) => m.httpFilters.filter((f) => typeOf(f.typed_config) === EXT_PROC_TYPE));
  if (found.length === 0) return undefined;
  if (found.length > 1) throw new Error(`${found.length} ext_proc filters; expected one`);
  const filter = found[0]!;
  const cfg = filter.typed_config!;
  const mode = (cfg.processing_mode ?? {}) as Record<string, string | undefined>;
  const clusterName = String(((cfg.grpc_service as JsonObject).envoy_grpc as JsonObject | undefined)?.cluster_name ?? '');
  const options = (cluster(bootstrap, clusterName)?.typed_extension_protocol_options ?? {}) as Record<string, JsonObject>;
  const http = Object.values(options).find((o) => typeOf(o) === HTTP_PROTOCOL_OPTIONS_TYPE);
  const common = http?.common_http_protocol_options as JsonObject | undefined;
  const timeout = seconds(cfg.message_timeout);
  return {
    filterName: filter.name,
    processingMode: {
      request_header_mode: mode.request_header_mode ?? 'DEFAULT',
      response_header_mode: mode.response_header_mode ?? 'DEFAULT',
      request_body_mode: mode.request_body_mode ?? 'NONE',
      response_body_mode: mode.response_body_mode ?? 'NONE',
      request_trailer_mode: mode.request_trailer_mode ?? 'DEFAULT',
      response_trailer_mode: mode.response_trailer_mode ?? 'DEFAULT',
    },
    allowModeOverride: cfg.allow_mode_override === true,
    messageTimeoutMs: timeout === undefined ? 200 : Math.round(timeout * 1000),
    failureModeAllow: cfg.failure_mode_allow === true,
    maxRequestsPerConnection: typeof common?.max_requests_per_connection === 'number' ? common.max_requests_per_connection : undefined,
    clusterName,
  };
}

/**
 * The ext_proc settings of a shipped Envoy YAML (strictly decoded first), in the shape the Envoy
 * emulation is configured with, so integration tests run the server exactly as the config would.
 */
export function readExtProcFilter(yamlPath: string): ExtProcFilterConfig {
  const config = extProcFilterOf(envoyApi().decodeBootstrapFile(yamlPath));
  if (!config) throw new Error(`${yamlPath} has no ext_proc filter`);
  return config;
}

// ---------------------------------------------------------------------------------------------------
// Envoy route matching, as far as the shipped configs use it (shared by the config checks and the
// integration tests that run with the shipped per-route settings).

/** RE2 as Envoy's safe_regex uses it: full match on the path without its query string. */
function re2(regex: string): RegExp {
  let flags = '';
  let body = regex;
  if (body.startsWith('(?i)')) {
    flags = 'i';
    body = body.slice(4);
  }
  // Anything else RE2-specific would silently mean something different in JS: refuse it.
  if (/\(\?[^:]/.test(body)) throw new Error(`regex ${regex} uses RE2 syntax the emulation does not model`);
  return new RegExp(`^(?:${body})$`, flags);
}

export function routeMatches(route: RouteView, method: string, fullPath: string): boolean {
  const m = route.match;
  const known = new Set(['prefix', 'path', 'safe_regex', 'headers']);
  for (const key of Object.keys(m)) if (!known.has(key)) throw new Error(`route match field ${key} not emulated`);
  const pathOnly = fullPath.split('?')[0]!;
  if (typeof m.prefix === 'string' && !fullPath.startsWith(m.prefix)) return false;
  if (typeof m.path === 'string' && pathOnly !== m.path) return false;
  if (m.safe_regex && !re2(String((m.safe_regex as JsonObject).regex)).test(pathOnly)) return false;
  for (const header of (m.headers ?? []) as JsonObject[]) {
    if (header.name !== ':method') throw new Error(`header matcher ${String(header.name)} not emulated`);
    if ((header.string_match as JsonObject).exact !== method) return false;
  }
  return true;
}

/** Whether Envoy opens an ext_proc stream for this request: the filter runs and the route doesn't disable it. */
export function extProcRunsFor(bootstrap: JsonObject, routes: RouteView[], method: string, fullPath: string): boolean {
  const filter = extProcFilterOf(bootstrap);
  const route = routes.find((r) => routeMatches(r, method, fullPath));
  if (!route) throw new Error(`no route for ${method} ${fullPath}`);
  if (!filter) return false;
  const perRoute = route.typed_per_filter_config?.[filter.filterName];
  return !(perRoute && perRoute.disabled === true);
}
