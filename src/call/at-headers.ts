// The request headers decide everything about a call: whether the request is ours, what changes at the
// headers, and which ONE body strategy handles the body (pass-through, whole body, streamed). With the
// recommended Envoy set-up (request body NONE, allow_mode_override) the call asks for the body: BUFFERED
// when small or when the edit needs the whole body, STREAMED when large or of unknown size. When Envoy
// already sends bodies, its mode is kept. Facts behind each rule: docs/envoy-ext-proc.md.
import { classifyBody } from '../body/index.js';
import { parseEncoding } from '../encoding.js';
import { headersResponse, requestBodyModeOverride, unsafeHeaderValue, type HeaderChanges } from '../mutations.js';
import type { BodySendMode, HttpHeaders, ProcessingMode, ProcessingResponse } from '../proto.js';
import { isHandled, isRejection, planRequest, routeFor, type RequestPlan } from '../rewrite.js';
import { invalidHeaderValue, type PassReason } from './outcomes.js';
import { announcedLength, HeaderView, type BodyRequest } from './request.js';
import { MESSAGE_OVERHEAD_BYTES, overLimitRejection, type CallScope } from './scope.js';
import { PassThrough, type BodyStrategy } from './strategy.js';
import { Streamed } from './streamed.js';
import { WholeBody } from './whole-body.js';

export interface HeadersDecision {
  answer: ProcessingResponse;
  strategy: BodyStrategy;
}

/** Header changes and whether they touch `:path` (then Envoy must pick the route again). */
interface Changes {
  headers?: HeaderChanges;
  clearRouteCache?: boolean;
}

export interface HeaderContext {
  /** The API key for a request path (`credentials.apiKeyFile` / `apiKeyFiles`, src/credentials.ts), read at call time. */
  apiKey: (pathname: string) => string | undefined;
}

export function decideAtHeaders(scope: CallScope, message: HttpHeaders, headers: HeaderView, context: HeaderContext): HeadersDecision {
  const { config, record } = scope;
  const passThrough = (): BodyStrategy => new PassThrough(scope.protocol?.request_body_mode);
  const route = routeFor(headers.get(':path') ?? '', config.rewrite);
  if (!route || !isHandled(route, config)) {
    record.pass(route ? 'not_rewritten_route' : 'not_image_route', route);
    return { answer: headersAnswer(scope, undefined, skipBodyOverride(scope)), strategy: passThrough() };
  }

  const plan = planRequest(config, { route, authorization: headers.get('authorization'), apiKey: context.apiKey });
  if (isRejection(plan)) return { answer: record.reject(plan, route), strategy: passThrough() };
  // Envoy answers 500 to a header mutation carrying CR, LF or NUL: such a request gets a clear 400 instead.
  const unsafe = unsafeHeaderValue(plan.headers);
  if (unsafe) return { answer: record.reject(invalidHeaderValue(unsafe), route), strategy: passThrough() };
  const pathChanged = plan.headers.set?.some(([key]) => key === ':path') ?? false;
  const changes: Changes = { headers: plan.headers, clearRouteCache: pathChanged };

  const refusal = refuseBody(plan, headers, message.end_of_stream);
  if (refusal) {
    if (pathChanged || plan.actions.length > 0) {
      record.rewritten({ route, bodyKind: 'none', mode: 'headers', bytesIn: 0, bytesOut: 0, changes: [...plan.actions] });
    } else {
      record.pass(refusal, route);
    }
    return { answer: headersAnswer(scope, changes, skipBodyOverride(scope)), strategy: passThrough() };
  }

  const body = classifyBody(headers.get('content-type'));
  const request: BodyRequest = {
    plan,
    bodyKind: body.kind === 'multipart' ? 'multipart' : 'json',
    ...(body.kind === 'multipart' ? { boundary: body.boundary } : {}),
    encoding: parseEncoding(headers.get('content-encoding'))!,
    hadContentLength: headers.has('content-length'),
    declaredLength: announcedLength(headers.get('content-length')),
    bytesIn: 0,
    bytesOut: 0,
  };
  return chooseBodyStrategy(scope, request, changes);
}

/** Why the body of a handled request is not edited, or undefined when it is. */
function refuseBody(plan: RequestPlan, headers: HeaderView, endOfStream: boolean): PassReason | undefined {
  if (headers.get(':method')?.toUpperCase() !== 'POST') return 'method';
  // No body => Envoy never sends a body message, whatever the mode.
  if (endOfStream) return 'no_body';
  if (plan.rules.size === 0) return 'no_model';
  if (classifyBody(headers.get('content-type')).kind === 'other') return 'content_type';
  if (parseEncoding(headers.get('content-encoding')) === undefined) return 'content_encoding';
  return undefined;
}

