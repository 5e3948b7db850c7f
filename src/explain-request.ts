// `explain`'s command line: turns curl-style arguments (a URL or --path, -X, -H, -d, --data-binary, -F)
// into the request to explain, building the body the way curl would: -d and --data-binary bodies with
// curl's default content-type, -F as a multipart/form-data body with a fresh boundary, and a
// content-length unless one is given or the request is chunked.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { basename, extname } from 'node:path';
import { parseArgs } from 'node:util';
import { parseBoundary } from './body/index.js';
import { BODY_MODES, type ConfiguredBodyMode, type ExplainRequest } from './explain-call.js';

export const USAGE = `usage: explain [URL | --path PATH] [-X METHOD] [-H 'name: value']... [-d DATA | --data-binary DATA
               | --body-file FILE | -F name=value...] [--mode MODE] [--config FILE] [--json]`;

export const HELP = `${USAGE}

Shows what azure-image-extproc would do with one request, without Envoy: the matched route and decision,
the ext_proc messages and answers, the header and :path mutations as Envoy applies them,
clear_route_cache, mode_override, dynamic metadata and a body diff (credential values masked). The
request goes through the same model of Envoy's ext_proc filter the tests use, set up as envoy/envoy.yaml.

Request:
  URL, --path PATH        the request target: a path with query (/openai/...) or a full https:// URL
                          (its host becomes :authority)
  -X, --method METHOD     default POST when a body is given, else GET (as curl)
  -H, --header 'N: V'     a request header (repeatable); 'host: x' sets :authority
Body (one kind; explain adds content-length unless given or -H 'transfer-encoding: chunked'):
  -d, --data DATA         the body as text (repeatable, joined with '&'); @FILE reads a file and drops
                          its CR and LF characters, @- reads stdin (as curl -d). Without a content-type
                          header it is sent as application/x-www-form-urlencoded, as curl does
  --data-binary DATA      like -d but @FILE is sent byte for byte
  --body-file FILE        the body from FILE byte for byte (- for stdin); no default content-type
  -F, --form SPEC         one multipart/form-data part (repeatable): name=value, name=@FILE (a file
                          part; ;type=TYPE and ;filename=NAME may follow; the type is guessed from the
                          extension as curl does) or name=<FILE (a text part read from FILE)
Envoy and server:
  --mode MODE             the request_body_mode configured on Envoy's ext_proc filter: NONE (default,
                          with allow_mode_override: the recommended set-up), BUFFERED, STREAMED,
                          BUFFERED_PARTIAL or FULL_DUPLEX_STREAMED
  --config FILE           the server configuration; default EXTPROC_CONFIG, else the built-in defaults,
                          with the same environment overrides as the server
Output:
  --json                  a machine-readable report instead of text
  -h, --help              this text

Example bodies are in examples/bodies/ (see its README.md).
Exit status: 0 explained, 1 the server would end the call with a gRPC error, 2 bad arguments or
configuration.`;

export class UsageError extends Error {}

export interface ExplainIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  env: NodeJS.ProcessEnv;
  readStdin: () => Buffer;
}

export interface ParsedArgs {
  request: ExplainRequest;
  configOption?: string;
  json: boolean;
  /** What explain assumed about the request, for the report's notes. */
  notes: string[];
}

function parseHeader(text: string): [string, string] {
  // `:authority: x` names a pseudo-header, so the separator is the first colon after the name's first character.
  const colon = text.indexOf(':', 1);
  const name = colon === -1 ? '' : text.slice(0, colon).trim();
  if (!name || /\s/.test(name)) throw new UsageError(`bad header ${JSON.stringify(text)}: expected 'name: value'`);
  return [name.toLowerCase(), text.slice(colon + 1).trim()];
}

