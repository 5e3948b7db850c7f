// Compressed request bodies (content-encoding gzip/deflate/br): ext_proc sees the compressed bytes
// (docs/envoy-ext-proc.md#bodies). Inflation is bounded so a small bomb cannot expand into gigabytes.
import { brotliDecompressSync, gunzipSync, inflateSync } from 'node:zlib';

export type Encoding = 'identity' | 'gzip' | 'deflate' | 'br';

/** The single content-coding of a request, or undefined for stacked/unknown codings we cannot edit. */
export function parseEncoding(header: string | undefined): Encoding | undefined {
  const value = header?.trim().toLowerCase() ?? '';
  if (value === '' || value === 'identity') return 'identity';
  if (value === 'gzip' || value === 'x-gzip') return 'gzip';
  if (value === 'deflate' || value === 'br') return value;
  return undefined;
}

/** Decompresses at most `maxBytes`; undefined when the body is corrupt or inflates past the limit. */
export function decompress(body: Buffer, encoding: Exclude<Encoding, 'identity'>, maxBytes: number): Buffer | undefined {
  try {
    const options = { maxOutputLength: maxBytes };
    if (encoding === 'gzip') return gunzipSync(body, options);
    if (encoding === 'deflate') return inflateSync(body, options);
    return brotliDecompressSync(body, options);
  } catch {
    return undefined;
  }
}
