// What a call did, in one vocabulary: every reason a request passes unchanged or is refused, its metrics
// label (the key) and the explanation `explain` prints. Metrics, logs, dynamic metadata and explain all
// read these tables, so a new reason cannot be counted in one place and missing in another.
import type { BodySendMode } from '../proto.js';
import type { ImageRoute } from '../routes.js';

/** Why a request went upstream without a body edit; each key is an `extproc_requests_passed_total` label. */
export const PASS_REASONS = {
  not_image_route: 'not an image generation or edit route',
  not_rewritten_route: 'an image route this configuration leaves alone (see the rewrite.* options)',
  method: 'not a POST',
  no_body: 'the request has no body',
  content_type: 'the body is neither application/json nor multipart/form-data with a boundary',
  content_encoding:
    'the body is compressed in a way the server cannot edit here (stacked or unknown coding, over limits.maxDecompressedBytes, or not BUFFERED)',
  no_model: 'nothing in the body to change (no `model` or other configured field)',
  invalid_body: 'the body is not what its content-type says: forwarded unchanged, byte for byte',
  nesting_too_deep: 'the JSON body nests deeper than the editor follows: forwarded unchanged, byte for byte',
  member_too_large:
    'a member or part to edit is larger than the editor holds back (1 MiB): forwarded unchanged, byte for byte, so Azure still sees `model`',
  partial_body: 'Envoy sent only part of the body (BUFFERED_PARTIAL)',
  body_mode_unknown: 'Envoy sent no protocol_config (< 1.34): the body mode is unknown',
  body_not_sent:
    'the body never reached the server: Envoy was not asked for it (body mode NONE and no mode_override possible), or Envoy answered the request itself first (e.g. 413 past its buffer limit, a timeout)',
  needs_buffered_body:
    'this rewrite needs the whole body (deployment taken from `model`, compressed body, extra_body unwrap) but Envoy streams it: configure request_body_mode NONE with allow_mode_override, or BUFFERED',
  too_large: 'the body is over limits.maxBodyBytes or the memory budget (limits.overLimit: forward)',
  cut_by_trailers:
    'STREAMED: trailers ended a body that was still incomplete, and a trailers answer cannot carry the bytes held back (see docs/limits.md)',
  call_ended: 'the call ended before a decision',
} as const satisfies Record<string, string>;

export type PassReason = keyof typeof PASS_REASONS;

/** Reasons logged at warn: a body the server was asked to edit went upstream without the edit. */
export const UNEDITED_REASONS: ReadonlySet<PassReason> = new Set(['invalid_body', 'nesting_too_deep', 'member_too_large', 'cut_by_trailers']);

/** Why a request was answered locally, in Azure's error shape; each key is a `…_rejected_total` label. */
export const REJECT_REASONS = {
  invalid_deployment: 'the deployment name could leave its path segment, or no deployment is configured for `model`',
  missing_model: 'the route needs `model` in the body to choose a deployment and there is none',
  body_too_large: 'the body is over limits.maxBodyBytes or the memory budget and limits.overLimit is reject',
  invalid_header_value: 'a header value the rewrite would write contains CR, LF, NUL or another control byte',
} as const satisfies Record<string, string>;

export type RejectReason = keyof typeof REJECT_REASONS;

/** A request refused with a local reply in Azure's error shape. */
export interface Rejection {
  status: number;
  message: string;
  type: string;
  code: string;
  param?: string;
  /** Short token for %RESPONSE_CODE_DETAILS% and the metrics label. */
  reason: RejectReason;
}

export interface RewriteReport {
  route: ImageRoute;
  bodyKind: 'json' | 'multipart' | 'none';
  mode: BodySendMode | 'unknown' | 'headers';
  /** Body bytes before the edit (after inflating, for a compressed body: compare with bytesOut). */
  bytesIn: number;
  /** Body bytes forwarded upstream. */
  bytesOut: number;
  /** Body fields removed or replaced, and header-time actions (`alias`, `api_version`, `credentials`, `path`). */
  changes: string[];
  /** A compressed body inflated to be edited (it went upstream uncompressed): its coding and size as sent. */
  decompressed?: { encoding: string; bytes: number };
  /**
   * A streamed edit that stopped after bytes had already gone upstream changed: what stopped it. The
   * bytes before that point were edited, the rest went as it came.
   */
  stopped?: PassReason;
}

/** What the call did, reported once per call (for the log line and metrics). */
export type CallResult =
  | { kind: 'rewritten'; report: RewriteReport }
  | { kind: 'rejected'; reason: RejectReason; route: ImageRoute }
  | { kind: 'passed'; reason: PassReason; route?: ImageRoute; detail?: string };

/** The 413 for a body over the limits when `limits.overLimit` is `reject`. */
export function bodyTooLarge(maxBodyBytes: number): Rejection {
  return {
    status: 413,
    message: `The request body exceeds the ${maxBodyBytes} bytes this gateway edits, or the gateway is out of memory budget.`,
    type: 'invalid_request_error',
    code: 'request_too_large',
    reason: 'body_too_large',
  };
}

/** The 400 for a header value that would carry control bytes into a header mutation (Envoy answers 500 to one). */
export function invalidHeaderValue(header: string): Rejection {
  return {
    status: 400,
    message: `The request cannot be forwarded: the rewritten '${header}' header would contain a control character (CR, LF or NUL).`,
    type: 'invalid_request_error',
    code: 'invalid_value',
    param: header,
    reason: 'invalid_header_value',
  };
}
