// `npm run bench`: the server benchmarks (bench/extproc.ts) and the body editor benchmarks
// (bench/editors.ts), printed as one Markdown table on stdout; progress goes to stderr. Takes about two
// minutes on two cores. BENCHMARKS.md says what each row means and holds the last recorded run.
import { cpus, totalmem } from 'node:os';
import type { BenchRow } from './editors.js';
import { benchEditors } from './editors.js';
import { benchExtProc } from './extproc.js';

const log = (line: string) => process.stderr.write(`[bench] ${line}\n`);

function table(rows: BenchRow[]): string {
  const cells = rows.map((row) => [row.name, row.value, row.target ?? '', row.ok === undefined ? '' : row.ok ? 'ok' : 'MISSED']);
  const header = ['name', 'value', 'target', 'ok'];
  const widths = header.map((title, i) => Math.max(title.length, ...cells.map((cell) => cell[i]!.length)));
  const line = (cell: string[]) => `| ${cell.map((text, i) => (i === 1 ? text.padStart(widths[i]!) : text.padEnd(widths[i]!))).join(' | ')} |`;
  return [line(header), `|${widths.map((width, i) => (i === 1 ? `${'-'.repeat(width + 1)}:` : '-'.repeat(width + 2))).join('|')}|`, ...cells.map(line)].join('\n');
}

const started = performance.now();
log(`node ${process.versions.node}, ${cpus().length} x ${cpus()[0]?.model ?? 'unknown CPU'}, ${(totalmem() / 2 ** 30).toFixed(1)} GiB`);
const rows = await benchExtProc(log);
log('body editors');
rows.push(...(await benchEditors()));
console.log(table(rows));
const missed = rows.filter((row) => row.ok === false).length;
log(`done in ${((performance.now() - started) / 1000).toFixed(0)} s; ${missed === 0 ? 'every target met' : `${missed} target(s) missed`}`);
