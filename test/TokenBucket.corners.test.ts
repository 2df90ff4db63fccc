/**
 * TokenBucket corner cases, written from the design's semantics (one describe per corner).
 * Times are milliseconds on the bucket's clock; rates are tokens per second.
 *
 * Semantics under test:
 * - A new bucket starts full (tokens = burst), whatever the rate (0 and Infinity included)
 *   and whatever instant it is first used at.
 * - Time going backwards (an `at` before the last update) adds no tokens; a granted call
 *   at such an instant moves the last-update time back to `at` (x/time/rate's
 *   TestLimiterJumpBackwards). A rejected call changes nothing (newest x/time/rate).
 * - n > burst is never ok for a finite rate; n = 0 is always ok. Rate Infinity ignores
 *   burst: ok even with burst 0, timeToAct = at, and the bucket's state does not change.
 * - Rate 0 grants only the initial burst. A reservation that would have to wait forever
 *   is not ok (timeToAct Infinity, delayFrom Infinity), unlike old Go versions that
 *   returned ok with a huge wait. After setRateAt(t, 10) on a rate-0 bucket reservations
 *   wait normally.
 * - cancelAt gives back only what later reservations did not consume, computed with the
 *   rate in force when the reservation was made; it does nothing once the reservation's
 *   timeToAct is before `at` (at timeToAct itself it still gives back, as Go's
 *   `timeToAct.Before(now)`), nothing for a rejected reservation, nothing for a
 *   reservation granted at rate Infinity.
 * - setRateAt / setBurstAt first settle the tokens up to `at` under the OLD rate and the
 *   OLD burst cap (Go), then switch; a lowered burst caps the tokens on the next advance.
 * - No NaN anywhere from Infinity × 0 (tokensAt on an Infinity-rate bucket, switching
 *   Infinity -> finite -> Infinity, rate 0 with an unbounded elapsed time, cancelling a
 *   reservation granted at rate Infinity).
 * - Invalid constructor options throw a RangeError or TypeError whose message names the
 *   option (`rate`, `burst`) and echoes the value; invalid n (negative, NaN, non-finite)
 *   throws a RangeError naming `n`.
 * - Float dust: amounts within 1e-9 of a token count as whole, so 0.1 + 0.2-style
 *   rounding never delays a grant.
 * - allow(), reserve(), tokens(), setRate(), setBurst() equal the *At forms at
 *   scheduler.now().
 *
 * Token counts and instants below are exact in binary floating point unless a comment
 * states a tolerance; -0 and 0 are treated as equal.
 */
import fc from 'fast-check'
import type { SchedulerLike } from 'rxjs'
import { describe, expect, it } from 'vitest'
import { every, type Reservation, TokenBucket } from '../src/index.js'

/** A scheduler whose clock the test sets; schedule() is never needed here. */
function fakeClock(start = 0): { scheduler: SchedulerLike; set(ms: number): void } {
  let time = start
  return {
    scheduler: {
      now: () => time,
      schedule(): never {
        throw new Error('schedule() is not used by these tests')
      },
    },
    set(ms: number) {
      time = ms
    },
  }
}

function bucket(rate: number, burst: number, now = 0): TokenBucket {
  return new TokenBucket({ rate, burst, scheduler: fakeClock(now).scheduler })
}

/** toBe, folding -0 into 0. */
function expectTokens(actual: number, expected: number): void {
  expect(actual + 0).toBe(expected + 0)
}

function expectRejected(r: Reservation, from: number): void {
  expect(r.ok).toBe(false)
  expect(r.timeToAct).toBe(Infinity)
  expect(r.delayFrom(from)).toBe(Infinity)
}

describe('a new bucket starts full (tokens = burst) whatever the rate', () => {
  it.each([
    [10, 5],
    [1, 1],
    [0, 3],
    [0, 0],
    [0.001, 7],
    [1000, 50],
    [1e-10, 2],
    [Infinity, 4],
    [Infinity, 0],
  ])('rate %d, burst %d', (rate, burst) => {
    const b = bucket(rate, burst)
    expectTokens(b.tokensAt(0), burst)
    expectTokens(b.tokensAt(1e9), burst)
    expect(b.allowAt(0, burst)).toBe(true)
    expectTokens(b.tokensAt(0), rate === Infinity ? burst : 0)
  })

  it.each([0, 5_000, -5_000, 1e12])('full when first used at %d ms (clock reads 5000)', (at) => {
    const b = bucket(10, 3, 5_000)
    expectTokens(b.tokensAt(at), 3)
    expect(b.allowAt(at, 3)).toBe(true)
    expect(b.allowAt(at, 1)).toBe(false)
  })

  it('a rate-0 bucket grants its initial burst at any instant', () => {
    const b = bucket(0, 2)
    const r = b.reserveAt(1e9, 2)
    expect(r.ok).toBe(true)
    expect(r.timeToAct).toBe(1e9)
  })
})

