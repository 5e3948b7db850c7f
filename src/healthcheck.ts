// Health probe CLI for containers: `node dist/healthcheck.js [options] [target [service]]`.
// Calls grpc.health.v1.Health/Check with a deadline and exits 0 only if the answer is SERVING, so
// Docker's HEALTHCHECK tests the same gRPC path Envoy uses, without curl or a
// grpc_health_probe binary in the image.
//
// It reads the server's own configuration (--config or EXTPROC_CONFIG, then the environment), so it
// probes where the server listens: the health-only listener when there is one, else the ext_proc
// listener, over TLS when the server has TLS there. Exit 1 for every failure, 2 never: Docker reserves 2.
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect as tlsConnect } from 'node:tls';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { ConfigError, type Config } from './config.js';
import { configFilePath, loadConfigFrom } from './config-file.js';
import { parseAddress } from './config-values.js';
import { healthService } from './proto.js';
import { VERSION } from './version.js';

export interface HealthResult {
  /** True only for SERVING. */
  ok: boolean;
  /** The ServingStatus name, when the server answered. */
  status?: string;
  /** The gRPC error, when it did not (unreachable, deadline, unknown service). */
  error?: string;
}

/** How to reach the server's TLS listener: trust exactly its configured certificate, optionally present ours. */
export interface ProbeTls {
  /** tls.certFile: the certificate the server must present (pinned, whatever signed it). */
  serverCertFile: string;
  /** For mutual TLS: a certificate the server's tls.clientCaFile accepts, and its key. */
  clientCertFile?: string;
  clientKeyFile?: string;
}

export interface ProbePlan {
  target: string;
  tls?: ProbeTls;
}

export const DEFAULT_TARGET = '127.0.0.1:50051';
export const CLIENT_CERT_ENV = 'EXTPROC_HEALTHCHECK_CLIENT_CERT';
export const CLIENT_KEY_ENV = 'EXTPROC_HEALTHCHECK_CLIENT_KEY';

/** A wildcard listen address (0.0.0.0, [::]) is probed on loopback. */
function loopback(address: string): string {
  if (address.startsWith('unix:')) return address;
  return address.replace(/^0\.0\.0\.0:/, '127.0.0.1:').replace(/^\[::\]:/, '[::1]:');
}

/** A problem with the probe's own set-up (not the server's health): one line, exit 1. */
export class ProbeSetupError extends Error {}

/**
 * Where and how to probe: an explicit target as given (plaintext, unless it is the server's TLS
 * listener), else `healthListen` (plaintext), else `listen` (TLS when `tls` is set).
 */
export function probePlan(config: Config, options: { target?: string; clientCert?: string; clientKey?: string } = {}): ProbePlan {
  const listen = loopback(config.listen);
  const target = options.target ? loopback(options.target) : config.healthListen ? loopback(config.healthListen) : listen;
  if (!config.tls || target !== listen) return { target };
  const { clientCert, clientKey } = options;
  if (Boolean(clientCert) !== Boolean(clientKey)) throw new ProbeSetupError(`a client certificate needs both --client-cert and --client-key (or ${CLIENT_CERT_ENV} and ${CLIENT_KEY_ENV})`);
  if (config.tls.clientCaFile && config.tls.requireClientCert && !clientCert) {
    throw new ProbeSetupError(
      `the ext_proc listener requires client certificates (mutual TLS): set healthListen for a plaintext health-only listener, or give the probe a client certificate with --client-cert/--client-key (${CLIENT_CERT_ENV}/${CLIENT_KEY_ENV})`,
    );
  }
  return { target, tls: { serverCertFile: config.tls.certFile, ...(clientCert ? { clientCertFile: clientCert, clientKeyFile: clientKey! } : {}) } };
}

/** The address to probe, from the argument or the server's own configuration (env and EXTPROC_CONFIG). */
export function healthTarget(arg: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  return arg ? loopback(arg) : probePlan(loadConfigFrom({ env })).target;
}

