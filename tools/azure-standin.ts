// A small local stand-in for Azure OpenAI's image routes, for the compose demo, `npm run demo` and tests.
// It enforces what matters to this project exactly as Azure OpenAI does:
// a `model` in the body of a deployment-route request is a 400 "The model '<deployment>' does not
// exist.", while on the v1 routes `model` is required and names the deployment. It never logs bodies or
// credentials.
//
//   node dist/tools/azure-standin.js  env PORT (8080), HOST (0.0.0.0), AZURE_DEPLOYMENTS (gpt-image-2-1),
//                                     AZURE_API_KEY (optional: when set, the only key accepted)
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';
import { listMultipartParts, parseBoundary, type MultipartPart } from '../src/body/index.js';

export interface StandinOptions {
  port?: number;
  host?: string;
  /** Deployment names that exist (default: env AZURE_DEPLOYMENTS, comma-separated, else gpt-image-2-1). */
  deployments?: string[];
  /** When set, the only api-key / bearer token accepted (default: env AZURE_API_KEY; unset = any). */
  apiKey?: string;
  /** One line per request (method, path without query, status); never bodies or keys. */
  log?: (line: string) => void;
}

export interface RecordedRequest {
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export interface Standin {
  url: string;
  port: number;
  /** Every request received, in order (tests inspect what the filter forwarded). */
  requests: RecordedRequest[];
  close(): Promise<void>;
}

interface Reply {
  status: number;
  body: unknown;
  /** Server-sent events instead of one JSON body (`stream: true`). */
  events?: Array<{ event: string; data: unknown }>;
}

// A 1x1 red PNG: what "an image" is for the demo.
export const TINY_PNG_BASE64 =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR42mP4z8AAAAMBAQD3A0FDAAAAAElFTkSuQmCC';

const MAX_BODY_BYTES = 256 * 1024 * 1024;

// Azure OpenAI's exact error bodies for these cases, and the 401/404 texts of Azure's front end.
const NOT_FOUND: Reply = { status: 404, body: { error: { code: '404', message: 'Resource not found' } } };
const UNAUTHORIZED: Reply = {
  status: 401,
  body: {
    error: {
      code: '401',
      message:
        'Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.',
    },
  },
};
const DEPLOYMENT_NOT_FOUND: Reply = {
  status: 404,
  body: {
    error: {
      code: 'DeploymentNotFound',
      message:
        'The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.',
    },
  },
};
const modelDoesNotExist = (deployment: string): Reply => ({
  status: 400,
  body: { error: { message: `The model '${deployment}' does not exist.`, type: 'image_generation_user_error', param: 'model', code: 'invalid_value' } },
});
const invalidRequest = (message: string, param: string | null = null, code: string | null = null): Reply => ({
  status: 400,
  body: { error: { message, type: 'invalid_request_error', param, code } },
});
const unknownParameter = (name: string) => invalidRequest(`Unknown parameter: '${name}'.`, name, 'unknown_parameter');
const missingParameter = (name: string) => invalidRequest(`Missing required parameter: '${name}'.`, name, 'missing_required_parameter');

// Fields gpt-image deployments reject (response_format is unsupported for gpt-image models; extra_body is
// an SDK artefact Azure answers with unknown_parameter).
const REJECTED_FIELDS = ['response_format', 'extra_body'];

const DEPLOYMENT_ROUTE = /^(?:\/[^/]+)*?\/openai\/deployments\/([^/]+)\/images\/(generations|edits)\/?$/i;
const V1_ROUTE = /^(?:\/[^/]+)*?\/openai\/v1\/images\/(generations|edits)\/?$/i;

type Operation = 'generations' | 'edits';

/** Request fields of an image call, from either a JSON or a multipart body. */
interface ImageFields {
  has(name: string): boolean;
  get(name: string): string | undefined;
  hasImage: boolean;
}

// ---------------------------------------------------------------------------------------------------
// Bodies.

/** The boundary of a multipart/form-data content-type (quoted or not), or undefined. */
export function multipartBoundary(contentType: string | undefined): string | undefined {
  if (!contentType || !/^multipart\/form-data\s*(;|$)/i.test(contentType)) return undefined;
  return parseBoundary(contentType) ?? undefined;
}

function jsonFields(body: Buffer): ImageFields | Reply {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    return invalidRequest(
      "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
    );
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    return invalidRequest('The request body must be a JSON object.');
  }
  const record = parsed as Record<string, unknown>;
  return {
    has: (name) => Object.hasOwn(record, name),
    get: (name) => (typeof record[name] === 'string' ? (record[name] as string) : record[name] === undefined ? undefined : JSON.stringify(record[name])),
    hasImage: false,
  };
}

