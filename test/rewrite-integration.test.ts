// The opt-in rewrites of issue 6 through the Envoy emulation: what Envoy does with the path, header and
// body mutations (route cache, mutation rules, content-length), and what reaches Azure.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { Outcome } from './envoy/emulator.js';
import {
  header,
  jsonRequest,
  multipartRequest,
  recommendedEnvoy,
  staticEnvoy,
  startTestServer,
  type TestServer,
  upstreamOf,
} from './support/harness.js';

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await server.close();
});
async function through(config: Record<string, unknown>, request: Parameters<ReturnType<typeof recommendedEnvoy>['request']>[0], envoyOptions = {}): Promise<Outcome> {
  server.setConfig(config);
  const envoy = recommendedEnvoy(server.target, envoyOptions);
  try {
    return await envoy.request(request);
  } finally {
    envoy.close();
    server.setConfig({});
  }
}

const API_VERSION = '2025-04-01-preview';
const openaiPaths = {
  rewrite: { openaiPaths: { enabled: true, prefix: '/v1' }, deployments: { 'gpt-image-2': 'gpt-image-2-1' }, apiVersion: { default: API_VERSION } },
};

describe('plain OpenAI paths to Azure deployments', () => {
  test('JSON: :path rewritten in the body answer, route recomputed, model removed, content-length fixed', async () => {
    const outcome = await through(openaiPaths, jsonRequest('/v1/images/generations', '{"model":"gpt-image-2","prompt":"p"}'));
    const upstream = upstreamOf(outcome);
    expect(header(upstream.headers, ':path')).toBe(`/openai/deployments/gpt-image-2-1/images/generations?api-version=${API_VERSION}`);
    expect(upstream.routeRecomputed).toBe(true);
    expect(upstream.body.toString()).toBe('{"prompt":"p"}');
    expect(header(upstream.headers, 'content-length')).toBe('14');
  });

  test('multipart edit: model taken from the part', async () => {
    const request = multipartRequest('/v1/images/edits', 'bb', [
      { name: 'image', filename: 'a.png', contentType: 'image/png', data: Buffer.from([0, 1, 2, 255]) },
      { name: 'model', data: 'gpt-image-2' },
    ]);
    const upstream = upstreamOf(await through(openaiPaths, request));
    expect(header(upstream.headers, ':path')).toBe(`/openai/deployments/gpt-image-2-1/images/edits?api-version=${API_VERSION}`);
    expect(upstream.body.toString('latin1')).not.toContain('name="model"');
  });

  test('a large body is still requested BUFFERED (the path needs the whole body)', async () => {
    const prompt = 'x'.repeat(3 * 1024 * 1024);
    const outcome = await through(openaiPaths, jsonRequest('/v1/images/generations', `{"prompt":"${prompt}","model":"gpt-image-2"}`));
    expect(header(upstreamOf(outcome).headers, ':path')).toContain('/openai/deployments/gpt-image-2-1/');
  });

  test('a deployment name that could escape the path segment gets a 400 in Azure error shape', async () => {
    const outcome = await through(openaiPaths, jsonRequest('/v1/images/generations', '{"model":"../../admin","prompt":"p"}'));
    expect(outcome.kind).toBe('local_reply');
    if (outcome.kind !== 'local_reply') return;
    expect(outcome.status).toBe(400);
    expect(JSON.parse(outcome.body.toString())).toMatchObject({ error: { type: 'invalid_request_error', code: 'invalid_value', param: 'model' } });
    expect(header(outcome.headers, 'content-type')).toBe('application/json');
  });

  test('missing model gets a 400', async () => {
    const outcome = await through(openaiPaths, jsonRequest('/v1/images/generations', '{"prompt":"p"}'));
    expect(outcome.kind === 'local_reply' && outcome.status).toBe(400);
  });

  test('with static STREAMED bodies the path cannot be rewritten: forwarded unchanged', async () => {
    server.setConfig(openaiPaths);
    const envoy = staticEnvoy(server.target, 'STREAMED');
    try {
      const upstream = upstreamOf(await envoy.request(jsonRequest('/v1/images/generations', '{"model":"gpt-image-2"}')));
      expect(header(upstream.headers, ':path')).toBe('/v1/images/generations');
      expect(upstream.body.toString()).toBe('{"model":"gpt-image-2"}');
    } finally {
      envoy.close();
      server.setConfig({});
    }
  });
});

describe('Envoy < 1.34 (no protocol_config: the body mode is unknown)', () => {
  test('rewrites that need header changes in the body answer are skipped, model removal still works', async () => {
    server.setConfig(openaiPaths);
    const envoy = staticEnvoy(server.target, 'BUFFERED', { envoyVersion: '1.33' });
    try {
      const skipped = upstreamOf(await envoy.request(jsonRequest('/v1/images/generations', '{"model":"gpt-image-2"}')));
      expect(header(skipped.headers, ':path')).toBe('/v1/images/generations');
      expect(skipped.body.toString()).toBe('{"model":"gpt-image-2"}');
      const fixed = upstreamOf(await envoy.request(jsonRequest(`/openai/deployments/d/images/generations?api-version=${API_VERSION}`, '{"model":"d","n":1}')));
      expect(fixed.body.toString()).toBe('{"n":1}');
      expect(header(fixed.headers, 'content-length')).toBe('7');
    } finally {
      envoy.close();
      server.setConfig({});
    }
  });
});

describe('Azure deployment-less routes', () => {
  test('routed to the deployment named by model when enabled', async () => {
    const config = { rewrite: { deploymentlessRoutes: true } };
    const upstream = upstreamOf(await through(config, jsonRequest(`/openai/images/generations?api-version=${API_VERSION}`, '{"model":"dep-1","prompt":"p"}')));
    expect(header(upstream.headers, ':path')).toBe(`/openai/deployments/dep-1/images/generations?api-version=${API_VERSION}`);
    expect(upstream.body.toString()).toBe('{"prompt":"p"}');
  });
});

