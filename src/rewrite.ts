// What to do with one request, decided from its headers (and, for rewrites that need `model`, from its
// body). Pure: config + request in, plain decisions out; src/call/ turns them into Envoy answers.
import type { FieldRule, FieldRules, TouchedField } from './body/index.js';
import type { Rejection } from './call/outcomes.js';
import { MAX_DEPLOYMENT_NAME_LENGTH, type Config } from './config.js';
import { injectsKeys } from './credentials.js';
import type { HeaderChanges } from './mutations.js';
import {
  decodeDeployment,
  deploymentPath,
  matchImageRoute,
  matchOpenAIRoute,
  queryParam,
  withQueryParam,
  type ImageRoute,
} from './routes.js';

type RewriteConfig = Config['rewrite'];

export type { Rejection };

export interface RequestPlan {
  route: ImageRoute;
  /** Header and :path changes that can be made before the body is seen. */
  headers: HeaderChanges;
  /** Rules for the body editor (empty: the body is not edited). */
  rules: FieldRules;
  /**
   * The deployment goes into :path from the body's `model`: needs a BUFFERED body (header mutations are ignored
   * in STREAMED, docs/envoy-ext-proc.md#header-changes-in-body-answers).
   */
  pathFromModel: boolean;
  /** Hoist extra_body's members to the top level (whole bodies only). */
  unwrapExtraBody: boolean;
  /** What was decided at headers time, for logs and dynamic metadata. */
  actions: string[];
}

const remove: FieldRule = () => 'remove';

/** Finds the image route for a path, including plain OpenAI paths when they are enabled. */
export function routeFor(path: string, rewrite: RewriteConfig): ImageRoute | undefined {
  if (rewrite.openaiPaths.enabled) {
    const openai = matchOpenAIRoute(path, rewrite.openaiPaths.prefix);
    if (openai) return openai;
  }
  return matchImageRoute(path);
}

/** Whether requests on this route are ours to touch at all with this configuration. */
export function isHandled(route: ImageRoute, config: Config): boolean {
  switch (route.kind) {
    case 'deployment':
    case 'openai':
      return true;
    case 'deploymentless':
      return config.rewrite.deploymentlessRoutes;
    case 'v1':
      return config.rewrite.v1.stripProviderPrefixes.length > 0 || config.rewrite.v1.mapModels || injectsKeys(config.credentials);
  }
}

/** Reads a JSON string value (raw bytes as in the body); undefined for any other JSON type. */
export function jsonString(raw: Buffer): string | undefined {
  if (raw[0] !== 0x22) return undefined;
  try {
    const value: unknown = JSON.parse(raw.toString('utf8'));
    return typeof value === 'string' ? value : undefined;
  } catch {
    return undefined;
  }
}

const deploymentTables = new WeakMap<RewriteConfig, ReadonlyMap<string, string>>();

/**
 * `rewrite.deployments` as a Map, built once per configuration snapshot. Names come from clients (`model`,
 * the deployment segment), so they never index a plain object: `toString` or `__proto__` would find
 * Object.prototype's members instead of nothing.
 */
function deploymentTable(rewrite: RewriteConfig): ReadonlyMap<string, string> {
  let table = deploymentTables.get(rewrite);
  if (!table) {
    table = new Map(Object.entries(rewrite.deployments));
    deploymentTables.set(rewrite, table);
  }
  return table;
}

/** The deployment a configured model name or alias maps to, if the table has it. */
export function mappedDeployment(name: string, rewrite: RewriteConfig): string | undefined {
  return deploymentTable(rewrite).get(name);
}

/** The deployment a model name maps to (table first, then the name itself if allowed). */
export function deploymentFor(model: string, rewrite: RewriteConfig): string | undefined {
  return mappedDeployment(model, rewrite) ?? (rewrite.modelAsDeployment ? model : undefined);
}

/** A deployment name refused because it could leave its path segment or is longer than Azure allows. */
export function invalidDeployment(name: string): Rejection | undefined {
  // decodeDeployment applies the same refusals as route matching to the decoded name.
  if (decodeDeployment(encodeURIComponent(name)) !== undefined && name.length <= MAX_DEPLOYMENT_NAME_LENGTH) return undefined;
  return {
    status: 400,
    message: `The deployment name derived from 'model' is not a valid deployment name.`,
    type: 'invalid_request_error',
    code: 'invalid_value',
    param: 'model',
    reason: 'invalid_deployment',
  };
}

