import {
  asyncScheduler,
  Observable,
  type SchedulerLike,
  type Subscriber,
  type Subscription,
} from 'rxjs'
import { BurstExceededError } from './errors.js'
import { LinkedList } from './internal/LinkedList.js'
import { MAX_TIMER_MS } from './internal/scheduleAfter.js'
import { kDelivered, kTakeNow } from './internal/symbols.js'
import { checkInteger, checkRate, checkTokens, invalidOption } from './internal/validate.js'
import type { Limiter } from './Limiter.js'

/** Options of {@link TokenBucket}. */
export interface TokenBucketOptions {
  /** Tokens added per second; `0` grants only the initial burst; `Infinity` = unlimited. */
  rate: number
  /** Capacity, an integer ≥ 0. The bucket starts full. Ignored when `rate` is `Infinity`. */
  burst: number
  /** The clock and the timers. Default `asyncScheduler`. */
  scheduler?: SchedulerLike
}

/** The outcome of {@link TokenBucket.reserveAt}, as in Go's `rate.Reservation`. */
export interface Reservation {
  /** Whether the tokens are granted (within `maxWaitMs`). */
  readonly ok: boolean
  /** When the holder may act, in ms on the bucket's clock; `Infinity` if never. */
  readonly timeToAct: number
  /** Ms to wait from `at`: 0 if due, `Infinity` if not ok. */
  delayFrom(at: number): number
  /**
   * Gives back what can be given back: the tokens no later reservation has consumed,
   * at the rate in force when this one was made. Nothing once `timeToAct` has passed.
   */
  cancelAt(at: number): void
}

/** Converts a minimum interval between events (ms) to a rate (per second). */
export function every(intervalMs: number): number {
  if (typeof intervalMs !== 'number' || Number.isNaN(intervalMs)) {
    throw invalidOption(RangeError, 'intervalMs', 'a number', intervalMs)
  }
  return intervalMs <= 0 ? Number.POSITIVE_INFINITY : 1000 / intervalMs
}

// Amounts this close to a whole token count as whole: float dust (0.1 + 0.2) must never
// delay a grant.
const TOKEN_EPSILON = 1e-9
// A waiter whose tokens are due within this many ms counts as due: the same dust, in time.
const TIME_EPSILON = 1e-6

// Unit conversions, guarded so that Infinity × 0 never yields NaN.
function tokensFromDuration(ms: number, rate: number): number {
  return ms > 0 && rate > 0 ? (ms * rate) / 1000 : 0
}
function durationFromTokens(tokens: number, rate: number): number {
  if (tokens <= 0) return 0
  return rate > 0 ? (tokens * 1000) / rate : Number.POSITIVE_INFINITY
}

interface Waiter {
  readonly n: number
  readonly subscriber: Subscriber<void>
}

/**
 * A token bucket with the semantics of Go's `golang.org/x/time/rate.Limiter`: it holds up
 * to `burst` tokens, starts full, refills at `rate` tokens per second, and is refilled
 * lazily from the clock — there is no refill timer.
 *
 * Every time-dependent method has an explicit-time twin (`allowAt`, `reserveAt`, …) that
 * is pure math over the `at` you pass; the short forms read `scheduler.now()`. On top of
 * that, `take(n)` waits: waiters are served FIFO by one one-shot timer aimed at the head
 * waiter's due instant, re-planned at once when the rate, the burst or a pause changes.
 *
 * ```ts
 * const bucket = new TokenBucket({ rate: 10, burst: 20 })
 * bucket.allow()                  // true: the bucket starts full
 * bucket.take(5).subscribe(() => console.log('5 tokens granted'))
 * ```
 */
export class TokenBucket implements Limiter {
  #rate: number
  #burst: number
  #tokens: number
  // When `#tokens` was last brought up to date; -Infinity until the first update.
  #last = Number.NEGATIVE_INFINITY
  // The latest time to act of any reservation, past or future (Go's `lastEvent`).
  #lastEvent = Number.NEGATIVE_INFINITY
  #pausedUntil = Number.NEGATIVE_INFINITY
  readonly #scheduler: SchedulerLike
  readonly #waiters = new LinkedList<Waiter>()
  #timer: Subscription | null = null
  #timerAt = Number.NaN
  #planning = false
  #replan = false

