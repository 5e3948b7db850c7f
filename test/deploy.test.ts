// Deployment files, checked statically (no Docker engine, no cluster here): the Dockerfile, the compose
// demo stack, the Kubernetes sidecar manifests, and that their ports, paths and names agree with
// envoy/*.yaml. Plus src/healthcheck.ts (the image's HEALTHCHECK) against a real grpc-js health server, and
// deploy/envoy/run-for-azure.sh run with a stand-in `envoy`.
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { checkHealth, healthTarget } from '../src/healthcheck.js';
import { cluster, connectionManagers, envoyApi, extProcFilterOf, type Json } from './support/envoy-api.js';

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- parsed YAML

const ROOT = path.resolve(import.meta.dirname, '..');
const read = (rel: string) => readFileSync(path.join(ROOT, rel), 'utf8');
const yamlDocs = (rel: string): Obj[] => YAML.parseAllDocuments(read(rel)).map((d) => d.toJS() as Obj);
const envoyConfig = (rel: string) => envoyApi().decodeBootstrapFile(path.join(ROOT, rel));

const ENVOY_IMAGE = 'envoyproxy/envoy:v1.40.2';
const SOCKET = '/var/run/extproc/extproc.sock';

/** host/port of a cluster's single endpoint. */
function endpointOf(config: Record<string, Json>, name: string): Obj {
  const c = cluster(config, name) as Obj;
  const endpoints = c.load_assignment.endpoints.flatMap((e: Obj) => e.lb_endpoints);
  expect(endpoints).toHaveLength(1);
  return endpoints[0].endpoint.address;
}

