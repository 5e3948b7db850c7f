// The gRPC server: one Process() call per HTTP request, the health service on the same port, and the
// transport facts Envoy depends on (message size, HTTP/2 reset guard, stream close).
import { chmod, lstat, unlink } from 'node:fs/promises';
import { createSecureContext } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import type { Config } from './config.js';
import type { Logger } from './log.js';
import { EXT_PROC_SERVICE, extProcService, type ProcessingRequest, type ProcessingResponse, type RequestKind } from './proto.js';
import { MemoryBudget } from './budget.js';
import { bindError, readTlsFiles, StartupError } from './startup-checks.js';
import { CallProcessor, PASS_REASONS, UNEDITED_REASONS, type CallResult } from './call/index.js';

/** Receives one report per finished call (metrics, tests). */
export interface CallObserver {
  callStarted?(): void;
  /** Time spent deciding the answer(s) to one Envoy message, in seconds. */
  messageProcessed?(kind: RequestKind, seconds: number): void;
  callFinished?(result: CallResult, durationMs: number, how: CallEnd): void;
}

/** How a call ended: Envoy's half-close, its cancel (the >= 1.37 close, client disconnects), or our error. */
export type CallEnd = 'completed' | 'cancelled' | 'error';

export interface ServerOptions {
  /** The snapshot each new call uses; a function so a reload swaps it without touching running calls. */
  config: () => Config;
  logger: Logger;
  observer?: CallObserver;
  /** The current API key for a request path (`credentials.apiKeyFile` / `apiKeyFiles`, see src/credentials.ts). */
  apiKey?: (pathname: string) => string | undefined;
}

export interface RunningServer {
  /** Bound addresses, with the real port when 0 was asked for. */
  readonly addresses: { listen: string; health?: string };
  readonly health: HealthImplementation;
  /** Number of calls in progress. */
  activeCalls(): number;
  /** Body bytes currently held across all calls: whole bodies reserved plus bytes editors hold back. */
  heldBytes(): number;
  /** The size of the global memory budget (limits.globalHeldBytes in force). */
  budgetBytes(): number;
  /**
   * Applies the policy settings of a reloaded snapshot that live in the server rather than in each call
   * (the global budget's size). Listener settings are not touched: they need a restart.
   */
  applyPolicy(config: Config): void;
  setServing(serving: boolean): void;
  /**
   * Stops accepting calls, lets running ones finish, and resolves true when they all did; at the deadline
   * it force-closes the rest and resolves false.
   */
  shutdown(deadlineMs: number): Promise<boolean>;
}

export const HEALTH_SERVICES = ['', EXT_PROC_SERVICE] as const;

/** After the last call ends, how long shutdown lets streams close by themselves before closing them. */
const CLOSE_GRACE_MS = 250;


function nodeSupportsResetGuardOptions(version = process.versions.node): boolean {
  const [major, minor] = version.split('.').map(Number) as [number, number];
  return major > 22 || (major === 22 && minor >= 10);
}

/**
 * Envoy >= 1.37 ends every call with END_STREAM then RST_STREAM; Node's HTTP/2 layer counts those resets
 * against its rapid-reset guard and drops the whole connection when the bucket runs dry
 * (docs/envoy-ext-proc.md#node-and-http2-stream-resets).
 * Node >= 22.10 lets a server raise the bucket; grpc-js 1.14 does not pass the options through, so they go
 * into the options object it hands to http2.createServer. Only for the Envoy-facing listener.
 */
function raiseResetGuard(server: grpc.Server, config: Config, logger: Logger): void {
  if (!nodeSupportsResetGuardOptions()) {
    logger.warn(
      { node: process.versions.node },
      'Node < 22.10 cannot raise the HTTP/2 rapid-reset limit: cap ext_proc connections in Envoy with max_requests_per_connection (see docs/envoy-ext-proc.md#node-and-http2-stream-resets)',
    );
    return;
  }
  const options = (server as unknown as { commonServerOptions?: Record<string, unknown> }).commonServerOptions;
  if (!options) {
    logger.warn('grpc-js internals changed: HTTP/2 reset limits not raised; rely on Envoy max_requests_per_connection');
    return;
  }
  options.streamResetBurst = config.http2StreamResetBurst;
  options.streamResetRate = config.http2StreamResetRate;
}

async function removeStaleSocket(address: string): Promise<void> {
  if (!address.startsWith('unix:')) return;
  const path = address.slice('unix:'.length);
  try {
    if ((await lstat(path)).isSocket()) await unlink(path);
  } catch {
    // absent: nothing to remove
  }
}

/** Binds `address`; a failure (in use, no permission...) is a StartupError naming `key`. */
function bind(server: grpc.Server, key: 'listen' | 'healthListen', address: string, credentials = grpc.ServerCredentials.createInsecure()): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, credentials, (error, port) => (error ? reject(bindError(key, address, error)) : resolve(port)));
  });
}