function read(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    throw new ProbeSetupError(`cannot read ${what} ${path} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
  }
}

/**
 * Connects once with TLS and compares the certificate the server presents with tls.certFile. The probe
 * then trusts that certificate whatever signed it, and whatever host name it is for (the probe connects
 * to loopback, which a certificate rarely names).
 */
function presentedCertificateMatches(target: string, tls: ProbeTls, timeoutMs: number): Promise<string | undefined> {
  const expected = new X509Certificate(read(tls.serverCertFile, 'tls.certFile'));
  const address = parseAddress(target, { unix: true });
  if (typeof address === 'string') throw new ProbeSetupError(`cannot probe ${target}: ${address}`);
  const client = tls.clientCertFile ? { cert: read(tls.clientCertFile, 'the client certificate'), key: read(tls.clientKeyFile!, 'the client key') } : {};
  return new Promise((resolve) => {
    const socket = tlsConnect({
      ...(address.kind === 'unix' ? { path: address.path } : { host: address.host, port: address.port }),
      ALPNProtocols: ['h2'],
      rejectUnauthorized: false,
      ...client,
    });
    const done = (problem: string | undefined): void => {
      socket.destroy();
      resolve(problem);
    };
    socket.setTimeout(timeoutMs, () => done('TLS handshake timed out'));
    socket.once('error', (error) => done(`TLS: ${error.message}`));
    socket.once('secureConnect', () => {
      const presented = socket.getPeerCertificate();
      done(presented?.raw?.equals(expected.raw) ? undefined : `the server presents a certificate other than tls.certFile (${tls.serverCertFile})`);
    });
  });
}

function credentialsFor(tls: ProbeTls | undefined): grpc.ChannelCredentials {
  if (!tls) return grpc.credentials.createInsecure();
  const key = tls.clientKeyFile ? read(tls.clientKeyFile, 'the client key') : null;
  const cert = tls.clientCertFile ? read(tls.clientCertFile, 'the client certificate') : null;
  // The certificate was pinned by presentedCertificateMatches just before.
  return grpc.credentials.createSsl(null, key, cert, { rejectUnauthorized: false, checkServerIdentity: () => undefined });
}

/** One Check call; never throws (a set-up problem is an unhealthy result with its reason). */
export async function checkHealth(target: string, service = '', timeoutMs = 2000, tls?: ProbeTls): Promise<HealthResult> {
  let credentials: grpc.ChannelCredentials;
  try {
    if (tls) {
      const mismatch = await presentedCertificateMatches(target, tls, timeoutMs);
      if (mismatch) return { ok: false, error: mismatch };
    }
    credentials = credentialsFor(tls);
  } catch (error) {
    return { ok: false, error: (error as Error).message };
  }
  const Health = healthService();
  const client = new Health(target, credentials);
  return new Promise<HealthResult>((resolve) => {
    client.Check({ service }, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, res?: { status: string }) => {
      client.close();
      if (err) resolve({ ok: false, error: `${grpc.status[err.code] ?? err.code}: ${err.details}` });
      else if (res?.status === 'SERVING') resolve({ ok: true, status: 'SERVING' });
      else resolve({ ok: false, status: res?.status ?? 'UNKNOWN' });
    });
  });
}

const USAGE = `usage: healthcheck [--config FILE] [--client-cert FILE --client-key FILE] [--timeout MS] [target [service]]

Asks the server's grpc.health.v1 service whether it is SERVING: exit 0 if so, 1 otherwise (also for a
configuration problem; Docker reserves exit code 2).

Without a target it reads the server's configuration, the same way the server does, and probes
healthListen when set, else listen (0.0.0.0 and [::] are probed on loopback), over TLS when tls is set:
it then trusts exactly the certificate in tls.certFile. With mutual TLS (tls.clientCaFile and
requireClientCert) it needs a client certificate, or use healthListen (plaintext, health only).

options:
  --config FILE       the server's configuration file (default: $EXTPROC_CONFIG)
  --client-cert FILE  client certificate for mutual TLS (or $${CLIENT_CERT_ENV})
  --client-key FILE   its private key (or $${CLIENT_KEY_ENV})
  --timeout MS        deadline of the check (default 2000)
  --help, --version
  target              host:port or unix:/path to probe instead (plaintext unless it is the TLS listener)
  service             health service name (default "", the whole server)

environment: EXTPROC_CONFIG, EXTPROC_LISTEN, EXTPROC_HEALTH_LISTEN and the server's other variables
(see azure-image-extproc --help), ${CLIENT_CERT_ENV}, ${CLIENT_KEY_ENV}.`;

/** The CLI without process globals: returns the exit code and what to print. */
export async function runHealthcheck(argv: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout?: string; stderr?: string }> {
  let values: { config?: string; 'client-cert'?: string; 'client-key'?: string; timeout?: string; help?: boolean; version?: boolean };
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      options: {
        config: { type: 'string' },
        'client-cert': { type: 'string' },
        'client-key': { type: 'string' },
        timeout: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
      },
      strict: true,
      allowPositionals: true,
    }));
  } catch (error) {
    return { code: 1, stderr: `healthcheck: ${(error as Error).message} (see healthcheck --help)\n` };
  }
  if (values.help) return { code: 0, stdout: `${USAGE}\n` };
  if (values.version) return { code: 0, stdout: `azure-image-extproc healthcheck ${VERSION}\n` };
  if (positionals.length > 2) return { code: 1, stderr: `healthcheck: at most a target and a service, got ${positionals.length} arguments (see healthcheck --help)\n` };
  const timeoutMs = values.timeout === undefined ? 2000 : Number(values.timeout);
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) return { code: 1, stderr: `healthcheck: --timeout must be a number of milliseconds, got "${values.timeout}"\n` };
  const [target, service = ''] = positionals;
  if (target !== undefined && typeof parseAddress(target, { unix: true }) === 'string') {
    return { code: 1, stderr: `healthcheck: target ${parseAddress(target, { unix: true }) as string}\n` };
  }

  let plan: ProbePlan;
  try {
    const config = loadConfigFrom({ env, file: configFilePath({ env, file: values.config }) });
    const clientCert = values['client-cert'] ?? (env[CLIENT_CERT_ENV] || undefined);
    const clientKey = values['client-key'] ?? (env[CLIENT_KEY_ENV] || undefined);
    plan = probePlan(config, { ...(target ? { target } : {}), ...(clientCert ? { clientCert } : {}), ...(clientKey ? { clientKey } : {}) });
  } catch (error) {
    if (error instanceof ConfigError) return { code: 1, stderr: `healthcheck: cannot use the server's configuration: ${error.message}\n` };
    if (error instanceof ProbeSetupError) return { code: 1, stderr: `healthcheck: ${error.message}\n` };
    throw error;
  }
  const result = await checkHealth(plan.target, service, timeoutMs, plan.tls);
  if (result.ok) return { code: 0 };
  return { code: 1, stderr: `unhealthy: ${plan.target}${plan.tls ? ' (TLS)' : ''} service "${service}": ${result.error ?? result.status}\n` };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { code, stdout, stderr } = await runHealthcheck(process.argv.slice(2), process.env);
  if (stdout) process.stdout.write(stdout);
  if (stderr) process.stderr.write(stderr);
  process.exitCode = code;
}
