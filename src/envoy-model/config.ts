// Configuration of the emulated ext_proc filter: the Envoy ExternalProcessor fields (camelCase), the
// version switches, and the ProcessingMode rules (docs/envoy-ext-proc.md#processing-modes and #mode_override).
import type { ForwardRules, HeaderList, MutationRules } from './headers.js';

export type HeaderSendMode = 'DEFAULT' | 'SEND' | 'SKIP';
export type BodySendMode = 'NONE' | 'STREAMED' | 'BUFFERED' | 'BUFFERED_PARTIAL' | 'FULL_DUPLEX_STREAMED';

/** envoy.extensions.filters.http.ext_proc.v3.ProcessingMode, camelCase. Omitted = proto default. */
export interface ProcessingModeConfig {
  requestHeaderMode?: HeaderSendMode;
  responseHeaderMode?: HeaderSendMode;
  requestBodyMode?: BodySendMode;
  responseBodyMode?: BodySendMode;
  requestTrailerMode?: HeaderSendMode;
  responseTrailerMode?: HeaderSendMode;
}

/** A ProcessingMode with every field present (proto3 defaults filled in: DEFAULT / NONE). */
export type FullProcessingMode = Required<ProcessingModeConfig>;

/** ExtProcPerRoute, as returned by the `perRoute` hook for the request's route (docs/envoy-ext-proc.md#per-route-settings). */
export interface PerRouteConfig {
  /** Header modes SKIP, bodies NONE, trailers off: no gRPC stream at all. */
  disabled?: true;
  /** Replaces the whole processing mode for this route (omitted header modes = DEFAULT = SEND). */
  processingMode?: ProcessingModeConfig;
  /** Per-route failure_mode_allow (Envoy >= 1.35). */
  failureModeAllow?: boolean;
  /** Merged by key into the gRPC initial metadata. */
  grpcInitialMetadata?: HeaderList;
}

/** How one Envoy is set up: its ext_proc filter and the parts of the HTTP connection manager around it. */
export interface ModelOptions {
  /** Emulated Envoy version, 'MAJOR.MINOR' (patch ignored). Default '1.40'. */
  envoyVersion?: string;
  /** Filter-level processing_mode. Default: all fields unset (headers sent, bodies NONE, trailers off). */
  processingMode?: ProcessingModeConfig;
  allowModeOverride?: boolean;
  allowedOverrideModes?: ProcessingModeConfig[];
  /** message_timeout, default 200 ms; 0 fires immediately. */
  messageTimeoutMs?: number;
  /** max_message_timeout, default 0 (override_message_timeout disabled). */
  maxMessageTimeoutMs?: number;
  failureModeAllow?: boolean;
  /** status_on_error (Envoy >= 1.36; earlier Envoy always used 500). Default 500. */
  statusOnError?: number;
  mutationRules?: MutationRules;
  routeCacheAction?: 'DEFAULT' | 'CLEAR' | 'RETAIN';
  /** Deprecated twin of routeCacheAction RETAIN. */
  disableClearRouteCache?: boolean;
  disableImmediateResponse?: boolean;
  sendBodyWithoutWaitingForHeaderResponse?: boolean;
  /** metadata_options.receiving_namespaces.untyped. Default: none (dynamic metadata dropped). */
  receivingNamespaces?: string[];
  /** metadata_options.forwarding_namespaces.untyped: stream metadata sent in metadata_context. */
  forwardingNamespaces?: string[];
  forwardRules?: ForwardRules;
  /** request_attributes / response_attributes (a small built-in evaluator, see attributes.ts). */
  requestAttributes?: string[];
  responseAttributes?: string[];
  /** The stream buffer limit (per_connection_buffer_limit_bytes), default 1 MiB. */
  bufferLimitBytes?: number;
  /** HCM max_headers_count (default 100) and max_request_headers_kb (default 60). */
  maxHeadersCount?: number;
  maxHeadersKb?: number;
  /** allow_content_length_header (Envoy >= 1.38). */
  allowContentLengthHeader?: boolean;
  /** GrpcService.initial_metadata. */
  initialMetadata?: HeaderList;
  /** Route-level ExtProcPerRoute, chosen from the original request headers. */
  perRoute?: (requestHeaders: HeaderList) => PerRouteConfig | undefined;
  /**
   * When a message's body arrives relative to the headers response (Envoy cannot know; the client
   * decides). 'after-headers-response' (default): each chunk reaches the filter after the headers
   * response was handled, so STREAMED sends one message per chunk. 'with-headers': the whole body is
   * already there while the headers response is pending; Envoy then holds it and, for any body mode
   * but NONE, sends it as ONE message (processor_state.cc handleHeadersResponse, "all the body data
   * came in before the header message was complete"). FULL_DUPLEX_STREAMED and STREAMED with
   * send_body_without_waiting_for_header_response never hold data, so for them both mean "at once".
   */
  bodyArrival?: BodyArrival;
  /** Add the HCM's x-request-id and x-forwarded-proto to requests (default true). */
  hcmHeaders?: boolean;
  /** Runtime guards; the defaults follow envoyVersion. */
  runtime?: {
    /** envoy.reloadable_features.ext_proc_fail_close_spurious_resp (default true from 1.35). */
    failCloseSpuriousResp?: boolean;
    /** envoy.reloadable_features.ext_proc_stream_close_optimization (default true from 1.37). */
    streamCloseOptimization?: boolean;
  };
  /**
   * Not Envoy: keep every message and note in the outcome's transcript (default true). A load generator
   * turns it off: the filter behaves the same, the outcome's transcript is empty.
   */
  transcript?: boolean;
  /**
   * Not Envoy: if a simulated request makes no progress for this long (a state in which real Envoy
   * would hang, e.g. FULL_DUPLEX without an answer), request() rejects. Default 10 s; 0 = no watchdog.
   */
  stallTimeoutMs?: number;
}

