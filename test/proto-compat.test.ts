// Wire compatibility of our hand-written proto/ subset with the official definitions.
//
// Official = the snapshot vendored in @grpc/grpc-js-xds (deps/{envoy-api,xds,googleapis,protoc-gen-validate})
// plus grpc-health-check's health.proto. That snapshot predates Envoy 1.37; the handful of newer fields we
// declare are listed in NOT_IN_SNAPSHOT with their numbers as envoyproxy/data-plane-api HEAD had them on
// 2026-01-29 (external_processor.proto, processing_mode.proto; each entry's ref names the file), and the test
// checks that each of them really is absent from the snapshot, so the list cannot go stale silently.
import { BinaryReader } from 'google-protobuf';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  extProcService,
  healthService,
  LOADER_OPTIONS,
  type ProcessingRequest,
  type ProcessingResponse,
} from '../src/proto.js';
import {
  collect,
  compareWithOfficial,
  fieldShape,
  loadOfficialRoot,
  loadOurRoot,
  methodShape,
  ourProtoSources,
  type AllowList,
  type FieldShape,
} from './support/proto-descriptors.js';

const PACKAGES = ['envoy', 'grpc.health.v1'];
const EXT = 'envoy.service.ext_proc.v3';
const MODE = 'envoy.extensions.filters.http.ext_proc.v3.ProcessingMode';

const f = (number: number, type: string, oneof: string | null = null): FieldShape => ({
  number,
  type,
  label: 'singular',
  oneof,
  packed: null,
});

/** Our declarations that the @grpc/grpc-js-xds snapshot does not have yet (newer Envoy API). */
const NOT_IN_SNAPSHOT: AllowList = {
  fields: [
    // ProtocolConfiguration protocol_config = 11 (first message of the stream only, ~1.34+).
    { message: `${EXT}.ProcessingRequest`, field: 'protocol_config', shape: f(11, `${EXT}.ProtocolConfiguration`), ref: 'external_processor.proto' },
    // streamed_immediate_response = 11, member of oneof `response` (PR #42424, 1.37.0).
    { message: `${EXT}.ProcessingResponse`, field: 'streamed_immediate_response', shape: f(11, `${EXT}.StreamedImmediateResponse`, 'response'), ref: 'external_processor.proto' },
    // bool request_drain = 12 (not-implemented-hide, GRPC mode).
    { message: `${EXT}.ProcessingResponse`, field: 'request_drain', shape: f(12, 'bool'), ref: 'external_processor.proto' },
    // HttpBody { ...; bool end_of_stream_without_message = 3; bool grpc_message_compressed = 4; } (GRPC mode).
    { message: `${EXT}.HttpBody`, field: 'end_of_stream_without_message', shape: f(3, 'bool'), ref: 'external_processor.proto' },
    { message: `${EXT}.HttpBody`, field: 'grpc_message_compressed', shape: f(4, 'bool'), ref: 'external_processor.proto' },
    // BodyMutation { oneof mutation { ...; StreamedBodyResponse streamed_response = 3; } }.
    { message: `${EXT}.BodyMutation`, field: 'streamed_response', shape: f(3, `${EXT}.StreamedBodyResponse`, 'mutation'), ref: 'external_processor.proto' },
  ],
  messages: [
    // ProtocolConfiguration { request_body_mode = 1; response_body_mode = 2;
    //        send_body_without_waiting_for_header_response = 3; }
    {
      message: `${EXT}.ProtocolConfiguration`,
      ref: 'external_processor.proto',
      fields: {
        request_body_mode: f(1, `${MODE}.BodySendMode`),
        response_body_mode: f(2, `${MODE}.BodySendMode`),
        send_body_without_waiting_for_header_response: f(3, 'bool'),
      },
    },
    // StreamedBodyResponse { bytes body = 1; bool end_of_stream = 2;
    //        bool end_of_stream_without_message = 3; bool grpc_message_compressed = 4; }
    {
      message: `${EXT}.StreamedBodyResponse`,
      ref: 'external_processor.proto',
      fields: {
        body: f(1, 'bytes'),
        end_of_stream: f(2, 'bool'),
        end_of_stream_without_message: f(3, 'bool'),
        grpc_message_compressed: f(4, 'bool'),
      },
    },
    // StreamedImmediateResponse { oneof response { HttpHeaders headers_response = 1;
    //        StreamedBodyResponse body_response = 2; config.core.v3.HeaderMap trailers_response = 3; } }
    {
      message: `${EXT}.StreamedImmediateResponse`,
      ref: 'external_processor.proto',
      fields: {
        headers_response: f(1, `${EXT}.HttpHeaders`, 'response'),
        body_response: f(2, `${EXT}.StreamedBodyResponse`, 'response'),
        trailers_response: f(3, 'envoy.config.core.v3.HeaderMap', 'response'),
      },
    },
  ],
  enumValues: [
    // BodySendMode ... FULL_DUPLEX_STREAMED=4, GRPC=5 (not-implemented-hide).
    { enum: `${MODE}.BodySendMode`, value: 'FULL_DUPLEX_STREAMED', number: 4, ref: 'processing_mode.proto' },
    { enum: `${MODE}.BodySendMode`, value: 'GRPC', number: 5, ref: 'processing_mode.proto' },
  ],
};

