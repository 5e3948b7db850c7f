// The compiled server as `npm start` and the container image run it: `tsc -p tsconfig.build.json`, then
// `node dist/main.js` with `proto/` beside `dist/`. Started on a Unix socket, probed with the shipped
// health-check CLI, stopped with SIGTERM.
import { execFile, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ENV_KEYS } from '../src/config.js';
import { CONFIG_FILE_ENV } from '../src/config-file.js';

const root = path.resolve(import.meta.dirname, '..');
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'extproc-build-'));
  await promisify(execFile)(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json', '--outDir', path.join(dir, 'dist')], {
    cwd: root,
    timeout: 120_000,
  });
  cpSync(path.join(root, 'proto'), path.join(dir, 'proto'), { recursive: true });
  cpSync(path.join(root, 'package.json'), path.join(dir, 'package.json'));
  symlinkSync(path.join(root, 'node_modules'), path.join(dir, 'node_modules'));
}, 150_000);

afterAll(() => rmSync(dir, { recursive: true, force: true }));

test('node dist/main.js: ready line, healthy on a unix socket, clean exit on SIGTERM', async () => {
  const socket = `unix:${path.join(dir, 'extproc.sock')}`;
  const healthSocket = `unix:${path.join(dir, 'health.sock')}`;
  const child = spawn(process.execPath, ['dist/main.js'], {
    cwd: dir,
    // A misspelt variable gets a warning; Kubernetes' service variables for a Service named extproc do not.
    env: {
      ...process.env,
      EXTPROC_LISTEN: socket,
      EXTPROC_HEALTH_LISTEN: healthSocket,
      // As examples/config.yaml writes it (it used to give mode 000).
      EXTPROC_SOCKET_MODE: '0o660',
      EXTPROC_DRAIN_DELAY_MS: '0',
      LOG_LEVEL: 'info',
      EXTPROC_LISTN: '127.0.0.1:1',
      EXTPROC_SERVICE_HOST: '10.0.0.1',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));

  const deadline = Date.now() + 20_000;
  while (!/"msg":"ready"/.test(output) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
  const ready = output.split('\n').find((line) => line.includes('"msg":"ready"'));
  expect(ready, output).toBeDefined();
  const { version } = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string };
  expect(JSON.parse(ready!)).toMatchObject({ level: 'info', version, listen: socket });
  for (const listener of [socket, healthSocket]) expect(statSync(listener.slice('unix:'.length)).mode & 0o777).toBe(0o660);
  const warned = output.split('\n').filter((line) => line.includes('unknown EXTPROC_ environment variable')).map((line) => JSON.parse(line) as { variable: string });
  expect(warned.map((line) => line.variable)).toEqual(['EXTPROC_LISTN']);

  const probe = await promisify(execFile)(process.execPath, ['dist/healthcheck.js', socket], { cwd: dir }).then(
    () => 0,
    (error: { code?: number }) => error.code ?? 1,
  );
  expect(probe).toBe(0);

  child.kill('SIGTERM');
  expect(await exited).toBe(0);
  expect(output).toContain('"msg":"stopped"');
}, 60_000);

/** Runs the built entry point (or another built script) to its end; never throws. */
function run(script: string, args: string[], env: Record<string, string> = {}, timeoutMs = 20_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [script, ...args], {
      cwd: dir,
      // Only what the case sets: no EXTPROC_* from the environment running the tests.
      env: { PATH: process.env.PATH ?? '', EXTPROC_DRAIN_DELAY_MS: '0', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('every start-up error a user can cause: one line on stderr naming what to fix, exit 2, no stack trace', () => {
  let busy: Server;
  let busyAddress: string;
  const fixtures = path.join(root, 'test/fixtures/tls');
  const file = (name: string, text: string): string => {
    const at = path.join(dir, name);
    writeFileSync(at, text);
    return at;
  };

  beforeAll(async () => {
    busy = createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
    busyAddress = `127.0.0.1:${(busy.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((resolve) => busy.close(() => resolve())));

  const tls = (cert: string, key: string) => `listen: 127.0.0.1:0\ntls:\n  certFile: ${cert}\n  keyFile: ${key}\n`;
  const cases: Array<[string, () => { args?: string[]; env?: Record<string, string> }, RegExp]> = [
    ['EXTPROC_LISTEN=garbage', () => ({ env: { EXTPROC_LISTEN: 'garbage' } }), /listen \(from EXTPROC_LISTEN\): must be host:port/],
    ['EXTPROC_LISTEN=:50061', () => ({ env: { EXTPROC_LISTEN: ':50061' } }), /EXTPROC_LISTEN.*no host/],
    ['EXTPROC_LISTEN=127.0.0.1:99999', () => ({ env: { EXTPROC_LISTEN: '127.0.0.1:99999' } }), /EXTPROC_LISTEN.*1 to 65535/],
    ['EXTPROC_LISTEN=unix:', () => ({ env: { EXTPROC_LISTEN: 'unix:' } }), /EXTPROC_LISTEN.*absolute/],
    ['EXTPROC_LISTEN=localhost', () => ({ env: { EXTPROC_LISTEN: 'localhost' } }), /EXTPROC_LISTEN.*no port/],
    ['EXTPROC_ADMIN_LISTEN=garbage', () => ({ env: { EXTPROC_ADMIN_LISTEN: 'garbage' } }), /adminListen \(from EXTPROC_ADMIN_LISTEN\): must be host:port/],
    ['EXTPROC_SOCKET_MODE=rw', () => ({ env: { EXTPROC_SOCKET_MODE: 'rw' } }), /socketMode \(from EXTPROC_SOCKET_MODE\): must be an octal file mode/],
    ['LOG_LEVEL=verbose', () => ({ env: { LOG_LEVEL: 'verbose' } }), /logLevel \(from LOG_LEVEL\)/],
    ['EXTPROC_MAX_MESSAGE_BYTES=64MB', () => ({ env: { EXTPROC_MAX_MESSAGE_BYTES: '64MB' } }), /maxMessageBytes \(from EXTPROC_MAX_MESSAGE_BYTES\).*64MiB/],
    ['an unknown option', () => ({ args: ['--listen', 'x'] }), /Unknown option '--listen'.*--help/],
    ['a missing --config file', () => ({ args: ['--config', path.join(dir, 'absent.yaml')] }), /absent\.yaml: cannot read the file \(ENOENT\)/],
    ['EXTPROC_CONFIG naming a directory', () => ({ env: { EXTPROC_CONFIG: dir } }), /cannot read the file \(EISDIR\)/],
    ['a YAML syntax error', () => ({ args: ['--config', file('syntax.yaml', 'limits:\n  maxBodyBytes: [1\n')] }), /syntax\.yaml: line \d+, column \d+/],
    ['an unknown key', () => ({ args: ['--config', file('typo.yaml', 'listen: 127.0.0.1:0\nlogLevl: debug\n')] }), /logLevl: unknown key \(did you mean logLevel\?\)/],
    ['an empty file', () => ({ args: ['--config', file('empty.yaml', '')] }), /no settings.*write \{\}/],
    ['several problems at once', () => ({ args: ['--config', file('many.yaml', 'listen: x\nlimits:\n  overLimit: drop\n')] }), /listen: .*; limits\.overLimit: /],
    ['listen on a port in use', () => ({ env: { EXTPROC_LISTEN: busyAddress } }), /^azure-image-extproc: listen \(from EXTPROC_LISTEN\): 127\.0\.0\.1:\d+ is already in use/],
    ['healthListen on a port in use', () => ({ args: ['--config', file('health.yaml', `listen: 127.0.0.1:0\nhealthListen: ${busyAddress}\n`)] }), /healthListen: 127\.0\.0\.1:\d+ is already in use/],
    ['adminListen on a port in use', () => ({ env: { EXTPROC_LISTEN: '127.0.0.1:0', EXTPROC_ADMIN_LISTEN: busyAddress } }), /adminListen \(from EXTPROC_ADMIN_LISTEN\): 127\.0\.0\.1:\d+ is already in use/],
    ['a socket in a directory that does not exist', () => ({ env: { EXTPROC_LISTEN: 'unix:/nonexistent-dir/extproc.sock' } }), /listen \(from EXTPROC_LISTEN\): .*directory \/nonexistent-dir does not exist/],
    ['a missing certificate file', () => ({ args: ['--config', file('tls1.yaml', tls(path.join(dir, 'absent.crt'), `${fixtures}/server-a.key`))] }), /tls\.certFile: .*absent\.crt: no such file/],
    ['a key that is not the certificate\'s', () => ({ args: ['--config', file('tls2.yaml', tls(`${fixtures}/server-a.crt`, `${fixtures}/server-b.key`))] }), /tls\.keyFile: .*server-b\.key is not the key of the certificate/],
    ['a certificate file that is not PEM', () => ({ args: ['--config', file('tls3.yaml', tls(file('junk.crt', 'junk\n'), `${fixtures}/server-a.key`))] }), /tls\.certFile: .*junk\.crt is not a PEM file/],
  ];

  test.each(cases)('%s', async (_name, input, message) => {
    const { args = [], env = {} } = input();
    const { code, stderr } = await run('dist/main.js', args, env);
    expect(code, stderr).toBe(2);
    const lines = stderr.split('\n').filter((line) => line.trim() !== '');
    expect(lines, stderr).toHaveLength(1);
    expect(lines[0]).toMatch(/^azure-image-extproc: /);
    expect(lines[0]).toMatch(message);
    expect(stderr).not.toMatch(/^\s+at /m);
  });
});

describe('--help and --version', () => {
  test('main: --help lists the options and every environment variable; --version prints the version', async () => {
    const help = await run('dist/main.js', ['--help'], { EXTPROC_LISTEN: 'not even an address' });
    expect(help.code).toBe(0);
    for (const option of ['--config', '--help', '--version', CONFIG_FILE_ENV, ...Object.keys(ENV_KEYS)]) expect(help.stdout).toContain(option);
    const { version } = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string };
    expect(await run('dist/main.js', ['--version'])).toEqual({ code: 0, stdout: `azure-image-extproc ${version}\n`, stderr: '' });
  });

  test('healthcheck: --help is not taken for an address', async () => {
    const help = await run('dist/healthcheck.js', ['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^usage: healthcheck/);
    expect((await run('dist/healthcheck.js', ['--version'])).stdout).toMatch(/^azure-image-extproc healthcheck \d+\.\d+\.\d+/);
  });
});

describe('npm start builds only when the sources changed (scripts/build-if-stale.mjs)', () => {
  test('a first run compiles, a second does not, a changed or deleted source compiles again', async () => {
    const project = mkdtempSync(path.join(tmpdir(), 'extproc-stale-'));
    try {
      mkdirSync(path.join(project, 'src'));
      writeFileSync(path.join(project, 'src/a.ts'), 'export const a = 1;\n');
      writeFileSync(path.join(project, 'src/b.ts'), 'export const b = 2;\n');
      writeFileSync(path.join(project, 'tsconfig.build.json'), JSON.stringify({ compilerOptions: { outDir: 'dist', rootDir: 'src', module: 'NodeNext', target: 'ES2022' }, include: ['src'] }));
      symlinkSync(path.join(root, 'node_modules'), path.join(project, 'node_modules'));
      const build = () =>
        promisify(execFile)(process.execPath, [path.join(root, 'scripts/build-if-stale.mjs')], { cwd: project, timeout: 60_000 }).then(({ stderr }) => stderr);
      const output = path.join(project, 'dist/a.js');

      expect(await build()).toMatch(/^building dist\/ \(no previous build\)/);
      expect(existsSync(output)).toBe(true);
      const built = statSync(output).mtimeMs;
      expect(await build()).toMatch(/up to date/);
      expect(statSync(output).mtimeMs).toBe(built);

      // "Changed since the last build": the last build is put back in time, the change after it.
      const stamp = path.join(project, 'dist/.build-stamp');
      const ago = (seconds: number) => new Date(Date.now() - seconds * 1000);
      utimesSync(stamp, ago(20), ago(20));
      utimesSync(path.join(project, 'src/a.ts'), ago(10), ago(10));
      expect(await build()).toMatch(/^building dist\/ \(src\/ changed\)/);
      expect(await build()).toMatch(/up to date/);

      // A deleted source changes only its directory.
      rmSync(path.join(project, 'src/b.ts'));
      utimesSync(stamp, ago(20), ago(20));
      utimesSync(path.join(project, 'src/a.ts'), ago(30), ago(30));
      utimesSync(path.join(project, 'src'), ago(10), ago(10));
      expect(await build()).toMatch(/^building dist\/ \(src\/ changed\)/);
    } finally {
      rmSync(project, { recursive: true, force: true });
    }
  }, 120_000);
});