const pinned = (image: string) => /^[^:@\s]+(:[^:\s]+|@sha256:[0-9a-f]{64})$/.test(image) && !/:latest$/.test(image) && !/\$\{/.test(image);

// ---------------------------------------------------------------------------------------------------

describe('healthcheck CLI (src/healthcheck.ts)', () => {
  let server: grpc.Server;
  let health: HealthImplementation;
  let port: number;
  let socketDir: string;
  let socketTarget: string;

  beforeAll(async () => {
    health = new HealthImplementation({ '': 'SERVING', 'envoy.service.ext_proc.v3.ExternalProcessor': 'SERVING' });
    server = new grpc.Server();
    health.addToServer(server);
    const bind = (address: string) =>
      new Promise<number>((resolve, reject) =>
        server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
      );
    port = await bind('127.0.0.1:0');
    socketDir = mkdtempSync(path.join(tmpdir(), 'hc-'));
    socketTarget = `unix:${path.join(socketDir, 'health.sock')}`;
    await bind(socketTarget);
  });
  afterAll(() => {
    server.forceShutdown();
    rmSync(socketDir, { recursive: true, force: true });
  });

  it('picks the target from the argument, EXTPROC_HEALTH_LISTEN, EXTPROC_LISTEN, or the default', () => {
    expect(healthTarget('10.0.0.1:1', { EXTPROC_LISTEN: 'x:2' })).toBe('10.0.0.1:1');
    expect(healthTarget(undefined, { EXTPROC_HEALTH_LISTEN: '0.0.0.0:50052', EXTPROC_LISTEN: 'unix:/s' })).toBe('127.0.0.1:50052');
    expect(healthTarget(undefined, { EXTPROC_LISTEN: 'unix:/var/run/extproc/extproc.sock' })).toBe('unix:/var/run/extproc/extproc.sock');
    expect(healthTarget(undefined, { EXTPROC_LISTEN: '[::]:50051' })).toBe('[::1]:50051');
    expect(healthTarget(undefined, {})).toBe('127.0.0.1:50051');
  });

  it('SERVING over TCP and over a Unix socket, for "" and the ext_proc service name', async () => {
    expect(await checkHealth(`127.0.0.1:${port}`)).toEqual({ ok: true, status: 'SERVING' });
    expect(await checkHealth(socketTarget, 'envoy.service.ext_proc.v3.ExternalProcessor')).toEqual({ ok: true, status: 'SERVING' });
  });

  it('unhealthy when NOT_SERVING (draining), for an unknown service, or when nothing listens', async () => {
    health.setStatus('', 'NOT_SERVING');
    try {
      expect(await checkHealth(`127.0.0.1:${port}`)).toEqual({ ok: false, status: 'NOT_SERVING' });
    } finally {
      health.setStatus('', 'SERVING');
    }
    expect((await checkHealth(`127.0.0.1:${port}`, 'nope')).error).toMatch(/^NOT_FOUND/);
    const started = Date.now();
    expect((await checkHealth('127.0.0.1:1', '', 500)).ok).toBe(false);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('as a program: exit 0 only when SERVING', async () => {
    const run = async (args: string[], env: NodeJS.ProcessEnv = {}) => {
      const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/healthcheck.ts'), ...args], {
        env: { ...process.env, EXTPROC_HEALTH_LISTEN: '', EXTPROC_LISTEN: '', ...env },
        stdio: 'ignore',
      });
      const [code] = (await once(child, 'exit')) as [number];
      return code;
    };
    expect(await run([`127.0.0.1:${port}`])).toBe(0);
    expect(await run([], { EXTPROC_HEALTH_LISTEN: socketTarget })).toBe(0);
    expect(await run(['127.0.0.1:1'])).toBe(1);
  });
});

// ---------------------------------------------------------------------------------------------------

describe('Dockerfile', () => {
  const lines = read('Dockerfile')
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.trim().startsWith('#'));
  const stages = new Map<string, string[]>();
  let current = '';
  for (const line of lines) {
    const from = /^FROM\s+(\S+)\s+AS\s+(\S+)/i.exec(line);
    if (from) {
      current = from[2]!;
      stages.set(current, [line]);
    } else if (current) stages.get(current)!.push(line);
  }
  const runtime = stages.get('runtime') ?? [];

  it('is multi-stage on Node 24 (current LTS): build, prod-deps, runtime last', () => {
    expect([...stages.keys()]).toEqual(['build', 'prod-deps', 'runtime']);
    expect(lines.find((l) => l.startsWith('ARG NODE_IMAGE='))).toBe('ARG NODE_IMAGE=node:24-bookworm-slim');
    for (const stage of stages.values()) expect(stage[0]).toMatch(/^FROM \$\{NODE_IMAGE\} AS /);
  });

  it('builds with the lockfile and ships production dependencies only', () => {
    expect(stages.get('build')).toContain('RUN npm ci --no-audit --no-fund');
    // The server, then the Azure stand-in the compose demo runs from the same image.
    expect(stages.get('build')).toContain('RUN npm run build && npx tsc -p tsconfig.tools.json');
    expect(stages.get('prod-deps')!.some((l) => /^RUN npm ci --omit=dev\b/.test(l))).toBe(true);
    expect(runtime).toContain('COPY --from=prod-deps /app/node_modules ./node_modules');
    expect(runtime).toContain('COPY --from=build /app/dist ./dist');
    expect(runtime).toContain('COPY --from=build /app/proto ./proto'); // src/proto.ts resolves ../proto from dist
    expect(runtime).toContain('COPY package.json ./');
    // One RUN only: the Unix-socket directory, owned by the server's user (a fresh volume copies it).
    expect(runtime.filter((l) => /^RUN\b/.test(l))).toEqual(['RUN mkdir -p /var/run/extproc && chown 1000:1000 /var/run/extproc']);
  });

  it('runs node directly as a numeric non-root user, health-checked over gRPC', () => {
    expect(runtime).toContain('ENV NODE_ENV=production');
    const user = runtime.find((l) => l.startsWith('USER '))!;
    expect(user).toMatch(/^USER [1-9]\d*:[1-9]\d*$/);
    // The image runs node exactly as `npm start` does (same V8 flags), without npm.
    const start = (JSON.parse(read('package.json')) as { scripts: { start: string } }).scripts.start.split(' ');
    expect(start[0]).toBe('node');
    expect(runtime.at(-1)).toBe(`ENTRYPOINT ${JSON.stringify(start).replace(/,/g, ', ')}`);
    expect(runtime.some((l) => /^(CMD|ENTRYPOINT).*npm/.test(l))).toBe(false);
    expect(runtime.find((l) => l.startsWith('HEALTHCHECK'))).toMatch(/ CMD \["node", "dist\/healthcheck\.js"\]$/);
    expect(runtime).toContain('EXPOSE 50051');
  });

  it('.dockerignore sends only the build inputs (allow-list)', () => {
    const entries = read('.dockerignore')
      .split('\n')
      .filter((l) => l && !l.startsWith('#'));
    expect(entries[0]).toBe('*');
    expect(entries.slice(1).sort()).toEqual(['!package-lock.json', '!package.json', '!proto/', '!src/', '!tools/', '!tsconfig.build.json', '!tsconfig.json', '!tsconfig.tools.json']);
  });
});

