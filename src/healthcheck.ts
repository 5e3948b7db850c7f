// Health probe CLI for containers: `node dist/healthcheck.js [target] [service]`.
// Calls grpc.health.v1.Health/Check with a 2 s deadline and exits 0 only if the answer is SERVING, so
// Docker's HEALTHCHECK tests the same gRPC path Envoy uses (STYLE.md lesson 9) without curl or a
// grpc_health_probe binary in the image.
//
// target: host:port or unix:/path; default EXTPROC_HEALTH_LISTEN, else EXTPROC_LISTEN, else
// 127.0.0.1:50051. A wildcard listen address (0.0.0.0, [::]) is probed on loopback.
import * as grpc from '@grpc/grpc-js';
import { pathToFileURL } from 'node:url';
import { healthService } from './proto.js';

export interface HealthResult {
  /** True only for SERVING. */
  ok: boolean;
  /** The ServingStatus name, when the server answered. */
  status?: string;
  /** The gRPC error, when it did not (unreachable, deadline, unknown service). */
  error?: string;
}

export const DEFAULT_TARGET = '127.0.0.1:50051';

/** The address to probe, from the argument or the server's own listen settings. */
export function healthTarget(arg: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  const target = arg || env.EXTPROC_HEALTH_LISTEN || env.EXTPROC_LISTEN || DEFAULT_TARGET;
  if (target.startsWith('unix:')) return target;
  return target.replace(/^0\.0\.0\.0:/, '127.0.0.1:').replace(/^\[::\]:/, '[::1]:');
}

/** One Check call; never throws. */
export function checkHealth(target: string, service = '', timeoutMs = 2000): Promise<HealthResult> {
  const Health = healthService();
  const client = new Health(target, grpc.credentials.createInsecure());
  return new Promise<HealthResult>((resolve) => {
    client.Check({ service }, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, res?: { status: string }) => {
      client.close();
      if (err) resolve({ ok: false, error: `${grpc.status[err.code] ?? err.code}: ${err.details}` });
      else if (res?.status === 'SERVING') resolve({ ok: true, status: 'SERVING' });
      else resolve({ ok: false, status: res?.status ?? 'UNKNOWN' });
    });
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const target = healthTarget(process.argv[2]);
  const service = process.argv[3] ?? '';
  const result = await checkHealth(target, service);
  if (!result.ok) process.stderr.write(`unhealthy: ${target} service "${service}": ${result.error ?? result.status}\n`);
  process.exitCode = result.ok ? 0 : 1;
}
