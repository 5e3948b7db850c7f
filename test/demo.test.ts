// `npm run demo` as a user runs it: Azure's 400 straight, 200 through the filter.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect, test } from 'vitest';

const root = path.resolve(import.meta.dirname, '..');

test('npm run demo shows the 400 without the filter and the 200 with it', async () => {
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', 'scripts/demo.ts'], { cwd: root, timeout: 60_000 });
  const status = stdout.split('\n').find((line) => line.startsWith('status'));
  expect(status?.replace(/\s+/g, ' ')).toBe('status 400 | 200');
  expect(stdout).toContain("The model 'gpt-image-2-1' does not exist.");
  const got = stdout.split('\n').find((line) => line.startsWith('Azure got'));
  expect(got).toContain('{"prompt":"a red circle","n":1,"size":"1024x1024"}');
  expect(stdout).toContain('Azure accepted the request');
});
