// The deployment styles beyond the sidecar (docs/deployment-styles.md): a shared pool (deploy/pool),
// Envoy Gateway (deploy/gateway), Istio sidecars (deploy/istio), several Azure resources behind one Envoy
// (envoy/envoy-multi-resource.yaml). Nothing of Kubernetes, Envoy Gateway, Istio or Envoy runs here, so
// every object is checked against the real schemas (test/support/manifests.ts), every embedded Envoy
// config through the strict proto decode (test/support/envoy-api.ts), and the names, ports, addresses
// and timings that must agree between files are cross-checked. Each style has one `problems()` function;
// the mutation tests prove it catches a wrong field, enum, port and name.
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { loadConfig } from '../src/config.js';
import { EXT_PROC_SERVICE } from '../src/proto.js';
import { HEALTH_SERVICES } from '../src/server.js';
import {
  cluster,
  connectionManagers,
  envoyApi,
  EXT_PROC_TYPE,
  extProcFilterOf,
  listeners,
  routeMatches,
  seconds,
  typeOf,
  type Json,
  type RouteView,
} from './support/envoy-api.js';
import { crdIssues, loadModels, manifestIssues, modelIssues, readManifests, type Manifest } from './support/manifests.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const read = (rel: string) => readFileSync(path.join(ROOT, rel), 'utf8');
type Obj = Record<string, Json>;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any;

const PLACEHOLDER = 'YOUR_RESOURCE.openai.azure.com';
/** A host that passes the CRDs' hostname patterns, for validating files that carry the placeholder. */
const EXAMPLE_HOST = 'myres.openai.azure.com';

const envoyYaml = () => envoyApi().decodeBootstrapFile(path.join(ROOT, 'envoy/envoy.yaml'));
const envoyImageRegexes = (): string[] =>
  connectionManagers(envoyYaml())
    .find((m) => m.port === 10000)!
    .routes.filter((r) => r.name !== 'azure_other')
    .map((r) => String((r.match.safe_regex as Obj).regex));

function decodeStrict(typeName: string, value: unknown, where: string): string[] {
  return envoyApi()
    .decode(typeName, value)
    .issues.map((i) => `${where} ${i.path}: ${i.message}`);
}

const byKind = (docs: Manifest[], kind: string): Any[] => docs.filter((d) => d.kind === kind);
const one = (docs: Manifest[], kind: string): Any => {
  const found = byKind(docs, kind);
  if (found.length !== 1) throw new Error(`expected one ${kind}, found ${found.length}`);
  return found[0];
};
const env = (container: Any): Record<string, string> => Object.fromEntries((container.env ?? []).map((e: Any) => [e.name, String(e.value)]));
const portOf = (address: string): number => Number(address.slice(address.lastIndexOf(':') + 1));
const durationMs = (d: string): number => {
  const m = /^(\d+)(ms|s|m|h)$/.exec(d);
  if (!m) throw new Error(`duration ${d}`);
  return Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
};
const quantityBytes = (q: string): number => {
  const m = /^(\d+)(Ki|Mi|Gi)?$/.exec(q);
  if (!m) throw new Error(`quantity ${q}`);
  return Number(m[1]) * (m[2] ? { Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3 }[m[2] as 'Ki' | 'Mi' | 'Gi'] : 1);
};
const MiB = 1024 * 1024;

/** The Kustomization's resources must be exactly the other YAML files of its folder (minus `extra`). */
function kustomizationProblems(dir: string, kustomization: Any, extra: string[] = []): string[] {
  const files = readdirSync(path.join(ROOT, dir))
    .filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml' && !extra.includes(f))
    .sort();
  const listed = [...(kustomization.resources as string[])].sort();
  return JSON.stringify(files) === JSON.stringify(listed) ? [] : [`${dir}/kustomization.yaml lists ${listed.join(', ')}; the folder has ${files.join(', ')}`];
}

// ---------------------------------------------------------------------------------------------------
// The pool.

interface Pool {
  kustomization: Any;
  objects: Manifest[];
  cluster: Any;
}

const POOL_FILES = ['namespace.yaml', 'deployment.yaml', 'service.yaml', 'hpa.yaml', 'pdb.yaml'];
function readPool(): Pool {
  return {
    kustomization: YAML.parse(read('deploy/pool/kustomization.yaml')),
    objects: POOL_FILES.flatMap((f) => readManifests(`deploy/pool/${f}`)),
    cluster: YAML.parse(read('deploy/pool/envoy-cluster.yaml')),
  };
}

/** The worst time an Envoy health checker needs to see NOT_SERVING (each check may time out). */
function detectionMs(hc: { interval: string; timeout: string; jitter?: string; threshold: number }): number {
  return hc.threshold * (durationMs(hc.interval) + (hc.jitter ? durationMs(hc.jitter) : 0) + durationMs(hc.timeout));
}
const envoyDuration = (d: Json | undefined): string => `${Math.round(seconds(d)! * 1000)}ms`;

