// The compiled server as `npm start` and the container image run it: `tsc -p tsconfig.build.json`, then
// `node dist/main.js` with `proto/` beside `dist/`. Started on a Unix socket, probed with the shipped
// health-check CLI, stopped with SIGTERM.
import { execFile, spawn } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, test } from 'vitest';

const root = path.resolve(import.meta.dirname, '..');
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'extproc-build-'));
  await promisify(execFile)(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json', '--outDir', path.join(dir, 'dist')], {
    cwd: root,
    timeout: 120_000,
  });
  cpSync(path.join(root, 'proto'), path.join(dir, 'proto'), { recursive: true });
  cpSync(path.join(root, 'package.json'), path.join(dir, 'package.json'));
  symlinkSync(path.join(root, 'node_modules'), path.join(dir, 'node_modules'));
}, 150_000);

afterAll(() => rmSync(dir, { recursive: true, force: true }));

test('node dist/main.js: ready line, healthy on a unix socket, clean exit on SIGTERM', async () => {
  const socket = `unix:${path.join(dir, 'extproc.sock')}`;
  const child = spawn(process.execPath, ['dist/main.js'], {
    cwd: dir,
    env: { ...process.env, EXTPROC_LISTEN: socket, EXTPROC_DRAIN_DELAY_MS: '0', LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));

  const deadline = Date.now() + 20_000;
  while (!/"msg":"ready"/.test(output) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
  const ready = output.split('\n').find((line) => line.includes('"msg":"ready"'));
  expect(ready, output).toBeDefined();
  expect(JSON.parse(ready!)).toMatchObject({ level: 'info', listen: socket });

  const probe = await promisify(execFile)(process.execPath, ['dist/healthcheck.js', socket], { cwd: dir }).then(
    () => 0,
    (error: { code?: number }) => error.code ?? 1,
  );
  expect(probe).toBe(0);

  child.kill('SIGTERM');
  expect(await exited).toBe(0);
  expect(output).toContain('"msg":"stopped"');
}, 60_000);
