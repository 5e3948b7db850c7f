// Envoy's HTTP side around the emulated ext_proc filter: a node:http listener that takes a client
// request, runs it through EnvoyEmulator.request(), sends the resulting upstream request to a real
// upstream (host rewritten to the upstream, like auto_host_rewrite) and returns the processed response
// or the local reply to the client. Used by end-to-end tests with real SDK clients and by the demo.
//
// Simplifications: the client body is collected before processing starts (its chunks are passed on as
// they arrived); upstream connection failures become Envoy's 503 local reply without response-path
// processing (local replies skip ext_proc since 1.34).
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { EnvoyEmulator, HeaderList, Outcome, ResponseSpec, UpstreamRequest } from './emulator.js';

export interface DataPathOptions {
  emulator: EnvoyEmulator;
  /** 'http://127.0.0.1:PORT' */
  upstream: string;
  /** Port to listen on (default 0 = any free port), on 127.0.0.1. */
  listen?: number;
}

export interface DataPath {
  url: string;
  close(): Promise<void>;
}

// Connection-specific headers: framing is the codec's business on each hop.
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer']);

// node:http hands header values over as latin1 strings; the emulation works with UTF-8 strings.
const fromWire = (value: string) => Buffer.from(value, 'latin1').toString('utf8');
const toWire = (value: string) => Buffer.from(value, 'utf8').toString('latin1');

function pairs(raw: string[]): HeaderList {
  const out: HeaderList = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const key = raw[i].toLowerCase();
    if (!HOP_BY_HOP.has(key)) out.push([key, fromWire(raw[i + 1])]);
  }
  return out;
}

/** Regular headers for node:http, as [name, value] pairs (duplicates kept). */
function outgoing(list: HeaderList): Array<[string, string]> {
  return list.filter(([k]) => !k.startsWith(':') && !HOP_BY_HOP.has(k)).map(([k, v]) => [k, toWire(v)]);
}

class UpstreamFailure extends Error {}

function forward(target: URL, upstream: UpstreamRequest, signal: AbortSignal): Promise<ResponseSpec> {
  const header = (name: string) => upstream.headers.find(([k]) => k === name)?.[1];
  const headers = outgoing(upstream.headers.filter(([k]) => k !== 'host')).flat();
  headers.push('host', target.host);
  return new Promise<ResponseSpec>((resolve, reject) => {
    const req = http.request({
      host: target.hostname,
      port: target.port,
      method: header(':method') ?? 'GET',
      path: header(':path') ?? '/',
      headers,
      signal,
    });
    req.on('error', (err) => reject(new UpstreamFailure(err.message)));
    req.on('response', (res) => {
      const body: Buffer[] = [];
      res.on('data', (chunk: Buffer) => body.push(chunk));
      res.on('error', (err) => reject(new UpstreamFailure(err.message)));
      res.on('end', () =>
        resolve({
          headers: [[':status', String(res.statusCode ?? 502)], ...pairs(res.rawHeaders)],
          body: body.length > 0 ? body : undefined,
          trailers: res.rawTrailers.length > 0 ? pairs(res.rawTrailers) : undefined,
        }),
      );
    });
    try {
      if (upstream.body.length > 0) req.write(upstream.body);
      if (upstream.trailers && header('content-length') === undefined) req.addTrailers(outgoing(upstream.trailers));
      req.end();
    } catch (err) {
      req.destroy();
      reject(new UpstreamFailure((err as Error).message));
    }
  });
}

function reply(res: http.ServerResponse, status: number, headers: HeaderList, body: Buffer, trailers?: HeaderList): void {
  res.writeHead(status, outgoing(headers));
  if (trailers && !headers.some(([k]) => k === 'content-length')) res.addTrailers(outgoing(trailers));
  res.end(body);
}

function respond(res: http.ServerResponse, outcome: Outcome): void {
  switch (outcome.kind) {
    case 'local_reply':
      reply(res, outcome.status, outcome.headers, outcome.body);
      return;
    case 'upstream':
      if (outcome.response) reply(res, outcome.response.status, outcome.response.headers, outcome.response.body, outcome.response.trailers);
      else reply(res, 502, [], Buffer.from('no upstream response'));
      return;
    case 'reset':
    case 'aborted':
      res.destroy();
      return;
  }
}

export async function startDataPath(options: DataPathOptions): Promise<DataPath> {
  const target = new URL(options.upstream);
  const server = http.createServer((req, res) => {
    void (async () => {
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk as Buffer);
      const chunked = /chunked/i.test(String(req.headers['transfer-encoding'] ?? ''));
      // HTTP/1: no body (or content-length: 0) ends the stream with the headers; a chunked request with
      // an empty body still produces one empty end_of_stream DATA frame (docs/envoy-ext-proc.md#bodies).
      const body = chunks.length > 0 ? chunks : chunked ? [Buffer.alloc(0)] : undefined;
      const headers: HeaderList = [[':method', req.method ?? 'GET'], [':path', req.url ?? '/'], [':scheme', 'http'], ...pairs(req.rawHeaders)];
      try {
        const outcome = await options.emulator.request({
          headers,
          body,
          trailers: req.rawTrailers.length > 0 ? pairs(req.rawTrailers) : undefined,
          response: (upstream, signal) => forward(target, upstream, signal),
        });
        respond(res, outcome);
      } catch (err) {
        if (err instanceof UpstreamFailure) {
          reply(res, 503, [['content-type', 'text/plain']], Buffer.from(`upstream connect error or disconnect/reset before headers. reset reason: ${err.message}`));
        } else {
          reply(res, 500, [['content-type', 'text/plain']], Buffer.from(`emulator error: ${(err as Error).message}`));
        }
      }
    })().catch(() => res.destroy());
  });
  await new Promise<void>((resolve) => server.listen(options.listen ?? 0, '127.0.0.1', () => resolve()));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
