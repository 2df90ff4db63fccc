import type { Observable, ObservableInput, SchedulerLike } from 'rxjs'
import type { Aimd } from './aimd.js'
import type { Limiter } from './Limiter.js'
import type { Permits } from './Permits.js'
import type { PoolMetrics } from './PoolMetrics.js'

/** A value in the pool, numbered in arrival order from 0. */
export type Job<T> = { readonly id: number; readonly value: T }

/** What the process function gets besides the value. */
export type TaskContext<T> = {
  /** Aborts when the job is cancelled for any reason (fail-fast, unsubscribe, abort). */
  readonly signal: AbortSignal
  /** 1 for the first try, 2 for the first retry, … */
  readonly attempt: number
  readonly job: Job<T>
}

/** One result per job: its value, or (in `'collect'` mode) its error. */
export type Result<T, R> =
  | { ok: true; job: Job<T>; value: R; attempts: number; durationMs: number }
  | { ok: false; job: Job<T>; error: unknown; attempts: number; durationMs: number }

/** Turns a value into its result: an Observable, a Promise, an iterable… */
export type ProcessFn<T, R> = (value: T, context: TaskContext<T>) => ObservableInput<R>

/** Retries with exponential backoff and full jitter; every attempt takes its own token. */
export interface RetryOptions {
  /** Attempts in all, the first included: an integer ≥ 1. */
  attempts: number
  /** First backoff ceiling in ms; doubles per retry. Default 100. */
  baseDelayMs?: number
  /** Largest backoff ceiling in ms. Default 10 000. */
  maxDelayMs?: number
  /** Whether an error is worth another attempt. Default: every error. */
  retryable?: (error: unknown, attempt: number) => boolean
  /** Uniform [0, 1) source for the jitter. Default `Math.random`. */
  random?: () => number
}

/** A limiter given as options: a fresh `TokenBucket` per subscription. */
export interface PoolLimiterConfig {
  /** Tokens per second (> 0 or `Infinity`), or a stream of rates to follow. */
  rate: number | Observable<number>
  /** Bucket capacity, an integer ≥ 1. */
  burst: number
}

export interface PoolOptions {
  /** Jobs running at once: an integer ≥ 1, or `Infinity`. */
  concurrency: number
  /** Token source for job starts (and every retry). Default: no rate limit. */
  limiter?: Limiter | PoolLimiterConfig
  /** A shared cap beside `concurrency` (e.g. `RedisSemaphore`): a job holds one of its
   * permits from after its slot until its result, across retries. */
  permits?: Permits
  /** `'fail-fast'` (default): the first failure errors the output and stops everything.
   * `'collect'`: failures are `{ ok: false }` results and the pool goes on. */
  errors?: 'fail-fast' | 'collect'
  retry?: RetryOptions
  /** Push sources: most values that may wait for a slot. Default `Infinity`. */
  maxQueued?: number
  /** Stop intake when this emits (or aborts); started jobs finish, then complete. */
  drain?: ObservableInput<unknown> | AbortSignal
  /** Stop everything when this aborts; the output errors with the signal's reason. */
  signal?: AbortSignal
  /** Adapt the limiter's rate to push-back (see `aimd`). */
  adaptive?: Aimd
  /** Counters and snapshots (see `PoolMetrics`). */
  metrics?: PoolMetrics
  /** Clock and timers. Default `asyncScheduler`. */
  scheduler?: SchedulerLike
}