export type BodyArrival = 'after-headers-response' | 'with-headers';

/** Version-dependent behaviour (docs/envoy-ext-proc.md#version-history), decided once per emulator. */
export interface VersionFeatures {
  version: [number, number];
  /** 1.27: raw_value instead of value (>= 1.32: the only code path). */
  rawValue: boolean;
  /** 1.32: allowed_override_modes, send_body_without_waiting_for_header_response. */
  allowedOverrideModes: boolean;
  /** 1.34: protocol_config on the first message; DEFAULT-preserving mode_override; FULL_DUPLEX. */
  protocolConfig: boolean;
  modeOverrideKeepsDefaults: boolean;
  fullDuplex: boolean;
  /** 1.35: BUFFERED body held during the headers call counts against the buffer limit (413). */
  bufferedOverflowWhileWaiting: boolean;
  /** 1.35: spurious responses fail closed unless failure_mode_allow (PR #39994). */
  spuriousFailsClosed: boolean;
  /** 1.35: ExtProcOverrides.failure_mode_allow per route. */
  perRouteFailureModeAllow: boolean;
  /** 1.36: status_on_error. */
  statusOnError: boolean;
  /** 1.37: early stream close (PR #41425). */
  earlyClose: boolean;
  /** 1.38: allow_content_length_header. */
  allowContentLengthHeader: boolean;
}

export function parseVersion(text: string): [number, number] {
  const m = /^v?(\d+)\.(\d+)(?:\.\d+)?$/.exec(text.trim());
  if (!m) throw new Error(`envoyVersion must look like '1.40' (got '${text}')`);
  return [Number(m[1]), Number(m[2])];
}

export function versionFeatures(text: string): VersionFeatures {
  const version = parseVersion(text);
  const atLeast = (minor: number) => version[0] > 1 || (version[0] === 1 && version[1] >= minor);
  return {
    version,
    rawValue: atLeast(27),
    allowedOverrideModes: atLeast(32),
    protocolConfig: atLeast(34),
    modeOverrideKeepsDefaults: atLeast(34),
    fullDuplex: atLeast(34),
    bufferedOverflowWhileWaiting: atLeast(35),
    spuriousFailsClosed: atLeast(35),
    perRouteFailureModeAllow: atLeast(35),
    statusOnError: atLeast(36),
    earlyClose: atLeast(37),
    allowContentLengthHeader: atLeast(38),
  };
}

