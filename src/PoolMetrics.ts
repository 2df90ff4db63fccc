import { asyncScheduler, interval, map, type Observable, type SchedulerLike } from 'rxjs'
import { checkInteger } from './internal/validate.js'
import type { Limiter } from './Limiter.js'
import { TokenBucket } from './TokenBucket.js'

/** A point-in-time view of a pool (or of every pool sharing one `PoolMetrics`). */
export interface PoolSnapshot {
  /** `scheduler.now()` when taken. */
  at: number
  /** Values waiting for a slot (push sources). */
  queued: number
  /** Jobs holding a slot, waiting for their token(s) or their retry delay. */
  waiting: number
  /** Jobs whose process function is running. */
  inFlight: number
  /** Jobs that ended with a value. */
  succeeded: number
  /** Jobs that ended with an error (after their retries). */
  failed: number
  /** Retries started. */
  retried: number
  /** Values dropped unstarted by a drain. */
  dropped: number
  /** The limiter's rate (tokens/s), if it has one. */
  rate: number | undefined
  /** Tokens in the bucket now, for a `TokenBucket`. */
  tokens: number | undefined
  /** Grants are paused until this instant, for a `TokenBucket` that is paused. */
  pausedUntil: number | undefined
  /** Job durations (first start to result, ms) over the last `window` jobs. */
  latency: { count: number; p50: number; p95: number; p99: number }
}

export interface PoolMetricsOptions {
  /** How many recent job durations the percentiles are taken over. Default 1024. */
  window?: number
  /** Clock for `at` and for `snapshots()`. Default `asyncScheduler`. */
  scheduler?: SchedulerLike
}

/**
 * Counters a pool keeps up to date as it runs: a few integer increments per job, and the
 * job's duration written into a fixed ring; percentiles are only computed when a snapshot
 * is taken. Cheap enough to leave on.
 *
 * ```ts
 * const metrics = new PoolMetrics()
 * jobs$.pipe(ratePool(work, { concurrency: 8, metrics })).subscribe()
 * metrics.snapshots(1000).subscribe((s) => console.log(s.inFlight, s.rate, s.latency.p99))
 * ```
 */
export class PoolMetrics {
  queued = 0
  waiting = 0
  inFlight = 0
  succeeded = 0
  failed = 0
  retried = 0
  dropped = 0
  /** The limiter whose rate and tokens snapshots report; set by the pool. */
  limiter: Limiter | null = null
  readonly #durations: Float64Array
  #recorded = 0
  readonly #scheduler: SchedulerLike

  constructor(options: PoolMetricsOptions = {}) {
    this.#durations = new Float64Array(checkInteger('window', options.window ?? 1024, 1))
    this.#scheduler = options.scheduler ?? asyncScheduler
  }

  /** Records one finished job's duration. */
  record(durationMs: number): void {
    this.#durations[this.#recorded++ % this.#durations.length] = durationMs
  }

  snapshot(): PoolSnapshot {
    const limiter = this.limiter
    const bucket = limiter instanceof TokenBucket ? limiter : null
    const count = Math.min(this.#recorded, this.#durations.length)
    const sorted = this.#durations.slice(0, count).sort()
    const pick = (q: number) =>
      count === 0 ? Number.NaN : (sorted[Math.ceil(q * count) - 1] as number)
    return {
      at: this.#scheduler.now(),
      queued: this.queued,
      waiting: this.waiting,
      inFlight: this.inFlight,
      succeeded: this.succeeded,
      failed: this.failed,
      retried: this.retried,
      dropped: this.dropped,
      rate: limiter?.rate,
      tokens: bucket?.tokens(),
      pausedUntil:
        bucket && bucket.pausedUntil !== Number.NEGATIVE_INFINITY ? bucket.pausedUntil : undefined,
      latency: { count, p50: pick(0.5), p95: pick(0.95), p99: pick(0.99) },
    }
  }

  /** A snapshot every `everyMs` on the scheduler, for as long as it is subscribed. */
  snapshots(everyMs: number, scheduler: SchedulerLike = this.#scheduler): Observable<PoolSnapshot> {
    return interval(everyMs, scheduler).pipe(map(() => this.snapshot()))
  }
}
