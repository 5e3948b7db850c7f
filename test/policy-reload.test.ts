// limits.globalHeldBytes applied by a reload (it used to be logged as reloaded while the budget kept its
// start-up size), on the server and through the real entry point's reload hook; listener settings in the
// same file wait for a restart and are never reported as reloaded.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, describe, expect, test, vi } from 'vitest';
import { buildConfig } from '../src/config.js';
import { extProcClient, imageHeaders, openCall, requestHeaders } from './support/extproc-client.js';
import { startTestServer, type TestServer } from './support/harness.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const KiB = 1024;

describe('RunningServer.applyPolicy', () => {
  let server: TestServer | undefined;
  const clients: grpc.Client[] = [];
  afterEach(async () => {
    clients.splice(0).forEach((client) => client.close());
    await server?.close();
  });

  /** The body mode the server asks for a request announcing `contentLength` bytes; the call stays open. */
  async function modeFor(client: grpc.Client, contentLength: number): Promise<{ mode: unknown; cancel(): void }> {
    const call = openCall(client);
    call.send(requestHeaders(imageHeaders({ contentLength })));
    const answer = await call.next();
    return { mode: (answer.mode_override as { request_body_mode?: string } | undefined)?.request_body_mode, cancel: () => call.cancel() };
  }

  test('resizes the global budget: new calls see the new size, calls holding keep their reservation', async () => {
    server = await startTestServer({ limits: { globalHeldBytes: '1KiB' } });
    const client = extProcClient(server.target);
    clients.push(client);
    expect(server.server.budgetBytes()).toBe(1 * KiB);

    // 2,000 bytes do not fit a 1 KiB budget: the body is streamed instead of buffered.
    const before = await modeFor(client, 2000);
    expect(before.mode).toBe('STREAMED');
    before.cancel();

    server.server.applyPolicy(buildConfig({ limits: { globalHeldBytes: '4KiB' } }));
    expect(server.server.budgetBytes()).toBe(4 * KiB);
    const holding = await modeFor(client, 2000);
    expect(holding.mode).toBe('BUFFERED');
    expect(server.server.heldBytes()).toBe(2000);

    // Shrunk below what is held: the holding call keeps its 2,000 bytes, a new one finds no room.
    server.server.applyPolicy(buildConfig({ limits: { globalHeldBytes: '1KiB' } }));
    expect(server.server.heldBytes()).toBe(2000);
    const after = await modeFor(client, 500);
    expect(after.mode).toBe('STREAMED');
    after.cancel();
    holding.cancel();
  });
});

describe('through the entry point (src/main.ts)', () => {
  let dir: string | undefined;
  let child: ChildProcess | undefined;
  afterAll(() => {
    if (child && child.exitCode === null) child.kill('SIGKILL');
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('a reload of limits.globalHeldBytes resizes the budget (extproc_body_bytes_budget); a listener change needs a restart', async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'extproc-policy-'));
    const file = path.join(dir, 'config.yaml');
    const base = 'listen: 127.0.0.1:0\nadminListen: 127.0.0.1:0\ndrainDelayMs: 0\n';
    writeFileSync(file, `${base}limits:\n  globalHeldBytes: 1MiB\n`);
    child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', '--config', file], { cwd: ROOT, env: { ...process.env, LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] });
    const logs: Array<Record<string, unknown>> = [];
    createInterface({ input: child.stdout! }).on('line', (line) => logs.push(JSON.parse(line) as Record<string, unknown>));
    await vi.waitFor(() => expect(logs.some((line) => line.msg === 'ready')).toBe(true), { timeout: 20_000, interval: 50 });
    const ready = logs.find((line) => line.msg === 'ready')!;
    const budget = async (): Promise<number> => {
      const text = await (await fetch(`http://${ready.admin as string}/metrics`)).text();
      return Number(/^extproc_body_bytes_budget (\d+)$/m.exec(text)?.[1]);
    };
    expect(await budget()).toBe(1024 * 1024);

    writeFileSync(file, `${base}limits:\n  globalHeldBytes: 2MiB\n`);
    await vi.waitFor(async () => expect(await budget()).toBe(2 * 1024 * 1024), { timeout: 5_000, interval: 50 });
    // The log is written asynchronously: it may trail the metric.
    await vi.waitFor(() => expect(logs.find((line) => line.msg === 'configuration reloaded')).toMatchObject({ changed: ['limits.globalHeldBytes'] }), { timeout: 5_000, interval: 50 });

    writeFileSync(file, `listen: 127.0.0.1:1\nadminListen: 127.0.0.1:0\ndrainDelayMs: 0\nlimits:\n  globalHeldBytes: 2MiB\n`);
    await vi.waitFor(() => expect(logs.some((line) => line.restartNeeded === true)).toBe(true), { timeout: 5_000, interval: 50 });
    expect(logs.find((line) => line.restartNeeded === true)).toMatchObject({ level: 'warn', keys: ['listen'], msg: expect.stringContaining('need a restart') });
    expect(logs.filter((line) => line.msg === 'configuration reloaded')).toHaveLength(1);

    const exited = new Promise((resolve) => child!.on('exit', resolve));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  }, 40_000);
});
