/**
 * One key, one quota (issue 8, item 6), on the shared Redis. The configured rate and burst
 * (a semaphore's limit) are stored with the key: an instance configured otherwise is
 * refused on its first use with ConfigConflictError (`RX_FANOUT_CONFIG_CONFLICT`, naming
 * both), while the first keeps working. Overrides (`setRate`/`setBurst`, by adaptive
 * control or a quota learned from headers) never conflict, and end by themselves.
 */
import type { Redis } from 'ioredis'
import { concatMap, firstValueFrom, lastValueFrom, range, tap } from 'rxjs'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { ConfigConflictError } from '../../src/redis/errors.js'
import { RedisSemaphore } from '../../src/redis/RedisSemaphore.js'
import { RedisTokenBucket } from '../../src/redis/RedisTokenBucket.js'
import {
  client,
  deleteUnder,
  REDIS_URL,
  redisAvailable,
  requiredBurst,
  testPrefix,
  until,
} from './helpers.js'

const redisUp = await redisAvailable('test/redis/config.test.ts')

/** What a refused first use rejects with. */
async function refusal(promise: Promise<unknown>): Promise<ConfigConflictError> {
  const error = await promise.then(
    () => {
      throw new Error('expected a ConfigConflictError, but it was granted')
    },
    (e: unknown) => e,
  )
  expect(error).toBeInstanceOf(ConfigConflictError)
  return error as ConfigConflictError
}