function multipartFields(parts: MultipartPart[]): ImageFields {
  const text = (name: string) => parts.find((p) => p.name === name && p.filename === undefined)?.content.toString('utf8');
  return {
    has: (name) => parts.some((p) => p.name === name),
    get: text,
    hasImage: parts.some((p) => (p.name === 'image' || p.name === 'image[]') && p.content.length > 0),
  };
}

function readFields(operation: Operation, headers: http.IncomingHttpHeaders, body: Buffer): ImageFields | Reply {
  const contentType = headers['content-type'];
  if (operation === 'generations') {
    if (!/^application\/json\s*(;|$)/i.test(contentType ?? '')) {
      return invalidRequest(`Unsupported content type: '${contentType ?? ''}'. This API method only accepts 'application/json' requests.`);
    }
    return jsonFields(body);
  }
  const boundary = multipartBoundary(contentType);
  if (!boundary) {
    return invalidRequest(`Unsupported content type: '${contentType ?? ''}'. This API method only accepts 'multipart/form-data' requests.`);
  }
  // The server's own multipart reader; a part that is not form-data with a name is malformed here too.
  const parts = listMultipartParts(body, boundary);
  return parts && parts.every((part) => part.name !== null) ? multipartFields(parts) : invalidRequest('The multipart/form-data body could not be parsed.');
}

// ---------------------------------------------------------------------------------------------------
// Routing.

function authorized(headers: http.IncomingHttpHeaders, apiKey: string | undefined): boolean {
  const header = headers['api-key'];
  const bearer = /^Bearer\s+(\S+)$/i.exec(headers.authorization ?? '')?.[1];
  const key = (typeof header === 'string' && header !== '' ? header : undefined) ?? bearer;
  return key !== undefined && (apiKey === undefined || key === apiKey);
}

function imageResult(operation: Operation, fields: ImageFields): Reply {
  if (!fields.get('prompt')) return missingParameter('prompt');
  if (operation === 'edits' && !fields.hasImage) return missingParameter('image');
  const rejected = REJECTED_FIELDS.find((name) => fields.has(name));
  if (rejected) return unknownParameter(rejected);
  const n = Math.min(Math.max(Number.parseInt(fields.get('n') ?? '1', 10) || 1, 1), 10);
  const created = Math.floor(Date.now() / 1000);
  const data = Array.from({ length: n }, () => ({ b64_json: TINY_PNG_BASE64 }));
  const usage = { input_tokens: 12, output_tokens: 272 * n, total_tokens: 12 + 272 * n, input_tokens_details: { text_tokens: 12, image_tokens: 0 } };
  const result = { created, data, usage };
  if (fields.get('stream') === 'true') {
    // Event names from openai-node src/resources/images.ts.
    return { status: 200, body: null, events: [{ event: `image_${operation === 'edits' ? 'edit' : 'generation'}.completed`, data: { type: `image_${operation === 'edits' ? 'edit' : 'generation'}.completed`, b64_json: TINY_PNG_BASE64, created_at: created, usage } }] };
  }
  return { status: 200, body: result };
}

