// Every reference a user of this repository meets must resolve inside it: relative markdown links and their
// #anchors, and every `docs/...` path (with its #anchor) named in source comments, configs and manifests.
// Notes that only the project's authors had (the shared research notes, their section and pitfall numbers,
// the style guide's lesson numbers) must not be cited at all: the facts live in docs/ now.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '..');
const SELF = 'test/references.test.ts';
const SKIP_DIRS = new Set(['node_modules', '.git', 'dist', 'coverage']);
const TEXT = /\.(ts|js|mjs|md|ya?ml|json|proto|sh|txt|toml)$|^(Dockerfile|run|\.dockerignore)$/;

/** Repository-relative paths of the text files under `entries` (files or directories), working tree as is. */
function textFiles(entries: readonly string[]): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    const abs = path.join(ROOT, rel);
    let stat;
    try {
      stat = statSync(abs);
    } catch {
      return;
    }
    if (stat.isDirectory()) {
      for (const name of readdirSync(abs)) if (!SKIP_DIRS.has(name)) walk(path.posix.join(rel, name));
    } else if (TEXT.test(path.basename(rel)) && rel !== SELF && !rel.endsWith('package-lock.json')) {
      out.push(rel);
    }
  };
  for (const entry of entries) walk(entry);
  return out;
}

const read = (rel: string) => readFileSync(path.join(ROOT, rel), 'utf8');

// What ships or what a user reads: the server, its configs and manifests, the docs.
const PRODUCT = [
  'src', 'proto', 'envoy', 'deploy', 'docs', 'examples', 'tools', 'scripts', 'bench', '.ci',
  'README.md', 'BENCHMARKS.md', 'CHANGELOG.md', 'Dockerfile', 'docker-compose.yml', 'package.json',
];
// Tests are read by contributors: same rule.
const ALL = [...PRODUCT, 'test'];

/** Citations of documents that are not in this repository. RFC section numbers (public) are fine. */
const FOREIGN_CITATIONS: Array<[RegExp, string]> = [
  [/ENVOY-EXTPROC|AZURE-IMAGES/, 'the shared research notes'],
  [/\.\.\/shared|\/work\/shared|shared\/reference/, 'a path outside the repository'],
  [/\bSTYLE(\.md)? lessons?\b/, 'the style guide (write the idea inline)'],
  [/\breference (§|P\d)/, 'a section or pitfall of the shared notes'],
  [/(?<!RFC \d{3,5},? )§ ?\d/, 'a section number of the shared notes'],
  [/\bP(?:[1-9]|1\d|2[0-5])\b/, 'a pitfall number of the shared notes'],
];

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to '-', duplicates numbered. */
export function anchorsOf(markdown: string): Set<string> {
  const anchors = new Set<string>();
  const seen = new Map<string, number>();
  for (const line of stripFences(markdown).split('\n')) {
    const heading = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (heading) {
      const text = heading[1]!.replace(/\[([^\]]*)\]\([^)]*\)/g, '$1');
      const base = text.toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-');
      const n = seen.get(base) ?? 0;
      seen.set(base, n + 1);
      anchors.add(n === 0 ? base : `${base}-${n}`);
    }
    for (const explicit of line.matchAll(/<a\s+(?:id|name)="([^"]+)"/g)) anchors.add(explicit[1]!);
  }
  return anchors;
}

/** Markdown without fenced code blocks (a `#` line there is not a heading). */
function stripFences(markdown: string): string {
  return markdown.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, '');
}

/** Markdown without code blocks and inline code spans (links there are not links). */
function stripCode(markdown: string): string {
  return stripFences(markdown).replace(/`[^`\n]*`/g, '');
}

/** Why `target` (relative to the file `from`, optionally with #anchor) does not resolve, or undefined. */
function problemWith(from: string, target: string): string | undefined {
  const [file = '', anchor] = target.split('#', 2);
  const resolved = file === '' ? from : path.posix.normalize(path.posix.join(path.posix.dirname(from), file));
  if (resolved.startsWith('..')) return `${target} leaves the repository`;
  let stat;
  try {
    stat = statSync(path.join(ROOT, resolved));
  } catch {
    return `${target}: no such file (${resolved})`;
  }
  if (anchor === undefined || anchor === '') return undefined;
  if (!stat.isFile() || !resolved.endsWith('.md')) return `${target}: anchor on a file that is not markdown`;
  return anchorsOf(read(resolved)).has(anchor) ? undefined : `${target}: no heading with anchor #${anchor} in ${resolved}`;
}

describe('no citations of documents outside the repository', () => {
  // .ci/run describes the machine CI runs on (a fresh clone with the authors' notes beside it): not a citation.
  it.each(ALL.filter((entry) => entry !== '.ci'))('%s', (entry) => {
    const found: string[] = [];
    for (const file of textFiles([entry])) {
      read(file).split('\n').forEach((line, index) => {
        for (const [pattern, what] of FOREIGN_CITATIONS) {
          if (pattern.test(line)) found.push(`${file}:${index + 1} cites ${what}: ${line.trim().slice(0, 120)}`);
        }
      });
    }
    expect(found).toEqual([]);
  });
});

