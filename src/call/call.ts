// One ext_proc call = one HTTP request. Each Envoy message gets its answers, in protocol order
// (headers -> body -> trailers), and never after the end; in FULL_DUPLEX_STREAMED body answers carry the
// bytes released so far and may be fewer than the chunks. It never does I/O: the server writes what
// `handle` returns. At the request headers the call picks one body strategy, which owns the body.
import type { MemoryBudget } from '../budget.js';
import type { Config } from '../config.js';
import { headersResponse, trailersResponse } from '../mutations.js';
import type { HttpBody, ProcessingRequest, ProcessingResponse, ProtocolConfiguration } from '../proto.js';
import { decideAtHeaders } from './at-headers.js';
import { BudgetLease } from './lease.js';
import type { CallResult } from './outcomes.js';
import { CallRecord } from './record.js';
import { HeaderView } from './request.js';
import type { CallScope } from './scope.js';
import { passBody, PassThrough, type BodyStrategy } from './strategy.js';

/** A message that breaks the protocol: the call ends with a gRPC error, and Envoy's failure mode decides. */
export class ProtocolError extends Error {}

export interface CallContext {
  /** Global budget of held body bytes (absent: unbounded, e.g. in `explain`). */
  budget?: MemoryBudget;
  /** The API key for a request path (`credentials.apiKeyFile` / `apiKeyFiles`, src/credentials.ts), read at call time. */
  apiKey?: (pathname: string) => string | undefined;
}

const EMPTY_BODY: HttpBody = { body: Buffer.alloc(0), end_of_stream: false };

export class CallProcessor {
  private protocol: ProtocolConfiguration | undefined;
  private record: CallRecord | undefined;
  private strategy: BodyStrategy | undefined;
  private readonly lease: BudgetLease;
  private closed = false;

  constructor(
    private readonly config: Config,
    private readonly context: CallContext = {},
  ) {
    this.lease = new BudgetLease(context.budget);
  }

  /** The request's `x-request-id`, once the headers are in. */
  get requestId(): string | undefined {
    return this.record?.requestId;
  }

  /** The outcome when the call is over: an undecided body either never came or was cut off. */
  finalResult(): CallResult {
    return this.record?.result ?? this.strategy?.undecided() ?? { kind: 'passed', reason: 'call_ended' };
  }

  /** Releases everything the call holds; the server calls it when the call ends, however it ends. */
  close(): void {
    this.closed = true;
    this.strategy?.close();
    this.lease.close();
  }

  handle(message: ProcessingRequest): ProcessingResponse[] {
    if (this.closed) throw new ProtocolError('message after the call ended');
    // protocol_config arrives on the first message only (Envoy >= 1.34).
    if (message.protocol_config && !this.protocol) this.protocol = message.protocol_config;
    // In observability mode Envoy ignores answers; sending none is the documented contract.
    if (message.observability_mode) return [];

    switch (message.request) {
      case 'request_headers':
        return [this.onRequestHeaders(message)];
      case 'request_body':
        return this.body().onBody(message.request_body ?? EMPTY_BODY);
      case 'request_trailers':
        return [...this.body().beforeTrailers(), trailersResponse('request')];
      case 'response_headers':
        return [headersResponse('response')];
      case 'response_body':
        return [passBody(this.protocol?.response_body_mode, 'response', message.response_body ?? EMPTY_BODY)];
      case 'response_trailers':
        return [trailersResponse('response')];
      default:
        throw new ProtocolError('ProcessingRequest without a known request kind');
    }
  }

  private onRequestHeaders(message: ProcessingRequest): ProcessingResponse {
    if (this.record) throw new ProtocolError('request_headers received twice');
    const headersMessage = message.request_headers ?? { end_of_stream: false };
    const headers = new HeaderView(headersMessage.headers);
    this.record = new CallRecord(this.config.metadataNamespace, headers.get('x-request-id'));
    const scope: CallScope = { config: this.config, protocol: this.protocol, lease: this.lease, record: this.record };
    const decision = decideAtHeaders(scope, headersMessage, headers, { apiKey: this.context.apiKey ?? (() => undefined) });
    this.strategy = decision.strategy;
    return decision.answer;
  }

  /** The strategy for body and trailer messages; a body before any headers just passes. */
  private body(): BodyStrategy {
    this.strategy ??= new PassThrough(this.protocol?.request_body_mode);
    return this.strategy;
  }
}