function fieldRules(route: ImageRoute, config: Config, modelRule: FieldRule | undefined): FieldRules {
  const rules = new Map<string, FieldRule>();
  if (modelRule) rules.set('model', modelRule);
  // Field hygiene applies where Azure checks unknown parameters strictly: the deployment routes
  // (docs/azure-images.md#body-fields).
  if (route.kind !== 'v1') {
    const { fields } = config.rewrite;
    if (fields.dropResponseFormat) rules.set('response_format', remove);
    if (fields.extraBody === 'drop' || fields.extraBody === 'unwrap') rules.set('extra_body', remove);
    for (const name of fields.drop) rules.set(name, remove);
  }
  return rules;
}

/** On v1 routes `model` must be the deployment name: strip provider prefixes, map through the table. */
function v1ModelRule(rewrite: RewriteConfig): FieldRule | undefined {
  const { stripProviderPrefixes, mapModels } = rewrite.v1;
  if (stripProviderPrefixes.length === 0 && !mapModels) return undefined;
  return (raw) => {
    const model = jsonString(raw) ?? raw.toString('utf8');
    let name = model;
    const prefix = stripProviderPrefixes.find((candidate) => name.startsWith(candidate));
    if (prefix) name = name.slice(prefix.length);
    if (mapModels) name = mappedDeployment(name, rewrite) ?? name;
    if (name === model) return 'keep';
    // JSON bodies carry the value as a JSON string; multipart parts carry the bare text.
    return { replace: Buffer.from(raw[0] === 0x22 ? JSON.stringify(name) : name, 'utf8') };
  };
}

function credentialChanges(route: ImageRoute, config: Config, authorization: string | undefined, apiKey: PlanInput['apiKey']): HeaderChanges {
  // The key of the resource Envoy routes this path to (docs/deploy-multi-resource.md).
  const fileKey = injectsKeys(config.credentials) ? apiKey(route.pathname) : undefined;
  if (fileKey) return { set: [['api-key', fileKey]], remove: ['authorization', 'ocp-apim-subscription-key'] };
  // Classic routes take `api-key`; `Authorization: Bearer <api key>` is rejected there
  // (docs/azure-images.md#authentication).
  // An Entra token is a JWT (three dot-separated parts): it stays a Bearer token.
  if (config.credentials.bearerToApiKey && route.kind !== 'v1' && authorization) {
    // The token is everything after the scheme but spaces and tabs: a token with a control byte is taken
    // as sent, so the header check refuses it with a 400 instead of forwarding it to Azure.
    const match = /^Bearer[ \t]+([^ \t]+)$/i.exec(authorization.trim());
    if (match && match[1]!.split('.').length !== 3) return { set: [['api-key', match[1]!]], remove: ['authorization'] };
  }
  return {};
}

export interface PlanInput {
  route: ImageRoute;
  authorization: string | undefined;
  /** The current API key from the secret file the request's path selects, if one is configured. */
  apiKey: (pathname: string) => string | undefined;
}