/**
 * TLS (mTLS with a client CA) from files that grpc-js's own FileWatcherCertificateProvider re-reads every
 * reloadIntervalMs: new connections get a renewed certificate without a restart. The files are checked
 * once here (a missing file or a key that does not match its certificate stops the start with a clear
 * error), and the provider's first read is awaited: grpc-js drops connections until it has one.
 */
async function tlsCredentials(tls: NonNullable<Config['tls']>): Promise<grpc.ServerCredentials> {
  const { cert, key, ca } = readTlsFiles(tls);
  try {
    createSecureContext({ cert, key, ...(ca ? { ca } : {}) });
  } catch (error) {
    throw new StartupError('tls', `${tls.certFile} and ${tls.keyFile} cannot be used together: ${(error as Error).message}`);
  }

  const refreshIntervalMs = tls.reloadIntervalMs;
  const identity = new grpc.experimental.FileWatcherCertificateProvider({ certificateFile: tls.certFile, privateKeyFile: tls.keyFile, refreshIntervalMs });
  const clientCa = tls.clientCaFile
    ? new grpc.experimental.FileWatcherCertificateProvider({ caCertificateFile: tls.clientCaFile, refreshIntervalMs })
    : null;
  await Promise.all([firstUpdate(identity, 'identity'), ...(clientCa ? [firstUpdate(clientCa, 'ca')] : [])]);
  // grpc-js 1.14 names this function's parameters (ca, identity) but uses them as (identity, ca).
  return grpc.experimental.createCertificateProviderServerCredentials(identity, clientCa, clientCa !== null && tls.requireClientCert);
}

/** Resolves once `provider` has read its files; the provider keeps its result for the server's listener. */
function firstUpdate(provider: grpc.experimental.CertificateProvider, kind: 'identity' | 'ca'): Promise<void> {
  return new Promise((resolve) => {
    const listener = (): void => {
      if (kind === 'identity') provider.removeIdentityCertificateListener(listener);
      else provider.removeCaCertificateListener(listener);
      resolve();
    };
    if (kind === 'identity') provider.addIdentityCertificateListener(listener);
    else provider.addCaCertificateListener(listener);
  });
}

/** socketMode on a unix socket listener (both gRPC listeners); TCP addresses have no file mode. */
async function applySocketMode(address: string, mode: number | undefined): Promise<void> {
  if (address.startsWith('unix:') && mode !== undefined) await chmod(address.slice('unix:'.length), mode);
}

function withPort(address: string, port: number): string {
  if (address.startsWith('unix:')) return address;
  return address.replace(/:\d+$/, `:${port}`);
}

type ProcessCall = grpc.ServerDuplexStream<ProcessingRequest, ProcessingResponse>;

