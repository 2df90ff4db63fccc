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
import { describe, expect, it } from 'vitest'
import { every, type Reservation, TokenBucket } from '../src/index.js'
import { expectExact, type GoRateDriver, goCases, runGoTable } from './fixtures/goRateTables.js'

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

/** The in-process bucket as the tables' driver (every step on its explicit-time API). */
function driver(bucket: TokenBucket): GoRateDriver<Reservation> {
  return {
    tokensAt: (now) => bucket.tokensAt(now),
    allowAt: (now, n) => bucket.allowAt(now, n),
    reserveAt: (now, n, max) =>
      max === undefined ? bucket.reserveAt(now, n) : bucket.reserveAt(now, n, max),
    isOk: (r) => r.ok,
    expectGranted(expect, r, timeToAct, { now, where }) {
      expectExact(expect, r.timeToAct, timeToAct, `${where}: timeToAct`)
      expectExact(expect, r.delayFrom(now), Math.max(0, timeToAct - now), `${where}: delayFrom`)
    },
    expectRejected(expect, r, { now, where }) {
      expect(r.timeToAct, `${where}: timeToAct of a rejected reservation`).toBe(Infinity)
      expect(r.delayFrom(now), `${where}: delayFrom of a rejected reservation`).toBe(Infinity)
    },
    cancelAt: (r, now) => r.cancelAt(now),
    setRateAt: (now, rate) => bucket.setRateAt(now, rate),
    setBurstAt: (now, burst) => bucket.setBurstAt(now, burst),
  }
}

/** An expect that asserts nothing (to count clock reads independently of the checks). */
const expectNothing = ((_actual: unknown) => ({ toBe() {} })) as unknown as typeof expect

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

// The tables themselves are in ./fixtures/goRateTables.ts (shared with
// test/redis/store.test.ts, which plays them on the Redis BucketStore).
describe.each(goCases)('$name', ({ rate, burst, steps }) => {
  it.each(ORIGINS)('t0 = %d', async (t0) => {
    const bucket = new TokenBucket({ rate, burst, scheduler: countingScheduler().scheduler })
    await runGoTable(expect, driver(bucket), steps, t0)
  })

  it('the explicit-time methods never read scheduler.now()', async () => {
    const clock = countingScheduler()
    const bucket = new TokenBucket({ rate, burst, scheduler: clock.scheduler })
    const readsByConstructor = clock.reads() // the constructor may read the clock
    await runGoTable(expectNothing, driver(bucket), steps, 1_000_000)
    expect(clock.reads() - readsByConstructor).toBe(0)
  })
})
