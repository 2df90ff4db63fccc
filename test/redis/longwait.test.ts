/**
 * Long waits never end early (issue 8, item 1), on the shared Redis and the real clock.
 * RedisTokenBucket's wait for a token at 1e-7/s, or behind a 30-day pause, is longer than
 * a timer can hold (2³¹−1 ms): set in one go Node would fire it after 1 ms and grant at
 * once. Here, after the burst, nothing more may be granted over an observation window,
 * the timers asked of the scheduler are counted (a wrapper around asyncScheduler) and
 * Node's TimeoutOverflowWarning is listened for.
 *
 * Then the same through FanOutClient: a server that declares a yearly quota
 * (`RateLimit-Policy: 10;w=31536000`) makes the client lower the shared rate to 3.2e-7/s,
 * for at most `retry.maxRetryAfterMs`. The server's arrivals must keep the envelope, and
 * the override stored in Redis must end by itself within that time.
 */
import type { Redis } from 'ioredis'
import { asyncScheduler, type Subscription } from 'rxjs'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { RedisTokenBucket } from '../../src/redis/RedisTokenBucket.js'
import { cleanup, makeClient, range, startServer } from '../http/helpers.js'
import { MAX_TIMER_MS, overflowWarnings, recordingScheduler } from '../recordingScheduler.js'
import {
  client,
  deleteUnder,
  REDIS_URL,
  redisAvailable,
  requiredBurst,
  testPrefix,
  until,
} from './helpers.js'

const redisUp = await redisAvailable('test/redis/longwait.test.ts')

const DAY_MS = 86_400_000
const THIRTY_DAYS_MS = 30 * DAY_MS
/** How long "nothing more is granted" is watched (absence can't be awaited). */
const WATCH_MS = 300

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

