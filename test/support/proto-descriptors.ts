// Loads our hand-written protos and the official Envoy / grpc-health definitions as protobufjs Roots and
// compares them structurally (test/proto-compat.test.ts). protobufjs is the library @grpc/proto-loader
// (and therefore src/proto.ts) uses to encode and decode, so it is the right lens for "what goes on the wire".
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import protobuf from 'protobufjs';
import { PROTO_DIR } from '../../src/proto.js';

const require = createRequire(import.meta.url);

/** Include roots for the official snapshot shipped in @grpc/grpc-js-xds (order matters only for ties). */
export const XDS_DEPS_DIR = path.join(path.dirname(require.resolve('@grpc/grpc-js-xds/package.json')), 'deps');
export const OFFICIAL_INCLUDE_DIRS = [
  path.join(XDS_DEPS_DIR, 'envoy-api'),
  path.join(XDS_DEPS_DIR, 'xds'),
  path.join(XDS_DEPS_DIR, 'protoc-gen-validate'),
  path.join(XDS_DEPS_DIR, 'googleapis'),
  // google/protobuf/descriptor.proto (imported by validate/udpa annotations) is not in protobufjs' bundled
  // "common" set unless proto-loader registered it; protobufjs ships the .proto file itself.
  path.dirname(require.resolve('protobufjs/package.json')),
];
export const OFFICIAL_HEALTH_PROTO = path.join(
  path.dirname(require.resolve('grpc-health-check/package.json')),
  'proto/health/v1/health.proto',
);

export const PARSE_OPTIONS = { keepCase: true } as const;

/** Official definitions: ext_proc closure from the xds deps + grpc.health.v1 from grpc-health-check. */
export function loadOfficialRoot(): protobuf.Root {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => {
    if (path.isAbsolute(target)) return target;
    for (const dir of OFFICIAL_INCLUDE_DIRS) {
      const candidate = path.join(dir, target);
      if (existsSync(candidate)) return candidate;
    }
    return target; // let protobufjs report the missing file
  };
  root.loadSync(['envoy/service/ext_proc/v3/external_processor.proto', OFFICIAL_HEALTH_PROTO], PARSE_OPTIONS);
  root.resolveAll();
  return root;
}

function listProtoFiles(dir: string, base = dir): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...listProtoFiles(full, base));
    else if (entry.name.endsWith('.proto')) out.push(path.relative(base, full).split(path.sep).join('/'));
  }
  return out.sort();
}

/** Relative paths ('envoy/service/ext_proc/v3/external_processor.proto', ...) of every file in proto/. */
export function ourProtoFiles(): string[] {
  return listProtoFiles(PROTO_DIR);
}

export function readOurProto(relPath: string): string {
  return readFileSync(path.join(PROTO_DIR, relPath), 'utf8');
}

/**
 * Our definitions: every .proto under proto/ parsed into one Root (google/protobuf/* imports come from
 * protobufjs' bundled copies, exactly as proto-loader does). `sources` replaces file contents, which is how
 * the self-tests load deliberately broken copies without touching proto/.
 */
export function loadOurRoot(sources?: Record<string, string>): protobuf.Root {
  const root = new protobuf.Root();
  const wkt = new Set<string>();
  const files = sources ? Object.keys(sources).sort() : ourProtoFiles();
  for (const file of files) {
    const text = sources ? sources[file]! : readOurProto(file);
    const parsed = protobuf.parse(text, root, PARSE_OPTIONS);
    for (const imp of parsed.imports ?? []) {
      if (imp.startsWith('google/protobuf/')) wkt.add(imp);
      else if (!files.includes(imp)) throw new Error(`${file} imports ${imp}, which is not in proto/`);
    }
  }
  if (wkt.size) root.loadSync([...wkt], PARSE_OPTIONS);
  root.resolveAll();
  return root;
}

