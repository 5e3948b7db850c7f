// EnvoyEmulator: Envoy's ext_proc HTTP filter acting as the gRPC client of an ext_proc server, one
// Process() call per simulated HTTP request. No Envoy binary is available on the build machines, so the
// integration tests drive the server through this emulation. The model of Envoy's side lives in
// src/envoy-model/ (explain uses it too); this file gives it a gRPC transport (grpc-stream.ts).
//
//   const envoy = new EnvoyEmulator({ target: `127.0.0.1:${port}`, processingMode: { requestBodyMode: 'BUFFERED' } });
//   const outcome = await envoy.request({ headers: [[':method', 'POST'], [':path', '/x']], body: Buffer.from('{}') });
//   envoy.close();
//
// Here: grpc-stream.ts (connections and Envoy's stream close), data-path.ts (a real HTTP front),
// fixtures.ts (test helpers).
import type { FilterConfig, ModelOptions } from '../../src/envoy-model/config.js';
import { EnvoyModel } from '../../src/envoy-model/index.js';
import type { Outcome, SimulatedRequest } from '../../src/envoy-model/index.js';
import { ConnectionPool } from './grpc-stream.js';

export type {
  BodyArrival,
  BodyInput,
  Counters,
  DownstreamResponse,
  HeaderList,
  MutationRules,
  Outcome,
  OutcomeBase,
  PerRouteConfig,
  ProcessingModeConfig,
  ResponseSource,
  ResponseSpec,
  SimulatedRequest,
  StreamCloseReason,
  TranscriptEntry,
  UpstreamRequest,
} from '../../src/envoy-model/index.js';

export interface EmulatorOptions extends ModelOptions {
  /** '127.0.0.1:PORT' or 'unix:/path'. */
  target: string;
  /**
   * The cluster's max_requests_per_connection: a new HTTP/2 connection after N streams. The README's
   * set-up uses 900 so that Node's HTTP/2 reset counter never drops a connection.
   */
  maxRequestsPerConnection?: number;
}

export class EnvoyEmulator {
  readonly config: FilterConfig;
  private readonly pool: ConnectionPool;
  private readonly model: EnvoyModel;

  constructor(options: EmulatorOptions) {
    this.pool = new ConnectionPool(options.target, options.maxRequestsPerConnection);
    this.model = new EnvoyModel(options, this.pool);
    this.config = this.model.config;
  }

  /** Simulates one HTTP request (and, with `response`, its response) through the ext_proc filter. */
  request(request: SimulatedRequest): Promise<Outcome> {
    return this.model.request(request);
  }

  /** HTTP/2 connections opened to the ext_proc server so far (see maxRequestsPerConnection). */
  get connectionsOpened(): number {
    return this.pool.connectionsOpened;
  }

  /** Closes the gRPC connections (calls still running finish first). */
  close(): void {
    this.pool.close();
  }
}
