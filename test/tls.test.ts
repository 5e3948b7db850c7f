// TLS and mutual TLS on the ext_proc listener, with certificate reload, over real connections.
// Certificates: test/fixtures/tls (see its README).
import { generateKeyPairSync } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { EXT_PROC_SERVICE, extProcService, healthService } from '../src/proto.js';
import { StartupError } from '../src/startup-checks.js';
import { DEPLOYMENT_PATH, startTestServer, type TestServer } from './support/harness.js';

const FIXTURES = path.resolve(import.meta.dirname, 'fixtures/tls');
const pem = (name: string) => readFileSync(path.join(FIXTURES, name));

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'extproc-tls-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const servers: TestServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => server.close()));
});

/** Installs server certificate `name` (server-a or server-b) where the server reads it. */
function install(name: 'server-a' | 'server-b'): void {
  copyFileSync(path.join(FIXTURES, `${name}.crt`), path.join(dir, 'tls.crt'));
  copyFileSync(path.join(FIXTURES, `${name}.key`), path.join(dir, 'tls.key'));
}

async function serve(tls: Record<string, unknown>): Promise<TestServer> {
  const server = await startTestServer({ tls: { certFile: path.join(dir, 'tls.crt'), keyFile: path.join(dir, 'tls.key'), ...tls } });
  servers.push(server);
  return server;
}

/** A health Check over a fresh channel; resolves to the status, or the gRPC error code. */
function check(target: string, credentials: grpc.ChannelCredentials): Promise<string | number> {
  const Health = healthService();
  const client = new Health(target, credentials) as unknown as {
    Check(request: { service: string }, options: { deadline: number }, callback: (error: grpc.ServiceError | null, response: { status: string }) => void): void;
    close(): void;
  };
  return new Promise((resolve) =>
    client.Check({ service: EXT_PROC_SERVICE }, { deadline: Date.now() + 2000 }, (error, response) => {
      client.close();
      resolve(error ? error.code : response.status);
    }),
  );
}

const trusting = (ca: string, client?: 'client' | 'rogue-client') =>
  client ? grpc.credentials.createSsl(pem(ca), pem(`${client}.key`), pem(`${client}.crt`)) : grpc.credentials.createSsl(pem(ca));

describe('TLS', () => {
  test('serves over TLS; plaintext clients and clients trusting another CA are refused', async () => {
    install('server-a');
    const server = await serve({});
    expect(await check(server.target, trusting('ca-a.crt'))).toBe('SERVING');
    expect(await check(server.target, grpc.credentials.createInsecure())).toBe(grpc.status.UNAVAILABLE);
    expect(await check(server.target, trusting('ca-b.crt'))).toBe(grpc.status.UNAVAILABLE);
  });

  test('ext_proc calls work over TLS (the same answers as in plaintext)', async () => {
    install('server-a');
    const server = await serve({});
    const Client = extProcService();
    const client = new Client(server.target, trusting('ca-a.crt')) as unknown as { Process(): grpc.ClientDuplexStream<object, Record<string, unknown>>; close(): void };
    const call = client.Process();
    const answer = new Promise<Record<string, unknown>>((resolve, reject) => {
      call.once('data', resolve);
      call.once('error', reject);
    });
    const header = (key: string, value: string) => ({ key, raw_value: Buffer.from(value) });
    call.write({
      protocol_config: { request_body_mode: 'NONE', response_body_mode: 'NONE' },
      request_headers: { headers: { headers: [header(':method', 'POST'), header(':path', DEPLOYMENT_PATH), header('content-type', 'application/json'), header('content-length', '20')] }, end_of_stream: false },
    });
    const first = await answer;
    expect(first.response).toBe('request_headers');
    expect((first.mode_override as { request_body_mode: string }).request_body_mode).toBe('BUFFERED');
    call.on('error', () => {});
    call.cancel();
    client.close();
  });

  test('a renewed certificate applies to new connections without a restart', async () => {
    install('server-a');
    const server = await serve({ reloadIntervalMs: 200 });
    expect(await check(server.target, trusting('ca-a.crt'))).toBe('SERVING');
    install('server-b');
    const deadline = Date.now() + 5000;
    let status: string | number = '';
    while (Date.now() < deadline && status !== 'SERVING') {
      await new Promise((resolve) => setTimeout(resolve, 100));
      status = await check(server.target, trusting('ca-b.crt'));
    }
    expect(status).toBe('SERVING');
    expect(await check(server.target, trusting('ca-a.crt'))).toBe(grpc.status.UNAVAILABLE);
  });
});

