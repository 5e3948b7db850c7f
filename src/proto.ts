// Loads the hand-written ext_proc subset in proto/ and types the decoded messages.
// Loader options follow docs/envoy-ext-proc.md#loading-the-protos-in-node: keepCase + oneofs gives a discriminator
// property per oneof (`req.request === 'request_headers'`), bytes decode as Buffer, enums as names.
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

export const PROTO_DIR = fileURLToPath(new URL('../proto', import.meta.url));
export const EXT_PROC_SERVICE = 'envoy.service.ext_proc.v3.ExternalProcessor';

export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

export type HeaderSendMode = 'DEFAULT' | 'SEND' | 'SKIP';
export type BodySendMode = 'NONE' | 'STREAMED' | 'BUFFERED' | 'BUFFERED_PARTIAL' | 'FULL_DUPLEX_STREAMED' | 'GRPC';

export interface ProcessingMode {
  request_header_mode?: HeaderSendMode;
  response_header_mode?: HeaderSendMode;
  request_body_mode?: BodySendMode;
  response_body_mode?: BodySendMode;
  request_trailer_mode?: HeaderSendMode;
  response_trailer_mode?: HeaderSendMode;
}

export interface HeaderValue {
  key: string;
  value?: string;
  raw_value?: Buffer;
}

export interface HeaderValueOption {
  header: HeaderValue;
  append?: { value: boolean };
}

export interface HeaderMap {
  headers: HeaderValue[];
}

export interface HttpHeaders {
  headers?: HeaderMap | null;
  end_of_stream: boolean;
}

export interface HttpBody {
  body: Buffer;
  end_of_stream: boolean;
}

export interface HttpTrailers {
  trailers?: HeaderMap | null;
}

export interface ProtocolConfiguration {
  request_body_mode: BodySendMode;
  response_body_mode: BodySendMode;
  send_body_without_waiting_for_header_response: boolean;
}

export type RequestKind =
  | 'request_headers'
  | 'response_headers'
  | 'request_body'
  | 'response_body'
  | 'request_trailers'
  | 'response_trailers';

/** A decoded ProcessingRequest (Envoy -> server). */
export interface ProcessingRequest {
  request?: RequestKind;
  request_headers?: HttpHeaders | null;
  response_headers?: HttpHeaders | null;
  request_body?: HttpBody | null;
  response_body?: HttpBody | null;
  request_trailers?: HttpTrailers | null;
  response_trailers?: HttpTrailers | null;
  metadata_context?: unknown;
  attributes?: Record<string, unknown>;
  observability_mode?: boolean;
  protocol_config?: ProtocolConfiguration | null;
}

export interface HeaderMutation {
  set_headers?: HeaderValueOption[];
  remove_headers?: string[];
}

export interface StreamedBodyResponse {
  body: Buffer;
  end_of_stream: boolean;
}

export type BodyMutation =
  | { body: Buffer }
  | { clear_body: true }
  | { streamed_response: StreamedBodyResponse };

export interface CommonResponse {
  status?: 'CONTINUE' | 'CONTINUE_AND_REPLACE';
  header_mutation?: HeaderMutation;
  body_mutation?: BodyMutation;
  clear_route_cache?: boolean;
}

export interface ImmediateResponse {
  status: { code: number | string };
  headers?: HeaderMutation;
  body?: Buffer;
  grpc_status?: { status: number };
  details?: string;
}

/** google.protobuf.Struct as protobufjs encodes it: Value members are camelCase even with keepCase
 * (docs/envoy-ext-proc.md#loading-the-protos-in-node). */
export interface StructValue {
  fields: Record<string, ProtoValue>;
}
export type ProtoValue =
  | { stringValue: string }
  | { numberValue: number }
  | { boolValue: boolean }
  | { structValue: StructValue }
  | { nullValue: 'NULL_VALUE' };

/** A ProcessingResponse (server -> Envoy). Exactly one oneof member must be set. */
export type ProcessingResponse = (
  | { request_headers: { response: CommonResponse } }
  | { response_headers: { response: CommonResponse } }
  | { request_body: { response: CommonResponse } }
  | { response_body: { response: CommonResponse } }
  | { request_trailers: { header_mutation?: HeaderMutation } }
  | { response_trailers: { header_mutation?: HeaderMutation } }
  | { immediate_response: ImmediateResponse }
) & {
  mode_override?: ProcessingMode;
  dynamic_metadata?: StructValue;
};

let cached: grpc.GrpcObject | undefined;

/** The loaded package tree (envoy.service.ext_proc.v3 and grpc.health.v1), loaded once per process. */
export function loadProtos(): grpc.GrpcObject {
  if (!cached) {
    const definition = protoLoader.loadSync(
      ['envoy/service/ext_proc/v3/external_processor.proto', 'grpc/health/v1/health.proto'],
      LOADER_OPTIONS,
    );
    cached = grpc.loadPackageDefinition(definition);
  }
  return cached;
}

function lookup(path: string): grpc.ServiceClientConstructor {
  let node: unknown = loadProtos();
  for (const part of path.split('.')) node = (node as Record<string, unknown>)[part];
  return node as grpc.ServiceClientConstructor;
}

/** The ExternalProcessor service definition (for Server.addService) and client constructor. */
export function extProcService(): grpc.ServiceClientConstructor {
  return lookup(EXT_PROC_SERVICE);
}

export function healthService(): grpc.ServiceClientConstructor {
  return lookup('grpc.health.v1.Health');
}
