// What the parts of one call share: the configuration snapshot it started with, what Envoy said about
// its processing mode, its budget lease and its record. Each part gets this scope, not the call.
import type { EditFailure } from '../body/index.js';
import type { Config } from '../config.js';
import type { ProtocolConfiguration } from '../proto.js';
import type { BudgetLease } from './lease.js';
import { bodyTooLarge, type PassReason, type Rejection } from './outcomes.js';
import type { CallRecord } from './record.js';

export interface CallScope {
  readonly config: Config;
  /** Envoy's processing modes (Envoy >= 1.34 sends them on the first message); undefined before. */
  readonly protocol: ProtocolConfiguration | undefined;
  readonly lease: BudgetLease;
  readonly record: CallRecord;
}

/** Room for the ProcessingRequest fields around a body in one gRPC message (headers are not resent). */
export const MESSAGE_OVERHEAD_BYTES = 64 * 1024;

/** The 413 when `limits.overLimit` is `reject`; undefined when over-limit bodies go on unchanged. */
export function overLimitRejection(config: Config): Rejection | undefined {
  return config.limits.overLimit === 'reject' ? bodyTooLarge(config.limits.maxBodyBytes) : undefined;
}

/** Why an editor stopped, as a pass reason. */
export function failureReason(failure: EditFailure | undefined): PassReason {
  switch (failure) {
    case 'too_deep':
      return 'nesting_too_deep';
    case 'held_too_large':
      return 'member_too_large';
    default:
      return 'invalid_body';
  }
}
