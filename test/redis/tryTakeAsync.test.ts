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

  it('adjust(+5) takes five more now (into debt); adjust(−3) gives three back, never over the burst', async () => {
    const b = bucket(0.001, 4)
    b.adjust(5)
    const debt = await until('the debt lands', async () => {
      const peek = await b.peek()
      return peek.tokens < 0 && peek
    })
    expect(debt.tokens).toBeCloseTo(-1, 3)
    b.adjust(-3)
    const back = await until('the tokens come back', async () => {
      const peek = await b.peek()
      return peek.tokens > 1 && peek
    })
    expect(back.tokens).toBeCloseTo(2, 3)
    b.adjust(-10)
    const capped = await until('capped at the burst', async () => {
      const peek = await b.peek()
      return peek.tokens > 3 && peek
    })
    expect(capped.tokens).toBe(4)
  })
})
