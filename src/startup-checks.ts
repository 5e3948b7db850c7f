// Start-up problems a user can fix, each turned into one line that names the configuration key (or the
// environment variable that set it) and the file or address: TLS files, and listeners that cannot bind.
// main.ts prints the message and exits 2, without a stack trace.
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { ConfigError, variableFor, type Config } from './config.js';

/** A configuration value that cannot be used at start-up; `key` is its path, e.g. `tls.certFile`. */
export class StartupError extends ConfigError {
  constructor(
    readonly key: string,
    detail: string,
  ) {
    super(`${key}: ${detail}`);
  }
}

/** `key`, with the environment variable that set it when one did (`listen (from EXTPROC_LISTEN)`). */
export function keyWithSource(key: string, env: NodeJS.ProcessEnv = process.env): string {
  const variable = variableFor(key, env);
  return variable ? `${key} (from ${variable})` : key;
}

function readPem(key: string, path: string): Buffer {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'is a directory' : `cannot be read (${code ?? (error as Error).message})`;
    throw new StartupError(key, `${path}: ${why}`);
  }
  if (!bytes.includes('-----BEGIN ')) throw new StartupError(key, `${path} is not a PEM file (no "-----BEGIN" line)`);
  return bytes;
}

function certificate(key: string, path: string, pem: Buffer): X509Certificate {
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new StartupError(key, `${path} holds no PEM certificate ("-----BEGIN CERTIFICATE-----")`);
  try {
    return new X509Certificate(pem);
  } catch {
    throw new StartupError(key, `${path} holds a certificate that cannot be parsed`);
  }
}

function privateKey(key: string, path: string, pem: Buffer): KeyObject {
  try {
    return createPrivateKey(pem);
  } catch (error) {
    const encrypted = /passphrase|encrypted/i.test((error as Error).message) || pem.includes('ENCRYPTED');
    throw new StartupError(key, encrypted ? `${path} is encrypted with a passphrase, which is not supported` : `${path} holds no usable PEM private key`);
  }
}

/**
 * Reads and checks the TLS files: each readable PEM of the right kind, and the key the one for the
 * certificate. The certificate files are re-read later by grpc-js; this is the start-up check.
 */
export function readTlsFiles(tls: NonNullable<Config['tls']>): { cert: Buffer; key: Buffer; ca?: Buffer } {
  const cert = readPem('tls.certFile', tls.certFile);
  const key = readPem('tls.keyFile', tls.keyFile);
  const ca = tls.clientCaFile ? readPem('tls.clientCaFile', tls.clientCaFile) : undefined;
  const leaf = certificate('tls.certFile', tls.certFile, cert);
  const secret = privateKey('tls.keyFile', tls.keyFile, key);
  if (ca) certificate('tls.clientCaFile', tls.clientCaFile!, ca);
  if (!leaf.checkPrivateKey(secret)) throw new StartupError('tls.keyFile', `${tls.keyFile} is not the key of the certificate in tls.certFile (${tls.certFile})`);
  return { cert, key, ...(ca ? { ca } : {}) };
}

/** Why a listener could not bind, from the error grpc-js or Node gave. */
function bindReason(address: string, error: Error): string {
  const message = `${(error as NodeJS.ErrnoException).code ?? ''} ${error.message}`;
  if (address.startsWith('unix:')) {
    const directory = dirname(address.slice('unix:'.length));
    if (!existsSync(directory)) return `cannot create the socket: the directory ${directory} does not exist`;
  }
  if (/EADDRINUSE/.test(message)) return `${address} is already in use (another process listens there)`;
  if (/EACCES|EPERM/.test(message)) return `${address}: permission denied (ports below 1024 need privileges; a socket's directory must be writable)`;
  if (/EADDRNOTAVAIL/.test(message)) return `${address} is not an address of this machine`;
  if (/Name resolution failed|ENOTFOUND|EAI_AGAIN/.test(message)) return `${address}: the host name does not resolve`;
  return `cannot listen on ${address}: ${error.message}`;
}

/** The error to stop the start with when `key`'s listener cannot bind `address`. */
export function bindError(key: 'listen' | 'healthListen' | 'adminListen', address: string, error: Error): StartupError {
  return new StartupError(keyWithSource(key), bindReason(address, error));
}
