// One key per Azure resource (credentials.apiKeyFiles, src/credentials.ts): the key the server injects is
// the key of the resource envoy/envoy-multi-resource.yaml sends the request to, with the configuration
// shown in docs/deploy-multi-resource.md.
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { buildConfig } from '../../src/config.js';
import { createApiKeys, keyFileFor, type KeyFileSettings } from '../../src/credentials.js';
import { runExplain } from '../../src/explain.js';
import { createLogger } from '../../src/log.js';
import { cluster, connectionManagers, envoyApi, routeMatches } from '../support/envoy-api.js';
import { jsonRequest, recommendedEnvoy, startTestServer, upstreamOf, header } from '../support/harness.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const DOC = readFileSync(path.join(ROOT, 'docs/deploy-multi-resource.md'), 'utf8');
/** The `credentials:` example of the docs page. */
const documented = (YAML.parse(/```yaml\n(credentials:[\s\S]*?)```/.exec(DOC)![1]!) as { credentials: KeyFileSettings }).credentials;
const KEY_A = documented.apiKeyFile!;
const KEY_B = documented.apiKeyFiles!['/resource-b/']!;

const multi = envoyApi().decodeBootstrapFile(path.join(ROOT, 'envoy/envoy-multi-resource.yaml'));
const routes = connectionManagers(multi).find((m) => m.port === 10000)!.routes;
/** The Azure host Envoy sends a POST with this path to. */
function hostFor(p: string): string {
  const route = routes.find((r) => routeMatches(r, 'POST', p))!;
  const c = cluster(multi, String(route.route!.cluster)) as { load_assignment: { endpoints: Array<{ lb_endpoints: Array<{ endpoint: { address: { socket_address: { address: string } } } }> }> } };
  return c.load_assignment.endpoints[0]!.lb_endpoints[0]!.endpoint.address.socket_address.address;
}
const KEY_OF_HOST: Record<string, string> = { 'YOUR_RESOURCE.openai.azure.com': KEY_A, 'YOUR_RESOURCE_B.openai.azure.com': KEY_B };

// Image requests (the ones that reach the server), as the proxy sends them.
const PATHS = [
  '/resource-b/openai/deployments/gpt-image-1/images/generations',
  '/Resource-B/openai/deployments/gpt-image-1/images/edits',
  '/RESOURCE-B/OpenAI/v1/images/generations',
  '/resource-b/openai/deployments/gpt-image-1/%69mages/edits',
  '/%72esource-b/openai/deployments/gpt-image-1/images/edits',
  '/resource-bx/openai/deployments/gpt-image-1/images/edits',
  '/resource-b-eu/openai/deployments/gpt-image-1/images/edits',
  '/openai/deployments/gpt-image-b/images/generations',
  '/OpenAI/Deployments/GPT-IMAGE-B/images/edits',
  '/openai/deployments/gpt-image-b/%69mages/edits',
  '/openai/deployments/gpt-image-%62/images/edits',
  '/openai/deployments/gpt-image-bb/images/edits',
  '/openai/deployments/gpt-image-1/images/generations',
  '/openai/v1/images/generations',
  '/team-a/openai/deployments/x/images/edits',
];

describe('keyFileFor', () => {
  it.each(PATHS)('%s: the key of the resource Envoy routes it to', (p) => {
    expect(keyFileFor(documented, p)).toBe(KEY_OF_HOST[hostFor(p)]);
  });

  it('the longest matching prefix wins; no match and no apiKeyFile means no key', () => {
    const settings = { apiKeyFiles: { '/a/': 'short', '/a/b/': 'long' } };
    expect(keyFileFor(settings, '/a/b/openai/v1/images/edits')).toBe('long');
    expect(keyFileFor(settings, '/a/c/openai/v1/images/edits')).toBe('short');
    expect(keyFileFor(settings, '/c/openai/v1/images/edits')).toBeUndefined();
    expect(keyFileFor({ apiKeyFile: 'one' }, '/anything')).toBe('one');
    expect(keyFileFor({}, '/anything')).toBeUndefined();
  });

  it('ignores ASCII case only (a dotted capital I is not an i)', () => {
    expect(keyFileFor({ apiKeyFiles: { '/ii/': 'f' } }, '/İi/x')).toBeUndefined();
    expect(keyFileFor({ apiKeyFiles: { '/ii/': 'f' } }, '/II/x')).toBe('f');
  });
});