describe.skipIf(!redisUp)(
  'RedisTokenBucket: a long wait is waited in steps, never cut short',
  () => {
    let redis: Redis
    const prefix = testPrefix()
    const buckets: RedisTokenBucket[] = []
    const subscriptions: Subscription[] = []
    let warnings: ReturnType<typeof overflowWarnings>

    beforeAll(() => {
      redis = client()
      warnings = overflowWarnings()
    })
    afterEach(async () => {
      for (const subscription of subscriptions.splice(0)) subscription.unsubscribe()
      await Promise.all(buckets.splice(0).map((bucket) => bucket.close()))
      await cleanup()
    })
    afterAll(async () => {
      warnings?.dispose()
      await deleteUnder(redis, prefix)
      redis?.disconnect()
    })

    /** A bucket on the shared Redis whose timers are counted. */
    function countedBucket(name: string, rate: number, burst: number) {
      const scheduler = recordingScheduler(asyncScheduler)
      const bucket = new RedisTokenBucket({
        redis: REDIS_URL,
        key: `${prefix}:${name}`,
        rate,
        burst,
        scheduler,
      })
      buckets.push(bucket)
      return { bucket, scheduler }
    }

    function takeMany(bucket: RedisTokenBucket, count: number): { granted: number } {
      const seen = { granted: 0 }
      for (let i = 0; i < count; i++) {
        subscriptions.push(
          bucket.take().subscribe({
            next: () => {
              seen.granted++
            },
            error: () => {},
          }),
        )
      }
      return seen
    }

    it('setRate(1e-7): after the burst of 20, nothing more over 300 ms, and no timer storm', async () => {
      const { bucket, scheduler } = countedBucket('slow', 10, 20)
      // An override for 30 days: the wait for the 21st token is 30 days and 100 ms.
      bucket.setRate(1e-7, { forMs: THIRTY_DAYS_MS })
      await until('the override is stored', async () => (await bucket.peek()).rate === 1e-7)
      const warned = warnings.count
      const seen = takeMany(bucket, 25)
      await until('the burst is granted', () => seen.granted >= 20, { everyMs: 5 })
      const timersBefore = scheduler.delays.length
      const started = performance.now()
      await sleep(WATCH_MS)
      const seconds = (performance.now() - started) / 1000
      const timers = scheduler.delays.length - timersBefore
      console.log(
        `redis setRate(1e-7): ${seen.granted - 20} granted after the burst in ` +
          `${(seconds * 1000).toFixed(0)} ms, ${timers} timers (${(timers / seconds).toFixed(0)}/s), ` +
          `longest ${Math.max(...scheduler.delays)} ms, ${warnings.count - warned} warnings`,
      )
      expect(seen.granted, 'the burst, nothing more').toBe(20)
      // Not one per ms: the head's one timer (aimed 2³¹−1 ms ahead), and each of the 5
      // waiters behind the burst reserved in a round trip of its own with its store
      // timeout (those usually land before the window; under load some land in it).
      expect(timers).toBeLessThanOrEqual(6)
      expect(Math.max(...scheduler.delays)).toBeLessThanOrEqual(MAX_TIMER_MS)
      expect(warnings.count - warned).toBe(0)
      expect(bucket.waiting).toBe(5)
    })

    it('pauseFor(30 days): no grant over 300 ms though tokens are there, and no timer storm', async () => {
      const { bucket, scheduler } = countedBucket('paused', 10, 5)
      const first = takeMany(bucket, 2)
      await until('two granted', () => first.granted === 2, { everyMs: 5 })
      bucket.pauseFor(THIRTY_DAYS_MS)
      const warned = warnings.count
      const timersBefore = scheduler.delays.length
      const seen = takeMany(bucket, 3)
      await sleep(WATCH_MS)
      const timers = scheduler.delays.length - timersBefore
      const state = await bucket.peek()
      console.log(
        `redis pauseFor(30 days): ${seen.granted} of 3 granted with ${state.tokens.toFixed(1)} ` +
          `tokens, ${timers} timers in ${WATCH_MS} ms, ${warnings.count - warned} warnings`,
      )
      expect(state.tokens).toBeGreaterThanOrEqual(3)
      expect(state.pausedUntil - state.now).toBeGreaterThan(THIRTY_DAYS_MS - 60_000)
      expect(seen.granted).toBe(0)
      // The pause's store call and the reservation's, each with its timeout, and the one
      // timer the waiters wait on.
      expect(timers).toBeLessThanOrEqual(6)
      expect(Math.max(...scheduler.delays)).toBeLessThanOrEqual(MAX_TIMER_MS)
      expect(warnings.count - warned).toBe(0)
    })

    it('FanOutClient under a yearly RateLimit-Policy: no early grant, the override ends by itself', async () => {
      const MAX_RETRY_AFTER_MS = 1500
      const { bucket } = countedBucket('yearly', 10, 20)
      // When and how the client lowers the shared rate (its own clock is the server's:
      // one process, performance.now()).
      const lowered: { at: number; rate: number; forMs: number | undefined }[] = []
      const setRate = bucket.setRate.bind(bucket)
      bucket.setRate = (rate, options) => {
        lowered.push({ at: performance.now(), rate, forMs: options?.forMs })
        setRate(rate, options)
      }
      const server = await startServer({ headers: { 'ratelimit-policy': '10;w=31536000' } })
      const fanOut = makeClient(server, {
        limiter: bucket,
        maxInFlight: 8,
        retry: { maxRetryAfterMs: MAX_RETRY_AFTER_MS },
      })
      const warned = warnings.count
      const controller = new AbortController()
      const run = fanOut.fetchAll(range(1, 60), { signal: controller.signal }).catch(() => {})
      // A request after the first override ended (the burst, and what the bucket refilled
      // at 10/s before the override landed, may come earlier: under load that can be the
      // 21st, 22nd…): its answer lowers the rate again, for MAX_RETRY_AFTER_MS at most.
      await until('the client lowered the rate', () => lowered.length >= 1, { timeoutMs: 5000 })
      const endsAt = (lowered[0] as (typeof lowered)[number]).at + MAX_RETRY_AFTER_MS
      await server.until(
        () => server.arrivals.some((a) => a.at >= endsAt && a.endedAt !== undefined),
        'a request after the first override ended, answered',
        5000,
      )
      await until('the client heeds that answer', () => lowered.length >= 2, {
        timeoutMs: 1000,
      })
      controller.abort()
      await run

      const firstLowered = lowered[0] as (typeof lowered)[number]
      const t0 = server.arrivals[0]?.at as number
      // Before the override took effect the bucket refilled at 10/s: that many tokens more
      // than the burst may have gone, and nothing else until the override ended (it ends no
      // sooner than MAX_RETRY_AFTER_MS after the client set it; 5 ms for clock rounding).
      const beforeEnd = server.arrivals.filter(
        (a) => a.at < firstLowered.at + MAX_RETRY_AFTER_MS - 5,
      )
      const allowed = 20 + (10 * (firstLowered.at - t0)) / 1000 + 1
      const needed = requiredBurst(
        server.arrivals.map((a) => a.at),
        10,
      )
      const endsIn: number[] = []
      await until(
        'the configured rate is back in Redis',
        async () => {
          const state = await bucket.peek()
          if (state.overrideEnds > state.now) endsIn.push(state.overrideEnds - state.now)
          return state.rate === 10
        },
        { timeoutMs: MAX_RETRY_AFTER_MS + 1000, everyMs: 50 },
      )
      console.log(
        `fan-out yearly policy: ${server.arrivals.length} requests in ` +
          `${((server.arrivals.at(-1)?.at as number) - t0).toFixed(0)} ms, ${beforeEnd.length} ` +
          `before the first override ended (≤ ${allowed.toFixed(1)}), burst needed at 10/s ` +
          `${needed.toFixed(2)} (≤ 21), lowered to ${firstLowered.rate.toExponential(2)}/s for ` +
          `${firstLowered.forMs} ms, longest override left in Redis ${Math.max(0, ...endsIn).toFixed(0)} ms`,
      )
      expect(firstLowered.rate).toBeCloseTo(10 / 31_536_000, 12)
      expect(lowered.every((l) => l.forMs !== undefined && l.forMs <= MAX_RETRY_AFTER_MS)).toBe(
        true,
      )
      expect(beforeEnd.length).toBeLessThanOrEqual(allowed)
      expect(needed).toBeLessThanOrEqual(21)
      expect(Math.max(0, ...endsIn)).toBeLessThanOrEqual(MAX_RETRY_AFTER_MS)
      expect(warnings.count - warned).toBe(0)
    })
  },
)
