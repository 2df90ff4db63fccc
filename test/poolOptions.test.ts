import { describe, expect, it } from 'vitest'
import {
  aimd,
  PoolMetrics,
  type PoolOptions,
  ratePool,
  ratePoolFrom,
  TokenBucket,
} from '../src/index.js'

const bad: [
  string,
  Partial<PoolOptions> | unknown,
  RegExp,
  typeof RangeError | typeof TypeError,
][] = [
  ['options not an object', null, /^options must be/, TypeError],
  ['concurrency 0', { concurrency: 0 }, /^concurrency must be an integer >= 1, got 0$/, RangeError],
  ['concurrency "8"', { concurrency: '8' }, /^concurrency must be a number, got "8"$/, TypeError],
  [
    'errors',
    { concurrency: 1, errors: 'ignore' },
    /^errors must be 'fail-fast' or 'collect', got "ignore"$/,
    RangeError,
  ],
  [
    'limiter not an object',
    { concurrency: 1, limiter: 5 },
    /^limiter must be a Limiter or \{ rate, burst \}, got 5$/,
    TypeError,
  ],
  [
    'limiter.rate',
    { concurrency: 1, limiter: { rate: -1, burst: 1 } },
    /^limiter\.rate must be a number > 0 or Infinity, got -1$/,
    RangeError,
  ],
  [
    'limiter.burst',
    { concurrency: 1, limiter: { rate: 1, burst: 0.5 } },
    /^limiter\.burst must be an integer >= 1, got 0\.5$/,
    RangeError,
  ],
  [
    'permits',
    { concurrency: 1, permits: {} },
    /^permits must be an object with acquire\(\), got \{\}$/,
    TypeError,
  ],
  ['retry not an object', { concurrency: 1, retry: 3 }, /^retry must be an object/, TypeError],
  [
    'retry.attempts',
    { concurrency: 1, retry: { attempts: 0 } },
    /^retry\.attempts must be an integer >= 1, got 0$/,
    RangeError,
  ],
  [
    'retry.baseDelayMs',
    { concurrency: 1, retry: { attempts: 2, baseDelayMs: -1 } },
    /^retry\.baseDelayMs must be a finite number of ms >= 0, got -1$/,
    RangeError,
  ],
  [
    'retry.baseDelayMs type',
    { concurrency: 1, retry: { attempts: 2, baseDelayMs: '5' } },
    /^retry\.baseDelayMs must be a number of ms, got "5"$/,
    TypeError,
  ],
  [
    'retry.maxDelayMs < base',
    { concurrency: 1, retry: { attempts: 2, baseDelayMs: 50, maxDelayMs: 10 } },
    /^retry\.maxDelayMs must be >= retry\.baseDelayMs \(50\), got 10$/,
    RangeError,
  ],
  [
    'retry.retryable',
    { concurrency: 1, retry: { attempts: 2, retryable: true } },
    /^retry\.retryable must be a function, got true$/,
    TypeError,
  ],
  [
    'maxQueued',
    { concurrency: 1, maxQueued: -1 },
    /^maxQueued must be an integer >= 0, got -1$/,
    RangeError,
  ],
  [
    'drain',
    { concurrency: 1, drain: 5 },
    /^drain must be an ObservableInput or an AbortSignal, got 5$/,
    TypeError,
  ],
  [
    'signal',
    { concurrency: 1, signal: {} },
    /^signal must be an AbortSignal, got \{\}$/,
    TypeError,
  ],
  [
    'metrics',
    { concurrency: 1, metrics: {} },
    /^metrics must be a PoolMetrics, got \{\}$/,
    TypeError,
  ],
  ['adaptive', { concurrency: 1, adaptive: {} }, /^adaptive must be an Aimd controller/, TypeError],
  // Regression: only onThrottle was checked; a missing onSuccess hung the pool later.
  [
    'adaptive without onSuccess',
    { concurrency: 1, adaptive: { onThrottle() {}, isThrottle: () => false } },
    /^adaptive must be an Aimd controller/,
    TypeError,
  ],
  ['scheduler', { concurrency: 1, scheduler: {} }, /^scheduler must be a SchedulerLike/, TypeError],
]

describe('pool options are checked at construction', () => {
  it.each(bad)('%s', (_, options, message, Kind) => {
    for (const make of [
      () => ratePool((x) => [x], options as PoolOptions),
      () => ratePoolFrom([1], (x) => [x], options as PoolOptions),
    ]) {
      let error: unknown
      try {
        make()
      } catch (e) {
        error = e
      }
      expect(error).toBeInstanceOf(Kind)
      expect((error as Error).message).toMatch(message)
      expect(error).toHaveProperty('code', 'RX_FANOUT_INVALID_OPTION')
    }
  })

  it('valid options, every one given, construct', () => {
    const bucket = new TokenBucket({ rate: 10, burst: 2 })
    expect(() =>
      ratePool((x) => [x], {
        concurrency: Number.POSITIVE_INFINITY,
        limiter: bucket,
        errors: 'collect',
        retry: {
          attempts: 3,
          baseDelayMs: 0,
          maxDelayMs: 0,
          retryable: () => true,
          random: () => 0,
        },
        maxQueued: 0,
        drain: new AbortController().signal,
        signal: new AbortController().signal,
        adaptive: aimd(bucket, { min: 1, max: 10 }),
        metrics: new PoolMetrics(),
      }),
    ).not.toThrow()
  })

  it('process and source are checked too', () => {
    expect(() => ratePool(5 as never, { concurrency: 1 })).toThrow(
      /^process must be a function, got number$/,
    )
    expect(() => ratePoolFrom(5 as never, (x) => [x], { concurrency: 1 })).toThrow(
      /^source must be an Iterable or an AsyncIterable, got number$/,
    )
  })
})