describe('time going backwards adds no tokens', () => {
  it('an earlier instant neither adds nor removes tokens, and tokensAt changes nothing', () => {
    const b = bucket(10, 5)
    expect(b.allowAt(1000, 4)).toBe(true)
    expectTokens(b.tokensAt(500), 1)
    expectTokens(b.tokensAt(0), 1)
    expectTokens(b.tokensAt(-1e9), 1)
    expectTokens(b.tokensAt(1000), 1)
    expectTokens(b.tokensAt(1100), 2)
  })

  it('a granted call at an earlier instant moves the last update back to it', () => {
    const b = bucket(10, 5)
    expect(b.allowAt(1000, 4)).toBe(true) // 1 left, last update 1000
    expect(b.allowAt(500, 1)).toBe(true) // 0 left, last update 500
    expectTokens(b.tokensAt(500), 0)
    expectTokens(b.tokensAt(600), 1)
    expectTokens(b.tokensAt(800), 3)
    expectTokens(b.tokensAt(1000), 5)
  })

  it('a reservation at an earlier instant waits from that instant', () => {
    const b = bucket(10, 2)
    expect(b.allowAt(1000, 2)).toBe(true)
    const r = b.reserveAt(500, 1)
    expect(r.ok).toBe(true)
    expect(r.timeToAct).toBe(600)
    expectTokens(b.tokensAt(500), -1)
  })

  it.each([
    ['allowAt, not enough tokens', (b: TokenBucket) => b.allowAt(500, 1)],
    ['reserveAt, n > burst', (b: TokenBucket) => b.reserveAt(500, 3).ok],
    ['reserveAt, wait > maxWaitMs', (b: TokenBucket) => b.reserveAt(500, 1, 50).ok],
  ])('a rejected call at an earlier instant changes nothing (%s)', (_, call) => {
    const b = bucket(10, 2)
    expect(b.allowAt(1000, 2)).toBe(true)
    expect(call(b)).toBe(false)
    expectTokens(b.tokensAt(1000), 0)
    expectTokens(b.tokensAt(1100), 1)
  })
})

describe('n > burst is never ok for a finite rate', () => {
  it.each([
    [10, 3, 4],
    [10, 0, 1],
    [0, 2, 3],
    [1000, 50, 51],
    [1e-10, 1, 2],
    [every(1), 1, 1e6],
  ])('rate %d, burst %d, n = %d', (rate, burst, n) => {
    const b = bucket(rate, burst)
    expect(b.allowAt(1e9, n)).toBe(false)
    expectRejected(b.reserveAt(1e9, n), 1e9)
    expectRejected(b.reserveAt(1e9, n, Infinity), 0)
    expectTokens(b.tokensAt(1e9), burst) // nothing was taken
    if (burst > 0) expect(b.allowAt(1e9, burst)).toBe(true) // n = burst is fine
  })

  it.each([
    [10, 0],
    [0, 0],
    [10, 3],
  ])('n = 0 is always ok (rate %d, burst %d), even on an empty bucket', (rate, burst) => {
    const b = bucket(rate, burst)
    b.allowAt(0, burst)
    expect(b.allowAt(0, 0)).toBe(true)
    const r = b.reserveAt(0, 0, 0)
    expect(r.ok).toBe(true)
    expect(r.timeToAct).toBe(0)
  })
})

