/**
 * Long waits never end early (issue 8, item 1), in process. Node clamps a timer longer than
 * 2³¹−1 ms (24.8 days) to 1 ms, with a TimeoutOverflowWarning: a wait set in one go would
 * end at once, or, re-aimed each time it fires, spin. On virtual time every delay asked of
 * the scheduler is recorded (none may exceed the cap) and every grant is checked against
 * its exact due instant; on the real clock the timers a long wait costs are counted and
 * the warnings listened for.
 */
import { asyncScheduler, from, type Subscription, VirtualTimeScheduler } from 'rxjs'
import { afterEach, describe, expect, it } from 'vitest'
import { rateLimit } from '../src/operators/rateLimit.js'
import { ratePool } from '../src/operators/ratePool.js'
import { TokenBucket } from '../src/TokenBucket.js'
import { MAX_TIMER_MS, overflowWarnings, recordingScheduler } from './recordingScheduler.js'

const DAY_MS = 86_400_000
const THIRTY_DAYS_MS = 30 * DAY_MS
/** At 1e-7 tokens/s one token takes 1e10 ms (115.7 days): five timer lengths. */
const SLOW_RATE = 1e-7
const ONE_TOKEN_AT_SLOW_MS = 1e10

/** A virtual clock whose delays are recorded; `runTo(t)` runs every action due by `t`. */
function virtualClock() {
  const virtual = new VirtualTimeScheduler()
  const scheduler = recordingScheduler(virtual)
  return {
    scheduler,
    /** Actions still scheduled (a cancelled wait must leave none). */
    get pending() {
      return virtual.actions.length
    },
    runTo(frame: number) {
      virtual.maxFrames = frame
      virtual.flush()
    },
    runAll() {
      virtual.maxFrames = Number.POSITIVE_INFINITY
      virtual.flush()
    },
    /** Every delay asked for fits a timer: none clamped to 1 ms. */
    expectDelaysFit() {
      const longest = Math.max(...scheduler.delays)
      expect(longest, `longest delay of ${scheduler.delays.length}`).toBeLessThanOrEqual(
        MAX_TIMER_MS,
      )
    },
  }
}

const subscriptions: Subscription[] = []
afterEach(() => {
  for (const subscription of subscriptions.splice(0)) subscription.unsubscribe()
})

