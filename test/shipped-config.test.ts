// The shipped Envoy configs and the server, proven to work together: the emulated Envoy takes its
// ext_proc settings (processing mode, allow_mode_override, message_timeout, failure_mode_allow,
// max_requests_per_connection) and its per-route ExtProcPerRoute decisions from envoy/*.yaml itself.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { EnvoyEmulator, type EmulatorOptions, type ProcessingModeConfig } from './envoy/emulator.js';
import { connectionManagers, envoyApi, extProcRunsFor, readExtProcFilter } from './support/envoy-api.js';
import { EDITS_PATH, DEPLOYMENT_PATH, binary, frames, header, jsonRequest, multipartRequest, startTestServer, type TestServer } from './support/harness.js';

const ENVOY_DIR = path.resolve(import.meta.dirname, '../envoy');

/** The emulator options equivalent to one shipped YAML file. */
function emulatorFor(file: string, target: string): EnvoyEmulator {
  const yamlPath = path.join(ENVOY_DIR, file);
  const filter = readExtProcFilter(yamlPath);
  const bootstrap = envoyApi().decodeBootstrapFile(yamlPath);
  const egress = connectionManagers(bootstrap).find((manager) => manager.port === 10000)!;
  const mode = filter.processingMode;
  const processingMode: ProcessingModeConfig = {
    requestHeaderMode: mode.request_header_mode as ProcessingModeConfig['requestHeaderMode'],
    responseHeaderMode: mode.response_header_mode as ProcessingModeConfig['responseHeaderMode'],
    requestBodyMode: mode.request_body_mode as ProcessingModeConfig['requestBodyMode'],
    responseBodyMode: mode.response_body_mode as ProcessingModeConfig['responseBodyMode'],
    requestTrailerMode: mode.request_trailer_mode as ProcessingModeConfig['requestTrailerMode'],
    responseTrailerMode: mode.response_trailer_mode as ProcessingModeConfig['responseTrailerMode'],
  };
  const options: EmulatorOptions = {
    target,
    envoyVersion: '1.40',
    processingMode,
    allowModeOverride: filter.allowModeOverride,
    messageTimeoutMs: filter.messageTimeoutMs,
    failureModeAllow: filter.failureModeAllow,
    bufferLimitBytes: 64 * 1024 * 1024,
    ...(filter.maxRequestsPerConnection ? { maxRequestsPerConnection: filter.maxRequestsPerConnection } : {}),
    perRoute: (headers) => {
      const method = headers.find(([key]) => key === ':method')?.[1] ?? 'GET';
      const fullPath = headers.find(([key]) => key === ':path')?.[1] ?? '/';
      return extProcRunsFor(bootstrap, egress.routes, method, fullPath) ? undefined : { disabled: true };
    },
  };
  return new EnvoyEmulator(options);
}

const SEED = '{"model":"gpt-image-2-1","prompt":"a red circle","n":1,"size":"1024x1024"}';
const SEED_FIXED = '{"prompt":"a red circle","n":1,"size":"1024x1024"}';

describe.each(['envoy.yaml', 'envoy-buffered.yaml', 'envoy-demo.yaml'])('%s + server over TCP', (file) => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => {
    await server.close();
  });

  test('the seed generation reaches Azure without model', async () => {
    const envoy = emulatorFor(file, server.target);
    try {
      const outcome = await envoy.request(jsonRequest(DEPLOYMENT_PATH, SEED));
      expect(outcome.kind).toBe('upstream');
      if (outcome.kind !== 'upstream') return;
      expect(outcome.upstream.body.toString()).toBe(SEED_FIXED);
    } finally {
      envoy.close();
    }
  });

  test('a 5 MiB multipart edit in 64 KiB frames reaches Azure without the model part', async () => {
    const envoy = emulatorFor(file, server.target);
    const parts = [
      { name: 'image', filename: 'a.png', contentType: 'image/png', data: binary(5 * 1024 * 1024, 5) },
      { name: 'model', data: 'gpt-image-2-1' },
      { name: 'prompt', data: 'p' },
    ];
    const request = multipartRequest(EDITS_PATH, 'shipped', parts);
    try {
      const outcome = await envoy.request({ headers: request.headers, body: frames(request.body, 64 * 1024) });
      expect(outcome.kind).toBe('upstream');
      if (outcome.kind !== 'upstream') return;
      expect(outcome.upstream.body.equals(multipartRequest(EDITS_PATH, 'shipped', [parts[0]!, parts[2]!]).body)).toBe(true);
    } finally {
      envoy.close();
    }
  });

  test('chat never reaches the ext_proc server (per-route disabled)', async () => {
    const envoy = emulatorFor(file, server.target);
    const before = server.results.length;
    try {
      const outcome = await envoy.request(jsonRequest('/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21', '{"model":"gpt-4o"}'));
      expect(outcome.kind).toBe('upstream');
      expect(outcome.messagesSent).toBe(0);
      expect(outcome.streamClosedBy).toBe('not-opened');
      expect(server.results.length).toBe(before);
    } finally {
      envoy.close();
    }
  });
});

describe('envoy-uds.yaml + server on a Unix socket (sidecar)', () => {
  let server: TestServer;
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'extproc-'));
    server = await startTestServer({ listen: `unix:${path.join(dir, 'extproc.sock')}`, socketMode: 0o660 });
  });
  afterAll(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('the seed generation reaches Azure without model, content-length consistent', async () => {
    const envoy = emulatorFor('envoy-uds.yaml', server.target);
    try {
      const outcome = await envoy.request(jsonRequest(DEPLOYMENT_PATH, SEED));
      expect(outcome.kind).toBe('upstream');
      if (outcome.kind !== 'upstream') return;
      expect(outcome.upstream.body.toString()).toBe(SEED_FIXED);
      expect(header(outcome.upstream.headers, 'content-length')).toBe(String(SEED_FIXED.length));
    } finally {
      envoy.close();
    }
  });
});
