/**
 * What the pool's fair slots and `ctx.settle` ask of a RedisTokenBucket, against a real
 * Redis: `tryTakeAsync` (taken now, or the wait it would need, nothing taken) and `adjust`
 * (a grant corrected after the fact: debt, or tokens given back up to the burst).
 */
import type { Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { RedisTokenBucket } from '../../src/redis/RedisTokenBucket.js'
import { client, deleteUnder, redisAvailable, testPrefix, until } from './helpers.js'

const redisUp = await redisAvailable('test/redis/tryTakeAsync.test.ts')

describe.skipIf(!redisUp)('RedisTokenBucket.tryTakeAsync and adjust', () => {
  let redis: Redis
  const prefix = testPrefix()
  let serial = 0
  const buckets: RedisTokenBucket[] = []
  // coldStart 'full': these start from a full bucket whatever the shared Redis's uptime.
  const bucket = (rate: number, burst: number) => {
    const b = new RedisTokenBucket({
      redis,
      key: `${prefix}:${serial++}`,
      rate,
      burst,
      coldStart: 'full',
    })
    buckets.push(b)
    return b
  }

  beforeAll(() => {
    redis = client()
  })
  afterAll(async () => {
    for (const b of buckets) await b.close()
    await deleteUnder(redis, prefix)
    redis.disconnect()
  })

  it('takes while tokens are there, then answers the wait and takes nothing', async () => {
    const b = bucket(10, 2)
    expect(await b.tryTakeAsync()).toBe(0)
    expect(await b.tryTakeAsync()).toBe(0)
    const before = await b.peek()
    const wait = await b.tryTakeAsync()
    // Empty: the next token is ~100 ms away (less the time since the second take).
    expect(wait).toBeGreaterThan(50)
    expect(wait).toBeLessThanOrEqual(100)
    const after = await b.peek()
    // Nothing taken: only the refill in between.
    expect(after.tokens - before.tokens).toBeCloseTo(((after.now - before.now) * 10) / 1000, 6)
    expect(b.roundTrips).toBe(3)
  })

  it('n over the burst: Infinity, nothing taken', async () => {
    const b = bucket(10, 2)
    expect(await b.tryTakeAsync(3)).toBe(Number.POSITIVE_INFINITY)
    expect((await b.peek()).tokens).toBe(2)
  })

  it('derive: one sibling per name for every process on the key, never a configuration conflict', async () => {
    // Two processes on one key (same configuration) learn the same route quota, with other
    // numbers (the server changed it in between): the first maker's are stored and shared.
    const key = `${prefix}:derive`
    const processA = new RedisTokenBucket({ redis, key, rate: 100, burst: 10, coldStart: 'full' })
    const processB = new RedisTokenBucket({ redis, key, rate: 100, burst: 10, coldStart: 'full' })
    const learnedA = processA.derive('http://api.example core', { rate: 5, burst: 5 })
    const learnedB = processB.derive('http://api.example core', { rate: 50, burst: 50 })
    buckets.push(processA, processB, learnedA, learnedB)
    expect(await learnedA.tryTakeAsync(5)).toBe(0)
    // Shared: B's sibling is the same bucket, now empty (with its own burst of 50 it would
    // grant at once), and it was not refused for its other numbers.
    const wait = await learnedB.tryTakeAsync(1)
    expect(wait).toBeGreaterThan(100)
    expect((await learnedB.peek()).configured).toEqual({ rate: 5, burst: 5 })
    // Closing a sibling leaves the shared connection open.
    await learnedA.close()
    expect(await redis.ping()).toBe('PONG')
  })

  it('adjust: debt at once; a give-back bounded by the headroom since its grant, nothing without a mark', async () => {
    const b = bucket(0.001, 4)
    expect(await b.tryTakeAsync(4)).toBe(0)
    const mark = b.grantMark()
    expect(mark).toBeTypeOf('number')
    // Settled at 1 of 4 at once: 3 come back.
    b.adjust(-3, mark)
    const back = await until('three back', async () => {
      const peek = await b.peek()
      return peek.tokens > 2.5 && peek
    })
    expect(back.tokens).toBeCloseTo(3, 3)
    // Asked again for 10: only the headroom under the burst since the grant (1).
    b.adjust(-10, mark)
    const capped = await until('capped at the burst', async () => {
      const peek = await b.peek()
      return peek.tokens > 3.5 && peek
    })
    expect(capped.tokens).toBeCloseTo(4, 3)
    // Debt at once.
    b.adjust(5)
    const debt = await until('the debt lands', async () => {
      const peek = await b.peek()
      return peek.tokens < 0 && peek
    })
    expect(debt.tokens).toBeCloseTo(-1, 3)
    // Without a mark nothing comes back (a late give-back could break the envelope).
    b.adjust(-3)
    await b.peek() // the adjust went out first, on the same connection
    expect((await b.peek()).tokens).toBeCloseTo(-1, 3)
  })

  it('a late give-back: what was charged since the grant counts against it', async () => {
    const b = bucket(0.001, 2)
    expect(await b.tryTakeAsync(1)).toBe(0)
    const mark = b.grantMark()
    expect(await b.tryTakeAsync(1)).toBe(0) // another grant since: the bucket was full before it
    b.adjust(-1, mark)
    await b.peek()
    // Level since the mark: up to 0 + 1 charged since = 1, so headroom 1: one comes back.
    expect((await b.peek()).tokens).toBeCloseTo(1, 3)
  })
})