describe('rate Infinity ignores burst', () => {
  it.each([
    [0, 1],
    [0, 3],
    [0, 1e6],
    [2, 5],
  ])('burst %d, n = %d: ok at once, no state change', (burst, n) => {
    const b = bucket(Infinity, burst)
    for (const at of [0, 100, 100, 50]) {
      expect(b.allowAt(at, n)).toBe(true)
      const r = b.reserveAt(at, n, 0)
      expect(r.ok).toBe(true)
      expect(r.timeToAct).toBe(at)
      expect(r.delayFrom(at)).toBe(0)
      expect(r.delayFrom(at - 100)).toBe(100)
      expect(r.delayFrom(at + 100)).toBe(0)
      r.cancelAt(at)
      expectTokens(b.tokensAt(at), burst)
    }
  })
})

describe('rate 0 grants only the initial burst', () => {
  it('grants the burst, then nothing, however long it waits', () => {
    const b = bucket(0, 2)
    expect(b.allowAt(0, 1)).toBe(true)
    expect(b.allowAt(1e6, 1)).toBe(true)
    expect(b.allowAt(1e12, 1)).toBe(false)
    expectTokens(b.tokensAt(1e12), 0)
  })

  it('a reservation that would wait forever is not ok and takes nothing', () => {
    const b = bucket(0, 3)
    expect(b.allowAt(0, 2)).toBe(true)
    expectRejected(b.reserveAt(0, 2), 0)
    expectRejected(b.reserveAt(5_000, 2, Infinity), 5_000)
    expectTokens(b.tokensAt(5_000), 1)
    expect(b.allowAt(5_000, 1)).toBe(true)
    expectRejected(b.reserveAt(5_000, 1), 5_000)
    expectTokens(b.tokensAt(1e15), 0) // never negative: nothing was reserved
  })

  it('after setRateAt(t, 10) reservations wait normally; nothing accrued at rate 0', () => {
    const b = bucket(0, 1)
    expect(b.allowAt(0, 1)).toBe(true)
    expectRejected(b.reserveAt(0, 1), 0)
    b.setRateAt(5_000, 10)
    expectTokens(b.tokensAt(5_000), 0)
    const r = b.reserveAt(5_000, 1)
    expect(r.ok).toBe(true)
    expect(r.timeToAct).toBe(5_100)
    expect(r.delayFrom(5_000)).toBe(100)
  })
})

describe('cancelAt', () => {
  it('gives back only what later reservations did not consume', () => {
    const b = bucket(10, 4)
    expect(b.allowAt(0, 4)).toBe(true)
    const a = b.reserveAt(0, 3) // act at 300
    const later = b.reserveAt(0, 1) // act at 400, planned on top of a
    expect(a.timeToAct).toBe(300)
    expect(later.timeToAct).toBe(400)
    a.cancelAt(0) // 3 - 1 = 2 back
    expectTokens(b.tokensAt(0), -2)
    expect(b.reserveAt(0, 1).timeToAct).toBe(300)
  })

  it('gives everything back when no later reservation exists', () => {
    const b = bucket(10, 4)
    expect(b.allowAt(0, 4)).toBe(true)
    const r = b.reserveAt(0, 2) // act at 200
    r.cancelAt(100) // -2 + 1 (elapsed) + 2 (back)
    expectTokens(b.tokensAt(100), 1)
  })

  it.each([
    [201, 0.01, 'just after timeToAct: nothing back'],
    [300, 1, 'after timeToAct: nothing back'],
    [200, 2, 'at timeToAct: still gives back'],
    [150, 1.5, 'before timeToAct: gives back'],
  ])('cancelAt(%d): tokensAt = %d (%s)', (at, tokens) => {
    const b = bucket(10, 2)
    expect(b.allowAt(0, 2)).toBe(true)
    const r = b.reserveAt(0, 2) // act at 200
    r.cancelAt(at)
    // 201 ms of refill is 2.01 - 2 = 0.01 token: not exact in binary, 12 digits
    expect(b.tokensAt(at)).toBeCloseTo(tokens, 12)
  })

  it.each([
    ['n > burst', (b: TokenBucket) => b.reserveAt(0, 3)],
    ['wait > maxWaitMs', (b: TokenBucket) => b.reserveAt(0, 1, 50)],
  ])('does nothing for a rejected reservation (%s)', (_, reserve) => {
    const b = bucket(10, 2)
    expect(b.allowAt(0, 2)).toBe(true)
    const r = reserve(b)
    expect(r.ok).toBe(false)
    r.cancelAt(0)
    expectTokens(b.tokensAt(0), 0)
  })

  it('uses the rate in force when the reservation was made', () => {
    const b = bucket(5, 4)
    expect(b.allowAt(0, 4)).toBe(true)
    const a = b.reserveAt(0, 2) // act at 400 (5/s)
    const later = b.reserveAt(0, 1) // act at 600
    expect(a.timeToAct).toBe(400)
    expect(later.timeToAct).toBe(600)
    b.setRateAt(0, 10)
    // later reservations took (600 - 400) ms at 5/s = 1 token: 1 back (10/s would say 0)
    a.cancelAt(0)
    expectTokens(b.tokensAt(0), -2)
    expect(b.reserveAt(0, 1).timeToAct).toBe(300) // -3 at 10/s
  })

  it('does nothing for a reservation granted at rate Infinity', () => {
    const b = bucket(Infinity, 3)
    const r = b.reserveAt(0, 2)
    r.cancelAt(0)
    expectTokens(b.tokensAt(0), 3)
  })

  it('does nothing for a reservation granted at rate Infinity, after a switch to finite (no NaN)', () => {
    const b = bucket(Infinity, 3)
    const r = b.reserveAt(0, 2)
    expect(r.ok).toBe(true)
    b.setRateAt(0, 10)
    expectTokens(b.tokensAt(0), 3) // started full, nothing was consumed at rate Infinity
    expect(b.allowAt(0, 3)).toBe(true)
    r.cancelAt(0)
    expectTokens(b.tokensAt(0), 0)
    expectTokens(b.tokensAt(100), 1)
  })
})