function poolProblems(pool: Pool): string[] {
  const problems: string[] = [];
  for (const object of pool.objects) problems.push(...modelIssues(object));
  problems.push(...kustomizationProblems('deploy/pool', pool.kustomization, ['envoy-cluster.yaml']));
  problems.push(...decodeStrict('envoy.config.cluster.v3.Cluster', pool.cluster, 'envoy-cluster.yaml'));
  if (problems.length > 0) return problems;

  const check = (ok: boolean, message: string) => void (ok || problems.push(message));
  const namespace = String(pool.kustomization.namespace);
  check(one(pool.objects, 'Namespace').metadata.name === namespace, 'Namespace object is not the kustomization namespace');
  const deployment = one(pool.objects, 'Deployment');
  const service = one(pool.objects, 'Service');
  const hpa = one(pool.objects, 'HorizontalPodAutoscaler');
  const pdb = one(pool.objects, 'PodDisruptionBudget');
  const labels = deployment.spec.template.metadata.labels;
  const selects = (selector: Record<string, string>) => Object.entries(selector).every(([k, v]) => labels[k] === v);
  check(selects(deployment.spec.selector.matchLabels), 'Deployment selector does not match its pods');
  check(selects(service.spec.selector), 'Service selector does not match the pods');
  check(selects(pdb.spec.selector.matchLabels), 'PodDisruptionBudget selector does not match the pods');
  check(hpa.spec.scaleTargetRef.kind === 'Deployment' && hpa.spec.scaleTargetRef.name === deployment.metadata.name, 'HPA does not scale the Deployment');
  check(service.spec.clusterIP === 'None', 'Service is not headless: Envoy would balance per connection');

  const container = deployment.spec.template.spec.containers.find((c: Any) => c.name === 'extproc');
  const vars = env(container);
  // The server accepts the environment as given (same validation as at start).
  let config: ReturnType<typeof loadConfig> | undefined;
  try {
    config = loadConfig(vars);
  } catch (error) {
    problems.push(`the server refuses the Deployment's environment: ${(error as Error).message}`);
    return problems;
  }
  const listenPort = portOf(vars.EXTPROC_LISTEN!);
  const namedPort = (name: string) => container.ports.find((p: Any) => p.name === name)?.containerPort;
  check(namedPort('grpc') === listenPort, `container port grpc (${namedPort('grpc')}) is not EXTPROC_LISTEN's port ${listenPort}`);
  check(namedPort('metrics') === portOf(vars.EXTPROC_ADMIN_LISTEN!), 'container port metrics is not EXTPROC_ADMIN_LISTEN');
  const svcPort = service.spec.ports.find((p: Any) => p.name === 'grpc');
  check(svcPort?.targetPort === 'grpc' || svcPort?.targetPort === listenPort, `Service targetPort ${svcPort?.targetPort} is not the grpc container port`);
  for (const probe of ['startupProbe', 'readinessProbe'] as const) {
    check(container[probe]?.grpc?.port === listenPort, `${probe} does not check gRPC health on the ext_proc port`);
  }
  // Liveness must stay green while draining (gRPC health is NOT_SERVING then): the admin /healthz.
  check(container.livenessProbe?.httpGet?.path === '/healthz' && namedPort(container.livenessProbe.httpGet.port) !== undefined, 'livenessProbe is not /healthz on a named admin port');

  // BENCHMARKS.md "Sizing": one core per process; memory = process (~160 MiB on Node 24) + held bodies
  // (limits.globalHeldBytes) + ~25 MiB GC headroom.
  const limits = container.resources.limits;
  check(limits.cpu === '1', 'cpu limit is not one core (one Node process uses at most one)');
  const held = (config.limits as { globalHeldBytes: number }).globalHeldBytes;
  check(quantityBytes(limits.memory) >= 160 * MiB + held + 25 * MiB, `memory limit ${limits.memory} is below process + globalHeldBytes + headroom`);
  check(hpa.spec.minReplicas >= 2, 'fewer than two replicas: a drain would leave no server');
  check(pdb.spec.maxUnavailable === 1, 'PDB allows more than one replica down');

  // The Envoy cluster reaches this Service, checks the health the server reports, within its drain delay.
  const c = pool.cluster;
  const endpoint = c.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address;
  check(c.type === 'STRICT_DNS', `cluster type ${c.type} (STRICT_DNS gives one endpoint per replica)`);
  check(endpoint.address === `${service.metadata.name}.${namespace}.svc.cluster.local`, `cluster address ${endpoint.address} is not the Service's DNS name`);
  check(endpoint.port_value === svcPort.port, `cluster port ${endpoint.port_value} is not the Service port ${svcPort.port}`);
  const http = c.typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions'];
  check(http?.explicit_http_config?.http2_protocol_options !== undefined, 'cluster does not speak HTTP/2');
  const maxRequests = http?.common_http_protocol_options?.max_requests_per_connection;
  check(maxRequests > 0 && maxRequests <= 1000, 'max_requests_per_connection must be set and <= 1000 (Node resets connections after 1000 client resets)');
  check(c.outlier_detection !== undefined, 'no outlier detection');
  const hc = c.health_checks[0];
  check(HEALTH_SERVICES.includes(hc.grpc_health_check?.service_name), `health check service ${hc.grpc_health_check?.service_name} is not one the server reports`);
  const detect = detectionMs({ interval: envoyDuration(hc.interval), timeout: envoyDuration(hc.timeout), jitter: hc.interval_jitter && envoyDuration(hc.interval_jitter), threshold: hc.unhealthy_threshold });
  check(detect < config.drainDelayMs, `Envoy needs up to ${detect} ms to see a drain; the drain delay is ${config.drainDelayMs} ms`);
  const grace = deployment.spec.template.spec.terminationGracePeriodSeconds * 1000;
  check(grace > config.drainDelayMs + config.shutdownDeadlineMs, 'terminationGracePeriodSeconds does not cover drain delay + shutdown deadline');
  return problems;
}