export function fullMode(mode: ProcessingModeConfig | undefined): FullProcessingMode {
  return {
    requestHeaderMode: mode?.requestHeaderMode ?? 'DEFAULT',
    responseHeaderMode: mode?.responseHeaderMode ?? 'DEFAULT',
    requestBodyMode: mode?.requestBodyMode ?? 'NONE',
    responseBodyMode: mode?.responseBodyMode ?? 'NONE',
    requestTrailerMode: mode?.requestTrailerMode ?? 'DEFAULT',
    responseTrailerMode: mode?.responseTrailerMode ?? 'DEFAULT',
  };
}

/** The emulator's resolved configuration (defaults filled in, validated against the version). */
export interface FilterConfig {
  features: VersionFeatures;
  processingMode: FullProcessingMode;
  allowModeOverride: boolean;
  allowedOverrideModes: FullProcessingMode[];
  messageTimeoutMs: number;
  maxMessageTimeoutMs: number;
  failureModeAllow: boolean;
  statusOnError: number;
  mutationRules: MutationRules;
  routeCacheAction: 'DEFAULT' | 'CLEAR' | 'RETAIN';
  disableImmediateResponse: boolean;
  sendBodyWithoutWaitingForHeaderResponse: boolean;
  receivingNamespaces: string[];
  forwardingNamespaces: string[];
  forwardRules: ForwardRules;
  requestAttributes: string[];
  responseAttributes: string[];
  bufferLimitBytes: number;
  maxHeadersCount: number;
  maxHeadersKb: number;
  allowContentLengthHeader: boolean;
  failCloseSpuriousResp: boolean;
  streamCloseOptimization: boolean;
  transcript: boolean;
  perRoute?: (requestHeaders: HeaderList) => PerRouteConfig | undefined;
}

export function resolveConfig(options: ModelOptions): FilterConfig {
  const features = versionFeatures(options.envoyVersion ?? '1.40');
  const processingMode = fullMode(options.processingMode);
  const usesFullDuplex = [processingMode.requestBodyMode, processingMode.responseBodyMode].includes('FULL_DUPLEX_STREAMED');
  if (usesFullDuplex && !features.fullDuplex) throw new Error('FULL_DUPLEX_STREAMED needs envoyVersion >= 1.34');
  if (options.allowContentLengthHeader && !features.allowContentLengthHeader) {
    throw new Error('allowContentLengthHeader needs envoyVersion >= 1.38');
  }
  if (options.statusOnError !== undefined && options.statusOnError !== 500 && !features.statusOnError) {
    throw new Error('statusOnError needs envoyVersion >= 1.36');
  }
  if (options.disableClearRouteCache && options.routeCacheAction && options.routeCacheAction !== 'DEFAULT') {
    throw new Error('disable_clear_route_cache and route_cache_action can not be set to none-default at the same time.');
  }
  return {
    features,
    processingMode,
    allowModeOverride: options.allowModeOverride ?? false,
    allowedOverrideModes: (options.allowedOverrideModes ?? []).map(fullMode),
    messageTimeoutMs: options.messageTimeoutMs ?? 200,
    maxMessageTimeoutMs: options.maxMessageTimeoutMs ?? 0,
    failureModeAllow: options.failureModeAllow ?? false,
    statusOnError: options.statusOnError ?? 500,
    mutationRules: options.mutationRules ?? {},
    routeCacheAction: options.disableClearRouteCache ? 'RETAIN' : (options.routeCacheAction ?? 'DEFAULT'),
    disableImmediateResponse: options.disableImmediateResponse ?? false,
    sendBodyWithoutWaitingForHeaderResponse: options.sendBodyWithoutWaitingForHeaderResponse ?? false,
    receivingNamespaces: options.receivingNamespaces ?? [],
    forwardingNamespaces: options.forwardingNamespaces ?? [],
    forwardRules: options.forwardRules ?? {},
    requestAttributes: options.requestAttributes ?? [],
    responseAttributes: options.responseAttributes ?? [],
    bufferLimitBytes: options.bufferLimitBytes ?? 1024 * 1024,
    maxHeadersCount: options.maxHeadersCount ?? 100,
    maxHeadersKb: options.maxHeadersKb ?? 60,
    allowContentLengthHeader: options.allowContentLengthHeader ?? false,
    failCloseSpuriousResp: options.runtime?.failCloseSpuriousResp ?? features.spuriousFailsClosed,
    streamCloseOptimization: options.runtime?.streamCloseOptimization ?? features.earlyClose,
    transcript: options.transcript ?? true,
    perRoute: options.perRoute,
  };
}

