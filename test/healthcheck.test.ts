// The container health check (src/healthcheck.ts) reads the server's own configuration: the file named
// by EXTPROC_CONFIG or --config, the environment over it; it probes the health-only listener when there is
// one, else the ext_proc listener, over TLS trusting the configured certificate, with a client
// certificate under mutual TLS. Certificates: test/fixtures/tls (server-a.crt is signed by ca-a, so it is
// trusted by pinning, not as a CA).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { runHealthcheck } from '../src/healthcheck.js';
import { startTestServer, type TestServer } from './support/harness.js';

const FIXTURES = path.resolve(import.meta.dirname, 'fixtures/tls');
const fixture = (name: string) => path.join(FIXTURES, name);

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'extproc-healthcheck-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const servers: TestServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => server.close()));
});

/** A port nobody listens on right now (the probe compares the configured address, so port 0 won't do). */
function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

async function serve(overrides: Record<string, unknown>): Promise<TestServer> {
  const server = await startTestServer(overrides);
  servers.push(server);
  return server;
}

function configFile(yaml: string, name = 'config.yaml'): string {
  const file = path.join(dir, name);
  writeFileSync(file, yaml);
  return file;
}

const TLS = `tls:\n  certFile: ${fixture('server-a.crt')}\n  keyFile: ${fixture('server-a.key')}\n`;

describe('where the probe looks', () => {
  test('listen from the file named by EXTPROC_CONFIG (no EXTPROC_LISTEN set)', async () => {
    const port = await freePort();
    await serve({ listen: `127.0.0.1:${port}` });
    const file = configFile(`listen: 0.0.0.0:${port}\n`);
    expect(await runHealthcheck([], { EXTPROC_CONFIG: file })).toEqual({ code: 0 });
    expect(await runHealthcheck(['--config', file], {})).toEqual({ code: 0 });
  });

  test('the environment over the file, as the server reads them', async () => {
    const port = await freePort();
    await serve({ listen: `127.0.0.1:${port}` });
    const file = configFile('listen: 127.0.0.1:1\n');
    expect(await runHealthcheck([], { EXTPROC_CONFIG: file, EXTPROC_LISTEN: `127.0.0.1:${port}` })).toEqual({ code: 0 });
  });

  test('the health-only listener when one is configured, even with TLS on listen', async () => {
    const [port, healthPort] = [await freePort(), await freePort()];
    await serve({ listen: `127.0.0.1:${port}`, healthListen: `127.0.0.1:${healthPort}`, tls: { certFile: fixture('server-a.crt'), keyFile: fixture('server-a.key') } });
    const file = configFile(`listen: 127.0.0.1:${port}\nhealthListen: 0.0.0.0:${healthPort}\n${TLS}`);
    expect(await runHealthcheck(['--config', file], {})).toEqual({ code: 0 });
  });

  test('an unhealthy server, and nobody listening, exit 1 with one line', async () => {
    const port = await freePort();
    const server = await serve({ listen: `127.0.0.1:${port}` });
    server.server.setServing(false);
    const result = await runHealthcheck(['--timeout', '1000'], { EXTPROC_LISTEN: `127.0.0.1:${port}` });
    expect(result).toEqual({ code: 1, stderr: `unhealthy: 127.0.0.1:${port} service "": NOT_SERVING\n` });
    const nobody = await runHealthcheck(['--timeout', '500'], { EXTPROC_LISTEN: `127.0.0.1:${await freePort()}` });
    expect(nobody.code).toBe(1);
    expect(nobody.stderr).toMatch(/^unhealthy: .*UNAVAILABLE/);
  });
});

describe('TLS on the ext_proc listener', () => {
  test('trusts the configured certificate (signed by a CA the probe does not know)', async () => {
    const port = await freePort();
    await serve({ listen: `127.0.0.1:${port}`, tls: { certFile: fixture('server-a.crt'), keyFile: fixture('server-a.key') } });
    expect(await runHealthcheck(['--config', configFile(`listen: 0.0.0.0:${port}\n${TLS}`)], {})).toEqual({ code: 0 });
  });

  test('a server presenting another certificate is unhealthy', async () => {
    const port = await freePort();
    await serve({ listen: `127.0.0.1:${port}`, tls: { certFile: fixture('server-b.crt'), keyFile: fixture('server-b.key') } });
    const result = await runHealthcheck(['--config', configFile(`listen: 127.0.0.1:${port}\n${TLS}`)], {});
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('presents a certificate other than tls.certFile');
  });

  describe('mutual TLS', () => {
    const MTLS = `${TLS}  clientCaFile: ${fixture('client-ca.crt')}\n`;

    test('without a client certificate: says what the probe needs', async () => {
      const file = configFile(`listen: 127.0.0.1:50051\n${MTLS}`);
      const result = await runHealthcheck(['--config', file], {});
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/requires client certificates.*set healthListen.*--client-cert\/--client-key/);
      expect(result.stderr!.trim().split('\n')).toHaveLength(1);
    });

    test('with a client certificate the client CA signed (flags or environment)', async () => {
      const port = await freePort();
      await serve({ listen: `127.0.0.1:${port}`, tls: { certFile: fixture('server-a.crt'), keyFile: fixture('server-a.key'), clientCaFile: fixture('client-ca.crt') } });
      const file = configFile(`listen: 127.0.0.1:${port}\n${MTLS}`);
      expect(await runHealthcheck(['--config', file, '--client-cert', fixture('client.crt'), '--client-key', fixture('client.key')], {})).toEqual({ code: 0 });
      expect(
        await runHealthcheck([], { EXTPROC_CONFIG: file, EXTPROC_HEALTHCHECK_CLIENT_CERT: fixture('client.crt'), EXTPROC_HEALTHCHECK_CLIENT_KEY: fixture('client.key') }),
      ).toEqual({ code: 0 });
      const rogue = await runHealthcheck(['--config', file, '--client-cert', fixture('rogue-client.crt'), '--client-key', fixture('rogue-client.key')], {});
      expect(rogue.code).toBe(1);
    });
  });
});

describe('command line', () => {
  test('--help prints the usage and probes nothing; --version prints the version', async () => {
    const help = await runHealthcheck(['--help'], { EXTPROC_LISTEN: 'not an address' });
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^usage: healthcheck/);
    for (const option of ['--config', '--client-cert', '--client-key', '--timeout', 'EXTPROC_CONFIG', 'EXTPROC_HEALTHCHECK_CLIENT_CERT']) expect(help.stdout).toContain(option);
    expect(await runHealthcheck(['--version'], {})).toEqual({ code: 0, stdout: expect.stringMatching(/^azure-image-extproc healthcheck \d+\.\d+\.\d+/) });
  });

  test.each([
    [['--bogus'], /Unknown option '--bogus'/],
    [['garbage'], /target must be host:port/],
    [['--timeout', 'soon'], /--timeout must be a number/],
    [[], /cannot use the server's configuration: .*listen \(from EXTPROC_LISTEN\)/],
  ])('%j: exit 1 (Docker reserves 2) with one line', async (argv, message) => {
    const result = await runHealthcheck(argv, { EXTPROC_LISTEN: 'localhost' });
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(message);
    expect(result.stderr!.trim().split('\n')).toHaveLength(1);
  });
});
