// Which Azure key a request gets when the server injects keys (`credentials.apiKeyFile`, and
// `credentials.apiKeyFiles` for several resources behind one Envoy: docs/deploy-multi-resource.md).
//
// Envoy picks the resource from the request path (a prefix the proxy's api_base adds, or a deployment
// name), with routes whose image regexes ignore case. The server sees the same path Envoy matched (the
// route's prefix rewrite happens later, in the router), so it picks the key with the same prefixes: the
// longest one the raw path starts with, ASCII case ignored, no percent-decoding (a prefix Envoy cannot see
// is not one the server sees). No match: `apiKeyFile`, the default resource's key.
import { createSecretFile, type SecretFile } from './secrets.js';
import type { FileWatchOptions } from './file-watch.js';
import type { Logger } from './log.js';

export interface KeyFileSettings {
  readonly apiKeyFile?: string | undefined;
  /** Path prefix (starting and ending with `/`) -> key file of the resource that prefix routes to. */
  readonly apiKeyFiles?: Readonly<Record<string, string>> | undefined;
}

/** Whether the server injects a key into any request with these settings. */
export function injectsKeys(settings: KeyFileSettings): boolean {
  return settings.apiKeyFile !== undefined || Object.keys(settings.apiKeyFiles ?? {}).length > 0;
}

/** ASCII-only lower case: a prefix and a path compare character by character, lengths unchanged. */
const asciiLower = (text: string): string => text.replace(/[A-Z]/g, (c) => String.fromCharCode(c.charCodeAt(0) + 32));

const sortedPrefixes = new WeakMap<object, ReadonlyArray<readonly [string, string]>>();

/** The prefixes, lower-cased, longest first (computed once per configuration snapshot). */
function prefixesOf(files: Readonly<Record<string, string>>): ReadonlyArray<readonly [string, string]> {
  let sorted = sortedPrefixes.get(files);
  if (!sorted) {
    sorted = Object.entries(files)
      .map(([prefix, file]) => [asciiLower(prefix), file] as const)
      .sort((a, b) => b[0].length - a[0].length);
    sortedPrefixes.set(files, sorted);
  }
  return sorted;
}

/** The key file for a request's path (as Envoy sent it, query included or not), or undefined for none. */
export function keyFileFor(settings: KeyFileSettings, path: string): string | undefined {
  if (settings.apiKeyFiles) {
    const lower = asciiLower(path);
    for (const [prefix, file] of prefixesOf(settings.apiKeyFiles)) if (lower.startsWith(prefix)) return file;
  }
  return settings.apiKeyFile;
}

/** Every configured key file, watched; follows configuration reloads. */
export interface ApiKeys {
  /** Opens the files these settings name and closes those they no longer name. */
  use(settings: KeyFileSettings): void;
  /** The key for a request path; undefined when none is configured for it or its file was never readable. */
  value(path: string): string | undefined;
  /** Re-reads every file now (SIGHUP). */
  reload(): void;
  close(): void;
}

export function createApiKeys(logger: Logger, options: Pick<FileWatchOptions, 'debounceMs'> = {}): ApiKeys {
  let settings: KeyFileSettings = {};
  const files = new Map<string, SecretFile>();
  return {
    use(next) {
      settings = next;
      const wanted = new Set([...(next.apiKeyFile ? [next.apiKeyFile] : []), ...Object.values(next.apiKeyFiles ?? {})]);
      for (const [path, file] of files) {
        if (!wanted.has(path)) {
          file.close();
          files.delete(path);
        }
      }
      for (const path of wanted) if (!files.has(path)) files.set(path, createSecretFile(path, logger, options));
    },
    value(path) {
      const file = keyFileFor(settings, path);
      return file === undefined ? undefined : files.get(file)?.value();
    },
    reload: () => files.forEach((file) => file.reload()),
    close() {
      files.forEach((file) => file.close());
      files.clear();
    },
  };
}
