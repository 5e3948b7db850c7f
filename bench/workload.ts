// The requests the bench and the load tests send through the Envoy emulation, with what must reach the
// upstream for each, so every call of a load run is checked and not only counted.
import type { EnvoyEmulator, Outcome, SimulatedRequest } from '../test/envoy/emulator.js';
import { DEPLOYMENT_PATH, EDITS_PATH, binary, frames, jsonRequest, multipartRequest, recommendedEnvoy } from '../test/support/harness.js';

/** A request and the upstream body it must produce (undefined: no body), or a client that goes away. */
export interface Workload {
  request: SimulatedRequest;
  expectedBody?: Buffer;
  /** The client disconnects (request.abortAfter): the only right outcome is 'aborted'. */
  aborts?: true;
}

/** Not an image route: the server answers the headers message with a bare CONTINUE and sees nothing else. */
export const PASS_THROUGH: Workload = {
  request: {
    headers: [
      [':method', 'POST'],
      [':path', '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21'],
      [':authority', 'myres.openai.azure.com'],
      ['content-type', 'application/json'],
      ['api-key', 'test-key'],
    ],
  },
};

/**
 * A generation request of `size` bytes with `model` (the case the server exists for): buffered via
 * mode_override, `model` removed byte-exactly, content-length set to the new length.
 */
export function imageJson(size = 1024): Workload {
  const fields = { prompt: '', model: 'gpt-image-1', n: 1, size: '1024x1024' };
  fields.prompt = 'a watercolour lighthouse at dawn '.repeat(64).slice(0, size - JSON.stringify(fields).length);
  const body = Buffer.from(JSON.stringify(fields));
  const { model: _model, ...rest } = fields;
  return { request: jsonRequest(DEPLOYMENT_PATH, body), expectedBody: Buffer.from(JSON.stringify(rest)) };
}

/**
 * A multipart edit of `size` bytes (above the 1 MiB threshold, so the server asks for it STREAMED) sent in
 * 64 KiB frames by a client that disconnects after the headers or after the first body chunk.
 */
export function abandonedUpload(abortAfter: 'headers' | 'firstBodyChunk', size = 2 * 1024 * 1024): Workload {
  const { headers, body } = multipartRequest(EDITS_PATH, 'abandoned-upload', [
    { name: 'model', data: 'gpt-image-1' },
    { name: 'image[]', filename: 'a.png', contentType: 'image/png', data: binary(size) },
  ]);
  return { request: { headers, body: frames(body, 64 * 1024), abortAfter }, aborts: true };
}

/** Undefined when the outcome is what `workload` must produce, else a short description of the failure. */
export function checkOutcome(outcome: Outcome, workload: Workload): string | undefined {
  if (workload.aborts) return outcome.kind === 'aborted' ? undefined : `expected the client to abort, got ${outcome.kind}`;
  if (outcome.kind !== 'upstream') {
    const detail = 'details' in outcome ? ` ${outcome.details}` : '';
    return `${outcome.kind}${'status' in outcome ? ` ${outcome.status}` : ''}${detail}`;
  }
  const { body, headers } = outcome.upstream;
  if (workload.expectedBody && !body.equals(workload.expectedBody)) return 'wrong upstream body';
  const length = headers.find(([key]) => key === 'content-length')?.[1];
  if (length !== undefined && Number(length) !== body.length) return 'content-length does not match the body';
  return undefined;
}

/** Sends `workload` through `envoy` and checks the outcome. */
export async function run(envoy: EnvoyEmulator, workload: Workload): Promise<string | undefined> {
  return checkOutcome(await envoy.request(workload.request), workload);
}

/**
 * The emulated Envoy as a lean load generator: the same model in the recommended set-up
 * (max_requests_per_connection 900 included), without the transcript and the stall watchdog, so one
 * core drives more calls. The filter behaves the same; every call is still checked.
 */
export function leanEnvoy(target: string): EnvoyEmulator {
  return recommendedEnvoy(target, { messageTimeoutMs: 10_000, transcript: false, stallTimeoutMs: 0 });
}

const LEAN_IMAGE = imageJson(1024);

/** The lean mix: even calls a 1 KiB image generation, odd calls a pass-through. */
export function leanMix(index: number): Workload {
  return index % 2 === 0 ? LEAN_IMAGE : PASS_THROUGH;
}