describe('links in markdown resolve', () => {
  const markdown = textFiles(PRODUCT).filter((file) => file.endsWith('.md'));

  it('there is markdown to check', () => {
    expect(markdown).toEqual(expect.arrayContaining(['README.md', 'docs/envoy-ext-proc.md', 'docs/azure-images.md']));
  });

  it.each(markdown)('%s', (file) => {
    const text = stripCode(read(file));
    const problems: string[] = [];
    const targets = [
      ...[...text.matchAll(/\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)].map((m) => m[1]!),
      ...[...text.matchAll(/^\s*\[[^\]]+\]:\s+(\S+)/gm)].map((m) => m[1]!),
    ];
    for (const target of targets) {
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // https:, mailto:
      const problem = problemWith(file, target);
      if (problem) problems.push(problem);
    }
    expect(problems).toEqual([]);
  });
});

describe('docs/ paths named in code, configs and manifests resolve', () => {
  // `docs/file.md#anchor` as written in comments; a URL's /docs/ path (envoyproxy.io/docs/...) is not ours.
  const MENTION = /(?<![\w./-])docs\/[\w./-]*[\w-](?:#[\w-]+)?/g;

  it.each(ALL)('%s', (entry) => {
    const problems: string[] = [];
    for (const file of textFiles([entry])) {
      for (const match of read(file).matchAll(MENTION)) {
        const problem = problemWith('', match[0]);
        if (problem) problems.push(`${file}: ${problem}`);
      }
    }
    expect(problems).toEqual([]);
  });
});

describe('README sections named in code, configs and manifests exist', () => {
  // e.g. `(README, "Credentials")` or `README.md, "Quick start" and "Deploy"`.
  const headings = new Set(
    stripFences(read('README.md'))
      .split('\n')
      .flatMap((line) => /^#{1,6}\s+(.*?)\s*$/.exec(line)?.[1] ?? [])
      .map((heading) => heading.toLowerCase()),
  );

  it.each(ALL)('%s', (entry) => {
    const problems: string[] = [];
    for (const file of textFiles([entry])) {
      for (const line of read(file).split('\n')) {
        const mention = /README(?:\.md)?,?\s+((?:"[^"]+"(?:,\s*|\s+and\s+)?)+)/.exec(line);
        if (!mention) continue;
        for (const [, title] of mention[1]!.matchAll(/"([^"]+)"/g)) {
          if (!headings.has(title!.toLowerCase())) problems.push(`${file}: README has no section "${title}"`);
        }
      }
    }
    expect(problems).toEqual([]);
  });
});

describe('repository paths named in the docs exist', () => {
  const docs = textFiles(['docs', 'README.md', 'BENCHMARKS.md', 'CHANGELOG.md']).filter((file) => file.endsWith('.md'));

  it.each(docs)('%s', (file) => {
    const named = [
      ...read(file).matchAll(/`((?:src|test|tools|envoy|deploy|docs|examples|scripts|bench|proto)\/[\w./-]*|Dockerfile|docker-compose\.yml|BENCHMARKS\.md|LICENSE|CHANGELOG\.md)`/g),
    ].map((m) => m[1]!);
    expect(named.filter((rel) => !statExists(rel))).toEqual([]);
  });
});

function statExists(rel: string): boolean {
  try {
    statSync(path.join(ROOT, rel));
    return true;
  } catch {
    return false;
  }
}

describe('the checks themselves', () => {
  it('anchors follow GitHub: punctuation dropped, underscores kept, duplicates numbered', () => {
    const anchors = anchorsOf('# Node and HTTP/2 stream resets\n## mode_override\n## Content-Length\n## `x` y\n## Notes\n## Notes\n```\n# not a heading\n```\n');
    expect([...anchors]).toEqual(['node-and-http2-stream-resets', 'mode_override', 'content-length', 'x-y', 'notes', 'notes-1']);
  });

  it('a foreign citation is caught, an RFC section is not', () => {
    const hits = (line: string) => FOREIGN_CITATIONS.filter(([pattern]) => pattern.test(line)).length;
    expect(hits('// Envoy drops it (reference §3.9, P5)')).toBeGreaterThan(0);
    expect(hits('// see AZURE-IMAGES.md §6 item 16')).toBeGreaterThan(0);
    expect(hits('// (STYLE lesson 9)')).toBeGreaterThan(0);
    expect(hits('// Escaped unreserved characters (RFC 3986 §6.2.2.2) and RFC 7578 §4.2')).toBe(0);
    expect(hits('// see docs/envoy-ext-proc.md#content-length; p99 latency')).toBe(0);
  });

  it('a broken docs/ mention or anchor is reported', () => {
    expect(problemWith('', 'docs/envoy-ext-proc.md#content-length')).toBeUndefined();
    expect(problemWith('', 'docs/envoy-ext-proc.md#no-such-heading')).toMatch(/no heading/);
    expect(problemWith('', 'docs/nope.md')).toMatch(/no such file/);
    expect(problemWith('docs/azure-images.md', '../README.md')).toBeUndefined();
    expect(problemWith('README.md', '../shared/STYLE.md')).toMatch(/leaves the repository/);
  });
});
