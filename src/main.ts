#!/usr/bin/env node
// Entry point: env -> config -> server; SIGTERM/SIGINT drain then exit.
import { ConfigError, loadConfig } from './config.js';
import { createLogger } from './log.js';
import { startServer } from './server.js';

const DRAIN_DELAY_MS = Number(process.env.EXTPROC_DRAIN_DELAY_MS ?? 0);
const SHUTDOWN_DEADLINE_MS = Number(process.env.EXTPROC_SHUTDOWN_DEADLINE_MS ?? 20_000);

async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }
  const logger = createLogger(config.logLevel);
  const server = await startServer({ config: () => config, logger });
  logger.info({ listen: server.addresses.listen, health: server.addresses.health, node: process.versions.node }, 'ready');

  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal, activeCalls: server.activeCalls() }, 'draining');
    server.setServing(false);
    await new Promise((resolve) => setTimeout(resolve, DRAIN_DELAY_MS));
    await server.shutdown(SHUTDOWN_DEADLINE_MS);
    logger.info('stopped');
    logger.flush();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

main().catch((error: unknown) => {
  process.stderr.write(`fatal: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
