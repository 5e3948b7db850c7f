// The Docker engine for the container test: installed from Debian's docker.io when missing, started when
// none runs (and stopped again only then), and every container, network, volume and image the test
// creates tracked by name so that it can remove them all, whatever fails.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  /** Return a non-zero exit as a result instead of throwing. */
  allowFail?: boolean;
  /** Piped to the command's stdin. */
  input?: NodeJS.ReadableStream;
}

/** Runs a command with a time bound; the error names the command and shows the end of its output. */
export function run(command: string, args: string[], options: RunOptions = {}): Promise<Result> {
  const timeoutMs = options.timeoutMs ?? 60_000;
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env: options.env ?? process.env, stdio: [options.input ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    if (options.input) options.input.pipe(child.stdin!);
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (error) => (clearTimeout(timer), reject(new Error(`${command}: ${error.message}`))));
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const result = { code: code ?? 128, stdout, stderr };
      if (code === 0 || options.allowFail) return resolve(result);
      const why = signal === 'SIGKILL' ? `timed out after ${timeoutMs} ms` : `exited ${code ?? signal}`;
      const tail = (stderr || stdout).trim().split('\n').slice(-15).join('\n');
      reject(new Error(`${command} ${args.join(' ')}: ${why}\n${tail}`));
    });
  });
}

const exitCode = (command: string, args: string[]): Promise<number> =>
  new Promise((resolve) => execFile(command, args, { timeout: 20_000 }, (error) => resolve(error ? 1 : 0)));

const DANGLING = ['images', '-q', '--no-trunc', '--filter', 'dangling=true'];
/** Far above a normal run (under 6 minutes on a fresh machine), so only a hang reaches it. */
const RUN_LIMIT_MS = 12 * 60_000;

export class Engine {
  /** The docker client: one whose BuildKit works without a buildx plugin (Debian's 20.10 client has it built in). */
  bin = 'docker';
  private dockerd: ChildProcess | undefined;
  private dockerdLog = '';
  private readonly containers = new Set<string>();
  private readonly networks = new Set<string>();
  private readonly volumes = new Set<string>();
  private readonly images = new Set<string>();
  private before: Record<'containers' | 'networks' | 'volumes' | 'dangling', string[]> = { containers: [], networks: [], volumes: [], dangling: [] };

  constructor(
    /** Prefix of every name this run creates. */
    readonly prefix: string,
    private readonly log: (line: string) => void,
  ) {}

  /** The whole run's time limit: past it every command fails at once, and only the clean-up still runs. */
  private readonly deadline = Date.now() + RUN_LIMIT_MS;

  /** `run` within the run's time limit. */
  exec(command: string, args: string[], options: RunOptions = {}): Promise<Result> {
    const left = this.deadline - Date.now();
    if (left <= 0) return Promise.reject(new Error(`the container test's limit of ${RUN_LIMIT_MS / 60_000} minutes has passed: ${command} ${args[0]} not run`));
    return run(command, args, { ...options, timeoutMs: Math.min(options.timeoutMs ?? 60_000, left) });
  }

  docker(args: string[], options: RunOptions = {}): Promise<Result> {
    return this.exec(this.bin, args, options);
  }

  /** For the clean-up: not bound by the run's limit (each command still is). */
  private dockerAlways(args: string[], options: RunOptions = {}): Promise<Result> {
    return run(this.bin, args, options);
  }