export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const { logger, observer } = options;
  const config = options.config();
  const serverOptions: grpc.ServerOptions = {
    // Envoy sends a whole BUFFERED body in one message; grpc-js would refuse anything above 4 MiB.
    'grpc.max_receive_message_length': config.maxMessageBytes,
    'grpc.max_send_message_length': config.maxMessageBytes,
  };
  const server = new grpc.Server(serverOptions);
  raiseResetGuard(server, config, logger);

  const health = new HealthImplementation(Object.fromEntries(HEALTH_SERVICES.map((name) => [name, 'SERVING'])));
  health.addToServer(server);

  let active = 0;
  // Resized by applyPolicy on a reload; memory already promised to running calls stays promised.
  const budget = new MemoryBudget(config.limits.globalHeldBytes);
  const idleWaiters: Array<() => void> = [];

  function handleCall(call: ProcessCall): void {
    const started = performance.now();
    const processor = new CallProcessor(options.config(), { budget, ...(options.apiKey ? { apiKey: options.apiKey } : {}) });
    active++;
    observer?.callStarted?.();
    let ended = false;
    let paused = false;

    const finish = (how: CallEnd): void => {
      if (ended) return;
      ended = true;
      active--;
      processor.close();
      const result = processor.finalResult();
      observer?.callFinished?.(result, performance.now() - started, how);
      const requestId = processor.requestId;
      if (result.kind === 'rewritten') {
        const { report } = result;
        logger.info(
          {
            requestId,
            route: report.route.kind,
            operation: report.route.operation,
            deployment: report.route.kind === 'deployment' ? report.route.deployment : undefined,
            bodyKind: report.bodyKind,
            mode: report.mode,
            changes: report.changes,
            bytesBefore: report.bytesIn,
            bytesAfter: report.bytesOut,
            ...(report.decompressed ? { decompressed: report.decompressed.encoding, bytesCompressed: report.decompressed.bytes } : {}),
            ...(report.stopped ? { stopped: report.stopped } : {}),
            durationMs: Math.round((performance.now() - started) * 1000) / 1000,
          },
          'request rewritten',
        );
      } else if (result.kind === 'passed' && UNEDITED_REASONS.has(result.reason)) {
        logger.warn(
          { requestId, route: result.route?.kind, operation: result.route?.operation, reason: result.reason, detail: result.detail },
          PASS_REASONS[result.reason],
        );
      }
      if (active === 0) idleWaiters.splice(0).forEach((wake) => wake());
    };

    call.on('data', (message: ProcessingRequest) => {
      if (ended) return;
      let responses: ProcessingResponse[];
      const begun = performance.now();
      try {
        responses = processor.handle(message);
        if (message.request) observer?.messageProcessed?.(message.request, (performance.now() - begun) / 1000);
      } catch (error) {
        // Surprises end the call with a gRPC status; Envoy's failure_mode_allow decides
        // (docs/envoy-ext-proc.md#failures).
        logger.error({ err: error }, 'ext_proc call failed');
        finish('error');
        call.emit('error', { code: grpc.status.INTERNAL, details: (error as Error).message });
        return;
      }
      for (const response of responses) {
        if (!call.write(response) && !paused) {
          // Honour back-pressure: stop reading until the answers are flushed.
          paused = true;
          call.pause();
          call.once('drain', () => {
            paused = false;
            if (!ended) call.resume();
          });
        }
      }
    });
    // Envoy's half-close: every message has been answered synchronously, so finish with OK: a non-OK status after
    // the last answer can still fail the request (docs/envoy-ext-proc.md#how-envoy-ends-a-call).
    // A reset (client disconnect, Envoy's cancel) also surfaces as 'end' first, with 'cancelled' right
    // after: wait one turn so a reset is not taken for a half-close and nothing is written to it.
    call.on('end', () =>
      setImmediate(() => {
        if (ended) return;
        if (call.cancelled) return finish('cancelled');
        finish('completed');
        call.end();
      }),
    );
    // Envoy >= 1.37 cancels right after its last needed answer; clients disconnect. Both are normal
    // (docs/envoy-ext-proc.md#how-envoy-ends-a-call).
    call.on('cancelled', () => finish('cancelled'));
    call.on('error', () => finish('error'));
  }

  server.addService(extProcService().service, { Process: handleCall });

  await removeStaleSocket(config.listen);
  const port = await bind(server, 'listen', config.listen, config.tls ? await tlsCredentials(config.tls) : undefined);
  await applySocketMode(config.listen, config.socketMode);

  // A health-only listener keeps Node's default HTTP/2 limits: kubelet probes are not Envoy.
  let healthServer: grpc.Server | undefined;
  let healthAddress: string | undefined;
  if (config.healthListen) {
    healthServer = new grpc.Server();
    health.addToServer(healthServer);
    await removeStaleSocket(config.healthListen);
    healthAddress = withPort(config.healthListen, await bind(healthServer, 'healthListen', config.healthListen));
    await applySocketMode(config.healthListen, config.socketMode);
  }

  const setServing = (serving: boolean): void => {
    for (const name of HEALTH_SERVICES) health.setStatus(name, serving ? 'SERVING' : 'NOT_SERVING');
  };

  return {
    addresses: { listen: withPort(config.listen, port), ...(healthAddress ? { health: healthAddress } : {}) },
    health,
    activeCalls: () => active,
    budgetBytes: () => budget.limit,
    applyPolicy(next: Config): void {
      budget.resize(next.limits.globalHeldBytes);
    },
    // Every byte a call holds is reserved in the budget as it is held.
    heldBytes: () => budget.held,
    setServing,
    async shutdown(deadlineMs: number): Promise<boolean> {
      setServing(false);
      const idle = active === 0 ? Promise.resolve() : new Promise<void>((resolve) => idleWaiters.push(resolve));
      const graceful = new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<'deadline'>((resolve) => {
        timer = setTimeout(() => resolve('deadline'), deadlineMs);
      });
      const outcome = await Promise.race([idle.then(() => 'idle' as const), deadline]);
      if (outcome === 'idle') {
        // Every call has ended. A stream can still be open at the HTTP/2 level when its call ended with an
        // error before the peer half-closed; grpc-js would wait on it until the deadline. Give the final
        // frames a moment to flush, then close what is left.
        await Promise.race([graceful, new Promise((resolve) => setTimeout(resolve, CLOSE_GRACE_MS))]);
      } else {
        logger.warn({ activeCalls: active }, 'shutdown deadline reached: closing remaining calls');
      }
      clearTimeout(timer);
      server.forceShutdown();
      healthServer?.forceShutdown();
      return outcome === 'idle';
    },
  };
}
