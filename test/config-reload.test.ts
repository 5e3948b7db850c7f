// Reloading the configuration and the API key file while serving (one validated, frozen snapshot): a valid new file
// swaps the one snapshot reference, an invalid one is refused and logged, listener keys wait for a
// restart, and calls keep the snapshot they started with. Files are replaced the ways editors and
// Kubernetes replace them.
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Config } from '../src/config.js';
import { loadConfigFrom, type ConfigFileError } from '../src/config-file.js';
import { watchConfig, type ConfigWatcher } from '../src/config-watch.js';
import { createLogger } from '../src/log.js';
import type { ProcessingResponse } from '../src/proto.js';
import { createSecretFile, createSecretFileSlot, type SecretFile } from '../src/secrets.js';
import { CallProcessor } from '../src/call/index.js';

const DEBOUNCE_MS = 20;

let dir: string;
let lines: string[];
let closers: Array<{ close(): void }>;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'extproc-reload-'));
  lines = [];
  closers = [];
});
afterEach(() => {
  closers.forEach((closer) => closer.close());
  rmSync(dir, { recursive: true, force: true });
});

const logger = () => createLogger('debug', { write: (line: string) => void lines.push(line) });
const logged = (): Array<Record<string, unknown>> => lines.map((line) => JSON.parse(line) as Record<string, unknown>);

/** Replaces a file the way editors do: write a temporary file, rename it over the original. */
function replace(path: string, text: string): void {
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path);
}

function start(path: string, env: NodeJS.ProcessEnv = {}): { watcher: ConfigWatcher; reloads: ReturnType<typeof vi.fn> } {
  const reloads = vi.fn<(ok: boolean) => void>();
  const watcher = watchConfig({
    file: path,
    env,
    initial: loadConfigFrom({ env, file: path }),
    logger: logger(),
    metrics: { configReloaded: reloads },
    debounceMs: DEBOUNCE_MS,
  });
  closers.push(watcher);
  return { watcher, reloads };
}

/** Waits until `check` passes (fs events arrive asynchronously, after the debounce). */
const eventually = (check: () => void): Promise<void> => vi.waitFor(check, { timeout: 3_000, interval: 10 });

/** Lets fs events and the debounce run out, for asserting that nothing happened. */
const settle = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, DEBOUNCE_MS * 8));

