// The body strategies a call chooses between at the request headers. Each owns what it holds and
// answers every request_body message itself; the call only routes messages to it.
import { bodyResponse, streamedBodyResponse, type Direction } from '../mutations.js';
import type { BodySendMode, HttpBody, ProcessingResponse } from '../proto.js';
import type { CallResult } from './outcomes.js';
import type { BodyRequest } from './request.js';

export interface BodyStrategy {
  /** The answers to one request_body message, in order. */
  onBody(message: HttpBody): ProcessingResponse[];
  /**
   * Answers that must precede the request trailers answer: in FULL_DUPLEX_STREAMED, whatever is still
   * held goes upstream here, because trailers end the body without an end_of_stream chunk.
   */
  beforeTrailers(): ProcessingResponse[];
  /** The call is over: let go of everything. Idempotent. */
  close(): void;
  /** The outcome of a call that ends before this strategy decided one. */
  undecided(): CallResult;
}

/**
 * The answer to a body message the call does not edit. In FULL_DUPLEX_STREAMED Envoy has already drained
 * the original bytes, so they must be sent back; in every other mode a bare CONTINUE keeps them.
 */
export function passBody(mode: BodySendMode | undefined, direction: Direction, message: HttpBody): ProcessingResponse {
  if (mode === 'FULL_DUPLEX_STREAMED') return streamedBodyResponse(direction, message.body, message.end_of_stream);
  return bodyResponse(direction);
}

/** Bodies the call leaves alone: each message is passed on as it came. */
export class PassThrough implements BodyStrategy {
  constructor(private readonly mode: BodySendMode | undefined) {}

  onBody(message: HttpBody): ProcessingResponse[] {
    return [passBody(this.mode, 'request', message)];
  }

  beforeTrailers(): ProcessingResponse[] {
    return [];
  }

  close(): void {}

  undecided(): CallResult {
    return { kind: 'passed', reason: 'call_ended' };
  }
}

/** A body strategy's outcome when the call ends first: the body never came, or it was cut off. */
export function undecidedBody(request: BodyRequest): CallResult {
  return { kind: 'passed', reason: request.bytesIn === 0 ? 'body_not_sent' : 'call_ended', route: request.plan.route };
}