// ---------------------------------------------------------------------------------------------------
// Envoy Gateway.

function readGateway(host = EXAMPLE_HOST): { kustomization: Any; objects: Manifest[] } {
  const files = ['backend.yaml', 'httproute.yaml', 'extension-policy.yaml', 'client-traffic-policy.yaml'];
  return {
    kustomization: YAML.parse(read('deploy/gateway/kustomization.yaml')),
    objects: files.flatMap((f) => readManifests(`deploy/gateway/${f}`)).map((o) => JSON.parse(JSON.stringify(o).replaceAll(PLACEHOLDER, host)) as Manifest),
  };
}

function gatewayProblems(gateway: { kustomization: Any; objects: Manifest[] }, pool: Pool): string[] {
  const problems: string[] = [];
  for (const object of gateway.objects) problems.push(...crdIssues(object));
  problems.push(...kustomizationProblems('deploy/gateway', gateway.kustomization));
  if (problems.length > 0) return problems;
  const check = (ok: boolean, message: string) => void (ok || problems.push(message));

  const backend = one(gateway.objects, 'Backend');
  const route = one(gateway.objects, 'HTTPRoute');
  const policy = one(gateway.objects, 'EnvoyExtensionPolicy');
  const clientPolicy = one(gateway.objects, 'ClientTrafficPolicy');
  const fqdn = backend.spec.endpoints[0].fqdn;
  check(fqdn.port === 443, 'Backend port is not 443');
  check(backend.spec.tls?.sni === fqdn.hostname, 'Backend TLS SNI is not its hostname');
  check(backend.spec.tls?.wellKnownCACertificates === 'System', 'Backend TLS does not verify against the system CAs');
  for (const rule of route.spec.rules) {
    for (const ref of rule.backendRefs) {
      check(ref.group === 'gateway.envoyproxy.io' && ref.kind === 'Backend' && ref.name === backend.metadata.name && ref.port === fqdn.port, `rule ${rule.name}: backendRef is not the Backend ${backend.metadata.name}:${fqdn.port}`);
    }
    const rewrite = rule.filters?.find((f: Any) => f.type === 'URLRewrite');
    check(rewrite?.urlRewrite?.hostname === fqdn.hostname, `rule ${rule.name}: Host is not rewritten to the Azure host`);
    check(durationMs(rule.timeouts?.request ?? '15s') >= 300_000, `rule ${rule.name}: request timeout under 5 minutes`);
  }
  check(JSON.stringify(route.spec.parentRefs.map((p: Any) => p.name)) === JSON.stringify(clientPolicy.spec.targetRefs.map((t: Any) => t.name)), 'ClientTrafficPolicy targets another Gateway than the HTTPRoute');
  const listener = listeners(envoyYaml()).find((l) => l.name === 'azure_egress')!;
  check(quantityBytes(clientPolicy.spec.connection.bufferLimit) === Number(listener.per_connection_buffer_limit_bytes), 'bufferLimit differs from envoy/envoy.yaml');

  // The policy: only the image rule, the pool, envoy.yaml's filter settings.
  const ruleNames = route.spec.rules.map((r: Any) => r.name);
  check(policy.spec.targetRefs.length === 1, 'the policy targets more than the image rule');
  const target = policy.spec.targetRefs[0];
  check(target.kind === 'HTTPRoute' && target.name === route.metadata.name && ruleNames.includes(target.sectionName), `policy target ${target.kind}/${target.name}/${target.sectionName} is not a rule of the HTTPRoute`);
  const imageRule = route.spec.rules.find((r: Any) => r.name === target.sectionName) ?? { matches: [] };
  check(
    JSON.stringify(imageRule?.matches.map((m: Any) => [m.path.type, m.path.value, m.method])) === JSON.stringify(envoyImageRegexes().map((r) => ['RegularExpression', r, 'POST'])),
    'the image rule does not match exactly the image routes of envoy/envoy.yaml',
  );
  const ext = policy.spec.extProc;
  check(ext.length === 1, 'more than one ext_proc');
  const e = ext[0];
  const service = one(pool.objects, 'Service');
  for (const ref of e.backendRefs) {
    // CEL rules of the CRD (not evaluated by the schema check): Service/Backend kinds, core group.
    check(['Service', 'ServiceImport', 'Backend'].includes(ref.kind) && ['', 'multicluster.x-k8s.io', 'gateway.envoyproxy.io'].includes(ref.group ?? ''), 'backendRefs kind/group not allowed by the CRD');
    check(ref.kind === 'Service' && ref.name === service.metadata.name && ref.namespace === pool.kustomization.namespace, `ext_proc backend ${ref.namespace}/${ref.name} is not the pool Service`);
    check(service.spec.ports.some((p: Any) => p.port === ref.port), `ext_proc backend port ${ref.port} is not a port of the pool Service`);
  }
  check(e.backendRef === undefined, 'backendRef is deprecated (CEL rule): use backendRefs');
  const filter = extProcFilterOf(envoyYaml())!;
  check(JSON.stringify(e.processingMode?.request) === '{}', 'request processing must send headers only (no body mode)');
  check(e.processingMode?.response === undefined, 'responses must not be sent to the server');
  check(e.processingMode?.allowModeOverride === filter.allowModeOverride, 'allowModeOverride differs from envoy/envoy.yaml');
  check(durationMs(e.messageTimeout) === filter.messageTimeoutMs, `messageTimeout ${e.messageTimeout} differs from envoy/envoy.yaml`);
  check(e.failOpen === false, 'not fail-closed');
  const active = e.backendSettings.healthCheck.active;
  check(active.type === 'GRPC' && active.grpc?.service === EXT_PROC_SERVICE, 'health check is not gRPC against the ext_proc service');
  const drainMs = loadConfig(env(one(pool.objects, 'Deployment').spec.template.spec.containers[0])).drainDelayMs;
  check(detectionMs({ interval: active.interval, timeout: active.timeout, threshold: active.unhealthyThreshold }) < drainMs, 'health check too slow for the pool drain delay');
  check(e.backendSettings.circuitBreaker.maxRequestsPerConnection === pool.cluster.typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions'].common_http_protocol_options.max_requests_per_connection, 'maxRequestsPerConnection differs from the pool cluster');
  check(e.backendSettings.healthCheck.passive !== undefined, 'no outlier detection');
  return problems;
}

// ---------------------------------------------------------------------------------------------------
// Istio.

const ISTIO_FILES = ['service-entry.yaml', 'destination-rule.yaml', 'virtual-service.yaml', 'envoy-filter.yaml'];
function readIstio(): { kustomization: Any; objects: Manifest[] } {
  return { kustomization: YAML.parse(read('deploy/istio/kustomization.yaml')), objects: ISTIO_FILES.flatMap((f) => readManifests(`deploy/istio/${f}`)) };
}

/** Strict decode of each EnvoyFilter patch value as the Envoy type its applyTo names. */
const PATCH_TYPES: Record<string, string> = {
  CLUSTER: 'envoy.config.cluster.v3.Cluster',
  LISTENER: 'envoy.config.listener.v3.Listener',
  HTTP_FILTER: 'envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter',
  HTTP_ROUTE: 'envoy.config.route.v3.Route',
};

function patchProblems(patch: Any, index: number): string[] {
  const type = PATCH_TYPES[patch.applyTo];
  if (!type) return [`configPatches[${index}]: applyTo ${patch.applyTo} not decoded by this test`];
  const issues = decodeStrict(type, patch.patch.value, `configPatches[${index}] (${patch.applyTo})`);
  // A MERGE value is a fragment: fields Envoy requires of the whole object may be absent from it.
  return patch.patch.operation === 'MERGE' ? issues.filter((i) => !/required field \w+ of .* is missing|oneof \w+ of .* requires one of/.test(i)) : issues;
}

function istioProblems(istio: { kustomization: Any; objects: Manifest[] }, pool: Pool): string[] {
  const problems: string[] = [];
  for (const object of istio.objects) problems.push(...modelIssues(object));
  problems.push(...kustomizationProblems('deploy/istio', istio.kustomization));
  const filter = one(istio.objects, 'EnvoyFilter');
  filter.spec.configPatches.forEach((p: Any, i: number) => problems.push(...patchProblems(p, i)));
  if (problems.length > 0) return problems;
  const check = (ok: boolean, message: string) => void (ok || problems.push(message));

  const entry = one(istio.objects, 'ServiceEntry');
  const rule = one(istio.objects, 'DestinationRule');
  const vs = one(istio.objects, 'VirtualService');
  const host = entry.spec.hosts[0];
  const httpPort = entry.spec.ports.find((p: Any) => p.protocol === 'HTTP');
  check(entry.spec.hosts.length === 1 && entry.spec.location === 'MESH_EXTERNAL' && entry.spec.resolution === 'DNS', 'ServiceEntry is not one external DNS host');
  check(httpPort?.targetPort === 443, 'the plain-HTTP port does not go to 443');
  check(rule.spec.host === host, 'DestinationRule host is not the ServiceEntry host');
  const tls = rule.spec.trafficPolicy.portLevelSettings.find((s: Any) => s.port.number === httpPort.number)?.tls;
  check(tls?.mode === 'SIMPLE' && tls.sni === host && JSON.stringify(tls.subjectAltNames) === JSON.stringify([host]), 'no TLS origination with SNI and SAN = host on the HTTP port');
  check(JSON.stringify(vs.spec.hosts) === JSON.stringify([host]), 'VirtualService is not for the Azure host');
  for (const http of vs.spec.http) {
    for (const r of http.route) check(r.destination.host === host && r.destination.port.number === httpPort.number, `VirtualService route ${http.name} leaves the Azure host's HTTP port`);
    check(durationMs(http.timeout) >= 300_000, `VirtualService route ${http.name}: timeout under 5 minutes`);
  }

  const patches = filter.spec.configPatches as Any[];
  const by = (applyTo: string) => patches.filter((p) => p.applyTo === applyTo);
  for (const p of patches) check(p.match.context === 'SIDECAR_OUTBOUND', `${p.applyTo} patch is not on outbound traffic`);
  // CLUSTER: the pool's own cluster, unchanged.
  const clusterPatch = by('CLUSTER');
  check(clusterPatch.length === 1 && JSON.stringify(clusterPatch[0].patch.value) === JSON.stringify(pool.cluster), 'the CLUSTER patch is not deploy/pool/envoy-cluster.yaml');
  // HTTP_FILTER: envoy.yaml's ext_proc filter, disabled by default, on the HTTP port, before the router.
  const filterPatch = by('HTTP_FILTER');
  check(filterPatch.length === 1, 'expected one HTTP_FILTER patch');
  const fp = filterPatch[0];
  check(fp.match.listener.portNumber === httpPort.number, `ext_proc is inserted on port ${fp.match.listener.portNumber}, not the Azure HTTP port ${httpPort.number}`);
  check(fp.patch.operation === 'INSERT_BEFORE' && fp.match.listener.filterChain.filter.subFilter.name === 'envoy.filters.http.router', 'ext_proc is not inserted before the router');
  check(fp.patch.value.disabled === true, 'ext_proc is enabled for every service on the port, not only the Azure image route');
  const shipped = connectionManagers(envoyYaml())[0]!.httpFilters.find((f) => typeOf(f.typed_config) === EXT_PROC_TYPE)!;
  check(fp.patch.value.name === shipped.name, 'filter name differs from envoy/envoy.yaml');
  const decodedFilter = envoyApi().decode(PATCH_TYPES.HTTP_FILTER!, fp.patch.value).value as Obj;
  check(JSON.stringify(decodedFilter.typed_config) === JSON.stringify(shipped.typed_config), 'the ext_proc settings differ from envoy/envoy.yaml');
  check(fp.patch.value.typed_config.grpc_service.envoy_grpc.cluster_name === pool.cluster.name, 'ext_proc does not call the pool cluster');
  // LISTENER: the buffer limit of envoy.yaml.
  const listenerPatch = by('LISTENER');
  const limit = listeners(envoyYaml()).find((l) => l.name === 'azure_egress')!.per_connection_buffer_limit_bytes;
  check(listenerPatch.length === 1 && listenerPatch[0].match.listener.portNumber === httpPort.number && listenerPatch[0].patch.value.per_connection_buffer_limit_bytes === limit, 'the HTTP port listener does not get envoy.yaml\'s buffer limit');
  // HTTP_ROUTE: enables the filter on the image route of the VirtualService only.
  const routePatch = by('HTTP_ROUTE');
  check(routePatch.length === 1, 'expected one HTTP_ROUTE patch');
  const rc = routePatch[0].match.routeConfiguration;
  check(rc.portNumber === httpPort.number && rc.vhost.name === `${host}:${httpPort.number}`, `HTTP_ROUTE patch matches vhost ${rc.vhost.name}, not ${host}:${httpPort.number}`);
  const imageRoute = vs.spec.http.find((h: Any) => h.name === rc.vhost.route.name);
  check(imageRoute !== undefined, `HTTP_ROUTE patch names route ${rc.vhost.route.name}, which the VirtualService does not have`);
  if (imageRoute) {
    check(
      JSON.stringify(imageRoute.match.map((m: Any) => [m.uri.regex, m.method.exact])) === JSON.stringify(envoyImageRegexes().map((r) => [r, 'POST'])),
      'the image route does not match exactly the image routes of envoy/envoy.yaml',
    );
  }
  const perFilter = routePatch[0].patch.value.typed_per_filter_config ?? {};
  check(JSON.stringify(Object.keys(perFilter)) === JSON.stringify([fp.patch.value.name]), 'the route config is not keyed by the ext_proc filter name');
  check(perFilter[fp.patch.value.name]?.disabled !== true, 'the image route does not enable ext_proc');
  return problems;
}

// ---------------------------------------------------------------------------------------------------

const mutate = <T>(value: T, edit: (copy: Any) => void): T => {
  const copy = structuredClone(value);
  edit(copy);
  return copy;
};
const find = (objects: Manifest[], kind: string): Any => objects.find((o) => o.kind === kind);

beforeAll(async () => {
  await loadModels();
}, 60_000);

describe('shared pool (deploy/pool)', () => {
  it('every object is valid against the Kubernetes schemas, the Envoy cluster against the Envoy API, and the files agree', () => {
    expect(poolProblems(readPool())).toEqual([]);
  }, 60_000);

  it('the health check the cluster uses is the server\'s own ext_proc service name', () => {
    expect(readPool().cluster.health_checks[0].grpc_health_check.service_name).toBe(EXT_PROC_SERVICE);
  });

  it.each([
    ['a wrong field', (p: Pool) => (find(p.objects, 'Deployment').spec.template.spec.containers[0].readinesProbe = {}), /readinesProbe: unknown field/],
    ['a wrong enum', (p: Pool) => (find(p.objects, 'Service').spec.ports[0].protocol = 'GRPC'), /must be equal to one of the allowed values/],
    ['a wrong container port', (p: Pool) => (find(p.objects, 'Deployment').spec.template.spec.containers[0].ports[0].containerPort = 50052), /container port grpc \(50052\)/],
    ['a wrong Envoy port', (p: Pool) => (p.cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value = 50052), /cluster port 50052/],
    ['a wrong Service name', (p: Pool) => (find(p.objects, 'Service').metadata.name = 'extproc'), /not the Service's DNS name/],
    ['a wrong HPA target', (p: Pool) => (find(p.objects, 'HorizontalPodAutoscaler').spec.scaleTargetRef.name = 'litellm'), /HPA does not scale/],
    ['a Service that is not headless', (p: Pool) => delete find(p.objects, 'Service').spec.clusterIP, /not headless/],
    ['a drain delay shorter than the health checks', (p: Pool) => (find(p.objects, 'Deployment').spec.template.spec.containers[0].env.find((e: Any) => e.name === 'EXTPROC_DRAIN_DELAY_MS').value = '4000'), /needs up to \d+ ms to see a drain/],
    ['an Envoy field that does not exist', (p: Pool) => (p.cluster.health_checks[0].grpc_health_check.service = 'x'), /unknown field "service"/],
    ['an Envoy enum value that does not exist', (p: Pool) => (p.cluster.lb_policy = 'ROUND_ROBINS'), /not a value of enum/],
    ['a memory limit below the held-body budget', (p: Pool) => (find(p.objects, 'Deployment').spec.template.spec.containers[0].resources.limits.memory = '256Mi'), /memory limit 256Mi/],
  ])('catches %s', (_name, edit, message) => {
    const problems = poolProblems(mutate(readPool(), edit));
    expect(problems.join('\n')).toMatch(message);
  });
});

describe('Envoy Gateway (deploy/gateway)', () => {
  it('every object is valid against the CRD schemas of Envoy Gateway v1.9.0 and Gateway API v1.6.1, and agrees with the pool and envoy.yaml', () => {
    expect(gatewayProblems(readGateway(), readPool())).toEqual([]);
  });

  it('the unedited placeholder host is refused by the CRDs, so the files cannot be applied before the host is set', () => {
    const problems = readGateway(PLACEHOLDER).objects.flatMap(crdIssues);
    expect(problems.join('\n')).toMatch(/Backend azure-openai: \/spec\/endpoints\/0\/fqdn\/hostname: must match pattern/);
    expect(problems.join('\n')).toMatch(/HTTPRoute azure-openai: .*hostname: must match pattern/);
  });

  type G = ReturnType<typeof readGateway>;
  it.each([
    ['a wrong field', (g: G) => (find(g.objects, 'EnvoyExtensionPolicy').spec.extProc[0].processingMode.allowModeOverrides = true), /unknown field "allowModeOverrides"/],
    ['a wrong enum', (g: G) => (find(g.objects, 'EnvoyExtensionPolicy').spec.extProc[0].processingMode.request.body = 'BUFFERED'), /body: must be equal to one of the allowed values \(Streamed, Buffered/],
    ['a wrong ext_proc port', (g: G) => (find(g.objects, 'EnvoyExtensionPolicy').spec.extProc[0].backendRefs[0].port = 50052), /port 50052 is not a port of the pool Service/],
    ['a wrong Backend port', (g: G) => (find(g.objects, 'Backend').spec.endpoints[0].fqdn.port = 80), /Backend port is not 443/],
    ['a wrong Service name', (g: G) => (find(g.objects, 'EnvoyExtensionPolicy').spec.extProc[0].backendRefs[0].name = 'extproc'), /is not the pool Service/],
    ['a wrong rule name', (g: G) => (find(g.objects, 'EnvoyExtensionPolicy').spec.targetRefs[0].sectionName = 'image'), /is not a rule of the HTTPRoute/],
    ['fail-open', (g: G) => (find(g.objects, 'EnvoyExtensionPolicy').spec.extProc[0].failOpen = true), /not fail-closed/],
    ['a body mode set statically', (g: G) => (find(g.objects, 'EnvoyExtensionPolicy').spec.extProc[0].processingMode.request.body = 'Buffered'), /headers only/],
    ['an SNI for another host', (g: G) => (find(g.objects, 'Backend').spec.tls.sni = 'other.openai.azure.com'), /SNI is not its hostname/],
    ['a duration the CRD refuses', (g: G) => (find(g.objects, 'EnvoyExtensionPolicy').spec.extProc[0].messageTimeout = '2 s'), /messageTimeout: must match pattern/],
  ])('catches %s', (_name, edit, message) => {
    expect(gatewayProblems(mutate(readGateway(), edit), readPool()).join('\n')).toMatch(message);
  });
});

describe('Istio sidecars (deploy/istio)', () => {
  it('every object is valid against the Istio schemas, every EnvoyFilter value against the Envoy API, and the files agree', () => {
    expect(istioProblems(readIstio(), readPool())).toEqual([]);
  });

  type I = ReturnType<typeof readIstio>;
  const patch = (i: I, applyTo: string): Any => find(i.objects, 'EnvoyFilter').spec.configPatches.find((p: Any) => p.applyTo === applyTo);
  it.each([
    ['a wrong field', (i: I) => (find(i.objects, 'DestinationRule').spec.trafficPolicy.portLevelSettings[0].tls.snii = 'x'), /snii: unknown field/],
    ['a wrong enum', (i: I) => (patch(i, 'HTTP_FILTER').match.context = 'OUTBOUND'), /must be equal to one of the allowed values/],
    ['a wrong field inside the Envoy config', (i: I) => (patch(i, 'HTTP_FILTER').patch.value.typed_config.message_timeout_ms = 2000), /unknown field "message_timeout_ms"/],
    ['a wrong enum inside the Envoy config', (i: I) => (patch(i, 'HTTP_FILTER').patch.value.typed_config.processing_mode.request_body_mode = 'BUFFERD'), /"BUFFERD" is not a value of enum/],
    ['a wrong port', (i: I) => (patch(i, 'HTTP_FILTER').match.listener.portNumber = 443), /inserted on port 443/],
    ['a wrong route name', (i: I) => (patch(i, 'HTTP_ROUTE').match.routeConfiguration.vhost.route.name = 'images'), /names route images/],
    ['a wrong host in the vhost name', (i: I) => (patch(i, 'HTTP_ROUTE').match.routeConfiguration.vhost.name = 'other.openai.azure.com:80'), /HTTP_ROUTE patch matches vhost other/],
    ['a cluster that is not the pool\'s', (i: I) => (patch(i, 'CLUSTER').patch.value.connect_timeout = '5s'), /not deploy\/pool\/envoy-cluster.yaml/],
    ['the filter left enabled for every service', (i: I) => delete patch(i, 'HTTP_FILTER').patch.value.disabled, /enabled for every service/],
    ['fail-open', (i: I) => (patch(i, 'HTTP_FILTER').patch.value.typed_config.failure_mode_allow = true), /differ from envoy\/envoy.yaml/],
  ])('catches %s', (_name, edit, message) => {
    expect(istioProblems(mutate(readIstio(), edit), readPool()).join('\n')).toMatch(message);
  });
});

// ---------------------------------------------------------------------------------------------------
// Several Azure resources behind one Envoy.

const MULTI = 'envoy/envoy-multi-resource.yaml';
const multi = () => envoyApi().decodeBootstrapFile(path.join(ROOT, MULTI));

/** Where Envoy sends a request, with the path and Host the resource sees and whether ext_proc runs. */
function routeOf(config: Obj, method: string, fullPath: string): { cluster: string; path: string; host: string; extProc: boolean } {
  const routes: RouteView[] = connectionManagers(config).find((m) => m.port === 10000)!.routes;
  const route = routes.find((r) => routeMatches(r, method, fullPath));
  if (!route) throw new Error(`no route for ${fullPath}`);
  const name = String(route.route!.cluster);
  const c = cluster(config, name)!;
  const endpoint = (c as Any).load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address as string;
  const rewrite = route.route!.regex_rewrite as Any;
  let upstreamPath = fullPath;
  if (rewrite) {
    const pattern = String(rewrite.pattern.regex);
    const re = pattern.startsWith('(?i)') ? new RegExp(pattern.slice(4), 'i') : new RegExp(pattern);
    upstreamPath = fullPath.replace(re, String(rewrite.substitution));
  }
  const disabled = (route.typed_per_filter_config?.['envoy.filters.http.ext_proc'] as Any)?.disabled === true;
  return { cluster: name, path: upstreamPath, host: route.route!.auto_host_rewrite === true ? endpoint : '(unchanged)', extProc: !disabled };
}

describe('several Azure resources behind one Envoy (envoy/envoy-multi-resource.yaml)', () => {
  const A = PLACEHOLDER;
  const B = 'YOUR_RESOURCE_B.openai.azure.com';
  const GEN = '/openai/deployments/gpt-image-1/images/generations?api-version=2025-04-01-preview';

  it.each([
    ['POST', `/resource-b${GEN}`, 'azure_openai_b', GEN, B, true],
    ['POST', `/Resource-B${GEN.replace('images', 'Images')}`, 'azure_openai_b', GEN.replace('images', 'Images'), B, true],
    ['POST', '/resource-b/openai/deployments/gpt-image-1/%69mages/edits', 'azure_openai_b', '/openai/deployments/gpt-image-1/%69mages/edits', B, true],
    ['POST', '/resource-b/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21', 'azure_openai_b', '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21', B, false],
    ['POST', '/openai/deployments/gpt-image-b/images/edits', 'azure_openai_b', '/openai/deployments/gpt-image-b/images/edits', B, true],
    ['POST', '/openai/deployments/gpt-image-b/%69mages/edits', 'azure_openai_b', '/openai/deployments/gpt-image-b/%69mages/edits', B, true],
    ['GET', '/openai/deployments/gpt-image-b/images/generations', 'azure_openai_b', '/openai/deployments/gpt-image-b/images/generations', B, false],
    ['POST', GEN, 'azure_openai', GEN, A, true],
    ['POST', '/openai/deployments/gpt-image-bb/images/edits', 'azure_openai', '/openai/deployments/gpt-image-bb/images/edits', A, true],
    ['POST', '/resource-bx/openai/deployments/gpt-image-1/images/edits', 'azure_openai', '/resource-bx/openai/deployments/gpt-image-1/images/edits', A, true],
    ['POST', '/openai/deployments/gpt-4o/chat/completions', 'azure_openai', '/openai/deployments/gpt-4o/chat/completions', A, false],
  ])('%s %s -> %s as %s, Host %s, ext_proc %s', (method, p, clusterName, upstreamPath, host, extProc) => {
    expect(routeOf(multi(), method, p)).toEqual({ cluster: clusterName, path: upstreamPath, host, extProc });
  });

  it('each resource has its own TLS: SNI and certificate check for its own host', () => {
    const config = multi();
    for (const [name, host] of [['azure_openai', A], ['azure_openai_b', B]] as const) {
      const tls = (cluster(config, name) as Any).transport_socket.typed_config;
      expect(tls.sni).toBe(host);
      expect(tls.common_tls_context.validation_context.match_typed_subject_alt_names).toEqual([{ san_type: 'DNS', matcher: { exact: host } }]);
    }
  });

  it('is envoy.yaml plus resource B: its routes first, its cluster a copy of azure_openai with its own host', () => {
    const config = structuredClone(multi()) as Any;
    const base = envoyYaml() as Any;
    const hcm = config.static_resources.listeners[0].filter_chains[0].filters[0].typed_config;
    const routes = hcm.route_config.virtual_hosts[0].routes as Any[];
    expect(routes.slice(0, 6).every((r) => r.name.startsWith('resource_b_') && r.route.cluster === 'azure_openai_b')).toBe(true);
    hcm.route_config.virtual_hosts[0].routes = routes.slice(6);
    const b = config.static_resources.clusters.pop();
    expect(JSON.parse(JSON.stringify(b).replaceAll(B, A).replaceAll('azure_openai_b', 'azure_openai'))).toEqual(cluster(base, 'azure_openai'));
    expect(config).toEqual(base);
  });

  /** What must hold of the file: every route's cluster exists; every Azure cluster is TLS on 443 to its own host. */
  function multiProblems(text: string): string[] {
    let config: Obj;
    try {
      config = envoyApi().decodeBootstrapYaml(text, MULTI);
    } catch (error) {
      return [(error as Error).message];
    }
    const problems: string[] = [];
    for (const r of connectionManagers(config).find((m) => m.port === 10000)!.routes) {
      if (!cluster(config, String(r.route!.cluster))) problems.push(`route ${r.name} goes to unknown cluster ${String(r.route!.cluster)}`);
    }
    for (const name of ['azure_openai', 'azure_openai_b']) {
      const c = cluster(config, name) as Any;
      const address = c.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address;
      const tls = c.transport_socket?.typed_config;
      if (address.port_value !== 443) problems.push(`${name}: port ${address.port_value}, not 443`);
      if (tls?.sni !== address.address) problems.push(`${name}: SNI ${tls?.sni} is not its host ${address.address}`);
    }
    return problems;
  }

  it('catches a wrong cluster name, port or SNI', () => {
    const text = read(MULTI);
    expect(multiProblems(text)).toEqual([]);
    expect(multiProblems(text.replace('cluster: azure_openai_b\n', 'cluster: azure_openai_c\n')).join('\n')).toMatch(/route resource_b_images goes to unknown cluster azure_openai_c/);
    expect(multiProblems(text.replace('address: YOUR_RESOURCE_B.openai.azure.com, port_value: 443', 'address: YOUR_RESOURCE_B.openai.azure.com, port_value: 8443')).join('\n')).toMatch(/azure_openai_b: port 8443/);
    expect(multiProblems(text.replace('sni: YOUR_RESOURCE_B.openai.azure.com', 'sni: YOUR_RESOURCE.openai.azure.com')).join('\n')).toMatch(/azure_openai_b: SNI YOUR_RESOURCE.openai.azure.com is not its host/);
  });

  it('a wrong field or enum in it fails the strict decode', () => {
    const text = read(MULTI);
    expect(() => envoyApi().decodeBootstrapYaml(text.replace('regex_rewrite: { pattern:', 'regex_rewrite: { patern:'), 'mutated')).toThrow(/unknown field "patern"/);
    expect(() => envoyApi().decodeBootstrapYaml(text.replace('type: LOGICAL_DNS', 'type: LOGICAL'), 'mutated')).toThrow(/"LOGICAL" is not a value of enum/);
  });

  it('every object in deploy/ of the new styles has a schema this test checks', () => {
    for (const dir of ['deploy/pool', 'deploy/gateway', 'deploy/istio']) {
      for (const file of readdirSync(path.join(ROOT, dir)).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml' && f !== 'envoy-cluster.yaml')) {
        for (const object of readManifests(`${dir}/${file}`)) {
          const issues = manifestIssues(JSON.parse(JSON.stringify(object).replaceAll(PLACEHOLDER, EXAMPLE_HOST)) as Manifest);
          expect(issues, `${dir}/${file}`).toEqual([]);
        }
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------------
// Where each style sets the server's address (docs/deployment-styles.md).

/** The server's address as each file sets it, in the words of the docs table. */
function addressesIn(file: string): string[] {
  const endpointOf = (c: Any) => {
    const address = c.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address;
    return address.pipe ? [address.pipe.path] : [`${address.socket_address.address}:${address.socket_address.port_value}`];
  };
  switch (file) {
    case 'envoy/envoy.yaml':
    case 'envoy/envoy-uds.yaml':
    case 'envoy/envoy-multi-resource.yaml':
      return endpointOf(cluster(envoyApi().decodeBootstrapFile(path.join(ROOT, file)), 'extproc'));
    case 'deploy/pool/envoy-cluster.yaml':
      return endpointOf(YAML.parse(read(file)));
    case 'deploy/istio/envoy-filter.yaml':
      return endpointOf(one(readManifests(file), 'EnvoyFilter').spec.configPatches.find((p: Any) => p.applyTo === 'CLUSTER').patch.value);
    case 'deploy/gateway/extension-policy.yaml': {
      const ref = one(readManifests(file), 'EnvoyExtensionPolicy').spec.extProc[0].backendRefs[0];
      return [ref.name, ref.namespace, String(ref.port)];
    }
  }
  throw new Error(`no address reader for ${file}`);
}

describe('where the server\'s address is set (docs/deployment-styles.md)', () => {
  const doc = read('docs/deployment-styles.md');
  const table = doc.slice(doc.indexOf('## Where the server\'s address is set'));
  const rows = table
    .split('\n')
    .filter((line) => line.startsWith('| ') && !line.startsWith('| style') && !line.startsWith('| ---'))
    .map((line) => line.split('|').map((cell) => cell.trim()));
  const ticks = (cell: string) => [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);

  it('lists every style', () => {
    expect(rows.map((r) => r[1])).toEqual(['Compose', 'An Envoy you run', 'Kubernetes sidecar', 'Shared pool', 'Envoy Gateway', 'Istio', 'Several resources']);
  });

  it.each(rows.map((r) => [r[1]!, r] as const))('%s: the shipped value is what the file sets', (_style, row) => {
    const file = ticks(row[2]!)[0]!;
    const stated = ticks(row[4]!);
    for (const value of addressesIn(file)) expect(stated, `${file}: ${value}`).toContain(value);
  });
});

