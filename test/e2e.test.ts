// End to end with clients nobody here wrote: the `openai` npm package's AzureOpenAI and OpenAI clients,
// through the emulated Envoy data path (HTTP listener -> ext_proc emulation -> this server), to a local
// stand-in that answers like Azure OpenAI (400 "The model '…' does not exist." when `model` is in the
// body of a deployment route).
import OpenAI, { AzureOpenAI, toFile } from 'openai';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startAzureStandin, type Standin } from '../tools/azure-standin.js';
import { startDataPath, type DataPath } from './envoy/data-path.js';
import type { EnvoyEmulator } from './envoy/emulator.js';
import { binary, recommendedEnvoy, startTestServer, type TestServer } from './support/harness.js';

const API_VERSION = '2025-04-01-preview';
const API_KEY = 'e2e-azure-key';

let azure: Standin;
let server: TestServer;
let envoy: EnvoyEmulator;
let envoyHttp: DataPath;

beforeAll(async () => {
  azure = await startAzureStandin({ port: 0, host: '127.0.0.1', deployments: ['gpt-image-2-1'], apiKey: API_KEY, log: () => {} });
  server = await startTestServer();
  envoy = recommendedEnvoy(server.target);
  envoyHttp = await startDataPath({ emulator: envoy, upstream: azure.url });
});

afterAll(async () => {
  await envoyHttp?.close();
  envoy?.close();
  await server?.close();
  await azure?.close();
});

function azureClient(endpoint: string): AzureOpenAI {
  return new AzureOpenAI({ endpoint, apiKey: API_KEY, apiVersion: API_VERSION, maxRetries: 0 });
}

const seed = { model: 'gpt-image-2-1', prompt: 'a red circle', n: 1, size: '1024x1024' } as const;

describe('AzureOpenAI client (deployment from `model`, model left in the body)', () => {
  test('without the filter, Azure rejects the request', async () => {
    const error = await azureClient(azure.url).images.generate(seed).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(OpenAI.BadRequestError);
    expect((error as InstanceType<typeof OpenAI.BadRequestError>).status).toBe(400);
    expect((error as Error).message).toContain("The model 'gpt-image-2-1' does not exist.");
  });

  test('through Envoy with the filter, images.generate succeeds', async () => {
    const before = azure.requests.length;
    const result = await azureClient(envoyHttp.url).images.generate(seed);
    expect(result.data?.[0]?.b64_json).toMatch(/^iVBORw0KGgo/);
    const seen = azure.requests.slice(before).find((request) => request.path.includes('/images/generations'));
    expect(seen?.path).toBe(`/openai/deployments/gpt-image-2-1/images/generations?api-version=${API_VERSION}`);
    expect(JSON.parse(seen!.body.toString())).toEqual({ prompt: 'a red circle', n: 1, size: '1024x1024' });
  });

  test('through Envoy with the filter, a multipart images.edit succeeds, image bytes intact', async () => {
    const client = new AzureOpenAI({ endpoint: envoyHttp.url, apiKey: API_KEY, apiVersion: API_VERSION, deployment: 'gpt-image-2-1', maxRetries: 0 });
    const image = Buffer.concat([Buffer.from('89504e470d0a1a0a', 'hex'), binary(200_000, 11)]);
    const before = azure.requests.length;
    const result = await client.images.edit({ model: 'gpt-image-2-1', prompt: 'add a hat', image: await toFile(image, 'in.png', { type: 'image/png' }) });
    expect(result.data?.[0]?.b64_json).toBeTruthy();
    const seen = azure.requests.slice(before).find((request) => request.path.includes('/images/edits'));
    expect(seen).toBeDefined();
    expect(seen!.body.includes(image)).toBe(true);
    expect(seen!.body.toString('latin1')).not.toMatch(/name="model"/);
  });
});

describe('plain OpenAI client (OpenAI paths, Bearer key) with the opt-in path rewrite', () => {
  test('reaches the Azure deployment unchanged', async () => {
    server.setConfig({
      rewrite: { openaiPaths: { enabled: true, prefix: '/v1' }, deployments: { 'gpt-image-2': 'gpt-image-2-1' }, apiVersion: { default: API_VERSION } },
      credentials: { bearerToApiKey: true },
    });
    try {
      const client = new OpenAI({ baseURL: `${envoyHttp.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
      const before = azure.requests.length;
      const result = await client.images.generate({ model: 'gpt-image-2', prompt: 'a red circle', n: 1, size: '1024x1024' });
      expect(result.data?.[0]?.b64_json).toMatch(/^iVBORw0KGgo/);
      const seen = azure.requests.slice(before).find((request) => request.path.includes('/images/generations'));
      expect(seen?.path).toBe(`/openai/deployments/gpt-image-2-1/images/generations?api-version=${API_VERSION}`);
      expect(seen?.headers['api-key']).toBe(API_KEY);
      expect(seen?.headers.authorization).toBeUndefined();
      expect(JSON.parse(seen!.body.toString())).not.toHaveProperty('model');
    } finally {
      server.setConfig({});
    }
  });

  test('without the rewrite configured, the OpenAI path is forwarded as sent (and Azure answers 404)', async () => {
    const client = new OpenAI({ baseURL: `${envoyHttp.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
    const error = await client.images.generate({ model: 'gpt-image-2', prompt: 'x' }).catch((caught: unknown) => caught);
    expect((error as { status?: number }).status).toBe(404);
  });
});