describe('configuration reload', () => {
  it('applies a changed file: current() returns the new snapshot', async () => {
    const path = join(dir, 'config.yaml');
    writeFileSync(path, 'logLevel: info\n');
    const { watcher, reloads } = start(path);
    const first = watcher.current();
    expect(first.logLevel).toBe('info');

    writeFileSync(path, 'logLevel: debug\nrewrite:\n  deploymentlessRoutes: true\n');
    await eventually(() => expect(watcher.current().logLevel).toBe('debug'));
    expect(watcher.current().rewrite.deploymentlessRoutes).toBe(true);
    expect(first.logLevel).toBe('info'); // the old snapshot is untouched
    expect(Object.isFrozen(watcher.current())).toBe(true);
    expect(reloads.mock.calls).toEqual([[true]]);
    expect(logged().find((entry) => entry.msg === 'configuration reloaded')).toMatchObject({
      level: 'info',
      file: path,
      changed: ['logLevel', 'rewrite.deploymentlessRoutes'],
    });
  });

  it('keeps the environment over the file on reload', async () => {
    const path = join(dir, 'config.yaml');
    writeFileSync(path, 'streamThresholdBytes: 100\n');
    const { watcher } = start(path, { EXTPROC_STREAM_THRESHOLD_BYTES: '5' });
    expect(watcher.current().streamThresholdBytes).toBe(5);
    writeFileSync(path, 'streamThresholdBytes: 200\ndrainDelayMs: 1\n');
    await eventually(() => expect(watcher.current().drainDelayMs).toBe(1));
    expect(watcher.current().streamThresholdBytes).toBe(5);
  });

  it('refuses an invalid file, keeps the running snapshot and logs the problems once', async () => {
    const path = join(dir, 'config.yaml');
    writeFileSync(path, 'drainDelayMs: 10\n');
    const { watcher, reloads } = start(path);
    const running = watcher.current();

    writeFileSync(path, 'drainDelayMs: 20\nrewrite:\n  openaiPaths:\n    prefx: /v1\n');
    await eventually(() => expect(reloads).toHaveBeenCalledWith(false));
    expect(watcher.current()).toBe(running);
    const refusals = logged().filter((entry) => entry.msg === 'invalid configuration file: keeping the running configuration');
    expect(refusals).toEqual([expect.objectContaining({ level: 'error', file: path, problems: ['rewrite.openaiPaths.prefx: unknown key (did you mean rewrite.openaiPaths.prefix?)'] })]);

    // A syntax error: refused too, with its line.
    writeFileSync(path, 'drainDelayMs: 20\nrewrite: [\n');
    await eventually(() => expect(reloads).toHaveBeenCalledTimes(2));
    expect(watcher.current()).toBe(running);
    expect(logged().at(-1)).toMatchObject({ level: 'error', problems: [expect.stringMatching(/^line \d+, column \d+: /)] });

    // Emptied (an in-place write truncates first): refused; `{}` is how to ask for the defaults.
    writeFileSync(path, '');
    await eventually(() => expect(reloads).toHaveBeenCalledTimes(3));
    expect(watcher.current()).toBe(running);
    expect(logged().at(-1)).toMatchObject({ level: 'error', problems: [expect.stringContaining('the file has no settings')] });

    // Fixed: applied.
    writeFileSync(path, 'drainDelayMs: 30\n');
    await eventually(() => expect(watcher.current().drainDelayMs).toBe(30));
    expect(reloads.mock.calls).toEqual([[false], [false], [false], [true]]);
  });

  it('keeps listener keys until a restart, with a warning, and applies the rest', async () => {
    const path = join(dir, 'config.yaml');
    writeFileSync(path, 'listen: 127.0.0.1:6000\nmaxMessageBytes: 2000000\nlogLevel: info\n');
    const { watcher } = start(path);

    writeFileSync(path, 'listen: 127.0.0.1:7000\nmaxMessageBytes: 3000000\nadminListen: 127.0.0.1:9000\nlogLevel: warn\n');
    await eventually(() => expect(watcher.current().logLevel).toBe('warn'));
    expect(watcher.current()).toMatchObject({ listen: '127.0.0.1:6000', maxMessageBytes: 2000000 });
    expect(watcher.current().adminListen).toBeUndefined();
    expect(logged().find((entry) => entry.level === 'warn')).toMatchObject({
      file: path,
      keys: ['listen', 'adminListen', 'maxMessageBytes'],
      restartNeeded: true,
      msg: expect.stringMatching(/NOT applied.*need a restart/),
    });
    // The reload line lists what was applied, and only that.
    expect(logged().filter((entry) => entry.msg === 'configuration reloaded').map((entry) => entry.changed)).toEqual([['logLevel']]);
  });

  it('never says "reloaded" when only listener settings changed', async () => {
    const path = join(dir, 'config.yaml');
    writeFileSync(path, 'listen: 127.0.0.1:6000\n');
    const { watcher } = start(path);
    writeFileSync(path, 'listen: 127.0.0.1:7000\ntls:\n  certFile: /c\n  keyFile: /k\n');
    await eventually(() => expect(logged().some((entry) => entry.restartNeeded === true)).toBe(true));
    await settle();
    expect(watcher.current().listen).toBe('127.0.0.1:6000');
    expect(watcher.current().tls).toBeUndefined();
    expect(logged().filter((entry) => /reloaded|applied/.test(String(entry.msg)) && !/NOT applied/.test(String(entry.msg)))).toEqual([]);
  });

  it('refuses an empty file on reload with the same words as at start-up', async () => {
    const path = join(dir, 'config.yaml');
    writeFileSync(path, 'drainDelayMs: 1\n');
    const { reloads } = start(path);
    writeFileSync(path, '# nothing but a comment\n');
    await eventually(() => expect(reloads).toHaveBeenCalledWith(false));
    const atStart = (() => {
      try {
        loadConfigFrom({ env: {}, file: path });
      } catch (error) {
        return (error as ConfigFileError).problems;
      }
    })();
    expect(logged().at(-1)).toMatchObject({ problems: atStart });
  });

  it('refuses a file that only fits listener values it cannot apply before a restart', async () => {
    const path = join(dir, 'config.yaml');
    writeFileSync(path, 'maxMessageBytes: 2000000\nstreamThresholdBytes: 1000000\n');
    const { watcher, reloads } = start(path);

    // Valid on its own (3 MB < 4 MB), but the running maxMessageBytes (2 MB) stays until a restart.
    writeFileSync(path, 'maxMessageBytes: 4000000\nstreamThresholdBytes: 3000000\nlogLevel: warn\n');
    await eventually(() => expect(reloads).toHaveBeenCalledWith(false));
    expect(watcher.current()).toMatchObject({ maxMessageBytes: 2000000, streamThresholdBytes: 1000000, logLevel: 'info' });
    expect(logged().find((entry) => entry.level === 'error')).toMatchObject({ problems: [expect.stringContaining('streamThresholdBytes')] });
  });

  it('lets a call in progress finish with the snapshot it started with', async () => {
    const path = join(dir, 'config.yaml');
    writeFileSync(path, 'streamThresholdBytes: 1048576\n');
    const { watcher } = start(path);
    const before = new CallProcessor(watcher.current());

    writeFileSync(path, 'streamThresholdBytes: 10\n');
    await eventually(() => expect(watcher.current().streamThresholdBytes).toBe(10));
    const after = new CallProcessor(watcher.current());

    // The same 100-byte request: under the old threshold it is buffered, under the new one streamed.
    const headers = (): Parameters<CallProcessor['handle']>[0] => ({
      request: 'request_headers',
      protocol_config: { request_body_mode: 'NONE', response_body_mode: 'NONE', send_body_without_waiting_for_header_response: false },
      request_headers: {
        end_of_stream: false,
        headers: {
          headers: Object.entries({
            ':method': 'POST',
            ':path': '/openai/deployments/d/images/generations?api-version=2025-04-01-preview',
            'content-type': 'application/json',
            'content-length': '100',
          }).map(([key, value]) => ({ key, raw_value: Buffer.from(value) })),
        },
      },
    });
    const mode = (answers: ProcessingResponse[]) => answers[0]?.mode_override?.request_body_mode;
    expect(mode(before.handle(headers()))).toBe('BUFFERED');
    expect(mode(after.handle(headers()))).toBe('STREAMED');
  });

  it('follows an editor replacing the file by rename', async () => {
    const path = join(dir, 'config.yaml');
    writeFileSync(path, 'drainDelayMs: 1\n');
    const { watcher } = start(path);
    replace(path, 'drainDelayMs: 2\n');
    await eventually(() => expect(watcher.current().drainDelayMs).toBe(2));
    replace(path, 'drainDelayMs: 3\n'); // the watch survives the first swap
    await eventually(() => expect(watcher.current().drainDelayMs).toBe(3));
  });

  it('follows a Kubernetes ConfigMap update (the ..data symlink swap)', async () => {
    // The kubelet's layout: config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>/ (atomic_writer.go).
    const version = (name: string, text: string): void => {
      mkdirSync(join(dir, name));
      writeFileSync(join(dir, name, 'config.yaml'), text);
    };
    version('..2026_01_01_00_00_00.1', 'drainDelayMs: 1\n');
    symlinkSync('..2026_01_01_00_00_00.1', join(dir, '..data'));
    symlinkSync('..data/config.yaml', join(dir, 'config.yaml'));
    const { watcher } = start(join(dir, 'config.yaml'));
    expect(watcher.current().drainDelayMs).toBe(1);

    const update = (previous: string, next: string, text: string): void => {
      version(next, text);
      symlinkSync(next, join(dir, '..data_tmp'));
      renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
      rmSync(join(dir, previous), { recursive: true });
    };
    update('..2026_01_01_00_00_00.1', '..2026_01_01_00_01_00.2', 'drainDelayMs: 2\n');
    await eventually(() => expect(watcher.current().drainDelayMs).toBe(2));
    update('..2026_01_01_00_01_00.2', '..2026_01_01_00_02_00.3', 'drainDelayMs: 3\n');
    await eventually(() => expect(watcher.current().drainDelayMs).toBe(3));
  });

  it('ignores events that change nothing, and reload() (SIGHUP) re-reads on demand', async () => {
    const path = join(dir, 'config.yaml');
    writeFileSync(path, 'drainDelayMs: 1\n');
    const { watcher, reloads } = start(path);
    const running = watcher.current();
    writeFileSync(path, 'drainDelayMs: 1\n');
    writeFileSync(join(dir, 'unrelated.txt'), 'x');
    await settle();
    expect(reloads).not.toHaveBeenCalled();
    expect(watcher.current()).toBe(running);

    expect(watcher.reload()).toBe(true);
    expect(watcher.current()).toBe(running);
    expect(reloads.mock.calls).toEqual([[true]]);
    expect(logged().at(-1)).toMatchObject({ msg: 'configuration file valid: no change to apply' });

    // Deleted: refused once, however many events follow in the directory.
    unlinkSync(path);
    await eventually(() => expect(reloads.mock.calls).toEqual([[true], [false]]));
    writeFileSync(join(dir, 'unrelated.txt'), 'y');
    await settle();
    expect(reloads.mock.calls).toEqual([[true], [false]]);
    expect(logged().filter((entry) => entry.code === 'ENOENT')).toEqual([expect.objectContaining({ level: 'error', file: path })]);
    expect(watcher.reload()).toBe(false);
    expect(watcher.current()).toBe(running);
  });

  it('has nothing to reload without a file', () => {
    const initial: Config = loadConfigFrom({ env: {} });
    const watcher = watchConfig({ file: undefined, env: {}, initial, logger: logger() });
    expect(watcher.reload()).toBe(true);
    expect(watcher.current()).toBe(initial);
    watcher.close();
  });
});

