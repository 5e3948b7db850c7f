// The written forms of configuration values that are more than a plain string or number: sizes, socket
// modes and listener addresses. Each parser returns the value, or a message saying what the value must
// look like (the schema in config.ts puts the key in front of it). File and environment share them, so
// `64MiB` or `0o660` means the same in both (docs/configuration.md, "Value formats").

const UNITS: Record<string, number> = { b: 1, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3 };

/**
 * A size: a whole number of bytes (`1048576`), or a whole number with a binary unit (`512KiB`, `64MiB`,
 * `1GiB`; any letter case, a space allowed before the unit). Decimal units (`64MB`) are refused rather than
 * guessed: they differ from the binary ones by 5-7 %.
 */
export function parseByteSize(value: number | string): number | string {
  const expected = 'must be a size: a number of bytes, or a number with KiB, MiB or GiB (e.g. 64MiB)';
  let bytes: number;
  if (typeof value === 'number') {
    bytes = value;
  } else {
    const match = /^(\d+)\s*([A-Za-z]*)$/.exec(value.trim());
    if (!match) return expected;
    const unit = match[2]!.toLowerCase();
    const factor = unit === '' ? 1 : UNITS[unit];
    if (factor === undefined) {
      const binary = { k: 'KiB', kb: 'KiB', m: 'MiB', mb: 'MiB', g: 'GiB', gb: 'GiB' }[unit];
      return binary ? `${expected}; "${match[2]}" is not accepted, write ${match[1]}${binary} (binary units)` : expected;
    }
    bytes = Number(match[1]) * factor;
  }
  if (!Number.isSafeInteger(bytes) || bytes <= 0) return 'must be a whole number of bytes above 0';
  return bytes;
}

/**
 * A unix socket's file mode. A number is the mode itself (YAML reads `0o660` as 432); text is octal
 * digits, with or without `0o` or `0` in front: `0o660`, `0660` and `660` are the same mode. The owner
 * (the server) must keep read and write, or the socket would be unusable.
 */
export function parseSocketMode(value: number | string): number | string {
  let mode: number;
  if (typeof value === 'number') {
    mode = value;
  } else {
    const match = /^(?:0o|0)?([0-7]{3})$/i.exec(value.trim());
    if (!match) return `must be an octal file mode such as 0o660 (also written 0660 or 660), got "${value}"`;
    mode = parseInt(match[1]!, 8);
  }
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) return 'must be an octal file mode such as 0o660 (also written 0660 or 660)';
  if ((mode & 0o600) !== 0o600) return `mode 0o${mode.toString(8).padStart(3, '0')} leaves the socket unusable: the owner needs read and write (e.g. 0o660)`;
  return mode;
}

export type Address = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$/;
const IPV6 = /^[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?$/;

/**
 * A listener address: `host:port` (`0.0.0.0:50051`, `[::]:50051`, `localhost:50051`) with a port from 1 to
 * 65535 (0 asks the system for a free one, as tests do), or with `unix` `unix:/absolute/path`. A host
 * without a port is refused: grpc-js would quietly pick 443.
 */
export function parseAddress(value: string, options: { unix: boolean }): Address | string {
  const expected = options.unix ? 'must be host:port (e.g. 0.0.0.0:50051, port 1-65535) or unix:/absolute/path' : 'must be host:port (e.g. 127.0.0.1:50053, port 1-65535)';
  const text = value.trim();
  if (text.startsWith('unix:')) {
    if (!options.unix) return `${expected}: a unix socket is not possible here (Prometheus and kubelet HTTP probes speak TCP)`;
    const path = text.slice('unix:'.length);
    if (!path.startsWith('/')) return `${expected}, got "${value}" (the socket path must be absolute)`;
    return { kind: 'unix', path };
  }
  if (!text.includes(':')) return `${expected}, got "${value}" (no port)`;
  const match = /^(?:\[(?<v6>[^\]]*)\]|(?<host>[^:[\]]*)):(?<port>[^:]*)$/.exec(text);
  if (!match) return `${expected}, got "${value}"`;
  const host = match.groups!.v6 ?? match.groups!.host!;
  const portText = match.groups!.port!;
  if (host === '') return `${expected}, got "${value}" (no host: write 0.0.0.0${text} for every interface)`;
  if (match.groups!.v6 !== undefined ? !IPV6.test(host) : !HOSTNAME.test(host)) return `${expected}, got "${value}" (not a host name or IP address)`;
  if (portText === '') return `${expected}, got "${value}" (no port)`;
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (!(port >= 0 && port <= 65_535)) return `${expected}, got "${value}" (the port must be a number from 1 to 65535)`;
  return { kind: 'tcp', host, port };
}
