// Checks Kubernetes manifests the way an API server with strict field validation would (kubectl's
// default since 1.27): types, enums and required fields from the schemas, and no unknown field.
//
// Core objects and Istio: the `kubernetes-models` and `@kubernetes-models/istio` packages carry validators
// generated from the official OpenAPI schemas (types, enums, formats, required) but, like the schemas,
// accept unknown fields; their TypeScript declarations list every field, so the unknown-field walk reads
// those (TypeScript's own checker, once per worker).
// Envoy Gateway and Gateway API objects: the openAPIV3Schema of the CRDs of the pinned release
// (test/fixtures/schemas/, see its README), through ajv, with every object that lists its properties and
// does not say x-kubernetes-preserve-unknown-fields closed, as the API server prunes/rejects the rest.
// CEL rules (x-kubernetes-validations) are not evaluated: tests check the ones that matter by hand.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import ts from 'typescript';
import YAML from 'yaml';

const ROOT = path.resolve(import.meta.dirname, '../..');

export type Manifest = Record<string, unknown> & { apiVersion: string; kind: string; metadata: { name: string; namespace?: string } };

/** Every YAML document of a repository file (empty documents skipped). Duplicate keys are an error. */
export function readManifests(rel: string): Manifest[] {
  const docs = YAML.parseAllDocuments(readFileSync(path.join(ROOT, rel), 'utf8'), { uniqueKeys: true });
  for (const doc of docs) if (doc.errors.length > 0) throw new Error(`${rel}: ${doc.errors[0]!.message}`);
  return docs.map((d) => d.toJS() as Manifest).filter((m) => m !== null);
}

// ---------------------------------------------------------------------------------------------------
// Core objects and Istio (kubernetes-models).

interface ModelModule {
  module: string;
  /** The exported interface of the object, e.g. IDeployment. */
  iface: string;
}

