/**
 * The Lua scripts' bucket math against the in-process TokenBucket, on explicit instants
 * (`now` passed to every BucketStore call, so Redis's clock is never read): Go's table
 * cases, then random schedules compared step by step (ok, time to act, tokens).
 */
import fc from 'fast-check'
import type { Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BucketStore, type StoreReservation } from '../../src/redis/store.js'
import { type Reservation, TokenBucket } from '../../src/TokenBucket.js'
import {
  expectExact,
  type GoCase,
  type GoRateDriver,
  goCases,
  runGoTable,
} from '../fixtures/goRateTables.js'
import { client, deleteUnder, redisAvailable, testPrefix } from './helpers.js'

const redisUp = await redisAvailable('test/redis/store.test.ts')

// Exact in binary floating point for the Go tables (as in test/TokenBucket.go.test.ts);
// the brief's tolerance for computed times elsewhere.
const TIME_TOLERANCE_MS = 1e-6
const TOKEN_TOLERANCE = 1e-9
// setRate/setBurst on the store are temporary overrides; Go's are for good.
const FOREVER = 1e12

// 0 and 1e6 as in the in-process port; 1.76e12 is the magnitude of Redis's own clock (ms).
const ORIGINS = [0, 1_000_000, 1_763_000_000_000]

// The tables of golang.org/x/time/rate's rate_test.go, shared with
// test/TokenBucket.go.test.ts. As when this file had its own copy: the two rate-0 tables
// (TestZeroLimit, TestSetAfterZeroLimit) are not played on the store, and TestWaitInf
// runs with burst 1 (the in-process port: burst 0).
const NOT_ON_THE_STORE = new Set(['TestZeroLimit', 'TestSetAfterZeroLimit'])
const storeCases: GoCase[] = goCases
  .filter(({ name }) => !NOT_ON_THE_STORE.has(name))
  .map((c) => (c.name === 'TestWaitInf (explicit-time)' ? { ...c, burst: 1 } : c))

