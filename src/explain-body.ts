// The body half of `explain`'s report: what the request body was, what reached the upstream, and the
// difference by field (JSON members, multipart parts). Reads bodies with the server's own multipart
// reader (listMultipartParts); never prints binary content.
import { classifyBody, listMultipartParts, type MultipartPart } from './body/index.js';
import type { Config } from './config.js';
import { decompress, parseEncoding } from './encoding.js';

/** Results printed whole up to this size (JSON text); larger or binary bodies are summarised. */
const PRINTABLE_BODY_BYTES = 2048;

export interface BodyField {
  name: string;
  before?: string;
  after?: string;
}

/** A multipart part by name and size, never its content. */
export interface PartSummary {
  name: string;
  filename?: string;
  contentType?: string;
  bytes: number;
}

export interface BodyDiff {
  kind: 'json' | 'multipart' | 'other' | 'none';
  bytesBefore: number;
  bytesAfter: number;
  changed: boolean;
  removed: string[];
  added: string[];
  replaced: BodyField[];
  /** The resulting body when it is small JSON text. */
  result?: string;
  /** The resulting multipart parts. */
  parts?: PartSummary[];
  /** The multipart parts of the request that are not in the result. */
  removedParts?: PartSummary[];
  /** Why the fields could not be compared. */
  note?: string;
}

export type HeaderList = Array<[string, string]>;

export function printable(value: string, limit = 80): string {
  return value.length <= limit ? value : `${value.slice(0, limit)}… (${value.length} characters)`;
}

function lookup(headers: HeaderList, name: string): string | undefined {
  return headers.find(([key]) => key === name)?.[1];
}

function partsOf(body: Buffer, contentType: string | undefined): MultipartPart[] | undefined {
  const kind = classifyBody(contentType);
  return kind.kind === 'multipart' ? listMultipartParts(body, kind.boundary) : undefined;
}

function summary(part: MultipartPart): PartSummary {
  return {
    name: part.name ?? '(no name)',
    ...(part.filename !== undefined ? { filename: part.filename } : {}),
    ...(part.contentType ? { contentType: part.contentType } : {}),
    bytes: part.content.length,
  };
}

/** Top-level fields of a body as name -> printable values (a repeated multipart name has several). */
function fieldsOf(body: Buffer, contentType: string | undefined): Map<string, string[]> | undefined {
  const kind = classifyBody(contentType);
  if (kind.kind === 'json') {
    try {
      const value: unknown = JSON.parse(body.toString('utf8'));
      if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
      return new Map(Object.entries(value).map(([key, member]) => [key, [JSON.stringify(member)]]));
    } catch {
      return undefined;
    }
  }
  const parts = partsOf(body, contentType);
  if (!parts) return undefined;
  const fields = new Map<string, string[]>();
  for (const part of parts) {
    const name = part.name ?? '(no name)';
    const shown = part.filename !== undefined ? `<file ${part.filename}, ${part.content.length} bytes>` : part.content.toString('utf8');
    fields.set(name, [...(fields.get(name) ?? []), shown]);
  }
  return fields;
}

/** The parts of `before` that `after` no longer has (a repeated name counts each part). */
function removedParts(before: MultipartPart[], after: MultipartPart[]): PartSummary[] {
  const left = [...after];
  const removed: PartSummary[] = [];
  for (const part of before) {
    const kept = left.findIndex((other) => other.name === part.name && other.headers === part.headers && other.content.equals(part.content));
    if (kept === -1) removed.push(summary(part));
    else left.splice(kept, 1);
  }
  return removed;
}

function isPrintableText(body: Buffer): boolean {
  const text = body.toString('utf8');
  // eslint-disable-next-line no-control-regex
  return !text.includes('\uFFFD') && !/[\u0000-\u0008\u000e-\u001f\u007f]/.test(text);
}

/** Compares the body the client sent with the body that reached the upstream. */
export function diffBodies(before: Buffer, after: Buffer, headersBefore: HeaderList, headersAfter: HeaderList, config: Config): BodyDiff {
  const contentType = lookup(headersAfter, 'content-type') ?? lookup(headersBefore, 'content-type');
  const kind = before.length === 0 ? 'none' : classifyBody(contentType).kind;
  const diff: BodyDiff = {
    kind,
    bytesBefore: before.length,
    bytesAfter: after.length,
    changed: !before.equals(after),
    removed: [],
    added: [],
    replaced: [],
  };
  if (kind === 'none' || kind === 'other') return diff;

  // The server sends an edited compressed body decompressed (content-encoding removed): compare the
  // decoded original with the result.
  let original = before;
  const encodingBefore = parseEncoding(lookup(headersBefore, 'content-encoding'));
  const encodingAfter = parseEncoding(lookup(headersAfter, 'content-encoding'));
  if (encodingAfter !== 'identity') {
    diff.note = 'the body is compressed: fields are not compared';
    return diff;
  }
  if (encodingBefore !== 'identity') {
    const decoded = encodingBefore && decompress(before, encodingBefore, config.limits.maxDecompressedBytes);
    if (!decoded) {
      diff.note = 'the original body could not be decompressed: fields are not compared';
      return diff;
    }
    original = decoded;
  }

  const fieldsBefore = fieldsOf(original, contentType);
  const fieldsAfter = fieldsOf(after, contentType);
  if (!fieldsBefore || !fieldsAfter) {
    diff.note = `the ${fieldsBefore ? 'resulting' : 'original'} body is not valid ${kind}: fields are not compared`;
  } else {
    for (const [name, values] of fieldsBefore) {
      const now = fieldsAfter.get(name);
      if (!now) diff.removed.push(name);
      else if (now.join('\n') !== values.join('\n')) diff.replaced.push({ name, before: printable(values.join(', ')), after: printable(now.join(', ')) });
    }
    for (const name of fieldsAfter.keys()) if (!fieldsBefore.has(name)) diff.added.push(name);
  }

  if (kind === 'json' && after.length <= PRINTABLE_BODY_BYTES && isPrintableText(after)) diff.result = after.toString('utf8');
  if (kind === 'multipart') {
    const partsBefore = partsOf(original, contentType);
    const partsAfter = partsOf(after, contentType);
    if (partsAfter) diff.parts = partsAfter.map(summary);
    if (partsBefore && partsAfter) diff.removedParts = removedParts(partsBefore, partsAfter);
  }
  return diff;
}

/** The body diff of a request answered locally: nothing was forwarded. */
export function notForwarded(body: Buffer): BodyDiff {
  return {
    kind: body.length === 0 ? 'none' : 'other',
    bytesBefore: body.length,
    bytesAfter: 0,
    changed: false,
    removed: [],
    added: [],
    replaced: [],
    note: 'not forwarded: the request is answered locally',
  };
}