/** Decides header-time changes and body rules for a handled image route. */
export function planRequest(config: Config, input: PlanInput): RequestPlan | Rejection {
  const { route } = input;
  const rewrite = config.rewrite;
  const actions: string[] = [];
  const credentials = credentialChanges(route, config, input.authorization, input.apiKey);
  if (credentials.set?.length) actions.push('credentials');
  const set: Array<readonly [string, string]> = [...(credentials.set ?? [])];
  const headers: HeaderChanges = { set, remove: [...(credentials.remove ?? [])] };
  let query = route.query;
  let pathChanged = false;
  let path = route.pathname;

  if (route.kind === 'deployment') {
    let deployment = route.deployment;
    const alias = rewrite.aliasDeploymentRoutes ? mappedDeployment(deployment, rewrite) : undefined;
    if (alias !== undefined && alias !== deployment) {
      deployment = alias;
      path = deploymentPath(route.prefix, deployment, route.operation, '');
      pathChanged = true;
      actions.push('alias');
    }
    const version = rewrite.apiVersion.default;
    if (version && (rewrite.apiVersion.force ? queryParam(query, 'api-version') !== version : queryParam(query, 'api-version') === undefined)) {
      query = withQueryParam(query, 'api-version', version);
      pathChanged = true;
      actions.push('api_version');
    }
    if (pathChanged) set.push([':path', query ? `${path}?${query}` : path]);
  }

  const modelRule = route.kind === 'v1' ? v1ModelRule(rewrite) : remove;
  return {
    route,
    headers,
    rules: fieldRules(route, config, modelRule),
    pathFromModel: route.kind === 'openai' || route.kind === 'deploymentless',
    unwrapExtraBody: route.kind !== 'v1' && rewrite.fields.extraBody === 'unwrap',
    actions,
  };
}

export function isRejection(value: RequestPlan | Rejection): value is Rejection {
  return 'status' in value;
}

/**
 * The :path for routes whose deployment comes from the body (`openai`, `deploymentless`), given the
 * removed `model` value. Undefined when the route needs no body-derived path.
 */
export function pathFromBody(
  plan: RequestPlan,
  config: Config,
  touched: readonly TouchedField[],
  bodyKind: 'json' | 'multipart',
): string | Rejection | undefined {
  if (!plan.pathFromModel) return undefined;
  const raw = touched.find((field) => field.name === 'model')?.value;
  // A JSON model must be a JSON string; a multipart model part is bare text.
  const model = raw === undefined ? undefined : bodyKind === 'json' ? jsonString(raw) : raw.toString('utf8');
  if (!model) {
    return {
      status: 400,
      message: "you must provide a model parameter (it names the Azure deployment for this route)",
      type: 'invalid_request_error',
      code: 'missing_required_parameter',
      param: 'model',
      reason: 'missing_model',
    };
  }
  const deployment = deploymentFor(model, config.rewrite);
  if (deployment === undefined) {
    return {
      status: 400,
      message: `No deployment is configured for model '${model.slice(0, 64)}'.`,
      type: 'invalid_request_error',
      code: 'invalid_value',
      param: 'model',
      reason: 'invalid_deployment',
    };
  }
  const invalid = invalidDeployment(deployment);
  if (invalid) return invalid;
  const route = plan.route;
  const version = config.rewrite.apiVersion.default;
  // Plain OpenAI paths have no Azure prefix; the Azure path starts at /openai.
  const prefix = route.kind === 'openai' ? '' : route.prefix;
  const query = version && (route.kind === 'openai' || queryParam(route.query, 'api-version') === undefined || config.rewrite.apiVersion.force)
    ? withQueryParam(route.query, 'api-version', version)
    : route.query;
  return deploymentPath(prefix, deployment, route.operation, query);
}

/**
 * Hoists the members of a removed `extra_body` object into the top level of an edited JSON body; members
 * already present at the top level win. Runs on whole bodies only (BUFFERED); extra_body is small.
 */
export function unwrapExtraBody(body: Buffer, touched: readonly TouchedField[]): Buffer {
  const extra = touched.find((field) => field.name === 'extra_body');
  if (!extra) return body;
  let inner: unknown;
  let top: Record<string, unknown>;
  try {
    inner = JSON.parse(extra.value.toString('utf8'));
    top = JSON.parse(body.toString('utf8')) as Record<string, unknown>;
  } catch {
    return body;
  }
  if (!inner || typeof inner !== 'object' || Array.isArray(inner)) return body;
  const members = Object.entries(inner as Record<string, unknown>)
    .filter(([key]) => !Object.prototype.hasOwnProperty.call(top, key))
    .map(([key, value]) => `${JSON.stringify(key)}:${JSON.stringify(value)}`);
  if (members.length === 0) return body;
  const close = body.lastIndexOf(0x7d); // the top-level object's closing brace
  const empty = Object.keys(top).length === 0;
  return Buffer.concat([body.subarray(0, close), Buffer.from((empty ? '' : ',') + members.join(',')), body.subarray(close)]);
}