describe('setRateAt / setBurstAt settle the tokens under the old settings first', () => {
  it('setRateAt: tokens accrued at the old rate are kept, then the new rate applies', () => {
    const b = bucket(10, 10)
    expect(b.allowAt(0, 10)).toBe(true)
    b.setRateAt(500, 1)
    expectTokens(b.tokensAt(500), 5)
    expectTokens(b.tokensAt(1_500), 6)
    expectTokens(b.tokensAt(5_500), 10)
    expectTokens(b.tokensAt(9_999), 10)
  })

  it('setRateAt to a faster rate', () => {
    const b = bucket(1, 10)
    expect(b.allowAt(0, 10)).toBe(true)
    b.setRateAt(2_000, 100)
    expectTokens(b.tokensAt(2_000), 2)
    expectTokens(b.tokensAt(2_010), 3)
    expectTokens(b.tokensAt(2_080), 10)
  })

  it('setRateAt(t, 0) freezes the tokens accrued up to t', () => {
    const b = bucket(10, 5)
    expect(b.allowAt(0, 5)).toBe(true)
    b.setRateAt(200, 0)
    expectTokens(b.tokensAt(200), 2)
    expectTokens(b.tokensAt(1e9), 2)
    expectRejected(b.reserveAt(1e9, 3), 1e9)
    expect(b.allowAt(1e9, 2)).toBe(true)
  })

  it('setBurstAt raising: tokens up to `at` were capped by the old burst', () => {
    const b = bucket(10, 2)
    expect(b.allowAt(0, 2)).toBe(true)
    b.setBurstAt(1_000, 8) // 10 tokens' worth of time, but the old cap was 2
    expectTokens(b.tokensAt(1_000), 2)
    expectTokens(b.tokensAt(1_300), 5)
    expectTokens(b.tokensAt(2_000), 8)
    expectTokens(b.tokensAt(5_000), 8)
  })

  it('setBurstAt lowering caps the tokens at the new burst on the next advance', () => {
    const b = bucket(10, 10)
    expect(b.allowAt(0, 10)).toBe(true)
    b.setBurstAt(800, 3) // 8 settled under the old cap
    expectTokens(b.tokensAt(800), 3)
    expect(b.allowAt(800, 4)).toBe(false) // n > new burst
    expect(b.allowAt(800, 3)).toBe(true)
    expect(b.allowAt(800, 1)).toBe(false)
    expectTokens(b.tokensAt(900), 1)
  })

  it('setBurstAt lowering while in debt keeps the debt', () => {
    const b = bucket(10, 4)
    expect(b.allowAt(0, 4)).toBe(true)
    expect(b.reserveAt(0, 2).timeToAct).toBe(200)
    b.setBurstAt(100, 1)
    expectTokens(b.tokensAt(100), -1)
    expectTokens(b.tokensAt(300), 1)
  })

  it('setBurstAt(t, 0): only n = 0 is ok', () => {
    const b = bucket(10, 3)
    b.setBurstAt(0, 0)
    expectTokens(b.tokensAt(0), 0)
    expect(b.allowAt(0, 1)).toBe(false)
    expect(b.allowAt(1e9, 1)).toBe(false)
    expect(b.allowAt(0, 0)).toBe(true)
  })
})

