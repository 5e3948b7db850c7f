import { describe, expect, test } from 'vitest';
import { buildConfig } from '../../src/config.js';
import {
  deploymentFor,
  invalidDeployment,
  isHandled,
  isRejection,
  jsonString,
  pathFromBody,
  planRequest,
  routeFor,
  unwrapExtraBody,
  type RequestPlan,
} from '../../src/rewrite.js';

const noKey = () => undefined;

function plan(path: string, overrides: Record<string, unknown> = {}, authorization?: string, apiKey: () => string | undefined = noKey): RequestPlan {
  const config = buildConfig(overrides);
  const route = routeFor(path, config.rewrite);
  if (!route) throw new Error(`no route for ${path}`);
  const result = planRequest(config, { route, authorization, apiKey });
  if (isRejection(result)) throw new Error('unexpected rejection');
  return result;
}

describe('defaults: only remove model on deployment routes', () => {
  test('deployment route: model removed, no header changes', () => {
    const result = plan('/openai/deployments/d/images/generations?api-version=x');
    expect([...result.rules.keys()]).toEqual(['model']);
    expect(result.headers.set).toEqual([]);
    expect(result.headers.remove).toEqual([]);
    expect(result.pathFromModel).toBe(false);
  });

  test('v1 and deployment-less routes are not handled', () => {
    const config = buildConfig({});
    expect(isHandled(routeFor('/openai/v1/images/generations', config.rewrite)!, config)).toBe(false);
    expect(isHandled(routeFor('/openai/images/edits', config.rewrite)!, config)).toBe(false);
    expect(routeFor('/v1/images/generations', config.rewrite)).toBeUndefined();
  });
});

describe('aliases and api-version on deployment routes', () => {
  test('alias rewrites the deployment segment, keeping prefix and query', () => {
    const result = plan('/gw/openai/deployments/img/images/edits?api-version=2025-04-01-preview&x=1', {
      rewrite: { aliasDeploymentRoutes: true, deployments: { img: 'gpt-image-2-1' } },
    });
    expect(result.headers.set).toContainEqual([':path', '/gw/openai/deployments/gpt-image-2-1/images/edits?api-version=2025-04-01-preview&x=1']);
    expect(result.actions).toEqual(['alias']);
  });

  test('aliases are off unless enabled', () => {
    const result = plan('/openai/deployments/img/images/edits?api-version=v', { rewrite: { deployments: { img: 'real' } } });
    expect(result.headers.set).toEqual([]);
  });

  test('default api-version is added only when missing; force replaces it', () => {
    const add = { rewrite: { apiVersion: { default: '2025-04-01-preview' } } };
    expect(plan('/openai/deployments/d/images/generations', add).headers.set).toContainEqual([
      ':path',
      '/openai/deployments/d/images/generations?api-version=2025-04-01-preview',
    ]);
    expect(plan('/openai/deployments/d/images/generations?api-version=2024-10-21', add).headers.set).toEqual([]);
    const force = { rewrite: { apiVersion: { default: '2025-04-01-preview', force: true } } };
    expect(plan('/openai/deployments/d/images/generations?api-version=2024-10-21&a=b', force).headers.set).toContainEqual([
      ':path',
      '/openai/deployments/d/images/generations?a=b&api-version=2025-04-01-preview',
    ]);
  });
});

describe('credentials', () => {
  test('Bearer API key becomes api-key on classic routes', () => {
    const result = plan('/openai/deployments/d/images/generations?api-version=x', { credentials: { bearerToApiKey: true } }, 'Bearer sk-abc123');
    expect(result.headers.set).toContainEqual(['api-key', 'sk-abc123']);
    expect(result.headers.remove).toContain('authorization');
  });

  test('an Entra ID token (JWT) stays a Bearer token', () => {
    const result = plan('/openai/deployments/d/images/generations?api-version=x', { credentials: { bearerToApiKey: true } }, 'Bearer aaa.bbb.ccc');
    expect(result.headers.set).toEqual([]);
  });

  test('a key from the secret file replaces every caller credential', () => {
    const result = plan('/openai/deployments/d/images/generations?api-version=x', { credentials: { apiKeyFile: '/secret' } }, 'Bearer caller', () => 'from-file');
    expect(result.headers.set).toContainEqual(['api-key', 'from-file']);
    expect(result.headers.remove).toEqual(expect.arrayContaining(['authorization', 'ocp-apim-subscription-key']));
  });
});

describe('v1 routes: model must be the deployment', () => {
  const config = { rewrite: { v1: { stripProviderPrefixes: ['azure/'], mapModels: true }, deployments: { 'gpt-image-2': 'gpt-image-2-1' } } };

  test.each([
    ['"azure/gpt-image-2-1"', '"gpt-image-2-1"'],
    ['"gpt-image-2"', '"gpt-image-2-1"'],
    ['"azure/gpt-image-2"', '"gpt-image-2-1"'],
    ['gpt-image-2', 'gpt-image-2-1'], // multipart part: bare text
  ])('%s -> %s', (raw, expected) => {
    const rule = plan('/openai/v1/images/generations', config).rules.get('model')!;
    expect(rule(Buffer.from(raw))).toEqual({ replace: Buffer.from(expected) });
  });

  test('an already correct model is kept, and field hygiene does not apply', () => {
    const result = plan('/openai/v1/images/generations', { ...config, rewrite: { ...config.rewrite, fields: { dropResponseFormat: true } } });
    expect(result.rules.get('model')!(Buffer.from('"other"'))).toBe('keep');
    expect(result.rules.has('response_format')).toBe(false);
  });
});