describe('TokenBucket on virtual time: a long wait ends at its due instant, in steps', () => {
  it('rate 1e-7: the second take is granted at exactly 1e10 ms, not a frame before', () => {
    const clock = virtualClock()
    const bucket = new TokenBucket({ rate: SLOW_RATE, burst: 1, scheduler: clock.scheduler })
    const grants: number[] = []
    for (let i = 0; i < 2; i++) {
      subscriptions.push(bucket.take().subscribe(() => grants.push(clock.scheduler.now())))
    }
    expect(grants).toEqual([0])
    clock.runTo(ONE_TOKEN_AT_SLOW_MS - 1)
    expect(grants, 'nothing before the due instant').toEqual([0])
    clock.runAll()
    expect(grants).toEqual([0, ONE_TOKEN_AT_SLOW_MS])
    clock.expectDelaysFit()
    // ⌈1e10 / (2³¹−1)⌉ = 5 steps: waited in steps, not re-aimed every millisecond.
    expect(clock.scheduler.delays.length).toBeLessThanOrEqual(5)
    console.log(
      `virtual 1e-7: granted at ${grants[1]} ms (due ${ONE_TOKEN_AT_SLOW_MS}), ` +
        `${clock.scheduler.delays.length} timers, longest ${Math.max(...clock.scheduler.delays)} ms`,
    )
  })

  it('pauseUntil(now + 30 days): granted at exactly 30 days, the rest at the rate after', () => {
    const clock = virtualClock()
    const bucket = new TokenBucket({ rate: 10, burst: 2, scheduler: clock.scheduler })
    bucket.pauseUntil(THIRTY_DAYS_MS)
    const grants: number[] = []
    for (let i = 0; i < 3; i++) {
      subscriptions.push(bucket.take().subscribe(() => grants.push(clock.scheduler.now())))
    }
    clock.runTo(THIRTY_DAYS_MS - 1)
    expect(grants, 'nothing while paused').toEqual([])
    clock.runAll()
    // Full again long before the pause ends: two at once, the third a token (100 ms) later.
    expect(grants).toEqual([THIRTY_DAYS_MS, THIRTY_DAYS_MS, THIRTY_DAYS_MS + 100])
    clock.expectDelaysFit()
  })

  it('a rate raised during a long wait re-plans at once: granted when due at the new rate', () => {
    const clock = virtualClock()
    const bucket = new TokenBucket({ rate: SLOW_RATE, burst: 1, scheduler: clock.scheduler })
    const grants: number[] = []
    for (let i = 0; i < 2; i++) {
      subscriptions.push(bucket.take().subscribe(() => grants.push(clock.scheduler.now())))
    }
    clock.scheduler.schedule(() => bucket.setRate(10), 1000)
    clock.runTo(1000)
    expect(grants).toEqual([0])
    // 1e-7 of a token came in the first second; the rest of it at 10/s: due at 1099.99999.
    const due = 1000 + (1 - SLOW_RATE) * 100
    clock.runTo(1099)
    expect(grants).toEqual([0])
    clock.runAll()
    expect(grants).toHaveLength(2)
    expect(grants[1]).toBeGreaterThanOrEqual(due)
    expect(grants[1]).toBeLessThan(due + 1)
    clock.expectDelaysFit()
  })

  it('both at once: a pause of 30 days over a wait of 1e10 ms ends at the later one', () => {
    const clock = virtualClock()
    const bucket = new TokenBucket({ rate: SLOW_RATE, burst: 1, scheduler: clock.scheduler })
    const grants: number[] = []
    subscriptions.push(bucket.take().subscribe(() => grants.push(clock.scheduler.now())))
    bucket.pauseUntil(THIRTY_DAYS_MS)
    subscriptions.push(bucket.take().subscribe(() => grants.push(clock.scheduler.now())))
    clock.runTo(ONE_TOKEN_AT_SLOW_MS - 1)
    expect(grants).toEqual([0])
    clock.runAll()
    expect(grants).toEqual([0, ONE_TOKEN_AT_SLOW_MS])
    clock.expectDelaysFit()
  })
})

describe('rateLimit and the pool on virtual time: no delay above 2³¹−1 ms, nothing early', () => {
  it('rateLimit at 1e-7: the second value is let out at exactly 1e10 ms', () => {
    const clock = virtualClock()
    const out: [string, number][] = []
    subscriptions.push(
      from(['a', 'b'])
        .pipe(rateLimit({ rate: SLOW_RATE, burst: 1 }, { scheduler: clock.scheduler }))
        .subscribe((value) => out.push([value, clock.scheduler.now()])),
    )
    clock.runTo(ONE_TOKEN_AT_SLOW_MS - 1)
    expect(out).toEqual([['a', 0]])
    clock.runAll()
    expect(out).toEqual([
      ['a', 0],
      ['b', ONE_TOKEN_AT_SLOW_MS],
    ])
    clock.expectDelaysFit()
  })

  it('ratePool with a 1e-7 limiter: the second job starts at exactly 1e10 ms', () => {
    const clock = virtualClock()
    const starts: number[] = []
    const results: unknown[] = []
    subscriptions.push(
      from([1, 2])
        .pipe(
          ratePool(
            (value: number) => {
              starts.push(clock.scheduler.now())
              return [value]
            },
            { concurrency: 2, limiter: { rate: SLOW_RATE, burst: 1 }, scheduler: clock.scheduler },
          ),
        )
        .subscribe((result) => results.push(result)),
    )
    clock.runTo(ONE_TOKEN_AT_SLOW_MS - 1)
    expect(starts).toEqual([0])
    clock.runAll()
    expect(starts).toEqual([0, ONE_TOKEN_AT_SLOW_MS])
    expect(results).toHaveLength(2)
    clock.expectDelaysFit()
  })

  it.each([
    ['without a limiter', undefined],
    ['with a limiter (paused for as long)', { rate: 10, burst: 1 }],
  ])('ratePool, retryAfterMs of 30 days %s: the retry starts at exactly 30 days', (_, limiter) => {
    const clock = virtualClock()
    const attempts: [number, number][] = []
    const failure = Object.assign(new Error('come back in 30 days'), {
      retryAfterMs: THIRTY_DAYS_MS,
    })
    const results: unknown[] = []
    subscriptions.push(
      from([1])
        .pipe(
          ratePool(
            (value: number, { attempt }) => {
              attempts.push([attempt, clock.scheduler.now()])
              if (attempt === 1) throw failure
              return [value]
            },
            {
              concurrency: 1,
              ...(limiter ? { limiter } : {}),
              retry: { attempts: 2, random: () => 0 },
              scheduler: clock.scheduler,
            },
          ),
        )
        .subscribe((result) => results.push(result)),
    )
    clock.runTo(THIRTY_DAYS_MS - 1)
    expect(attempts).toEqual([[1, 0]])
    clock.runAll()
    expect(attempts).toEqual([
      [1, 0],
      [2, THIRTY_DAYS_MS],
    ])
    expect(results).toMatchObject([{ ok: true, attempts: 2 }])
    clock.expectDelaysFit()
  })

  it('a pool whose long retry delay is cancelled leaves no action scheduled', () => {
    const clock = virtualClock()
    const failure = Object.assign(new Error('later'), { retryAfterMs: THIRTY_DAYS_MS })
    const attempts: number[] = []
    const subscription = from([1])
      .pipe(
        ratePool(
          (_: number, { attempt }) => {
            attempts.push(attempt)
            throw failure
          },
          { concurrency: 1, retry: { attempts: 2, random: () => 0 }, scheduler: clock.scheduler },
        ),
      )
      .subscribe({ error: () => {} })
    clock.runTo(DAY_MS)
    expect(clock.pending, 'the retry delay, in its first step').toBe(1)
    subscription.unsubscribe()
    expect(clock.pending).toBe(0)
    clock.runAll()
    expect(attempts).toEqual([1])
  })
})

