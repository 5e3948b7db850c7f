// Which requests are Azure OpenAI image requests, and of which kind (docs/azure-images.md#routes,
// docs/azure-images.md#matching-routes).
// Pure: a path string in, a route description out. Decisions are made on the path shape only, never on
// the host (APIM, Foundry and custom ingresses put any prefix before /openai) nor on api-version.

export type ImageOperation = 'generations' | 'edits';

interface RouteBase {
  /** Everything before `/openai`, as sent (e.g. `/api/projects/p1` or ``). */
  prefix: string;
  operation: ImageOperation;
  /** The query string without the leading `?` (`''` when absent). */
  query: string;
  /** The path part as sent, without the query. */
  pathname: string;
}

/** `…/openai/deployments/{deployment}/images/{op}`: Azure picks the deployment from the URL and rejects `model`. */
export interface DeploymentRoute extends RouteBase {
  kind: 'deployment';
  /** Percent-decoded deployment name. */
  deployment: string;
}

/** `…/openai/v1/images/{op}`: `model` is required there and names the deployment (docs/azure-images.md#the-v1-routes). */
export interface V1Route extends RouteBase {
  kind: 'v1';
}

/** `…/openai/images/{op}` without a deployment: Azure answers 404 (docs/azure-images.md#routes-without-a-deployment). */
export interface DeploymentlessRoute extends RouteBase {
  kind: 'deploymentless';
}

/** A plain OpenAI path (`{prefix}/images/{op}`, e.g. `/v1/images/generations`), matched only when configured. */
export interface OpenAIRoute extends RouteBase {
  kind: 'openai';
}

export type ImageRoute = DeploymentRoute | V1Route | DeploymentlessRoute | OpenAIRoute;

// Case-insensitive on the fixed segments; the path is forwarded unchanged. A single trailing slash is
// tolerated (docs/azure-images.md#matching-routes, items 3-4). `[^/]+` keeps the deployment to one
// segment; `:submit` and `/variations` don't match.
const DEPLOYMENT_ROUTE = /^(?<prefix>(?:\/[^/]+)*?)\/openai\/deployments\/(?<deployment>[^/]+)\/images\/(?<op>generations|edits)\/?$/i;
const V1_ROUTE = /^(?<prefix>(?:\/[^/]+)*?)\/openai\/v1\/images\/(?<op>generations|edits)\/?$/i;
const DEPLOYMENTLESS_ROUTE = /^(?<prefix>(?:\/[^/]+)*?)\/openai\/images\/(?<op>generations|edits)\/?$/i;

const UNRESERVED_ESCAPE = /%(?:[46][1-9A-F]|[57][0-9A]|3[0-9]|2D|2E|5F|7E)/gi;

/**
 * Decodes percent-escapes of unreserved characters (RFC 3986 §6.2.2.2): `%69mages` and `images` are the
 * same resource to Azure's front end, so they must be the same route to us. Other escapes (`%2F`) stay.
 */
function normalizeUnreserved(pathname: string): string {
  return pathname.replace(UNRESERVED_ESCAPE, (escape) => String.fromCharCode(parseInt(escape.slice(1), 16)));
}

/**
 * Decodes a deployment path segment. Returns undefined for names that could not be one Azure deployment
 * segment: malformed escapes, an encoded `/` or `\`, control characters, `.` and `..` (docs/azure-images.md#matching-routes, item 5).
 */
export function decodeDeployment(segment: string): string | undefined {
  let decoded: string;
  try {
    decoded = decodeURIComponent(segment);
  } catch {
    return undefined;
  }
  if (decoded === '' || decoded === '.' || decoded === '..') return undefined;
  // eslint-disable-next-line no-control-regex
  if (/[/\\\u0000-\u001f\u007f]/.test(decoded)) return undefined;
  return decoded;
}

/** Splits `:path` into path and query (docs/azure-images.md#matching-routes, item 2); a fragment never reaches a server but is dropped if present. */
export function splitPath(path: string): { pathname: string; query: string } {
  const hash = path.indexOf('#');
  const withoutFragment = hash === -1 ? path : path.slice(0, hash);
  const question = withoutFragment.indexOf('?');
  if (question === -1) return { pathname: withoutFragment, query: '' };
  return { pathname: withoutFragment.slice(0, question), query: withoutFragment.slice(question + 1) };
}

/** Matches an Azure OpenAI image route; undefined for every other path. */
export function matchImageRoute(path: string): ImageRoute | undefined {
  const { pathname, query } = splitPath(path);
  const normalized = normalizeUnreserved(pathname);

  const deployment = DEPLOYMENT_ROUTE.exec(normalized);
  if (deployment?.groups) {
    const name = decodeDeployment(deployment.groups.deployment!);
    if (name === undefined) return undefined;
    return {
      kind: 'deployment',
      prefix: deployment.groups.prefix!,
      deployment: name,
      operation: deployment.groups.op!.toLowerCase() as ImageOperation,
      query,
      pathname,
    };
  }
  for (const [kind, pattern] of [['v1', V1_ROUTE], ['deploymentless', DEPLOYMENTLESS_ROUTE]] as const) {
    const match = pattern.exec(normalized);
    if (match?.groups) {
      return { kind, prefix: match.groups.prefix!, operation: match.groups.op!.toLowerCase() as ImageOperation, query, pathname };
    }
  }
  return undefined;
}

/** Reads one query parameter (first occurrence), decoded; undefined when absent. */
export function queryParam(query: string, name: string): string | undefined {
  for (const pair of query.split('&')) {
    const eq = pair.indexOf('=');
    const key = eq === -1 ? pair : pair.slice(0, eq);
    if (key === name) {
      try {
        return decodeURIComponent((eq === -1 ? '' : pair.slice(eq + 1)).replace(/\+/g, ' '));
      } catch {
        return undefined;
      }
    }
  }
  return undefined;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

const openAIPatterns = new Map<string, RegExp>();

/** Matches `{prefix}/images/generations|edits` for a configured OpenAI-style prefix (issue 6). */
export function matchOpenAIRoute(path: string, prefix: string): OpenAIRoute | undefined {
  let pattern = openAIPatterns.get(prefix);
  if (!pattern) {
    pattern = new RegExp(`^${escapeRegExp(prefix)}/images/(?<op>generations|edits)/?$`, 'i');
    openAIPatterns.set(prefix, pattern);
  }
  const { pathname, query } = splitPath(path);
  const match = pattern.exec(normalizeUnreserved(pathname));
  if (!match?.groups) return undefined;
  return { kind: 'openai', prefix, operation: match.groups.op!.toLowerCase() as ImageOperation, query, pathname };
}

/** `{prefix}/openai/deployments/{deployment}/images/{op}?{query}`, the deployment percent-encoded as one segment. */
export function deploymentPath(prefix: string, deployment: string, operation: ImageOperation, query: string): string {
  const path = `${prefix}/openai/deployments/${encodeURIComponent(deployment)}/images/${operation}`;
  return query ? `${path}?${query}` : path;
}

/** Sets (or replaces) one query parameter, keeping every other parameter as sent. */
export function withQueryParam(query: string, name: string, value: string): string {
  const kept = query === '' ? [] : query.split('&').filter((pair) => pair !== '' && pair.split('=')[0] !== name);
  return [...kept, `${name}=${encodeURIComponent(value)}`].join('&');
}
