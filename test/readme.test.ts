// What the README names must exist: the metrics it lists are the ones the server registers (and none is
// missing), the npm scripts it tells users to run, the files and folders it points at, the environment
// variables it documents, and the log line it shows in "Verify".
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ENV_KEYS } from '../src/config.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const read = (rel: string) => readFileSync(path.join(ROOT, rel), 'utf8');
const readme = read('README.md');
const section = (title: string) => {
  const start = readme.indexOf(`\n${title}\n`);
  expect(start, title).toBeGreaterThan(-1);
  const next = readme.slice(start + title.length + 2).search(/\n#{1,3} /);
  return readme.slice(start, next === -1 ? undefined : start + title.length + 2 + next);
};

describe('README', () => {
  it('lists exactly the metrics src/metrics.ts registers', () => {
    const registered = [...read('src/metrics.ts').matchAll(/name: '(extproc_[a-z_]+)'/g)].map((m) => m[1]).sort();
    const table = section('### Metrics (`/metrics` on `adminListen`)');
    const listed = [...table.matchAll(/^\| `(extproc_[a-z_]+)`/gm)].map((m) => m[1]).sort();
    expect(listed).toEqual(registered);
  });

  it('every metric name it mentions elsewhere exists', () => {
    const registered = new Set([...read('src/metrics.ts').matchAll(/name: '(extproc_[a-z_]+)'/g)].map((m) => m[1]));
    const mentioned = new Set([...readme.matchAll(/\b(extproc_[a-z_]+?)(?:_bucket)?\b(?!\*)/g)].map((m) => m[1]!));
    const unknown = [...mentioned].filter((name) => !registered.has(name) && !/^extproc_(process|nodejs)_?$/.test(name));
    expect(unknown).toEqual([]);
  });

  it('every npm script it tells users to run exists', () => {
    const scripts = Object.keys((JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts);
    const builtin = new Set(['ci', 'install', 'test', 'start']);
    const used = new Set([...readme.matchAll(/(?:^\s*|`|&& )npm (?:run )?([a-z:]+)/gm)].map((m) => m[1]!));
    expect(used.size).toBeGreaterThan(4);
    expect([...used].filter((name) => !builtin.has(name) && !scripts.includes(name))).toEqual([]);
    for (const name of ['test', 'start', 'demo', 'explain', 'bench']) expect(scripts).toContain(name);
  });

  it('every file and folder of this repository it names exists', () => {
    const named = new Set(
      [...readme.matchAll(/`((?:src|test|tools|envoy|deploy|docs|examples|scripts|bench|proto)\/[\w./-]*|Dockerfile|docker-compose\.yml|BENCHMARKS\.md|LICENSE|CHANGELOG\.md)`/g)].map((m) => m[1]!),
    );
    expect(named.size).toBeGreaterThan(15);
    const missing = [...named].filter((rel) => !rel.includes('*') && !existsSync(path.join(ROOT, rel)));
    expect(missing).toEqual([]);
  });

  it('every environment variable it documents is one the server reads', () => {
    const documented = new Set([...readme.matchAll(/`((?:EXTPROC_[A-Z_]+)|LOG_LEVEL)`/g)].map((m) => m[1]!));
    expect(documented.size).toBeGreaterThan(3);
    const known = new Set([...Object.keys(ENV_KEYS), 'EXTPROC_CONFIG']);
    expect([...documented].filter((name) => !known.has(name))).toEqual([]);
  });

  it('the log line shown in "Verify" is the one the server writes for a rewrite, with the request id', () => {
    const line = /```json\n\s*(\{.*"msg":"request rewritten"\})\n/.exec(section('## Verify'))![1]!;
    const shown = JSON.parse(line) as Record<string, unknown>;
    const server = read('src/server.ts');
    expect(server).toContain("'request rewritten'");
    for (const key of Object.keys(shown).filter((k) => !['level', 'time', 'service', 'msg'].includes(k))) {
      expect(server, key).toMatch(new RegExp(`\\b${key}\\b`));
    }
    expect(shown.requestId).toBeDefined();
    expect(shown.level).toBe('info');
  });

  it('the licence package.json names is in LICENSE, in full, and CHANGELOG.md has the current version', () => {
    const pkg = JSON.parse(read('package.json')) as { license: string; version: string };
    expect(pkg.license).toBe('Apache-2.0');
    const licence = read('LICENSE');
    expect(licence).toMatch(/^\s*Apache License\s+Version 2\.0, January 2004/);
    for (let section = 1; section <= 9; section++) expect(licence).toMatch(new RegExp(`^\\s+${section}\\. [A-Z]`, 'm'));
    expect(licence).toContain('END OF TERMS AND CONDITIONS');
    const changelog = read('CHANGELOG.md');
    expect(changelog).toMatch(/^## Unreleased$/m);
    expect(changelog).toMatch(new RegExp(`^## ${pkg.version.replace(/\./g, '\\.')} - \\d{4}-\\d{2}-\\d{2}$`, 'm'));
    expect(readme).toContain('[LICENSE](LICENSE)');
  });
});
