// The emulated Envoy's transport without its HTTP filter: the connection pool (max_requests_per_connection)
// and the stream close (END_STREAM then RST_STREAM) of test/envoy/grpc-stream.ts, sending the messages a
// recommended-setup Envoy >= 1.34 sends. Per call it costs the load generator about a third of the full
// emulation, so one core can drive the server at thousands of calls per second on a two-core machine.
// Answers are checked against what Envoy would need to apply, not only counted.
import type { WireProcessingResponse } from '../src/envoy-model/processor-state.js';
import { ConnectionPool, type ExtProcStream } from '../test/envoy/grpc-stream.js';
import { imageHeaders, requestBody, requestHeaders } from '../test/support/extproc-client.js';
import { imageJson } from './workload.js';

/** One call's messages, each with a check of its answer (undefined: as expected, else what is wrong). */
interface Exchange {
  message: Record<string, unknown>;
  check(answer: WireProcessingResponse): string | undefined;
}

export class LeanEnvoy {
  private readonly pool: ConnectionPool;
  private readonly timeoutMs: number;
  private readonly passThrough: Exchange[];
  private readonly image: Exchange[];

  /** `timeoutMs` plays Envoy's message_timeout for the whole call (default 10 s). */
  constructor(target: string, options: { maxRequestsPerConnection?: number; timeoutMs?: number } = {}) {
    this.pool = new ConnectionPool(target, options.maxRequestsPerConnection);
    this.timeoutMs = options.timeoutMs ?? 10_000;
    const pathOnly = { ':method': 'POST', ':path': '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21', 'content-type': 'application/json' };
    this.passThrough = [{ message: requestHeaders(pathOnly, true), check: bareContinue }];
    // The same 1 KiB generation body as the full emulation's image workload.
    const { request, expectedBody } = imageJson(1024);
    const sent = request.body as Buffer;
    const expected = expectedBody!;
    this.image = [
      { message: requestHeaders(imageHeaders({ contentLength: sent.length })), check: asksBuffered },
      { message: requestBody(sent, true), check: (answer) => replacesBody(answer, expected) },
    ];
  }

  /** A non-image request: one headers message, a bare CONTINUE, then Envoy's close. */
  passThroughCall(): Promise<string | undefined> {
    return this.call(this.passThrough);
  }

  /** A 1 KiB image generation: headers (mode_override to BUFFERED), the body (model removed), then the close. */
  imageCall(): Promise<string | undefined> {
    return this.call(this.image);
  }

  private call(exchanges: Exchange[]): Promise<string | undefined> {
    return new Promise((resolve) => {
      let step = 0;
      let stream: ExtProcStream | undefined = undefined;
      const done = (failure: string | undefined) => {
        clearTimeout(timer);
        stream?.close();
        resolve(failure);
      };
      const timer = setTimeout(() => done(`no answer within ${this.timeoutMs} ms`), this.timeoutMs);
      stream = this.pool.start([], {
        onReceiveMessage: (answer) => {
          const failure = exchanges[step]!.check(answer as WireProcessingResponse);
          if (failure !== undefined || ++step === exchanges.length) return done(failure);
          stream!.send(exchanges[step]!.message);
        },
        onRemoteClose: (code, details) => done(`server ended the call: ${code} ${details}`),
      });
      stream.send(exchanges[0]!.message);
    });
  }

  close(): void {
    this.pool.close();
  }
}

function bareContinue(answer: WireProcessingResponse): string | undefined {
  const common = answer.request_headers?.response;
  if (answer.response !== 'request_headers' || !common) return `expected request_headers, got ${answer.response}`;
  if (common.header_mutation || common.body_mutation || answer.mode_override) return 'pass-through answer is not a bare CONTINUE';
  return undefined;
}

function asksBuffered(answer: WireProcessingResponse): string | undefined {
  if (answer.response !== 'request_headers') return `expected request_headers, got ${answer.response}`;
  const mode = answer.mode_override as { request_body_mode?: string } | null | undefined;
  return mode?.request_body_mode === 'BUFFERED' ? undefined : `expected mode_override BUFFERED, got ${JSON.stringify(mode)}`;
}

function replacesBody(answer: WireProcessingResponse, expected: Buffer): string | undefined {
  const common = answer.request_body?.response;
  if (answer.response !== 'request_body' || !common) return `expected request_body, got ${answer.response}`;
  const body = common.body_mutation?.body;
  if (!body || !body.equals(expected)) return 'body mutation is not the body without model';
  const length = common.header_mutation?.set_headers?.find((option) => option.header?.key === 'content-length');
  if (length?.header?.raw_value?.toString() !== String(expected.length)) return 'content-length not set to the new length';
  return undefined;
}
