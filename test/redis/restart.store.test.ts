/**
 * Issue 8, item 3, the scripts' data-loss paths on explicit instants: every BucketStore
 * and SemaphoreStore call here passes `now` (ms), and Redis's uptime where it matters
 * (StoreOptions.uptime), so Redis's clock is never read and every figure is computed by
 * hand (or by the in-process TokenBucket). On the shared Redis, each test under a key
 * prefix of its own; a hash "written under another Redis" is played by setting its `g`
 * field (the run_id that last checked it) to a fake one and `gv` (until when that check
 * holds) to 0.
 *
 * What the very first start of a cold system does: a key missing from a Redis younger
 * than a refill starts with rate × uptime tokens (at most the burst), as if it had been
 * empty when Redis started; `coldStart: 'full'` starts it full (Go's start).
 */
import fc from 'fast-check'
import type { Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BucketStore, SemaphoreStore, type StoreOptions } from '../../src/redis/store.js'
import { TokenBucket } from '../../src/TokenBucket.js'
import { client, deleteUnder, redisAvailable, testPrefix } from './helpers.js'

const redisUp = await redisAvailable('test/redis/restart.store.test.ts')

const RATE = 10
const BURST = 20
// A Redis up for longer than any refill or lease here: only what a test sets matters.
const OLD = 1e6
// Redis's clock's magnitude (ms): the scripts work in absolute instants.
const T = 1_763_000_000_000
const TOKENS = 1e-9
const MS = 1e-6
const ANY = Number.POSITIVE_INFINITY

