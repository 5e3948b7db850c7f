// The configuration file: YAML -> validated frozen snapshot, merged with the environment (env > file >
// defaults), with messages that point at the bad key or line.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { z } from 'zod';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { buildConfig, ConfigError, ConfigSchema } from '../src/config.js';
import { ConfigFileError, configFilePath, loadConfigFrom, parseConfigText } from '../src/config-file.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'extproc-config-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function file(text: string, name = 'config.yaml'): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

/** The problems a load reports (fails the test if it loads). */
function problemsOf(load: () => unknown): readonly string[] {
  try {
    load();
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigFileError);
    expect(error).toBeInstanceOf(ConfigError); // main.ts and explain exit 2 on ConfigError
    return (error as ConfigFileError).problems;
  }
  throw new Error('expected the configuration to be refused');
}

describe('loadConfigFrom', () => {
  it('needs no file: defaults, with the environment applied', () => {
    expect(loadConfigFrom({ env: {} })).toEqual(buildConfig({}));
    expect(loadConfigFrom({ env: { EXTPROC_LISTEN: '127.0.0.1:7000' } }).listen).toBe('127.0.0.1:7000');
  });

  it('merges env over file over defaults', () => {
    const path = file(
      [
        'listen: 0.0.0.0:6000',
        'logLevel: debug',
        'streamThresholdBytes: 4096',
        'rewrite:',
        '  deploymentlessRoutes: true',
        '  deployments:',
        '    gpt-image-1: img-prod',
      ].join('\n'),
    );
    const config = loadConfigFrom({ env: { EXTPROC_LISTEN: '127.0.0.1:7000', LOG_LEVEL: '' }, file: path });
    expect(config.listen).toBe('127.0.0.1:7000'); // env wins
    expect(config.logLevel).toBe('debug'); // an empty variable is ignored: the file's value stays
    expect(config.streamThresholdBytes).toBe(4096); // file over default
    expect(config.maxMessageBytes).toBe(buildConfig({}).maxMessageBytes); // default
    expect(config.rewrite.deploymentlessRoutes).toBe(true);
    expect(config.rewrite.deployments).toEqual({ 'gpt-image-1': 'img-prod' });
    expect(config.rewrite.openaiPaths.prefix).toBe('/v1'); // nested defaults fill in around the file's keys
  });

  it('takes the file from EXTPROC_CONFIG, and the explicit file over it', () => {
    const fromEnv = file('logLevel: warn\n', 'env.yaml');
    const fromFlag = file('logLevel: error\n', 'flag.yaml');
    expect(loadConfigFrom({ env: { EXTPROC_CONFIG: fromEnv } }).logLevel).toBe('warn');
    expect(loadConfigFrom({ env: { EXTPROC_CONFIG: fromEnv }, file: fromFlag }).logLevel).toBe('error');
    expect(configFilePath({ env: { EXTPROC_CONFIG: ' ' } })).toBeUndefined();
    expect(configFilePath({ env: {}, file: 'relative.yaml' })).toBe(join(process.cwd(), 'relative.yaml'));
  });

  it('returns a deeply frozen snapshot', () => {
    const config = loadConfigFrom({ env: {}, file: file('rewrite:\n  v1:\n    stripProviderPrefixes: [azure/]\n') });
    expect(Object.isFrozen(config.rewrite.v1.stripProviderPrefixes)).toBe(true);
    expect(() => (config.rewrite.v1.stripProviderPrefixes as string[]).push('x')).toThrow();
  });

  it('reads YAML 1.2 octal for socketMode', () => {
    expect(loadConfigFrom({ env: {}, file: file('socketMode: 0o660\n') }).socketMode).toBe(0o660);
  });

  it('treats an empty file (or only comments) as all defaults', () => {
    expect(loadConfigFrom({ env: {}, file: file('') })).toEqual(buildConfig({}));
    expect(loadConfigFrom({ env: {}, file: file('# nothing yet\n') })).toEqual(buildConfig({}));
  });
});