/** The current contents of proto/, keyed by relative path (to be edited and fed to loadOurRoot). */
export function ourProtoSources(): Record<string, string> {
  return Object.fromEntries(ourProtoFiles().map((f) => [f, readOurProto(f)]));
}

// ---------------------------------------------------------------------------------------------------
// Structural description of fields / enums / methods

const PACKABLE = new Set([
  'double', 'float', 'int32', 'int64', 'uint32', 'uint64', 'sint32', 'sint64',
  'fixed32', 'fixed64', 'sfixed32', 'sfixed64', 'bool',
]);

export type Label = 'singular' | 'optional' | 'repeated' | `map<${string}>`;

export interface FieldShape {
  number: number;
  /** Fully-qualified message/enum name without leading dot, or the scalar type name. */
  type: string;
  label: Label;
  /** Name of the (non-synthetic) oneof the field belongs to, or null. */
  oneof: string | null;
  /** Wire encoding of repeated packable scalars; null where it does not apply. */
  packed: boolean | null;
}

const fq = (obj: protobuf.ReflectionObject): string => obj.fullName.replace(/^\./, '');

export function fieldShape(field: protobuf.Field): FieldShape {
  field.resolve();
  const type = field.resolvedType ? fq(field.resolvedType) : field.type;
  const proto3Optional = Boolean(field.options?.['proto3_optional']);
  let label: Label = 'singular';
  if (field instanceof protobuf.MapField) label = `map<${field.keyType}>`;
  else if (field.repeated) label = 'repeated';
  else if (proto3Optional) label = 'optional';
  // proto3 `optional` is modelled as a synthetic oneof "_<name>"; that is captured by label, not oneof.
  const oneof = field.partOf && !proto3Optional ? field.partOf.name : null;
  const packed = field.repeated && !field.resolvedType && PACKABLE.has(field.type) ? field.packed : null;
  return { number: field.id, type, label, oneof, packed };
}

export interface MethodShape {
  requestType: string;
  responseType: string;
  requestStream: boolean;
  responseStream: boolean;
}

export function methodShape(method: protobuf.Method): MethodShape {
  method.resolve();
  return {
    requestType: fq(method.resolvedRequestType!),
    responseType: fq(method.resolvedResponseType!),
    requestStream: Boolean(method.requestStream),
    responseStream: Boolean(method.responseStream),
  };
}

export interface Collected {
  types: Map<string, protobuf.Type>;
  enums: Map<string, protobuf.Enum>;
  services: Map<string, protobuf.Service>;
}

/** Every message, enum and service (at any nesting depth) under the given package prefixes. */
export function collect(root: protobuf.Root, packages: string[]): Collected {
  const out: Collected = { types: new Map(), enums: new Map(), services: new Map() };
  const visit = (obj: protobuf.ReflectionObject): void => {
    if (obj instanceof protobuf.Type) out.types.set(fq(obj), obj);
    else if (obj instanceof protobuf.Enum) out.enums.set(fq(obj), obj);
    else if (obj instanceof protobuf.Service) out.services.set(fq(obj), obj);
    if (obj instanceof protobuf.Namespace) for (const child of obj.nestedArray) visit(child);
  };
  for (const pkg of packages) {
    const ns = root.lookup(pkg);
    if (ns) visit(ns);
  }
  return out;
}

export function lookupType(root: protobuf.Root, name: string): protobuf.Type | null {
  const obj = root.lookup(name);
  return obj instanceof protobuf.Type ? obj : null;
}

export function lookupEnum(root: protobuf.Root, name: string): protobuf.Enum | null {
  const obj = root.lookup(name);
  return obj instanceof protobuf.Enum ? obj : null;
}

// ---------------------------------------------------------------------------------------------------
// Comparison

