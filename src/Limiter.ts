import type { Observable } from 'rxjs'

/**
 * The seam between rx-fanout's parts: anything that can grant tokens. `TokenBucket`
 * (in-process) and the Redis-backed bucket both implement it, and `rateLimit`, the pool
 * and the HTTP client accept either.
 */
export interface Limiter {
  /**
   * Grants `n` tokens (default 1): emits once when granted, then completes. Waiters are
   * served first come, first served. Unsubscribing before the grant gives up the place.
   */
  take(n?: number): Observable<void>
  /** No grant for `ms` from now: a Retry-After shared by everyone using this limiter. */
  pauseFor?(ms: number): void
  /** Tokens per second, if the limiter has one (`Infinity` = unlimited). */
  readonly rate?: number
  /**
   * Changes the rate now; waiters are re-planned. `forMs` asks for a temporary change (a
   * quota learned from a header): a shared limiter stores it for that long at most, then
   * its configured rate is back; an in-process one may keep it.
   */
  setRate?(rate: number, options?: { forMs?: number }): void
}

/** The options form of a limiter: a fresh in-process bucket is made from it. */
export interface BucketConfig {
  /** Tokens per second; `Infinity` for no limit. */
  rate: number
  /** Bucket capacity: the most tokens that can be granted at once. */
  burst: number
}

export function isLimiter(value: unknown): value is Limiter {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as { take?: unknown }).take === 'function'
  )
}
