// Which editor a request body needs, from its Content-Type.
import { parseBoundary } from './multipart.js';
import { trimOws } from './params.js';

export type BodyKind = { kind: 'json' } | { kind: 'multipart'; boundary: string } | { kind: 'other' };

/**
 * `application/json` (any parameters, any case) is JSON; `multipart/form-data` with a valid boundary
 * is multipart. Everything else, `application/*+json` included, is left alone.
 */
export function classifyBody(contentType: string | undefined): BodyKind {
  if (contentType === undefined) return { kind: 'other' };
  const semicolon = contentType.indexOf(';');
  const mediaType = trimOws(semicolon < 0 ? contentType : contentType.slice(0, semicolon)).toLowerCase();
  if (mediaType === 'application/json') return { kind: 'json' };
  if (mediaType === 'multipart/form-data') {
    const boundary = parseBoundary(contentType);
    if (boundary !== null) return { kind: 'multipart', boundary };
  }
  return { kind: 'other' };
}