/** A field of ours that the official snapshot does not have (newer Envoy API). */
export interface AllowedField {
  message: string;
  field: string;
  shape: FieldShape;
  ref: string;
}
/** A whole message of ours that the snapshot does not have; `fields` is its complete expected shape. */
export interface AllowedMessage {
  message: string;
  fields: Record<string, FieldShape>;
  ref: string;
}
export interface AllowedEnumValue {
  enum: string;
  value: string;
  number: number;
  ref: string;
}
export interface AllowList {
  fields: AllowedField[];
  messages: AllowedMessage[];
  enumValues: AllowedEnumValue[];
}

const show = (s: FieldShape): string =>
  `#${s.number} ${s.label} ${s.type}${s.oneof ? ` oneof ${s.oneof}` : ''}${s.packed === null ? '' : s.packed ? ' packed' : ' unpacked'}`;

function diffShape(where: string, ours: FieldShape, expected: FieldShape, what: string): string[] {
  const problems: string[] = [];
  for (const key of ['number', 'type', 'label', 'oneof', 'packed'] as const) {
    if (ours[key] !== expected[key]) {
      problems.push(`${where}: ${key} differs from ${what}: ours ${show(ours)}, ${what} ${show(expected)}`);
    }
  }
  return problems;
}

/**
 * Inclusive check of `reserved` ranges. Not Type#isReservedId: protobufjs parses `reserved 1;` as [1, 1]
 * but tests `end > id`, so single reserved numbers never match there.
 */
export function isReservedNumber(type: protobuf.Type, id: number): boolean {
  return (type.reserved ?? []).some((r) => typeof r !== 'string' && r[0]! <= id && id <= r[1]!);
}

function fieldsById(type: protobuf.Type): Map<number, protobuf.Field> {
  return new Map(type.fieldsArray.map((f) => [f.id, f]));
}

/**
 * Compares every message/enum/service of ours (under `packages`) with the same fully-qualified name in
 * `official`. Returns human-readable problems; an empty list means wire-compatible.
 */