describe('no NaN from Infinity × 0', () => {
  it.each([0, 3])('tokensAt on an Infinity-rate bucket (burst %d) is the burst', (burst) => {
    const b = bucket(Infinity, burst)
    for (const at of [0, 0, 1, -1e9, 1e12]) expectTokens(b.tokensAt(at), burst)
  })

  it('switching Infinity -> finite -> Infinity -> finite', () => {
    const b = bucket(Infinity, 5)
    b.setRateAt(1_000, 10)
    expectTokens(b.tokensAt(1_000), 5) // full: nothing was consumed at rate Infinity
    expect(b.allowAt(1_000, 5)).toBe(true)
    b.setRateAt(1_000, Infinity)
    expect(b.allowAt(1_000, 99)).toBe(true)
    // Zero time at rate Infinity: whether that refills is a choice (Go: it does not),
    // but it is never NaN.
    const atInfinity = b.tokensAt(1_000)
    expect(Number.isNaN(atInfinity)).toBe(false)
    expect(atInfinity).toBeLessThanOrEqual(5)
    b.setRateAt(1_000, 10)
    const same = b.tokensAt(1_000)
    expect(Number.isNaN(same)).toBe(false)
    expect(same).toBeGreaterThanOrEqual(0)
    expect(same).toBeLessThanOrEqual(5)
    expectTokens(b.tokensAt(2_000), 5) // 1 s at 10/s fills it whatever `same` was
    expect(b.allowAt(2_000, 5)).toBe(true)
    b.setRateAt(2_000, Infinity)
    b.setRateAt(3_000, 10) // a second at rate Infinity refills the drained bucket
    expectTokens(b.tokensAt(3_000), 5)
    expect(b.allowAt(3_000, 5)).toBe(true)
    expect(b.allowAt(3_000, 1)).toBe(false)
    const r = b.reserveAt(3_000, 1)
    expect(r.timeToAct).toBe(3_100)
  })

  it('rate 0 with an unbounded elapsed time', () => {
    const b = bucket(0, 3)
    expectTokens(b.tokensAt(0), 3)
    expectTokens(b.tokensAt(1e15), 3)
    expect(b.allowAt(0, 1)).toBe(true)
    expectTokens(b.tokensAt(1e15), 2)
    expectTokens(b.tokensAt(-1e15), 2)
    b.setRateAt(1e15, 0)
    b.setBurstAt(1e15, 3)
    expectTokens(b.tokensAt(2e15), 2)
  })

  it('every(0) as a rate behaves as Infinity', () => {
    const b = bucket(every(0), 0)
    expect(b.rate).toBe(Infinity)
    expect(b.allowAt(0, 7)).toBe(true)
    expectTokens(b.tokensAt(0), 0)
  })

  it('a rate so small that the wait overflows to Infinity is not ok', () => {
    const b = bucket(Number.MIN_VALUE, 1)
    expect(b.allowAt(0, 1)).toBe(true)
    expectRejected(b.reserveAt(0, 1), 0)
    const t = b.tokensAt(1e15)
    expect(Number.isNaN(t)).toBe(false)
    expect(t).toBeLessThan(1)
  })
})

