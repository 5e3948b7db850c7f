// Starts bench/server-child.ts in a child process and talks to it over the fork IPC channel. The bench
// runs a tsc build of it on plain `node` (as in production: tsx's loader thread alone adds ~40 MiB RSS);
// the tests run the source through tsx, where only differences in memory matter.
import { execFile, fork, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { access, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { ChildMessage, ChildRequest, ChildSample, ServerKind } from './server-child.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BUILD = join(ROOT, 'node_modules', '.cache', 'azure-image-extproc-bench');

/** The Node flags of the production command: `npm start` (`node <flags> dist/main.js`), which the image copies. */
export const PRODUCTION_NODE_FLAGS: string[] = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: { start: string } }).scripts.start
  .split(' ')
  .filter((word) => word.startsWith('--'));

/**
 * Compiles bench/server-child.ts and what it imports into node_modules/.cache with tsc, so the servers
 * run on plain `node` as in production. proto/ is linked beside the output (src/proto.ts finds it at ../proto).
 */
export async function buildServerChild(): Promise<string> {
  await rm(BUILD, { recursive: true, force: true });
  await mkdir(BUILD, { recursive: true });
  await writeFile(
    join(BUILD, 'tsconfig.json'),
    JSON.stringify({
      extends: join(ROOT, 'tsconfig.json'),
      compilerOptions: { rootDir: ROOT, outDir: BUILD, noEmit: false, sourceMap: false },
      files: [join(ROOT, 'bench', 'server-child.ts')],
      include: [],
    }),
  );
  // Inside node_modules Node looks no further up for a package.json: say these files are ES modules.
  await writeFile(join(BUILD, 'package.json'), '{"type":"module"}\n');
  await symlink(join(ROOT, 'proto'), join(BUILD, 'proto'));
  const entry = join(BUILD, 'bench', 'server-child.js');
  try {
    await promisify(execFile)(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(BUILD, 'tsconfig.json')]);
  } catch (error) {
    // tsc emits despite type errors (e.g. a file someone is editing); only a missing output is fatal.
    const output = (error as { stdout?: string }).stdout ?? String(error);
    process.stderr.write(`tsc reported problems building the bench server:\n${output}\n`);
  }
  await access(entry);
  return entry;
}

/** A server in its own process; `ask` sends one ChildRequest and resolves with the child's answer. */
export class ServerProcess {
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (answer: Partial<ChildSample>) => void; reject: (error: Error) => void }>();
  private exit: Error | undefined;

  private constructor(
    private readonly child: ChildProcess,
    readonly address: string,
  ) {
    child.on('message', (message: ChildMessage) => {
      if ('id' in message) {
        this.pending.get(message.id)?.resolve(message);
        this.pending.delete(message.id);
      }
    });
    // A server that dies under load must fail the bench or test at once, not leave it waiting.
    child.on('exit', (code, signal) => {
      this.exit = new Error(`server process exited (${signal ?? code})`);
      for (const { reject } of this.pending.values()) reject(this.exit);
      this.pending.clear();
    });
  }

  /** The TypeScript source through tsx, for tests (no build step). */
  static fromSource(kind: ServerKind): Promise<ServerProcess> {
    return ServerProcess.start(join(ROOT, 'bench', 'server-child.ts'), kind, [...PRODUCTION_NODE_FLAGS, '--import', 'tsx']);
  }

  /** `execArgv`: Node flags; by default those of the production command (`npm start`, the image). */
  static start(entry: string, kind: ServerKind, execArgv: string[] = PRODUCTION_NODE_FLAGS): Promise<ServerProcess> {
    const child = fork(entry, [kind], { execArgv: ['--expose-gc', ...execArgv], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    return new Promise((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`${kind} server exited with ${code} before it was ready`)));
      child.once('message', (message: ChildMessage) => {
        if ('ready' in message) resolve(new ServerProcess(child, message.ready));
      });
    });
  }

  ask(cmd: ChildRequest['cmd']): Promise<Partial<ChildSample>> {
    if (this.exit) return Promise.reject(this.exit);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.child.send({ id, cmd } satisfies ChildRequest);
    });
  }

  async sample(): Promise<ChildSample> {
    return (await this.ask('sample')) as ChildSample;
  }

  /** Full GC in the child; resolves with its RSS afterwards. */
  async settledRss(): Promise<number> {
    return (await this.ask('gc')).rssBytes!;
  }

  /** Asks the server to shut down and waits for the process to exit. */
  stop(): Promise<void> {
    if (this.exit) return Promise.resolve();
    return new Promise((resolve) => {
      this.child.once('exit', () => resolve());
      this.child.send({ id: -1, cmd: 'exit' } satisfies ChildRequest);
    });
  }
}
