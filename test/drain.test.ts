// Graceful rollout, proven on the real entry point: a child process gets SIGTERM while calls are in flight.
// The sequence a Kubernetes rollout produces: NOT_SERVING at once; Envoy keeps sending new calls until it
// notices, and they are served; calls that were open finish with their answers and status OK; exit 0.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type * as grpc from '@grpc/grpc-js';
import { afterAll, describe, expect, it } from 'vitest';
import {
  checkHealth,
  extProcClient,
  imageHeaders,
  openCall,
  requestBody,
  requestHeaders,
  runCall,
  type DecodedResponse,
} from './support/extproc-client.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DRAIN_DELAY_MS = 2_000;
const SHUTDOWN_DEADLINE_MS = 10_000;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

interface LogLine {
  msg: string;
  level: string;
  [key: string]: unknown;
}

function startChild(env: Record<string, string>): { child: ChildProcess; logs: LogLine[]; ready: Promise<LogLine>; exited: Promise<{ code: number | null; at: number }> } {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: LogLine[] = [];
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<{ code: number | null; at: number }>((resolve) =>
    child.on('exit', (code) => resolve({ code, at: performance.now() })),
  );
  const ready = new Promise<LogLine>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const parsed = JSON.parse(line) as LogLine;
      logs.push(parsed);
      if (parsed.msg === 'ready') resolve(parsed);
    });
    void exited.then(({ code }) => reject(new Error(`server exited (${code}) before ready: ${stderr}`)));
  });
  return { child, logs, ready, exited };
}

/** Body of a STREAMED request, released in chunks; the prompt is long enough to span several. */
const streamedChunks = ['{"prompt":"a lighthouse ', 'on a cliff at dawn", ', '"model":"gpt-image-1", ', '"size":"1024x1024"}'];

/** The request bytes an answer lets through: its replacement, nothing (clear_body), or `sent` unchanged. */
function released(answer: DecodedResponse, sent: string | Buffer): Buffer {
  const mutation = (answer.request_body as { response?: { body_mutation?: { mutation?: string; body?: Buffer } } } | undefined)?.response
    ?.body_mutation;
  if (mutation?.mutation === 'body') return mutation.body!;
  if (mutation?.mutation === 'clear_body') return Buffer.alloc(0);
  return Buffer.from(sent);
}

