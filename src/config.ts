// Configuration: built-in defaults, overridden by a file and environment variables, validated once into a
// frozen snapshot. Each call keeps the snapshot it started with. Every key, variable and default is
// described in docs/configuration.md.
import { z } from 'zod';
import { parseAddress, parseByteSize, parseSocketMode } from './config-values.js';

const MiB = 1024 * 1024;

/**
 * Longest deployment name accepted in configuration and in request paths. Azure's public naming-rules page
 * does not list model deployments; 64 is the limit Azure documents for the Cognitive Services account that
 * holds them (learn.microsoft.com/azure/templates/microsoft.cognitiveservices/accounts: "2-64"), and longer
 * names are not seen in practice.
 */
export const MAX_DEPLOYMENT_NAME_LENGTH = 64;

/** A size in bytes: a whole number, or a string with a binary unit (`512KiB`, `64MiB`, `1GiB`). */
const byteSize = z
  .union([z.number(), z.string()], { error: 'must be a size: a number of bytes, or a number with KiB, MiB or GiB (e.g. 64MiB)' })
  .transform((value, context) => {
    const bytes = parseByteSize(value);
    if (typeof bytes === 'string') {
      context.addIssue({ code: 'custom', message: bytes });
      return z.NEVER;
    }
    return bytes;
  });

/** A listener address. `unix` allows `unix:/absolute/path` besides `host:port`. */
function address(options: { unix: boolean }) {
  // A bare number (`healthListen: 50052`) gets the same "host:port" message as any other wrong form.
  return z.preprocess(
    (value) => (typeof value === 'number' ? String(value) : value),
    z.string({ error: 'must be host:port or unix:/absolute/path' }).superRefine((value, context) => {
      const parsed = parseAddress(value, options);
      if (typeof parsed === 'string') context.addIssue({ code: 'custom', message: parsed });
    }),
  );
}

/** File mode of a unix socket: a number (YAML `0o660`) or octal digits as text (`0o660`, `0660`, `660`). */
const socketMode = z.union([z.number(), z.string()], { error: 'must be an octal file mode such as 0o660' }).transform((value, context) => {
  const mode = parseSocketMode(value);
  if (typeof mode === 'string') {
    context.addIssue({ code: 'custom', message: mode });
    return z.NEVER;
  }
  return mode;
});

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
/** Case-insensitive: `LOG_LEVEL=DEBUG` is `debug`. */
const logLevel = z.preprocess((value) => (typeof value === 'string' ? value.trim().toLowerCase() : value), z.enum(LOG_LEVELS));

/** What to do with a request past a size limit or the global memory budget. */
const LimitsSchema = z
  .object({
    /** Largest request body the server edits; larger ones are forwarded unchanged or rejected. */
    maxBodyBytes: byteSize.default(256 * MiB),
    /** Bytes all calls together may hold in memory (buffered bodies, held-back stream bytes). */
    globalHeldBytes: byteSize.default(256 * MiB),
    /** `forward`: pass over-limit bodies through unchanged (counted, logged); `reject`: answer 413. */
    overLimit: z.enum(['forward', 'reject']).default('forward'),
    /** Largest decompressed size of a gzip/deflate/br body the server will inflate to edit. */
    maxDecompressedBytes: byteSize.default(64 * MiB),
  })
  .strict();

/** A deployment name as Azure allows it in one path segment; never `.`/`..` or anything with a slash. */
const deploymentName = z
  .string()
  .min(1)
  .max(MAX_DEPLOYMENT_NAME_LENGTH)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'must be letters, digits, ".", "_" or "-", starting with a letter or digit')
  .refine((name) => name !== '.' && name !== '..', 'must not be "." or ".."');

