/**
 * The semaphore's failure policies (issue 8, item 5), against OUR redis-server (killed,
 * frozen, put to sleep; the shared one is never touched):
 * - 'local-fallback': while Redis is away, permits from a local cap of
 *   max(1, ⌊localShare × limit⌋), never more held at once here; from Redis again once it
 *   is back. While cut off, the cap is the local one in each process (limit +
 *   Σ local caps across a fleet in the worst case: see the README).
 * - 'fail-closed': waiters are refused with StoreUnavailableError within storeTimeoutMs.
 * - the README's setup (a RedisTokenBucket and a RedisSemaphore, both 'local-fallback')
 *   keeps working when Redis dies.
 * - an acquire that timed out during a stall but lands in Redis later is given back as
 *   soon as its answer arrives: afterwards every one of `limit` permits can be acquired.
 * Requests in flight are counted by a RecordingServer.
 */
import { firstValueFrom, lastValueFrom, type Observable, toArray } from 'rxjs'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { FanOutClient } from '../../src/http/FanOutClient.js'
import type { Release } from '../../src/Permits.js'
import { ratePoolFrom } from '../../src/ratePoolFrom.js'
import { RedisSemaphore } from '../../src/redis/RedisSemaphore.js'
import { RedisTokenBucket } from '../../src/redis/RedisTokenBucket.js'
import { epochNow } from './faults/epochNow.js'
import { RecordingServer } from './faults/RecordingServer.js'
import { RedisProcess } from './faults/RedisProcess.js'
import { guardProcess, redisServerInstalled, testPrefix, until } from './helpers.js'

const installed = redisServerInstalled('test/redis/semaphore.test.ts')

const LIMIT = 8
/**
 * How late a timer may fire here: storeTimeoutMs is enforced by one on the scheduler, and
 * this two-core machine, running other tests, has shown event-loop stalls of 30–110 ms.
 */
const TIMER_SLACK_MS = 150

/** The most requests in flight at the server within [from, to] (epochNow() ms). */
function maxInFlight(server: RecordingServer, from: number, to: number): number {
  let max = server.inFlightAt(from)
  for (const change of server.timeline) {
    if (change.at >= from && change.at <= to) max = Math.max(max, change.inFlight)
  }
  return max
}

const rejection = <T>(source: Observable<T>) =>
  firstValueFrom(source).then(
    () => null,
    (error: unknown) => error as { name?: string; code?: string; cause?: unknown },
  )

let guard: ReturnType<typeof guardProcess>
beforeEach(() => {
  guard = guardProcess()
})
afterEach(() => {
  guard.dispose()
  expect(guard.problems, 'nothing escaped as an unhandled error').toEqual([])
})