describe('secret file', () => {
  const KEY_1 = 'sk-PLANTED-FIRST-0123456789';
  const KEY_2 = 'sk-PLANTED-SECOND-9876543210';

  function open(path: string): SecretFile {
    const secret = createSecretFile(path, logger(), { debounceMs: DEBOUNCE_MS });
    closers.push(secret);
    return secret;
  }

  it('reads the trimmed value, re-reads it on change, and never logs it', async () => {
    const path = join(dir, 'api-key');
    writeFileSync(path, `${KEY_1}\n`);
    const secret = open(path);
    expect(secret.value()).toBe(KEY_1);

    replace(path, `  ${KEY_2}\r\n`);
    await eventually(() => expect(secret.value()).toBe(KEY_2));

    // Unreadable or empty: the last good value stays in use; only the path and a code are logged.
    unlinkSync(path);
    await eventually(() => expect(logged().some((entry) => entry.code === 'ENOENT')).toBe(true));
    expect(secret.value()).toBe(KEY_2);
    writeFileSync(path, '\n');
    await eventually(() => expect(logged().some((entry) => entry.code === 'EMPTY')).toBe(true));
    expect(secret.value()).toBe(KEY_2);
    writeFileSync(path, KEY_1);
    await eventually(() => expect(secret.value()).toBe(KEY_1));

    const log = lines.join('\n');
    expect(log).toContain(path);
    expect(log).toContain('secret file changed');
    for (const key of [KEY_1, KEY_2]) expect(log).not.toContain(key);
  });

  it('starts without a value when the file is missing, and picks it up when it appears', async () => {
    const path = join(dir, 'api-key');
    const secret = open(path);
    expect(secret.value()).toBeUndefined();
    expect(logged()[0]).toMatchObject({ level: 'error', path, code: 'ENOENT' });
    writeFileSync(path, KEY_1);
    await eventually(() => expect(secret.value()).toBe(KEY_1));
    expect(lines.join('\n')).not.toContain(KEY_1);
  });

  it('follows credentials.apiKeyFile across configuration reloads', () => {
    writeFileSync(join(dir, 'a'), KEY_1);
    writeFileSync(join(dir, 'b'), KEY_2);
    const slot = createSecretFileSlot(logger(), { debounceMs: DEBOUNCE_MS });
    closers.push(slot);
    expect(slot.value()).toBeUndefined();
    slot.use(join(dir, 'a'));
    expect(slot.value()).toBe(KEY_1);
    slot.use(join(dir, 'b'));
    expect(slot.value()).toBe(KEY_2);
    slot.use(undefined);
    expect(slot.value()).toBeUndefined();
    expect(lines.join('\n')).not.toMatch(/PLANTED/);
  });
});
