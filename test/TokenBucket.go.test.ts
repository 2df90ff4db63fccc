/**
 * Port of the deterministic, explicit-instant cases of golang.org/x/time/rate's
 * `rate/rate_test.go` (golang/time) to TokenBucket's millisecond API.
 *
 * - d = 100 ms, tK = t0 + K * d. Every script runs twice: with t0 = 0 and with
 *   t0 = 1_000_000, to show that the clock origin does not matter.
 * - Each Go test is one table (its steps, in order) under a describe titled with the
 *   Go test's name; `it.each` runs the table once per origin.
 * - Go's harness rounds timeToAct to the nearest d. Here every expected timeToAct and
 *   token count is exact in binary floating point (integer ms, rates 10 and 5 per
 *   second, whole and half tokens: e.g. 2 / 10 * 1000, 2 * 1000 / 10, 300 * 5 / 1000
 *   all round to the exact result), so they are compared with `toBe` (after folding -0
 *   into 0). Only TestEvery uses a relative tolerance (1e-12), stated there.
 * - A rejected reservation must have timeToAct = Infinity and delayFrom = Infinity.
 * - The explicit `*At` methods must never read the clock: each table also runs once on a
 *   scheduler that counts `now()` reads, and none may happen after construction.
 * - Where the stored versions of rate_test.go differ, the newest is ported (noted).
 */
import type { SchedulerLike } from 'rxjs'
import { describe, expect, it, expect as vitestExpect } from 'vitest'
import { every, type Reservation, TokenBucket } from '../src/index.js'

const d = 100
const ORIGINS = [0, 1_000_000]

/**
 * A scheduler that counts how often its clock is read. `now()` returns 0 (far from the
 * explicit instants when t0 = 1_000_000) and `schedule()` is never needed.
 */
function countingScheduler(): { scheduler: SchedulerLike; reads(): number } {
  let reads = 0
  const scheduler: SchedulerLike = {
    now() {
      reads++
      return 0
    },
    schedule(): never {
      throw new Error('schedule() is not used by the explicit-time API')
    },
  }
  return { scheduler, reads: () => reads }
}

type Step =
  // allowAt(tK, n) must return ok; if toks is given, tokensAt(tK) must equal it first
  | { kind: 'allow'; t: number; n: number; ok: boolean; toks?: number }
  // reserveAt(tK, n, maxWaitMs): ok, and when ok timeToAct = t0 + act * d
  | { kind: 'reserve'; t: number; n: number; act: number; ok: boolean; max?: number; as?: string }
  | { kind: 'cancel'; ref: string; t: number }
  | { kind: 'setRate'; t: number; rate: number }
  | { kind: 'setBurst'; t: number; burst: number }

const allow = (t: number, n: number, ok: boolean, toks?: number): Step =>
  toks === undefined ? { kind: 'allow', t, n, ok } : { kind: 'allow', t, n, ok, toks }
const reserve = (
  t: number,
  n: number,
  act: number,
  ok: boolean,
  opts: { max?: number; as?: string } = {},
): Step => ({ kind: 'reserve', t, n, act, ok, ...opts })
const cancel = (ref: string, t: number): Step => ({ kind: 'cancel', ref, t })
const setRate = (t: number, rate: number): Step => ({ kind: 'setRate', t, rate })
const setBurst = (t: number, burst: number): Step => ({ kind: 'setBurst', t, burst })

/** toBe, but -0 and 0 are the same number of tokens / milliseconds. */
function expectExact(
  expect: typeof vitestExpect,
  actual: number,
  expected: number,
  message: string,
): void {
  expect(actual + 0, message).toBe(expected + 0)
}

/**
 * Runs one table on `bucket`. With `check` false nothing is asserted (used to count
 * clock reads independently of the expectations).
 */