describe('validation', () => {
  it.each([
    ['rate', { rate: Number.NaN, burst: 1 }, 'NaN'],
    ['rate', { rate: -1, burst: 1 }, '-1'],
    ['rate', { rate: -0.5, burst: 1 }, '-0.5'],
    ['rate', { rate: -Infinity, burst: 1 }, '-Infinity'],
    ['burst', { rate: 10, burst: -1 }, '-1'],
    ['burst', { rate: 10, burst: 1.5 }, '1.5'],
    ['burst', { rate: 10, burst: Number.NaN }, 'NaN'],
    ['burst', { rate: 10, burst: Infinity }, 'Infinity'],
  ])('invalid %s: %o', (option, options, echoed) => {
    let error: unknown
    try {
      new TokenBucket({ ...options, scheduler: fakeClock().scheduler })
    } catch (e) {
      error = e
    }
    expect(error instanceof RangeError || error instanceof TypeError).toBe(true)
    const message = (error as Error).message
    expect(message).toMatch(new RegExp(`\\b${option}\\b`))
    expect(message).toContain(echoed)
  })

  it.each([
    [0, 0],
    [Infinity, 0],
    [1e-10, 1],
    [10, 2 ** 31],
  ])('valid: rate %d, burst %d', (rate, burst) => {
    expect(() => bucket(rate, burst)).not.toThrow()
  })

  const badN = [-1, -0.5, Number.NaN, Infinity, -Infinity]
  it.each(badN)('allowAt / reserveAt / allow / reserve reject n = %d', (n) => {
    const b = bucket(10, 3)
    const calls = [
      () => b.allowAt(0, n),
      () => b.reserveAt(0, n),
      () => b.reserveAt(0, n, 1000),
      () => b.allow(n),
      () => b.reserve(n),
    ]
    for (const call of calls) {
      expect(call).toThrow(RangeError)
      expect(call).toThrow(/\bn\b/)
    }
    expectTokens(b.tokensAt(0), 3) // nothing taken
  })
})

describe('float dust: within 1e-9 of a token counts as whole', () => {
  it('one token after 1/3 s at 3 tokens per second', () => {
    const b = bucket(3, 1)
    expect(b.allowAt(0, 1)).toBe(true)
    expect(b.allowAt(1000 / 3, 1)).toBe(true)
  })

  it('ten settlements of 0.1 token (sum 0.9999999999999999) grant a token without delay', () => {
    const make = () => {
      const b = bucket(1, 1)
      expect(b.allowAt(0, 1)).toBe(true)
      for (let k = 1; k <= 9; k++) b.setRateAt(k * 100, 1) // settles 0.1 each time
      return b
    }
    expect(make().allowAt(1_000, 1)).toBe(true)
    const r = make().reserveAt(1_000, 1)
    expect(r.ok).toBe(true)
    expect(r.delayFrom(1_000)).toBe(0)
  })

  it('a reservation is granted at its own timeToAct', () => {
    const b = bucket(3, 1)
    expect(b.allowAt(0, 1)).toBe(true)
    const r = b.reserveAt(0, 1)
    expect(r.timeToAct).toBeCloseTo(1000 / 3, 9)
    const c = bucket(3, 1)
    expect(c.allowAt(0, 1)).toBe(true)
    expect(c.allowAt(r.timeToAct, 1)).toBe(true)
  })
})

