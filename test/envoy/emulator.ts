// EnvoyEmulator: Envoy's ext_proc HTTP filter acting as the gRPC client of an ext_proc server, one
// Process() call per simulated HTTP request. No Envoy binary is available on the build machines, so the
// integration tests drive the server through this emulation; it follows
// /work/shared/reference/ENVOY-EXTPROC.md (§2-§6, the pitfalls P1-P25 and the §8 checklist).
//
//   const envoy = new EnvoyEmulator({ target: `127.0.0.1:${port}`, processingMode: { requestBodyMode: 'BUFFERED' } });
//   const outcome = await envoy.request({ headers: [[':method', 'POST'], [':path', '/x']], body: Buffer.from('{}') });
//   envoy.close();
//
// Layout: config.ts (filter fields, versions, mode_override rules), headers.ts (header map, mutation
// rules), filter.ts + processor-state.ts (the ext_proc filter, ported from Envoy's ext_proc.cc and
// processor_state.cc), http-stream.ts (one HTTP request around the filter), grpc-stream.ts
// (connections and Envoy's stream close), data-path.ts (a real HTTP front), fixtures.ts (test helpers).
import type { EmulatorOptions, FilterConfig } from './config.js';
import { resolveConfig } from './config.js';
import { ConnectionPool } from './grpc-stream.js';
import type { Outcome, SimulatedRequest } from './http-stream.js';
import { HttpStream } from './http-stream.js';

export type { BodyArrival, EmulatorOptions, PerRouteConfig, ProcessingModeConfig } from './config.js';
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

export class EnvoyEmulator {
  readonly config: FilterConfig;
  private readonly pool: ConnectionPool;

  constructor(private readonly options: EmulatorOptions) {
    this.config = resolveConfig(options);
    this.pool = new ConnectionPool(options.target, options.maxRequestsPerConnection);
  }

  /** Simulates one HTTP request (and, with `response`, its response) through the ext_proc filter. */
  request(request: SimulatedRequest): Promise<Outcome> {
    const stream = new HttpStream(
      {
        config: this.config,
        pool: this.pool,
        initialMetadata: this.options.initialMetadata ?? [],
        bodyArrival: this.options.bodyArrival ?? 'after-headers-response',
        hcmHeaders: this.options.hcmHeaders ?? true,
        stallTimeoutMs: this.options.stallTimeoutMs ?? 10_000,
      },
      request,
    );
    return stream.run(request);
  }

  /** HTTP/2 connections opened to the ext_proc server so far (see maxRequestsPerConnection, P25). */
  get connectionsOpened(): number {
    return this.pool.connectionsOpened;
  }

  /** Closes the gRPC connections (calls still running finish first). */
  close(): void {
    this.pool.close();
  }
}
