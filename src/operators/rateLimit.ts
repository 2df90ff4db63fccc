import {
  asyncScheduler,
  type MonoTypeOperatorFunction,
  Observable,
  type SchedulerLike,
  type Subscription,
} from 'rxjs'
import { InvalidCostError } from '../errors.js'
import { Ring } from '../internal/Ring.js'
import { kDelivered, kTakeNow } from '../internal/symbols.js'
import { checkInteger, checkRate, invalidOption } from '../internal/validate.js'
import { type BucketConfig, isLimiter, type Limiter } from '../Limiter.js'
import { TokenBucket } from '../TokenBucket.js'

/** Options of {@link rateLimit}. */
export interface RateLimitOptions<T> {
  /** Tokens a value costs: a finite number ≥ 0. Default: every value costs 1. */
  cost?: (value: T) => number
  /** Clock and timers of the per-subscription bucket. Default `asyncScheduler`. */
  scheduler?: SchedulerLike
}

/**
 * Delays each value until the limiter grants its tokens: shapes a stream to a rate,
 * dropping nothing.
 *
 * Values keep their order and each waits for the one before it. Errors pass through at
 * once; completion waits for the last value to be let out; unsubscribing cancels the
 * pending wait. Given `{ rate, burst }`, each subscription gets its own `TokenBucket`;
 * given a `Limiter`, every subscription shares it.
 *
 * ```
 * rateLimit({ rate: 10, burst: 2 })                 1 char = 10 ms
 * source:  (abcd|)
 * result:  (ab)------c---------(d|)     a, b at 0 (burst); c at 100 ms; d at 200 ms
 * ```
 *
 * ```ts
 * import { from } from 'rxjs'
 * import { rateLimit } from 'rx-fanout'
 *
 * from([1, 2, 3, 4]).pipe(rateLimit({ rate: 10, burst: 2 })).subscribe(console.log)
 * // 1, 2 at once; 3 after 100 ms; 4 after 200 ms
 * ```
 *
 * @param limiter a shared `Limiter` (e.g. a `TokenBucket`), or `{ rate, burst }`: rate in
 *   tokens per second (> 0, or `Infinity`), burst an integer ≥ 1.
 * @param options `cost` per value (default 1) and `scheduler` (default `asyncScheduler`).
 */
export function rateLimit<T>(
  limiter: Limiter | BucketConfig,
  options: RateLimitOptions<T> = {},
): MonoTypeOperatorFunction<T> {
  if (typeof limiter !== 'object' || limiter === null) {
    throw invalidOption(TypeError, 'limiter', 'a Limiter or { rate, burst }', limiter)
  }
  const shared = isLimiter(limiter) ? limiter : null
  // Read the options once: a per-subscription bucket is made from these numbers.
  const rate = shared ? 0 : checkRate('rate', (limiter as BucketConfig).rate, false)
  const burst = shared ? 0 : checkInteger('burst', (limiter as BucketConfig).burst, 1)
  const { cost, scheduler = asyncScheduler } = options
  if (cost !== undefined && typeof cost !== 'function') {
    throw invalidOption(TypeError, 'cost', 'a function', cost)
  }

  return (source) =>
    new Observable<T>((subscriber) => {
      const bucket = shared ?? new TokenBucket({ rate, burst, scheduler })
      const fast = bucket instanceof TokenBucket ? bucket : null
      // Values waiting for tokens, and their costs when a cost function is given.
      const values = new Ring<T>()
      const costs = cost ? new Ring<number>() : null
      let wait: Subscription | null = null
      let draining = false
      let sourceDone = false

      // Emits the head value, then counts its grant as delivered now — before the next
      // value can ask for tokens from inside this very emission.
      const emitHead = () => {
        costs?.shift()
        subscriber.next(values.shift() as T)
        fast?.[kDelivered]()
      }

      // Lets values out while their tokens come at once; parks on one wait otherwise.
      const drain = () => {
        if (draining) return
        draining = true
        try {
          while (wait === null && values.size > 0 && !subscriber.closed) {
            const n = costs ? (costs.peek() as number) : 1
            if (fast?.[kTakeNow](n)) {
              emitHead()
              continue
            }
            let sync = true
            let granted = false
            const sub = bucket.take(n).subscribe({
              next: () => {
                granted = true
                if (sync) return
                wait = null
                emitHead()
                drain()
              },
              error: (error: unknown) => subscriber.error(error),
            })
            sync = false
            if (granted) emitHead()
            else if (!sub.closed) wait = sub
          }
          if (sourceDone && values.size === 0 && wait === null) subscriber.complete()
        } finally {
          draining = false
        }
      }

      const sourceSubscription = source.subscribe({
        next: (value) => {
          let n = 1
          if (cost) {
            try {
              n = cost(value)
            } catch (error) {
              subscriber.error(error)
              return
            }
            if (typeof n !== 'number' || !(n >= 0) || n === Number.POSITIVE_INFINITY) {
              subscriber.error(new InvalidCostError(n))
              return
            }
          }
          // Nothing queued and tokens free: pass the value straight through.
          if (values.size === 0 && wait === null && !draining && fast?.[kTakeNow](n)) {
            subscriber.next(value)
            fast[kDelivered]()
            return
          }
          values.push(value)
          costs?.push(n)
          drain()
        },
        error: (error: unknown) => subscriber.error(error),
        complete: () => {
          sourceDone = true
          drain()
        },
      })

      return () => {
        sourceSubscription.unsubscribe()
        wait?.unsubscribe()
        wait = null
        values.clear()
        costs?.clear()
      }
    })
}