describe('TokenBucket on the real clock: a long wait costs no timer storm and no warning', () => {
  it('rate 1e-7 and pauseFor(30 days): nothing granted over 300 ms, a timer or two each', async () => {
    const warnings = overflowWarnings()
    try {
      const slowClock = recordingScheduler(asyncScheduler)
      const slow = new TokenBucket({ rate: SLOW_RATE, burst: 1, scheduler: slowClock })
      const pausedClock = recordingScheduler(asyncScheduler)
      const paused = new TokenBucket({ rate: 10, burst: 5, scheduler: pausedClock })
      let slowGrants = 0
      let pausedGrants = 0
      subscriptions.push(slow.take().subscribe(() => slowGrants++))
      subscriptions.push(slow.take().subscribe(() => slowGrants++))
      paused.pauseFor(THIRTY_DAYS_MS)
      for (let i = 0; i < 3; i++) subscriptions.push(paused.take().subscribe(() => pausedGrants++))
      const started = performance.now()
      await new Promise((resolve) => setTimeout(resolve, 300))
      const seconds = (performance.now() - started) / 1000
      // A warning is emitted on the next tick after the timer that caused it.
      await new Promise((resolve) => setImmediate(resolve))
      const perSecond = (slowClock.delays.length + pausedClock.delays.length) / seconds
      console.log(
        `in-process real clock: 1e-7 granted ${slowGrants - 1} after the burst, paused ` +
          `granted ${pausedGrants} of 3, ${slowClock.delays.length} + ` +
          `${pausedClock.delays.length} timers (${perSecond.toFixed(0)}/s), ` +
          `${warnings.count} TimeoutOverflowWarning`,
      )
      expect(slowGrants, 'the burst only').toBe(1)
      expect(pausedGrants).toBe(0)
      // One timer each, aimed at most 2³¹−1 ms ahead (the old code set one every ms).
      expect(slowClock.delays.length).toBeLessThanOrEqual(2)
      expect(pausedClock.delays.length).toBeLessThanOrEqual(2)
      expect(Math.max(...slowClock.delays, ...pausedClock.delays)).toBeLessThanOrEqual(MAX_TIMER_MS)
      expect(warnings.count).toBe(0)
    } finally {
      warnings.dispose()
    }
  })
})
