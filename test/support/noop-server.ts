// The baseline the bench compares the real server against: a grpc-js ext_proc server with the same
// server options that decides nothing. Every message gets a bare CONTINUE of the matching kind, and the
// call ends like the real server ends it (OK on Envoy's half-close, nothing on its cancel), so the
// difference between the two is the cost of src/ and not of grpc-js or HTTP/2.
import * as grpc from '@grpc/grpc-js';
import { buildConfig } from '../../src/config.js';
import { extProcService, type ProcessingRequest, type ProcessingResponse } from '../../src/proto.js';

export interface NoopServer {
  /** host:port with the bound port. */
  readonly address: string;
  close(): Promise<void>;
}

const CONTINUE = { response: { status: 'CONTINUE' } } as const;

function bareContinue(message: ProcessingRequest): ProcessingResponse | undefined {
  // observability_mode: Envoy ignores answers, the real server sends none (docs/envoy-ext-proc.md#observability-mode).
  if (message.observability_mode || !message.request) return undefined;
  return { [message.request]: CONTINUE } as unknown as ProcessingResponse;
}

export async function startNoopServer(listen = '127.0.0.1:0'): Promise<NoopServer> {
  const config = buildConfig({ listen });
  // The same options src/server.ts gives grpc-js (message size from the same config defaults).
  const server = new grpc.Server({
    'grpc.max_receive_message_length': config.maxMessageBytes,
    'grpc.max_send_message_length': config.maxMessageBytes,
  });
  server.addService(extProcService().service, {
    Process(call: grpc.ServerDuplexStream<ProcessingRequest, ProcessingResponse>) {
      call.on('data', (message: ProcessingRequest) => {
        const answer = bareContinue(message);
        if (answer) call.write(answer);
      });
      call.on('end', () =>
        setImmediate(() => {
          if (!call.cancelled) call.end();
        }),
      );
      call.on('error', () => undefined);
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(listen, grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  return {
    address: listen.replace(/:\d+$/, `:${port}`),
    close: () => new Promise((resolve) => server.tryShutdown(() => resolve())),
  };
}
