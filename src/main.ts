#!/usr/bin/env node
// Entry point: env -> config -> server; SIGTERM/SIGINT drain then exit.
import { healthChecker, startAdmin } from './admin.js';
import { ConfigError, loadConfig } from './config.js';
import { createLogger } from './log.js';
import { createMetrics } from './metrics.js';
import { startServer } from './server.js';

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
  const metrics = createMetrics();
  const server = await startServer({ config: () => config, logger, observer: metrics.observer });
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
    { listen: server.addresses.listen, health: server.addresses.health, admin: admin?.address, node: process.versions.node },
    'ready',
  );

  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    // npm forwards the terminal's SIGINT to us, so one Ctrl-C can arrive twice: repeats are ignored.
    if (stopping) return;
    stopping = true;
    // Orchestrators stop with SIGTERM and keep routing here for a while; Ctrl-C on a local run does not.
    const drainDelayMs = signal === 'SIGTERM' ? config.drainDelayMs : 0;
    logger.info({ signal, activeCalls: server.activeCalls(), drainDelayMs }, 'draining');
    server.setServing(false);
    await new Promise((resolve) => setTimeout(resolve, drainDelayMs));
    const drained = await server.shutdown(config.shutdownDeadlineMs);
    // Last, so /metrics and /readyz (503) stay scrapeable while the calls drain.
    await admin?.close();
    logger.info({ drained }, 'stopped');
    logger.flush();
    // Calls cut off at the deadline are failures an orchestrator should see in the exit status.
    process.exit(drained ? 0 : 1);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

main().catch((error: unknown) => {
  process.stderr.write(`fatal: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