function chooseBodyStrategy(scope: CallScope, request: BodyRequest, changes: Changes): HeadersDecision {
  const { config, lease, protocol } = scope;
  const route = request.plan.route;
  const declared = request.declaredLength;
  const needsWhole = needsWholeBody(request);
  const giveUp = (reason: PassReason): HeadersDecision => {
    scope.record.pass(reason, route);
    return { answer: headersAnswer(scope, changes, skipBodyOverride(scope)), strategy: new PassThrough(protocol?.request_body_mode) };
  };
  const overLimit = (): HeadersDecision => {
    const rejection = overLimitRejection(config);
    if (rejection) return { answer: scope.record.reject(rejection, route), strategy: new PassThrough(protocol?.request_body_mode) };
    return giveUp('too_large');
  };

  if (declared !== undefined && declared > config.limits.maxBodyBytes) return overLimit();
  const configured = protocol?.request_body_mode;
  // A whole body arrives as one ext_proc message (static BUFFERED sends every body so): one above
  // maxMessageBytes would fail the gRPC call.
  const whole = needsWhole || configured === 'BUFFERED';
  const wholeLimit = Math.min(config.limits.maxBodyBytes, config.maxMessageBytes - MESSAGE_OVERHEAD_BYTES);
  if (whole && declared !== undefined && declared > wholeLimit) return overLimit();

  if (configured === undefined) {
    // Envoy < 1.34 sends no protocol_config: its mode is unknown, and mode_override semantics differ.
    // Header changes in a body answer only count in BUFFERED mode, so edits that need them are off.
    if (needsWhole) return giveUp('body_mode_unknown');
    return { answer: headersAnswer(scope, changes), strategy: new WholeBody(scope, request, 'unknown') };
  }
  if (configured !== 'NONE') {
    if (needsWhole && configured !== 'BUFFERED') return giveUp('needs_buffered_body');
    return { answer: headersAnswer(scope, changes), strategy: strategyFor(scope, request, configured) };
  }
  if (!overridable(scope)) {
    scope.record.pass('body_not_sent', route);
    return { answer: headersAnswer(scope, changes), strategy: new PassThrough(configured) };
  }

  let mode: 'BUFFERED' | 'STREAMED' = declared !== undefined && declared <= config.streamThresholdBytes ? 'BUFFERED' : 'STREAMED';
  if (needsWhole) mode = 'BUFFERED';
  // A whole body is held in memory: reserve it from the global budget first.
  if (mode === 'BUFFERED' && declared !== undefined && !lease.reserve(declared)) {
    if (needsWhole) return overLimit();
    mode = 'STREAMED';
  }
  // Overriding NONE -> STREAMED leaves the original content-length in place (Envoy decided to keep it
  // before our answer) yet blocks setting it later, so it must go now as the length may change.
  const headers: HeaderChanges =
    mode === 'STREAMED' && request.hadContentLength
      ? { set: changes.headers?.set ?? [], remove: [...(changes.headers?.remove ?? []), 'content-length'] }
      : (changes.headers ?? {});
  return {
    answer: headersAnswer(scope, { ...changes, headers }, requestBodyModeOverride(mode, protocol!.response_body_mode)),
    strategy: strategyFor(scope, request, mode),
  };
}

function strategyFor(scope: CallScope, request: BodyRequest, mode: BodySendMode): BodyStrategy {
  if (mode === 'STREAMED' || mode === 'FULL_DUPLEX_STREAMED') return new Streamed(scope, request, mode);
  return new WholeBody(scope, request, mode === 'BUFFERED_PARTIAL' ? 'BUFFERED_PARTIAL' : 'BUFFERED');
}

/** Edits that need the complete body: a path taken from `model`, a compressed body, unwrapping extra_body. */
function needsWholeBody(request: BodyRequest): boolean {
  const { plan } = request;
  return plan.pathFromModel || request.encoding !== 'identity' || (plan.unwrapExtraBody && request.bodyKind === 'json');
}

/** mode_override is honoured only under these conditions; whether allow_mode_override is on is unknowable. */
function overridable(scope: CallScope): boolean {
  const protocol = scope.protocol;
  if (!protocol || protocol.send_body_without_waiting_for_header_response) return false;
  return protocol.request_body_mode !== 'FULL_DUPLEX_STREAMED' && protocol.response_body_mode !== 'FULL_DUPLEX_STREAMED';
}

/** For requests not edited while Envoy is configured to send bodies: ask it to stop (no buffering). */
function skipBodyOverride(scope: CallScope): ProcessingMode | undefined {
  const configured = scope.protocol?.request_body_mode;
  if (!configured || configured === 'NONE' || !overridable(scope)) return undefined;
  return requestBodyModeOverride('NONE', scope.protocol!.response_body_mode);
}

function headersAnswer(scope: CallScope, changes?: Changes, modeOverride?: ProcessingMode): ProcessingResponse {
  return headersResponse('request', changes, { ...(modeOverride ? { modeOverride } : {}), ...scope.record.extras() });
}