describe('aliases, api-version, credentials (decided at request headers)', () => {
  test('alias + api-version in the headers answer with clear_route_cache', async () => {
    const config = { rewrite: { aliasDeploymentRoutes: true, deployments: { images: 'gpt-image-2-1' }, apiVersion: { default: API_VERSION } } };
    const outcome = await through(config, jsonRequest('/openai/deployments/images/images/generations', '{"model":"images","prompt":"p"}'));
    const upstream = upstreamOf(outcome);
    expect(header(upstream.headers, ':path')).toBe(`/openai/deployments/gpt-image-2-1/images/generations?api-version=${API_VERSION}`);
    expect(upstream.routeRecomputed).toBe(true);
    expect(upstream.body.toString()).toBe('{"prompt":"p"}');
  });

  test('Bearer key becomes api-key', async () => {
    const config = { credentials: { bearerToApiKey: true } };
    const request = jsonRequest(`/openai/deployments/d/images/generations?api-version=${API_VERSION}`, '{"prompt":"p"}', [['authorization', 'Bearer sk-live-1']]);
    request.headers = request.headers.filter(([key]) => key !== 'api-key');
    const upstream = upstreamOf(await through(config, request));
    expect(header(upstream.headers, 'api-key')).toBe('sk-live-1');
    expect(header(upstream.headers, 'authorization')).toBeUndefined();
  });

  test('api-key from the secret file replaces the caller credential, also on requests without a body', async () => {
    const withKey = await startTestServer({ credentials: { apiKeyFile: '/run/secrets/azure' } }, { apiKey: () => 'file-key' });
    const envoy = recommendedEnvoy(withKey.target);
    try {
      const upstream = upstreamOf(
        await envoy.request({ headers: [[':method', 'GET'], [':path', '/openai/deployments/d/images/generations'], ['api-key', 'caller'], ['authorization', 'Bearer x']] }),
      );
      expect(header(upstream.headers, 'api-key')).toBe('file-key');
      expect(header(upstream.headers, 'authorization')).toBeUndefined();
    } finally {
      envoy.close();
      await withKey.close();
    }
  });
});

describe('v1 routes and field hygiene', () => {
  test('v1: provider prefix stripped, model kept as the deployment name', async () => {
    const config = { rewrite: { v1: { stripProviderPrefixes: ['azure/'] } } };
    const upstream = upstreamOf(await through(config, jsonRequest('/openai/v1/images/generations', '{"model":"azure/gpt-image-2-1","prompt":"p"}')));
    expect(upstream.body.toString()).toBe('{"model":"gpt-image-2-1","prompt":"p"}');
  });

  test('response_format dropped, extra_body unwrapped, configured fields dropped', async () => {
    const config = { rewrite: { fields: { dropResponseFormat: true, extraBody: 'unwrap', drop: ['style'] } } };
    const body = '{"model":"d","prompt":"p","response_format":"b64_json","style":"vivid","extra_body":{"quality":"high"}}';
    const upstream = upstreamOf(await through(config, jsonRequest(`/openai/deployments/d/images/generations?api-version=${API_VERSION}`, body)));
    expect(JSON.parse(upstream.body.toString())).toEqual({ prompt: 'p', quality: 'high' });
    expect(header(upstream.headers, 'content-length')).toBe(String(upstream.body.length));
  });
});

describe('dynamic metadata for access logs', () => {
  test('written under the configured namespace when Envoy lists it in receiving_namespaces', async () => {
    const outcome = await through(
      { metadataNamespace: 'azure_image_extproc' },
      jsonRequest(`/openai/deployments/gpt-image-2-1/images/generations?api-version=${API_VERSION}`, '{"model":"gpt-image-2-1","prompt":"p"}'),
      { receivingNamespaces: ['azure_image_extproc'] },
    );
    expect(outcome.dynamicMetadata.azure_image_extproc).toMatchObject({
      action: 'rewritten',
      route: 'deployment',
      deployment: 'gpt-image-2-1',
      changes: 'model',
      bytes_before: Buffer.byteLength('{"model":"gpt-image-2-1","prompt":"p"}'),
      bytes_after: Buffer.byteLength('{"prompt":"p"}'),
    });
  });

  test('pass-through decisions carry their reason', async () => {
    const outcome = await through(
      { metadataNamespace: 'azure_image_extproc' },
      jsonRequest(`/openai/deployments/d/images/generations?api-version=${API_VERSION}`, '{"prompt":"p"}'),
      { receivingNamespaces: ['azure_image_extproc'] },
    );
    expect(outcome.dynamicMetadata.azure_image_extproc).toMatchObject({ action: 'passed', reason: 'no_model' });
  });

  test('no namespace configured: no metadata at all (default behaviour unchanged)', async () => {
    const outcome = await through({}, jsonRequest(`/openai/deployments/d/images/generations?api-version=${API_VERSION}`, '{"model":"d"}'), {
      receivingNamespaces: ['azure_image_extproc'],
    });
    expect(outcome.dynamicMetadata).toEqual({});
  });
});

describe('Envoy mutation rules', () => {
  test(':authority cannot be changed by default (our rewrites never try): the request still reaches its host', async () => {
    const outcome = await through(openaiPaths, jsonRequest('/v1/images/generations', '{"model":"gpt-image-2"}'));
    expect(outcome.counters.rejected_header_mutations).toBe(0);
    expect(header(upstreamOf(outcome).headers, ':authority')).toBe('myres.openai.azure.com');
  });
});