  /** docker.io and debootstrap from Debian when missing; dockerd when none answers. */
  async start(): Promise<void> {
    const missing = [
      ...(existsSync('/usr/sbin/dockerd') || (await exitCode('sh', ['-c', 'command -v dockerd'])) === 0 ? [] : ['docker.io']),
      ...((await exitCode('sh', ['-c', 'command -v debootstrap'])) === 0 ? [] : ['debootstrap']),
    ];
    if (missing.length > 0) {
      this.log(`installing ${missing.join(', ')} (apt-get)`);
      const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
      const install = ['install', '-y', '-q', '--no-install-recommends', ...missing];
      const first = await this.exec('apt-get', install, { env, timeoutMs: 180_000, allowFail: true });
      if (first.code !== 0) {
        await this.exec('apt-get', ['update', '-q'], { env, timeoutMs: 120_000 });
        await this.exec('apt-get', install, { env, timeoutMs: 180_000 });
      }
    }
    this.bin = await this.pickClient();
    if ((await this.exec(this.bin, ['info'], { allowFail: true, timeoutMs: 20_000 })).code !== 0) {
      const logFile = (this.dockerdLog = path.join(tmpdir(), `${this.prefix}-dockerd.log`));
      this.log(`no Docker engine answers: starting dockerd (log ${logFile}); it is stopped again at the end`);
      const out = openSync(logFile, 'a');
      this.dockerd = spawn('dockerd', [], { stdio: ['ignore', out, out], detached: true });
      const deadline = Date.now() + 60_000;
      while ((await this.exec(this.bin, ['info'], { allowFail: true, timeoutMs: 10_000 })).code !== 0) {
        if (Date.now() > deadline || this.dockerd.exitCode !== null) throw new Error(`dockerd did not start: see ${logFile}`);
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
    }
    const version = await this.docker(['version', '--format', 'client {{.Client.Version}}, engine {{.Server.Version}}']);
    this.log(`docker ${version.stdout.trim()} (${this.bin})`);
    this.before = {
      containers: await this.list(['ps', '-aq', '--no-trunc']),
      networks: await this.list(['network', 'ls', '-q', '--no-trunc']),
      volumes: await this.list(['volume', 'ls', '-q']),
      dangling: await this.list(DANGLING),
    };
  }

  /**
   * `docker build` with DOCKER_BUILDKIT=1 needs the buildx plugin from Docker 23 on; Debian's 20.10 client
   * (/usr/bin/docker) has BuildKit built in. Prefer the client on PATH when it can do both builders.
   */
  private async pickClient(): Promise<string> {
    if ((await exitCode('docker', ['buildx', 'version'])) === 0) return 'docker';
    const major = async (bin: string) => Number((await run(bin, ['version', '--format', '{{.Client.Version}}'], { allowFail: true })).stdout.split('.')[0]) || 0;
    if (existsSync('/usr/bin/docker') && (await major('/usr/bin/docker')) < 23) return '/usr/bin/docker';
    if ((await major('docker')) < 23) return 'docker';
    throw new Error('no docker client can build with BuildKit: install the buildx plugin or Debian docker.io');
  }

  private async list(args: string[]): Promise<string[]> {
    return (await this.dockerAlways(args, { timeoutMs: 30_000 })).stdout.split('\n').filter(Boolean);
  }

  name(suffix: string): string {
    return `${this.prefix}-${suffix}`;
  }

  /** `docker run -d` of a tracked container; returns its name. */
  async runDetached(suffix: string, args: string[]): Promise<string> {
    const name = this.name(suffix);
    this.containers.add(name);
    await this.docker(['run', '-d', '--name', name, ...args]);
    return name;
  }

  /** `docker run --rm` to completion (tracked too, in case it hangs). */
  async runOnce(suffix: string, args: string[], timeoutMs = 60_000): Promise<Result> {
    const name = this.name(suffix);
    this.containers.add(name);
    return this.docker(['run', '--rm', '--name', name, ...args], { allowFail: true, timeoutMs });
  }

  async network(suffix: string): Promise<string> {
    const name = this.name(suffix);
    this.networks.add(name);
    await this.docker(['network', 'create', name]);
    return name;
  }

  /** A volume name that does not exist yet: `docker run -v` creates it fresh. */
  volume(suffix: string): string {
    const name = this.name(suffix);
    this.volumes.add(name);
    return name;
  }

  trackImage(tag: string): void {
    this.images.add(tag);
  }

  async inspect(name: string, format: string): Promise<string> {
    return (await this.docker(['inspect', '--format', format, name])).stdout.trim();
  }

  async logs(name: string): Promise<string> {
    const result = await this.docker(['logs', name], { allowFail: true });
    return result.stdout + result.stderr;
  }

  /** Removes what this run created, checks nothing else was left, stops dockerd if it started it. */
  async cleanUp(): Promise<string[]> {
    const problems: string[] = [];
    const remove = async (args: string[]) => {
      const result = await this.dockerAlways(args, { allowFail: true, timeoutMs: 60_000 });
      if (result.code !== 0 && !/No such|not found/i.test(result.stderr)) problems.push(`${args.join(' ')}: ${result.stderr.trim()}`);
    };
    for (const name of this.containers) await remove(['rm', '-f', '-v', name]);
    for (const name of this.networks) await remove(['network', 'rm', name]);
    for (const name of this.volumes) await remove(['volume', 'rm', name]);
    for (const tag of this.images) await remove(['rmi', tag]);
    // The classic builder's other stages stay behind as untagged images; BuildKit's cache is kept.
    for (const id of await this.list(DANGLING)) if (!this.before.dangling.includes(id)) await remove(['rmi', id]);
    const leftover = async (args: string[], before: string[]) => (await this.list(args)).filter((id) => !before.includes(id));
    const left = [
      ...(await leftover(['ps', '-aq', '--no-trunc'], this.before.containers)).map((id) => `container ${id}`),
      ...(await leftover(['network', 'ls', '-q', '--no-trunc'], this.before.networks)).map((id) => `network ${id}`),
      ...(await leftover(['volume', 'ls', '-q'], this.before.volumes)).map((id) => `volume ${id}`),
    ];
    if (left.length > 0) problems.push(`left behind: ${left.join(', ')}`);
    return problems;
  }

  async stop(): Promise<void> {
    const dockerd = this.dockerd;
    if (!dockerd || dockerd.exitCode !== null) return;
    const exited = new Promise((resolve) => dockerd.once('exit', resolve));
    dockerd.kill('SIGTERM');
    await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 30_000))]);
    if (dockerd.exitCode === null) dockerd.kill('SIGKILL');
    else rmSync(this.dockerdLog, { force: true });
    this.log('stopped the dockerd this test started');
  }
}
