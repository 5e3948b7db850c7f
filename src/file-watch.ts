// Noticing that a file was replaced, the ways files really are replaced in production:
// - editors write a temporary file and rename it over the original (a new inode);
// - Kubernetes ConfigMap and Secret volumes hold `name -> ..data/name` with `..data -> ..<timestamp>`,
//   and an update renames a new `..data` symlink into place, never touching `name` itself.
// A watch on the file follows the old inode and goes silent after the first such swap, so the directory
// holding the path is watched instead. Any event there, after a quiet period, asks the owner to re-read:
// owners compare what they read with what they have, so unrelated events in the directory cost one read.
import { watch, type FSWatcher } from 'node:fs';
import { dirname } from 'node:path';

export interface FileWatchOptions {
  /** Quiet time after the last event before re-reading (editors and the kubelet write in several steps). */
  debounceMs?: number;
  /** The watch could not start or broke; changes are then only picked up on an explicit reload. */
  onError?(error: NodeJS.ErrnoException): void;
}

export interface FileWatch {
  close(): void;
}

export const DEFAULT_DEBOUNCE_MS = 200;

export function watchFile(path: string, onChange: () => void, options: FileWatchOptions = {}): FileWatch {
  const debounceMs = options.debounceMs ?? DEFAULT_DEBOUNCE_MS;
  let timer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher | undefined;
  const stop = (): void => {
    clearTimeout(timer);
    watcher?.close();
    watcher = undefined;
  };
  try {
    // Not persistent: a watch alone must not keep a process (a CLI, a test) alive.
    watcher = watch(dirname(path), { persistent: false }, () => {
      clearTimeout(timer);
      timer = setTimeout(onChange, debounceMs);
      timer.unref();
    });
    watcher.on('error', (error: NodeJS.ErrnoException) => {
      stop();
      options.onError?.(error);
    });
  } catch (error) {
    options.onError?.(error as NodeJS.ErrnoException);
  }
  return { close: stop };
}