/** Opt-in rewrites. With none configured the server only removes `model` on deployment routes. */
const RewriteSchema = z
  .object({
    /** Plain OpenAI paths (`{prefix}/images/generations|edits`) -> Azure deployment routes. */
    openaiPaths: z
      .object({
        enabled: z.boolean().default(false),
        /** Path prefix the OpenAI-style client uses, e.g. `/v1`. */
        prefix: z.string().regex(/^(\/[^/?#]+)*$/, 'must be empty or start with "/" and not end with "/"').default('/v1'),
      })
      .strict()
      .prefault({}),
    /** `/openai/images/{op}` (no deployment; Azure answers 404) -> `/openai/deployments/{model}/images/{op}`. */
    deploymentlessRoutes: z.boolean().default(false),
    /** Model names or aliases -> deployment names, used by every rewrite that needs a deployment. */
    deployments: z.record(z.string().min(1), deploymentName).default({}),
    /** When a model has no entry in `deployments`, use the model name itself as the deployment. */
    modelAsDeployment: z.boolean().default(true),
    /** Rewrite `/openai/deployments/{alias}/…` to the deployment `deployments[alias]` names. */
    aliasDeploymentRoutes: z.boolean().default(false),
    apiVersion: z
      .object({
        /** api-version added to rewritten paths, and to deployment routes that have none. */
        default: z.string().regex(/^[A-Za-z0-9.-]+$/).optional(),
        /** Replace any api-version the client sent on deployment routes with `default`. */
        force: z.boolean().default(false),
      })
      .strict()
      .prefault({}),
    /** `/openai/v1/images/*`: `model` must be the deployment name there (docs/azure-images.md#the-v1-routes). */
    v1: z
      .object({
        /** Prefixes removed from `model`, e.g. `azure/` (LiteLLM-style provider prefixes). */
        stripProviderPrefixes: z.array(z.string().min(1)).default([]),
        /** Replace `model` with `deployments[model]` when there is an entry. */
        mapModels: z.boolean().default(false),
      })
      .strict()
      .prefault({}),
    /** Body field hygiene on deployment routes, each off by default (docs/azure-images.md#body-fields). */
    fields: z
      .object({
        dropResponseFormat: z.boolean().default(false),
        /** `keep` as sent, `unwrap` its members into the top level, or `drop` it. */
        extraBody: z.enum(['keep', 'unwrap', 'drop']).default('keep'),
        /** Other top-level fields to drop. */
        drop: z.array(z.string().min(1)).default([]),
      })
      .strict()
      .prefault({}),
  })
  .strict()
  .superRefine((rewrite, context) => {
    if (rewrite.apiVersion.force && !rewrite.apiVersion.default) {
      context.addIssue({ code: 'custom', path: ['apiVersion', 'force'], message: 'needs rewrite.apiVersion.default' });
    }
    if (rewrite.openaiPaths.enabled && !rewrite.apiVersion.default) {
      context.addIssue({ code: 'custom', path: ['openaiPaths', 'enabled'], message: 'needs rewrite.apiVersion.default (Azure deployment routes require api-version)' });
    }
  });

const CredentialsSchema = z
  .object({
    /** On classic Azure routes, turn `Authorization: Bearer <key>` into `api-key: <key>`. */
    bearerToApiKey: z.boolean().default(false),
    /** Inject `api-key` from this file (re-read on change) and remove the caller's credentials. */
    apiKeyFile: z.string().min(1).optional(),
    /** Several resources behind one Envoy: path prefix -> key file of that prefix's resource (src/credentials.ts). */
    apiKeyFiles: z
      .record(z.string(), z.string().min(1))
      .superRefine((files, context) => {
        for (const prefix of Object.keys(files)) {
          if (!/^\/(.*\/)?$/.test(prefix)) context.addIssue({ code: 'custom', path: [prefix], message: 'must be a path prefix starting and ending with /, as in the Envoy routes' });
        }
      })
      .optional(),
  })
  .strict();

/**
 * TLS on the ext_proc listener (`listen`), with mutual TLS when `clientCaFile` is set. The files are
 * re-read every `reloadIntervalMs`, so a renewed certificate applies to new connections without a restart.
 * The health-only listener stays plaintext: kubelet gRPC probes do not speak TLS.
 */
const TlsSchema = z
  .object({
    certFile: z.string().min(1),
    keyFile: z.string().min(1),
    /** CA bundle that client certificates must chain to: turns on mutual TLS. */
    clientCaFile: z.string().min(1).optional(),
    /** With clientCaFile: refuse clients without a certificate (false: verify one only if presented). */
    requireClientCert: z.boolean().default(true),
    reloadIntervalMs: z.coerce.number().int().min(100).default(60_000),
  })
  .strict();

export const ConfigSchema = z
  .object({
    /** ext_proc + grpc.health.v1 listener: `host:port` or `unix:/path`. For Envoy only (docs/configuration.md). */
    listen: address({ unix: true }).default('0.0.0.0:50051'),
    /** Optional extra gRPC listener with only grpc.health.v1 (kubelet probes when `listen` is a socket). */
    healthListen: address({ unix: true }).optional(),
    /** Optional HTTP admin listener (`/healthz`, `/readyz`, `/metrics`); TCP only. */
    adminListen: address({ unix: false }).optional(),
    /** TLS (and mTLS) on the ext_proc listener; plaintext when absent. */
    tls: TlsSchema.optional(),
    /** File mode of a unix socket listener: `0o660`, `0660` and `660` are the same mode. */
    socketMode: socketMode.optional(),
    /**
     * Largest ext_proc message accepted or sent. Envoy sends a whole BUFFERED body in one message, and a
     * body that must be edited whole (compressed, or a path taken from `model`) is one: 64 MiB holds an
     * image edit with one image under Azure's 50 MB limit. A message being received sits in grpc-js
     * buffers outside limits.globalHeldBytes, which is why the listener is for Envoy only.
     */
    maxMessageBytes: byteSize.default(64 * MiB),
    /** Bodies announced larger than this (content-length) are requested STREAMED instead of BUFFERED. */
    streamThresholdBytes: byteSize.default(1 * MiB),
    logLevel: logLevel.default('info'),
    /** HTTP/2 rapid-reset guard on the ext_proc listener (Node >= 22.10 only; docs/envoy-ext-proc.md#node-and-http2-stream-resets). */
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
    limits: LimitsSchema.prefault({}),
    rewrite: RewriteSchema.prefault({}),
    credentials: CredentialsSchema.prefault({}),
    /** Dynamic metadata namespace for access logs; unset = none sent. Envoy must list it in receiving_namespaces. */
    metadataNamespace: z.string().regex(/^[A-Za-z0-9_.-]+$/).optional(),
  })
  .strict()
  .superRefine((config, context) => {
    // A body asked for BUFFERED arrives as one ext_proc message; it must fit with room for framing.
    if (config.streamThresholdBytes >= config.maxMessageBytes) {
      context.addIssue({ code: 'custom', path: ['streamThresholdBytes'], message: 'must be below maxMessageBytes (a buffered body is one ext_proc message)' });
    }
    // A body asked for whole is one the server may edit: one larger than maxBodyBytes never is.
    if (config.streamThresholdBytes > config.limits.maxBodyBytes) {
      context.addIssue({ code: 'custom', path: ['streamThresholdBytes'], message: 'must be at most limits.maxBodyBytes (bodies above maxBodyBytes are never edited)' });
    }
  });

export type Config = Readonly<z.infer<typeof ConfigSchema>>;

/**
 * Every top-level key is either a listener setting, read once when the listeners are bound (a new value
 * needs a restart), or a policy setting, applied by a reload (per call, or by main.ts's reload hook:
 * log level, API key file, budget size). Listed here so that a new key cannot be "reloaded" without
 * effect: the type requires each key to be classified.
 */
export const SETTING_SCOPES = {
  listen: 'listener',
  healthListen: 'listener',
  adminListen: 'listener',
  tls: 'listener',
  socketMode: 'listener',
  maxMessageBytes: 'listener',
  http2StreamResetBurst: 'listener',
  http2StreamResetRate: 'listener',
  streamThresholdBytes: 'policy',
  logLevel: 'policy',
  drainDelayMs: 'policy',
  shutdownDeadlineMs: 'policy',
  limits: 'policy',
  rewrite: 'policy',
  credentials: 'policy',
  metadataNamespace: 'policy',
} as const satisfies Record<keyof Config, 'listener' | 'policy'>;

/** The keys a reload cannot apply: they take effect after a restart. */
export const LISTENER_KEYS = (Object.keys(SETTING_SCOPES) as Array<keyof Config>).filter((key) => SETTING_SCOPES[key] === 'listener');

/** Environment variable -> config key. Unset or empty variables are ignored. */
export const ENV_KEYS: Record<string, keyof Config> = {
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

/** A configuration or start-up problem the user can fix: main.ts prints its message as one line and exits 2. */
export class ConfigError extends Error {}

/** The top-level values the environment sets (merged over a configuration file's, see config-file.ts). */
export function fromEnv(env: NodeJS.ProcessEnv): Record<string, unknown> {
  const values: Record<string, unknown> = {};
  for (const [name, key] of Object.entries(ENV_KEYS)) {
    const raw = env[name];
    if (raw === undefined || raw.trim() === '') continue;
    values[key] = raw.trim();
  }
  return values;
}

/** The environment variable that set `key`, if one did (for messages: the file then looks right). */
export function variableFor(key: string, env: NodeJS.ProcessEnv): string | undefined {
  return Object.entries(ENV_KEYS).find(([name, mapped]) => mapped === key && (env[name]?.trim() ?? '') !== '')?.[0];
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}

type JsonSchemaNode = { properties?: Record<string, JsonSchemaNode>; anyOf?: JsonSchemaNode[] };
let schemaTree: JsonSchemaNode | undefined;

/** The keys the schema knows at `path` (`[]` = top level), and every key path, for "did you mean". */
function knownKeys(path: readonly string[]): { here: string[]; all: string[] } {
  schemaTree ??= z.toJSONSchema(ConfigSchema, { io: 'input', unrepresentable: 'any' }) as JsonSchemaNode;
  const childrenOf = (node: JsonSchemaNode | undefined): Record<string, JsonSchemaNode> =>
    node?.properties ?? node?.anyOf?.find((option) => option.properties)?.properties ?? {};
  const all: string[] = [];
  const walk = (node: JsonSchemaNode, prefix: string[]): void => {
    for (const [key, child] of Object.entries(childrenOf(node))) {
      all.push([...prefix, key].join('.'));
      walk(child, [...prefix, key]);
    }
  };
  walk(schemaTree, []);
  let node: JsonSchemaNode | undefined = schemaTree;
  for (const key of path) node = childrenOf(node)[key];
  return { here: Object.keys(childrenOf(node)), all };
}

/** Edit distance, for suggesting the key a typo meant. */
function distance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, index) => index);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    previous = current;
  }
  return previous[b.length]!;
}

