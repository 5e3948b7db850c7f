// Starts test/hostile/server-child.ts (the real server in its own process) and talks to it over IPC.
import { fork, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { HostileCommand, HostileSample } from './server-child.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** The Node flags of the production command (`npm start`), so the server's memory behaves as shipped. */
function productionFlags(): string[] {
  const start = (JSON.parse(readFileSync(`${ROOT}/package.json`, 'utf8')) as { scripts: { start: string } }).scripts.start;
  return start.split(' ').filter((word) => word.startsWith('--'));
}

type Command = HostileCommand extends infer C ? (C extends { id: number } ? Omit<C, 'id'> : never) : never;

export class ServerProcess {
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (sample: HostileSample) => void; reject: (error: Error) => void }>();
  /** Set once the process exited: the server crashed (or was stopped). */
  exited: string | undefined;

  private constructor(
    private readonly child: ChildProcess,
    readonly target: string,
  ) {
    child.on('message', (message: HostileSample) => {
      this.pending.get(message.id)?.resolve(message);
      this.pending.delete(message.id);
    });
    child.on('exit', (code, signal) => {
      this.exited = `server process exited (${signal ?? code})`;
      for (const { reject } of this.pending.values()) reject(new Error(this.exited));
      this.pending.clear();
    });
  }

  static start(): Promise<ServerProcess> {
    const child = fork(fileURLToPath(new URL('./server-child.ts', import.meta.url)), [], {
      cwd: ROOT,
      execArgv: ['--expose-gc', ...productionFlags(), '--import', 'tsx'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    return new Promise((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`hostile-suite server exited with ${code} before it was ready`)));
      child.once('message', (message: { ready?: string }) => {
        if (message.ready) resolve(new ServerProcess(child, message.ready));
      });
    });
  }

  ask(command: Command): Promise<HostileSample> {
    if (this.exited) return Promise.reject(new Error(this.exited));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.child.send({ ...command, id });
    });
  }

  stop(): Promise<void> {
    if (this.exited) return Promise.resolve();
    return new Promise((resolve) => {
      this.child.once('exit', () => resolve());
      this.child.send({ id: -1, cmd: 'exit' });
      setTimeout(() => this.child.kill('SIGKILL'), 3000).unref();
    });
  }
}
