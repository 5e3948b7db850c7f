// Drives the call state machine directly, without a server: Envoy messages in, answers out, each answer
// shown as one line so a whole call reads (and compares) at a glance.
import { MemoryBudget } from '../../src/budget.js';
import { CallProcessor } from '../../src/call/index.js';
import { buildConfig } from '../../src/config.js';
import type { BodySendMode, ProcessingRequest, ProcessingResponse } from '../../src/proto.js';

export interface CallUnderTest {
  processor: CallProcessor;
  budget: MemoryBudget;
  /** Sends one message; returns its answers as lines. */
  send(message: ProcessingRequest): string[];
  /** Every answer so far, raw. */
  readonly answers: ProcessingResponse[];
}

export function startCall(overrides: Record<string, unknown> = {}, options: { budgetBytes?: number; apiKey?: string } = {}): CallUnderTest {
  const budget = new MemoryBudget(options.budgetBytes ?? 256 * 1024 * 1024);
  const processor = new CallProcessor(buildConfig(overrides), { budget, apiKey: () => options.apiKey });
  const answers: ProcessingResponse[] = [];
  return {
    processor,
    budget,
    answers,
    send(message) {
      const out = processor.handle(message);
      answers.push(...out);
      return out.map(line);
    },
  };
}

/** Sends each message in turn: one list of answer lines per message. */
export function transcript(call: CallUnderTest, messages: ProcessingRequest[]): string[][] {
  return messages.map((message) => call.send(message));
}

/** The request headers message, first of a call (Envoy >= 1.34 sends its body modes with it). */
export function headers(
  list: Record<string, string>,
  mode: BodySendMode | 'none-sent' = 'NONE',
  endOfStream = false,
): ProcessingRequest {
  return {
    request: 'request_headers',
    request_headers: { headers: { headers: Object.entries(list).map(([key, value]) => ({ key, raw_value: Buffer.from(value, 'latin1') })) }, end_of_stream: endOfStream },
    ...(mode === 'none-sent'
      ? {}
      : { protocol_config: { request_body_mode: mode, response_body_mode: 'NONE', send_body_without_waiting_for_header_response: false } }),
  };
}

export function body(bytes: string | Buffer, endOfStream = false): ProcessingRequest {
  return { request: 'request_body', request_body: { body: Buffer.from(bytes), end_of_stream: endOfStream } };
}

export function trailers(): ProcessingRequest {
  return { request: 'request_trailers', request_trailers: { trailers: { headers: [] } } };
}

export const DEPLOYMENT_PATH = '/openai/deployments/gpt-image-1/images/generations?api-version=2025-04-01-preview';

export function jsonHeaders(extra: Record<string, string> = {}, path = DEPLOYMENT_PATH): Record<string, string> {
  return { ':method': 'POST', ':path': path, ':authority': 'r.openai.azure.com', 'content-type': 'application/json', ...extra };
}

function text(bytes: Buffer): string {
  return bytes.length > 80 ? `${bytes.length} bytes` : bytes.toString('latin1');
}

/** One answer as one line, e.g. `body: replace {"prompt":"p"}` or `headers: set :path=/x; override STREAMED`. */
export function line(answer: ProcessingResponse): string {
  if ('immediate_response' in answer) {
    const reply = answer.immediate_response;
    return `immediate ${reply.status.code} ${reply.details ?? ''}`.trim();
  }
  if ('request_trailers' in answer || 'response_trailers' in answer) return 'trailers';
  const [kind, value] = Object.entries(answer).find(([key]) => key !== 'mode_override' && key !== 'dynamic_metadata')! as [string, { response: NonNullable<unknown> }];
  const response = (value as { response: import('../../src/proto.js').CommonResponse }).response;
  const parts: string[] = [];
  for (const option of response.header_mutation?.set_headers ?? []) parts.push(`set ${option.header.key}=${option.header.raw_value?.toString('latin1')}`);
  for (const name of response.header_mutation?.remove_headers ?? []) parts.push(`remove ${name}`);
  if (response.clear_route_cache) parts.push('clear route cache');
  const mutation = response.body_mutation;
  if (mutation && 'body' in mutation) parts.push(`replace ${text(mutation.body)}`);
  if (mutation && 'clear_body' in mutation) parts.push('clear');
  if (mutation && 'streamed_response' in mutation) {
    parts.push(`stream${mutation.streamed_response.end_of_stream ? ' (end)' : ''} ${text(mutation.streamed_response.body)}`.trimEnd());
  }
  if (answer.mode_override) parts.push(`override ${answer.mode_override.request_body_mode}`);
  const label = kind === 'request_headers' ? 'headers' : kind === 'request_body' ? 'body' : kind;
  return `${label}: ${parts.length ? parts.join('; ') : 'continue'}`;
}

/** The request body bytes Envoy forwards upstream in FULL_DUPLEX_STREAMED: the streamed responses, in order. */
export function streamedUpstream(answers: ProcessingResponse[]): Buffer {
  const pieces: Buffer[] = [];
  for (const answer of answers) {
    if (!('request_body' in answer)) continue;
    const mutation = answer.request_body.response.body_mutation;
    if (mutation && 'streamed_response' in mutation) pieces.push(mutation.streamed_response.body);
  }
  return Buffer.concat(pieces);
}

/**
 * The request body Envoy forwards upstream in STREAMED mode: each chunk as sent, unless its answer
 * replaced or cleared it.
 */
export function streamedChunksUpstream(chunks: Buffer[], answers: ProcessingResponse[]): Buffer {
  const bodyAnswers = answers.filter((answer) => 'request_body' in answer) as Array<{ request_body: { response: import('../../src/proto.js').CommonResponse } }>;
  return Buffer.concat(
    chunks.map((chunk, i) => {
      const mutation = bodyAnswers[i]?.request_body.response.body_mutation;
      if (!mutation) return chunk;
      if ('body' in mutation) return mutation.body;
      if ('clear_body' in mutation) return Buffer.alloc(0);
      return chunk;
    }),
  );
}
