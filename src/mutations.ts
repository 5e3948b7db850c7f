// Decisions -> Envoy wire format, in one place: callers decide what changes; raw_value and append are set only here.
// - Header values go in raw_value only: Envoy >= 1.32 ignores `value`, and both set is a 500.
// - `append` is always explicit: ext_proc honours only that deprecated BoolValue, default overwrite.
//   Both: docs/envoy-ext-proc.md#header-mutations.
// - Untouched requests get a bare CONTINUE: a rebuilt body would wipe other filters' changes.
import type {
  BodySendMode,
  CommonResponse,
  HeaderMutation,
  ProcessingMode,
  ProcessingResponse,
  StructValue,
} from './proto.js';

export interface HeaderChanges {
  /** Headers to overwrite (or add). Keys are lower-cased. */
  set?: ReadonlyArray<readonly [string, string]>;
  /** Headers to remove. Envoy never removes `:`-prefixed headers or `host` (docs/envoy-ext-proc.md#mutation-rules). */
  remove?: readonly string[];
}

export function headerMutation(changes: HeaderChanges | undefined): HeaderMutation | undefined {
  const set = changes?.set ?? [];
  const remove = changes?.remove ?? [];
  if (set.length === 0 && remove.length === 0) return undefined;
  return {
    set_headers: set.map(([key, value]) => ({
      header: { key: key.toLowerCase(), raw_value: Buffer.from(value, 'latin1') },
      append: { value: false },
    })),
    remove_headers: remove.map((key) => key.toLowerCase()),
  };
}

/**
 * The first header whose new value Envoy would refuse: CR, LF and NUL are never valid in a header value
 * (RFC 9110 §5.5), and other control bytes but tab are rejected by HTTP/2 codecs. Undefined when all are safe.
 */
export function unsafeHeaderValue(changes: HeaderChanges | undefined): string | undefined {
  for (const [key, value] of changes?.set ?? []) {
    // eslint-disable-next-line no-control-regex
    if (/[\x00-\x08\x0a-\x1f\x7f]/.test(value)) return key;
  }
  return undefined;
}

export interface CommonChanges {
  headers?: HeaderChanges;
  /** Replacement body (whole buffered body, or this chunk's bytes in STREAMED mode). */
  body?: Buffer;
  /** Ask Envoy to recompute the route; only effective together with a header mutation
   * (docs/envoy-ext-proc.md#changing-the-path-and-the-route-cache). */
  clearRouteCache?: boolean;
}

function commonResponse(changes: CommonChanges = {}): CommonResponse {
  const response: CommonResponse = { status: 'CONTINUE' };
  const mutation = headerMutation(changes.headers);
  if (mutation) response.header_mutation = mutation;
  if (changes.body) {
    // An empty replacement is sent as clear_body so the intent is explicit on the wire (docs/envoy-ext-proc.md#body-mutations).
    response.body_mutation = changes.body.length === 0 ? { clear_body: true } : { body: changes.body };
  }
  if (changes.clearRouteCache && mutation) response.clear_route_cache = true;
  return response;
}

export type Direction = 'request' | 'response';

export function headersResponse(
  direction: Direction,
  changes?: CommonChanges,
  extras: { modeOverride?: ProcessingMode; dynamicMetadata?: StructValue } = {},
): ProcessingResponse {
  const common = { response: commonResponse(changes) };
  const base: ProcessingResponse =
    direction === 'request' ? { request_headers: common } : { response_headers: common };
  if (extras.modeOverride) base.mode_override = extras.modeOverride;
  if (extras.dynamicMetadata) base.dynamic_metadata = extras.dynamicMetadata;
  return base;
}

export function bodyResponse(
  direction: Direction,
  changes?: CommonChanges,
  extras: { dynamicMetadata?: StructValue } = {},
): ProcessingResponse {
  const common = { response: commonResponse(changes) };
  const base: ProcessingResponse = direction === 'request' ? { request_body: common } : { response_body: common };
  if (extras.dynamicMetadata) base.dynamic_metadata = extras.dynamicMetadata;
  return base;
}