  constructor(options: TokenBucketOptions) {
    if (typeof options !== 'object' || options === null) {
      throw invalidOption(TypeError, 'options', 'an object { rate, burst }', options)
    }
    this.#rate = checkRate('rate', options.rate, true)
    this.#burst = checkInteger('burst', options.burst, 0)
    this.#tokens = this.#burst
    this.#scheduler = options.scheduler ?? asyncScheduler
  }

  /** Tokens per second. */
  get rate(): number {
    return this.#rate
  }

  /** Capacity. */
  get burst(): number {
    return this.#burst
  }

  /** The instant before which nothing is granted (`-Infinity` when not paused). */
  get pausedUntil(): number {
    return this.#pausedUntil
  }

  /** How many callers wait in `take`. */
  get waiting(): number {
    return this.#waiters.size
  }

  // ── explicit-time API: pure math over `at` ────────────────────────────────────────

  /** Tokens available at `at` (negative while reservations are in debt). */
  tokensAt(at: number): number {
    return this.#advance(at)
  }

  /** Whether `n` tokens can be taken at `at` without waiting; takes them if so. */
  allowAt(at: number, n = 1): boolean {
    checkTokens('n', n)
    return !Number.isNaN(this.#reserve(at, n, 0))
  }

  /**
   * Reserves `n` tokens at `at`, going into debt if need be. Not ok when `n > burst`
   * (finite rate), when the wait would exceed `maxWaitMs`, or when it would never end.
   */
  reserveAt(at: number, n = 1, maxWaitMs = Number.POSITIVE_INFINITY): Reservation {
    checkTokens('n', n)
    if (typeof maxWaitMs !== 'number' || Number.isNaN(maxWaitMs)) {
      throw invalidOption(RangeError, 'maxWaitMs', 'a number', maxWaitMs)
    }
    const rateThen = this.#rate
    const act = this.#reserve(at, n, maxWaitMs)
    const ok = !Number.isNaN(act)
    const timeToAct = ok ? act : Number.POSITIVE_INFINITY
    return {
      ok,
      timeToAct,
      delayFrom: (from: number) => {
        if (!ok) return Number.POSITIVE_INFINITY
        const delay = timeToAct - from
        return delay > 0 ? delay : 0
      },
      cancelAt: (cancelAt: number) => {
        if (ok) this.#cancel(cancelAt, n, timeToAct, rateThen)
      },
    }
  }

  /** Changes the rate at `at`; tokens up to `at` are settled at the old rate first. */
  setRateAt(at: number, rate: number): void {
    checkRate('rate', rate, true)
    this.#settle(at)
    this.#rate = rate
    // From Infinity back to a finite rate, the burst applies to waiters again.
    this.#rejectOversized()
    this.#plan()
  }

  /** Changes the burst at `at`; tokens up to `at` are settled under the old burst first. */
  setBurstAt(at: number, burst: number): void {
    checkInteger('burst', burst, 0)
    this.#settle(at)
    this.#burst = burst
    this.#rejectOversized()
    this.#plan()
  }

  /** No grant before `at`, whatever the tokens (a shared Retry-After). Pauses only extend. */
  pauseUntil(at: number): void {
    if (typeof at !== 'number' || Number.isNaN(at)) {
      throw invalidOption(RangeError, 'at', 'a number', at)
    }
    if (at <= this.#pausedUntil) return
    this.#pausedUntil = at
    this.#plan()
  }

  // ── clock shorthands: the *At forms with at = scheduler.now() ─────────────────────

  /** `tokensAt(scheduler.now())`. */
  tokens(): number {
    return this.tokensAt(this.#scheduler.now())
  }
  /** `allowAt(scheduler.now(), n)`. */
  allow(n = 1): boolean {
    return this.allowAt(this.#scheduler.now(), n)
  }
  /** `reserveAt(scheduler.now(), n, maxWaitMs)`. */
  reserve(n = 1, maxWaitMs = Number.POSITIVE_INFINITY): Reservation {
    return this.reserveAt(this.#scheduler.now(), n, maxWaitMs)
  }
  /** `setRateAt(scheduler.now(), rate)`. */
  setRate(rate: number): void {
    this.setRateAt(this.#scheduler.now(), rate)
  }
  /** `setBurstAt(scheduler.now(), burst)`. */
  setBurst(burst: number): void {
    this.setBurstAt(this.#scheduler.now(), burst)
  }
  /** `pauseUntil(scheduler.now() + ms)`. */
  pauseFor(ms: number): void {
    this.pauseUntil(this.#scheduler.now() + ms)
  }

  // ── waiting ───────────────────────────────────────────────────────────────────────

  /**
   * Waits for `n` tokens (default 1): emits once when they are granted, then completes.
   * Waiters are served in subscription order; unsubscribing before the grant leaves the
   * queue (no token was taken yet). A request larger than the burst errors with
   * `BurstExceededError` instead of waiting forever.
   *
   * ```
   * bucket (rate 10/s, burst 1), three take() at 0 ms:
   *   take  (a)|
   *   take  ----------(b)|         100 ms
   *   take  --------------------(c)|   200 ms
   * ```
   */
  take(n = 1): Observable<void> {
    checkTokens('n', n)
    return new Observable<void>((subscriber) => {
      if (this.#rate !== Number.POSITIVE_INFINITY && n > this.#burst) {
        subscriber.error(new BurstExceededError(n, this.#burst))
        return
      }
      if (this[kTakeNow](n)) {
        subscriber.next()
        subscriber.complete()
        return
      }
      const node = this.#waiters.push({ n, subscriber })
      if (node === this.#waiters.head) this.#plan()
      return () => {
        const wasHead = node === this.#waiters.head
        // Only the head's departure can change when the next grant is due.
        if (this.#waiters.remove(node) && wasHead) this.#plan()
      }
    })
  }

  /**
   * Takes `n` tokens now if nobody waits and they are due; the allocation-free fast path
   * that `rateLimit` uses before falling back to `take`.
   * @internal
   */
  [kTakeNow](n: number): boolean {
    if (this.#waiters.size !== 0) return false
    // Unlimited and not paused: granted, without reading the clock (the hot path).
    if (this.#rate === Number.POSITIVE_INFINITY && this.#pausedUntil === Number.NEGATIVE_INFINITY) {
      return true
    }
    return this.#grant(this.#scheduler.now(), n)
  }

  /**
   * The grant just made was delivered: count it as made when delivery ended — the value
   * emitted and the consumer's synchronous handling of it done, or the job's process
   * function called and returned — without the refill in between. Whatever instant the
   * consumer records while handling the grant then keeps the envelope on this clock,
   * even when delivery crossed a tick of `Date.now()` or the process stalled. The price:
   * a consumer's synchronous work per grant is not refilled (a 40 ms handler at 10/s gives
   * about 7/s); keep heavy work off the synchronous path (`observeOn(asapScheduler)`).
   * Costs a clock read per grant at a finite rate.
   * @internal
   */
  [kDelivered](): void {
    if (this.#rate === Number.POSITIVE_INFINITY) return
    const at = this.#scheduler.now()
    if (at > this.#last) this.#last = at
  }

  // ── internals ─────────────────────────────────────────────────────────────────────

  // Tokens at `at` without changing state. An `at` before the last update adds nothing;
  // the cap applies on every read, so a lowered burst takes effect at once.
  #advance(at: number): number {
    const elapsed = at - this.#last
    const tokens = this.#tokens + (elapsed > 0 ? tokensFromDuration(elapsed, this.#rate) : 0)
    return tokens > this.#burst ? this.#burst : tokens
  }

  #settle(at: number): void {
    this.#tokens = this.#advance(at)
    this.#last = at
  }

  // Go's reserveN: the time to act, or NaN when not ok (state unchanged then).
  #reserve(at: number, n: number, maxWaitMs: number): number {
    const paused = this.#pausedUntil - at
    if (this.#rate === Number.POSITIVE_INFINITY) {
      const wait = paused > 0 ? paused : 0
      return wait <= maxWaitMs ? at + wait : Number.NaN
    }
    const tokens = this.#advance(at) - n
    let wait = tokens < -TOKEN_EPSILON ? durationFromTokens(-tokens, this.#rate) : 0
    if (paused > wait) wait = paused
    if (n > this.#burst || wait > maxWaitMs || wait === Number.POSITIVE_INFINITY) return Number.NaN
    this.#tokens = tokens
    this.#last = at
    this.#lastEvent = at + wait
    return at + wait
  }

  // Go's CancelAt.
  #cancel(at: number, n: number, timeToAct: number, rateThen: number): void {
    // A reservation made at rate Infinity took no tokens, so it has none to give back
    // (Go would restore them, letting the bucket grant more than its burst).
    if (this.#rate === Number.POSITIVE_INFINITY || rateThen === Number.POSITIVE_INFINITY) return
    if (n === 0 || timeToAct < at) return
    // Tokens reserved after this reservation were planned on top of it: keep those.
    const restore = n - tokensFromDuration(this.#lastEvent - timeToAct, rateThen)
    if (restore <= 0) return
    const tokens = this.#advance(at) + restore
    this.#tokens = tokens > this.#burst ? this.#burst : tokens
    this.#last = at
    if (timeToAct === this.#lastEvent) {
      const previous = timeToAct - (n * 1000) / rateThen
      if (previous >= at) this.#lastEvent = previous
    }
    this.#plan()
  }

  // When `n` tokens are due for a waiter asking at `at` (Infinity: never at this rate).
  #dueAt(at: number, n: number): number {
    let due = at
    if (this.#rate !== Number.POSITIVE_INFINITY) {
      due += durationFromTokens(n - this.#advance(at), this.#rate)
    }
    return due > this.#pausedUntil ? due : this.#pausedUntil
  }

  // Takes `n` tokens at `at` if they are due, by the same rule the timer is aimed with.
  #grant(at: number, n: number): boolean {
    if (this.#dueAt(at, n) > at + TIME_EPSILON) return false
    if (this.#rate !== Number.POSITIVE_INFINITY) {
      this.#tokens = this.#advance(at) - n
      this.#last = at
      this.#lastEvent = at
    }
    return true
  }

  // Serves every waiter that is due, then aims one timer at the head's due instant.
  #plan(): void {
    // Nobody waits and no timer runs: nothing to plan, and no reason to read the clock.
    if (this.#waiters.size === 0 && this.#timer === null) return
    // Granting runs user code, which may take, give up or change the rate: let the
    // outermost call loop instead of recursing.
    if (this.#planning) {
      this.#replan = true
      return
    }
    this.#planning = true
    try {
      do {
        this.#replan = false
        this.#serve()
      } while (this.#replan)
    } finally {
      this.#planning = false
    }
  }

  #serve(): void {
    const scheduler = this.#scheduler
    const waiters = this.#waiters
    let now = scheduler.now()
    for (let node = waiters.head; node !== null; node = waiters.head, now = scheduler.now()) {
      // The clock is read again for each waiter: the previous grant ran user code, which
      // may have taken tokens at a later instant; granting at a stale one would move the
      // last update back in time and count that stretch twice.
      const { n, subscriber } = node.value
      if (this.#rate !== Number.POSITIVE_INFINITY && n > this.#burst) {
        waiters.remove(node)
        subscriber.error(new BurstExceededError(n, this.#burst))
        continue
      }
      if (!this.#grant(now, n)) break
      waiters.remove(node)
      subscriber.next()
      subscriber.complete()
      this[kDelivered]()
    }
    const head = waiters.head
    const due = head === null ? Number.POSITIVE_INFINITY : this.#dueAt(now, head.value.n)
    if (due === Number.POSITIVE_INFINITY) {
      // Nobody waits, or the head waits for a rate change: no timer.
      this.#stopTimer()
      return
    }
    // A wait longer than a timer can hold is waited in steps: the timer fires, finds the
    // head not yet due, and aims again (Node would fire a longer timer after 1 ms).
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, Math.ceil(due - now - TIME_EPSILON)))
    const fireAt = now + delay
    if (this.#timer !== null && this.#timerAt === fireAt) return
    this.#stopTimer()
    this.#timerAt = fireAt
    this.#timer = this.#scheduler.schedule(() => {
      this.#timer = null
      this.#timerAt = Number.NaN
      this.#plan()
    }, delay)
  }

  // Waiters that now ask for more than the burst can never be served: tell them at once,
  // wherever they stand in the queue.
  #rejectOversized(): void {
    if (this.#rate === Number.POSITIVE_INFINITY) return
    for (let node = this.#waiters.head; node !== null; ) {
      const next = node.next
      const { n, subscriber } = node.value
      if (n > this.#burst) {
        this.#waiters.remove(node)
        subscriber.error(new BurstExceededError(n, this.#burst))
      }
      node = next
    }
  }

  #stopTimer(): void {
    if (this.#timer === null) return
    this.#timer.unsubscribe()
    this.#timer = null
    this.#timerAt = Number.NaN
  }
}
