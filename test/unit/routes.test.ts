import { describe, expect, test } from 'vitest';
import { decodeDeployment, matchImageRoute, queryParam, splitPath } from '../../src/routes.js';

describe('matchImageRoute: deployment routes (rewritten)', () => {
  test.each([
    // [path, deployment, operation, prefix, query]
    ['/openai/deployments/gpt-image-2-1/images/generations?api-version=2025-04-01-preview', 'gpt-image-2-1', 'generations', '', 'api-version=2025-04-01-preview'],
    ['/openai/deployments/gpt-image-2-1/images/edits?api-version=2025-04-01-preview', 'gpt-image-2-1', 'edits', '', 'api-version=2025-04-01-preview'],
    ['/openai/deployments/dep/images/generations', 'dep', 'generations', '', ''],
    ['/openai/deployments/dep/images/generations?', 'dep', 'generations', '', ''],
    ['/openai/deployments/dep/images/generations/?api-version=x', 'dep', 'generations', '', 'api-version=x'],
    ['/OpenAI/Deployments/dep/Images/Generations?api-version=x', 'dep', 'generations', '', 'api-version=x'],
    ['/api/projects/p1/openai/deployments/dep/images/edits?api-version=x', 'dep', 'edits', '/api/projects/p1', 'api-version=x'],
    ['/apim-prefix/v2/openai/deployments/dep/images/generations?api-version=x&api-version=y&foo', 'dep', 'generations', '/apim-prefix/v2', 'api-version=x&api-version=y&foo'],
    ['/openai/deployments/gpt-image-1.5/images/generations?api-version=x', 'gpt-image-1.5', 'generations', '', 'api-version=x'],
    ['/openai/deployments/my%20dep/images/generations', 'my dep', 'generations', '', ''],
    ['/openai/deployments/caf%C3%A9/images/generations', 'café', 'generations', '', ''],
    // Escaped unreserved characters name the same resource (RFC 3986 §6.2.2.2).
    ['/openai/deployments/dep/%69mages/generations', 'dep', 'generations', '', ''],
    ['/openai/deployments/gpt%2Dimage/images/generations', 'gpt-image', 'generations', '', ''],
  ])('%s', (path, deployment, operation, prefix, query) => {
    const route = matchImageRoute(path);
    expect(route).toMatchObject({ kind: 'deployment', deployment, operation, prefix, query });
  });

  test('keeps the path as sent (no normalisation of what is forwarded)', () => {
    expect(matchImageRoute('/OpenAI/Deployments/dep/Images/Generations/?a=b')?.pathname).toBe('/OpenAI/Deployments/dep/Images/Generations/');
  });
});

describe('matchImageRoute: other image routes are recognised but are not deployment routes', () => {
  test.each([
    ['/openai/v1/images/generations', 'v1', 'generations'],
    ['/openai/v1/images/edits?api-version=preview', 'v1', 'edits'],
    ['/gw/openai/v1/images/generations/', 'v1', 'generations'],
    ['/openai/images/generations?api-version=2025-04-01-preview', 'deploymentless', 'generations'],
    ['/openai/images/edits', 'deploymentless', 'edits'],
  ])('%s -> %s', (path, kind, operation) => {
    expect(matchImageRoute(path)).toMatchObject({ kind, operation });
  });
});

describe('matchImageRoute: never an image route', () => {
  test.each([
    '/openai/deployments/dep/chat/completions?api-version=x',
    '/openai/deployments/dep/images/variations',
    '/openai/images/generations:submit?api-version=2023-06-01-preview',
    '/openai/operations/images/abc',
    '/openai/deployments/dep/responses',
    '/providers/blackforestlabs/v1/flux-2-pro?api-version=preview',
    '/mai/v1/images/generations',
    '/v1/images/generations',
    '/openai/deployments//images/generations',
    '/openai/deployments/a/b/images/generations',
    '/openai/deployments/dep/images/generations/extra',
    '/openai/deployments/dep/images/generationsX',
    '/openai/deployments/dep/images/generations//',
    '/xopenai/deployments/dep/images/generations',
    // Names that could escape the path segment are refused (docs/azure-images.md#matching-routes, item 5).
    '/openai/deployments/a%2Fb/images/generations',
    '/openai/deployments/a%5Cb/images/generations',
    '/openai/deployments/%2E%2E/images/generations',
    '/openai/deployments/../images/generations',
    '/openai/deployments/./images/generations',
    '/openai/deployments/%E0%A4%A/images/generations',
    '/openai/deployments/a%00b/images/generations',
    '',
    '*',
  ])('%s', (path) => {
    expect(matchImageRoute(path)?.kind === 'deployment').toBe(false);
  });
});

describe('helpers', () => {
  test('splitPath', () => {
    expect(splitPath('/a?b=c?d')).toEqual({ pathname: '/a', query: 'b=c?d' });
    expect(splitPath('/a#frag')).toEqual({ pathname: '/a', query: '' });
  });
  test('decodeDeployment', () => {
    expect(decodeDeployment('gpt-image-2-1')).toBe('gpt-image-2-1');
    expect(decodeDeployment('%')).toBeUndefined();
    expect(decodeDeployment('a%2fb')).toBeUndefined();
  });
  test('queryParam', () => {
    expect(queryParam('api-version=2025-04-01-preview&x=1', 'api-version')).toBe('2025-04-01-preview');
    expect(queryParam('x=1&api-version=a%20b', 'api-version')).toBe('a b');
    expect(queryParam('x=1', 'api-version')).toBeUndefined();
    expect(queryParam('api-version', 'api-version')).toBe('');
  });
});