/** FULL_DUPLEX_STREAMED answer: the bytes released so far for this direction (docs/envoy-ext-proc.md#full_duplex_streamed). */
export function streamedBodyResponse(
  direction: Direction,
  body: Buffer,
  endOfStream: boolean,
  extras: { dynamicMetadata?: StructValue } = {},
): ProcessingResponse {
  const common = {
    response: { status: 'CONTINUE' as const, body_mutation: { streamed_response: { body, end_of_stream: endOfStream } } },
  };
  const base: ProcessingResponse = direction === 'request' ? { request_body: common } : { response_body: common };
  if (extras.dynamicMetadata) base.dynamic_metadata = extras.dynamicMetadata;
  return base;
}

export function trailersResponse(direction: Direction): ProcessingResponse {
  return direction === 'request' ? { request_trailers: {} } : { response_trailers: {} };
}

/** A local reply in Azure's error shape, so clients parse it like any Azure error. Known failures become such
 * HTTP answers; anything unexpected ends the call with a gRPC error (docs/envoy-ext-proc.md#failures). */
export function azureErrorResponse(
  httpStatus: number,
  error: { message: string; type: string; code: string; param?: string | null },
  details: string,
): ProcessingResponse {
  const body = Buffer.from(JSON.stringify({ error: { message: error.message, type: error.type, param: error.param ?? null, code: error.code } }));
  return {
    immediate_response: {
      status: { code: httpStatus },
      headers: headerMutation({ set: [['content-type', 'application/json']] }),
      body,
      // Spaces become `_` in %RESPONSE_CODE_DETAILS% anyway (docs/envoy-ext-proc.md#local-replies); keep it a token.
      details: details.replace(/\s+/g, '_'),
    },
  };
}

/**
 * Content-Length after a request-body change (docs/envoy-ext-proc.md#content-length): Envoy keeps it only
 * in BUFFERED mode with request headers sent, and then answers 500 unless it matches the new body, so it is
 * set in the same body response. In every other mode Envoy drops `content-length` from set_headers itself, so setting it is
 * harmless there; it is only written when the request had one (a chunked request stays chunked).
 */
export function contentLengthFor(body: Buffer, requestHadContentLength: boolean): HeaderChanges | undefined {
  return requestHadContentLength ? { set: [['content-length', String(body.length)]] } : undefined;
}

/**
 * The mode_override that switches only the request body mode. Since Envoy 1.34 header and trailer modes
 * left DEFAULT keep the filter's configuration, but BOTH body modes are always taken from the override,
 * so the response body mode must be restated or it silently becomes NONE (docs/envoy-ext-proc.md#mode_override).
 */
export function requestBodyModeOverride(requestBodyMode: BodySendMode, configuredResponseBodyMode: BodySendMode): ProcessingMode {
  return { request_body_mode: requestBodyMode, response_body_mode: configuredResponseBodyMode };
}

/**
 * Dynamic metadata under one namespace. protobufjs encodes google.protobuf.Value with camelCase members
 * (`structValue`, `stringValue`); snake_case would be dropped silently (docs/envoy-ext-proc.md#loading-the-protos-in-node).
 * Envoy applies it only if the namespace is listed in metadata_options.receiving_namespaces.untyped
 * (docs/envoy-ext-proc.md#dynamic-metadata).
 */
export function metadataStruct(namespace: string, fields: Record<string, string | number | boolean>): StructValue {
  const values = Object.fromEntries(
    Object.entries(fields).map(([key, value]) => [
      key,
      typeof value === 'string' ? { stringValue: value } : typeof value === 'number' ? { numberValue: value } : { boolValue: value },
    ]),
  );
  return { fields: { [namespace]: { structValue: { fields: values } } } };
}