describe('start-up checks: one line naming the key and the file', () => {
  const files = () => ({ certFile: path.join(dir, 'tls.crt'), keyFile: path.join(dir, 'tls.key') });

  test('a key that does not match its certificate', async () => {
    copyFileSync(path.join(FIXTURES, 'server-a.crt'), path.join(dir, 'tls.crt'));
    copyFileSync(path.join(FIXTURES, 'server-b.key'), path.join(dir, 'tls.key'));
    await expect(serve({})).rejects.toThrow(`tls.keyFile: ${path.join(dir, 'tls.key')} is not the key of the certificate in tls.certFile (${path.join(dir, 'tls.crt')})`);
  });

  test.each([
    ['a missing certificate', { certFile: 'absent.crt' }, /^tls\.certFile: \/.*absent\.crt: no such file$/],
    ['a missing key', { keyFile: 'absent.key' }, /^tls\.keyFile: \/.*absent\.key: no such file$/],
    ['a missing client CA', { clientCaFile: 'absent-ca.crt' }, /^tls\.clientCaFile: \/.*absent-ca\.crt: no such file$/],
    ['a directory', { certFile: '.' }, /^tls\.certFile: \/.*: is a directory$/],
    ['a certificate file that is not PEM', { certFile: 'not-pem.crt' }, /^tls\.certFile: \/.*not-pem\.crt is not a PEM file/],
    ['a key where the certificate belongs', { certFile: 'tls.key' }, /^tls\.certFile: \/.*tls\.key holds no PEM certificate/],
    ['a certificate where the key belongs', { keyFile: 'tls.crt' }, /^tls\.keyFile: \/.*tls\.crt holds no usable PEM private key$/],
    ['a key with a passphrase', { keyFile: 'encrypted.key' }, /^tls\.keyFile: \/.*encrypted\.key is encrypted with a passphrase/],
  ])('%s', async (_name, change, message) => {
    install('server-a');
    writeFileSync(path.join(dir, 'not-pem.crt'), 'certificate goes here\n');
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256', privateKeyEncoding: { type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase: 'secret' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
    writeFileSync(path.join(dir, 'encrypted.key'), privateKey);
    const tls = { ...files(), ...Object.fromEntries(Object.entries(change).map(([key, file]) => [key, path.join(dir, file)])) };
    const started = startTestServer({ tls });
    await expect(started).rejects.toBeInstanceOf(StartupError);
    await expect(started).rejects.toThrow(message);
  });
});

describe('mutual TLS', () => {
  test('only clients with a certificate from the client CA get in', async () => {
    install('server-a');
    const server = await serve({ clientCaFile: path.join(FIXTURES, 'client-ca.crt') });
    expect(await check(server.target, trusting('ca-a.crt', 'client'))).toBe('SERVING');
    expect(await check(server.target, trusting('ca-a.crt'))).toBe(grpc.status.UNAVAILABLE);
    expect(await check(server.target, trusting('ca-a.crt', 'rogue-client'))).toBe(grpc.status.UNAVAILABLE);
  });

  test('requireClientCert false: a client without a certificate gets in, a wrong one does not', async () => {
    install('server-a');
    const server = await serve({ clientCaFile: path.join(FIXTURES, 'client-ca.crt'), requireClientCert: false });
    expect(await check(server.target, trusting('ca-a.crt'))).toBe('SERVING');
    expect(await check(server.target, trusting('ca-a.crt', 'client'))).toBe('SERVING');
  });
});