describe('configuration problems', () => {
  it('names the full key path of an unknown key, and the file', () => {
    const path = file('rewrite:\n  openaiPaths:\n    enabled: false\n    prefx: /v1\n');
    expect(problemsOf(() => loadConfigFrom({ env: {}, file: path }))).toEqual(['rewrite.openaiPaths.prefx: unknown key']);
    expect(() => loadConfigFrom({ env: {}, file: path })).toThrow(`invalid configuration in ${path}:\n  rewrite.openaiPaths.prefx: unknown key`);
  });

  it('names the key path of a bad value, every problem at once', () => {
    const path = file('rewrite:\n  openaiPaths:\n    prefix: v1/\n  fields:\n    extraBody: flatten\nlimits:\n  overLimit: drop\n');
    const problems = problemsOf(() => loadConfigFrom({ env: {}, file: path }));
    expect(problems).toHaveLength(3);
    expect(problems[0]).toMatch(/^limits\.overLimit: /);
    expect(problems).toContainEqual(expect.stringMatching(/^rewrite\.openaiPaths\.prefix: must be empty or start with "\/"/));
    expect(problems).toContainEqual(expect.stringMatching(/^rewrite\.fields\.extraBody: /));
  });

  it('reports cross-key rules at the key that needs the other', () => {
    const path = file('rewrite:\n  openaiPaths:\n    enabled: true\n');
    expect(problemsOf(() => loadConfigFrom({ env: {}, file: path }))).toEqual([
      'rewrite.openaiPaths.enabled: needs apiVersion.default (Azure deployment routes require api-version)',
    ]);
  });

  it('says when the bad value comes from an environment variable', () => {
    const path = file('maxMessageBytes: 1024\n');
    const problems = problemsOf(() => loadConfigFrom({ env: { EXTPROC_MAX_MESSAGE_BYTES: 'lots' }, file: path }));
    expect(problems).toEqual([expect.stringMatching(/^maxMessageBytes \(from EXTPROC_MAX_MESSAGE_BYTES\): /)]);
  });

  it('gives the line and column of a YAML syntax error', () => {
    const path = file('logLevel: info\nrewrite:\n  deployments: {a: b\nlisten: x\n');
    const problems = problemsOf(() => loadConfigFrom({ env: {}, file: path }));
    expect(problems[0]).toMatch(/^line [34], column \d+: /);
    expect(problemsOf(() => parseConfigText('a: "unterminated\n'))[0]).toMatch(/^line 2, column 1: Missing closing "quote/);
    expect(problemsOf(() => parseConfigText('listen: x\n\tlogLevel: info\n'))[0]).toMatch(/^line 2, column 1: /);
  });

  it('refuses duplicate keys, naming the key and its line', () => {
    const path = file('rewrite:\n  deploymentlessRoutes: true\n  deploymentlessRoutes: false\n');
    expect(problemsOf(() => loadConfigFrom({ env: {}, file: path }))).toEqual(['line 3, column 3: duplicate key "deploymentlessRoutes"']);
  });

  it('refuses several documents, a root that is not a mapping, and unresolved aliases', () => {
    expect(problemsOf(() => parseConfigText('logLevel: info\n---\nlogLevel: debug\n'))[0]).toMatch(/only one YAML document/);
    expect(problemsOf(() => parseConfigText('- listen: x\n'))).toEqual(['(root): must be a mapping of keys to values']);
    expect(problemsOf(() => parseConfigText('listen: *nowhere\n'))[0]).toMatch(/alias/i);
  });

  it('reports an unreadable file with its error code', () => {
    const path = join(dir, 'missing.yaml');
    expect(problemsOf(() => loadConfigFrom({ env: {}, file: path }))).toEqual(['cannot read the file (ENOENT)']);
  });
});

describe('examples/config.yaml', () => {
  const text = readFileSync(new URL('../examples/config.yaml', import.meta.url), 'utf8');

  /** Every leaf key path of the schema (records such as `rewrite.deployments` count as one). */
  function schemaPaths(): string[] {
    const walk = (schema: { properties?: Record<string, unknown> }, prefix: string[]): string[] =>
      Object.entries(schema.properties ?? {}).flatMap(([key, child]) => {
        const nested = walk(child as { properties?: Record<string, unknown> }, [...prefix, key]);
        return nested.length > 0 ? nested : [[...prefix, key].join('.')];
      });
    return walk(z.toJSONSchema(ConfigSchema, { io: 'input', unrepresentable: 'any' }) as never, []);
  }

  it('is the defaults as written', () => {
    expect(loadConfigFrom({ env: {}, file: join(process.cwd(), 'examples/config.yaml') })).toEqual(buildConfig({}));
  });

  it('shows every option, the commented-out ones with valid values', () => {
    const paths = schemaPaths();
    const leafNames = new Set(paths.flatMap((path) => path.split('.')));
    // Uncomment `# key: value` lines whose key is an option or section name (prose comments are left alone).
    const uncommented = text.replace(/^(\s*)# ([A-Za-z]+):/gm, (line, indent: string, key: string) => (leafNames.has(key) ? `${indent}${key}:` : line));
    const values = parse(uncommented) as Record<string, unknown>;
    const at = (path: string): unknown => path.split('.').reduce<unknown>((node, key) => (node as Record<string, unknown> | undefined)?.[key], values);
    expect(paths.filter((path) => at(path) === undefined)).toEqual([]);
    // The same file with every optional setting switched on is a valid configuration too.
    expect(() => loadConfigFrom({ env: {}, file: file(uncommented) })).not.toThrow();
  });
});

describe('cross-key rules', () => {
  it('refuses a stream threshold that would not fit one ext_proc message', () => {
    expect(() => buildConfig({ streamThresholdBytes: 64 * 1024 * 1024 })).toThrow(/streamThresholdBytes: must be below maxMessageBytes/);
    expect(buildConfig({ streamThresholdBytes: 32 * 1024 * 1024 }).streamThresholdBytes).toBe(32 * 1024 * 1024);
  });
});