function readSource(option: string, path: string, io: ExplainIo): Buffer {
  try {
    return path === '-' ? io.readStdin() : readFileSync(path);
  } catch (error) {
    throw new UsageError(`cannot read ${option} ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
}

/** curl -d: text as given; @FILE without its CR and LF bytes. */
function dataValue(value: string, io: ExplainIo): Buffer {
  if (!value.startsWith('@')) return Buffer.from(value, 'utf8');
  const bytes = readSource('-d', value.slice(1), io);
  return Buffer.from(bytes.filter((byte) => byte !== 0x0d && byte !== 0x0a));
}

function dataBinaryValue(value: string, io: ExplainIo): Buffer {
  return value.startsWith('@') ? readSource('--data-binary', value.slice(1), io) : Buffer.from(value, 'utf8');
}

/** The content types curl gives a file part by its extension; anything else is application/octet-stream. */
const TYPES_BY_EXTENSION = new Map([
  ['.png', 'image/png'],
  ['.jpg', 'image/jpeg'],
  ['.jpeg', 'image/jpeg'],
  ['.gif', 'image/gif'],
  ['.webp', 'image/webp'],
  ['.txt', 'text/plain'],
  ['.json', 'application/json'],
]);

interface FormPart {
  name: string;
  filename?: string;
  contentType?: string;
  content: Buffer;
}

/** One -F argument: name=value, name=@file[;type=..][;filename=..] or name=<file[;type=..]. */
function formPart(spec: string, io: ExplainIo): FormPart {
  const equals = spec.indexOf('=');
  if (equals <= 0) throw new UsageError(`bad -F ${JSON.stringify(spec)}: expected name=value, name=@file or name=<file`);
  const name = spec.slice(0, equals);
  const value = spec.slice(equals + 1);
  if (!value.startsWith('@') && !value.startsWith('<')) return { name, content: Buffer.from(value, 'utf8') };
  const [path = '', ...params] = value.slice(1).split(';');
  const param = (key: string) => params.find((p) => p.trim().toLowerCase().startsWith(`${key}=`))?.trim().slice(key.length + 1);
  const content = readSource('-F', path, io);
  const type = param('type');
  if (value.startsWith('<')) return { name, content, ...(type ? { contentType: type } : {}) };
  return {
    name,
    filename: param('filename') ?? basename(path),
    contentType: type ?? TYPES_BY_EXTENSION.get(extname(path).toLowerCase()) ?? 'application/octet-stream',
    content,
  };
}

/** A multipart/form-data body as curl -F builds it. */
export function multipartBody(boundary: string, parts: FormPart[]): Buffer {
  const chunks: Buffer[] = [];
  for (const part of parts) {
    const quote = (text: string) => text.replace(/"/g, '%22').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
    let head = `--${boundary}\r\nContent-Disposition: form-data; name="${quote(part.name)}"`;
    if (part.filename !== undefined) head += `; filename="${quote(part.filename)}"`;
    if (part.contentType) head += `\r\nContent-Type: ${part.contentType}`;
    chunks.push(Buffer.from(`${head}\r\n\r\n`, 'utf8'), part.content, Buffer.from('\r\n'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return Buffer.concat(chunks);
}

type Values = {
  method?: string;
  path?: string;
  header: string[];
  data: string[];
  'data-binary': string[];
  'body-file'?: string;
  form: string[];
  config?: string;
  mode: string;
  json: boolean;
  help: boolean;
};

function parse(argv: string[]): { values: Values; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: true,
      options: {
        method: { type: 'string', short: 'X' },
        path: { type: 'string' },
        header: { type: 'string', short: 'H', multiple: true, default: [] },
        data: { type: 'string', short: 'd', multiple: true, default: [] },
        'data-binary': { type: 'string', multiple: true, default: [] },
        'body-file': { type: 'string' },
        form: { type: 'string', short: 'F', multiple: true, default: [] },
        config: { type: 'string' },
        mode: { type: 'string', default: 'NONE' },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
    return { values: values as Values, positionals };
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

/** The body and the headers it implies, from whichever body option was given. */
function bodyFrom(values: Values, headers: Array<[string, string]>, io: ExplainIo, notes: string[]): Buffer | undefined {
  const given = [values.data.length > 0 && '-d', values['data-binary'].length > 0 && '--data-binary', values['body-file'] !== undefined && '--body-file', values.form.length > 0 && '-F'].filter(Boolean);
  if (given.length > 1) throw new UsageError(`use one kind of body, not ${given.join(' and ')}`);
  const contentType = headers.find(([name]) => name === 'content-type');
  if (values.form.length > 0) {
    const boundary = (contentType && parseBoundary(contentType[1])) || `------------------------${randomBytes(8).toString('hex')}`;
    if (!contentType) headers.push(['content-type', `multipart/form-data; boundary=${boundary}`]);
    else if (!parseBoundary(contentType[1])) contentType[1] = `${contentType[1]}; boundary=${boundary}`;
    return multipartBody(boundary, values.form.map((spec) => formPart(spec, io)));
  }
  const curlData = values.data.length > 0 || values['data-binary'].length > 0;
  if (curlData && !contentType) {
    headers.push(['content-type', 'application/x-www-form-urlencoded']);
    notes.push("No content-type given: like curl, explain sent the -d body as application/x-www-form-urlencoded. For JSON add -H 'content-type: application/json'.");
  }
  if (values.data.length > 0) return Buffer.from(values.data.map((value) => dataValue(value, io).toString('latin1')).join('&'), 'latin1');
  if (values['data-binary'].length > 0) return Buffer.concat(values['data-binary'].map((value) => dataBinaryValue(value, io)));
  if (values['body-file'] !== undefined) return readSource('--body-file', values['body-file'], io);
  return undefined;
}

/** Parses the command line; 'help' when --help was asked for. */
export function requestFromArgs(argv: string[], io: ExplainIo): ParsedArgs | 'help' {
  const { values, positionals } = parse(argv);
  if (values.help) return 'help';
  if (positionals.length > 1 || (positionals.length === 1 && values.path !== undefined)) {
    throw new UsageError(`one request target only (got ${[...positionals, ...(values.path !== undefined ? [values.path] : [])].map((p) => JSON.stringify(p)).join(', ')})`);
  }
  const target = values.path ?? positionals[0];
  if (!target) throw new UsageError('--path (or a URL) is required');
  const mode = values.mode.toUpperCase() as ConfiguredBodyMode;
  if (!BODY_MODES.includes(mode)) throw new UsageError(`--mode must be one of ${BODY_MODES.join(', ')}`);
  if (values.method !== undefined && !/^[A-Za-z]+$/.test(values.method)) throw new UsageError(`bad --method ${JSON.stringify(values.method)}`);

  const headers = values.header.map(parseHeader);
  let path = target;
  let authority = 'example.openai.azure.com';
  const url = /^https?:\/\/([^/?#]+)(.*)$/i.exec(path);
  if (url) {
    authority = url[1]!;
    path = url[2] || '/';
  }
  if (!path.startsWith('/')) throw new UsageError('--path must start with "/" (or be a full https:// URL)');
  // HTTP/1 `host` and HTTP/2 `:authority` are the same to Envoy: it forwards :authority.
  const host = headers.find(([name]) => name === 'host' || name === ':authority');
  if (host) authority = host[1];
  const rest = headers.filter(([name]) => name !== 'host' && name !== ':authority');
  const pseudo = rest.find(([name]) => name.startsWith(':'));
  if (pseudo) throw new UsageError(`set ${pseudo[0]} with --method/--path, not -H`);

  const notes: string[] = [];
  const body = bodyFrom(values, rest, io, notes) ?? Buffer.alloc(0);
  // transfer-encoding is framing between client and Envoy; Envoy's codec consumes it.
  const chunked = rest.some(([name, value]) => name === 'transfer-encoding' && /chunked/i.test(value));
  const forwarded = rest.filter(([name]) => name !== 'transfer-encoding');
  if (body.length > 0 && !chunked && !forwarded.some(([name]) => name === 'content-length')) forwarded.push(['content-length', String(body.length)]);
  const hasBodyOption = values.data.length + values['data-binary'].length + values.form.length > 0 || values['body-file'] !== undefined;
  return {
    request: { method: values.method ?? (hasBodyOption ? 'POST' : 'GET'), path, authority, headers: forwarded, body, mode },
    ...(values.config !== undefined ? { configOption: values.config } : {}),
    json: values.json,
    notes,
  };
}