let official: protobuf.Root;
let ours: protobuf.Root;

beforeAll(() => {
  official = loadOfficialRoot();
  ours = loadOurRoot();
});

/** A copy of proto/ with exactly one occurrence of `from` replaced in `file` (fails if not exactly one). */
function mutated(file: string, from: string, to: string): protobuf.Root {
  const sources = ourProtoSources();
  const text = sources[file];
  if (text === undefined) throw new Error(`no such proto file ${file}`);
  const count = text.split(from).length - 1;
  if (count !== 1) throw new Error(`expected exactly one "${from}" in ${file}, found ${count}`);
  sources[file] = text.replace(from, to);
  return loadOurRoot(sources);
}

const EXT_FILE = 'envoy/service/ext_proc/v3/external_processor.proto';

describe('proto/ vs the official Envoy and grpc.health.v1 definitions', () => {
  it('walks every message, enum and service we declare (and everything the runtime loader sees)', () => {
    const mine = collect(ours, PACKAGES);
    expect(mine.types.size).toBeGreaterThanOrEqual(24);
    expect([...mine.types.keys()]).toEqual(
      expect.arrayContaining([
        `${EXT}.ProcessingRequest`,
        `${EXT}.ProcessingResponse`,
        `${EXT}.StreamedBodyResponse`,
        MODE,
        'envoy.config.core.v3.HeaderValueOption',
        'envoy.type.v3.HttpStatus',
        'grpc.health.v1.HealthCheckResponse',
      ]),
    );
    expect([...mine.enums.keys()]).toEqual(
      expect.arrayContaining([
        `${EXT}.CommonResponse.ResponseStatus`,
        `${MODE}.BodySendMode`,
        `${MODE}.HeaderSendMode`,
        'envoy.config.core.v3.HeaderValueOption.HeaderAppendAction',
        'envoy.type.v3.StatusCode',
        'grpc.health.v1.HealthCheckResponse.ServingStatus',
      ]),
    );
    expect([...mine.services.keys()].sort()).toEqual([`${EXT}.ExternalProcessor`, 'grpc.health.v1.Health']);

    // Everything proto-loader builds for src/proto.ts is part of the walk (no file escapes the check).
    const runtime = protoLoader.loadSync(
      ['envoy/service/ext_proc/v3/external_processor.proto', 'grpc/health/v1/health.proto'],
      LOADER_OPTIONS,
    );
    const walked = new Set([...mine.types.keys(), ...mine.enums.keys(), ...mine.services.keys()]);
    const runtimeNames = Object.keys(runtime).filter((n) => PACKAGES.some((p) => n.startsWith(`${p}.`)));
    expect(runtimeNames.length).toBeGreaterThan(20);
    expect(runtimeNames.filter((n) => !walked.has(n))).toEqual([]);
  });

  it('every field, enum value and method matches the official snapshot or the documented allow-list', () => {
    expect(compareWithOfficial(ours, official, NOT_IN_SNAPSHOT, PACKAGES)).toEqual([]);
  });

  it('allow-listed items are absent from the snapshot and carry the documented numbers in ours', () => {
    for (const a of NOT_IN_SNAPSHOT.fields) {
      const offType = official.lookupType(a.message);
      expect(offType.fields[a.field], `${a.message}.${a.field} (${a.ref})`).toBeUndefined();
      expect(offType.fieldsArray.map((x) => x.id), `${a.message} #${a.shape.number}`).not.toContain(a.shape.number);
      expect(fieldShape(ours.lookupType(a.message).fields[a.field]!), `${a.message}.${a.field}`).toEqual(a.shape);
    }
    for (const m of NOT_IN_SNAPSHOT.messages) {
      expect(official.lookup(m.message), m.message).toBeNull();
      const type = ours.lookupType(m.message);
      const shapes = Object.fromEntries(type.fieldsArray.map((x) => [x.name, fieldShape(x)]));
      expect(shapes, `${m.message} (${m.ref})`).toEqual(m.fields);
    }
    for (const v of NOT_IN_SNAPSHOT.enumValues) {
      const offEnum = official.lookupEnum(v.enum);
      expect(offEnum.values[v.value], `${v.enum}.${v.value}`).toBeUndefined();
      expect(offEnum.valuesById[v.number], `${v.enum} = ${v.number}`).toBeUndefined();
      expect(ours.lookupEnum(v.enum).values[v.value], `${v.enum}.${v.value} (${v.ref})`).toBe(v.number);
    }
  });

  it('Process is bidi streaming; Health.Check is unary and Health.Watch server-streaming (ours and official)', () => {
    const expected = {
      [`${EXT}.ExternalProcessor/Process`]: {
        requestType: `${EXT}.ProcessingRequest`,
        responseType: `${EXT}.ProcessingResponse`,
        requestStream: true,
        responseStream: true,
      },
      'grpc.health.v1.Health/Check': {
        requestType: 'grpc.health.v1.HealthCheckRequest',
        responseType: 'grpc.health.v1.HealthCheckResponse',
        requestStream: false,
        responseStream: false,
      },
      'grpc.health.v1.Health/Watch': {
        requestType: 'grpc.health.v1.HealthCheckRequest',
        responseType: 'grpc.health.v1.HealthCheckResponse',
        requestStream: false,
        responseStream: true,
      },
    };
    for (const [key, shape] of Object.entries(expected)) {
      const [svc, method] = key.split('/') as [string, string];
      expect(methodShape(ours.lookupService(svc).methods[method]!), `ours ${key}`).toEqual(shape);
      expect(methodShape(official.lookupService(svc).methods[method]!), `official ${key}`).toEqual(shape);
    }
    // And the runtime definitions src/proto.ts hands to grpc-js agree.
    const process = extProcService().service['Process']!;
    expect([process.path, process.requestStream, process.responseStream]).toEqual([
      `/${EXT}.ExternalProcessor/Process`,
      true,
      true,
    ]);
    const health = healthService().service;
    expect([health['Check']!.requestStream, health['Check']!.responseStream]).toEqual([false, false]);
    expect([health['Watch']!.requestStream, health['Watch']!.responseStream]).toEqual([false, true]);
  });
});