describe('field hygiene', () => {
  test('each flag adds its own rule', () => {
    const result = plan('/openai/deployments/d/images/generations?api-version=x', {
      rewrite: { fields: { dropResponseFormat: true, extraBody: 'unwrap', drop: ['style'] } },
    });
    expect([...result.rules.keys()].sort()).toEqual(['extra_body', 'model', 'response_format', 'style']);
    expect(result.unwrapExtraBody).toBe(true);
  });

  test('unwrapExtraBody hoists members, top-level members win', () => {
    const touched = [{ name: 'extra_body', action: 'remove' as const, value: Buffer.from('{"quality":"high","n":5}') }];
    expect(unwrapExtraBody(Buffer.from('{"prompt":"p","n":1}'), touched).toString()).toBe('{"prompt":"p","n":1,"quality":"high"}');
    expect(unwrapExtraBody(Buffer.from('{}'), touched).toString()).toBe('{"quality":"high","n":5}');
    expect(unwrapExtraBody(Buffer.from('{"a":1}'), [{ name: 'extra_body', action: 'remove', value: Buffer.from('[1]') }]).toString()).toBe('{"a":1}');
  });
});

describe('paths from the body (OpenAI paths, deployment-less routes)', () => {
  const openai = { rewrite: { openaiPaths: { enabled: true }, apiVersion: { default: '2025-04-01-preview' }, deployments: { 'gpt-image-2': 'gpt-image-2-1' } } };
  const touched = (value: string) => [{ name: 'model', action: 'remove' as const, value: Buffer.from(value) }];

  test('maps model through the table and percent-encodes the deployment', () => {
    const config = buildConfig(openai);
    const result = plan('/v1/images/edits', openai);
    expect(pathFromBody(result, config, touched('"gpt-image-2"'), 'json')).toBe('/openai/deployments/gpt-image-2-1/images/edits?api-version=2025-04-01-preview');
    expect(pathFromBody(result, config, touched('"my dep"'), 'json')).toBe('/openai/deployments/my%20dep/images/edits?api-version=2025-04-01-preview');
    expect(pathFromBody(result, config, touched('plain'), 'multipart')).toBe('/openai/deployments/plain/images/edits?api-version=2025-04-01-preview');
  });

  test.each(['"../x"', '"a/b"', '".."', '"a\\\\b"', '"x\\u0000"'])('refuses %s with a 400 in Azure error shape', (value) => {
    const config = buildConfig(openai);
    const result = pathFromBody(plan('/v1/images/generations', openai), config, touched(value), 'json');
    expect(result).toMatchObject({ status: 400, code: 'invalid_value', param: 'model' });
  });

  test('missing or non-string model is a 400', () => {
    const config = buildConfig(openai);
    expect(pathFromBody(plan('/v1/images/generations', openai), config, [], 'json')).toMatchObject({ status: 400, reason: 'missing_model' });
    expect(pathFromBody(plan('/v1/images/generations', openai), config, touched('12'), 'json')).toMatchObject({ status: 400, reason: 'missing_model' });
  });

  test('without modelAsDeployment, unknown models are refused', () => {
    const strict = { rewrite: { ...openai.rewrite, modelAsDeployment: false } };
    const config = buildConfig(strict);
    expect(pathFromBody(plan('/v1/images/generations', strict), config, touched('"other"'), 'json')).toMatchObject({ status: 400, reason: 'invalid_deployment' });
  });

  test('deployment-less Azure route keeps its prefix and query, adds api-version only if missing', () => {
    const less = { rewrite: { deploymentlessRoutes: true, apiVersion: { default: 'v-default' } } };
    const config = buildConfig(less);
    expect(pathFromBody(plan('/p/openai/images/edits?api-version=v-client', less), config, touched('"dep"'), 'json')).toBe(
      '/p/openai/deployments/dep/images/edits?api-version=v-client',
    );
  });
});

describe('helpers', () => {
  test('jsonString', () => {
    expect(jsonString(Buffer.from('"a\\u0062"'))).toBe('ab');
    expect(jsonString(Buffer.from('null'))).toBeUndefined();
    expect(jsonString(Buffer.from('"broken'))).toBeUndefined();
  });
  test('deploymentFor / invalidDeployment', () => {
    const rewrite = buildConfig({ rewrite: { deployments: { a: 'b' } } }).rewrite;
    expect(deploymentFor('a', rewrite)).toBe('b');
    expect(deploymentFor('z', rewrite)).toBe('z');
    expect(invalidDeployment('gpt-image-1.5')).toBeUndefined();
    expect(invalidDeployment('.')).toBeDefined();
  });
});
