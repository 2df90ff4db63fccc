import { asyncScheduler, type Observable, type SchedulerLike, Subject } from 'rxjs'
import { checkRate, invalidOption } from './internal/validate.js'
import type { Limiter } from './Limiter.js'

/** A limiter whose rate can be read and changed. */
export type AdjustableLimiter = Limiter & { readonly rate: number; setRate(rate: number): void }

export interface AimdOptions {
  /** Lowest rate (tokens/s) it may set, > 0. */
  min: number
  /** Highest rate (tokens/s) it may set, ≥ min. */
  max: number
  /** Multiplier on push-back, in (0, 1). Default 0.5. */
  decrease?: number
  /** Tokens/s added per second of busy success. Default 1. */
  increase?: number
  /** At most one decrease per this many ms (one wave of 429s is one signal). Default 1000. */
  cooldownMs?: number
  /** Which errors are push-back. Default: HTTP 429/503, undici timeouts, or a `retryAfterMs`. */
  isThrottle?: (error: unknown) => boolean
  /** Clock. Default `asyncScheduler`. */
  scheduler?: SchedulerLike
}

/** One change of rate, and why. */
export interface AimdDecision {
  at: number
  reason: 'decrease' | 'increase'
  previous: number
  rate: number
}

const TIMEOUT_CODES = new Set([
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'ETIMEDOUT',
])

/** The default push-back classifier: 429/503, timeouts, or a Retry-After. */
export function isThrottleError(error: unknown): boolean {
  // Walk the `cause` chain, at most a few links deep: chains can be cyclic.
  let current = error
  for (let depth = 0; depth < 8; depth++) {
    if (typeof current !== 'object' || current === null) return false
    const e = current as {
      status?: unknown
      statusCode?: unknown
      code?: unknown
      retryAfterMs?: unknown
      cause?: unknown
    }
    const status = e.status ?? e.statusCode
    if (status === 429 || status === 503) return true
    if (typeof e.code === 'string' && TIMEOUT_CODES.has(e.code)) return true
    if (typeof e.retryAfterMs === 'number') return true
    current = e.cause
  }
  return false
}

/**
 * Additive-increase, multiplicative-decrease control of a limiter's rate, as TCP does for
 * its window: on push-back the rate is multiplied by `decrease` (at most once per
 * `cooldownMs`); for each full second the pool is busy and succeeding it grows by
 * `increase`; while the pool is idle it stays put. It never leaves `[min, max]`.
 * Every change is emitted on `decisions`.
 *
 * The pool drives it (pass it as `adaptive`); it can also be fed by hand.
 */
export class Aimd {
  readonly #limiter: AdjustableLimiter
  readonly #min: number
  readonly #max: number
  readonly #decrease: number
  readonly #increase: number
  readonly #cooldownMs: number
  readonly #scheduler: SchedulerLike
  readonly #decisions = new Subject<AimdDecision>()
  readonly isThrottle: (error: unknown) => boolean
  #lastDecrease = Number.NEGATIVE_INFINITY
  // Start of the current busy stretch still owed an increase; NaN while idle.
  #climbFrom = Number.NaN

  /** Every rate change, as it happens. */
  readonly decisions: Observable<AimdDecision> = this.#decisions.asObservable()

  constructor(limiter: AdjustableLimiter, options: AimdOptions) {
    if (typeof limiter?.setRate !== 'function' || typeof limiter.rate !== 'number') {
      throw invalidOption(TypeError, 'limiter', 'a limiter with rate and setRate()', limiter)
    }
    if (typeof options !== 'object' || options === null) {
      throw invalidOption(TypeError, 'options', 'an object { min, max }', options)
    }
    this.#min = checkRate('min', options.min, false)
    this.#max = checkRate('max', options.max, false)
    if (this.#max < this.#min)
      throw invalidOption(RangeError, 'max', `>= min (${this.#min})`, options.max)
    const decrease = options.decrease ?? 0.5
    if (typeof decrease !== 'number' || !(decrease > 0 && decrease < 1)) {
      throw invalidOption(RangeError, 'decrease', 'a number in (0, 1)', decrease)
    }
    this.#decrease = decrease
    const increase = options.increase ?? 1
    if (typeof increase !== 'number' || !(increase > 0) || !Number.isFinite(increase)) {
      throw invalidOption(RangeError, 'increase', 'a finite number > 0', increase)
    }
    this.#increase = increase
    const cooldownMs = options.cooldownMs ?? 1000
    if (typeof cooldownMs !== 'number' || !(cooldownMs >= 0)) {
      throw invalidOption(RangeError, 'cooldownMs', 'a number of ms >= 0', cooldownMs)
    }
    this.#cooldownMs = cooldownMs
    const isThrottle = options.isThrottle ?? isThrottleError
    if (typeof isThrottle !== 'function') {
      throw invalidOption(TypeError, 'isThrottle', 'a function', isThrottle)
    }
    this.isThrottle = isThrottle
    this.#scheduler = options.scheduler ?? asyncScheduler
    this.#limiter = limiter
    const clamped = Math.min(this.#max, Math.max(this.#min, limiter.rate))
    if (clamped !== limiter.rate) limiter.setRate(clamped)
  }

  get rate(): number {
    return this.#limiter.rate
  }

  /** The downstream pushed back: decrease, unless one just happened. */
  onThrottle(): void {
    const at = this.#scheduler.now()
    this.#climbFrom = Number.NaN
    if (at - this.#lastDecrease < this.#cooldownMs) return
    this.#lastDecrease = at
    this.#set(at, 'decrease', Math.max(this.#min, this.#limiter.rate * this.#decrease))
  }

  /** A job succeeded; `busy` says whether others were waiting for a slot or a token. */
  onSuccess(busy: boolean): void {
    const at = this.#scheduler.now()
    if (!busy) {
      this.#climbFrom = Number.NaN
      return
    }
    if (Number.isNaN(this.#climbFrom)) {
      this.#climbFrom = at
      return
    }
    const seconds = Math.floor((at - this.#climbFrom) / 1000)
    if (seconds < 1) return
    this.#climbFrom += seconds * 1000
    this.#set(at, 'increase', Math.min(this.#max, this.#limiter.rate + this.#increase * seconds))
  }

  #set(at: number, reason: AimdDecision['reason'], rate: number): void {
    const previous = this.#limiter.rate
    if (rate === previous) return
    this.#limiter.setRate(rate)
    this.#decisions.next({ at, reason, previous, rate })
  }
}

/** Shorthand for `new Aimd(limiter, options)`. */
export function aimd(limiter: AdjustableLimiter, options: AimdOptions): Aimd {
  return new Aimd(limiter, options)
}