// ---------------------------------------------------------------------------------------------------

describe('docker-compose.yml (the LiteLLM #26316 demo)', () => {
  const compose = YAML.parse(read('docker-compose.yml')) as Obj;
  const services = compose.services as Obj;
  const demo = envoyConfig('envoy/envoy-demo.yaml');
  const litellmConfig = YAML.parse(read('deploy/litellm/config.yaml')) as Obj;

  it('has the four services, each health-checked, started in dependency order', () => {
    expect(Object.keys(services).sort()).toEqual(['azure', 'envoy', 'extproc', 'litellm']);
    for (const [name, s] of Object.entries(services)) expect((s as Obj).healthcheck?.test, name).toBeDefined();
    expect(services.envoy.depends_on).toEqual({ extproc: { condition: 'service_healthy' }, azure: { condition: 'service_healthy' } });
    expect(services.litellm.depends_on).toEqual({ envoy: { condition: 'service_healthy' } });
  });

  it('pins images: Envoy v1.40.2, LiteLLM by release tag; builds this repo for extproc and the stand-in', () => {
    expect(services.envoy.image).toBe(ENVOY_IMAGE);
    const litellmDefault = /^\$\{LITELLM_IMAGE:-(.+)\}$/.exec(services.litellm.image)![1]!;
    expect(litellmDefault).toMatch(/^ghcr\.io\/berriai\/litellm:v\d+\.\d+\.\d+-stable$/);
    for (const name of ['extproc', 'azure']) {
      expect(services[name].build).toBe('.');
      expect(services[name].image).toMatch(/:local$/);
    }
    expect(services.azure.entrypoint).toEqual(['node', 'dist/tools/azure-standin.js']);
    expect(services.extproc.entrypoint).toBeUndefined(); // the image's node dist/main.js
  });

  it('publishes ports on loopback only', () => {
    for (const s of Object.values(services)) for (const p of ((s as Obj).ports ?? []) as string[]) expect(p).toMatch(/^127\.0\.0\.1:/);
  });

  it('Envoy runs envoy-demo.yaml by default and any envoy/*.yaml by ENVOY_CONFIG, from the mounted ./envoy', () => {
    expect(services.envoy.volumes).toEqual(['./envoy:/etc/envoy:ro']);
    expect(services.envoy.command.slice(0, 3)).toEqual(['envoy', '-c', '/etc/envoy/${ENVOY_CONFIG:-envoy-demo.yaml}']);
    expect(read('envoy/envoy-demo-nofilter.yaml')).toContain('ENVOY_CONFIG=envoy-demo-nofilter.yaml');
  });

  it('the demo Envoy reaches the stand-in and the server at the addresses compose gives them', () => {
    expect(endpointOf(demo, 'azure_openai')).toEqual({ socket_address: { address: 'azure', port_value: Number(services.azure.environment.PORT) } });
    const listen = String(services.extproc.environment.EXTPROC_LISTEN);
    expect(endpointOf(demo, extProcFilterOf(demo)!.clusterName)).toEqual({
      socket_address: { address: 'extproc', port_value: Number(listen.split(':').at(-1)) },
    });
    expect(endpointOf(envoyConfig('envoy/envoy.yaml'), 'extproc')).toEqual(endpointOf(demo, 'extproc'));
    // The stand-in knows the deployment LiteLLM calls.
    expect(services.azure.environment.AZURE_DEPLOYMENTS.split(',')).toContain('gpt-image-2-1');
  });

  it('LiteLLM is configured as in the report, with api_base = the Envoy listener', () => {
    expect(services.litellm.volumes).toEqual(['./deploy/litellm/config.yaml:/app/config.yaml:ro']);
    expect(services.litellm.command).toEqual(['--config', '/app/config.yaml', '--port', '4000']);
    const model = litellmConfig.model_list[0];
    expect(model.model_name).toBe('gpt-image-2');
    expect(model.litellm_params).toMatchObject({
      model: 'azure/gpt-image-2-1',
      api_base: 'http://envoy:10000',
      api_key: 'os.environ/AZURE_API_KEY',
      api_version: '2025-04-01-preview',
    });
    expect(connectionManagers(demo).map((m) => m.port)).toContain(Number(new URL(model.litellm_params.api_base).port));
    expect(litellmConfig.general_settings.master_key).toBe('os.environ/LITELLM_MASTER_KEY');
    // LiteLLM and the stand-in share the key variable, so the demo authenticates end to end.
    expect(services.litellm.environment.AZURE_API_KEY).toBe(services.azure.environment.AZURE_API_KEY);
  });

  it('deploy/compose.azure.yml points Envoy at real Azure through envoy.yaml and requires the user\'s key', () => {
    const override = YAML.parse(read('deploy/compose.azure.yml')) as Obj;
    expect(override.services.envoy.command.slice(0, 2)).toEqual(['/bin/sh', '/deploy/envoy/run-for-azure.sh']);
    expect(override.services.envoy.volumes).toEqual(['./deploy/envoy:/deploy/envoy:ro']);
    expect(override.services.envoy.environment.ENVOY_TEMPLATE).toBe('/etc/envoy/envoy.yaml');
    // envoy.yaml listens on loopback; LiteLLM reaches Envoy from its own container, so the override opens
    // the listener inside the project network, while the host still sees it on 127.0.0.1 only.
    expect(override.services.envoy.environment.ENVOY_LISTEN_ADDRESS).toBe('0.0.0.0');
    expect(new URL(litellmConfig.model_list[0].litellm_params.api_base).hostname).toBe('envoy');
    expect(services.envoy.ports).toEqual(['127.0.0.1:10000:10000']);
    expect(override.services.litellm.environment.AZURE_API_KEY).toMatch(/^\$\{AZURE_API_KEY:\?/);
  });

  it('the README uses the seed request against LiteLLM, the no-filter switch and the Azure override', () => {
    const snippets = read('README.md');
    expect(snippets).toContain('{"model":"gpt-image-2","prompt":"a red circle","n":1,"size":"1024x1024"}');
    expect(snippets).toContain('http://localhost:4000/v1/images/generations');
    expect(snippets).toContain('ENVOY_CONFIG=envoy-demo-nofilter.yaml');
    expect(snippets).toContain('-f deploy/compose.azure.yml');
    expect(snippets).toContain('kubectl apply -k deploy/k8s');
  });
});

// ---------------------------------------------------------------------------------------------------

describe('deploy/envoy/run-for-azure.sh', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'envoy-render-'));
    // A stand-in `envoy` that reports how it was called.
    writeFileSync(path.join(dir, 'envoy'), '#!/bin/sh\necho "envoy $*"\n');
    chmodSync(path.join(dir, 'envoy'), 0o755);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const run = (env: Record<string, string>, template = 'envoy/envoy.yaml') =>
    spawnSync('/bin/sh', [path.join(ROOT, 'deploy/envoy/run-for-azure.sh'), '--log-level', 'info'], {
      env: { PATH: `${dir}:${process.env.PATH}`, ENVOY_TEMPLATE: path.join(ROOT, template), ENVOY_RENDERED: path.join(dir, 'out.yaml'), ...env },
      encoding: 'utf8',
    });

  it.each([
    [{ AZURE_RESOURCE: 'myres' }, 'myres.openai.azure.com', 'envoy/envoy.yaml'],
    [{ AZURE_HOST: 'myres.cognitiveservices.azure.com' }, 'myres.cognitiveservices.azure.com', 'envoy/envoy-uds.yaml'],
  ])('%o renders a valid config for %s and execs envoy with it', (env, host, template) => {
    const result = run(env, template);
    expect(result.status, result.stderr).toBe(0);
    expect(result.stdout.trim()).toBe(`envoy -c ${path.join(dir, 'out.yaml')} --log-level info`);
    const rendered = envoyApi().decodeBootstrapFile(path.join(dir, 'out.yaml'));
    const tls = (cluster(rendered, 'azure_openai') as Obj).transport_socket.typed_config;
    expect(tls.sni).toBe(host);
    expect(tls.common_tls_context.validation_context.match_typed_subject_alt_names[0].matcher.exact).toBe(host);
    expect(endpointOf(rendered, 'azure_openai')).toEqual({ socket_address: { address: host, port_value: 443 } });
  });

  it.each([{}, { AZURE_HOST: 'YOUR_RESOURCE.openai.azure.com' }, { AZURE_HOST: 'a/b' }, { AZURE_RESOURCE: 'x;rm' }, { AZURE_HOST: '.x' }])(
    'refuses %o before starting Envoy',
    (env) => {
      const result = run(env as Record<string, string>);
      expect(result.status).toBe(64);
      expect(result.stdout).toBe('');
    },
  );

  const rendered = () => envoyApi().decodeBootstrapFile(path.join(dir, 'out.yaml')) as Obj;
  const proxyAddress = () => (rendered().static_resources.listeners as Obj[]).find((l) => l.name === 'azure_egress')!.address.socket_address;

  it.each(['https://myres.openai.azure.com/', 'https://myres.openai.azure.com', 'https://myres.openai.azure.com:443/', 'myres.openai.azure.com/'])(
    'takes the endpoint as the Azure portal shows it: AZURE_HOST=%s',
    (given) => {
      const result = run({ AZURE_HOST: given });
      expect(result.status, result.stderr).toBe(0);
      expect(endpointOf(rendered(), 'azure_openai')).toEqual({ socket_address: { address: 'myres.openai.azure.com', port_value: 443 } });
      expect((cluster(rendered(), 'azure_openai') as Obj).transport_socket.typed_config.sni).toBe('myres.openai.azure.com');
    },
  );

  it.each([
    [{ AZURE_HOST: 'http://myres.openai.azure.com/' }, /AZURE_HOST/],
    [{ AZURE_HOST: 'https://myres.openai.azure.com/openai/v1' }, /AZURE_HOST/],
    [{ AZURE_RESOURCE: 'https://myres.openai.azure.com/' }, /AZURE_RESOURCE is the resource name only.*AZURE_HOST=https:\/\/myres/],
    [{ AZURE_RESOURCE: 'myres', ENVOY_LISTEN_ADDRESS: '0.0.0.0; rm -rf' }, /ENVOY_LISTEN_ADDRESS must be an IPv4 address/],
  ])('refuses %o with one line naming the variable', (env, message) => {
    const result = run(env);
    expect(result.status).toBe(64);
    expect(result.stdout).toBe('');
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toMatch(message);
  });

  it('keeps the proxy listener on loopback unless ENVOY_LISTEN_ADDRESS opens it', () => {
    for (const template of ['envoy/envoy.yaml', 'envoy/envoy-buffered.yaml', 'envoy/envoy-uds.yaml']) {
      expect(run({ AZURE_RESOURCE: 'myres' }, template).status).toBe(0);
      expect(proxyAddress(), template).toEqual({ address: '127.0.0.1', port_value: 10000 });
    }
    expect(run({ AZURE_RESOURCE: 'myres', ENVOY_LISTEN_ADDRESS: '0.0.0.0' }).status).toBe(0);
    expect(proxyAddress()).toEqual({ address: '0.0.0.0', port_value: 10000 });
    // Only the proxy listener moves: the admin API stays on loopback.
    expect(rendered().admin.address.socket_address).toEqual({ address: '127.0.0.1', port_value: 9901 });
    // A template without the loopback listener cannot be opened by mistake either.
    const demo = run({ AZURE_RESOURCE: 'myres', ENVOY_LISTEN_ADDRESS: '0.0.0.0' }, 'envoy/envoy-demo.yaml');
    expect(demo.status).toBe(65);
    expect(demo.stdout).toBe('');
  });
});

