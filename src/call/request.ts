// What a call knows about its request once the headers are read: a header lookup, the announced length,
// and, for a request whose body may be edited, the facts every body strategy needs.
import type { Encoding } from '../encoding.js';
import type { HeaderMap } from '../proto.js';
import type { RequestPlan } from '../rewrite.js';

/** Header lookup over Envoy's HeaderMap: keys are lower-case, values are bytes in raw_value (docs/envoy-ext-proc.md). */
export class HeaderView {
  private readonly map = new Map<string, string>();

  constructor(headers: HeaderMap | null | undefined) {
    for (const entry of headers?.headers ?? []) {
      const key = entry.key.toLowerCase();
      // Envoy >= 1.27 sends raw_value; a value-only entry comes from older Envoys.
      const value = entry.raw_value && entry.raw_value.length > 0 ? entry.raw_value.toString('latin1') : (entry.value ?? '');
      if (!this.map.has(key)) this.map.set(key, value);
    }
  }

  get(name: string): string | undefined {
    return this.map.get(name);
  }

  has(name: string): boolean {
    return this.map.has(name);
  }
}

/**
 * The body length a `content-length` value announces, or undefined when it announces none that can be
 * trusted. Only decimal digits are a length (RFC 9110 §8.6): `Number()` would also take `-1`, `1e3`,
 * `0x10` and `""`, and a negative length would enlarge the memory budget it is reserved from.
 */
export function announcedLength(value: string | undefined): number | undefined {
  if (value === undefined || !/^[0-9]{1,16}$/.test(value)) return undefined;
  const length = Number(value);
  return Number.isSafeInteger(length) ? length : undefined;
}

/** A request whose body the call may edit. */
export interface BodyRequest {
  plan: RequestPlan;
  bodyKind: 'json' | 'multipart';
  boundary?: string;
  encoding: Encoding;
  hadContentLength: boolean;
  /** From content-length; undefined when absent or not a length. */
  declaredLength: number | undefined;
  /** Body bytes received from Envoy so far. */
  bytesIn: number;
  /** Body bytes sent on so far. */
  bytesOut: number;
}
