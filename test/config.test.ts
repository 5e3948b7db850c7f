// The configuration file: YAML -> validated frozen snapshot, merged with the environment (env > file >
// defaults), with messages that point at the bad key or line.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { z } from 'zod';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { buildConfig, ConfigError, ConfigSchema, LISTENER_KEYS, MAX_DEPLOYMENT_NAME_LENGTH, SETTING_SCOPES } from '../src/config.js';
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

  it('refuses an empty file (or only comments), as a reload does; {} means the defaults', () => {
    expect(problemsOf(() => loadConfigFrom({ env: {}, file: file('') }))).toEqual([expect.stringMatching(/no settings.*write \{\}/)]);
    expect(problemsOf(() => loadConfigFrom({ env: {}, file: file('# nothing yet\n') }))).toEqual([expect.stringMatching(/no settings/)]);
    expect(loadConfigFrom({ env: {}, file: file('{}\n') })).toEqual(buildConfig({}));
  });
});

describe('configuration problems', () => {
  it('names the full key path of an unknown key, and the file', () => {
    const path = file('rewrite:\n  openaiPaths:\n    enabled: false\n    prefx: /v1\n');
    expect(problemsOf(() => loadConfigFrom({ env: {}, file: path }))).toEqual(['rewrite.openaiPaths.prefx: unknown key (did you mean rewrite.openaiPaths.prefix?)']);
    expect(() => loadConfigFrom({ env: {}, file: path })).toThrow(`invalid configuration in ${path}: rewrite.openaiPaths.prefx: unknown key`);
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
      'rewrite.openaiPaths.enabled: needs rewrite.apiVersion.default (Azure deployment routes require api-version)',
    ]);
    expect(problemsOf(() => loadConfigFrom({ env: {}, file: file('rewrite:\n  apiVersion:\n    force: true\n') }))).toEqual([
      'rewrite.apiVersion.force: needs rewrite.apiVersion.default',
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

describe('value formats (the same in the file and the environment)', () => {
  const fromFile = (yaml: string) => loadConfigFrom({ env: {}, file: file(yaml) });

  it.each([
    ['1MiB', 1024 * 1024],
    ['512KiB', 512 * 1024],
    ['64MiB', 64 * 1024 * 1024],
    ['1GiB', 1024 ** 3],
    ['64 mib', 64 * 1024 * 1024],
    ['1048576', 1048576],
  ])('size %s', (written, bytes) => {
    expect(fromFile(`limits:\n  globalHeldBytes: ${written}\n`).limits.globalHeldBytes).toBe(bytes);
    expect(fromFile(`maxMessageBytes: "${written}"\nstreamThresholdBytes: 1KiB\n`).maxMessageBytes).toBe(bytes);
    expect(loadConfigFrom({ env: { EXTPROC_MAX_MESSAGE_BYTES: written, EXTPROC_STREAM_THRESHOLD_BYTES: '1KiB' } }).maxMessageBytes).toBe(bytes);
  });

  it.each(['64MB', '1.5MiB', '0', '-1', 'lots', '12 parsecs'])('refuses the size %s, saying what is accepted', (written) => {
    const problems = problemsOf(() => fromFile(`limits:\n  maxBodyBytes: "${written}"\n`));
    expect(problems).toEqual([expect.stringMatching(/^limits\.maxBodyBytes: must be .*(KiB, MiB or GiB|above 0)/)]);
    expect(problemsOf(() => loadConfigFrom({ env: { EXTPROC_STREAM_THRESHOLD_BYTES: written } }))[0]).toMatch(/^streamThresholdBytes \(from EXTPROC_STREAM_THRESHOLD_BYTES\): must be/);
  });

  it('suggests the binary unit for a decimal one', () => {
    expect(problemsOf(() => fromFile('maxMessageBytes: 64MB\n'))[0]).toContain('write 64MiB');
  });

  it.each(['0o660', '0660', '660', '"660"', '"0o660"'])('socketMode %s in the file is 0o660', (written) => {
    expect(fromFile(`socketMode: ${written}\n`).socketMode).toBe(0o660);
  });

  it.each(['0o660', '0660', '660', '0O660'])('EXTPROC_SOCKET_MODE=%s is 0o660', (written) => {
    expect(loadConfigFrom({ env: { EXTPROC_SOCKET_MODE: written } }).socketMode).toBe(0o660);
  });

  it.each(['0o000', '0o060', '999', 'rw-rw----', '0x1b0', '06600'])('refuses socketMode %s instead of making an unusable socket', (written) => {
    expect(problemsOf(() => loadConfigFrom({ env: { EXTPROC_SOCKET_MODE: written } }))).toEqual([expect.stringMatching(/^socketMode \(from EXTPROC_SOCKET_MODE\): /)]);
    expect(problemsOf(() => fromFile(`socketMode: "${written}"\n`))).toEqual([expect.stringMatching(/^socketMode: /)]);
  });

  it('reads LOG_LEVEL in any letter case', () => {
    expect(loadConfigFrom({ env: { LOG_LEVEL: 'DEBUG' } }).logLevel).toBe('debug');
    expect(fromFile('logLevel: Warn\n').logLevel).toBe('warn');
    expect(problemsOf(() => loadConfigFrom({ env: { LOG_LEVEL: 'verbose' } }))[0]).toMatch(/^logLevel \(from LOG_LEVEL\): /);
  });
});

describe('listener addresses', () => {
  it.each(['0.0.0.0:50051', '127.0.0.1:1', '[::]:50051', '[::1]:65535', 'localhost:50051', 'extproc.default.svc:50051', 'unix:/var/run/extproc/extproc.sock', '127.0.0.1:0'])(
    'accepts %s',
    (listen) => {
      expect(loadConfigFrom({ env: { EXTPROC_LISTEN: listen, EXTPROC_HEALTH_LISTEN: listen } }).listen).toBe(listen);
    },
  );

  it.each([
    ['garbage', /no port/],
    [':50061', /no host: write 0\.0\.0\.0:50061/],
    ['127.0.0.1:99999', /port must be a number from 1 to 65535/],
    ['127.0.0.1:http', /port must be a number/],
    ['localhost', /no port/],
    ['unix:', /must be absolute/],
    ['unix:relative.sock', /must be absolute/],
    ['a b:1', /not a host name/],
    ['dns:///x:1', /must be host:port/],
  ])('refuses EXTPROC_LISTEN=%s naming the variable and the expected form', (listen, reason) => {
    const problems = problemsOf(() => loadConfigFrom({ env: { EXTPROC_LISTEN: listen } }));
    expect(problems).toEqual([expect.stringMatching(/^listen \(from EXTPROC_LISTEN\): must be host:port \(e\.g\. 0\.0\.0\.0:50051, port 1-65535\) or unix:\/absolute\/path/)]);
    expect(problems[0]).toMatch(reason);
  });

  it('checks healthListen and adminListen too; the admin listener is TCP only', () => {
    expect(problemsOf(() => loadConfigFrom({ env: { EXTPROC_ADMIN_LISTEN: 'garbage' } }))).toEqual([expect.stringMatching(/^adminListen \(from EXTPROC_ADMIN_LISTEN\): must be host:port/)]);
    expect(problemsOf(() => loadConfigFrom({ env: { EXTPROC_ADMIN_LISTEN: 'unix:/tmp/a.sock' } }))[0]).toMatch(/speak TCP/);
    expect(problemsOf(() => loadConfigFrom({ env: {}, file: file('healthListen: 50052\n') }))).toEqual([expect.stringMatching(/^healthListen: must be host:port/)]);
  });
});

describe('unknown keys', () => {
  it.each([
    ['logLevl: info\n', 'logLevl: unknown key (did you mean logLevel?)'],
    ['LogLevel: info\n', 'LogLevel: unknown key (did you mean logLevel?)'],
    ['maxBodyBytes: 1MiB\n', 'maxBodyBytes: unknown key (did you mean limits.maxBodyBytes?)'],
    ['tls:\n  certFile: a\n  keyFile: b\n  clientCAFile: c\n', 'tls.clientCAFile: unknown key (did you mean tls.clientCaFile?)'],
    ['rewrite:\n  deployment: {}\n', 'rewrite.deployment: unknown key (did you mean rewrite.deployments?)'],
    ['zzz: 1\n', 'zzz: unknown key'],
  ])('%j: %s', (yaml, problem) => {
    expect(problemsOf(() => loadConfigFrom({ env: {}, file: file(yaml) }))).toEqual([problem]);
  });
});

describe('limits that must agree', () => {
  it('refuses a stream threshold above limits.maxBodyBytes', () => {
    expect(() => buildConfig({ streamThresholdBytes: '2MiB', limits: { maxBodyBytes: '1MiB' } })).toThrow(
      /streamThresholdBytes: must be at most limits\.maxBodyBytes/,
    );
    expect(buildConfig({ streamThresholdBytes: '1MiB', limits: { maxBodyBytes: '1MiB' } }).streamThresholdBytes).toBe(1024 * 1024);
  });

  it(`limits deployment names to MAX_DEPLOYMENT_NAME_LENGTH (${MAX_DEPLOYMENT_NAME_LENGTH}) characters`, () => {
    const name = (length: number) => 'd'.repeat(length);
    expect(buildConfig({ rewrite: { deployments: { a: name(MAX_DEPLOYMENT_NAME_LENGTH) } } }).rewrite.deployments.a).toHaveLength(64);
    expect(() => buildConfig({ rewrite: { deployments: { a: name(MAX_DEPLOYMENT_NAME_LENGTH + 1) } } })).toThrow(/rewrite\.deployments\.a: /);
  });
});

describe('listener and policy settings', () => {
  it('classifies every key; the listener ones are those bound once', () => {
    expect(Object.keys(SETTING_SCOPES).sort()).toEqual(Object.keys(buildConfig({ tls: { certFile: 'a', keyFile: 'b' }, socketMode: 0o660, healthListen: 'x:1', adminListen: 'x:2', metadataNamespace: 'n' })).sort());
    expect([...LISTENER_KEYS].sort()).toEqual(['adminListen', 'healthListen', 'http2StreamResetBurst', 'http2StreamResetRate', 'listen', 'maxMessageBytes', 'socketMode', 'tls']);
  });
});
