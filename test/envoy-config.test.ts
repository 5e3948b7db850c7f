// The shipped Envoy configs (envoy/*.yaml), checked without an Envoy binary:
// 1. each file decodes strictly against Envoy's own API protos (test/support/envoy-api.ts);
// 2. the settings a reviewer would check hold (why each matters: docs/envoy-ext-proc.md and docs/azure-images.md);
// 3. Envoy's route matching, emulated on the decoded routes, sends exactly the requests the server can
//    change to ext_proc (cross-checked against src/routes.ts), and skips the rest;
// 4. the variants differ from envoy.yaml only where they say they do.
import { readdirSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { matchImageRoute } from '../src/routes.js';
import {
  cluster,
  clusters,
  connectionManagers,
  envoyApi,
  EXT_PROC_PER_ROUTE_TYPE,
  extProcFilterOf,
  extProcRunsFor,
  routeMatches,
  HTTP_PROTOCOL_OPTIONS_TYPE,
  listeners,
  readExtProcFilter,
  seconds,
  StrictDecodeError,
  typeOf,
  type Json,
} from './support/envoy-api.js';

type Obj = { [key: string]: Json };

const ENVOY_DIR = path.resolve(import.meta.dirname, '../envoy');
const FILES = readdirSync(ENVOY_DIR).filter((f) => f.endsWith('.yaml')).sort();
const load = (file: string): Obj => envoyApi().decodeBootstrapFile(path.join(ENVOY_DIR, file));
/** Files that ship the ext_proc filter (all but the demo's control case). */
const WITH_FILTER = FILES.filter((f) => f !== 'envoy-demo-nofilter.yaml');

const MiB = 1024 * 1024;
const EXT_PROC_SOCKET = '/var/run/extproc/extproc.sock';

const clone = <T>(v: T): T => structuredClone(v);
const obj = (v: Json | undefined): Obj => v as Obj;
const list = (v: Json | undefined): Obj[] => (v ?? []) as Obj[];

function egress(config: Obj) {
  const hcms = connectionManagers(config).filter((m) => m.port === 10000);
  expect(hcms).toHaveLength(1);
  return hcms[0]!;
}

/** Whether Envoy opens an ext_proc stream for this request (the filter runs and the route doesn't disable it). */
function extProcRuns(config: Obj, method: string, fullPath: string): boolean {
  return extProcRunsFor(config, egress(config).routes, method, fullPath);
}

// Paths from docs/azure-images.md#routes and #matching-routes.
const IMAGE_REQUESTS: Array<[string, string]> = [
  ['POST', '/openai/deployments/gpt-image-2-1/images/generations?api-version=2025-04-01-preview'],
  ['POST', '/openai/deployments/gpt-image-2-1/images/edits?api-version=2025-04-01-preview'],
  ['POST', '/openai/deployments/gpt-image-2-1/images/generations/?api-version=2025-04-01-preview'],
  ['POST', '/OpenAI/Deployments/gpt-image-2-1/Images/Generations?api-version=2025-04-01-preview'],
  ['POST', '/api/projects/p1/openai/deployments/gpt-image-1.5/images/generations?api-version=2025-04-01-preview'],
  ['POST', '/team-a/openai/deployments/my%20dep/images/edits'],
  ['POST', '/openai/deployments/gpt-image-2-1/%69mages/generations?api-version=2025-04-01-preview'],
  ['POST', '/openai/v1/images/generations?api-version=preview'],
  ['POST', '/openai/v1/images/edits'],
  // Left unchanged by default; the server rewrites them only when configured (issue 6), so Envoy sends them.
  ['POST', '/openai/images/edits?api-version=2025-04-01-preview'],
  ['POST', '/v1/images/generations'],
  ['POST', '/mai/v1/images/generations'],
];
const OTHER_REQUESTS: Array<[string, string]> = [
  ['POST', '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21'],
  ['POST', '/openai/deployments/text-embedding-3-large/embeddings?api-version=2024-10-21'],
  ['POST', '/openai/v1/responses'],
  ['POST', '/openai/v1/chat/completions'],
  ['POST', '/openai/deployments/gpt-image-2-1/responses?api-version=2025-04-01-preview'],
  ['POST', '/openai/images/generations:submit?api-version=2023-06-01-preview'],
  ['GET', '/openai/operations/images/0123?api-version=2023-06-01-preview'],
  ['POST', '/openai/deployments/dall-e-2/images/variations'],
  ['POST', '/providers/blackforestlabs/v1/flux-2-pro?api-version=preview'],
  ['POST', '/v1/chat/completions'],
  ['GET', '/openai/deployments/gpt-image-2-1/images/generations?api-version=2025-04-01-preview'],
  ['HEAD', '/openai/v1/images/edits'],
  ['GET', '/'],
];

// ---------------------------------------------------------------------------------------------------

describe('strict decoding against the Envoy API protos', () => {
  it('finds the configs', () => {
    expect(FILES).toEqual([
      'envoy-buffered.yaml',
      'envoy-demo-nofilter.yaml',
      'envoy-demo.yaml',
      'envoy-multi-resource.yaml',
      'envoy-uds.yaml',
      'envoy.yaml',
    ]);
  });

  it.each(FILES)('%s decodes as envoy.config.bootstrap.v3.Bootstrap with no unknown field, enum or @type', (file) => {
    expect(() => load(file)).not.toThrow();
  });

  it('resolves every @type the configs use from the snapshot', () => {
    const used = new Set<string>();
    const walk = (v: Json): void => {
      if (Array.isArray(v)) v.forEach(walk);
      else if (v && typeof v === 'object') {
        const t = typeOf(v);
        if (t) used.add(t);
        Object.values(v).forEach(walk);
      }
    };
    FILES.forEach((f) => walk(load(f)));
    expect([...used].sort()).toEqual([
      'envoy.extensions.access_loggers.stream.v3.StdoutAccessLog',
      'envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute',
      'envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor',
      'envoy.extensions.filters.http.router.v3.Router',
      'envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
      'envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
      'envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
    ]);
    for (const t of used) expect(envoyApi().findType(t), t).toBeDefined();
  });

  describe('rejects what Envoy would reject', () => {
    const base = `
static_resources:
  clusters:
  - name: c
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
`;
    const issues = (yaml: string) => {
      try {
        envoyApi().decodeBootstrapYaml(yaml, 'test');
        return [];
      } catch (e) {
        if (!(e instanceof StrictDecodeError)) throw e;
        return e.issues;
      }
    };

    it('accepts the valid base document', () => {
      expect(issues(base)).toEqual([]);
    });

    it('an unknown field, with its path', () => {
      expect(issues(base.replace('connect_timeout: 1s', 'connect_timeout: 1s\n    connect_timout: 1s'))).toEqual([
        { path: '$.static_resources.clusters[0].connect_timout', message: 'unknown field "connect_timout" in envoy.config.cluster.v3.Cluster' },
      ]);
    });

    it('an unknown field inside an Any body', () => {
      const found = issues(base.replace('explicit_http_config:', 'max_requests_per_connection: 900\n        explicit_http_config:'));
      expect(found).toHaveLength(1);
      expect(found[0]!.message).toBe('unknown field "max_requests_per_connection" in envoy.extensions.upstreams.http.v3.HttpProtocolOptions');
    });

    it('a wrong enum name', () => {
      const found = issues(base.replace('connect_timeout: 1s', 'connect_timeout: 1s\n    type: STRICT_DNSS'));
      expect(found).toHaveLength(1);
      expect(found[0]).toMatchObject({ path: '$.static_resources.clusters[0].type' });
      expect(found[0]!.message).toContain('"STRICT_DNSS" is not a value of enum envoy.config.cluster.v3.Cluster.DiscoveryType');
    });

    it('an unknown @type, and a type URL without the type.googleapis.com/ prefix', () => {
      const unknown = issues(base.replace('v3.HttpProtocolOptions\n        explicit', 'v3.HttpProtocolOption\n        explicit'));
      expect(unknown.map((i) => i.message)).toEqual([
        'unknown @type envoy.extensions.upstreams.http.v3.HttpProtocolOption: not a message in the Envoy API snapshot',
      ]);
      const noPrefix = issues(base.replace('"@type": type.googleapis.com/', '"@type": '));
      expect(noPrefix[0]!.message).toBe('"@type" must start with type.googleapis.com/');
    });

    it('two members of one oneof, a scalar where a list is due, a bad Duration, a wrapper written as an object', () => {
      expect(issues(base.replace('{ http2_protocol_options: {} }', '{ http2_protocol_options: {}, http_protocol_options: {} }'))[0]!.message).toBe(
        'oneof protocol_config has more than one member: http_protocol_options, http2_protocol_options',
      );
      expect(issues(`${base}  listeners:\n  - name: l\n    filter_chains: {}\n`).map((i) => i.message)).toContain(
        'repeated field filter_chains expects a list, got an object',
      );
      expect(issues(base.replace('connect_timeout: 1s', 'connect_timeout: 1000ms'))[0]!.message).toContain('expected a Duration string');
      expect(
        issues(base.replace('explicit_http_config:', 'common_http_protocol_options: { max_requests_per_connection: { value: 900 } }\n        explicit_http_config:'))[0]!
          .message,
      ).toBe('expected an integer (uint32), got an object');
    });

    it('protoc-gen-validate rules Envoy enforces at load: names, required oneofs, bounds', () => {
      expect(issues(base.replace('  - name: c\n    connect_timeout', '  - connect_timeout'))).toEqual([
        { path: '$.static_resources.clusters[0]', message: 'field name of envoy.config.cluster.v3.Cluster must be a non-empty string' },
      ]);
      expect(issues(base.replace('{ http2_protocol_options: {} }', '{}'))[0]!.message).toBe(
        'oneof protocol_config of envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig requires one of: http_protocol_options, http2_protocol_options, http3_protocol_options',
      );
      expect(issues(`${base}admin: { address: { socket_address: { address: 127.0.0.1, port_value: 70000 } } }\n`)[0]!.message).toBe(
        '70000 violates lte 65535',
      );
    });

    it('deprecated fields, e.g. the old Cluster-level max_requests_per_connection (it belongs in HttpProtocolOptions)', () => {
      expect(issues(base.replace('connect_timeout: 1s', 'connect_timeout: 1s\n    max_requests_per_connection: 900'))[0]!.message).toBe(
        'deprecated field max_requests_per_connection: use its replacement',
      );
    });

    it('reports proto names and json names as the same field', () => {
      expect(issues(base.replace('connect_timeout: 1s', 'connectTimeout: 1s'))).toEqual([]);
      expect(issues(base.replace('connect_timeout: 1s', 'connect_timeout: 1s\n    connectTimeout: 1s'))[0]!.message).toBe(
        'field connect_timeout given twice (proto name and json name)',
      );
    });

    it('YAML duplicate keys', () => {
      expect(issues(base.replace('connect_timeout: 1s', 'connect_timeout: 1s\n    connect_timeout: 2s'))[0]!.message).toMatch(/^YAML: /);
    });
  });
});

describe('ext_proc filter settings', () => {
  it.each(WITH_FILTER)('%s: fail-closed, a Node-friendly message_timeout, response direction skipped', (file) => {
    const f = extProcFilterOf(load(file))!;
    expect(f.failureModeAllow).toBe(false); // fail-open would send Azure the unfixed body (docs/envoy-ext-proc.md#failures)
    expect(f.messageTimeoutMs).toBeGreaterThanOrEqual(1000); // the 200 ms default is too tight for Node (docs/envoy-ext-proc.md#timeouts)
    expect(f.messageTimeoutMs).toBeLessThanOrEqual(5000);
    expect(f.processingMode.request_header_mode).toBe('SEND');
    expect(f.processingMode.response_header_mode).toBe('SKIP');
    expect(f.processingMode.response_body_mode).toBe('NONE'); // streamed images flow untouched (docs/azure-images.md#streaming-responses)
    expect(f.processingMode.request_trailer_mode).toBe('SKIP');
    expect(f.processingMode.response_trailer_mode).toBe('SKIP');
  });

  it.each(WITH_FILTER.filter((f) => f !== 'envoy-buffered.yaml'))('%s: headers only, bodies on request via mode_override', (file) => {
    const f = extProcFilterOf(load(file))!;
    expect(f.processingMode.request_body_mode).toBe('NONE');
    expect(f.allowModeOverride).toBe(true);
  });

  it('envoy-buffered.yaml: static BUFFERED request bodies, no mode_override', () => {
    const f = extProcFilterOf(load('envoy-buffered.yaml'))!;
    expect(f.processingMode.request_body_mode).toBe('BUFFERED');
    expect(f.allowModeOverride).toBe(false);
  });

  it.each(WITH_FILTER)('%s: ext_proc runs first and the router last', (file) => {
    const names = egress(load(file)).httpFilters.map((f) => f.name);
    expect(names).toEqual(['envoy.filters.http.ext_proc', 'envoy.filters.http.router']);
  });

  it.each(WITH_FILTER)('%s: the ext_proc cluster speaks HTTP/2 and retires connections before Node resets them', (file) => {
    const config = load(file);
    const f = extProcFilterOf(config)!;
    const c = cluster(config, f.clusterName);
    expect(c, `cluster ${f.clusterName}`).toBeDefined();
    const options = Object.entries(obj(c!.typed_extension_protocol_options));
    expect(options).toHaveLength(1);
    const [key, http] = options[0]!;
    expect(key).toBe(HTTP_PROTOCOL_OPTIONS_TYPE); // the map key names the extension
    expect(typeOf(http)).toBe(HTTP_PROTOCOL_OPTIONS_TYPE);
    expect(Object.keys(obj(obj(http).explicit_http_config))).toEqual(['http2_protocol_options']);
    expect(f.maxRequestsPerConnection).toBeGreaterThan(0);
    expect(f.maxRequestsPerConnection).toBeLessThanOrEqual(1000); // nghttp2's reset bucket holds 1000
  });

  it.each(WITH_FILTER)('%s: ext_proc may receive a whole buffered body back', (file) => {
    const config = load(file);
    const listener = listeners(config).find((l) => l.name === 'azure_egress')!;
    const extProc = egress(config).httpFilters.find((f) => f.name === extProcFilterOf(config)!.filterName)!;
    const grpc = obj(obj(extProc.typed_config!.grpc_service).envoy_grpc);
    expect(Number(grpc.max_receive_message_length)).toBeGreaterThan(Number(listener.per_connection_buffer_limit_bytes));
  });

  it('readExtProcFilter gives the emulator the shipped mode of envoy/envoy.yaml', () => {
    expect(readExtProcFilter(path.join(ENVOY_DIR, 'envoy.yaml'))).toEqual({
      filterName: 'envoy.filters.http.ext_proc',
      processingMode: {
        request_header_mode: 'SEND',
        response_header_mode: 'SKIP',
        request_body_mode: 'NONE',
        response_body_mode: 'NONE',
        request_trailer_mode: 'SKIP',
        response_trailer_mode: 'SKIP',
      },
      allowModeOverride: true,
      messageTimeoutMs: 2000,
      failureModeAllow: false,
      maxRequestsPerConnection: 900,
      clusterName: 'extproc',
    });
    expect(() => readExtProcFilter(path.join(ENVOY_DIR, 'envoy-demo-nofilter.yaml'))).toThrow(/no ext_proc filter/);
  });
});

describe('listener, routes and timeouts', () => {
  it.each(FILES)('%s: the proxy listener is on 10000, admin on loopback 9901', (file) => {
    const config = load(file);
    expect(egress(config).listener).toBe('azure_egress');
    expect(obj(obj(config.admin).address)).toEqual({ socket_address: { address: '127.0.0.1', port_value: 9901 } });
  });

  // The listener has neither TLS nor authentication, and with credentials.apiKeyFile the server adds the
  // Azure key: open, it would relay anyone to the user's resource. Only the compose demo (a stand-in for
  // Azure, LiteLLM in another container, the port published on the host's loopback) listens wider.
  it.each(FILES)('%s: the proxy listener is on loopback unless it is the compose demo', (file) => {
    const listener = listeners(load(file)).find((l) => l.name === 'azure_egress')!;
    const address = obj(obj(listener.address).socket_address);
    if (file.startsWith('envoy-demo')) {
      expect(cluster(load(file), 'azure_openai')!.transport_socket, 'the demo talks to the local stand-in').toBeUndefined();
    } else {
      expect(address).toEqual({ address: '127.0.0.1', port_value: 10000 });
    }
  });

  it.each(FILES)('%s: buffers sized for image edits (one < 50 MB image + mask)', (file) => {
    const listener = listeners(load(file)).find((l) => l.name === 'azure_egress')!;
    const limit = Number(listener.per_connection_buffer_limit_bytes);
    expect(limit).toBeGreaterThanOrEqual(64 * MiB); // one < 50 MB image + mask + fields
    expect(limit).toBeLessThanOrEqual(256 * MiB);
  });

  it.each(FILES)('%s: every route waits long enough for image generation (minutes)', (file) => {
    const { hcm, routes } = egress(load(file));
    expect(seconds(hcm.stream_idle_timeout)).toBeGreaterThanOrEqual(300);
    expect(routes.length).toBeGreaterThan(0);
    for (const r of routes) {
      expect(seconds(r.route!.timeout), r.name).toBeGreaterThanOrEqual(300);
      expect(seconds(r.route!.idle_timeout), r.name).toBeGreaterThanOrEqual(300);
      expect(r.route!.auto_host_rewrite, r.name).toBe(true);
      expect(cluster(load(file), String(r.route!.cluster)), r.name).toBeDefined();
    }
    // The last route catches everything, so no request falls through to a 404 from Envoy.
    expect(routes.at(-1)!.match).toEqual({ prefix: '/' });
  });

  it.each(WITH_FILTER)('%s: per-route configs are keyed by the ext_proc filter name and only disable it', (file) => {
    const config = load(file);
    const { filterName } = extProcFilterOf(config)!;
    const vhosts = list(obj(egress(config).hcm.route_config).virtual_hosts);
    for (const vh of vhosts) expect(vh.typed_per_filter_config, 'virtual-host level configs are not emulated').toBeUndefined();
    for (const r of egress(config).routes) {
      for (const [key, value] of Object.entries(r.typed_per_filter_config ?? {})) {
        expect(key).toBe(filterName);
        expect(typeOf(value)).toBe(EXT_PROC_PER_ROUTE_TYPE);
        expect(value).toEqual({ '@type': `type.googleapis.com/${EXT_PROC_PER_ROUTE_TYPE}`, disabled: true });
      }
    }
  });

  it.each(WITH_FILTER)('%s: image requests reach ext_proc', (file) => {
    const config = load(file);
    for (const [method, p] of IMAGE_REQUESTS) expect(extProcRuns(config, method, p), `${method} ${p}`).toBe(true);
  });

  it.each(WITH_FILTER)('%s: other requests skip ext_proc entirely (ExtProcPerRoute disabled)', (file) => {
    const config = load(file);
    for (const [method, p] of OTHER_REQUESTS) expect(extProcRuns(config, method, p), `${method} ${p}`).toBe(false);
  });

  it('envoy-demo-nofilter.yaml never calls ext_proc', () => {
    const config = load('envoy-demo-nofilter.yaml');
    for (const [method, p] of IMAGE_REQUESTS) expect(extProcRuns(config, method, p)).toBe(false);
  });

  it('every POST the server matches reaches ext_proc in envoy.yaml, and only image calls do (property, against src/routes.ts)', () => {
    const config = load('envoy.yaml');
    const segment = fc.stringMatching(/^[A-Za-z0-9._~-]{1,12}$/);
    const word = (w: string) =>
      fc.array(fc.boolean(), { minLength: w.length, maxLength: w.length }).chain((upper) =>
        fc.array(fc.boolean(), { minLength: w.length, maxLength: w.length }).map((escape) =>
          [...w]
            .map((ch, i) => (upper[i] ? ch.toUpperCase() : ch))
            .map((ch, i) => (escape[i] && /[a-z]/i.test(ch) ? `%${ch.charCodeAt(0).toString(16)}` : ch))
            .join(''),
        ),
      );
    const pathArb = fc
      .record({
        prefix: fc.array(segment, { maxLength: 3 }),
        openai: word('openai'),
        middle: fc.oneof(
          fc.tuple(word('deployments'), segment).map(([d, s]) => `${d}/${s}`),
          word('v1'),
          segment,
        ),
        images: word('images'),
        op: fc.oneof(word('generations'), word('edits'), segment),
        slash: fc.boolean(),
        query: fc.constantFrom('', '?api-version=2025-04-01-preview', '?'),
      })
      .map((r) => `${r.prefix.map((s) => `/${s}`).join('')}/${r.openai}/${r.middle}/${r.images}/${r.op}${r.slash ? '/' : ''}${r.query}`);
    fc.assert(
      fc.property(pathArb, (p) => {
        const runs = extProcRuns(config, 'POST', p);
        if (matchImageRoute(p)) expect(runs, p).toBe(true);
        // And Envoy spends a call only on image-call shapes (or escaped paths it cannot judge).
        if (runs) expect(/\/images\/(generations|edits)\/?$/i.test(p.split('?')[0]!) || p.includes('%'), p).toBe(true);
      }),
      { numRuns: 3000 },
    );
  });
});

describe('upstreams', () => {
  it.each(FILES)('%s: TLS clusters validate Azure certificates for the host they connect to', (file) => {
    const config = load(file);
    for (const c of clusters(config)) {
      if (!c.transport_socket) continue;
      const tls = obj(obj(c.transport_socket).typed_config);
      expect(typeOf(tls)).toBe('envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext');
      const endpoints = list(obj(c.load_assignment).endpoints).flatMap((e) => list(e.lb_endpoints));
      expect(endpoints).toHaveLength(1);
      const address = obj(obj(obj(endpoints[0]!.endpoint).address).socket_address);
      expect(address.port_value).toBe(443);
      expect(tls.sni).toBe(address.address);
      const validation = obj(obj(tls.common_tls_context).validation_context);
      expect(obj(validation.trusted_ca).filename).toBe('/etc/ssl/certs/ca-certificates.crt');
      expect(validation.match_typed_subject_alt_names).toEqual([{ san_type: 'DNS', matcher: { exact: address.address } }]);
      expect(['LOGICAL_DNS', 'STRICT_DNS']).toContain(c.type); // auto_host_rewrite needs a hostname
    }
  });

  it('envoy.yaml, envoy-uds.yaml and envoy-buffered.yaml go to Azure over TLS; the demos to the stand-in in clear', () => {
    const tlsHost = (file: string) => obj(obj(cluster(load(file), 'azure_openai')!.transport_socket)?.typed_config)?.sni;
    for (const file of ['envoy.yaml', 'envoy-uds.yaml', 'envoy-buffered.yaml']) {
      expect(tlsHost(file)).toBe('YOUR_RESOURCE.openai.azure.com');
    }
    for (const file of ['envoy-demo.yaml', 'envoy-demo-nofilter.yaml']) {
      const azure = cluster(load(file), 'azure_openai')!;
      expect(azure.transport_socket).toBeUndefined();
      expect(list(list(obj(azure.load_assignment).endpoints)[0]!.lb_endpoints)[0]!.endpoint).toEqual({
        address: { socket_address: { address: 'azure', port_value: 8080 } },
      });
    }
  });

  it('the placeholder host cannot be a real Azure resource (underscore), so nothing leaks before it is replaced', () => {
    expect('YOUR_RESOURCE').toMatch(/_/);
  });

  it('envoy-uds.yaml reaches the server over the shared Unix socket and keeps the proxy listener on loopback', () => {
    const config = load('envoy-uds.yaml');
    const extproc = cluster(config, 'extproc')!;
    expect(extproc.type).toBe('STATIC');
    expect(list(list(obj(extproc.load_assignment).endpoints)[0]!.lb_endpoints)[0]!.endpoint).toEqual({
      address: { pipe: { path: EXT_PROC_SOCKET } },
    });
    const proxy = listeners(config).find((l) => l.name === 'azure_egress')!;
    expect(obj(obj(proxy.address).socket_address).address).toBe('127.0.0.1');
  });

  it('envoy-uds.yaml exposes only GET /ready of the admin API to the kubelet', () => {
    const config = load('envoy-uds.yaml');
    const probe = connectionManagers(config).find((m) => m.listener === 'probe')!;
    expect(probe.port).toBe(9902);
    const match = (method: string, p: string) => probe.routes.find((r) => routeMatches(r, method, p));
    expect(match('GET', '/ready')!.route).toEqual({ cluster: 'envoy_admin', timeout: '2s' });
    for (const [method, p] of [['POST', '/ready'], ['GET', '/quitquitquit'], ['POST', '/drain_listeners'], ['GET', '/config_dump']]) {
      expect(match(method!, p!)!.direct_response, `${method} ${p}`).toEqual({ status: 404 });
    }
    expect(list(obj(cluster(config, 'envoy_admin')!.load_assignment).endpoints)).toEqual([
      { lb_endpoints: [{ endpoint: { address: { socket_address: { address: '127.0.0.1', port_value: 9901 } } } }] },
    ]);
  });
});

describe('variants differ from envoy.yaml only where they say so', () => {
  const base = () => clone(load('envoy.yaml'));
  const staticRes = (c: Obj) => obj(c.static_resources);
  const hcmOf = (c: Obj) => obj(list(list(list(staticRes(c).listeners)[0]!.filter_chains)[0]!.filters)[0]!.typed_config);

  it('envoy-uds.yaml: listener address, extproc cluster, probe listener + admin cluster', () => {
    const uds = clone(load('envoy-uds.yaml'));
    const expected = base();
    list(staticRes(expected).listeners)[0]!.address = list(staticRes(uds).listeners)[0]!.address!;
    staticRes(expected).listeners = [...list(staticRes(expected).listeners), list(staticRes(uds).listeners)[1]!];
    const extproc = list(staticRes(expected).clusters)[0]!;
    delete extproc.dns_lookup_family;
    delete extproc.health_checks;
    extproc.type = 'STATIC';
    extproc.load_assignment = cluster(uds, 'extproc')!.load_assignment!;
    staticRes(expected).clusters = [...list(staticRes(expected).clusters), cluster(uds, 'envoy_admin')!];
    expect(uds).toEqual(expected);
  });

  it('envoy-buffered.yaml: request_body_mode BUFFERED and allow_mode_override false', () => {
    const expected = base();
    const extProc = obj(list(hcmOf(expected).http_filters)[0]!.typed_config);
    extProc.allow_mode_override = false;
    obj(extProc.processing_mode).request_body_mode = 'BUFFERED';
    expect(load('envoy-buffered.yaml')).toEqual(expected);
  });

  it('envoy-demo.yaml: the azure_openai cluster (the stand-in instead of TLS to Azure) and a listener LiteLLM\'s container can reach', () => {
    const demo = load('envoy-demo.yaml');
    const expected = base();
    list(staticRes(expected).clusters)[1] = cluster(demo, 'azure_openai')!;
    list(staticRes(expected).listeners)[0]!.address = { socket_address: { address: '0.0.0.0', port_value: 10000 } };
    expect(demo).toEqual(expected);
  });

  it('envoy-demo-nofilter.yaml: envoy-demo.yaml minus the ext_proc filter, its per-route configs and cluster', () => {
    const expected = clone(load('envoy-demo.yaml'));
    const hcm = hcmOf(expected);
    hcm.http_filters = list(hcm.http_filters).slice(1);
    for (const r of list(list(obj(hcm.route_config).virtual_hosts)[0]!.routes)) delete r.typed_per_filter_config;
    staticRes(expected).clusters = list(staticRes(expected).clusters).filter((c) => c.name !== 'extproc');
    expect(load('envoy-demo-nofilter.yaml')).toEqual(expected);
  });
});