// ---------------------------------------------------------------------------------------------------

describe('Kubernetes sidecar manifests (deploy/k8s)', () => {
  const kustomization = YAML.parse(read('deploy/k8s/kustomization.yaml')) as Obj;
  const docs = (kustomization.resources as string[]).flatMap((f) => yamlDocs(`deploy/k8s/${f}`));
  const byKind = (kind: string) => docs.filter((d) => d.kind === kind);
  const deployment = byKind('Deployment')[0]!;
  const pod = deployment.spec.template.spec as Obj;
  const initContainers = pod.initContainers as Obj[];
  const [extproc, envoy] = initContainers;
  const litellm = (pod.containers as Obj[])[0]!;
  const all = [...initContainers, ...(pod.containers as Obj[])];
  const env = (c: Obj) => Object.fromEntries((c.env as Obj[]).map((e) => [e.name, e.value ?? e.valueFrom]));
  const mount = (c: Obj, volume: string) => (c.volumeMounts as Obj[]).find((m) => m.name === volume);
  const uds = envoyConfig('envoy/envoy-uds.yaml');

  it('lists every manifest and nothing else', () => {
    expect(docs.map((d) => `${d.kind}/${d.metadata.name}`).sort()).toEqual([
      'ConfigMap/envoy-config',
      'ConfigMap/litellm-config',
      'Deployment/litellm',
      'Service/litellm',
    ]);
  });

  it('runs the server and Envoy as native sidecars (server first), LiteLLM as the app', () => {
    expect(initContainers.map((c) => [c.name, c.restartPolicy])).toEqual([
      ['extproc', 'Always'],
      ['envoy', 'Always'],
    ]);
    expect((pod.containers as Obj[]).map((c) => c.name)).toEqual(['litellm']);
    // Ordered start needs a startup probe on each sidecar.
    expect(extproc.startupProbe).toBeDefined();
    expect(envoy.startupProbe).toBeDefined();
  });

  it('connects them over one Unix socket in a shared in-memory emptyDir, the path of envoy-uds.yaml', () => {
    expect(endpointOf(uds, 'extproc')).toEqual({ pipe: { path: SOCKET } });
    expect(env(extproc).EXTPROC_LISTEN).toBe(`unix:${SOCKET}`);
    expect(env(extproc).EXTPROC_SOCKET_MODE).toBe('0660');
    const volume = (pod.volumes as Obj[]).find((v) => v.name === 'extproc-socket')!;
    expect(volume.emptyDir.medium).toBe('Memory');
    for (const c of [extproc, envoy]) expect(mount(c, 'extproc-socket')?.mountPath).toBe(path.posix.dirname(SOCKET));
    expect(mount(litellm, 'extproc-socket')).toBeUndefined();
    // The socket is 0660: Envoy's uid reaches it through the pod's fsGroup, which is the server's group.
    expect(pod.securityContext.fsGroup).toBe(extproc.securityContext.runAsGroup);
  });

  it('probes the server with gRPC health on EXTPROC_HEALTH_LISTEN', () => {
    const healthPort = Number(String(env(extproc).EXTPROC_HEALTH_LISTEN).split(':').at(-1));
    for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) expect(extproc[probe].grpc, probe).toEqual({ port: healthPort });
    expect((extproc.ports as Obj[]).map((p) => p.containerPort)).toContain(healthPort);
  });

  it('probes Envoy with HTTP GET /ready on the probe listener of envoy-uds.yaml', () => {
    const probe = connectionManagers(uds).find((m) => m.listener === 'probe')!;
    for (const p of ['startupProbe', 'readinessProbe', 'livenessProbe']) expect(envoy[p].httpGet, p).toEqual({ path: '/ready', port: probe.port });
    expect(probe.routes[0]!.match.path).toBe('/ready');
  });

  it('Envoy renders envoy-uds.yaml from the ConfigMap for AZURE_HOST and runs it without hot restart', () => {
    expect(envoy.image).toBe(ENVOY_IMAGE);
    expect(envoy.command).toEqual(['/bin/sh', '/etc/envoy/run-for-azure.sh']);
    expect(envoy.args).toContain('--disable-hot-restart');
    expect(env(envoy)).toMatchObject({ ENVOY_TEMPLATE: '/etc/envoy/envoy-uds.yaml', ENVOY_RENDERED: '/tmp/envoy.yaml' });
    expect(env(envoy).AZURE_HOST).toBeDefined();
    expect(mount(envoy, 'envoy-config')).toEqual({ name: 'envoy-config', mountPath: '/etc/envoy', readOnly: true });
    expect(mount(envoy, 'envoy-tmp')?.mountPath).toBe('/tmp');
    const volume = (pod.volumes as Obj[]).find((v) => v.name === 'envoy-config')!;
    expect(volume.configMap.name).toBe('envoy-config');
  });

  it('the envoy-config ConfigMap is envoy/envoy-uds.yaml and run-for-azure.sh byte for byte', () => {
    const expected = renderEnvoyConfigMap();
    if (process.env.UPDATE_K8S_CONFIGMAP === '1') writeFileSync(path.join(ROOT, ENVOY_CONFIGMAP), expected);
    const data = byKind('ConfigMap').find((c) => c.metadata.name === 'envoy-config')!.data as Obj;
    expect(data['envoy-uds.yaml'], 'regenerate: UPDATE_K8S_CONFIGMAP=1 npx vitest run test/deploy.test.ts').toBe(read('envoy/envoy-uds.yaml'));
    expect(data['run-for-azure.sh']).toBe(read('deploy/envoy/run-for-azure.sh'));
    expect(read(ENVOY_CONFIGMAP)).toBe(expected);
  });

  it('LiteLLM talks to Envoy on loopback and takes its keys from Secrets', () => {
    const config = YAML.parse(byKind('ConfigMap').find((c) => c.metadata.name === 'litellm-config')!.data['config.yaml']) as Obj;
    const params = config.model_list[0].litellm_params;
    expect(params).toMatchObject({ model: 'azure/gpt-image-2-1', api_base: 'http://127.0.0.1:10000', api_version: '2025-04-01-preview' });
    const listener = connectionManagers(uds).find((m) => m.listener === 'azure_egress')!;
    expect(Number(new URL(params.api_base).port)).toBe(listener.port);
    expect(env(litellm).AZURE_API_KEY).toEqual({ secretKeyRef: { name: 'azure-openai', key: 'api-key' } });
    expect(env(litellm).LITELLM_MASTER_KEY).toEqual({ secretKeyRef: { name: 'litellm', key: 'master-key' } });
    expect(litellm.args).toEqual(['--config', '/etc/litellm/config.yaml', '--port', '4000']);
    expect(mount(litellm, 'litellm-config')?.mountPath).toBe('/etc/litellm');
  });

  it('hardens every container: non-root, read-only root, no capabilities, RuntimeDefault seccomp', () => {
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
    expect(pod.automountServiceAccountToken).toBe(false);
    for (const c of all) {
      expect(c.securityContext, c.name).toMatchObject({
        allowPrivilegeEscalation: false,
        readOnlyRootFilesystem: true,
        capabilities: { drop: ['ALL'] },
      });
      expect(c.securityContext.runAsUser, c.name).toBeGreaterThan(0);
    }
    expect(extproc.securityContext.runAsUser).toBe(Number(/^USER (\d+):/m.exec(read('Dockerfile'))![1]));
  });

  it('sets resource requests and limits on every container, and pins every image', () => {
    for (const c of all) {
      expect(Object.keys(c.resources.requests).sort(), c.name).toEqual(['cpu', 'memory']);
      expect(Object.keys(c.resources.limits).sort(), c.name).toEqual(['cpu', 'memory']);
      expect(pinned(c.image), c.image).toBe(true);
    }
  });

  it('every mount has a volume and every volume is mounted', () => {
    const volumes = new Set((pod.volumes as Obj[]).map((v) => v.name));
    const mounted = new Set(all.flatMap((c) => (c.volumeMounts as Obj[]).map((m) => m.name)));
    expect([...mounted].sort()).toEqual([...volumes].sort());
  });

  it('lets in-flight image calls finish on shutdown', () => {
    const routeTimeout = Math.max(...connectionManagers(uds).flatMap((m) => m.routes.map((r) => Number(String(r.route?.timeout ?? '0s').replace('s', '')))));
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(routeTimeout);
  });

  it('the Service selects the pod and targets LiteLLM\'s port', () => {
    const service = byKind('Service')[0]!;
    expect(service.spec.selector).toEqual(deployment.spec.template.metadata.labels);
    expect(deployment.spec.selector.matchLabels).toEqual(deployment.spec.template.metadata.labels);
    const target = service.spec.ports[0].targetPort;
    expect((litellm.ports as Obj[]).find((p) => p.name === target)?.containerPort).toBe(service.spec.ports[0].port);
  });
});

