// The Azure API key from a mounted secret file (`credentials.apiKeyFile`), so the proxy injects it and
// callers never hold it. The file is re-read when it is replaced (Kubernetes Secret rotation, an
// editor), the same way as the configuration file. The value is never logged: only the path and an
// error code are, and a file that cannot be read keeps the last good key in use.
import { readFileSync } from 'node:fs';
import { watchFile, type FileWatchOptions } from './file-watch.js';
import type { Logger } from './log.js';

export interface SecretFile {
  readonly path: string;
  /** The trimmed file content; undefined until the file has been read once with a non-empty value. */
  value(): string | undefined;
  /** Re-reads the file now (SIGHUP). */
  reload(): void;
  close(): void;
}

/** One read of a secret file: its trimmed content, or why there is none (an errno code or `EMPTY`), never both. */
export function readSecretFile(path: string): { value: string } | { problem: string } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8').trim();
  } catch (error) {
    return { problem: (error as NodeJS.ErrnoException).code ?? 'EUNKNOWN' };
  }
  return text === '' ? { problem: 'EMPTY' } : { value: text };
}

export function createSecretFile(path: string, logger: Logger, options: Pick<FileWatchOptions, 'debounceMs'> = {}): SecretFile {
  let current: string | undefined;
  /** The last problem logged, so repeated events over the same state log once. */
  let problem: string | undefined;

  const read = (): void => {
    const result = readSecretFile(path);
    if ('problem' in result) {
      if (problem !== result.problem) {
        logger.error({ path, code: result.problem, hasValue: current !== undefined }, 'secret file unreadable or empty: keeping the last value read');
      }
      problem = result.problem;
      return;
    }
    if (problem !== undefined) logger.info({ path }, 'secret file readable again');
    else if (current !== undefined && result.value !== current) logger.info({ path }, 'secret file changed: new value in use');
    problem = undefined;
    current = result.value;
  };

  read();
  const watch = watchFile(path, read, {
    ...options,
    onError: (error) => logger.warn({ path, code: error.code }, 'cannot watch the secret file: reload with SIGHUP'),
  });
  return { path, value: () => current, reload: read, close: () => watch.close() };
}

/**
 * The secret file a configuration names, following `credentials.apiKeyFile` across reloads: `use` opens
 * the new path (closing the old one) when it changes. `value` is what the request path calls.
 */
export interface SecretFileSlot {
  use(path: string | undefined): void;
  value(): string | undefined;
  reload(): void;
  close(): void;
}

export function createSecretFileSlot(logger: Logger, options: Pick<FileWatchOptions, 'debounceMs'> = {}): SecretFileSlot {
  let file: SecretFile | undefined;
  return {
    use(path) {
      if (file?.path === path) return;
      file?.close();
      file = path ? createSecretFile(path, logger, options) : undefined;
    },
    value: () => file?.value(),
    reload: () => file?.reload(),
    close: () => file?.close(),
  };
}