describe('the comparison detects breakage (loaded from edited copies of proto/, proto/ untouched)', () => {
  // Only problems the edit introduces: a genuine mismatch in proto/ fails the test above, not all of these.
  let baseline: Set<string>;
  beforeAll(() => {
    baseline = new Set(compareWithOfficial(ours, official, NOT_IN_SNAPSHOT, PACKAGES));
  });
  const compare = (root: protobuf.Root, allow: AllowList = NOT_IN_SNAPSHOT): string[] =>
    compareWithOfficial(root, official, allow, PACKAGES).filter((p) => !baseline.has(p));

  it('with an empty allow-list, exactly the allow-listed items are reported', () => {
    const problems = compare(ours, { fields: [], messages: [], enumValues: [] });
    const expected = [
      ...NOT_IN_SNAPSHOT.fields.map((a) => `${a.message}.${a.field}: field not in the official snapshot and not allow-listed`),
      ...NOT_IN_SNAPSHOT.messages.map((m) => `${m.message}: message not found in the official snapshot and not allow-listed`),
      ...NOT_IN_SNAPSHOT.enumValues.map((v) => `${v.enum}.${v.value}: enum value not in the official snapshot and not allow-listed`),
    ];
    expect([...problems].sort()).toEqual(expected.sort());
  });

  it('a changed field number', () => {
    const problems = compare(mutated(EXT_FILE, 'bool end_of_stream = 3;\n}\n\nmessage HttpBody', 'bool end_of_stream = 4;\n}\n\nmessage HttpBody'));
    expect(problems).toEqual([expect.stringMatching(/^envoy\.service\.ext_proc\.v3\.HttpHeaders\.end_of_stream: number differs/)]);
  });

  it('a changed scalar type (bytes -> string) and a changed message type', () => {
    expect(compare(mutated('envoy/config/core/v3/base.proto', 'bytes raw_value = 3;', 'string raw_value = 3;'))).toEqual([
      expect.stringMatching(/^envoy\.config\.core\.v3\.HeaderValue\.raw_value: type differs/),
    ]);
    expect(compare(mutated(EXT_FILE, 'HttpBody request_body = 4;', 'HttpHeaders request_body = 4;'))).toEqual([
      expect.stringMatching(/^envoy\.service\.ext_proc\.v3\.ProcessingRequest\.request_body: type differs/),
    ]);
  });

  it('a changed label (repeated -> singular, proto3 optional)', () => {
    expect(compare(mutated(EXT_FILE, 'repeated string remove_headers = 2;', 'string remove_headers = 2;'))).toEqual([
      expect.stringMatching(/HeaderMutation\.remove_headers: label differs/),
    ]);
    expect(compare(mutated(EXT_FILE, '  bool clear_route_cache = 5;', '  optional bool clear_route_cache = 5;'))).toEqual([
      expect.stringMatching(/CommonResponse\.clear_route_cache: label differs/),
    ]);
  });

  it('a field moved out of its oneof, and a renamed oneof', () => {
    const out = mutated(EXT_FILE, '    ImmediateResponse immediate_response = 7;\n', '').lookupType(`${EXT}.ProcessingResponse`);
    out.add(new protobuf.Field('immediate_response', 7, 'ImmediateResponse'));
    const root = out.root as protobuf.Root;
    root.resolveAll();
    expect(compare(root)).toEqual([expect.stringMatching(/ProcessingResponse\.immediate_response: oneof differs/)]);
    expect(compare(mutated(EXT_FILE, 'oneof mutation {', 'oneof body_mutation {'))).toEqual([
      expect.stringMatching(/BodyMutation\.body: oneof differs/),
      expect.stringMatching(/BodyMutation\.clear_body: oneof differs/),
      expect.stringMatching(/BodyMutation\.streamed_response: oneof differs from allow-list/),
    ]);
  });

  it('a changed enum value and an unknown enum value', () => {
    const file = 'envoy/extensions/filters/http/ext_proc/v3/processing_mode.proto';
    expect(compare(mutated(file, 'BUFFERED = 2;', 'BUFFERED = 6;'))).toEqual([
      expect.stringMatching(/BodySendMode\.BUFFERED: number differs: ours = 6, official = 2/),
    ]);
    expect(compare(mutated(file, 'GRPC = 5;', 'GRPC = 5;\n    BIDI = 7;'))).toEqual([
      expect.stringMatching(/BodySendMode\.BIDI: enum value not in the official snapshot and not allow-listed/),
    ]);
  });

  it('an unlisted new field, and an allow-listed field with the wrong number', () => {
    expect(compare(mutated(EXT_FILE, 'bool request_drain = 12;', 'bool request_drain = 12;\n  bool typed_dynamic_metadata = 13;'))).toEqual([
      expect.stringMatching(/ProcessingResponse\.typed_dynamic_metadata: field not in the official snapshot and not allow-listed/),
    ]);
    expect(compare(mutated(EXT_FILE, 'bool request_drain = 12;', 'bool request_drain = 13;'))).toEqual([
      expect.stringMatching(/ProcessingResponse\.request_drain: number differs from allow-list \(external_processor\.proto\)/),
    ]);
    // Allow-listed with a number the snapshot uses for another field (ours dropped that field).
    const from = 'google.protobuf.Duration override_message_timeout = 10;\n  bool request_drain = 12;';
    expect(compare(mutated(EXT_FILE, from, 'bool request_drain = 10;'))).toEqual(
      expect.arrayContaining([expect.stringMatching(/request_drain: #10 is official field .*override_message_timeout/)]),
    );
  });

  it('an allow-list entry that the snapshot does have, or that ours no longer has (the list cannot rot)', () => {
    const stale: AllowList = {
      ...NOT_IN_SNAPSHOT,
      fields: [
        ...NOT_IN_SNAPSHOT.fields,
        { message: `${EXT}.ProcessingRequest`, field: 'observability_mode', shape: f(10, 'bool'), ref: 'test' },
        { message: `${EXT}.ProcessingRequest`, field: 'no_such_field', shape: f(99, 'bool'), ref: 'test' },
      ],
    };
    expect(compare(ours, stale)).toEqual([
      expect.stringMatching(/ProcessingRequest\.observability_mode: allow-listed as absent, but the official snapshot has it/),
      'allow-list: field envoy.service.ext_proc.v3.ProcessingRequest.no_such_field is not in ours (or its message is unknown)',
    ]);
  });

  it('a streaming flag or request type changed on a method', () => {
    expect(compare(mutated(EXT_FILE, 'returns (stream ProcessingResponse)', 'returns (ProcessingResponse)'))).toEqual([
      expect.stringMatching(/ExternalProcessor\/Process: responseStream differs: ours false, official true/),
    ]);
    expect(
      compare(mutated('grpc/health/v1/health.proto', 'rpc Watch(HealthCheckRequest)', 'rpc Watch(stream HealthCheckRequest)')),
    ).toEqual([expect.stringMatching(/Health\/Watch: requestStream differs/)]);
  });
});

// ---------------------------------------------------------------------------------------------------
// Wire round trips

const PATH = '/openai/deployments/gpt-image-1/images/generations?api-version=2025-04-01-preview';
// Not valid UTF-8: proves header values travel as bytes (raw_value), never through a string.
const LATIN1 = Buffer.from([0x63, 0x61, 0x66, 0xe9]);
const IMAGE_BODY = Buffer.from(JSON.stringify({ prompt: 'a red fox', n: 2, size: '1024x1024' }));
const ERROR_BODY = Buffer.from(JSON.stringify({ error: { code: 'invalid_request', message: 'size must be 1024x1024' } }));

const DYNAMIC_METADATA = {
  fields: {
    'envoy.filters.http.ext_proc': {
      structValue: {
        fields: {
          deployment: { stringValue: 'gpt-image-1' },
          images: { numberValue: 2 },
          rewritten: { boolValue: true },
          route: { structValue: { fields: { api_version: { stringValue: '2025-04-01-preview' } } } },
        },
      },
    },
  },
};

const HEADERS_RESPONSE: ProcessingResponse = {
  request_headers: {
    response: {
      header_mutation: {
        set_headers: [
          { header: { key: ':path', raw_value: Buffer.from(PATH) }, append: { value: false } },
          { header: { key: 'api-key', raw_value: Buffer.from('azure-key-123') }, append: { value: false } },
          { header: { key: 'x-extproc-note', raw_value: LATIN1 }, append: { value: true } },
        ],
        remove_headers: ['authorization', 'content-length'],
      },
      clear_route_cache: true,
    },
  },
  mode_override: { request_body_mode: 'BUFFERED', response_header_mode: 'SKIP' },
  dynamic_metadata: DYNAMIC_METADATA,
};

const BODY_RESPONSE: ProcessingResponse = {
  request_body: {
    response: {
      status: 'CONTINUE_AND_REPLACE',
      header_mutation: {
        set_headers: [{ header: { key: 'content-length', raw_value: Buffer.from(String(IMAGE_BODY.length)) }, append: { value: false } }],
      },
      body_mutation: { body: IMAGE_BODY },
    },
  },
};

const IMMEDIATE_RESPONSE: ProcessingResponse = {
  immediate_response: {
    status: { code: 400 },
    headers: {
      set_headers: [
        { header: { key: 'content-type', raw_value: Buffer.from('application/json') }, append: { value: false } },
        { header: { key: 'x-azure-image-extproc', raw_value: Buffer.from('rejected') }, append: { value: false } },
      ],
    },
    body: ERROR_BODY,
    details: 'azure_image_extproc_invalid_size',
  },
  dynamic_metadata: DYNAMIC_METADATA,
};

// Official-side decode: enums stay numeric (what is on the wire), bytes stay Buffers, oneofs get a discriminator.
const OFFICIAL_TO_OBJECT: protobuf.IConversionOptions = { longs: String, oneofs: true };

function serializeOurs(response: ProcessingResponse): Buffer {
  return extProcService().service['Process']!.responseSerialize(response);
}

function decodeOfficial(typeName: string, bytes: Uint8Array): Record<string, any> {
  const type = official.lookupType(typeName);
  return type.toObject(type.decode(bytes), OFFICIAL_TO_OBJECT);
}

const buf = (x: unknown): Buffer => Buffer.from(x as Uint8Array);

describe('wire round trip between our definitions (src/proto.ts) and the official ones', () => {
  it('headers response: set_headers raw_value + append, remove_headers, clear_route_cache, mode_override, Struct', () => {
    const decoded = decodeOfficial(`${EXT}.ProcessingResponse`, serializeOurs(HEADERS_RESPONSE));
    expect(decoded['response']).toBe('request_headers');
    const common = decoded['request_headers'].response;
    const set = common.header_mutation.set_headers as { header: { key: string; raw_value: Uint8Array; value?: string }; append?: { value?: boolean } }[];
    expect(set.map((s) => s.header.key)).toEqual([':path', 'api-key', 'x-extproc-note']);
    expect(set.map((s) => buf(s.header.raw_value))).toEqual([Buffer.from(PATH), Buffer.from('azure-key-123'), LATIN1]);
    expect(set.map((s) => s.header.value ?? '')).toEqual(['', '', '']);
    // The append wrapper is present on every entry (false stays "set", Envoy's default is overwrite anyway).
    expect(set.map((s) => s.append !== undefined)).toEqual([true, true, true]);
    expect(set.map((s) => s.append?.value ?? false)).toEqual([false, false, true]);
    expect(common.header_mutation.remove_headers).toEqual(['authorization', 'content-length']);
    expect(common.clear_route_cache).toBe(true);
    expect(common.status ?? 0).toBe(0); // CONTINUE
    expect(decoded['mode_override']).toEqual({ request_body_mode: 2 /* BUFFERED */, response_header_mode: 2 /* SKIP */ });
    expect(decoded['dynamic_metadata']).toEqual({
      fields: {
        'envoy.filters.http.ext_proc': {
          kind: 'structValue',
          structValue: {
            fields: {
              deployment: { kind: 'stringValue', stringValue: 'gpt-image-1' },
              images: { kind: 'numberValue', numberValue: 2 },
              rewritten: { kind: 'boolValue', boolValue: true },
              route: {
                kind: 'structValue',
                structValue: { fields: { api_version: { kind: 'stringValue', stringValue: '2025-04-01-preview' } } },
              },
            },
          },
        },
      },
    });
  });

  it('body response: CONTINUE_AND_REPLACE with body_mutation.body and a content-length header', () => {
    const decoded = decodeOfficial(`${EXT}.ProcessingResponse`, serializeOurs(BODY_RESPONSE));
    expect(decoded['response']).toBe('request_body');
    const common = decoded['request_body'].response;
    expect(common.status).toBe(1); // CONTINUE_AND_REPLACE
    expect(common.body_mutation.mutation).toBe('body');
    expect(buf(common.body_mutation.body)).toEqual(IMAGE_BODY);
    expect(common.header_mutation.set_headers[0].header.key).toBe('content-length');
    expect(buf(common.header_mutation.set_headers[0].header.raw_value).toString()).toBe(String(IMAGE_BODY.length));
    expect(decoded['mode_override']).toBeUndefined();
    expect(decoded['dynamic_metadata']).toBeUndefined();
  });

  it('immediate response: status 400, headers, body, details, dynamic metadata', () => {
    const decoded = decodeOfficial(`${EXT}.ProcessingResponse`, serializeOurs(IMMEDIATE_RESPONSE));
    expect(decoded['response']).toBe('immediate_response');
    const imm = decoded['immediate_response'];
    expect(imm.status).toEqual({ code: 400 });
    expect(official.lookupEnum('envoy.type.v3.StatusCode').valuesById[imm.status.code]).toBe('BadRequest');
    expect(imm.headers.set_headers.map((s: any) => [s.header.key, buf(s.header.raw_value).toString(), s.append.value])).toEqual([
      ['content-type', 'application/json', false],
      ['x-azure-image-extproc', 'rejected', false],
    ]);
    expect(buf(imm.body)).toEqual(ERROR_BODY);
    expect(imm.details).toBe('azure_image_extproc_invalid_size');
    expect(imm.grpc_status).toBeUndefined();
    expect(decoded['dynamic_metadata'].fields['envoy.filters.http.ext_proc'].structValue.fields.route.structValue.fields.api_version.stringValue).toBe(
      '2025-04-01-preview',
    );
  });

  it('requests encoded with the official definitions decode with ours (requestDeserialize)', () => {
    const Req = official.lookupType(`${EXT}.ProcessingRequest`);
    const encode = (obj: Record<string, unknown>): Buffer => buf(Req.encode(Req.fromObject(obj)).finish());
    const deserialize = (bytes: Buffer): ProcessingRequest =>
      extProcService().service['Process']!.requestDeserialize(bytes) as ProcessingRequest;

    const headerBytes = encode({
      request_headers: {
        headers: {
          headers: [
            { key: ':method', raw_value: Buffer.from('GET') },
            { key: ':path', raw_value: Buffer.from('/v1/images/generations/job-1') },
            { key: ':authority', raw_value: Buffer.from('api.example.test') },
            { key: 'x-note', raw_value: LATIN1 },
            { key: 'set-cookie', raw_value: Buffer.from('a=1') },
            { key: 'set-cookie', raw_value: Buffer.from('b=2') },
          ],
        },
        end_of_stream: true,
      },
      metadata_context: { filter_metadata: { 'envoy.lb': { fields: { canary: { boolValue: true } } } } },
      attributes: { 'envoy.filters.http.ext_proc': { fields: { 'request.path': { stringValue: '/v1/images/generations/job-1' } } } },
      observability_mode: true,
    });
    const headers = deserialize(headerBytes);
    expect(headers.request).toBe('request_headers');
    expect(headers.request_headers!.end_of_stream).toBe(true);
    expect(headers.request_headers!.headers!.headers.map((h) => [h.key, h.value, buf(h.raw_value)])).toEqual([
      [':method', '', Buffer.from('GET')],
      [':path', '', Buffer.from('/v1/images/generations/job-1')],
      [':authority', '', Buffer.from('api.example.test')],
      ['x-note', '', LATIN1],
      ['set-cookie', '', Buffer.from('a=1')],
      ['set-cookie', '', Buffer.from('b=2')],
    ]);
    expect(headers.observability_mode).toBe(true);
    expect(headers.attributes).toMatchObject({
      'envoy.filters.http.ext_proc': { fields: { 'request.path': { stringValue: '/v1/images/generations/job-1' } } },
    });
    expect(headers.metadata_context).toMatchObject({ filter_metadata: { 'envoy.lb': { fields: { canary: { boolValue: true } } } } });
    expect(headers.protocol_config ?? null).toBeNull(); // the old snapshot cannot send it

    const body = deserialize(encode({ request_body: { body: IMAGE_BODY, end_of_stream: true } }));
    expect(body.request).toBe('request_body');
    expect(buf(body.request_body!.body)).toEqual(IMAGE_BODY);
    expect(body.request_body!.end_of_stream).toBe(true);
    expect(body.request_headers ?? null).toBeNull();
  });
});

// ---------------------------------------------------------------------------------------------------
// Independent wire check with google-protobuf's BinaryReader (no protobufjs involved in decoding)

const WIRE_VARINT = 0;
const WIRE_DELIMITED = 2;

interface WireField {
  field: number;
  wireType: number;
  bytes?: Uint8Array;
  varint?: number;
}

function readFields(bytes: Uint8Array): WireField[] {
  const reader = new BinaryReader(bytes);
  const out: WireField[] = [];
  while (reader.nextField()) {
    if (reader.isEndGroup()) break;
    const field = reader.getFieldNumber();
    const wireType = reader.getWireType() as number;
    if (wireType === WIRE_DELIMITED) out.push({ field, wireType, bytes: reader.readBytes() });
    else if (wireType === WIRE_VARINT) out.push({ field, wireType, varint: reader.readUint32() });
    else {
      out.push({ field, wireType });
      reader.skipField();
    }
  }
  return out;
}

const only = (fields: WireField[], n: number): WireField[] => fields.filter((x) => x.field === n);
const one = (fields: WireField[], n: number): WireField => {
  const found = only(fields, n);
  if (found.length !== 1) throw new Error(`expected one field #${n}, got ${found.length}`);
  return found[0]!;
};
const text = (x: WireField): string => new TextDecoder().decode(x.bytes);

describe('raw bytes of a serialized ProcessingResponse (google-protobuf BinaryReader)', () => {
  it('has the Envoy field numbers and wire types at every level', () => {
    const top = readFields(serializeOurs(HEADERS_RESPONSE));
    // 1 = request_headers (HeadersResponse), 8 = dynamic_metadata (Struct), 9 = mode_override (ProcessingMode).
    expect(top.map((x) => [x.field, x.wireType]).sort((a, b) => a[0]! - b[0]!)).toEqual([
      [1, WIRE_DELIMITED],
      [8, WIRE_DELIMITED],
      [9, WIRE_DELIMITED],
    ]);

    // mode_override: 2 = response_header_mode SKIP(2), 3 = request_body_mode BUFFERED(2).
    const mode = readFields(one(top, 9).bytes!);
    expect(mode.map((x) => [x.field, x.wireType, x.varint]).sort((a, b) => a[0]! - b[0]!)).toEqual([
      [2, WIRE_VARINT, 2],
      [3, WIRE_VARINT, 2],
    ]);

    // HeadersResponse.response (1) -> CommonResponse: header_mutation (2), clear_route_cache (5) = true.
    const common = readFields(one(readFields(one(top, 1).bytes!), 1).bytes!);
    expect(one(common, 2).wireType).toBe(WIRE_DELIMITED);
    expect(one(common, 5)).toMatchObject({ wireType: WIRE_VARINT, varint: 1 });

    // HeaderMutation: set_headers (1) x3, remove_headers (2) x2 as length-delimited strings.
    const mutation = readFields(one(common, 2).bytes!);
    expect(only(mutation, 2).map(text)).toEqual(['authorization', 'content-length']);
    const setHeaders = only(mutation, 1).map((x) => readFields(x.bytes!));
    expect(setHeaders).toHaveLength(3);
    // HeaderValueOption: header (1) -> HeaderValue key (1), raw_value (3), and no value (2); append (2) -> BoolValue.value (1).
    const header = readFields(one(setHeaders[0]!, 1).bytes!);
    expect(text(one(header, 1))).toBe(':path');
    expect(Buffer.from(one(header, 3).bytes!)).toEqual(Buffer.from(PATH));
    expect(only(header, 2)).toEqual([]);
    const third = setHeaders[2]!;
    expect(Buffer.from(one(readFields(one(third, 1).bytes!), 3).bytes!)).toEqual(LATIN1);
    expect(readFields(one(third, 2).bytes!)).toEqual([{ field: 1, wireType: WIRE_VARINT, varint: 1 }]);

    // dynamic_metadata Struct: fields (1) map entry { key (1), value (2) -> Value.struct_value (5) }.
    const entry = readFields(one(readFields(one(top, 8).bytes!), 1).bytes!);
    expect(text(one(entry, 1))).toBe('envoy.filters.http.ext_proc');
    const value = readFields(one(entry, 2).bytes!);
    expect(value.map((x) => [x.field, x.wireType])).toEqual([[5, WIRE_DELIMITED]]);
  });

  it('immediate_response is field 7 with HttpStatus.code (1) = 400 as a varint', () => {
    const top = readFields(serializeOurs(IMMEDIATE_RESPONSE));
    expect(top.map((x) => x.field).sort((a, b) => a - b)).toEqual([7, 8]);
    const imm = readFields(one(top, 7).bytes!);
    expect(readFields(one(imm, 1).bytes!)).toEqual([{ field: 1, wireType: WIRE_VARINT, varint: 400 }]);
    expect(Buffer.from(one(imm, 3).bytes!)).toEqual(ERROR_BODY);
    expect(text(one(imm, 5))).toBe('azure_image_extproc_invalid_size');
  });
});
