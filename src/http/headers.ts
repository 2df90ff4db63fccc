/** Response headers as undici gives them. */
export type Headers = Record<string, string | string[] | undefined>

function first(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value
}

/**
 * `Retry-After` in ms from `now`: delta-seconds or an HTTP-date; capped at `maxMs`;
 * undefined when absent or unreadable.
 */
export function parseRetryAfter(
  value: string | string[] | undefined,
  now: number,
  maxMs: number,
): number | undefined {
  const text = first(value)?.trim()
  if (!text) return undefined
  let ms: number
  if (/^\d+(\.\d+)?$/.test(text)) ms = Number(text) * 1000
  else {
    const at = Date.parse(text)
    if (Number.isNaN(at)) return undefined
    ms = at - now
  }
  return Math.min(maxMs, Math.max(0, ms))
}

/** What the server says of its quota, as far as the headers tell. */
export interface DeclaredQuota {
  /** Requests per second the server allows, when it says both a quota and a window. */
  rate?: number
  /** Ms until the quota resets, when the server says nothing is left. */
  exhaustedForMs?: number
  /** Ms until the quota's window resets, when the server says (or its window, else). */
  resetMs?: number
}

// A structured-field-ish parameter list: `10;w=1`, `"default";q=10;w=1`, `limit=10, w=1`.
function params(text: string): Map<string, string> {
  const out = new Map<string, string>()
  for (const part of text.split(/[;,]/)) {
    const [key, raw] = part.split('=').map((s) => s.trim().toLowerCase())
    if (key && raw !== undefined) out.set(key, raw.replace(/^"|"$/g, ''))
    else if (key && /^\d+(\.\d+)?$/.test(key) && !out.has('q')) out.set('q', key)
  }
  return out
}

function num(value: string | undefined): number | undefined {
  if (value === undefined) return undefined
  const n = Number(value)
  return Number.isFinite(n) ? n : undefined
}

/**
 * Reads the IETF RateLimit fields (`RateLimit-Policy`, `RateLimit`, drafts 6 to 10) and
 * the common `X-RateLimit-*` ones, tolerantly: what can't be read is ignored.
 */
export function parseRateLimitHeaders(headers: Headers, now: number): DeclaredQuota {
  const quota: DeclaredQuota = {}
  const policy = first(headers['ratelimit-policy'])
  if (policy) {
    const p = params(policy.split(',')[0] as string)
    const q = num(p.get('q') ?? p.get('limit'))
    const w = num(p.get('w') ?? p.get('window'))
    if (q !== undefined && w !== undefined && q > 0 && w > 0) {
      quota.rate = q / w
      quota.resetMs = w * 1000
    }
  }
  const state = first(headers.ratelimit)
  let remaining: number | undefined
  let reset: number | undefined
  if (state) {
    const p = params(state)
    remaining = num(p.get('r') ?? p.get('remaining'))
    reset = num(p.get('t') ?? p.get('reset'))
  } else {
    remaining = num(first(headers['x-ratelimit-remaining'] ?? headers['ratelimit-remaining']))
    reset = num(first(headers['x-ratelimit-reset'] ?? headers['ratelimit-reset']))
    // X-RateLimit-Reset is often an epoch in seconds rather than a delay.
    if (reset !== undefined && reset > 1e9) reset = Math.max(0, reset - now / 1000)
  }
  if (reset !== undefined && reset >= 0) quota.resetMs = reset * 1000
  if (remaining === 0 && reset !== undefined && reset > 0) quota.exhaustedForMs = reset * 1000
  return quota
}
