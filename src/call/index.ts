export { CallProcessor, ProtocolError, type CallContext } from './call.js';
export { PASS_REASONS, REJECT_REASONS, UNEDITED_REASONS } from './outcomes.js';
export type { CallResult, PassReason, RejectReason, Rejection, RewriteReport } from './outcomes.js';
export { HeaderView, announcedLength } from './request.js';
