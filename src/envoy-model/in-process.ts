// A transport that runs the ext_proc server's CallProcessor in this process instead of over gRPC. Every
// message is encoded and decoded with the service's own protobuf codec, so each side sees exactly what
// it would read off the wire (enum names, oneof discriminators, Struct values), and answers arrive on
// a later turn of the event loop, as they would from a socket. `explain` uses it.
import { extProcService } from '../proto.js';
import type { ProcessingRequest, ProcessingResponse } from '../proto.js';
import type { SideStreamHandle, StreamEvents, Transport } from './transport.js';

/** The server side of one call: what src/server.ts does with a CallProcessor. */
export interface InProcessCall {
  handle(message: ProcessingRequest): ProcessingResponse[];
  close(): void;
}

interface Codec {
  request(message: unknown): ProcessingRequest;
  response(message: ProcessingResponse): unknown;
}

function wireCodec(): Codec {
  const method = extProcService().service.Process!;
  return {
    request: (message) => method.requestDeserialize(method.requestSerialize(message)) as ProcessingRequest,
    response: (message) => method.responseDeserialize(method.responseSerialize(message)),
  };
}

/** gRPC status INTERNAL: what the server ends a call with when handling a message throws. */
const INTERNAL = 13;

export class InProcessTransport implements Transport {
  private readonly codec = wireCodec();

  /** `open` starts the server side of one call (e.g. `() => new CallProcessor(config, context)`). */
  constructor(private readonly open: () => InProcessCall) {}

  start(_initialMetadata: unknown, events: StreamEvents): SideStreamHandle {
    return new InProcessStream(this.open(), events, this.codec);
  }
}

class InProcessStream implements SideStreamHandle {
  private localClosed = false;
  private remoteClosed = false;
  private readonly queue: ProcessingRequest[] = [];
  private scheduled = false;

  constructor(
    private readonly server: InProcessCall,
    private readonly events: StreamEvents,
    private readonly codec: Codec,
  ) {}

  get isOpen(): boolean {
    return !this.localClosed && !this.remoteClosed;
  }

  send(message: unknown): void {
    if (!this.isOpen) return;
    this.queue.push(this.codec.request(message));
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.deliver();
    });
  }

  /** The server handles queued messages in order; its answers reach Envoy until either side closes. */
  private deliver(): void {
    while (this.queue.length > 0 && this.isOpen) {
      const answers = this.handle(this.queue.shift()!);
      for (const answer of answers ?? []) {
        if (!this.isOpen) return;
        this.events.onReceiveMessage(this.codec.response(answer));
      }
    }
  }

  private handle(message: ProcessingRequest): ProcessingResponse[] | undefined {
    try {
      return this.server.handle(message);
    } catch (error) {
      // src/server.ts ends the call with INTERNAL; Envoy's failure_mode_allow decides what follows.
      this.remoteClosed = true;
      this.server.close();
      this.events.onRemoteClose(INTERNAL, (error as Error).message);
      return undefined;
    }
  }

  /** Envoy's close. Messages it sent before closing still reach the server, as over HTTP/2. */
  close(): boolean {
    if (!this.isOpen) return false;
    this.localClosed = true;
    for (const message of this.queue.splice(0)) {
      try {
        this.server.handle(message);
      } catch {
        break;
      }
    }
    this.server.close();
    return true;
  }

  flushed(): Promise<void> {
    return Promise.resolve();
  }
}