describe('clock shorthands equal the *At forms at scheduler.now()', () => {
  type Op =
    | ['allow', number?]
    | ['reserve', number?, number?]
    | ['tokens']
    | ['setRate', number]
    | ['setBurst', number]
  const script: [number, Op][] = [
    [0, ['allow']],
    [0, ['allow', 2]],
    [0, ['tokens']],
    [50, ['reserve']],
    [50, ['reserve', 2]],
    [50, ['tokens']],
    [120, ['setRate', 5]],
    [120, ['tokens']],
    [300, ['reserve', 2, 1000]],
    [300, ['reserve', 3, 100]],
    [400, ['setBurst', 1]],
    [400, ['tokens']],
    [2_000, ['allow']],
    [2_000, ['allow']],
    [2_500, ['reserve']],
    [3_000, ['tokens']],
  ]

  it('same results step by step', () => {
    const clock = fakeClock()
    const short = new TokenBucket({ rate: 10, burst: 3, scheduler: clock.scheduler })
    const explicit = bucket(10, 3, 123_456)
    for (const [at, op] of script) {
      clock.set(at)
      const [kind, a, b] = op
      let got: unknown
      let want: unknown
      switch (kind) {
        case 'allow':
          got = a === undefined ? short.allow() : short.allow(a)
          want = explicit.allowAt(at, a ?? 1)
          break
        case 'reserve': {
          const r =
            a === undefined
              ? short.reserve()
              : b === undefined
                ? short.reserve(a)
                : short.reserve(a, b)
          const s = explicit.reserveAt(at, a ?? 1, b ?? Infinity)
          got = [r.ok, r.timeToAct, r.delayFrom(at)]
          want = [s.ok, s.timeToAct, s.delayFrom(at)]
          break
        }
        case 'tokens':
          got = short.tokens()
          want = explicit.tokensAt(at)
          break
        case 'setRate':
          short.setRate(a as number)
          explicit.setRateAt(at, a as number)
          got = short.rate
          want = explicit.rate
          break
        case 'setBurst':
          short.setBurst(a as number)
          explicit.setBurstAt(at, a as number)
          got = short.burst
          want = explicit.burst
          break
      }
      expect(got, `${kind} at ${at}`).toEqual(want)
    }
  })

  it('allow(), reserve() and tokens() act at the clock, with n = 1 and no wait limit', () => {
    const clock = fakeClock(1_234)
    const b = new TokenBucket({ rate: 10, burst: 1, scheduler: clock.scheduler })
    expectTokens(b.tokens(), 1)
    const first = b.reserve()
    expect(first.timeToAct).toBe(1_234)
    const second = b.reserve()
    expect(second.ok).toBe(true)
    expect(second.timeToAct).toBe(1_334)
    expect(b.allow()).toBe(false)
    clock.set(1_334)
    expectTokens(b.tokens(), 0)
    expect(b.allow()).toBe(false)
    clock.set(1_434)
    expect(b.allow()).toBe(true)
  })

  it('setRate() and setBurst() settle at the clock', () => {
    const clock = fakeClock(0)
    const b = new TokenBucket({ rate: 10, burst: 10, scheduler: clock.scheduler })
    expect(b.allow(10)).toBe(true)
    clock.set(500)
    b.setRate(1)
    expectTokens(b.tokensAt(500), 5)
    clock.set(1_500)
    b.setBurst(20) // settled under the old cap: 5 + 1
    expectTokens(b.tokensAt(1_500), 6)
    expectTokens(b.tokens(), 6)
    expectTokens(b.tokensAt(15_500), 20)
  })

  it('the *At forms default n to 1 and maxWaitMs to Infinity', () => {
    const b = bucket(1, 1)
    expect(b.allowAt(0)).toBe(true)
    expect(b.allowAt(0)).toBe(false)
    expect(b.reserveAt(0).timeToAct).toBe(1_000)
    expect(b.reserveAt(0).timeToAct).toBe(2_000)
    expect(b.reserveAt(0, 1, 2_999).ok).toBe(false)
    expect(b.reserveAt(0, 1, 3_000).timeToAct).toBe(3_000)
  })
})

describe('rate and burst getters', () => {
  it('reflect the options and every change', () => {
    const clock = fakeClock()
    const b = new TokenBucket({ rate: 10, burst: 3, scheduler: clock.scheduler })
    expect([b.rate, b.burst]).toEqual([10, 3])
    b.setRateAt(0, 0)
    expect(b.rate).toBe(0)
    b.setRateAt(0, Infinity)
    expect(b.rate).toBe(Infinity)
    b.setBurstAt(0, 0)
    expect(b.burst).toBe(0)
    b.setRate(2.5)
    b.setBurst(7)
    expect([b.rate, b.burst]).toEqual([2.5, 7])
  })
})