/** apiVersion/kind -> where kubernetes-models declares it. */
const MODELS: Record<string, ModelModule> = {
  'apps/v1/Deployment': { module: 'kubernetes-models/apps/v1/Deployment', iface: 'IDeployment' },
  'v1/Service': { module: 'kubernetes-models/v1/Service', iface: 'IService' },
  'v1/Namespace': { module: 'kubernetes-models/v1/Namespace', iface: 'INamespace' },
  'v1/ConfigMap': { module: 'kubernetes-models/v1/ConfigMap', iface: 'IConfigMap' },
  'autoscaling/v2/HorizontalPodAutoscaler': { module: 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler', iface: 'IHorizontalPodAutoscaler' },
  'policy/v1/PodDisruptionBudget': { module: 'kubernetes-models/policy/v1/PodDisruptionBudget', iface: 'IPodDisruptionBudget' },
  'networking.istio.io/v1beta1/ServiceEntry': { module: '@kubernetes-models/istio/networking.istio.io/v1beta1/ServiceEntry', iface: 'IServiceEntry' },
  'networking.istio.io/v1beta1/DestinationRule': { module: '@kubernetes-models/istio/networking.istio.io/v1beta1/DestinationRule', iface: 'IDestinationRule' },
  'networking.istio.io/v1beta1/VirtualService': { module: '@kubernetes-models/istio/networking.istio.io/v1beta1/VirtualService', iface: 'IVirtualService' },
  'networking.istio.io/v1alpha3/EnvoyFilter': { module: '@kubernetes-models/istio/networking.istio.io/v1alpha3/EnvoyFilter', iface: 'IEnvoyFilter' },
};

export const modelKey = (m: { apiVersion: string; kind: string }): string => `${m.apiVersion}/${m.kind}`;
export const hasModel = (m: { apiVersion: string; kind: string }): boolean => modelKey(m) in MODELS;

interface TypeWorld {
  checker: ts.TypeChecker;
  types: Map<string, ts.Type>;
}
let world: TypeWorld | undefined;

/** One TypeScript program over the declarations of every model above. */
function typeWorld(): TypeWorld {
  if (world) return world;
  const file = path.join(ROOT, 'test', '__manifest_types__.ts');
  const keys = Object.keys(MODELS);
  const source = keys.map((key, i) => `import type { ${MODELS[key]!.iface} as T${i} } from '${MODELS[key]!.module}';\nexport type X${i} = T${i};`).join('\n');
  const options: ts.CompilerOptions = { module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, strict: true, noEmit: true, skipLibCheck: true, types: [] };
  const host = ts.createCompilerHost(options);
  const original = host.getSourceFile.bind(host);
  host.getSourceFile = (name, lang, ...rest) => (path.resolve(name) === file ? ts.createSourceFile(name, source, lang) : original(name, lang, ...rest));
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (name) => path.resolve(name) === file || fileExists(name);
  const program = ts.createProgram([file], options, host);
  const checker = program.getTypeChecker();
  const sf = program.getSourceFile(file)!;
  const types = new Map<string, ts.Type>();
  for (const statement of sf.statements) {
    if (!ts.isTypeAliasDeclaration(statement)) continue;
    const index = Number(statement.name.text.slice(1));
    const type = checker.getTypeAtLocation(statement.name);
    if (type.flags & ts.TypeFlags.Any) throw new Error(`cannot resolve ${MODELS[keys[index]!]!.module}`);
    types.set(keys[index]!, type);
  }
  world = { checker, types };
  return world;
}

/** Fields of `value` the declared type does not have, as JSON paths. */
function unknownFields(checker: ts.TypeChecker, type: ts.Type, value: unknown, at: string, out: string[]): void {
  if (type.flags & (ts.TypeFlags.Any | ts.TypeFlags.Unknown)) return;
  const members = (type.isUnion() ? type.types : [type]).filter((t) => !(t.flags & (ts.TypeFlags.Undefined | ts.TypeFlags.Null)));
  if (Array.isArray(value)) {
    const array = members.find((t) => checker.isArrayType(t)) as ts.TypeReference | undefined;
    if (!array) return; // the validator reports the type mismatch
    const element = checker.getTypeArguments(array)[0]!;
    value.forEach((item, i) => unknownFields(checker, element, item, `${at}[${i}]`, out));
    return;
  }
  if (typeof value !== 'object' || value === null) return;
  const objects = members.filter((t) => t.flags & ts.TypeFlags.Object && !checker.isArrayType(t));
  if (objects.length === 0) return;
  for (const [key, child] of Object.entries(value)) {
    let found: ts.Type | undefined;
    let open = false;
    for (const t of objects) {
      const prop = t.getProperty(key);
      if (prop) {
        found = checker.getNonNullableType(checker.getTypeOfSymbol(prop));
        break;
      }
      const index = checker.getIndexTypeOfType(t, ts.IndexKind.String);
      if (index) {
        found = index;
        break;
      }
      // `{}` with no property at all: a free-form object (x-kubernetes-preserve-unknown-fields).
      if (t.getProperties().length === 0) open = true;
    }
    if (found) unknownFields(checker, found, child, `${at}.${key}`, out);
    else if (!open) out.push(`${at}.${key}: unknown field`);
  }
}

/** Problems with a core or Istio object: schema validation, then unknown fields. Empty when valid. */
export function modelIssues(manifest: Manifest): string[] {
  const key = modelKey(manifest);
  const entry = MODELS[key];
  if (!entry) return [`${key}: no model registered`];
  const issues: string[] = [];
  const mod = modelModules.get(key);
  if (!mod) throw new Error(`model module for ${key} not loaded: call loadModels() first`);
  try {
    new mod(manifest).validate();
  } catch (error) {
    issues.push(`${key} ${manifest.metadata?.name}: ${(error as Error).message}`);
  }
  const { checker, types } = typeWorld();
  const out: string[] = [];
  unknownFields(checker, types.get(key)!, manifest, '$', out);
  issues.push(...out.map((o) => `${key} ${manifest.metadata?.name}: ${o}`));
  return issues;
}

type ModelClass = new (data: unknown) => { validate(): void };
const modelModules = new Map<string, ModelClass>();

/** Loads the model classes (ES modules) once; call from beforeAll. */
export async function loadModels(): Promise<void> {
  for (const [key, entry] of Object.entries(MODELS)) {
    if (modelModules.has(key)) continue;
    const mod = (await import(entry.module)) as Record<string, ModelClass>;
    const name = entry.iface.slice(1);
    modelModules.set(key, mod[name]!);
  }
}

// ---------------------------------------------------------------------------------------------------
// Envoy Gateway and Gateway API (CRD schemas of the pinned release).

const CRD_FILES = ['gateway.envoyproxy.io_backends.yaml', 'gateway.envoyproxy.io_clienttrafficpolicies.yaml', 'gateway.envoyproxy.io_envoyextensionpolicies.yaml', 'gateway.networking.k8s.io_httproutes.yaml'];

type Schema = Record<string, unknown>;

/** Closes every object schema that lists properties and keeps no unknown fields, like the API server. */
function closeObjects(schema: Schema): Schema {
  const out: Schema = {};
  for (const [key, value] of Object.entries(schema)) {
    if (key === 'properties' && value && typeof value === 'object') {
      out[key] = Object.fromEntries(Object.entries(value as Record<string, Schema>).map(([k, v]) => [k, closeObjects(v)]));
    } else if ((key === 'items' || key === 'additionalProperties') && value && typeof value === 'object') {
      out[key] = closeObjects(value as Schema);
    } else if ((key === 'allOf' || key === 'anyOf' || key === 'oneOf') && Array.isArray(value)) {
      out[key] = value.map((v: Schema) => closeObjects(v));
    } else out[key] = value;
  }
  if (out.properties && out.additionalProperties === undefined && out['x-kubernetes-preserve-unknown-fields'] !== true) out.additionalProperties = false;
  return out;
}

let crdValidators: Map<string, ValidateFunction> | undefined;

function crdValidator(manifest: Manifest): ValidateFunction | undefined {
  if (!crdValidators) {
    crdValidators = new Map();
    // Kubernetes extensions and formats (int32, date-time, ...) are not JSON Schema keywords ajv knows.
    const ajv = new Ajv({ allErrors: true, strict: false, validateFormats: false });
    for (const file of CRD_FILES) {
      const crd = YAML.parseAllDocuments(readFileSync(path.join(ROOT, 'test/fixtures/schemas', file), 'utf8'))
        .map((d) => d.toJS() as { kind?: string; spec: { group: string; names: { kind: string }; versions: Array<{ name: string; served: boolean; schema: { openAPIV3Schema: Schema } }> } })
        .find((d) => d?.kind === 'CustomResourceDefinition')!;
      for (const version of crd.spec.versions) {
        if (!version.served) continue;
        const schema = closeObjects(version.schema.openAPIV3Schema);
        // metadata is the API server's ObjectMeta, not described by the CRD.
        (schema.properties as Record<string, Schema>).metadata = { type: 'object' };
        crdValidators.set(`${crd.spec.group}/${version.name}/${crd.spec.names.kind}`, ajv.compile(schema));
      }
    }
  }
  return crdValidators.get(modelKey(manifest));
}

export const hasCrd = (m: Manifest): boolean => crdValidator(m) !== undefined;

const describeError = (e: ErrorObject): string =>
  e.keyword === 'additionalProperties'
    ? `${e.instancePath || '/'}: unknown field "${String((e.params as { additionalProperty: string }).additionalProperty)}"`
    : `${e.instancePath || '/'}: ${e.message ?? e.keyword}${e.keyword === 'enum' ? ` (${(e.params as { allowedValues: unknown[] }).allowedValues.join(', ')})` : ''}`;

/** Problems with an Envoy Gateway / Gateway API object against its CRD schema. Empty when valid. */
export function crdIssues(manifest: Manifest): string[] {
  const validate = crdValidator(manifest);
  if (!validate) return [`${modelKey(manifest)}: no CRD schema kept for it`];
  const valid = (validate as (data: unknown) => boolean)(manifest);
  return valid ? [] : (validate.errors ?? []).map((e) => `${manifest.kind} ${manifest.metadata?.name}: ${describeError(e)}`);
}

/** Schema problems of any manifest this repository ships. */
export function manifestIssues(manifest: Manifest): string[] {
  if (hasModel(manifest)) return modelIssues(manifest);
  return crdIssues(manifest);
}
