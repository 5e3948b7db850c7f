// The one place a call's outcome is written down, and the dynamic metadata that describes it. The first
// decision stands; a later `rewritten` replaces an undecided or header-time result only.
import { azureErrorResponse, metadataStruct } from '../mutations.js';
import type { ProcessingResponse, StructValue } from '../proto.js';
import type { ImageRoute } from '../routes.js';
import type { CallResult, PassReason, Rejection, RewriteReport } from './outcomes.js';

export class CallRecord {
  private value: CallResult | undefined;

  constructor(
    /** `metadataNamespace`: dynamic metadata is sent only when one is configured. */
    private readonly namespace: string | undefined,
    /** The request's `x-request-id`, to join our log line and metadata with Envoy's access log. */
    readonly requestId: string | undefined,
  ) {}

  get result(): CallResult | undefined {
    return this.value;
  }

  get decided(): boolean {
    return this.value !== undefined;
  }

  pass(reason: PassReason, route?: ImageRoute, detail?: string): void {
    this.value ??= { kind: 'passed', reason, ...(route ? { route } : {}), ...(detail ? { detail } : {}) };
  }

  rewritten(report: RewriteReport): void {
    this.value = { kind: 'rewritten', report };
  }

  /** Records the rejection and returns the local reply that carries it. */
  reject(rejection: Rejection, route: ImageRoute): ProcessingResponse {
    this.value = { kind: 'rejected', reason: rejection.reason, route };
    const { status, reason, ...error } = rejection;
    const response = azureErrorResponse(status, error, `azure_image_extproc_${reason}`);
    const metadata = this.metadata();
    return metadata ? { ...response, dynamic_metadata: metadata } : response;
  }

  /** Dynamic metadata describing the decision, for Envoy access logs; undefined until decided. */
  metadata(): StructValue | undefined {
    const result = this.value;
    if (!this.namespace || !result) return undefined;
    const route = result.kind === 'rewritten' ? result.report.route : result.route;
    const fields: Record<string, string | number> = { action: result.kind };
    if (this.requestId) fields.request_id = this.requestId;
    if (route) fields.route = route.kind;
    if (route?.kind === 'deployment') fields.deployment = route.deployment;
    if (result.kind === 'rewritten') {
      fields.changes = result.report.changes.join(',');
      fields.bytes_before = result.report.bytesIn;
      fields.bytes_after = result.report.bytesOut;
      if (result.report.stopped) fields.stopped = result.report.stopped;
    } else {
      fields.reason = result.reason;
    }
    return metadataStruct(this.namespace, fields);
  }

  /** `{ dynamicMetadata }` for the answer builders, once decided. */
  extras(): { dynamicMetadata?: StructValue } {
    const metadata = this.metadata();
    return metadata ? { dynamicMetadata: metadata } : {};
  }
}
