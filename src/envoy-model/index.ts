// A model of Envoy's side of an ext_proc call: the HTTP filter (ported from Envoy's ext_proc.cc and
// processor_state.cc), the header map and mutation rules, and one HTTP request around the filter.
// The tests and the bench drive the server through it over gRPC (test/envoy/); `explain` drives the
// server's CallProcessor in the same process (in-process.ts). One model, two transports.
//
// Layout: config.ts (filter fields, versions, mode_override rules), headers.ts (header map, mutation
// rules), filter.ts + processor-state.ts (the ext_proc filter), http-stream.ts (one HTTP request around
// the filter), values.ts (Struct conversion), transport.ts (the side stream interface).
import type { FilterConfig, ModelOptions } from './config.js';
import { resolveConfig } from './config.js';
import type { Outcome, SimulatedRequest } from './http-stream.js';
import { HttpStream } from './http-stream.js';
import type { Transport } from './transport.js';

export type { BodyArrival, BodySendMode, ModelOptions, PerRouteConfig, ProcessingModeConfig } from './config.js';
export type { Counters, StreamCloseReason, TranscriptEntry } from './filter.js';
export type { HeaderList, MutationRules } from './headers.js';
export type {
  BodyInput,
  DownstreamResponse,
  Outcome,
  OutcomeBase,
  ResponseSource,
  ResponseSpec,
  SimulatedRequest,
  UpstreamRequest,
} from './http-stream.js';
export type { SideStreamHandle, StreamEvents, Transport } from './transport.js';

/** One configured Envoy: simulates HTTP requests through its ext_proc filter over `transport`. */
export class EnvoyModel {
  readonly config: FilterConfig;

  constructor(
    private readonly options: ModelOptions,
    private readonly transport: Transport,
  ) {
    this.config = resolveConfig(options);
  }

  /** Simulates one HTTP request (and, with `response`, its response) through the ext_proc filter. */
  request(request: SimulatedRequest): Promise<Outcome> {
    const stream = new HttpStream(
      {
        config: this.config,
        transport: this.transport,
        initialMetadata: this.options.initialMetadata ?? [],
        bodyArrival: this.options.bodyArrival ?? 'after-headers-response',
        hcmHeaders: this.options.hcmHeaders ?? true,
        stallTimeoutMs: this.options.stallTimeoutMs ?? 10_000,
      },
      request,
    );
    return stream.run(request);
  }
}
