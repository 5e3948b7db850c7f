// The whole-body strategy: Envoy sends the request body in one message (BUFFERED, BUFFERED_PARTIAL, or a
// mode it did not name), the call edits it at once and answers with the new body and the header changes
// that go with it. What it holds is the one message it answers; its budget reservation ends with it.
import { editJson, editMultipart, type EditOutcome } from '../body/index.js';
import { decompress } from '../encoding.js';
import { bodyResponse, contentLengthFor, unsafeHeaderValue } from '../mutations.js';
import type { HttpBody, ProcessingResponse } from '../proto.js';
import { pathFromBody, unwrapExtraBody } from '../rewrite.js';
import { invalidHeaderValue, type PassReason } from './outcomes.js';
import type { BodyRequest } from './request.js';
import { failureReason, MESSAGE_OVERHEAD_BYTES, overLimitRejection, type CallScope } from './scope.js';
import { undecidedBody, type BodyStrategy } from './strategy.js';

export type WholeBodyMode = 'BUFFERED' | 'BUFFERED_PARTIAL' | 'unknown';

export class WholeBody implements BodyStrategy {
  private seen = false;

  constructor(
    private readonly scope: CallScope,
    private readonly request: BodyRequest,
    readonly mode: WholeBodyMode,
  ) {}

  onBody(message: HttpBody): ProcessingResponse[] {
    const { request, scope } = this;
    request.bytesIn += message.body.length;
    if (this.seen) {
      // BUFFERED and BUFFERED_PARTIAL send one body message; anything after it flows unprocessed.
      request.bytesOut += message.body.length;
      return [bodyResponse('request')];
    }
    this.seen = true;
    const answer = this.answer(message);
    // The body is answered (grpc-js pauses reading while writes back up), yet Envoy keeps a BUFFERED call
    // open until the request ends or the response headers arrive: the reservation goes now, or every
    // image Azure is still generating would count against the budget.
    scope.lease.close();
    return [answer];
  }

  undecided() {
    return undecidedBody(this.request);
  }

  beforeTrailers(): ProcessingResponse[] {
    return [];
  }

  close(): void {}

  private answer(message: HttpBody): ProcessingResponse {
    const { request, scope } = this;
    const { config, lease } = scope;
    // A BUFFERED body with end_of_stream false is still whole (trailers follow); a partial or unknown-mode
    // body without end_of_stream may be cut anywhere, so it is not edited.
    if (!message.end_of_stream && this.mode !== 'BUFFERED') {
      return this.leave(message.body, this.mode === 'BUFFERED_PARTIAL' ? 'partial_body' : 'body_mode_unknown');
    }
    // Over maxBodyBytes, or (a body of unannounced size was not reserved at the headers; it is in memory
    // now) no room for it in the global budget: the overLimit policy.
    if (message.body.length > config.limits.maxBodyBytes || (lease.bytes === 0 && !lease.reserve(message.body.length))) {
      const rejection = overLimitRejection(config);
      if (rejection) return scope.record.reject(rejection, request.plan.route);
      return this.leave(message.body, 'too_large');
    }
    // The editors work on decoded bytes; a compressed body is only edited when Envoy applies the header
    // changes of a BUFFERED answer (content-encoding goes with it).
    if (request.encoding !== 'identity' && this.mode !== 'BUFFERED') return this.leave(message.body, 'content_encoding');
    return this.edit(message.body);
  }

  /** The body goes on as Envoy sent it (a bare CONTINUE); `reason` says why. */
  private leave(body: Buffer, reason: PassReason, detail?: string): ProcessingResponse {
    this.request.bytesOut += body.length;
    this.scope.record.pass(reason, this.request.plan.route, detail);
    return bodyResponse('request', undefined, this.scope.record.extras());
  }

  private edit(original: Buffer): ProcessingResponse {
    const { request, scope } = this;
    const { plan } = request;
    const { config, record } = scope;
    let body = original;
    if (request.encoding !== 'identity') {
      // The edited body goes back in one ext_proc message: one past maxMessageBytes would fail the call.
      const limit = Math.min(config.limits.maxDecompressedBytes, config.maxMessageBytes - MESSAGE_OVERHEAD_BYTES);
      const inflated = decompress(original, request.encoding, limit);
      if (!inflated) return this.leave(original, 'content_encoding', 'cannot decompress within limits');
      body = inflated;
    }
    // The body was decoded from this call's gRPC message and is not read again: edit it in place.
    const outcome: EditOutcome =
      request.bodyKind === 'json' ? editJson(body, plan.rules, { inPlace: true }) : editMultipart(body, request.boundary!, plan.rules, { inPlace: true });
    if (outcome.kind === 'unchanged' && plan.pathFromModel) {
      // The route names no deployment and the body has no `model` to name one: say so (400), as Azure would.
      const missing = pathFromBody(plan, config, [], request.bodyKind);
      if (missing !== undefined && typeof missing !== 'string') return record.reject(missing, plan.route);
    }
    if (outcome.kind !== 'edited') {
      const invalid = outcome.kind === 'invalid';
      // A rewrite that needed `model` from the body cannot happen without one: Azure's answer stays as it was.
      return this.leave(
        original,
        invalid ? failureReason(outcome.failure) : 'no_model',
        invalid ? outcome.reason : undefined,
      );
    }

    const path = pathFromBody(plan, config, outcome.touched, request.bodyKind);
    if (path !== undefined && typeof path !== 'string') return record.reject(path, plan.route);
    const edited = plan.unwrapExtraBody && request.bodyKind === 'json' ? unwrapExtraBody(outcome.body, outcome.touched) : outcome.body;

    const set: Array<readonly [string, string]> = [];
    const remove: string[] = [];
    if (path !== undefined) set.push([':path', path]);
    // Sent decompressed: the coding header goes, and content-length follows the new body.
    if (request.encoding !== 'identity') remove.push('content-encoding');
    set.push(...(contentLengthFor(edited, request.hadContentLength)?.set ?? []));
    const unsafe = unsafeHeaderValue({ set });
    if (unsafe) return record.reject(invalidHeaderValue(unsafe), plan.route);

    request.bytesOut += edited.length;
    record.rewritten({
      route: plan.route,
      bodyKind: request.bodyKind,
      mode: this.mode,
      bytesIn: body.length,
      bytesOut: request.bytesOut,
      changes: [...plan.actions, ...outcome.touched.map((field) => field.name), ...(path !== undefined ? ['path'] : [])],
      ...(request.encoding !== 'identity' ? { decompressed: { encoding: request.encoding, bytes: original.length } } : {}),
    });
    return bodyResponse('request', { body: edited, headers: { set, remove }, clearRouteCache: path !== undefined }, record.extras());
  }
}