describe.skipIf(!redisUp)('one key, one quota', () => {
  let redis: Redis
  const prefix = testPrefix()
  let n = 0
  const closing: { close(): Promise<void> }[] = []
  const keyOf = () => `${prefix}:${n++}`
  const bucket = (
    key: string,
    rate: number,
    burst: number,
    extra: { overrideMs?: number } = {},
  ) => {
    const made = new RedisTokenBucket({ redis: REDIS_URL, key, rate, burst, ...extra })
    closing.push(made)
    return made
  }
  const semaphore = (key: string, limit: number) => {
    const made = new RedisSemaphore({ redis: REDIS_URL, key, limit, leaseMs: 2000 })
    closing.push(made)
    return made
  }
  /** Grant times (performance.now()) of `count` takes in a row. */
  async function grantTimes(limiter: RedisTokenBucket, count: number): Promise<number[]> {
    const times: number[] = []
    await lastValueFrom(
      range(0, count).pipe(
        concatMap(() => limiter.take().pipe(tap(() => times.push(performance.now())))),
      ),
      { defaultValue: undefined },
    )
    return times
  }

  beforeAll(() => {
    redis = client()
  })
  afterEach(async () => {
    await Promise.all(closing.splice(0).map((c) => c.close()))
  })
  afterAll(async () => {
    await deleteUnder(redis, prefix)
    redis?.disconnect()
  })

  it('A at 5/s and B at 50/s (burst 5 both): B is refused naming both, A keeps working', async () => {
    const key = keyOf()
    const a = bucket(key, 5, 5)
    const b = bucket(key, 50, 5)
    await firstValueFrom(a.take())
    const before = await a.peek()
    const error = await refusal(firstValueFrom(b.take()))
    expect(error.code).toBe('RX_FANOUT_CONFIG_CONFLICT')
    expect(error.configured).toEqual({ rate: 50, burst: 5 })
    expect(error.stored).toEqual({ rate: 5, burst: 5 })
    expect(error.message).toMatch(/\brate 50\b/)
    expect(error.message).toMatch(/\brate 5\b/)
    expect(error.message).toContain(key)
    // B stays refused (every first use checks until one is accepted) and took nothing.
    await refusal(firstValueFrom(b.take()))
    const after = await a.peek()
    const refill = ((after.now - before.now) * 5) / 1000
    expect(after.tokens).toBeCloseTo(Math.min(5, before.tokens + refill), 6)
    expect(after.configured).toEqual({ rate: 5, burst: 5 })
    // A is unaffected: its next grants come at 5/s.
    const times = await grantTimes(a, 6)
    const needed = requiredBurst(times, 5)
    console.log(
      `config conflict: B (50/s) refused with "${error.message}"; A then granted 6, burst needed at 5/s ${needed.toFixed(2)}`,
    )
    expect(needed).toBeLessThanOrEqual(5 + 1)
  })

  it('same rate, another burst: refused, naming both bursts', async () => {
    const key = keyOf()
    const a = bucket(key, 5, 5)
    const d = bucket(key, 5, 10)
    await firstValueFrom(a.take())
    const error = await refusal(firstValueFrom(d.take()))
    expect(error.code).toBe('RX_FANOUT_CONFIG_CONFLICT')
    expect(error.message).toMatch(/\bburst 10\b/)
    expect(error.message).toMatch(/\bburst 5\b/)
    await firstValueFrom(a.take())
  })

  it('RedisSemaphore: a limit of 3 on a key held with 2 is refused, naming both', async () => {
    const key = keyOf()
    const a = semaphore(key, 2)
    const b = semaphore(key, 3)
    const held = await firstValueFrom(a.acquire())
    const error = await refusal(firstValueFrom(b.acquire()))
    expect(error.code).toBe('RX_FANOUT_CONFIG_CONFLICT')
    expect(error.configured).toEqual({ limit: 3 })
    expect(error.stored).toEqual({ limit: 2 })
    expect(error.message).toMatch(/\blimit 3\b/)
    expect(error.message).toMatch(/\blimit 2\b/)
    expect(b.held).toBe(0)
    // A keeps its cap of 2: one more, and no third.
    const second = await firstValueFrom(a.acquire())
    expect(await redis.zcard(`{${key}}:permits`)).toBe(2)
    held()
    second()
    await firstValueFrom(a.acquire()).then((release) => release())
  })

  it('an override never conflicts: after A.setRate(2), C configured 5/5 is accepted, 2/5 is not', async () => {
    const key = keyOf()
    const a = bucket(key, 5, 5)
    await firstValueFrom(a.take())
    a.setRate(2)
    await until('the override is stored', async () => (await a.peek()).rate === 2)
    const c = bucket(key, 5, 5)
    await firstValueFrom(c.take())
    // What is compared is the configuration, not the rate in force.
    const e = bucket(key, 2, 5)
    const error = await refusal(firstValueFrom(e.take()))
    expect(error.stored).toEqual({ rate: 5, burst: 5 })
    // C's own setBurst is an override too: no conflict for anyone.
    c.setBurst(3, { forMs: 5000 })
    await until('the burst override is stored', async () => (await c.peek()).burst === 3)
    await firstValueFrom(bucket(key, 5, 5).take())
  })

  it('an override ends by itself: the configured rate is back in Redis and grants speed up again', async () => {
    const OVERRIDE_MS = 800
    const key = keyOf()
    const a = bucket(key, 20, 1)
    // B never sets anything: it sees the override, and its end, through Redis alone.
    const b = bucket(key, 20, 1)
    await firstValueFrom(a.take())
    const setAt = performance.now()
    a.setRate(2, { forMs: OVERRIDE_MS })
    const during = await until('the override is stored', async () => {
      const state = await b.peek()
      return state.rate === 2 && state
    })
    expect(during.overrideEnds - during.now).toBeLessThanOrEqual(OVERRIDE_MS)
    expect(during.configured).toEqual({ rate: 20, burst: 1 })
    // B takes in a row through the override and past its end.
    const times = await grantTimes(b, 14)
    const endAt = setAt + OVERRIDE_MS
    const inOverride = times.filter((t) => t < endAt)
    const afterEnd = times.filter((t) => t >= endAt)
    // During the override: at most the burst (1) plus 2/s, plus 1 token of jitter. The
    // override ends no sooner than OVERRIDE_MS after setRate was called.
    const inOverrideAllowed = 1 + (2 * OVERRIDE_MS) / 1000 + 1
    // After it: the configured 20/s, i.e. a burst of 1 at 20/s (1 token of jitter).
    const neededAfter = requiredBurst(afterEnd, 20)
    const back = await b.peek()
    const gaps = afterEnd.slice(1).map((t, i) => t - (afterEnd[i] as number))
    console.log(
      `override ends: ${inOverride.length} grants in the ${OVERRIDE_MS} ms override ` +
        `(≤ ${inOverrideAllowed.toFixed(1)}), then ${afterEnd.length} at ` +
        `${((1000 * (afterEnd.length - 1)) / ((afterEnd.at(-1) as number) - (afterEnd[0] as number))).toFixed(1)}/s ` +
        `(median gap ${[...gaps].sort((x, y) => x - y)[gaps.length >> 1]?.toFixed(0)} ms), rate in Redis ${back.rate}`,
    )
    expect(inOverride.length).toBeLessThanOrEqual(inOverrideAllowed)
    expect(back.rate).toBe(20)
    expect(back.overrideEnds).toBeLessThanOrEqual(back.now)
    expect(a.rate, 'A’s own view is back to its configured rate').toBe(20)
    // Sped up again: at the override's 2/s these grants would need a burst of 2 at
    // most; at 20/s they come ~50 ms apart and need about their count.
    expect(requiredBurst(afterEnd, 2)).toBeGreaterThan(5)
    expect(neededAfter).toBeLessThanOrEqual(1 + 1)
  }, 10_000)

  it('overrideMs: a setRate without forMs lasts that long, then ends by itself', async () => {
    const key = keyOf()
    const a = bucket(key, 20, 1, { overrideMs: 400 })
    await firstValueFrom(a.take())
    a.setRate(5)
    const during = await until('stored', async () => {
      const state = await a.peek()
      return state.rate === 5 && state
    })
    expect(during.overrideEnds - during.now).toBeLessThanOrEqual(400)
    expect(a.rate).toBe(5)
    await until('ended in Redis', async () => (await a.peek()).rate === 20, { timeoutMs: 2000 })
    expect(a.rate).toBe(20)
  })
})
