// The HTTP admin listener: Prometheus scrapes and kubelet HTTP probes. It never carries customer traffic,
// so it logs nothing per request and reads no request body.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { HealthImplementation, ServingStatus } from 'grpc-health-check';
import type { Registry } from 'prom-client';
import type { Logger } from './log.js';
import { EXT_PROC_SERVICE } from './proto.js';
import { parseAddress } from './config-values.js';
import { bindError } from './startup-checks.js';

export interface AdminOptions {
  /** `host:port` (`[::1]:50053` for IPv6, `0.0.0.0:50053` for all interfaces, port 0 picks one). */
  listen: string;
  registry: Registry;
  /** Backs `/readyz`: must read the same state as gRPC health (see `healthChecker`). */
  isReady: () => boolean;
  /** Backs `/healthz`. */
  isLive: () => boolean;
  logger: Logger;
}

export interface RunningAdmin {
  /** `host:port` with the bound port. */
  readonly address: string;
  close(): Promise<void>;
}

type CheckHandler = (call: { request: { service: string } }, callback: (error: unknown, value?: { status: ServingStatus }) => void) => void;

/**
 * Returns a synchronous reader of the status that grpc.health.v1 `Check` answers for `service`.
 *
 * HealthImplementation keeps its status map private and has no getter. Rather than reach into that
 * field, this registers the implementation on a stand-in server (its public `addToServer`) and keeps the
 * `check` handler it installs: `/readyz` then runs the very code Envoy's and kubelet's gRPC probes run,
 * against the same map `setServing` writes. The handler answers synchronously.
 */
export function healthChecker(health: HealthImplementation, service: string = EXT_PROC_SERVICE): () => ServingStatus | 'SERVICE_UNKNOWN' {
  let check: CheckHandler | undefined;
  health.addToServer({
    addService(_definition, implementation) {
      check = implementation.check as unknown as CheckHandler;
    },
  });
  if (!check) throw new Error('grpc-health-check did not register a Check handler');
  const handler = check;
  return () => {
    let status: ServingStatus | 'SERVICE_UNKNOWN' = 'SERVICE_UNKNOWN';
    handler({ request: { service } }, (error, value) => {
      if (!error && value) status = value.status;
    });
    return status;
  };
}

/** Splits `host:port` / `[v6]:port` (config.ts has already checked the form; see config-values.ts). */
export function parseListen(listen: string): { host: string; port: number } {
  const address = parseAddress(listen, { unix: false });
  if (typeof address === 'string') throw new Error(`adminListen ${address}`);
  if (address.kind !== 'tcp') throw new Error('adminListen must be host:port');
  return { host: address.host, port: address.port };
}

function send(response: ServerResponse, status: number, body: string, contentType = 'text/plain; charset=utf-8'): void {
  response.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  response.end(body);
}

export async function startAdmin(options: AdminOptions): Promise<RunningAdmin> {
  const { registry, isReady, isLive, logger } = options;
  const target = parseListen(options.listen);

  const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    const path = (request.url ?? '/').split('?', 1)[0];
    const route = path === '/metrics' || path === '/healthz' || path === '/readyz' ? path : undefined;
    if (!route) return send(response, 404, 'not found\n');
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.setHeader('allow', 'GET, HEAD');
      return send(response, 405, 'method not allowed\n');
    }
    switch (route) {
      case '/healthz':
        return isLive() ? send(response, 200, 'ok\n') : send(response, 503, 'not live\n');
      case '/readyz':
        // 503 during drain: kubelet stops routing new connections here while in-flight calls finish.
        return isReady() ? send(response, 200, 'ok\n') : send(response, 503, 'not serving\n');
      case '/metrics':
        return send(response, 200, await registry.metrics(), registry.contentType);
    }
  };

  const server = createServer((request, response) => {
    handle(request, response).catch((error: unknown) => {
      logger.error({ err: error, path: (request.url ?? '').split('?', 1)[0] }, 'admin request failed');
      if (!response.headersSent) send(response, 500, 'internal error\n');
      else response.destroy();
    });
  });
  // Probes and scrapes are tiny: bound slow or idle clients so they cannot pin sockets.
  server.headersTimeout = 10_000;
  server.requestTimeout = 15_000;
  server.keepAliveTimeout = 5_000;

  await new Promise<void>((resolve, reject) => {
    // An address in use or not allowed stops the start with a line naming adminListen (exit 2).
    const failed = (error: Error): void => reject(bindError('adminListen', options.listen, error));
    server.once('error', failed);
    const ready = (): void => {
      server.off('error', failed);
      resolve();
    };
    server.listen(target.port, target.host, ready);
  });
  server.on('error', (error) => logger.error({ err: error }, 'admin listener error'));

  const bound = server.address() as AddressInfo;
  const address = `${bound.family === 'IPv6' ? `[${bound.address}]` : bound.address}:${bound.port}`;

  return {
    address,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Keep-alive scrape connections would otherwise hold close() open until they idle out.
        server.closeAllConnections();
      }),
  };
}
