/**
 * FanOutClient with a RedisSemaphore as its `permits` (issue 8, item 2): three worker
 * processes (test/redis/leaseWorker.ts, `client: 'fanout'`), each fetching 6 ids from a
 * RecordingServer through its own FanOutClient (maxInFlight 8) and its own connection to
 * OUR redis-server, share a semaphore of limit 8; Redis is killed and restarted empty
 * mid-run. The client passes each job's signal to undici, so a lost lease cuts its
 * request, and retries it (LeaseLostError is retryable). Jobs take 1.1–1.8 s, longer than
 * the lease (1000 ms), and coldStart stays 'safe': see lease.test.ts for both.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { RecordingServer } from './faults/RecordingServer.js'
import { RedisProcess } from './faults/RedisProcess.js'
import { redisServerInstalled, testPrefix } from './helpers.js'
import {
  jobDelay,
  jobsInFlight,
  type LeaseWorker,
  startWorkers,
  stopWorkers,
} from './leaseFleet.js'

const installed = redisServerInstalled('test/redis/lease.fanout.test.ts')

const LIMIT = 8

describe.skipIf(!installed)('FanOutClient + RedisSemaphore across a Redis restart', () => {
  let redis: RedisProcess
  let server: RecordingServer | null = null
  let workers: LeaseWorker[] = []

  beforeAll(async () => {
    redis = await RedisProcess.start()
  })
  afterAll(async () => {
    await redis?.stop()
  })
  afterEach(async () => {
    await stopWorkers(workers)
    workers = []
    await server?.close()
    server = null
  })

  it('FanOutClient with the semaphore as permits, Redis restarted: ≤ 8 at the server, every id fetched', async () => {
    const JOBS = 6
    const recording = await RecordingServer.start({ delayMs: jobDelay(1100, 1800) })
    server = recording
    const key = testPrefix()
    workers = await startWorkers(
      [0, 1, 2].map((w) => ({
        name: `w${w}`,
        redisPort: redis.port,
        key,
        limit: LIMIT,
        leaseMs: 1000,
        storeTimeoutMs: 5000,
        concurrency: 8,
        origin: recording.origin,
        client: 'fanout' as const,
        jobs: JOBS,
        attempts: 5,
      })),
    )
    for (const worker of workers) worker.command('go')
    // Not vacuous: the cap is reached before the fault.
    await recording.until(() => jobsInFlight(recording).now === LIMIT, 'the cap reached', 10_000)
    await redis.restart()
    const ends = await Promise.all(workers.map((w) => w.when('end', undefined, 20_000)))
    const results = workers.flatMap((w) => w.all('result'))
    const retried = results.filter((r) => r.attempts > 1).length
    const lost = workers
      .flatMap((w) => w.all('log'))
      .filter((l) => l.code === 'RX_FANOUT_LEASE_LOST')
    const max = jobsInFlight(recording).max
    console.info(
      `FanOutClient + restart: max in flight ${max} (≤ ${LIMIT}); ${lost.length} leases lost, ` +
        `${retried} of ${results.length} ids retried, ${results.filter((r) => r.ok).length} fetched`,
    )
    expect(max).toBeLessThanOrEqual(LIMIT)
    expect(ends.map((end) => end.count)).toEqual([JOBS, JOBS, JOBS])
    expect(results.filter((r) => !r.ok)).toEqual([])
    // The requests cut by the restart were retried by the client (LeaseLostError is retryable).
    expect(lost.length).toBeGreaterThan(0)
    expect(retried).toBeGreaterThan(0)
  }, 30_000)
})
