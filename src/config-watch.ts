// Reloading the configuration file while serving (after ai-gateway's
// internal/filterapi/watcher.go): the whole file is validated, and only a valid one replaces the single
// snapshot reference. Calls keep the snapshot they started with (the server reads `current()` once per
// call), so a reload never changes a request half-way.
import { readFileSync } from 'node:fs';
import { checkConfig, LISTENER_KEYS, type Config } from './config.js';
import { ConfigFileError, configFromValues, parseConfigText } from './config-file.js';
import { watchFile } from './file-watch.js';
import type { Logger } from './log.js';

/**
 * Keys read once when the listeners are bound (src/server.ts, src/main.ts; config.ts SETTING_SCOPES): a
 * new value in the file only takes effect after a restart, so the running value is kept and a warning
 * says so. Everything else is policy, applied by a reload.
 */
export const RESTART_KEYS = LISTENER_KEYS;

export interface ConfigWatcher {
  /** The newest valid snapshot. */
  current(): Config;
  /** Re-reads the file now (SIGHUP). True when the file was valid (applied, or nothing changed). */
  reload(): boolean;
  close(): void;
}

export interface ConfigWatchOptions {
  /** The configuration file; without one there is nothing to reload and `current()` is `initial`. */
  file: string | undefined;
  /** The environment merged over the file on every reload, as at start-up. */
  env: NodeJS.ProcessEnv;
  /** The snapshot the process started with (its listeners are bound with these values). */
  initial: Config;
  logger: Logger;
  metrics?: { configReloaded(ok: boolean): void };
  /** Called after a new snapshot is in place (log level, secret file path, budget size). */
  onReload?(next: Config, previous: Config): void;
  debounceMs?: number;
}

/** Dotted key paths whose values differ between two snapshots (plain data: objects, arrays, scalars). */
export function changedKeys(before: unknown, after: unknown, prefix = ''): string[] {
  const isMap = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);
  if (isMap(before) && isMap(after)) {
    const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
    return [...keys].flatMap((key) => changedKeys(before[key], after[key], prefix ? `${prefix}.${key}` : key));
  }
  return JSON.stringify(before) === JSON.stringify(after) ? [] : [prefix || '(root)'];
}

export function watchConfig(options: ConfigWatchOptions): ConfigWatcher {
  const { file, env, logger, metrics } = options;
  let snapshot = options.initial;
  /** The text last validated, or the error code of the last failed read: repeated events over the same state are skipped. */
  let lastText: string | undefined;
  let lastReadError: string | undefined;
  /** The last attempt was refused: the next valid file is reported even if it changes nothing. */
  let refused = false;
  const refuse = (): false => {
    refused = true;
    metrics?.configReloaded(false);
    return false;
  };

  const attempt = (forced: boolean): boolean => {
    if (!file) {
      logger.info('no configuration file: nothing to reload');
      return true;
    }
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? 'EUNKNOWN';
      if (!forced && code === lastReadError) return false;
      lastText = undefined;
      lastReadError = code;
      logger.error({ file, code }, 'configuration file unreadable: keeping the running configuration');
      return refuse();
    }
    lastReadError = undefined;
    if (!forced && text === lastText) return true;
    lastText = text;

    let next: Config;
    try {
      // An empty file is refused here as at start-up (config-file.ts EMPTY_FILE_PROBLEM).
      next = configFromValues(parseConfigText(text), env, file);
    } catch (error) {
      if (!(error instanceof ConfigFileError)) throw error;
      // Problems name keys, lines and schema rules, never values: the file may sit beside secrets.
      logger.error({ file, problems: error.problems }, 'invalid configuration file: keeping the running configuration');
      return refuse();
    }

    // By value: `tls` is an object, rebuilt by every reload.
    const pinned = RESTART_KEYS.filter((key) => JSON.stringify(next[key]) !== JSON.stringify(snapshot[key]));
    if (pinned.length > 0) {
      logger.warn(
        { file, keys: pinned, restartNeeded: true },
        'listener settings changed: NOT applied, they need a restart; running with the current values',
      );
      // The running listener values with the new file must still be one valid configuration
      // (e.g. streamThresholdBytes below the maxMessageBytes in force).
      const merged = checkConfig({ ...next, ...Object.fromEntries(pinned.map((key) => [key, snapshot[key]])) });
      if (!merged.ok) {
        logger.error({ file, problems: merged.problems }, 'configuration file does not fit the running listener settings: keeping the running configuration');
        return refuse();
      }
      next = merged.config;
    }
    const changed = changedKeys(snapshot, next);
    // Editors and the kubelet fire events that change nothing (the first read after start-up, too).
    if (changed.length === 0 && !forced && !refused) return true;
    refused = false;
    metrics?.configReloaded(true);
    if (changed.length === 0) {
      logger.info({ file }, 'configuration file valid: no change to apply');
      return true;
    }
    const previous = snapshot;
    snapshot = next;
    logger.info({ file, changed }, 'configuration reloaded');
    options.onReload?.(next, previous);
    return true;
  };

  const watch = file
    ? watchFile(file, () => attempt(false), {
        ...(options.debounceMs !== undefined ? { debounceMs: options.debounceMs } : {}),
        onError: (error) => logger.warn({ file, code: error.code }, 'cannot watch the configuration file: reload with SIGHUP'),
      })
    : undefined;

  return {
    current: () => snapshot,
    reload: () => attempt(true),
    close: () => watch?.close(),
  };
}