function route(req: RecordedRequest, deployments: ReadonlySet<string>, apiKey: string | undefined): Reply {
  const url = new URL(req.path, 'http://standin');
  const deploymentMatch = DEPLOYMENT_ROUTE.exec(url.pathname);
  const v1Match = V1_ROUTE.exec(url.pathname);
  if (req.method !== 'POST' || (!deploymentMatch && !v1Match)) return NOT_FOUND;

  if (deploymentMatch) {
    // The classic surface: api-version is mandatory, the deployment comes from the URL.
    if (!url.searchParams.get('api-version')) return NOT_FOUND;
    if (!authorized(req.headers, apiKey)) return UNAUTHORIZED;
    let deployment: string;
    try {
      deployment = decodeURIComponent(deploymentMatch[1]!);
    } catch {
      return NOT_FOUND;
    }
    if (!deployments.has(deployment)) return DEPLOYMENT_NOT_FOUND;
    const operation = deploymentMatch[2]!.toLowerCase() as Operation;
    const fields = readFields(operation, req.headers, req.body);
    if (!('has' in fields)) return fields;
    // Azure checks any top-level `model` (whatever its value) and fails for a deployment name; that is
    // the bug this project fixes.
    if (fields.has('model')) return modelDoesNotExist(deployment);
    return imageResult(operation, fields);
  }

  // The v1 surface: api-version optional, `model` required and names the deployment (docs/azure-images.md#the-v1-routes).
  if (!authorized(req.headers, apiKey)) return UNAUTHORIZED;
  const operation = v1Match![1]!.toLowerCase() as Operation;
  const fields = readFields(operation, req.headers, req.body);
  if (!('has' in fields)) return fields;
  const model = fields.get('model');
  if (!model) return missingParameter('model');
  if (!deployments.has(model)) return DEPLOYMENT_NOT_FOUND;
  return imageResult(operation, fields);
}

function send(res: http.ServerResponse, reply: Reply): void {
  if (reply.events) {
    res.writeHead(reply.status, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    for (const e of reply.events) res.write(`event: ${e.event}\ndata: ${JSON.stringify(e.data)}\n\n`);
    res.end();
    return;
  }
  const text = JSON.stringify(reply.body);
  res.writeHead(reply.status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    // Azure answers every call with a request id; clients log it.
    'apim-request-id': randomUUID(),
  });
  res.end(text);
}

function deploymentsFromEnv(): string[] {
  return (process.env.AZURE_DEPLOYMENTS ?? 'gpt-image-2-1')
    .split(',')
    .map((d) => d.trim())
    .filter((d) => d !== '');
}

export async function startAzureStandin(options: StandinOptions = {}): Promise<Standin> {
  const deployments = new Set(options.deployments ?? deploymentsFromEnv());
  const apiKey = options.apiKey ?? (process.env.AZURE_API_KEY || undefined);
  const requests: RecordedRequest[] = [];

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) tooLarge = true;
      else chunks.push(chunk);
    });
    req.on('end', () => {
      const recorded: RecordedRequest = { method: req.method ?? '', path: req.url ?? '/', headers: req.headers, body: Buffer.concat(chunks) };
      requests.push(recorded);
      const reply = tooLarge ? invalidRequest('Request body too large.') : route(recorded, deployments, apiKey);
      if (tooLarge) reply.status = 413;
      options.log?.(`${recorded.method} ${recorded.path.split('?')[0]} -> ${reply.status}`);
      send(res, reply);
    });
  });
  // gpt-image calls take minutes on real Azure; nothing here does, but never cut a slow client short.
  server.requestTimeout = 0;

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const host = options.host && options.host !== '0.0.0.0' && options.host !== '::' ? options.host : '127.0.0.1';
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    port,
    requests,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      }),
  };
}

// Run directly (compose service `azure`): node dist/tools/azure-standin.js
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const port = Number(process.env.PORT ?? 8080);
  const standin = await startAzureStandin({
    port,
    host: process.env.HOST ?? '0.0.0.0',
    log: (line) => process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), msg: line })}\n`),
  });
  process.stdout.write(`${JSON.stringify({ msg: 'azure stand-in ready', port: standin.port, deployments: deploymentsFromEnv() })}\n`);
  // The recorded requests are for tests; a long-running demo must not grow without bound.
  setInterval(() => standin.requests.splice(0), 60_000).unref();
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      void standin.close().finally(() => process.exit(0));
    });
  }
}
