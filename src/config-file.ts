// The configuration file: YAML in, one validated frozen snapshot out, merged with the environment
// (env > file > defaults). The environment only sets the flat server keys `loadConfig` maps, so a
// deployment can keep one file for the rewrite rules and still move the listener per pod.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import { checkConfig, ConfigError, ENV_KEYS, fromEnv, type Config } from './config.js';

/** Environment variable naming the configuration file (the `--config` flag wins over it). */
export const CONFIG_FILE_ENV = 'EXTPROC_CONFIG';

/** A configuration that cannot be used, with one line per problem (key path or line:column first). */
export class ConfigFileError extends ConfigError {
  constructor(
    readonly file: string | undefined,
    readonly problems: readonly string[],
  ) {
    super(`invalid configuration${file ? ` in ${file}` : ''}:\n${problems.map((problem) => `  ${problem}`).join('\n')}`);
  }
}

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
  const document = parseDocument(text, { uniqueKeys: true, prettyErrors: false, lineCounter: lines });
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

  let values: unknown;
  try {
    values = document.toJS({ maxAliasCount: 100 });
  } catch (error) {
    // Unresolved or exploding aliases surface only when the document is turned into values.
    throw new ConfigFileError(undefined, [(error as Error).message]);
  }
  // An empty file (or one with only comments) is a valid "all defaults".
  if (values === null || values === undefined) return {};
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
  const envValues = fromEnv(env);
  const checked = checkConfig({ ...fileValues, ...envValues });
  if (checked.ok) return checked.config;
  const variableOf = new Map(Object.entries(ENV_KEYS).filter(([, key]) => key in envValues).map(([name, key]) => [key as string, name]));
  const problems = checked.problems.map((problem) => {
    const key = /^[A-Za-z0-9]+(?=:)/.exec(problem)?.[0];
    const variable = key ? variableOf.get(key) : undefined;
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