describe('SIGTERM drain on the real entry point', () => {
  const clients: grpc.Client[] = [];
  let running: ChildProcess | undefined;

  afterAll(() => {
    clients.forEach((client) => client.close());
    if (running && running.exitCode === null) running.kill('SIGKILL');
  });

  it('goes NOT_SERVING at once, serves new calls during the delay, finishes in-flight calls, exits 0 before the deadline', async () => {
    const { child, logs, ready, exited } = startChild({
      EXTPROC_LISTEN: '127.0.0.1:0',
      EXTPROC_ADMIN_LISTEN: '127.0.0.1:0',
      EXTPROC_DRAIN_DELAY_MS: String(DRAIN_DELAY_MS),
      EXTPROC_SHUTDOWN_DEADLINE_MS: String(SHUTDOWN_DEADLINE_MS),
      LOG_LEVEL: 'info',
    });
    running = child;
    const readyLine = await ready;
    const listen = readyLine.listen as string;
    const readyz = (): Promise<number> => fetch(`http://${readyLine.admin as string}/readyz`).then((r) => r.status);
    const envoy = extProcClient(listen);
    clients.push(envoy);

    expect(await checkHealth(listen)).toBe('SERVING');
    expect(await readyz()).toBe(200);

    // In flight before SIGTERM: a BUFFERED call waiting for its body, and a STREAMED one mid-body.
    const buffered = openCall(envoy);
    const bufferedBody = '{"model":"gpt-image-1","prompt":"a red kite"}';
    buffered.send(requestHeaders(imageHeaders({ contentLength: bufferedBody.length })));
    expect((await buffered.next()).mode_override).toMatchObject({ request_body_mode: 'BUFFERED' });

    const streamed = openCall(envoy);
    streamed.send(requestHeaders(imageHeaders()));
    expect((await streamed.next()).mode_override).toMatchObject({ request_body_mode: 'STREAMED' });
    streamed.send(requestBody(streamedChunks[0]!, false));
    const streamedOut: Buffer[] = [];
    const collect = (answer: DecodedResponse, sent: string): void => {
      expect(answer.response).toBe('request_body');
      streamedOut.push(released(answer, sent));
    };
    collect(await streamed.next(), streamedChunks[0]!);

    const sigterm = performance.now();
    child.kill('SIGTERM');

    // Health flips at once, on gRPC and on /readyz alike.
    let status = await checkHealth(listen);
    while (status === 'SERVING' && performance.now() - sigterm < 1_000) status = await checkHealth(listen);
    expect(status).toBe('NOT_SERVING');
    expect(await readyz()).toBe(503);
    expect(performance.now() - sigterm).toBeLessThan(DRAIN_DELAY_MS / 2);

    // New calls during the delay are served, on Envoy's existing connection and on a new one.
    const late = extProcClient(listen);
    clients.push(late);
    for (const connection of [envoy, late]) {
      const body = '{"model":"gpt-image-1","prompt":"late"}';
      const { answers, status: lateStatus } = await runCall(connection, imageHeaders({ contentLength: body.length }), body);
      expect(lateStatus.code).toBe(0);
      expect(released(answers[1]!, body).toString()).toBe('{"prompt":"late"}');
    }
    expect(performance.now() - sigterm).toBeLessThan(DRAIN_DELAY_MS);

    // Past the delay the listener closes; the open calls are still alive and finish slowly.
    await sleep(DRAIN_DELAY_MS - (performance.now() - sigterm) + 500);
    expect(child.exitCode).toBeNull();

    buffered.send(requestBody(bufferedBody, true));
    expect(released(await buffered.next(), bufferedBody).toString()).toBe('{"prompt":"a red kite"}');
    expect((await buffered.finish()).code).toBe(0);

    for (const [index, chunk] of streamedChunks.entries()) {
      if (index === 0) continue;
      await sleep(300);
      expect(child.exitCode).toBeNull();
      const last = index === streamedChunks.length - 1;
      streamed.send(requestBody(chunk, last));
      collect(await streamed.next(), chunk);
    }
    expect((await streamed.finish()).code).toBe(0);
    const lastCallDone = performance.now();
    expect(JSON.parse(Buffer.concat(streamedOut).toString())).toEqual({ prompt: 'a lighthouse on a cliff at dawn', size: '1024x1024' });

    const exit = await exited;
    expect(exit.code).toBe(0);
    expect(exit.at - sigterm).toBeLessThan(DRAIN_DELAY_MS + SHUTDOWN_DEADLINE_MS);
    // It exits because the calls are done, not because the deadline hit.
    expect(exit.at - lastCallDone).toBeLessThan(2_000);
    const messages = logs.map((line) => line.msg);
    expect(messages).toContain('draining');
    expect(messages).toContain('stopped');
    expect(messages).not.toContain('shutdown deadline reached: closing remaining calls');
    expect(logs.find((line) => line.msg === 'draining')).toMatchObject({ signal: 'SIGTERM', drainDelayMs: DRAIN_DELAY_MS, activeCalls: 2 });
  });

  it('skips the drain delay on SIGINT (Ctrl-C on a local run)', async () => {
    const { child, ready, exited } = startChild({ EXTPROC_LISTEN: '127.0.0.1:0', EXTPROC_DRAIN_DELAY_MS: '30000', LOG_LEVEL: 'info' });
    running = child;
    await ready;
    const sigint = performance.now();
    child.kill('SIGINT');
    const exit = await exited;
    expect(exit.code).toBe(0);
    expect(exit.at - sigint).toBeLessThan(5_000);
  });
});
