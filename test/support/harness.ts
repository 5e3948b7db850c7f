// Starts the real server on loopback for integration tests, and builds Envoy emulators configured the
// way the README tells users to configure Envoy.
import pino from 'pino';
import { buildConfig, type Config } from '../../src/config.js';
import { startServer, type CallObserver, type RunningServer } from '../../src/server.js';
import type { CallResult } from '../../src/call/index.js';
import { EnvoyEmulator, type EmulatorOptions, type Outcome, type UpstreamRequest } from '../envoy/emulator.js';

export interface TestServer {
  server: RunningServer;
  target: string;
  /** Every finished call's result, in order. */
  results: CallResult[];
  /** Swap the config snapshot new calls get (as a reload would). */
  setConfig(overrides: Record<string, unknown>): void;
  close(): Promise<void>;
}

export async function startTestServer(overrides: Record<string, unknown> = {}, options: { apiKey?: () => string | undefined } = {}): Promise<TestServer> {
  let config: Config = buildConfig({ listen: '127.0.0.1:0', logLevel: 'silent', ...overrides });
  const results: CallResult[] = [];
  const observer: CallObserver = { callFinished: (result) => void results.push(result) };
  const server = await startServer({ config: () => config, logger: pino({ level: 'silent' }), observer, ...options });
  return {
    server,
    target: server.addresses.listen,
    results,
    setConfig(next) {
      config = buildConfig({ listen: '127.0.0.1:0', logLevel: 'silent', ...next });
    },
    close: () => server.shutdown(1000).then(() => undefined),
  };
}

/** The recommended set-up (README, "An Envoy you already run"): headers only, bodies via mode_override. */
export function recommendedEnvoy(target: string, extra: Partial<EmulatorOptions> = {}): EnvoyEmulator {
  return new EnvoyEmulator({
    target,
    envoyVersion: '1.40',
    processingMode: { requestHeaderMode: 'SEND', responseHeaderMode: 'SKIP', requestBodyMode: 'NONE', responseBodyMode: 'NONE' },
    allowModeOverride: true,
    messageTimeoutMs: 2000,
    bufferLimitBytes: 64 * 1024 * 1024,
    maxRequestsPerConnection: 900,
    ...extra,
  });
}

/** Envoy configured to send request bodies itself (static mode), response direction skipped. */
export function staticEnvoy(target: string, requestBodyMode: 'BUFFERED' | 'STREAMED' | 'BUFFERED_PARTIAL' | 'FULL_DUPLEX_STREAMED', extra: Partial<EmulatorOptions> = {}): EnvoyEmulator {
  return new EnvoyEmulator({
    target,
    envoyVersion: '1.40',
    processingMode: {
      requestHeaderMode: 'SEND',
      responseHeaderMode: 'SKIP',
      requestBodyMode,
      responseBodyMode: 'NONE',
      // FULL_DUPLEX_STREAMED requires trailer mode SEND (docs/envoy-ext-proc.md#full_duplex_streamed).
      ...(requestBodyMode === 'FULL_DUPLEX_STREAMED' ? { requestTrailerMode: 'SEND' as const } : {}),
    },
    messageTimeoutMs: 2000,
    bufferLimitBytes: 64 * 1024 * 1024,
    maxRequestsPerConnection: 900,
    ...extra,
  });
}

export const DEPLOYMENT_PATH = '/openai/deployments/gpt-image-2-1/images/generations?api-version=2025-04-01-preview';
export const EDITS_PATH = '/openai/deployments/gpt-image-2-1/images/edits?api-version=2025-04-01-preview';

export function jsonRequest(path: string, body: string | Buffer, extra: Array<[string, string]> = []): { headers: Array<[string, string]>; body: Buffer } {
  const bytes = Buffer.isBuffer(body) ? body : Buffer.from(body, 'utf8');
  return {
    headers: [
      [':method', 'POST'],
      [':path', path],
      [':authority', 'myres.openai.azure.com'],
      ['content-type', 'application/json'],
      ['content-length', String(bytes.length)],
      ['api-key', 'test-key'],
      ...extra,
    ],
    body: bytes,
  };
}

export interface Part {
  name: string;
  filename?: string;
  contentType?: string;
  data: Buffer | string;
}

export function multipartBody(boundary: string, parts: Part[]): Buffer {
  const chunks: Buffer[] = [];
  for (const part of parts) {
    const disposition = `form-data; name="${part.name}"${part.filename ? `; filename="${part.filename}"` : ''}`;
    const head = `--${boundary}\r\nContent-Disposition: ${disposition}\r\n${part.contentType ? `Content-Type: ${part.contentType}\r\n` : ''}\r\n`;
    chunks.push(Buffer.from(head, 'latin1'), Buffer.isBuffer(part.data) ? part.data : Buffer.from(part.data, 'utf8'), Buffer.from('\r\n'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return Buffer.concat(chunks);
}

export function multipartRequest(path: string, boundary: string, parts: Part[]): { headers: Array<[string, string]>; body: Buffer } {
  const body = multipartBody(boundary, parts);
  return {
    headers: [
      [':method', 'POST'],
      [':path', path],
      [':authority', 'myres.openai.azure.com'],
      ['content-type', `multipart/form-data; boundary=${boundary}`],
      ['content-length', String(body.length)],
      ['api-key', 'test-key'],
    ],
    body,
  };
}

/** Splits a buffer into DATA frames of `size` bytes, as Envoy would see a streamed upload. */
export function frames(body: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < body.length; i += size) out.push(body.subarray(i, i + size));
  return out;
}

/** Deterministic pseudo-random bytes (image-like binary data, every byte value present). */
export function binary(length: number, seed = 1): Buffer {
  const out = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

export function header(list: Array<[string, string]>, name: string): string | undefined {
  return list.find(([key]) => key === name)?.[1];
}

/** The request as it reached the upstream (Azure); fails the test with the outcome otherwise. */
export function upstreamOf(outcome: Outcome): UpstreamRequest {
  if (outcome.kind !== 'upstream') throw new Error(`expected the request to reach Azure, got ${outcome.kind}: ${JSON.stringify(outcome).slice(0, 400)}`);
  return outcome.upstream;
}

/** The server's answers in the emulator's transcript, optionally of one kind (e.g. 'request_body'). */
export function serverAnswers(outcome: Outcome, kind?: string): Array<Record<string, unknown>> {
  return outcome.transcript
    .filter((entry) => entry.direction === 'server->envoy' && (kind === undefined || entry.kind === kind))
    .map((entry) => entry.message as Record<string, unknown>);
}
