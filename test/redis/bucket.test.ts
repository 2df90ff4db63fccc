/**
 * RedisTokenBucket and RedisSemaphore against a real Redis: the keys they write (prefix,
 * TTL), a waiter that gives up (its reservation cancelled, by Go's rule), and setRate seen
 * by another instance on the same key.
 */
import type { Redis } from 'ioredis'
import { concatMap, firstValueFrom, lastValueFrom, range, type Subscription, tap } from 'rxjs'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { RedisSemaphore } from '../../src/redis/RedisSemaphore.js'
import { RedisTokenBucket } from '../../src/redis/RedisTokenBucket.js'
import {
  client,
  deleteUnder,
  OwnRedis,
  REDIS_URL,
  redisAvailable,
  redisServerInstalled,
  requiredBurst,
  testPrefix,
  until,
} from './helpers.js'

const redisUp = await redisAvailable('test/redis/bucket.test.ts')
const ownRedis = redisServerInstalled('test/redis/bucket.test.ts')

// Grants are timed here on this process's clock after Redis decided them: each is late by
// a round trip and a timer's lateness, which varies by a few ms. At 10/s, 0.5 token is
// 50 ms of such variation: far more than that, far less than a wrong rate (10× here).
const JITTER_TOKENS = 0.5

/** Grant times (performance.now()) of `count` takes in a row. */
async function grantTimes(bucket: RedisTokenBucket, count: number): Promise<number[]> {
  const times: number[] = []
  await lastValueFrom(
    range(0, count).pipe(
      concatMap(() => bucket.take().pipe(tap(() => times.push(performance.now())))),
    ),
    { defaultValue: undefined },
  )
  return times
}

describe.skipIf(!redisUp || !ownRedis)(
  'keys: every key written has a TTL, under the key prefix',
  () => {
    // Our own server, so that SCAN sees every key anyone wrote: only these clients use it.
    let server: OwnRedis
    let redis: Redis

    beforeAll(async () => {
      server = await OwnRedis.start()
      redis = client(server.port)
    })
    afterAll(async () => {
      redis?.disconnect()
      await server?.stop()
    })

    it('bucket and semaphore keys, through take, setRate, setBurst, pauseFor, acquire, wait, release', async () => {
      const key = testPrefix()
      const bucket = new RedisTokenBucket({ redis: server.url, key, rate: 20, burst: 3 })
      const semaphore = new RedisSemaphore({ redis: server.url, key, limit: 2, leaseMs: 5000 })
      const seen = new Set<string>()
      const expectKeys = async (when: string) => {
        const keys = await redis.keys('*')
        for (const name of keys) {
          seen.add(name)
          expect(name.startsWith(`{${key}}:`), `${when}: ${name} is under the prefix`).toBe(true)
          expect(await redis.pttl(name), `${when}: PTTL of ${name}`).toBeGreaterThan(0)
        }
      }
      try {
        await grantTimes(bucket, 5) // into debt: the hash lives until it is full again
        await expectKeys('after take')
        bucket.setRate(10)
        await until('setRate stored', async () => (await bucket.peek()).rate === 10)
        await expectKeys('after setRate')
        bucket.setBurst(4)
        await until('setBurst stored', async () => (await bucket.peek()).burst === 4)
        await expectKeys('after setBurst')
        bucket.pauseFor(300)
        await until('pause stored', async () => (await bucket.peek()).pausedUntil > 0)
        await expectKeys('after pauseFor')
        const releases = [
          await firstValueFrom(semaphore.acquire()),
          await firstValueFrom(semaphore.acquire()),
        ]
        await expectKeys('with two leases held')
        // A third waits: refused, it listens on the release channel (not a key).
        const third = firstValueFrom(semaphore.acquire())
        await until('the third waits for a release', async () => {
          const [, listeners] = (await redis.pubsub('NUMSUB', `{${key}}:released`)) as [
            string,
            number,
          ]
          return listeners === 1
        })
        await expectKeys('with a waiter')
        for (const release of releases) release()
        ;(await third)()
        await expectKeys('after the releases')
        expect([...seen].sort()).toEqual([`{${key}}:bucket`, `{${key}}:meta`, `{${key}}:permits`])
      } finally {
        await bucket.close()
        await semaphore.close()
      }
    }, 15_000)
  },
)