function runScript(bucket: TokenBucket, steps: readonly Step[], t0: number, check = true): void {
  const expect: typeof vitestExpect = check
    ? vitestExpect
    : (((_actual: unknown) => ({ toBe() {} })) as unknown as typeof vitestExpect)
  const at = (k: number) => t0 + k * d
  const saved = new Map<string, Reservation>()
  steps.forEach((step, i) => {
    const where = `step ${i} (${JSON.stringify(step)}, t0 = ${t0})`
    switch (step.kind) {
      case 'allow': {
        if (step.toks !== undefined) {
          expectExact(expect, bucket.tokensAt(at(step.t)), step.toks, `${where}: tokensAt`)
        }
        expect(bucket.allowAt(at(step.t), step.n), `${where}: allowAt`).toBe(step.ok)
        break
      }
      case 'reserve': {
        const r =
          step.max === undefined
            ? bucket.reserveAt(at(step.t), step.n)
            : bucket.reserveAt(at(step.t), step.n, step.max)
        expect(r.ok, `${where}: ok`).toBe(step.ok)
        if (step.ok) {
          expectExact(expect, r.timeToAct, at(step.act), `${where}: timeToAct`)
          expectExact(
            expect,
            r.delayFrom(at(step.t)),
            Math.max(0, at(step.act) - at(step.t)),
            `${where}: delayFrom`,
          )
        } else {
          expect(r.timeToAct, `${where}: timeToAct of a rejected reservation`).toBe(Infinity)
          expect(r.delayFrom(at(step.t)), `${where}: delayFrom of a rejected reservation`).toBe(
            Infinity,
          )
        }
        if (step.as !== undefined) saved.set(step.as, r)
        break
      }
      case 'cancel': {
        const r = saved.get(step.ref)
        if (r === undefined) throw new Error(`${where}: no reservation named ${step.ref}`)
        r.cancelAt(at(step.t))
        break
      }
      case 'setRate':
        bucket.setRateAt(at(step.t), step.rate)
        break
      case 'setBurst':
        bucket.setBurstAt(at(step.t), step.burst)
        break
    }
  })
}

describe('TestEvery: every(intervalMs) -> tokens per second', () => {
  // Go's TestEvery in milliseconds. Finite rates are compared with a relative tolerance
  // of 1e-12 (Go uses 1e-9); the two Inf cases must be exactly Infinity.
  it.each([
    [0, Infinity],
    [-1, Infinity],
    [-1000, Infinity],
    [1e-6, 1e9], // 1 ns
    [1e-3, 1e6], // 1 µs
    [1, 1000],
    [10, 100],
    [100, 10],
    [1000, 1],
    [2000, 0.5],
    [2500, 0.4],
    [4000, 0.25],
    [10000, 0.1],
    [Number.MAX_SAFE_INTEGER, 1000 / Number.MAX_SAFE_INTEGER],
  ])('every(%d) = %d', (interval, rate) => {
    const got = every(interval)
    if (rate === Infinity) {
      expect(got).toBe(Infinity)
    } else {
      expect(Math.abs(got / rate - 1)).toBeLessThan(1e-12)
    }
  })

  it('every(100) === 10 exactly', () => {
    expect(every(100)).toBe(10)
  })
})

interface GoCase {
  name: string
  rate: number
  burst: number
  steps: readonly Step[]
}