describe('configuration', () => {
  it('accepts the documented example', () => {
    expect(buildConfig({ credentials: documented }).credentials).toMatchObject(documented);
  });

  it.each(['/resource-b', 'resource-b/', ''])('refuses the prefix %j with a line that says what a prefix is', (prefix) => {
    expect(() => buildConfig({ credentials: { apiKeyFiles: { [prefix]: '/run/secrets/b' } } })).toThrow(/a path prefix starting and ending with \//);
  });
});

describe('createApiKeys', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'api-keys-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const lines: string[] = [];
  const logger = createLogger('debug', { write: (line: string) => void lines.push(line) });

  it('reads one file per resource, follows a replaced file, and drops files a reload no longer names', async () => {
    const a = path.join(dir, 'a');
    const b = path.join(dir, 'b');
    writeFileSync(a, 'sk-PLANTED-A-0123456789\n');
    writeFileSync(b, 'sk-PLANTED-B-0123456789\n');
    const keys = createApiKeys(logger, { debounceMs: 10 });
    keys.use({ apiKeyFile: a, apiKeyFiles: { '/resource-b/': b } });
    expect(keys.value('/resource-b/openai/v1/images/edits')).toBe('sk-PLANTED-B-0123456789');
    expect(keys.value('/openai/v1/images/edits')).toBe('sk-PLANTED-A-0123456789');

    // Secret rotation the Kubernetes way: a new file renamed over the old one.
    writeFileSync(`${b}.new`, 'sk-PLANTED-B2-0123456789\n');
    renameSync(`${b}.new`, b);
    const start = Date.now();
    while (keys.value('/resource-b/x') !== 'sk-PLANTED-B2-0123456789' && Date.now() - start < 3_000) await new Promise((r) => setTimeout(r, 20));
    expect(keys.value('/resource-b/x')).toBe('sk-PLANTED-B2-0123456789');

    keys.use({ apiKeyFile: a });
    expect(keys.value('/resource-b/x')).toBe('sk-PLANTED-A-0123456789');
    keys.close();
    expect(lines.join('\n')).not.toContain('sk-PLANTED');
  });
});

describe('through the server and the Envoy emulation', () => {
  it('injects the key of the resource each request goes to, and removes the caller\'s credentials', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'api-keys-'));
    const files = { apiKeyFile: path.join(dir, 'a'), apiKeyFiles: { '/resource-b/': path.join(dir, 'b'), '/openai/deployments/gpt-image-b/': path.join(dir, 'b') } };
    writeFileSync(files.apiKeyFile, 'key-of-resource-a');
    writeFileSync(files.apiKeyFiles['/resource-b/'], 'key-of-resource-b');
    const keys = createApiKeys(createLogger('silent'));
    keys.use(files);
    const server = await startTestServer({ credentials: files }, { apiKey: (p?: string) => keys.value(p ?? '/') });
    const envoy = recommendedEnvoy(server.target);
    try {
      const body = '{"model":"gpt-image-1","prompt":"a red kite"}';
      for (const [p, key] of [
        ['/resource-b/openai/deployments/gpt-image-1/images/generations?api-version=2025-04-01-preview', 'key-of-resource-b'],
        ['/openai/deployments/gpt-image-b/images/generations?api-version=2025-04-01-preview', 'key-of-resource-b'],
        ['/openai/deployments/gpt-image-1/images/generations?api-version=2025-04-01-preview', 'key-of-resource-a'],
        ['/resource-b/openai/v1/images/generations', 'key-of-resource-b'],
      ] as const) {
        const upstream = upstreamOf(await envoy.request(jsonRequest(p, body, [['authorization', 'Bearer caller-token']])));
        expect(header(upstream.headers, 'api-key'), p).toBe(key);
        expect(header(upstream.headers, 'authorization'), p).toBeUndefined();
      }
    } finally {
      envoy.close();
      await server.close();
      keys.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('explain', () => {
  it('shows the key of the resource the path selects', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'api-keys-'));
    try {
      writeFileSync(path.join(dir, 'a'), 'key-a');
      writeFileSync(path.join(dir, 'b'), 'key-of-resource-b');
      const config = path.join(dir, 'config.yaml');
      writeFileSync(config, `credentials:\n  apiKeyFile: ${path.join(dir, 'a')}\n  apiKeyFiles: { "/resource-b/": ${path.join(dir, 'b')} }\n`);
      const keyOf = async (p: string) => {
        let out = '';
        const body = path.join(dir, 'body.json');
        writeFileSync(body, '{"model":"m","prompt":"p"}');
        const status = await runExplain(['--config', config, '--path', p, '-H', 'content-type: application/json', '--body-file', body, '--json'], {
          env: {},
          stdout: (text: string) => void (out += text),
          stderr: () => undefined,
        } as never);
        expect(status).toBe(0);
        const report = JSON.parse(out) as { headerChanges: Array<{ name: string; value?: string }> };
        return report.headerChanges.find((c) => c.name === 'api-key')?.value;
      };
      expect(await keyOf('/resource-b/openai/deployments/x/images/generations')).toBe('[hidden, 17 characters]');
      expect(await keyOf('/openai/deployments/x/images/generations')).toBe('[hidden, 5 characters]');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

