// Parameters of a header value such as `multipart/form-data; boundary="x"` (RFC 9110 §5.6.6) or
// `form-data; name="model"` (RFC 7578 §4.2, RFC 2183). Whitespace around ";" and "=" is tolerated;
// a quoted-string may hold quoted-pairs (\").

export interface HeaderValue {
  /** The value before the first ";", trimmed and lower-cased. */
  type: string;
  /** Parameters in order; names lower-cased, values as written (quotes and escapes removed). */
  params: Array<[name: string, value: string]>;
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const WHITESPACE = /[ \t]/;

/** Trims optional whitespace (RFC 9110 OWS: SP and HTAB only, unlike String.prototype.trim). */
export function trimOws(text: string): string {
  return text.replace(/^[ \t]+|[ \t]+$/g, '');
}

/** Null when the parameters are malformed (an unterminated quote, a missing "=", stray text). */
export function parseHeaderValue(text: string): HeaderValue | null {
  const firstSemicolon = text.indexOf(';');
  const type = trimOws(firstSemicolon < 0 ? text : text.slice(0, firstSemicolon)).toLowerCase();
  const params: HeaderValue['params'] = [];
  let i = firstSemicolon < 0 ? text.length : firstSemicolon;
  const skipSpace = (): void => {
    while (i < text.length && WHITESPACE.test(text[i])) i++;
  };
  while (i < text.length) {
    // text[i] is ";" here.
    i++;
    skipSpace();
    if (i === text.length) break;
    if (text[i] === ';') continue;
    const eq = text.indexOf('=', i);
    if (eq < 0) return null;
    const name = trimOws(text.slice(i, eq));
    if (!TOKEN.test(name)) return null;
    i = eq + 1;
    skipSpace();
    let value = '';
    if (text[i] === '"') {
      i++;
      for (;;) {
        if (i >= text.length) return null;
        const ch = text[i];
        if (ch === '"') break;
        if (ch === '\\') {
          i++;
          if (i >= text.length) return null;
        }
        value += text[i];
        i++;
      }
      i++;
    } else {
      const end = text.indexOf(';', i);
      value = trimOws(text.slice(i, end < 0 ? text.length : end));
      if (value === '' || /[ \t"]/.test(value)) return null;
      i = end < 0 ? text.length : end;
    }
    skipSpace();
    if (i < text.length && text[i] !== ';') return null;
    params.push([name.toLowerCase(), value]);
  }
  return { type, params };
}
