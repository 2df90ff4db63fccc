import {
  asyncScheduler,
  isObservable,
  type Observable,
  type ObservableInput,
  type SchedulerLike,
} from 'rxjs'
import type { Aimd } from '../aimd.js'
import { isLimiter, type Limiter } from '../Limiter.js'
import { isPermits, type Permits } from '../Permits.js'
import { PoolMetrics } from '../PoolMetrics.js'
import type { PoolOptions } from '../types.js'
import { checkInteger, checkRate, invalidOption } from './validate.js'

/** PoolOptions checked once, at construction, with every default filled in. */
export interface ResolvedPoolOptions {
  concurrency: number
  failFast: boolean
  limiter: Limiter | null
  permits: Permits | null
  rate: number | Observable<number>
  burst: number
  attempts: number
  baseDelayMs: number
  maxDelayMs: number
  retryable: (error: unknown, attempt: number) => boolean
  random: () => number
  maxQueued: number
  drain: ObservableInput<unknown> | AbortSignal | null
  signal: AbortSignal | null
  adaptive: Aimd | null
  metrics: PoolMetrics | null
  scheduler: SchedulerLike
}

const always = () => true

function isAbortSignal(value: unknown): value is AbortSignal {
  return typeof AbortSignal !== 'undefined' && value instanceof AbortSignal
}

function countOrInfinity(name: string, value: unknown, min: number): number {
  return value === Number.POSITIVE_INFINITY ? value : checkInteger(name, value, min)
}

function msOption(name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number') throw invalidOption(TypeError, name, 'a number of ms', value)
  if (!Number.isFinite(value) || value < 0) {
    throw invalidOption(RangeError, name, 'a finite number of ms >= 0', value)
  }
  return value
}

function fn<F>(name: string, value: unknown, fallback: F): F {
  if (value === undefined) return fallback
  if (typeof value !== 'function') throw invalidOption(TypeError, name, 'a function', value)
  return value as F
}

export function resolvePoolOptions(options: PoolOptions): ResolvedPoolOptions {
  if (typeof options !== 'object' || options === null) {
    throw invalidOption(TypeError, 'options', 'an object with at least { concurrency }', options)
  }
  const concurrency = countOrInfinity('concurrency', options.concurrency, 1)
  const errors = options.errors ?? 'fail-fast'
  if (errors !== 'fail-fast' && errors !== 'collect') {
    throw invalidOption(RangeError, 'errors', "'fail-fast' or 'collect'", errors)
  }

  let limiter: Limiter | null = null
  let rate: number | Observable<number> = Number.POSITIVE_INFINITY
  let burst = 1
  const given = options.limiter
  if (isLimiter(given)) limiter = given
  else if (given !== undefined) {
    if (typeof given !== 'object' || given === null) {
      throw invalidOption(TypeError, 'limiter', 'a Limiter or { rate, burst }', given)
    }
    rate = isObservable(given.rate) ? given.rate : checkRate('limiter.rate', given.rate, false)
    burst = checkInteger('limiter.burst', given.burst, 1)
  }

  const permits = options.permits ?? null
  if (permits !== null && !isPermits(permits)) {
    throw invalidOption(TypeError, 'permits', 'an object with acquire()', permits)
  }

  const retry = options.retry
  if (retry !== undefined && (typeof retry !== 'object' || retry === null)) {
    throw invalidOption(TypeError, 'retry', 'an object { attempts, … }', retry)
  }
  const attempts = retry ? checkInteger('retry.attempts', retry.attempts, 1) : 1
  const baseDelayMs = msOption('retry.baseDelayMs', retry?.baseDelayMs, 100)
  const maxDelayMs = msOption('retry.maxDelayMs', retry?.maxDelayMs, Math.max(10_000, baseDelayMs))
  if (maxDelayMs < baseDelayMs) {
    throw invalidOption(
      RangeError,
      'retry.maxDelayMs',
      `>= retry.baseDelayMs (${baseDelayMs})`,
      maxDelayMs,
    )
  }

  const drain = options.drain ?? null
  if (drain !== null && typeof drain !== 'object' && typeof drain !== 'function') {
    throw invalidOption(TypeError, 'drain', 'an ObservableInput or an AbortSignal', drain)
  }
  const signal = options.signal ?? null
  if (signal !== null && !isAbortSignal(signal)) {
    throw invalidOption(TypeError, 'signal', 'an AbortSignal', signal)
  }
  const metrics = options.metrics ?? null
  if (metrics !== null && !(metrics instanceof PoolMetrics)) {
    throw invalidOption(TypeError, 'metrics', 'a PoolMetrics', metrics)
  }
  const adaptive = options.adaptive ?? null
  if (
    adaptive !== null &&
    (typeof adaptive !== 'object' ||
      typeof adaptive.onThrottle !== 'function' ||
      typeof adaptive.onSuccess !== 'function' ||
      typeof adaptive.isThrottle !== 'function')
  ) {
    throw invalidOption(TypeError, 'adaptive', 'an Aimd controller (see aimd())', adaptive)
  }
  const scheduler = options.scheduler ?? asyncScheduler
  if (typeof scheduler?.now !== 'function' || typeof scheduler.schedule !== 'function') {
    throw invalidOption(TypeError, 'scheduler', 'a SchedulerLike', scheduler)
  }

  return {
    concurrency,
    failFast: errors === 'fail-fast',
    limiter,
    permits,
    rate,
    burst,
    attempts,
    baseDelayMs,
    maxDelayMs,
    retryable: fn('retry.retryable', retry?.retryable, always),
    random: fn('retry.random', retry?.random, Math.random),
    maxQueued: countOrInfinity('maxQueued', options.maxQueued ?? Number.POSITIVE_INFINITY, 0),
    drain,
    signal,
    adaptive,
    metrics,
    scheduler,
  }
}
