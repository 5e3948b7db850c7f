// The ext_proc side stream as Envoy's gRPC client drives it: one Process() call per HTTP request on a
// shared HTTP/2 connection, closed with END_STREAM immediately followed by RST_STREAM(CANCEL)
// (docs/envoy-ext-proc.md#how-envoy-ends-a-call, client_impl.cc ExternalProcessorStreamImpl::close), and
// connections retired after max_requests_per_connection streams like an Envoy cluster
// (docs/envoy-ext-proc.md#node-and-http2-stream-resets).
import * as grpc from '@grpc/grpc-js';
import type { HeaderList } from '../../src/envoy-model/headers.js';
import type { SideStreamHandle, StreamEvents, Transport } from '../../src/envoy-model/transport.js';
import { extProcService } from '../../src/proto.js';

export type { StreamEvents } from '../../src/envoy-model/transport.js';

type ProcessCall = grpc.ClientDuplexStream<unknown, unknown>;

interface Connection {
  client: grpc.Client;
  started: number;
  active: number;
  retired: boolean;
}

/** Connections to the ext_proc cluster. Each connection is one grpc-js channel with its own socket. */
export class ConnectionPool implements Transport {
  private current: Connection | undefined;
  private readonly all = new Set<Connection>();
  private closed = false;

  constructor(
    private readonly target: string,
    private readonly maxRequestsPerConnection: number | undefined,
  ) {}

  /** Number of connections opened so far (including retired ones). */
  connectionsOpened = 0;

  start(initialMetadata: HeaderList, events: StreamEvents): ExtProcStream {
    if (this.closed) throw new Error('EnvoyEmulator is closed');
    const metadata = new grpc.Metadata();
    for (const [key, value] of initialMetadata) metadata.add(key, value);
    const conn = this.pick();
    conn.started++;
    conn.active++;
    const client = conn.client as unknown as { Process(m: grpc.Metadata): ProcessCall };
    const call = client.Process(metadata);
    return new ExtProcStream(call, events, () => this.release(conn));
  }

  private pick(): Connection {
    const max = this.maxRequestsPerConnection;
    if (this.current && max !== undefined && max > 0 && this.current.started >= max) {
      // Envoy drains a connection that reached max_requests_per_connection and opens a new one.
      this.current.retired = true;
      this.closeIfIdle(this.current);
      this.current = undefined;
    }
    if (!this.current) {
      const Ctor = extProcService();
      const client = new Ctor(this.target, grpc.credentials.createInsecure(), {
        // A private subchannel pool gives every emulated connection its own HTTP/2 connection.
        'grpc.use_local_subchannel_pool': 1,
        // Envoy's gRPC client has no message size cap of its own; grpc-js defaults to 4 MiB.
        'grpc.max_receive_message_length': -1,
        'grpc.max_send_message_length': -1,
      });
      this.current = { client, started: 0, active: 0, retired: false };
      this.all.add(this.current);
      this.connectionsOpened++;
    }
    return this.current;
  }

  private release(conn: Connection): void {
    conn.active--;
    this.closeIfIdle(conn);
  }

  private closeIfIdle(conn: Connection): void {
    if ((conn.retired || this.closed) && conn.active === 0) {
      conn.client.close();
      this.all.delete(conn);
    }
  }

  close(): void {
    this.closed = true;
    for (const conn of [...this.all]) {
      conn.retired = true;
      if (conn.active === 0) this.closeIfIdle(conn);
      else conn.client.close(); // active calls keep running until they finish
    }
    this.current = undefined;
  }
}

export class ExtProcStream implements SideStreamHandle {
  private localClosed = false;
  private remoteClosed = false;
  private pendingWrites = 0;
  private flushWaiters: Array<() => void> = [];
  private released = false;

  constructor(
    private readonly call: ProcessCall,
    events: StreamEvents,
    private readonly onDone: () => void,
  ) {
    call.on('data', (message: unknown) => {
      // After Envoy closed (stream_ reset), nothing more reaches the filter.
      if (!this.localClosed && !this.remoteClosed) events.onReceiveMessage(message);
    });
    call.on('status', (status: grpc.StatusObject) => {
      this.release();
      if (this.localClosed || this.remoteClosed) return;
      this.remoteClosed = true;
      events.onRemoteClose(status.code, status.details);
    });
    // Errors are reported through 'status'; without a listener grpc-js would throw.
    call.on('error', () => undefined);
  }

  get isOpen(): boolean {
    return !this.localClosed && !this.remoteClosed;
  }

  send(message: unknown): void {
    this.pendingWrites++;
    this.call.write(message, () => {
      this.pendingWrites--;
      if (this.pendingWrites === 0) for (const w of this.flushWaiters.splice(0)) w();
    });
  }

  /** Resolves once every message written so far was handed to HTTP/2. */
  flushed(): Promise<void> {
    if (this.pendingWrites === 0) return Promise.resolve();
    return new Promise((resolve) => this.flushWaiters.push(resolve));
  }

  /**
   * Envoy's close(): half-close then reset, once. Returns false when the stream was already closed by
   * either side. Messages already written go out first (Envoy's codec sends them before the reset).
   */
  close(): boolean {
    if (this.localClosed || this.remoteClosed) return false;
    this.localClosed = true;
    const finish = () => {
      this.call.end();
      this.call.cancel();
    };
    if (this.pendingWrites === 0) finish();
    else this.flushWaiters.push(finish);
    return true;
  }

  private release(): void {
    if (this.released) return;
    this.released = true;
    this.onDone();
  }
}
