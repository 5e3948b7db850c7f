#!/usr/bin/env node
// Entry point: `--config file` / EXTPROC_CONFIG + env -> config -> server; the file and the API key file
// reload on change and on SIGHUP; SIGTERM/SIGINT drain then exit. A problem the user can fix (a bad
// value, a file that cannot be read, an address in use) is one line on stderr and exit code 2.
import { format, parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { healthChecker, startAdmin } from './admin.js';
import { ConfigError, ENV_KEYS, type Config } from './config.js';
import { CONFIG_FILE_ENV, configFilePath, loadConfigFrom } from './config-file.js';
import { watchConfig } from './config-watch.js';
import { createLogger } from './log.js';
import { createMetrics } from './metrics.js';
import { createApiKeys } from './credentials.js';
import { startServer, type RunningServer } from './server.js';
import { VERSION } from './version.js';

const NAME = 'azure-image-extproc';

/** What each environment variable sets; --help lists them all (a test checks it against ENV_KEYS). */
const ENV_HELP: Record<string, string> = {
  [CONFIG_FILE_ENV]: 'configuration file (YAML), as --config',
  EXTPROC_LISTEN: 'listen: ext_proc + gRPC health listener, host:port or unix:/path (0.0.0.0:50051)',
  EXTPROC_HEALTH_LISTEN: 'healthListen: extra plaintext listener with only gRPC health (unset)',
  EXTPROC_ADMIN_LISTEN: 'adminListen: HTTP /healthz, /readyz, /metrics, host:port (unset)',
  EXTPROC_SOCKET_MODE: 'socketMode: file mode of a unix socket listener, 0o660 = 0660 = 660 (unset)',
  EXTPROC_MAX_MESSAGE_BYTES: 'maxMessageBytes: largest ext_proc message (64MiB)',
  EXTPROC_STREAM_THRESHOLD_BYTES: 'streamThresholdBytes: bodies announced above this are STREAMED (1MiB)',
  LOG_LEVEL: 'logLevel: fatal, error, warn, info, debug, trace or silent, any case (info)',
  EXTPROC_HTTP2_STREAM_RESET_BURST: 'http2StreamResetBurst: HTTP/2 reset guard burst, Node >= 22.10 (10000)',
  EXTPROC_HTTP2_STREAM_RESET_RATE: 'http2StreamResetRate: HTTP/2 reset guard rate per second (4000)',
  EXTPROC_DRAIN_DELAY_MS: 'drainDelayMs: on SIGTERM, serve this long while NOT_SERVING (5000)',
  EXTPROC_SHUTDOWN_DEADLINE_MS: 'shutdownDeadlineMs: then wait this long for calls in progress (20000)',
};

function usage(): string {
  const width = Math.max(...Object.keys(ENV_HELP).map((name) => name.length)) + 2;
  return [
    `usage: ${NAME} [--config config.yaml]`,
    '',
    'Envoy ext_proc server that makes OpenAI-style image requests work against Azure OpenAI deployment routes.',
    '',
    'options:',
    '  --config FILE   configuration file (YAML); default: $EXTPROC_CONFIG, else built-in defaults',
    '  --help          show this help and exit',
    '  --version       show the version and exit',
    '',
    'environment (overrides the file; sizes take KiB, MiB, GiB):',
    ...Object.entries(ENV_HELP).map(([name, text]) => `  ${name.padEnd(width)}${text}`),
    '',
    'Every setting, its default and whether a reload applies it: docs/configuration.md.',
    'Exit codes: 0 stopped cleanly, 1 calls cut off at the shutdown deadline, 2 a configuration or start-up problem.',
  ].join('\n');
}

/** A problem the user can fix: one line, no stack trace, exit 2. */
function refuse(message: string, hint?: string): never {
  process.stderr.write(`${NAME}: ${message.replace(/\s*\n\s*/g, ' ')}${hint ? ` (${hint})` : ''}\n`);
  process.exit(2);
}

async function main(): Promise<void> {
  let file: string | undefined;
  let config: Config;
  try {
    const { values } = parseArgs({
      options: { config: { type: 'string' }, help: { type: 'boolean', short: 'h' }, version: { type: 'boolean' } },
      strict: true,
      allowPositionals: false,
    });
    if (values.help) {
      process.stdout.write(`${usage()}\n`);
      return;
    }
    if (values.version) {
      process.stdout.write(`${NAME} ${VERSION}\n`);
      return;
    }
    file = configFilePath({ file: values.config });
    config = loadConfigFrom({ file });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS')) refuse((error as Error).message, `see ${NAME} --help`);
    if (error instanceof ConfigError) refuse(error.message);
    throw error;
  }
  const logger = createLogger(config.logLevel);
  // grpc-js prints its own errors on stderr ("No address added..."); every one a user can act on is
  // reported by this server in its own words, so grpc-js goes to the log at debug.
  grpc.setLogger({
    error: (...args: unknown[]) => logger.debug({ grpc: format(...args) }, 'grpc-js'),
    info: (...args: unknown[]) => logger.debug({ grpc: format(...args) }, 'grpc-js'),
    debug: (...args: unknown[]) => logger.debug({ grpc: format(...args) }, 'grpc-js'),
  });
  const metrics = createMetrics({ version: VERSION });
  const apiKey = createApiKeys(logger);
  apiKey.use(config.credentials);
  let server: RunningServer | undefined;
  const configWatcher = watchConfig({
    file,
    env: process.env,
    initial: config,
    logger,
    metrics,
    onReload(next) {
      logger.level = next.logLevel;
      apiKey.use(next.credentials);
      server?.applyPolicy(next);
    },
  });
  warnUnknownVariables(logger);
  let admin: Awaited<ReturnType<typeof startAdmin>> | undefined;
  try {
    server = await startServer({
      config: () => configWatcher.current(),
      logger,
      observer: metrics.observer,
      apiKey: (pathname?: string) => apiKey.value(pathname ?? '/'),
    });
    // A reload that landed while the listeners were binding.
    server.applyPolicy(configWatcher.current());
    metrics.watch(server);
    // /readyz reads the grpc.health.v1 state that setServing flips, so both probes agree.
    const extProcStatus = healthChecker(server.health);
    admin = config.adminListen
      ? await startAdmin({
          listen: config.adminListen,
          registry: metrics.registry,
          isReady: () => extProcStatus() === 'SERVING',
          isLive: () => true,
          logger,
        })
      : undefined;
  } catch (error) {
    if (error instanceof ConfigError) refuse(error.message);
    throw error;
  }
  const running = server;
  logger.info(
    {
      version: VERSION,
      listen: running.addresses.listen,
      health: running.addresses.health,
      admin: admin?.address,
      tls: config.tls ? (config.tls.clientCaFile ? 'mutual' : 'server') : 'off',
      configFile: file,
      node: process.versions.node,
    },
    'ready',
  );

  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    // npm forwards the terminal's SIGINT to us, so one Ctrl-C can arrive twice: repeats are ignored.
    if (stopping) return;
    stopping = true;
    // Orchestrators stop with SIGTERM and keep routing here for a while; Ctrl-C on a local run does not.
    const drainDelayMs = signal === 'SIGTERM' ? configWatcher.current().drainDelayMs : 0;
    logger.info({ signal, activeCalls: running.activeCalls(), drainDelayMs }, 'draining');
    running.setServing(false);
    await new Promise((resolve) => setTimeout(resolve, drainDelayMs));
    configWatcher.close();
    const drained = await running.shutdown(configWatcher.current().shutdownDeadlineMs);
    // Last, so /metrics and /readyz (503) stay scrapeable while the calls drain.
    await admin?.close();
    logger.info({ drained }, 'stopped');
    logger.flush();
    // Calls cut off at the deadline are failures an orchestrator should see in the exit status.
    process.exit(drained ? 0 : 1);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  // The conventional "re-read your files" signal; without a listener Node would exit on it.
  process.on('SIGHUP', () => {
    logger.info({ signal: 'SIGHUP' }, 'reloading configuration and secret files');
    configWatcher.reload();
    apiKey.reload();
  });
}

/**
 * A misspelt variable is otherwise ignored without a word. Only a warning: Kubernetes adds
 * `<SERVICE>_PORT...` and `<SERVICE>_SERVICE_...` variables for a Service named `extproc`.
 */
function warnUnknownVariables(logger: ReturnType<typeof createLogger>): void {
  const known = new Set([...Object.keys(ENV_KEYS), CONFIG_FILE_ENV]);
  for (const name of Object.keys(process.env)) {
    if (!name.startsWith('EXTPROC_') || known.has(name) || /^EXTPROC_(PORT|SERVICE_)/.test(name) || name.startsWith('EXTPROC_HEALTHCHECK_')) continue;
    logger.warn({ variable: name }, 'unknown EXTPROC_ environment variable: ignored (see --help for the known ones)');
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`fatal: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