describe.skipIf(!redisUp)('RedisTokenBucket on a shared Redis', () => {
  let redis: Redis
  const prefixes: string[] = []
  const closing: { close(): Promise<void> }[] = []
  const prefix = () => {
    const p = testPrefix()
    prefixes.push(p)
    return p
  }
  const bucketOn = (key: string, rate: number, burst: number) => {
    const bucket = new RedisTokenBucket({ redis: REDIS_URL, key, rate, burst })
    closing.push(bucket)
    return bucket
  }

  beforeAll(() => {
    redis = client()
  })
  afterEach(async () => {
    await Promise.all(closing.splice(0).map((c) => c.close()))
  })
  afterAll(async () => {
    for (const p of prefixes) await deleteUnder(redis, p)
    redis.disconnect()
  })

  describe('a waiter that gives up cancels its reservation', () => {
    it('the last reservation: its tokens come back', async () => {
      const bucket = bucketOn(prefix(), 2, 1)
      await lastValueFrom(bucket.take()) // the burst: 0 tokens left
      let granted = false
      const waiter: Subscription = bucket.take().subscribe(() => {
        granted = true
      })
      // The head reserved 1 token in debt (a 500 ms wait): Redis shows it.
      const before = await until('the reservation is in Redis', async () => {
        const peek = await bucket.peek()
        return peek.tokens < -0.5 && peek
      })
      waiter.unsubscribe()
      const after = await until('the cancel lands', async () => {
        const peek = await bucket.peek()
        return peek.tokens > before.tokens + 0.5 && peek
      })
      // Exactly one token back: tokens then = tokens before + refill in between + 1.
      const refill = ((after.now - before.now) * 2) / 1000
      expect(after.tokens - (before.tokens + refill)).toBeCloseTo(1, 6)
      expect(granted).toBe(false)
    })

    it('one that a later reservation built on: nothing comes back (Go’s rule)', async () => {
      const key = prefix()
      const a = bucketOn(key, 2, 1)
      const b = bucketOn(key, 2, 1)
      await lastValueFrom(a.take()) // 0 tokens
      let aGranted = false
      const aWaiter = a.take().subscribe(() => {
        aGranted = true
      })
      await until('A reserved', async () => (await a.peek()).tokens < -0.5)
      const bGranted = lastValueFrom(b.take()).then(() => true)
      // B's reservation (at −2 tokens) was planned on top of A's.
      const before = await until('B reserved', async () => {
        const peek = await a.peek()
        return peek.tokens < -1.5 && peek
      })
      aWaiter.unsubscribe()
      // The cancel goes out on A's connection before this peek: it has run when it answers.
      const after = await a.peek()
      const refill = ((after.now - before.now) * 2) / 1000
      expect(after.tokens - (before.tokens + refill)).toBeCloseTo(0, 6)
      expect(aGranted).toBe(false)
      // B's reservation is untouched: B is still granted.
      expect(await bGranted).toBe(true)
    })
  })

  it('setRate on one instance: another instance’s next grants follow the new rate', async () => {
    const key = prefix()
    const a = bucketOn(key, 100, 1)
    const b = bucketOn(key, 100, 1)
    await lastValueFrom(b.take())
    a.setRate(10)
    await until('the new rate is stored', async () => (await b.peek()).rate === 10)
    expect(b.rate, 'B’s own view is what it was configured with').toBe(100)
    const times = await grantTimes(b, 6)
    // At 100/s these six would need a burst of about 5.5; at 10/s a burst of 1.
    const needed = requiredBurst(times, 10)
    expect(needed).toBeLessThanOrEqual(1 + JITTER_TOKENS)
  })

  it('a rate set by one instance outlives the refill TTL (the hash is kept while it holds one)', async () => {
    // Before eaa33f3 the hash's TTL only covered the refill (and a pause): about 1 s after
    // the bucket was full again the hash expired, the stored rate with it, and from then
    // on each instance passed its own configured rate (B 100/s, A 10/s, on one bucket).
    const key = prefix()
    const a = bucketOn(key, 100, 1)
    const b = bucketOn(key, 100, 1)
    a.setRate(10)
    await until('the new rate is stored', async () => (await b.peek()).rate === 10)
    // A full bucket needs no refill: the TTL is the stored setting's, not the refill's.
    expect(await redis.pttl(`{${key}}:bucket`)).toBeGreaterThan(60_000)
    await lastValueFrom(b.take())
    expect(await redis.pttl(`{${key}}:bucket`), 'kept by every later write too').toBeGreaterThan(
      60_000,
    )
    expect((await b.peek()).rate).toBe(10)
  })
})
