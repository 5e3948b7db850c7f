#!/usr/bin/env node
// Entry point: `--config file` / EXTPROC_CONFIG + env -> config -> server; the file and the API key file
// reload on change and on SIGHUP; SIGTERM/SIGINT drain then exit.
import { parseArgs } from 'node:util';
import { healthChecker, startAdmin } from './admin.js';
import { ConfigError, type Config } from './config.js';
import { configFilePath, loadConfigFrom } from './config-file.js';
import { watchConfig } from './config-watch.js';
import { createLogger } from './log.js';
import { createMetrics } from './metrics.js';
import { createApiKeys } from './credentials.js';
import { startServer } from './server.js';

const USAGE = 'usage: azure-image-extproc [--config config.yaml]   (or EXTPROC_CONFIG=config.yaml; env overrides the file)';

async function main(): Promise<void> {
  let file: string | undefined;
  let config: Config;
  try {
    const { values } = parseArgs({ options: { config: { type: 'string' } }, strict: true, allowPositionals: false });
    file = configFilePath({ file: values.config });
    config = loadConfigFrom({ file });
  } catch (error) {
    const badArgument = (error as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS');
    if (error instanceof ConfigError || badArgument) {
      process.stderr.write(`${(error as Error).message}\n${badArgument ? `${USAGE}\n` : ''}`);
      process.exit(2);
    }
    throw error;
  }
  const logger = createLogger(config.logLevel);
  const metrics = createMetrics();
  const apiKey = createApiKeys(logger);
  apiKey.use(config.credentials);
  const configWatcher = watchConfig({
    file,
    env: process.env,
    initial: config,
    logger,
    metrics,
    onReload(next) {
      logger.level = next.logLevel;
      apiKey.use(next.credentials);
    },
  });
  const server = await startServer({
    config: () => configWatcher.current(),
    logger,
    observer: metrics.observer,
    apiKey: (pathname?: string) => apiKey.value(pathname ?? '/'),
  });
  metrics.watch(server);
  // /readyz reads the grpc.health.v1 state that setServing flips, so both probes agree (STYLE lesson 9).
  const extProcStatus = healthChecker(server.health);
  const admin = config.adminListen
    ? await startAdmin({
        listen: config.adminListen,
        registry: metrics.registry,
        isReady: () => extProcStatus() === 'SERVING',
        isLive: () => true,
        logger,
      })
    : undefined;
  logger.info(
    { listen: server.addresses.listen, health: server.addresses.health, admin: admin?.address, configFile: file, node: process.versions.node },
    'ready',
  );

  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    // npm forwards the terminal's SIGINT to us, so one Ctrl-C can arrive twice: repeats are ignored.
    if (stopping) return;
    stopping = true;
    // Orchestrators stop with SIGTERM and keep routing here for a while; Ctrl-C on a local run does not.
    const drainDelayMs = signal === 'SIGTERM' ? configWatcher.current().drainDelayMs : 0;
    logger.info({ signal, activeCalls: server.activeCalls(), drainDelayMs }, 'draining');
    server.setServing(false);
    await new Promise((resolve) => setTimeout(resolve, drainDelayMs));
    configWatcher.close();
    const drained = await server.shutdown(configWatcher.current().shutdownDeadlineMs);
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

main().catch((error: unknown) => {
  process.stderr.write(`fatal: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
