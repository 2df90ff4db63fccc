/**
 * Issue 8, item 3: what the very first start of a cold system does, on a real Redis
 * that has just started (its own INFO uptime, not a test's stand-in).
 *
 * A key missing from a Redis younger than a refill (burst / rate) starts with
 * rate × uptime tokens, capped at the burst: as if it had been empty when Redis started,
 * since a Redis that has just started cannot tell a new key from one it lost with its
 * data. (INFO counts uptime in whole seconds, rounded down: a Redis up 0.9 s counts as
 * 0, which errs on the safe side.) So a fleet that starts with its Redis ramps up at the
 * rate from Redis's start instead of bursting. `coldStart: 'full'` trusts a missing key
 * and starts it full (Go's start), as a bucket on a Redis older than a refill does.
 */
import { lastValueFrom, merge, tap } from 'rxjs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { RedisTokenBucket } from '../../src/redis/RedisTokenBucket.js'
import { RedisProcess } from './faults/RedisProcess.js'
import { redisServerInstalled, requiredBurst } from './helpers.js'

const installed = redisServerInstalled('test/redis/coldstart.test.ts')

const RATE = 10
const BURST = 20
/** Grants are timed here after a round trip: 0.5 token = 50 ms at 10/s. */
const JITTER_TOKENS = 0.5

describe.skipIf(!installed)('the very first start of a cold system', () => {
  let redis: RedisProcess

  beforeAll(async () => {
    redis = await RedisProcess.start()
  })
  afterAll(async () => {
    await redis?.stop()
  })

  /** Times of `count` takes made at once on a new bucket. */
  async function grantTimes(bucket: RedisTokenBucket, count: number): Promise<number[]> {
    const times: number[] = []
    await lastValueFrom(
      merge(
        ...Array.from({ length: count }, () =>
          bucket.take().pipe(tap({ complete: () => times.push(performance.now()) })),
        ),
      ),
      { defaultValue: undefined },
    )
    return times
  }

  it('a Redis younger than a refill: the bucket fills from Redis’s start; coldStart full: full', async () => {
    const options = { redis: redis.url, rate: RATE, burst: BURST } as const
    const safe = new RedisTokenBucket({ ...options, key: 'cold-safe' })
    const full = new RedisTokenBucket({ ...options, key: 'cold-full', coldStart: 'full' })
    try {
      const uptime = Number((await redis.info('server')).uptime_in_seconds)
      // The case this test is about: the first use comes within a refill of the start.
      expect(uptime).toBeLessThan(BURST / RATE - 1)
      const [safeTimes, fullTimes] = await Promise.all([
        grantTimes(safe, BURST),
        grantTimes(full, BURST),
      ])
      const safeNeeded = requiredBurst(safeTimes, RATE)
      const fullNeeded = requiredBurst(fullTimes, RATE)
      // At most rate × uptime tokens at the first use (uptime read before it, so one
      // more second may have been counted by then).
      const allowed = Math.min(BURST, RATE * (uptime + 1))
      console.log(
        `cold start: Redis up ${uptime} s at the first use; ${BURST} takes at once need a ` +
          `bucket of ${safeNeeded.toFixed(2)} (≤ ${allowed} + ${JITTER_TOKENS}); ` +
          `with coldStart 'full' ${fullNeeded.toFixed(2)}`,
      )
      expect(safeNeeded).toBeLessThanOrEqual(allowed + JITTER_TOKENS)
      // 'full' is the control: the same takes, at once.
      expect(fullNeeded).toBeGreaterThan(BURST - 1)
    } finally {
      await Promise.all([safe.close(), full.close()])
    }
  }, 10_000)
})