/** "did you mean X?" for an unknown key: a close name at the same level, or the same name elsewhere. */
export function suggestKey(path: readonly string[], key: string): string | undefined {
  const { here, all } = knownKeys(path);
  const lower = key.toLowerCase();
  const close = here
    .map((candidate) => ({ candidate, cost: candidate.toLowerCase() === lower ? 0 : distance(candidate.toLowerCase(), lower) }))
    .filter(({ candidate, cost }) => cost <= Math.max(1, Math.floor(Math.min(candidate.length, key.length) / 4)))
    .sort((a, b) => a.cost - b.cost)[0];
  if (close) return [...path, close.candidate].join('.');
  return all.find((candidate) => candidate.split('.').at(-1)!.toLowerCase() === lower);
}

/** One line per problem, each naming the full key path (`rewrite.openaiPaths.prefix: …`). */
export function describeIssues(error: z.ZodError): string[] {
  return error.issues.flatMap((issue) => {
    const at = issue.path.map(String);
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((key) => {
        const suggestion = suggestKey(at, key);
        return `${[...at, key].join('.')}: unknown key${suggestion ? ` (did you mean ${suggestion}?)` : ''}`;
      });
    }
    return [`${at.join('.') || '(root)'}: ${issue.message}`];
  });
}

/** Validates `values` over the defaults without throwing: a deeply frozen snapshot, or one line per problem. */
export function checkConfig(values: unknown): { ok: true; config: Config } | { ok: false; problems: string[] } {
  const parsed = ConfigSchema.safeParse(values);
  return parsed.success ? { ok: true, config: deepFreeze(parsed.data) } : { ok: false, problems: describeIssues(parsed.error) };
}

/** Validates `overrides` over the defaults into a deeply frozen snapshot; messages name the bad key. */
export function buildConfig(overrides: Record<string, unknown> = {}): Config {
  const checked = checkConfig(overrides);
  if (!checked.ok) throw new ConfigError(`invalid configuration: ${checked.problems.join('; ')}`);
  return checked.config;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  return buildConfig(fromEnv(env));
}