describe.skipIf(!redisUp)('BucketStore (the Lua scripts) on explicit instants', () => {
  let redis: Redis
  const prefix = testPrefix()
  let serial = 0
  // 'full': Go's tables start every bucket full, whatever Redis's uptime (the cold start
  // has tests of its own).
  const nextStore = () =>
    new BucketStore(redis, `{${prefix}:${serial++}}:bucket`, { coldStart: 'full' })

  beforeAll(() => {
    redis = client()
  })
  afterAll(async () => {
    await deleteUnder(redis, prefix)
    redis.disconnect()
  })

  /** The store as the tables' driver: every call with an explicit `now`. */
  function storeDriver(
    store: BucketStore,
    rate: number,
    burst: number,
  ): GoRateDriver<{ r: StoreReservation; n: number }> {
    return {
      tokensAt: async (now) => (await store.peek(rate, burst, now)).tokens,
      allowAt: async (now, n) => (await store.reserve(rate, burst, n, 0, now)).ok,
      reserveAt: async (now, n, max) => ({
        r: await store.reserve(rate, burst, n, max ?? Number.POSITIVE_INFINITY, now),
        n,
      }),
      isOk: ({ r }) => r.ok,
      expectGranted(expect, { r }, timeToAct, { now, where }) {
        expect(r.now, `${where}: decided at the given now`).toBe(now)
        expectExact(expect, Number(r.timeToAct), timeToAct, `${where}: timeToAct`)
        expect(Math.abs(r.now + r.wait - timeToAct), `${where}: now + wait`).toBeLessThan(
          TIME_TOLERANCE_MS,
        )
      },
      expectRejected(expect, { r }, { where }) {
        expect(r.timeToAct, `${where}: a rejected reservation never acts`).toBe('inf')
      },
      async cancelAt({ r, n }, now) {
        // As Go's Reservation.CancelAt (and RedisTokenBucket): a rejected one has nothing
        // to give back, so it is not sent (the store's own answer to it is checked under
        // 'regressions').
        if (r.ok) await store.cancel(rate, burst, n, r.timeToAct, r.rateThen, now)
      },
      setRateAt: async (now, newRate) => {
        await store.configure(rate, burst, { rate: newRate }, FOREVER, now)
      },
      setBurstAt: async (now, newBurst) => {
        await store.configure(rate, burst, { burst: newBurst }, FOREVER, now)
      },
    }
  }

  describe.each(storeCases)('$name', ({ rate, burst, steps }) => {
    it.each(ORIGINS)('t0 = %d: the same grants, times and tokens as Go', async (t0) => {
      await runGoTable(expect, storeDriver(nextStore(), rate, burst), steps, t0)
    })
  })

  describe('random schedules: the same as TokenBucket.reserveAt/cancelAt/setRateAt/setBurstAt/tokensAt', () => {
    type Op =
      | { kind: 'reserve'; dt: number; n: number; maxWait: number }
      | { kind: 'cancel'; dt: number; ref: number }
      | { kind: 'setRate'; dt: number; rate: number }
      | { kind: 'setBurst'; dt: number; burst: number }
      | { kind: 'pause'; dt: number; ms: number }
      | { kind: 'peek'; dt: number }

    const FINITE_RATES = [1, 2.5, 5, 10, 50, 0.7692307692307693, 1000 / 3]
    // Several instants at once, whole and fractional ms, and gaps long enough to refill.
    const dt = fc.oneof(
      fc.constant(0),
      fc.integer({ min: 0, max: 300 }),
      fc.double({ min: 0, max: 50, noNaN: true }),
    )
    const op: fc.Arbitrary<Op> = fc.oneof(
      {
        weight: 6,
        arbitrary: fc.record({
          kind: fc.constant('reserve' as const),
          dt,
          n: fc.oneof(fc.integer({ min: 0, max: 6 }), fc.constant(0.5)),
          maxWait: fc.oneof(
            fc.constant(Number.POSITIVE_INFINITY),
            fc.integer({ min: 0, max: 500 }),
          ),
        }),
      },
      {
        weight: 3,
        arbitrary: fc.record({ kind: fc.constant('cancel' as const), dt, ref: fc.nat() }),
      },
      {
        weight: 1,
        arbitrary: fc.record({
          kind: fc.constant('setRate' as const),
          dt,
          rate: fc.constantFrom(...FINITE_RATES),
        }),
      },
      {
        weight: 1,
        arbitrary: fc.record({
          kind: fc.constant('setBurst' as const),
          dt,
          burst: fc.integer({ min: 1, max: 6 }),
        }),
      },
      {
        weight: 1,
        arbitrary: fc.record({
          kind: fc.constant('pause' as const),
          dt,
          ms: fc.integer({ min: 0, max: 400 }),
        }),
      },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('peek' as const), dt }) },
    )

    it('agrees step by step (about 100 schedules)', async () => {
      // Rate Infinity is covered as a constant rate (where tokens gate nothing, so they are
      // not compared); switching between finite and infinite at one instant differs only
      // in that ungated token count, so setRate draws finite rates.
      let comparedCancels = 0
      await fc.assert(
        fc.asyncProperty(
          fc.constantFrom(...FINITE_RATES, Number.POSITIVE_INFINITY),
          fc.integer({ min: 1, max: 5 }),
          fc.constantFrom(0, 1_763_000_000_000),
          fc.array(op, { minLength: 1, maxLength: 25 }),
          async (rate, burst, t0, ops) => {
            const store = nextStore()
            const bucket = new TokenBucket({ rate, burst })
            const made: { s: StoreReservation; l: Reservation; n: number; done: boolean }[] = []
            let t = t0
            for (const [i, o] of ops.entries()) {
              t += o.dt
              const where = `op ${i} ${JSON.stringify(o)} at ${t}`
              switch (o.kind) {
                case 'reserve': {
                  const s = await store.reserve(rate, burst, o.n, o.maxWait, t)
                  const l = bucket.reserveAt(t, o.n, o.maxWait)
                  expect(s.ok, `${where}: ok`).toBe(l.ok)
                  if (l.ok) {
                    expect(
                      Math.abs(s.now + s.wait - l.timeToAct),
                      `${where}: time to act`,
                    ).toBeLessThanOrEqual(TIME_TOLERANCE_MS)
                  }
                  made.push({ s, l, n: o.n, done: false })
                  break
                }
                case 'cancel': {
                  // Each reservation is given up at most once, as RedisTokenBucket does.
                  const r = made.length === 0 ? undefined : made[o.ref % made.length]
                  if (r === undefined || !r.s.ok || r.done) break
                  r.done = true
                  comparedCancels++
                  await store.cancel(rate, burst, r.n, r.s.timeToAct, r.s.rateThen, t)
                  r.l.cancelAt(t)
                  break
                }
                case 'setRate':
                  if (bucket.rate === Number.POSITIVE_INFINITY) break
                  await store.configure(rate, burst, { rate: o.rate }, FOREVER, t)
                  bucket.setRateAt(t, o.rate)
                  break
                case 'setBurst':
                  await store.configure(rate, burst, { burst: o.burst }, FOREVER, t)
                  bucket.setBurstAt(t, o.burst)
                  break
                case 'pause':
                  await store.pause(rate, burst, o.ms, t)
                  bucket.pauseUntil(t + o.ms)
                  break
                case 'peek':
                  break
              }
              const peek = await store.peek(rate, burst, t)
              expect(peek.rate, `${where}: rate`).toBe(bucket.rate)
              expect(peek.burst, `${where}: burst`).toBe(bucket.burst)
              if (bucket.rate !== Number.POSITIVE_INFINITY) {
                const tokens = bucket.tokensAt(t)
                expect(
                  Math.abs(peek.tokens - tokens),
                  `${where}: tokens ${peek.tokens} vs ${tokens}`,
                ).toBeLessThanOrEqual(TOKEN_TOLERANCE)
              }
            }
          },
        ),
        { numRuns: 100 },
      )
      // The property must have exercised give-backs.
      expect(comparedCancels).toBeGreaterThan(20)
    })
  })

  // Found by this file (the random schedules above, before eaa33f3 fixed the scripts).
  describe('regressions', () => {
    it('a cancel after a rate increase gives back no more than the reservation took', async () => {
      // rate 5, burst 4. Reserve 4 (bucket empty), then A = 2 at t=0 acts at 400 ms. At
      // 10 ms the rate goes to 100/s; C = 1 acts at 39.5 ms (before A). A gives up at
      // 20 ms: Go's rule gives back 2 − (lastEvent − A.timeToAct)·rate, but here
      // lastEvent − timeToAct < 0 and CANCEL does not clamp it at 0 (TokenBucket does):
      // it gave back 3.8 tokens for a 2-token reservation.
      const store = nextStore()
      const bucket = new TokenBucket({ rate: 5, burst: 4 })
      await store.reserve(5, 4, 4, Number.POSITIVE_INFINITY, 0)
      bucket.reserveAt(0, 4)
      const a = await store.reserve(5, 4, 2, Number.POSITIVE_INFINITY, 0)
      const aLocal = bucket.reserveAt(0, 2)
      await store.configure(5, 4, { rate: 100 }, FOREVER, 10)
      bucket.setRateAt(10, 100)
      await store.reserve(5, 4, 1, Number.POSITIVE_INFINITY, 10)
      bucket.reserveAt(10, 1)
      await store.cancel(5, 4, 2, a.timeToAct, a.rateThen, 20)
      aLocal.cancelAt(20)
      expect(bucket.tokensAt(20)).toBeCloseTo(0.05, 9)
      expect((await store.peek(5, 4, 20)).tokens).toBeCloseTo(0.05, 9) // was 1.8525
    })

    it('two waiters held by a pause give back one token each', async () => {
      // rate 10, burst 2, empty; a pause till 500 ms; A and B (1 token each) both act at
      // 500. B gives up: lastEvent moves back to 400 (< A's 500). A gives up: CANCEL gave
      // back 1 + (500 − 400)·10/1000 = 2 tokens instead of 1. Reachable with
      // RedisTokenBucket: two processes waiting out a pauseFor (Retry-After) give up.
      const store = nextStore()
      const bucket = new TokenBucket({ rate: 10, burst: 2 })
      await store.reserve(10, 2, 2, Number.POSITIVE_INFINITY, 0)
      bucket.reserveAt(0, 2)
      await store.pause(10, 2, 500, 0)
      bucket.pauseUntil(500)
      const a = await store.reserve(10, 2, 1, Number.POSITIVE_INFINITY, 0)
      const aLocal = bucket.reserveAt(0, 1)
      const b = await store.reserve(10, 2, 1, Number.POSITIVE_INFINITY, 0)
      const bLocal = bucket.reserveAt(0, 1)
      expect([a.timeToAct, b.timeToAct]).toEqual(['500', '500'])
      await store.cancel(10, 2, 1, b.timeToAct, b.rateThen, 0)
      bLocal.cancelAt(0)
      await store.cancel(10, 2, 1, a.timeToAct, a.rateThen, 0)
      aLocal.cancelAt(0)
      expect(bucket.tokensAt(0)).toBe(0)
      expect((await store.peek(10, 2, 0)).tokens).toBe(0) // was 1
    })

    it('lowering the burst keeps the hash (and the pause and rate stored in it)', async () => {
      // rate 0.1/s, burst 2, full; a pause of 5 s; then setBurst(1). keep() computed the
      // TTL as 1000 + (pausedUntil − now) + (burst − tokens)·1000/rate with the tokens
      // settled under the old burst (2) but the new burst (1): 1000 + 5000 − 10 000 =
      // −4000 ms, and PEXPIRE with a TTL ≤ 0 deleted the hash — the pause, the stored rate
      // and burst with it: every process granted again at once, at its own settings.
      const store = nextStore()
      await store.configure(0.1, 2, { rate: 0.1 }, FOREVER, 0)
      await store.pause(0.1, 2, 5000, 0)
      await store.configure(0.1, 2, { burst: 1 }, FOREVER, 0)
      expect(await redis.exists(store.key)).toBe(1) // was 0: deleted by PEXPIRE ≤ 0
      expect(await redis.pttl(store.key)).toBeGreaterThan(0)
      const peek = await store.peek(0.1, 2, 0)
      expect(peek.burst).toBe(1)
      expect(peek.pausedUntil).toBe(5000)
    })

    it('after a connection break the run_id check is made at once, whatever the replicated gv says', async () => {
      // A state written under another Redis (a failover within the second its check was
      // made): gv still says "checked", replicated with it. A client that saw its connection
      // break sends forceCheck: the state is checked now and trusted with no tokens.
      const store = nextStore()
      await store.reserve(10, 20, 1, Number.POSITIVE_INFINITY, 1000) // created: 19 tokens
      await redis.hset(store.key, 'g', 'a-run-id-from-another-redis', 'gv', '1e15')
      expect((await store.reserve(10, 20, 1, 0, 1000)).ok).toBe(true) // trusted: gv says so
      store.forceCheck = true
      const after = await store.reserve(10, 20, 1, 0, 1000)
      expect(after.ok).toBe(false) // checked: another run_id, so no tokens now
      expect(store.forceCheck).toBe(false)
      expect((await store.peek(10, 20, 1000)).tokens).toBe(0)
    })

    it('cancelling a rejected reservation gives nothing back (BucketStore.cancel)', async () => {
      // Go's CancelAt does nothing for a reservation that is not ok. BucketStore.cancel
      // is exported; given a rejected one (timeToAct 'inf'), CANCEL read inf and gave
      // back n + inf: the bucket was full again (and it returned NaN). RedisTokenBucket
      // itself never sends it (it checks ok first).
      const store = nextStore()
      await store.reserve(10, 2, 2, Number.POSITIVE_INFINITY, 0)
      const rejected = await store.reserve(10, 2, 3, Number.POSITIVE_INFINITY, 0)
      expect(rejected.ok).toBe(false)
      expect(await store.cancel(10, 2, 3, rejected.timeToAct, rejected.rateThen, 0)).toBe(0)
      expect((await store.peek(10, 2, 0)).tokens).toBe(0) // was 2
    })
  })
})