describe('properties', () => {
  const rateArb = fc.oneof(
    fc.double({ min: 0.1, max: 1000, noNaN: true, noDefaultInfinity: true }),
    fc.constant(Infinity),
  )
  const callsArb = fc.array(
    fc.record({
      dt: fc.oneof(
        fc.integer({ min: 0, max: 2000 }),
        fc.double({ min: 0, max: 2000, noNaN: true }),
      ),
      n: fc.integer({ min: 0, max: 55 }),
    }),
    { maxLength: 60 },
  )
  const timed = (calls: { dt: number; n: number }[]) => {
    let at = 0
    return calls.map(({ dt, n }) => {
      at += dt
      return { at, n }
    })
  }

  it('(a) tokens allowed within any window [a, a + w] <= burst + rate * w / 1000', () => {
    fc.assert(
      fc.property(rateArb, fc.integer({ min: 0, max: 50 }), callsArb, (rate, burst, calls) => {
        if (rate === Infinity) return // no bound (and Infinity * 0 would be NaN below)
        const b = bucket(rate, burst)
        const granted = timed(calls).filter(({ at, n }) => b.allowAt(at, n))
        for (const { at: start } of granted) {
          for (const { at: end } of granted) {
            if (end < start) continue
            const total = granted
              .filter(({ at }) => at >= start && at <= end)
              .reduce((sum, { n }) => sum + n, 0)
            expect(total).toBeLessThanOrEqual(burst + (rate * (end - start)) / 1000 + 1e-9)
          }
        }
      }),
    )
  })

  it('(b) tokensAt is never NaN and never exceeds burst', () => {
    fc.assert(
      fc.property(
        rateArb,
        fc.integer({ min: 0, max: 50 }),
        callsArb,
        fc.double({ min: 0, max: 1e7, noNaN: true }),
        (rate, burst, calls, ahead) => {
          const b = bucket(rate, burst)
          for (const { at, n } of timed(calls)) {
            b.allowAt(at, n)
            for (const t of [b.tokensAt(at), b.tokensAt(at + ahead)]) {
              expect(Number.isNaN(t)).toBe(false)
              expect(t).toBeLessThanOrEqual(burst)
            }
          }
        },
      ),
    )
  })

  // Mixed operations incl. rate 0 / Infinity, cancels, burst changes and backwards time.
  const opArb = fc.oneof(
    fc.record({ op: fc.constant('allow' as const), n: fc.integer({ min: 0, max: 12 }) }),
    fc.record({
      op: fc.constant('reserve' as const),
      n: fc.integer({ min: 0, max: 12 }),
      max: fc.oneof(fc.constant(Infinity), fc.integer({ min: 0, max: 3000 })),
    }),
    fc.record({ op: fc.constant('cancel' as const), pick: fc.nat() }),
    fc.record({
      op: fc.constant('setRate' as const),
      rate: fc.oneof(
        fc.constant(0),
        fc.constant(Infinity),
        fc.double({ min: 0.1, max: 100, noNaN: true }),
      ),
    }),
    fc.record({ op: fc.constant('setBurst' as const), burst: fc.integer({ min: 0, max: 10 }) }),
  )
  const mixedArb = fc.tuple(
    rateArb,
    fc.integer({ min: 0, max: 10 }),
    fc.array(fc.tuple(fc.integer({ min: -500, max: 1500 }), opArb), { maxLength: 50 }),
  )
  type Mixed = typeof mixedArb extends fc.Arbitrary<infer T> ? T : never
  /** Runs the steps, calling `check(bucket, at)` after each. */
  function runMixed([rate, burst, steps]: Mixed, check: (b: TokenBucket, at: number) => void) {
    const b = bucket(rate, burst)
    const reservations: Reservation[] = []
    let at = 0
    for (const [dt, step] of steps) {
      at += dt
      switch (step.op) {
        case 'allow':
          b.allowAt(at, step.n)
          break
        case 'reserve': {
          const r = b.reserveAt(at, step.n, step.max)
          expect(Number.isNaN(r.timeToAct)).toBe(false)
          expect(Number.isNaN(r.delayFrom(at))).toBe(false)
          if (r.ok) expect(Number.isFinite(r.timeToAct)).toBe(true)
          else expect(r.timeToAct).toBe(Infinity)
          reservations.push(r)
          break
        }
        case 'cancel':
          reservations[step.pick % Math.max(1, reservations.length)]?.cancelAt(at)
          break
        case 'setRate':
          b.setRateAt(at, step.rate)
          break
        case 'setBurst':
          b.setBurstAt(at, step.burst)
          break
      }
      check(b, at)
    }
  }

  it('(c) mixed operations: no NaN in tokens, timeToAct or delayFrom', () => {
    fc.assert(
      fc.property(mixedArb, (mixed) =>
        runMixed(mixed, (b, at) => {
          expect(Number.isNaN(b.tokensAt(at))).toBe(false)
          expect(Number.isNaN(b.tokensAt(at + 1e6))).toBe(false)
        }),
      ),
    )
  })

  it('(d) mixed operations: tokensAt never exceeds the current burst', () => {
    fc.assert(
      fc.property(mixedArb, (mixed) =>
        runMixed(mixed, (b, at) => {
          expect(b.tokensAt(at)).toBeLessThanOrEqual(b.burst)
          expect(b.tokensAt(at + 1e6)).toBeLessThanOrEqual(b.burst)
        }),
      ),
    )
  })
})