// ---- mode_override (docs/envoy-ext-proc.md#mode_override) ---------------------------------------

/**
 * effectiveModeOverride (ext_proc.cc, PR #38254, 1.34): start from the FILTER-level mode; header and
 * trailer modes replace it only when not DEFAULT; both body modes always come from the override (an
 * omitted body mode is NONE). Before 1.34 the override replaced the whole mode.
 */
export function effectiveModeOverride(override: FullProcessingMode, filterLevel: FullProcessingMode, keepDefaults: boolean): FullProcessingMode {
  if (!keepDefaults) return { ...override };
  const pick = (o: HeaderSendMode, base: HeaderSendMode) => (o !== 'DEFAULT' ? o : base);
  return {
    requestHeaderMode: pick(override.requestHeaderMode, filterLevel.requestHeaderMode),
    responseHeaderMode: pick(override.responseHeaderMode, filterLevel.responseHeaderMode),
    requestTrailerMode: pick(override.requestTrailerMode, filterLevel.requestTrailerMode),
    responseTrailerMode: pick(override.responseTrailerMode, filterLevel.responseTrailerMode),
    requestBodyMode: override.requestBodyMode,
    responseBodyMode: override.responseBodyMode,
  };
}

/**
 * allowed_override_modes: the effective mode must equal one entry field by field, comparing the raw
 * enum values (DEFAULT != SEND, docs/envoy-ext-proc.md#mode_override). request_header_mode is ignored since 1.34 (PR #38393).
 */
export function overrideAllowed(mode: FullProcessingMode, allowed: FullProcessingMode[], ignoreRequestHeaderMode: boolean): boolean {
  if (allowed.length === 0) return true;
  return allowed.some(
    (other) =>
      (ignoreRequestHeaderMode || mode.requestHeaderMode === other.requestHeaderMode) &&
      mode.requestBodyMode === other.requestBodyMode &&
      mode.requestTrailerMode === other.requestTrailerMode &&
      mode.responseHeaderMode === other.responseHeaderMode &&
      mode.responseBodyMode === other.responseBodyMode &&
      mode.responseTrailerMode === other.responseTrailerMode,
  );
}

/** Decodes a mode_override as proto-loader gives it (enum names, or numbers for unknown values). */
export function modeFromWire(wire: Record<string, unknown>): FullProcessingMode {
  const headerNames: HeaderSendMode[] = ['DEFAULT', 'SEND', 'SKIP'];
  const bodyNames: BodySendMode[] = ['NONE', 'STREAMED', 'BUFFERED', 'BUFFERED_PARTIAL', 'FULL_DUPLEX_STREAMED'];
  const header = (v: unknown): HeaderSendMode => (typeof v === 'number' ? headerNames[v] : (v as HeaderSendMode)) ?? 'DEFAULT';
  const body = (v: unknown): BodySendMode => (typeof v === 'number' ? bodyNames[v] : (v as BodySendMode)) ?? 'NONE';
  return {
    requestHeaderMode: header(wire.request_header_mode),
    responseHeaderMode: header(wire.response_header_mode),
    requestBodyMode: body(wire.request_body_mode),
    responseBodyMode: body(wire.response_body_mode),
    requestTrailerMode: header(wire.request_trailer_mode),
    responseTrailerMode: header(wire.response_trailer_mode),
  };
}
