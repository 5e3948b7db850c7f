// How the Envoy model reaches an ext_proc server: one side stream per HTTP request. The tests and the
// bench use gRPC over loopback (test/envoy/grpc-stream.ts); `explain` calls the server's CallProcessor
// in the same process (in-process.ts). The filter logic cannot tell the two apart.
import type { HeaderList } from './headers.js';

/** What the transport reports back to the filter. */
export interface StreamEvents {
  onReceiveMessage(message: unknown): void;
  /** The server ended the call: code 0 = OK (Envoy's onGrpcClose), anything else is onGrpcError. */
  onRemoteClose(code: number, details: string): void;
}

/** One ext_proc call as the filter drives it. */
export interface SideStreamHandle {
  readonly isOpen: boolean;
  send(message: unknown): void;
  /** Envoy's close: END_STREAM then RST_STREAM, once; false when either side had already closed. */
  close(): boolean;
  /** Resolves once every message written so far was handed to the transport. */
  flushed(): Promise<void>;
}

export interface Transport {
  /** Opens a Process() call with the gRPC initial metadata given. */
  start(initialMetadata: HeaderList, events: StreamEvents): SideStreamHandle;
}