export function compareWithOfficial(
  ours: protobuf.Root,
  official: protobuf.Root,
  allow: AllowList,
  packages: string[],
): string[] {
  const problems: string[] = [];
  const mine = collect(ours, packages);
  const allowedMessages = new Map(allow.messages.map((m) => [m.message, m]));
  const allowedFields = new Map(allow.fields.map((f) => [`${f.message}.${f.field}`, f]));
  const allowedValues = new Map(allow.enumValues.map((v) => [`${v.enum}.${v.value}`, v]));
  const usedAllowances = new Set<string>();

  for (const [name, type] of mine.types) {
    const allowedMessage = allowedMessages.get(name);
    if (allowedMessage) {
      usedAllowances.add(`message ${name}`);
      if (official.lookup(name)) problems.push(`${name}: allow-listed as absent, but the official snapshot has it`);
      const ourFields = Object.fromEntries(type.fieldsArray.map((f) => [f.name, fieldShape(f)]));
      for (const [fname, expected] of Object.entries(allowedMessage.fields)) {
        const got = ourFields[fname];
        if (!got) problems.push(`${name}.${fname}: allow-listed (${allowedMessage.ref}) but missing from ours`);
        else problems.push(...diffShape(`${name}.${fname}`, got, expected, `allow-list (${allowedMessage.ref})`));
      }
      for (const fname of Object.keys(ourFields)) {
        if (!(fname in allowedMessage.fields)) problems.push(`${name}.${fname}: not in the allow-list entry for ${name}`);
      }
      continue;
    }

    const off = lookupType(official, name);
    if (!off) {
      problems.push(`${name}: message not found in the official snapshot and not allow-listed`);
      continue;
    }
    const offById = fieldsById(off);
    for (const field of type.fieldsArray) {
      const where = `${name}.${field.name}`;
      const ourShape = fieldShape(field);
      const offField = off.fields[field.name];
      const allowed = allowedFields.get(where);
      if (allowed) {
        usedAllowances.add(`field ${where}`);
        if (offField) problems.push(`${where}: allow-listed as absent, but the official snapshot has it (${show(fieldShape(offField))})`);
        const clash = offById.get(ourShape.number);
        if (clash && clash.name !== field.name) {
          problems.push(`${where}: #${ourShape.number} is official field ${name}.${clash.name} in the snapshot`);
        }
        if (isReservedNumber(off, ourShape.number)) problems.push(`${where}: #${ourShape.number} is reserved in the official ${name}`);
        problems.push(...diffShape(where, ourShape, allowed.shape, `allow-list (${allowed.ref})`));
        continue;
      }
      if (!offField) {
        const clash = offById.get(ourShape.number);
        problems.push(
          `${where}: field not in the official snapshot and not allow-listed` +
            (clash ? ` (official #${ourShape.number} is ${clash.name})` : ''),
        );
        continue;
      }
      problems.push(...diffShape(where, ourShape, fieldShape(offField), 'official'));
    }
    // A number we reserve must be one the official message reserves or uses (a deliberately omitted field).
    for (const range of type.reserved ?? []) {
      if (typeof range === 'string') continue;
      for (let id = range[0]!; id <= Math.min(range[1]!, range[0]! + 1000); id++) {
        if (!isReservedNumber(off, id) && !offById.has(id)) problems.push(`${name}: reserves #${id}, unknown to the official message`);
      }
    }
  }

  for (const [name, en] of mine.enums) {
    const off = lookupEnum(official, name);
    const enumAllowedWhole = allowedMessages.has(name.split('.').slice(0, -1).join('.'));
    if (!off) {
      if (!enumAllowedWhole) problems.push(`${name}: enum not found in the official snapshot`);
      continue;
    }
    for (const [value, number] of Object.entries(en.values)) {
      const where = `${name}.${value}`;
      const allowed = allowedValues.get(where);
      const offNumber = off.values[value];
      if (allowed) {
        usedAllowances.add(`enum value ${where}`);
        if (offNumber !== undefined) problems.push(`${where}: allow-listed as absent, but the official snapshot has it (= ${offNumber})`);
        const clash = off.valuesById[number];
        if (clash !== undefined) problems.push(`${where}: = ${number} is official ${name}.${clash} in the snapshot`);
        if (number !== allowed.number) problems.push(`${where}: ours = ${number}, allow-list (${allowed.ref}) = ${allowed.number}`);
        continue;
      }
      if (offNumber === undefined) problems.push(`${where}: enum value not in the official snapshot and not allow-listed`);
      else if (offNumber !== number) problems.push(`${where}: number differs: ours = ${number}, official = ${offNumber}`);
    }
  }

  for (const [name, svc] of mine.services) {
    const off = official.lookup(name);
    if (!(off instanceof protobuf.Service)) {
      problems.push(`${name}: service not found in the official snapshot`);
      continue;
    }
    for (const [mname, method] of Object.entries(svc.methods)) {
      const offMethod = off.methods[mname];
      if (!offMethod) {
        problems.push(`${name}/${mname}: method not in the official service`);
        continue;
      }
      const a = methodShape(method);
      const b = methodShape(offMethod);
      for (const key of Object.keys(a) as (keyof MethodShape)[]) {
        if (a[key] !== b[key]) problems.push(`${name}/${mname}: ${key} differs: ours ${a[key]}, official ${b[key]}`);
      }
    }
  }

  // Every allow-list entry must still describe something that exists in ours (the list cannot rot).
  for (const m of allow.messages) {
    if (!usedAllowances.has(`message ${m.message}`)) problems.push(`allow-list: message ${m.message} is not in ours`);
  }
  for (const f of allow.fields) {
    const key = `${f.message}.${f.field}`;
    if (!usedAllowances.has(`field ${key}`)) problems.push(`allow-list: field ${key} is not in ours (or its message is unknown)`);
  }
  for (const v of allow.enumValues) {
    const key = `${v.enum}.${v.value}`;
    if (!usedAllowances.has(`enum value ${key}`)) problems.push(`allow-list: enum value ${key} is not in ours`);
  }
  return problems;
}