describe.skipIf(!installed)('RedisSemaphore when Redis fails', () => {
  let redis: RedisProcess
  let server: RecordingServer
  const closing: { close(): Promise<void> }[] = []

  beforeAll(async () => {
    redis = await RedisProcess.start()
    server = await RecordingServer.start({ delayMs: 150 })
  })
  afterAll(async () => {
    await server?.close()
    await redis?.stop()
  })
  afterEach(async () => {
    await Promise.allSettled(closing.splice(0).map((c) => c.close()))
    if (!redis.running) await redis.restart()
    else if (redis.frozen) redis.thaw()
  })

  /**
   * A semaphore on our server. coldStart 'full' unless said otherwise: this Redis was
   * started for these tests and nobody held a lease before, while 'safe' would refuse
   * every lease until Redis is leaseMs old — a wait that is not what is tested here. (A
   * client that saw the key alive still waits out leaseMs after a restart: see
   * lease.test.ts.)
   */
  function semaphore(options: Partial<ConstructorParameters<typeof RedisSemaphore>[0]> = {}) {
    const made = new RedisSemaphore({
      redis: redis.url,
      key: testPrefix(),
      limit: LIMIT,
      leaseMs: 1000,
      storeTimeoutMs: 300,
      coldStart: 'full',
      ...options,
    })
    closing.push(made)
    return made
  }

  it("'local-fallback' with Redis stopped: at most max(1, ⌊share × limit⌋) held here, from Redis again once back", async () => {
    const permits = semaphore({
      onStoreError: 'local-fallback',
      localShare: 0.25,
      retryStoreAfterMs: 200,
    })
    const localCap = 2 // max(1, ⌊0.25 × 8⌋)
    // Seen by each job as it starts: permits held here, and whether they come from the cap.
    const starts: { at: number; held: number; local: boolean }[] = []
    await redis.kill()
    const killedAt = epochNow()
    const drain = new AbortController()
    const results = lastValueFrom(
      ratePoolFrom(
        (function* () {
          for (let id = 0; ; id++) yield id
        })(),
        async (id: number) => {
          starts.push({ at: epochNow(), held: permits.held, local: permits.fallingBack })
          const response = await fetch(`${server.origin}/local/${id}`)
          await response.arrayBuffer()
          return response.status
        },
        { concurrency: 8, permits, errors: 'collect', drain: drain.signal },
      ).pipe(toArray()),
    )
    // Work goes on without Redis, two at a time.
    await until('12 jobs started on local permits', () => starts.length >= 12, { timeoutMs: 5000 })
    await redis.restart()
    const backAt = epochNow()
    await server.until(() => server.inFlight === LIMIT, 'the shared cap in use again', 5000)
    drain.abort()
    const done = await results
    const outage = starts.filter((s) => s.at < backAt)
    const duringMax = maxInFlight(server, killedAt, backAt)
    const overallMax = maxInFlight(server, killedAt, epochNow())
    console.info(
      `local-fallback, Redis stopped: ${outage.length} jobs started on local permits, at most ` +
        `${Math.max(...outage.map((s) => s.held))} held here, ${duringMax} in flight at the ` +
        `server (local cap ${localCap}); back: ${overallMax} in flight (≤ ${LIMIT})`,
    )
    expect(done.every((r) => r.ok)).toBe(true)
    expect(outage.every((s) => s.local)).toBe(true)
    expect(Math.max(...outage.map((s) => s.held))).toBeLessThanOrEqual(localCap)
    // Exactly the local cap at the server while Redis was away: reached, never passed.
    expect(duringMax).toBe(localCap)
    // Back: leases from Redis again, the whole shared cap.
    expect(permits.fallingBack).toBe(false)
    expect(overallMax).toBe(LIMIT)
    expect(permits.held).toBe(0)
  }, 20_000)

  it("'local-fallback' at localShare 0.1 of 8: the local cap is 1 (at least one permit)", async () => {
    const permits = semaphore({ onStoreError: 'local-fallback', localShare: 0.1 })
    await redis.kill()
    const first = await firstValueFrom(permits.acquire())
    expect(permits.fallingBack).toBe(true)
    expect(permits.held).toBe(1)
    // A second waits for the first's release, however long Redis stays away.
    let second: Release | null = null
    const waiting = permits.acquire().subscribe((release) => {
      second = release
    })
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect(second).toBeNull()
    first()
    await until('the second granted', () => second !== null, { timeoutMs: 1000 })
    expect(permits.held).toBe(1)
    ;(second as unknown as Release)()
    waiting.unsubscribe()
    expect(permits.held).toBe(0)
  }, 10_000)

  it("'local-fallback': leases still held when Redis goes away count toward the local cap", async () => {
    // leaseMs 5000: the two leases outlive the test (their deadline is 4.5 s away).
    const permits = semaphore({
      onStoreError: 'local-fallback',
      localShare: 0.25,
      leaseMs: 5000,
      retryStoreAfterMs: 100,
    })
    const leases = [
      await firstValueFrom(permits.acquire()),
      await firstValueFrom(permits.acquire()),
    ]
    expect(permits.fallingBack).toBe(false)
    await redis.kill()
    let third: Release | null = null
    const asking = permits.acquire().subscribe((release) => {
      third = release
    })
    await until('falling back', () => permits.fallingBack, { timeoutMs: 2000 })
    await new Promise((resolve) => setTimeout(resolve, 300))
    // Two held already (leases): no local permit on top of them.
    const heldWhileTwo = permits.held
    expect(third).toBeNull()
    leases[0]?.()
    await until('a local permit once a lease is given back', () => third !== null, {
      timeoutMs: 2000,
    })
    console.info(
      `local-fallback, 2 leases held at the outage (local cap 2): ${heldWhileTwo} held, the ` +
        `third waited for a release; then ${permits.held} held`,
    )
    expect(heldWhileTwo).toBe(2)
    expect(permits.held).toBe(2)
    ;(third as unknown as Release)()
    leases[1]?.()
    asking.unsubscribe()
    expect(permits.held).toBe(0)
  }, 10_000)

  it("'fail-closed': refused with StoreUnavailableError within storeTimeoutMs, Redis stopped or hung", async () => {
    const storeTimeoutMs = 300
    const figures: string[] = []
    for (const fault of ['stopped', 'frozen'] as const) {
      const permits = semaphore({ onStoreError: 'fail-closed', storeTimeoutMs })
      // Up first: a permit is granted, and given back.
      ;(await firstValueFrom(permits.acquire()))()
      if (fault === 'stopped') await redis.kill()
      else redis.freeze()
      const started = performance.now()
      const error = await rejection(permits.acquire())
      const elapsed = performance.now() - started
      figures.push(`${fault} ${elapsed.toFixed(0)} ms`)
      expect(error?.name).toBe('StoreUnavailableError')
      expect(error?.code).toBe('RX_FANOUT_STORE_UNAVAILABLE')
      expect(error?.cause).toBeInstanceOf(Error)
      expect(elapsed).toBeLessThanOrEqual(storeTimeoutMs + TIMER_SLACK_MS)
      if (fault === 'stopped') await redis.restart()
      else redis.thaw()
    }
    console.info(
      `fail-closed: refused after ${figures.join(', ')} (storeTimeoutMs ${storeTimeoutMs})`,
    )
  }, 15_000)

  it("the README's setup under 'local-fallback' (bucket + semaphore) keeps fetching when Redis dies", async () => {
    const key = testPrefix()
    const shared = {
      redis: redis.url,
      key,
      onStoreError: 'local-fallback' as const,
      storeTimeoutMs: 300,
      retryStoreAfterMs: 200,
      coldStart: 'full' as const,
    }
    const limiter = new RedisTokenBucket({ ...shared, rate: 40, burst: 10 })
    const permits = new RedisSemaphore({ ...shared, limit: LIMIT, leaseMs: 1000 })
    closing.push(limiter, permits)
    const client = new FanOutClient({
      baseUrl: server.origin,
      path: '/readme/{id}',
      limiter,
      permits,
      retry: { attempts: 3, baseDelayMs: 20 },
    })
    closing.push(client)
    const ids = Array.from({ length: 60 }, (_, i) => i)
    let fetched = 0
    let killedAt = Number.NaN
    let backAt = Number.NaN
    let failedAt = Number.NaN
    const run = lastValueFrom(client.fetchEach$(ids, { errors: 'collect' }).pipe(toArray())).catch(
      (error: unknown) => {
        failedAt = epochNow()
        throw error
      },
    )
    await server.until(() => server.count('/readme/10') > 0, 'ten fetched', 5000)
    const heldAtKill = permits.held
    await redis.kill()
    killedAt = epochNow()
    await new Promise((resolve) => setTimeout(resolve, 1500))
    const duringDown = server.requests.filter(
      (r) => r.path.startsWith('/readme/') && r.at > killedAt,
    ).length
    await redis.restart()
    backAt = epochNow()
    const results = await run.catch((error: unknown) => {
      throw new Error(
        `the fetch failed ${(failedAt - killedAt).toFixed(0)} ms after Redis died: ${String(error)}`,
      )
    })
    fetched = results.filter((r) => r.ok).length
    // Leases held from before the outage end by their deadline, leaseMs − safetyMarginMs
    // (800 ms) after their last renewal at the latest; their jobs are cut then.
    const downMax = maxInFlight(server, killedAt + 900, backAt)
    const firstMax = maxInFlight(server, killedAt, killedAt + 900)
    console.info(
      `README setup, local-fallback: ${duringDown} requests while Redis was down (1.5 s), at ` +
        `most ${firstMax} in flight in its first 900 ms (${heldAtKill} leases held at the ` +
        `kill), ${downMax} after (local cap 2); ` +
        `${fetched} of ${ids.length} fetched`,
    )
    expect(fetched).toBe(ids.length)
    expect(duringDown).toBeGreaterThan(0)
    // Then the semaphore's local cap (2 of 8), reached and never passed.
    expect(downMax).toBe(2)
    expect(firstMax).toBeLessThanOrEqual(LIMIT)
  }, 20_000)

  it.each(['fail-closed', 'local-fallback'] as const)(
    '%s: an acquire that timed out in a stall and landed later is given back: all 8 permits after',
    async (policy) => {
      // leaseMs 10 s: a lease left behind would stay for 10 s, far past this test's wait.
      const key = testPrefix()
      const stalled = semaphore({
        key,
        onStoreError: policy,
        leaseMs: 10_000,
        storeTimeoutMs: 200,
        retryStoreAfterMs: 5000,
      })
      ;(await firstValueFrom(stalled.acquire()))() // up and known
      const admin = await redis.client()
      try {
        const sleep = admin.call('DEBUG', 'SLEEP', '1') // longer than storeTimeoutMs
        await new Promise((resolve) => setTimeout(resolve, 50))
        // Acquires during the stall: each sends ACQUIRE, which Redis runs when it wakes.
        const during: string[] = []
        for (let i = 0; i < 2; i++) {
          const outcome = await firstValueFrom(stalled.acquire()).then(
            (release) => {
              release()
              return `local grant (falling back: ${stalled.fallingBack})`
            },
            (error: unknown) => String((error as { code?: string }).code),
          )
          during.push(outcome)
        }
        await sleep
        // Another process (an instance with a connection of its own) asks for all 8 at once.
        const other = semaphore({ key, leaseMs: 10_000 })
        const releases: Release[] = []
        const asks = Array.from({ length: LIMIT }, () =>
          other.acquire().subscribe((release) => releases.push(release)),
        )
        await until('all 8 held', () => releases.length === LIMIT, { timeoutMs: 2000 }).catch(
          () => {},
        )
        const granted = releases.length
        for (const release of releases) release()
        for (const ask of asks) ask.unsubscribe()
        const left = await admin.zcard(`{${key}}:permits`)
        console.info(
          `${policy}, DEBUG SLEEP 1 s > storeTimeoutMs 200: during it ${during.join(', ')}; ` +
            `after it ${granted} of ${LIMIT} permits granted at once; ${left} leases left`,
        )
        if (policy === 'fail-closed') {
          expect(during).toEqual(['RX_FANOUT_STORE_UNAVAILABLE', 'RX_FANOUT_STORE_UNAVAILABLE'])
        }
        expect(granted).toBe(LIMIT)
        expect(left).toBe(0)
      } finally {
        admin.disconnect()
      }
    },
    15_000,
  )
})
