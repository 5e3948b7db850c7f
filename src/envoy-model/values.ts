// google.protobuf.Struct <-> plain JS, and the few CEL attributes the emulation can evaluate.
// protobufjs's bundled google.protobuf.Value uses camelCase members (structValue, stringValue, ...)
// even with keepCase (docs/envoy-ext-proc.md#loading-the-protos-in-node, docs/envoy-ext-proc.md#dynamic-metadata); snake_case members would be dropped silently.
import { loadProtos } from '../proto.js';
import type { HeaderMap } from './headers.js';

export interface WireValue {
  kind?: string;
  nullValue?: unknown;
  numberValue?: number;
  stringValue?: string;
  boolValue?: boolean;
  structValue?: WireStruct | null;
  listValue?: { values?: WireValue[] | null } | null;
}

export interface WireStruct {
  fields?: Record<string, WireValue> | null;
}

export function structToJs(struct: WireStruct | null | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(struct?.fields ?? {})) out[key] = valueToJs(value);
  return out;
}

export function valueToJs(value: WireValue | null | undefined): unknown {
  if (!value) return null;
  switch (value.kind) {
    case 'structValue':
      return structToJs(value.structValue);
    case 'listValue':
      return (value.listValue?.values ?? []).map(valueToJs);
    case 'stringValue':
      return value.stringValue;
    case 'numberValue':
      return value.numberValue;
    case 'boolValue':
      return value.boolValue;
    default:
      return null;
  }
}

export function jsToStruct(obj: Record<string, unknown>): WireStruct {
  const fields: Record<string, WireValue> = {};
  for (const [key, value] of Object.entries(obj)) fields[key] = jsToValue(value);
  return { fields };
}

export function jsToValue(value: unknown): WireValue {
  if (value === null || value === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof value === 'string') return { stringValue: value };
  if (typeof value === 'number') return { numberValue: value };
  if (typeof value === 'boolean') return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(jsToValue) } };
  if (typeof value === 'object') return { structValue: jsToStruct(value as Record<string, unknown>) };
  return { stringValue: String(value) };
}

/**
 * request_attributes / response_attributes: Envoy evaluates CEL expressions; the emulation knows a
 * handful of plain attribute names and omits the rest (Envoy omits attributes it cannot evaluate).
 */
export function evaluateAttributes(
  names: string[],
  ctx: { requestHeaders: HeaderMap; responseHeaders?: HeaderMap; requestId: string },
): Record<string, unknown> {
  const req = ctx.requestHeaders;
  const path = req.getString(':path') ?? '';
  const headerObject = (map: HeaderMap) => Object.fromEntries(map.toList());
  const known: Record<string, () => unknown> = {
    'request.path': () => path,
    'request.url_path': () => path.split('?')[0],
    'request.query': () => path.split('?')[1] ?? '',
    'request.host': () => req.getString(':authority'),
    'request.scheme': () => req.getString(':scheme'),
    'request.method': () => req.getString(':method'),
    'request.headers': () => headerObject(req),
    'request.referer': () => req.getString('referer'),
    'request.useragent': () => req.getString('user-agent'),
    'request.id': () => ctx.requestId,
    'request.protocol': () => 'HTTP/1.1',
    'response.code': () => (ctx.responseHeaders ? Number(ctx.responseHeaders.getString(':status')) : undefined),
    'response.headers': () => (ctx.responseHeaders ? headerObject(ctx.responseHeaders) : undefined),
  };
  const out: Record<string, unknown> = {};
  for (const name of names) {
    const value = known[name]?.();
    if (value !== undefined) out[name] = value;
  }
  return out;
}

let statusCodes: Map<string, number> | undefined;

/** type.v3.HttpStatus.code as decoded (enum name, or the number for values the proto does not list). */
export function statusCodeNumber(code: string | number): number {
  if (typeof code === 'number') return code;
  if (!statusCodes) {
    const v3 = (loadProtos() as unknown as { envoy: { type: { v3: { StatusCode: { type: { value: Array<{ name: string; number: number }> } } } } } }).envoy.type.v3;
    statusCodes = new Map(v3.StatusCode.type.value.map((v) => [v.name, v.number]));
  }
  return statusCodes.get(code) ?? (Number(code) || 0);
}