// ---------------------------------------------------------------------------------------------------

const ENVOY_CONFIGMAP = 'deploy/k8s/envoy-config.yaml';

/** deploy/k8s/envoy-config.yaml as generated from its two sources (kustomize cannot read files outside its root). */
function renderEnvoyConfigMap(): string {
  const block = (text: string) =>
    text
      .replace(/\n$/, '')
      .split('\n')
      .map((l) => (l === '' ? '' : `    ${l}`))
      .join('\n');
  return [
    '# GENERATED from envoy/envoy-uds.yaml and deploy/envoy/run-for-azure.sh; edit those, then run',
    '#   UPDATE_K8S_CONFIGMAP=1 npx vitest run test/deploy.test.ts',
    '# (kustomize refuses files outside deploy/k8s, so the sources are copied here; the test keeps them equal).',
    'apiVersion: v1',
    'kind: ConfigMap',
    'metadata:',
    '  name: envoy-config',
    'data:',
    '  envoy-uds.yaml: |',
    block(read('envoy/envoy-uds.yaml')),
    '  run-for-azure.sh: |',
    block(read('deploy/envoy/run-for-azure.sh')),
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------------

describe('the suggested admin port (/metrics, /healthz, /readyz)', () => {
  const ADMIN_PORT = 50053;
  // Ports that something else commonly holds on the same host, pod or network namespace.
  const NEIGHBOURS: Array<[number, number, string]> = [
    [3000, 3000, 'Grafana'],
    [4000, 4000, 'LiteLLM'],
    [4317, 4318, 'OpenTelemetry OTLP'],
    [8080, 8081, 'HTTP servers and proxies'],
    [8888, 8889, 'OpenTelemetry Collector metrics'],
    [9090, 9091, 'Prometheus, Pushgateway'],
    [9093, 9094, 'Alertmanager'],
    [9100, 9100, 'node exporter'],
    [9464, 9464, 'OpenTelemetry Prometheus exporter'],
    [9901, 9902, 'Envoy admin and the probe listener of deploy/k8s'],
    [10000, 10000, 'the Envoy listener'],
    [15000, 15090, 'Istio sidecar'],
    [50051, 50052, 'this server: ext_proc, health-only listener'],
  ];

  it('collides with no common neighbour', () => {
    for (const [from, to, who] of NEIGHBOURS) expect(ADMIN_PORT < from || ADMIN_PORT > to, who).toBe(true);
  });

  it('is the same in compose, the manifests, the example config, the Dockerfile and the docs', () => {
    const files = [
      'docker-compose.yml',
      'Dockerfile',
      'examples/config.yaml',
      'README.md',
      ...['deploy', 'docs'].flatMap((dir) => listFiles(dir).filter((f) => /\.(ya?ml|md)$/.test(f))),
    ];
    const patterns = [
      /EXTPROC_ADMIN_LISTEN["']?\s*[:=,]\s*(?:value:\s*)?["']?[\w.[\]-]*:(\d+)/g,
      /adminListen:\s*["']?[\w.[\]-]*:(\d+)/g,
      /name: metrics, containerPort: (\d+)/g,
      /containerPort: (\d+), name: metrics/g,
      /prometheus\.io\/port:\s*["']?(\d+)/g,
      /localhost:(\d+)\/(?:metrics|healthz|readyz)/g,
      /^# (\d+) HTTP admin/gm,
      /"127\.0\.0\.1:(\d+):\d+" # \/healthz/g,
    ];
    const found: string[] = [];
    for (const file of files) {
      for (const pattern of patterns) for (const m of read(file).matchAll(pattern)) found.push(`${file}: ${m[1]}`);
    }
    // compose, k8s (two lines), the pool (two lines), the example, the Dockerfile, the README at least.
    expect(found.length).toBeGreaterThanOrEqual(8);
    expect(found.filter((f) => !f.endsWith(`: ${ADMIN_PORT}`))).toEqual([]);
  });

  it('Prometheus\'s own port is suggested nowhere any more, in code examples and error messages included', () => {
    const files = ['docker-compose.yml', 'Dockerfile', 'README.md', ...['src', 'deploy', 'docs', 'examples'].flatMap(listFiles)];
    expect(files.filter((file) => /\b9090\b/.test(read(file)))).toEqual([]);
  });
});

/** Repository-relative paths of the files under `dir` (working tree). */
function listFiles(dir: string): string[] {
  return readdirSync(path.join(ROOT, dir), { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => path.posix.join(path.relative(ROOT, entry.parentPath).split(path.sep).join('/'), entry.name));
}
