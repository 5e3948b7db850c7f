// `npm start` and `npm run explain` run this first: it compiles src/ into dist/ only when a source file
// (or the TypeScript configuration) changed since the last build, so a second start takes about a second
// instead of a full `tsc` run. The stamp dist/.build-stamp records when the last successful build began.
// `npm run build` always compiles.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const root = process.cwd();
const stamp = path.join(root, 'dist', '.build-stamp');
const inputs = ['src', 'tsconfig.json', 'tsconfig.build.json', 'package.json'];

/** Newest modification time under `entry`; directories count too, so a deleted or renamed file shows. */
function newest(entry) {
  if (!existsSync(entry)) return 0;
  const stats = statSync(entry);
  if (!stats.isDirectory()) return stats.mtimeMs;
  return readdirSync(entry).reduce((latest, name) => Math.max(latest, newest(path.join(entry, name))), stats.mtimeMs);
}

const changed = Math.max(...inputs.map((input) => newest(path.join(root, input))));
const built = existsSync(stamp) ? statSync(stamp).mtimeMs : -1;
if (built >= changed) {
  process.stderr.write('dist/ is up to date with src/: not rebuilding\n');
  process.exit(0);
}

process.stderr.write(built < 0 ? 'building dist/ (no previous build)\n' : 'building dist/ (src/ changed)\n');
const began = new Date();
const tsc = spawnSync(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'], { cwd: root, stdio: 'inherit' });
if (tsc.status !== 0) process.exit(tsc.status ?? 1);
writeFileSync(stamp, `${began.toISOString()}\n`);
// The build's start: a file saved while tsc ran is newer, so the next start compiles it.
utimesSync(stamp, began, began);
