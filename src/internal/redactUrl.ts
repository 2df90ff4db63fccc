// Query parameters that carry a credential (ioredis reads `?password=` from a URL).
const SECRET_PARAM = /([?&;](?:password|pass|pwd|secret|token|auth)[^=&;#]*=)[^&;#]*/gi
const SECRET_KEY = /pass|pwd|secret|token|auth|key|cert/i

/**
 * A URL fit for an error message or a log line: the password (and a user name given with
 * one) replaced by `***`, and so are credentials in the query. Works on strings that are
 * not quite URLs too, since those are exactly the ones that end up echoed in option
 * errors: no scheme (`user:pw@host`), a mistyped one (`redis:/`), a leading space, or a
 * password not percent-encoded (`/`, `#` or `@` in it). Everything up to the last `@` is
 * taken as credentials: a URL with an `@` elsewhere is redacted more than it needs.
 */
export function redactUrl(url: string): string {
  const scheme = /^\s*(?:[a-z][a-z0-9+.-]*:)?\/*/i.exec(url)?.[0] ?? ''
  const at = url.lastIndexOf('@')
  let out = url
  if (at >= scheme.length) {
    const auth = url.slice(scheme.length, at)
    const colon = auth.indexOf(':')
    // scheme://user:password@… keeps the user; scheme://password@… (Redis's requirepass).
    const user = colon >= 0 ? `${auth.slice(0, colon)}:` : ''
    out = `${scheme}${user}***${url.slice(at)}`
  }
  return out.replace(SECRET_PARAM, '$1***')
}

/**
 * A value given where a client or a URL was expected, fit for an error message: a string
 * as `redactUrl`; an object (ioredis options, say) shallowly, with credential-like fields
 * and nested objects (TLS keys) left out and URL strings redacted.
 */
export function redactValue(value: unknown): unknown {
  if (typeof value === 'string') return redactUrl(value)
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return value
  const shown: Record<string, unknown> = {}
  for (const [name, field] of Object.entries(value)) {
    if (SECRET_KEY.test(name)) shown[name] = '***'
    else if (typeof field === 'string') shown[name] = redactUrl(field)
    else if (typeof field === 'object' && field !== null) shown[name] = '{…}'
    else shown[name] = field
  }
  return shown
}
