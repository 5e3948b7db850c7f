// Configuration: built-in defaults, overridden by environment variables, validated once into a frozen
// snapshot (STYLE lesson 8). Each call keeps the snapshot it started with.
import { z } from 'zod';

const MiB = 1024 * 1024;

const byteSize = z.coerce.number().int().positive();

export const ConfigSchema = z
  .object({
    /** ext_proc + grpc.health.v1 listener: `host:port` or `unix:/path`. */
    listen: z.string().min(1).default('0.0.0.0:50051'),
    /** Optional extra gRPC listener with only grpc.health.v1 (kubelet probes when `listen` is a socket). */
    healthListen: z.string().min(1).optional(),
    /** Optional HTTP admin listener (`/healthz`, `/readyz`, `/metrics`). */
    adminListen: z.string().min(1).optional(),
    /** File mode of a unix socket listener, e.g. 0o660. */
    socketMode: z.number().int().min(0).max(0o777).optional(),
    /** Largest ext_proc message accepted or sent; Envoy sends whole BUFFERED bodies in one message. */
    maxMessageBytes: byteSize.default(64 * MiB),
    /** Bodies announced larger than this (content-length) are requested STREAMED instead of BUFFERED. */
    streamThresholdBytes: byteSize.default(1 * MiB),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    /** HTTP/2 rapid-reset guard on the ext_proc listener (Node >= 22.10 only; reference P25). */
    http2StreamResetBurst: z.coerce.number().int().positive().default(10_000),
    http2StreamResetRate: z.coerce.number().int().positive().default(4_000),
    /**
     * On SIGTERM, time between going NOT_SERVING and closing the listener, while new calls are still
     * served: Kubernetes endpoint removal and Envoy's health checks take seconds to stop sending calls
     * here. SIGINT (Ctrl-C on `npm start`) skips it: nothing routes to an interactive run.
     */
    drainDelayMs: z.coerce.number().int().min(0).default(5_000),
    /**
     * After the drain delay, how long in-flight calls may take before they are closed. drainDelayMs +
     * shutdownDeadlineMs must stay under Kubernetes' terminationGracePeriodSeconds (default 30 s).
     */
    shutdownDeadlineMs: z.coerce.number().int().min(0).default(20_000),
  })
  .strict();

export type Config = Readonly<z.infer<typeof ConfigSchema>>;

/** Environment variable -> config key. Unset or empty variables are ignored. */
const ENV_KEYS: Record<string, keyof Config> = {
  EXTPROC_LISTEN: 'listen',
  EXTPROC_HEALTH_LISTEN: 'healthListen',
  EXTPROC_ADMIN_LISTEN: 'adminListen',
  EXTPROC_SOCKET_MODE: 'socketMode',
  EXTPROC_MAX_MESSAGE_BYTES: 'maxMessageBytes',
  EXTPROC_STREAM_THRESHOLD_BYTES: 'streamThresholdBytes',
  LOG_LEVEL: 'logLevel',
  EXTPROC_HTTP2_STREAM_RESET_BURST: 'http2StreamResetBurst',
  EXTPROC_HTTP2_STREAM_RESET_RATE: 'http2StreamResetRate',
  EXTPROC_DRAIN_DELAY_MS: 'drainDelayMs',
  EXTPROC_SHUTDOWN_DEADLINE_MS: 'shutdownDeadlineMs',
};

export class ConfigError extends Error {}

function fromEnv(env: NodeJS.ProcessEnv): Record<string, unknown> {
  const values: Record<string, unknown> = {};
  for (const [name, key] of Object.entries(ENV_KEYS)) {
    const raw = env[name];
    if (raw === undefined || raw.trim() === '') continue;
    values[key] = key === 'socketMode' ? parseInt(raw, 8) : raw.trim();
  }
  return values;
}

/** Validates `overrides` over the defaults; messages name the offending key. */
export function buildConfig(overrides: Record<string, unknown> = {}): Config {
  const parsed = ConfigSchema.safeParse(overrides);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`);
    throw new ConfigError(`invalid configuration: ${problems.join('; ')}`);
  }
  return Object.freeze(parsed.data);
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  return buildConfig(fromEnv(env));
}