describe.skipIf(!redisUp)('the data-loss paths of the scripts, on explicit instants', () => {
  let redis: Redis
  const prefix = testPrefix()
  let serial = 0
  const bucket = (options: StoreOptions = { uptime: OLD }) =>
    new BucketStore(redis, `{${prefix}:${serial++}}:bucket`, options)
  /** Plays a state written under another Redis: the next call checks it (gv 0). */
  const fromAnotherRedis = (key: string) => redis.hset(key, 'g', 'f00dfeed', 'gv', '0')
  /** Establishes the state at `now` without taking anything (an empty batch). */
  const touch = (store: BucketStore, now: number) =>
    store.reserveBatch(RATE, BURST, { ns: [], now })

  beforeAll(() => {
    redis = client()
  })
  afterAll(async () => {
    await deleteUnder(redis, prefix)
    redis.disconnect()
  })

  describe('a key missing from a young Redis (the cold start)', () => {
    it.each([
      // uptime (s), coldStart, tokens at the first use
      [0, 'safe', 0],
      [0.5, 'safe', 5],
      [1, 'safe', 10],
      [2, 'safe', 20],
      [3600, 'safe', 20],
      [0, 'full', 20],
      [1, 'full', 20],
    ] as const)('uptime %d s, coldStart %s: %d tokens', async (uptime, coldStart, tokens) => {
      const store = bucket({ uptime, coldStart })
      await touch(store, T)
      expect((await store.peek(RATE, BURST, T)).tokens).toBeCloseTo(tokens, 9)
      // As if empty when Redis started: it goes on filling at the rate from there.
      expect((await store.peek(RATE, BURST, T + 700)).tokens).toBeCloseTo(
        Math.min(BURST, tokens + 7),
        9,
      )
    })

    it('the first reservations wait as they would on a bucket empty at Redis’s start', async () => {
      // Redis up 1 s: 10 tokens. 15 taken at once: 10 now, the 5 after them 100 ms apart.
      const store = bucket({ uptime: 1 })
      const waits: number[] = []
      for (let i = 0; i < 15; i++) waits.push((await store.reserve(RATE, BURST, 1, ANY, T)).wait)
      const expected = Array.from({ length: 15 }, (_, i) => Math.max(0, (i - 9) * 100))
      for (const [i, wait] of waits.entries()) expect(wait).toBeCloseTo(expected[i] as number, 6)
    })
  })

  describe('a missing hash the client saw alive', () => {
    it('is empty now, not full (and full again when the client had seen it expire)', async () => {
      const lost = bucket()
      lost.known.inc = 'lost:1'
      lost.known.aliveUntil = T + 5000
      await touch(lost, T)
      expect((await lost.peek(RATE, BURST, T)).tokens).toBeCloseTo(0, 9)

      // Control: the client's view had run out (it idled past its TTL): Go's full start.
      const idle = bucket()
      idle.known.inc = 'idle:1'
      idle.known.aliveUntil = T - 1
      await touch(idle, T)
      expect((await idle.peek(RATE, BURST, T)).tokens).toBe(BURST)
    })

    it('keeps the debt of the reservations the client saw made on it (173dbad)', async () => {
      // 25 reserved at T (20 at once, 5 in debt: the last acts at T + 500). The hash is
      // lost (as by FLUSHALL) at T + 100; the next reservation must still act at T + 600,
      // as on the bucket that was not lost: before 173dbad it acted at T + 200 (empty now).
      const store = bucket()
      const local = new TokenBucket({ rate: RATE, burst: BURST })
      for (let i = 0; i < 25; i++) {
        await store.reserve(RATE, BURST, 1, ANY, T)
        local.reserveAt(T, 1)
      }
      expect(store.known.lastEvent).toBeCloseTo(T + 500, 6)
      await redis.del(store.key)
      const next = await store.reserve(RATE, BURST, 1, ANY, T + 100)
      expect(next.now + next.wait).toBeCloseTo(local.reserveAt(T + 100, 1).timeToAct, 6)
      expect(next.now + next.wait).toBeCloseTo(T + 600, 6)
      expect(next.inc, 'a new incarnation').not.toBe('')
    })
  })

  describe('a hash written under another run_id (a restart from a snapshot, a failover)', () => {
    it('has no tokens now', async () => {
      const store = bucket()
      await store.reserve(RATE, BURST, 5, ANY, T) // 15 left
      await fromAnotherRedis(store.key)
      const before = store.known.inc
      await touch(store, T + 100)
      expect((await store.peek(RATE, BURST, T + 100)).tokens).toBeCloseTo(0, 9)
      expect(store.known.inc, 'a new incarnation').not.toBe(before)
      // From there it fills at the rate.
      expect((await store.peek(RATE, BURST, T + 400)).tokens).toBeCloseTo(3, 9)
    })

    it('keeps its debt', async () => {
      const store = bucket()
      await store.reserve(RATE, BURST, 20, ANY, T)
      await store.reserve(RATE, BURST, 5, ANY, T) // −5: acts at T + 500
      await fromAnotherRedis(store.key)
      await touch(store, T + 100)
      expect((await store.peek(RATE, BURST, T + 100)).tokens).toBeCloseTo(-4, 9)
      const next = await store.reserve(RATE, BURST, 1, ANY, T + 100)
      expect(next.now + next.wait).toBeCloseTo(T + 600, 6)
    })

    it('control: the same run_id keeps the state as it is', async () => {
      const store = bucket()
      await store.reserve(RATE, BURST, 5, ANY, T)
      await redis.hset(store.key, 'gv', '0') // checked again, against the same Redis
      await touch(store, T + 100)
      expect((await store.peek(RATE, BURST, T + 100)).tokens).toBeCloseTo(16, 9)
    })
  })

  describe('confirming a reservation held across a break', () => {
    it("'confirmed' while the incarnation is unchanged: nothing taken again", async () => {
      const store = bucket()
      const held = await store.reserve(RATE, BURST, 3, ANY, T)
      const answer = await store.reserveBatch(RATE, BURST, {
        ns: [3],
        confirm: held.inc,
        now: T + 10,
      })
      expect(answer.kind).toBe('confirmed')
      expect((await store.peek(RATE, BURST, T + 10)).tokens).toBeCloseTo(17.1, 9)
    })

    it('charged again when the incarnation changed', async () => {
      const store = bucket()
      const held = await store.reserve(RATE, BURST, 3, ANY, T) // 17 left
      await fromAnotherRedis(store.key)
      const answer = await store.reserveBatch(RATE, BURST, {
        ns: [3],
        confirm: held.inc,
        now: T + 10,
      })
      expect(answer.kind).toBe('ok')
      if (answer.kind !== 'ok') return
      expect(answer.inc).not.toBe(held.inc)
      // No tokens on the state from another Redis, then the 3 charged again: −3, so it
      // acts 300 ms later.
      expect(answer.granted).toHaveLength(1)
      expect(answer.granted[0]?.wait).toBeCloseTo(300, 6)
      expect((await store.peek(RATE, BURST, T + 10)).tokens).toBeCloseTo(-3, 9)
    })
  })

  describe('cancel', () => {
    it('gives back to the incarnation it reserved from', async () => {
      const store = bucket()
      await store.reserve(RATE, BURST, 20, ANY, T)
      const r = await store.reserve(RATE, BURST, 1, ANY, T) // acts at T + 100
      expect(await store.cancel(RATE, BURST, 1, r.timeToAct, r.rateThen, T + 10, r.inc)).toBe(1)
      expect((await store.peek(RATE, BURST, T + 10)).tokens).toBeCloseTo(0.1, 9)
    })

    it('gives nothing back to another incarnation', async () => {
      const store = bucket()
      await store.reserve(RATE, BURST, 20, ANY, T)
      const r = await store.reserve(RATE, BURST, 1, ANY, T)
      await fromAnotherRedis(store.key)
      await touch(store, T + 5)
      const tokens = (await store.peek(RATE, BURST, T + 10)).tokens
      expect(await store.cancel(RATE, BURST, 1, r.timeToAct, r.rateThen, T + 10, r.inc)).toBe(0)
      expect((await store.peek(RATE, BURST, T + 10)).tokens).toBe(tokens)
    })
  })

  describe('an override ends by itself', () => {
    it('tokens come at the override rate until it ends, then at the configured rate', async () => {
      const store = bucket()
      await store.reserve(RATE, BURST, 20, ANY, T) // empty at T
      await store.configure(RATE, BURST, { rate: 2 }, 1000, T) // 2/s until T + 1000
      const at = async (ms: number) => store.peek(RATE, BURST, T + ms)
      // Hand-computed: 2/s for 1 s, then 10/s, capped at 20.
      const expected: [number, number, number][] = [
        // ms after T, tokens, rate in force
        [0, 0, 2],
        [500, 1, 2],
        [1000, 2, 10],
        [1500, 7, 10],
        [2800, 20, 10],
        [5000, 20, 10],
      ]
      for (const [ms, tokens, rate] of expected) {
        const peek = await at(ms)
        expect(peek.tokens, `tokens at T + ${ms}`).toBeCloseTo(tokens, 9)
        expect(peek.rate, `rate at T + ${ms}`).toBe(rate)
      }
      expect((await at(1000)).configured).toEqual({ rate: RATE, burst: BURST })
    })

    it('a reservation made across its end waits at one rate, then the other', async () => {
      // Empty at T, 2/s until T + 1000: 5 tokens are 2 by T + 1000 and 3 more at 10/s.
      const store = bucket()
      await store.reserve(RATE, BURST, 20, ANY, T)
      await store.configure(RATE, BURST, { rate: 2 }, 1000, T)
      const r = await store.reserve(RATE, BURST, 5, ANY, T)
      expect(r.wait).toBeCloseTo(1300, 6)
      // Settled after the end (a later reservation), the tokens agree.
      const later = await store.reserve(RATE, BURST, 1, ANY, T + 2000)
      // At T + 2000: −5 + 2 (to T + 1000) + 10 (to T + 2000) = 7 → 1 taken now.
      expect(later.wait).toBe(0)
      expect((await store.peek(RATE, BURST, T + 2000)).tokens).toBeCloseTo(6, 9)
    })

    it('a lower burst for a while: capped while it lasts, then filling from the cap (ba5a400)', async () => {
      // Before ba5a400 the refill was capped only when read: left alone while capped at 5,
      // it read 20 at T + 1500 (TokenBucket.setBurstAt at T and T + 1000 gives 10).
      const store = bucket()
      await touch(store, T) // full: 20
      await store.configure(RATE, BURST, { burst: 5 }, 1000, T) // capped at 5 until T + 1000
      expect((await store.peek(RATE, BURST, T + 500)).tokens).toBeCloseTo(5, 9)
      // Capped at 5 until T + 1000, then 10/s: 10 at T + 1500, full at T + 2500.
      expect((await store.peek(RATE, BURST, T + 1500)).tokens).toBeCloseTo(10, 9)
      expect((await store.peek(RATE, BURST, T + 3000)).tokens).toBeCloseTo(20, 9)
      // The in-process bucket, its burst set and set back at the same instants, agrees.
      const local = new TokenBucket({ rate: RATE, burst: BURST })
      local.setBurstAt(T, 5)
      local.setBurstAt(T + 1000, BURST)
      expect(local.tokensAt(T + 1500)).toBeCloseTo(10, 9)
    })
  })

  describe('RESERVE for a batch of waiters', () => {
    it('matches TokenBucket.reserveAt in turn: FIFO, later ones within the horizon', async () => {
      const scenario = fc.record({
        // The state before the batch: reservations at instants after T.
        before: fc.array(
          fc.record({ dt: fc.integer({ min: 0, max: 400 }), n: fc.integer({ min: 1, max: 8 }) }),
          { maxLength: 6 },
        ),
        dt: fc.integer({ min: 0, max: 400 }),
        ns: fc.array(fc.oneof(fc.integer({ min: 1, max: 6 }), fc.constant(0.5)), {
          minLength: 1,
          maxLength: 8,
        }),
        maxWait: fc.oneof(fc.constant(Number.POSITIVE_INFINITY), fc.integer({ min: 0, max: 800 })),
        horizon: fc.constantFrom(0, 100, 250),
      })
      let partial = 0
      await fc.assert(
        fc.asyncProperty(scenario, async ({ before, dt, ns, maxWait, horizon }) => {
          const store = bucket({ coldStart: 'full', uptime: OLD })
          const local = new TokenBucket({ rate: RATE, burst: BURST })
          let t = T
          for (const { dt: step, n } of before) {
            t += step
            await store.reserve(RATE, BURST, n, ANY, t)
            local.reserveAt(t, n)
          }
          t += dt
          const answer = await store.reserveBatch(RATE, BURST, {
            ns,
            maxWaitMs: maxWait,
            horizonMs: horizon,
            now: t,
          })
          expect(answer.kind).toBe('ok')
          if (answer.kind !== 'ok') return
          // In turn: the first with maxWait, the others with the horizon; the first that
          // is not ok ends the batch (nothing after it is reserved).
          const expected: number[] = []
          for (const [i, n] of ns.entries()) {
            const r = local.reserveAt(t, n, i === 0 ? maxWait : horizon)
            if (!r.ok) break
            expected.push(r.timeToAct)
          }
          if (expected.length > 0 && expected.length < ns.length) partial++
          expect(answer.granted.map((g) => Number(g.timeToAct))).toHaveLength(expected.length)
          for (const [i, g] of answer.granted.entries()) {
            expect(Math.abs(Number(g.timeToAct) - (expected[i] as number))).toBeLessThan(MS)
            expect(Math.abs(t + g.wait - (expected[i] as number))).toBeLessThan(MS)
          }
          const tokens = (await store.peek(RATE, BURST, t)).tokens
          expect(Math.abs(tokens - local.tokensAt(t))).toBeLessThan(TOKENS)
        }),
        { numRuns: 60 },
      )
      // The property must have cut batches short after a granted head.
      expect(partial).toBeGreaterThan(5)
    })

    it('a refused head changes nothing, and nothing after it is reserved', async () => {
      const store = bucket()
      await store.reserve(RATE, BURST, 18, ANY, T) // 2 left
      const before = await redis.hgetall(store.key)
      // Over the burst: refused, and the 1 behind it is not reserved either.
      const big = await store.reserveBatch(RATE, BURST, { ns: [21, 1], now: T + 10 })
      // Within the burst but beyond its maxWait (needs 300 ms): refused too.
      const late = await store.reserveBatch(RATE, BURST, {
        ns: [5, 1],
        maxWaitMs: 100,
        horizonMs: 10_000,
        now: T + 20,
      })
      for (const answer of [big, late]) {
        expect(answer.kind).toBe('ok')
        if (answer.kind === 'ok') expect(answer.granted).toEqual([])
      }
      expect(await redis.hgetall(store.key)).toEqual(before)
    })
  })

  describe('the semaphore: no lease during the quiet period after a loss', () => {
    const LIMIT = 3
    const LEASE = 5000
    const semaphore = (options: StoreOptions = { uptime: OLD }) => {
      const name = `${prefix}:sem${serial++}`
      return new SemaphoreStore(redis, `{${name}}:permits`, `{${name}}:released`, {
        meta: `{${name}}:meta`,
        ...options,
      })
    }

    it('meta missing while the client saw it alive: a lease time of quiet', async () => {
      const store = semaphore()
      store.known.inc = 'lost:1'
      store.known.aliveUntil = T + 60_000
      const first = await store.acquire(LIMIT, LEASE, 'a', { now: T })
      expect(first).toEqual({ kind: 'wait', retryInMs: LEASE, now: T })
      expect((await store.acquire(LIMIT, LEASE, 'a', { now: T + LEASE - 1 })).kind).toBe('wait')
      expect((await store.acquire(LIMIT, LEASE, 'a', { now: T + LEASE })).kind).toBe('ok')

      // Control: a client that knew nothing (or whose view had run out) is granted at once.
      const fresh = semaphore()
      expect((await fresh.acquire(LIMIT, LEASE, 'a', { now: T })).kind).toBe('ok')
    })

    it('a Redis younger than a lease: quiet until a lease after its start', async () => {
      const young = semaphore({ uptime: 2 })
      expect(await young.acquire(LIMIT, LEASE, 'a', { now: T })).toEqual({
        kind: 'wait',
        retryInMs: LEASE - 2000,
        now: T,
      })
      expect((await young.acquire(LIMIT, LEASE, 'a', { now: T + 3000 })).kind).toBe('ok')
      // Controls: old enough; or told to trust a missing key.
      expect((await semaphore({ uptime: 5 }).acquire(LIMIT, LEASE, 'a', { now: T })).kind).toBe(
        'ok',
      )
      const full = semaphore({ uptime: 0, coldStart: 'full' })
      expect((await full.acquire(LIMIT, LEASE, 'a', { now: T })).kind).toBe('ok')
    })

    it('meta written under another run_id: quiet for a lease time', async () => {
      const store = semaphore()
      expect((await store.acquire(LIMIT, LEASE, 'a', { now: T })).kind).toBe('ok')
      await redis.hset(store.meta, 'g', 'f00dfeed', 'gv', '0')
      expect(await store.acquire(LIMIT, LEASE, 'b', { now: T + 10 })).toEqual({
        kind: 'wait',
        retryInMs: LEASE,
        now: T + 10,
      })
      expect((await store.acquire(LIMIT, LEASE, 'b', { now: T + 10 + LEASE })).kind).toBe('ok')
    })

    it('a renewal that finds the meta gone: quiet for a lease time, for everyone', async () => {
      const store = semaphore()
      expect((await store.acquire(LIMIT, LEASE, 'a', { now: T })).kind).toBe('ok')
      await redis.del(store.meta)
      const renewed = await store.renew(LIMIT, LEASE, ['a'], T + 10)
      expect(renewed.kept).toEqual([true])
      // The renewal marked the meta lost (quiet until T + 10 + LEASE); the next acquire
      // checks it against Redis, finds it marked by no run, and starts a new incarnation
      // with a lease of quiet from then.
      expect(await store.acquire(LIMIT, LEASE, 'b', { now: T + 20 })).toEqual({
        kind: 'wait',
        retryInMs: LEASE,
        now: T + 20,
      })
      expect((await store.acquire(LIMIT, LEASE, 'b', { now: T + 20 + LEASE })).kind).toBe('ok')
    })
  })
})
