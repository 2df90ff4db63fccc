import { LeaseLostError } from '../errors.js'
/** An id that the fan-out client fetched or tried to. */
export type Id = number | string

/** The server answered with a status outside 2xx. */
export class HttpStatusError extends Error {
  readonly code = 'RX_FANOUT_HTTP_STATUS'
  override readonly name = 'HttpStatusError'
  readonly status: number
  readonly id: Id
  readonly attempt: number
  /** The first bytes of the body, as text, for the log. */
  readonly excerpt: string
  /** From `Retry-After` on 429/503, capped; the pool pauses the shared limiter for it. */
  readonly retryAfterMs: number | undefined
  constructor(init: {
    status: number
    id: Id
    attempt: number
    excerpt: string
    retryAfterMs?: number | undefined
  }) {
    super(`GET for id ${String(init.id)} answered ${init.status} (attempt ${init.attempt})`)
    this.status = init.status
    this.id = init.id
    this.attempt = init.attempt
    this.excerpt = init.excerpt
    this.retryAfterMs = init.retryAfterMs
  }
}

/** A response body went past `maxBodyBytes`; the rest was not read (the socket closed). */
export class BodyTooLargeError extends Error {
  readonly code = 'RX_FANOUT_BODY_TOO_LARGE'
  override readonly name = 'BodyTooLargeError'
  constructor(
    readonly id: Id,
    readonly attempt: number,
    readonly maxBodyBytes: number,
  ) {
    super(`the body for id ${String(id)} is larger than maxBodyBytes (${maxBodyBytes})`)
  }
}

/** The request failed below HTTP (timeout, reset, refused…); undici's error is `cause`. */
export class RequestError extends Error {
  readonly code = 'RX_FANOUT_REQUEST_FAILED'
  override readonly name = 'RequestError'
  // Set by Error from `{ cause }`: own, not enumerable (see JobError).
  declare readonly cause: unknown
  constructor(
    readonly id: Id,
    readonly attempt: number,
    cause: unknown,
  ) {
    const reason = (cause as { code?: unknown })?.code ?? (cause as Error)?.message ?? cause
    super(`GET for id ${String(id)} failed (attempt ${attempt}): ${String(reason)}`, { cause })
  }
}

/** The client was closed or destroyed; no new fetch is taken. */
export class ClientClosedError extends Error {
  readonly code = 'RX_FANOUT_CLIENT_CLOSED'
  override readonly name = 'ClientClosedError'
  constructor(message = 'the FanOutClient is closed') {
    super(message)
  }
}

const RESET_CODES = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET'])
const RETRY_STATUSES = new Set([429, 502, 503, 504])

/** Worth another try for an idempotent GET: 429, 502, 503, 504 and connection resets. */
export function isRetryableHttpError(error: unknown): boolean {
  // A shared permit lost mid-request: the request was cut, and another permit may come.
  if (error instanceof LeaseLostError) return true
  if (error instanceof HttpStatusError) return RETRY_STATUSES.has(error.status)
  if (error instanceof RequestError) {
    const code = (error.cause as { code?: unknown })?.code
    return typeof code === 'string' && RESET_CODES.has(code)
  }
  return false
}