const goCases: readonly GoCase[] = [
  {
    // tokens column from the newest rate_test.go (run() checks TokensAt before AllowN)
    name: 'TestLimiterBurst1',
    rate: 10,
    burst: 1,
    steps: [
      allow(0, 1, true, 1),
      allow(0, 1, false, 0),
      allow(0, 1, false, 0),
      allow(1, 1, true, 1),
      allow(1, 1, false, 0),
      allow(1, 1, false, 0),
      allow(2, 2, false, 1), // burst is 1, so n = 2 always fails
      allow(2, 1, true, 1),
      allow(2, 1, false, 0),
    ],
  },
  {
    name: 'TestLimiterBurst3',
    rate: 10,
    burst: 3,
    steps: [
      allow(0, 2, true, 3),
      allow(0, 2, false, 1),
      allow(0, 1, true, 1),
      allow(0, 1, false, 0),
      allow(1, 4, false, 1),
      allow(2, 1, true, 2),
      allow(3, 1, true, 2),
      allow(4, 1, true, 2),
      allow(4, 1, true, 1),
      allow(4, 1, false, 0),
      allow(4, 1, false, 0),
      allow(9, 3, true, 3),
      allow(9, 0, true, 0),
    ],
  },
  {
    name: 'TestLimiterJumpBackwards',
    rate: 10,
    burst: 3,
    steps: [
      allow(1, 1, true, 3), // start at t1
      allow(0, 1, true, 2), // jump back to t0: two tokens remain
      allow(0, 1, true, 1),
      allow(0, 1, false, 0),
      allow(0, 1, false, 0),
      allow(1, 1, true, 1), // got a token
      allow(1, 1, false, 0),
      allow(1, 1, false, 0),
      allow(2, 1, true, 1), // got another token
      allow(2, 1, false, 0),
      allow(2, 1, false, 0),
    ],
  },
  {
    name: 'TestSimpleReserve',
    rate: 10,
    burst: 2,
    steps: [reserve(0, 2, 0, true), reserve(0, 2, 2, true), reserve(3, 2, 4, true)],
  },
  {
    name: 'TestMix',
    rate: 10,
    burst: 2,
    steps: [
      reserve(0, 3, 1, false), // n > burst
      reserve(0, 2, 0, true),
      allow(1, 2, false, 1), // not enough tokens
      reserve(1, 2, 2, true),
      allow(1, 1, false, -1), // negative tokens
      allow(3, 1, true, 1),
    ],
  },
  {
    name: 'TestCancelInvalid',
    rate: 10,
    burst: 2,
    steps: [
      reserve(0, 2, 0, true),
      reserve(0, 3, 3, false, { as: 'r' }),
      cancel('r', 0), // no effect
      reserve(0, 2, 2, true), // no extra tokens
    ],
  },
  {
    name: 'TestCancelLast',
    rate: 10,
    burst: 2,
    steps: [
      reserve(0, 2, 0, true),
      reserve(0, 2, 2, true, { as: 'r' }),
      cancel('r', 1), // 2 tokens back
      reserve(1, 2, 2, true),
    ],
  },
  {
    name: 'TestCancelTooLate',
    rate: 10,
    burst: 2,
    steps: [
      reserve(0, 2, 0, true),
      reserve(0, 2, 2, true, { as: 'r' }),
      cancel('r', 3), // too late: no effect
      reserve(3, 2, 4, true),
    ],
  },
  {
    name: 'TestCancel0Tokens',
    rate: 10,
    burst: 2,
    steps: [
      reserve(0, 2, 0, true),
      reserve(0, 1, 1, true, { as: 'r' }),
      reserve(0, 1, 2, true),
      cancel('r', 0), // 0 tokens back
      reserve(0, 1, 3, true),
    ],
  },
  {
    name: 'TestCancel1Token',
    rate: 10,
    burst: 2,
    steps: [
      reserve(0, 2, 0, true),
      reserve(0, 2, 2, true, { as: 'r' }),
      reserve(0, 1, 3, true),
      cancel('r', 2), // 1 token back
      reserve(2, 2, 4, true),
    ],
  },
  {
    name: 'TestCancelMulti',
    rate: 10,
    burst: 4,
    steps: [
      reserve(0, 4, 0, true),
      reserve(0, 3, 3, true, { as: 'A' }),
      reserve(0, 1, 4, true),
      reserve(0, 1, 5, true, { as: 'C' }),
      cancel('C', 1), // 1 token back
      cancel('A', 1), // 2 tokens back, as if C had never been reserved
      reserve(1, 3, 5, true),
    ],
  },
  {
    // The last four steps exist only in the newest rate_test.go: a rejected reservation
    // (n > burst, or wait > maxWait), even one made at an earlier instant, must leave the
    // bucket unchanged. Older rate.go set `lim.last = last` on rejection, which moves the
    // last-update time back and would grant t3 instead of t4 / t5 below.
    name: 'TestReserveJumpBack',
    rate: 10,
    burst: 2,
    steps: [
      reserve(1, 2, 1, true), // start at t1
      reserve(0, 1, 1, true), // should violate Limit, Burst
      reserve(2, 2, 3, true),
      reserve(0, 3, 0, false), // n > burst: no state change
      reserve(2, 1, 4, true),
      reserve(0, 2, 0, false, { max: d }), // wait too long: no state change
      reserve(2, 1, 5, true),
    ],
  },
  {
    name: 'TestReserveJumpBackCancel',
    rate: 10,
    burst: 2,
    steps: [
      reserve(1, 2, 1, true), // start at t1
      reserve(1, 2, 3, true, { as: 'r' }),
      reserve(1, 1, 4, true),
      cancel('r', 0), // cancel at t0: 1 token back
      reserve(1, 2, 4, true), // should violate Limit, Burst
    ],
  },
  {
    name: 'TestReserveSetLimit',
    rate: 5,
    burst: 2,
    steps: [
      reserve(0, 2, 0, true),
      reserve(0, 2, 4, true),
      setRate(2, 10),
      reserve(2, 1, 4, true), // violates Limit and Burst
    ],
  },
  {
    name: 'TestReserveSetBurst',
    rate: 5,
    burst: 2,
    steps: [
      reserve(0, 2, 0, true),
      reserve(0, 2, 4, true),
      setBurst(3, 4),
      reserve(0, 4, 9, true), // violates Limit and Burst
    ],
  },
  {
    name: 'TestReserveSetLimitCancel',
    rate: 5,
    burst: 2,
    steps: [
      reserve(0, 2, 0, true),
      reserve(0, 2, 4, true, { as: 'r' }),
      setRate(2, 10),
      cancel('r', 2), // 2 tokens back
      reserve(2, 2, 3, true),
    ],
  },
  {
    name: 'TestReserveMax',
    rate: 10,
    burst: 2,
    steps: [
      reserve(0, 2, 0, true, { max: d }),
      reserve(0, 1, 1, true, { max: d }), // close future
      reserve(0, 1, 2, false, { max: d }), // too far in the future
    ],
  },
  {
    name: 'TestZeroLimit',
    rate: 0,
    burst: 1,
    steps: [allow(0, 1, true), allow(0, 1, false)],
  },
  {
    // Go waits on the real clock; here: the second reservation would wait forever at
    // rate 0, so it is rejected (our semantics) and leaves the bucket empty at t0.
    name: 'TestSetAfterZeroLimit',
    rate: 0,
    burst: 1,
    steps: [
      reserve(0, 1, 0, true),
      reserve(0, 1, 0, false),
      setRate(0, 10),
      reserve(0, 1, 1, true),
    ],
  },
  {
    // Go only checks the first Allow(); the last two steps extend it: after the token is
    // spent, exactly one token is back 1/rate = 1.3 s later.
    name: 'TestLimiter_noTruncationErrors',
    rate: 0.7692307692307693,
    burst: 1,
    steps: [allow(0, 1, true), allow(0, 1, false), allow(13, 1, true)],
  },
  {
    // newest rate_test.go (issue 71154): a tiny rate must not overflow into a grant
    name: 'TestTinyLimit',
    rate: 1e-10,
    burst: 1,
    steps: [allow(0, 1, true), allow(0, 1, false), allow(9, 1, false)],
  },
  {
    // TestWaitInf: Inf rate ignores burst, even burst 0
    name: 'TestWaitInf (explicit-time)',
    rate: Infinity,
    burst: 0,
    steps: [allow(0, 3, true), reserve(0, 3, 0, true), reserve(5, 3, 5, true)],
  },
]

describe.each(goCases)('$name', ({ rate, burst, steps }) => {
  it.each(ORIGINS)('t0 = %d', (t0) => {
    runScript(new TokenBucket({ rate, burst, scheduler: countingScheduler().scheduler }), steps, t0)
  })

  it('the explicit-time methods never read scheduler.now()', () => {
    const clock = countingScheduler()
    const bucket = new TokenBucket({ rate, burst, scheduler: clock.scheduler })
    const readsByConstructor = clock.reads() // the constructor may read the clock
    runScript(bucket, steps, 1_000_000, false)
    expect(clock.reads() - readsByConstructor).toBe(0)
  })
})
