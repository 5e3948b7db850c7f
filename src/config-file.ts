// The configuration file: YAML in, one validated frozen snapshot out, merged with the environment
// (env > file > defaults). The environment only sets the flat server keys `loadConfig` maps, so a
// deployment can keep one file for the rewrite rules and still move the listener per pod.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { isMap, isScalar, LineCounter, parseDocument, type Scalar } from 'yaml';
import { checkConfig, ConfigError, fromEnv, variableFor, type Config } from './config.js';

/** Environment variable naming the configuration file (the `--config` flag wins over it). */
export const CONFIG_FILE_ENV = 'EXTPROC_CONFIG';

/**
 * A configuration that cannot be used: `problems` has one entry per problem (key path or line:column
 * first); the message puts them on one line, as main.ts prints it.
 */
export class ConfigFileError extends ConfigError {
  constructor(
    readonly file: string | undefined,
    readonly problems: readonly string[],
  ) {
    super(`invalid configuration${file ? ` in ${file}` : ''}: ${problems.join('; ')}`);
  }
}

/**
 * An empty file, or one with only comments, is refused at start-up and on reload alike: while a file is
 * rewritten in place it is empty for a moment, and applying that as "all defaults" would switch every
 * rewrite off. `{}` is how to ask for the defaults.
 */
export const EMPTY_FILE_PROBLEM = 'the file has no settings (empty, or a write in progress?): write {} to use the defaults';

export interface ConfigSources {
  env?: NodeJS.ProcessEnv;
  /** The file given on the command line; when absent, `EXTPROC_CONFIG`; when neither, defaults + env. */
  file?: string;
}

/** The configuration file to use, as an absolute path (so a later `chdir` or a watch sees the same file). */
export function configFilePath({ env = process.env, file }: ConfigSources = {}): string | undefined {
  const chosen = file ?? env[CONFIG_FILE_ENV]?.trim();
  return chosen ? resolve(chosen) : undefined;
}

/**
 * Parses YAML text into plain values. Duplicate keys, several documents, unknown tags and anything else
 * `yaml` flags are errors reported as `line L, column C: …`: a config that means two things is refused.
 */
export function parseConfigText(text: string): Record<string, unknown> {
  const lines = new LineCounter();
  const document = parseDocument(text, { uniqueKeys: true, prettyErrors: false, lineCounter: lines, keepSourceTokens: true });
  const problems = [...document.errors, ...document.warnings].map((error) => {
    const { line, col } = lines.linePos(error.pos[0]);
    let message = error.message;
    if (error.code === 'DUPLICATE_KEY') {
      // The error points at the start of the repeated key: a plain or quoted scalar before its colon.
      const key = /^("(?:[^"\\]|\\.)*"|'[^']*'|[^:,{}[\]\n]+?)\s*:/.exec(text.slice(error.pos[0]))?.[1];
      message = key ? `duplicate key ${key.startsWith('"') || key.startsWith("'") ? key : `"${key}"`}` : 'duplicate key';
    }
    if (error.code === 'MULTIPLE_DOCS') message = 'only one YAML document is allowed (remove the "---" separator)';
    return `line ${line}, column ${col}: ${message}`;
  });
  if (problems.length > 0) throw new ConfigFileError(undefined, problems);

  // socketMode as written: YAML reads `0660` and `660` as decimal numbers and `0o660` as octal, while the
  // environment's EXTPROC_SOCKET_MODE is text; the digits as written mean the same mode in both.
  const mode = isMap(document.contents) ? document.contents.get('socketMode', true) : undefined;
  if (isScalar(mode) && typeof mode.value === 'number' && mode.srcToken && 'source' in mode.srcToken) (mode as Scalar).value = mode.srcToken.source;

  let values: unknown;
  try {
    values = document.toJS({ maxAliasCount: 100 });
  } catch (error) {
    // Unresolved or exploding aliases surface only when the document is turned into values.
    throw new ConfigFileError(undefined, [(error as Error).message]);
  }
  if (values === null || values === undefined) throw new ConfigFileError(undefined, [EMPTY_FILE_PROBLEM]);
  if (typeof values !== 'object' || Array.isArray(values)) {
    throw new ConfigFileError(undefined, ['(root): must be a mapping of keys to values']);
  }
  return values as Record<string, unknown>;
}

/**
 * Validates file values merged with the environment's. Problems caused by an environment variable say
 * so, since the file then looks right to whoever reads it.
 */
export function configFromValues(fileValues: Record<string, unknown>, env: NodeJS.ProcessEnv, file?: string): Config {
  const checked = checkConfig({ ...fileValues, ...fromEnv(env) });
  if (checked.ok) return checked.config;
  const problems = checked.problems.map((problem) => {
    const key = /^[A-Za-z0-9]+(?=:)/.exec(problem)?.[0];
    const variable = key ? variableFor(key, env) : undefined;
    return variable ? `${key} (from ${variable})${problem.slice(key!.length)}` : problem;
  });
  throw new ConfigFileError(file, problems);
}

/** Reads, parses and validates one configuration file with the environment merged over it. */
export function loadConfigFile(file: string, env: NodeJS.ProcessEnv): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigFileError(file, [`cannot read the file (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`]);
  }
  let values: Record<string, unknown>;
  try {
    values = parseConfigText(text);
  } catch (error) {
    if (error instanceof ConfigFileError) throw new ConfigFileError(file, error.problems);
    throw error;
  }
  return configFromValues(values, env, file);
}

/** Defaults, then the configuration file if one is named (flag or `EXTPROC_CONFIG`), then the environment. */
export function loadConfigFrom(sources: ConfigSources = {}): Config {
  const env = sources.env ?? process.env;
  const file = configFilePath({ env, file: sources.file });
  return file ? loadConfigFile(file, env) : configFromValues({}, env);
}
