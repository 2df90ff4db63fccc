/**
 * A lost lease stops its job (issue 8, item 2), measured at the downstream: three worker
 * processes (test/redis/leaseWorker.ts), each with its own connection to OUR redis-server,
 * share a RedisSemaphore of limit 8 and run a pool of concurrency 8 whose jobs are slow
 * GETs to a RecordingServer, each cut by its job's signal. The server counts the requests
 * in flight; Redis is killed and restarted empty, or stalled with DEBUG SLEEP, mid-run.
 * (FanOutClient as the pool: lease.fanout.test.ts; one process cut off: lease.partition.test.ts.)
 *
 * Why the jobs are longer than the lease (1.1–1.8 s against leaseMs 1000): a job that ends
 * before its lease could expire never overlaps whoever gets the permit next, whatever the
 * semaphore does; the faults only bite on jobs that outlive a lease, as real ones do
 * against a 10 s lease.
 *
 * coldStart stays 'safe' (the default) in every test here: a Redis younger than leaseMs
 * grants no lease until it is leaseMs old, so after a restart without persistence no
 * permit is handed out while a holder from before may still run — the property under
 * test. (Each worker also knew the key alive, which alone would hold the grants back under
 * 'full' too; 'safe' covers a process that joins right after the restart.) The price is
 * up to leaseMs of waiting at the very first start, paid in the workers' warm-up.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { RecordingServer } from './faults/RecordingServer.js'
import { RedisProcess } from './faults/RedisProcess.js'
import { redisServerInstalled, testPrefix } from './helpers.js'
import {
  jobArrivals,
  jobDelay,
  jobsInFlight,
  type LeaseWorker,
  startWorkers,
  stopWorkers,
} from './leaseFleet.js'
import type { LeaseWorkerConfig } from './leaseWorker.js'

const installed = redisServerInstalled('test/redis/lease.test.ts')

const LIMIT = 8
const LEASE_MS = 1000

describe.skipIf(!installed)('a lost lease ends its job: the cap holds at the server', () => {
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

  async function fleet(
    overrides: Partial<LeaseWorkerConfig> = {},
    delay = jobDelay(1100, 1800),
  ): Promise<RecordingServer> {
    const recording = await RecordingServer.start({ delayMs: delay })
    server = recording
    const key = testPrefix()
    workers = await startWorkers(
      [0, 1, 2].map((w) => ({
        name: `w${w}`,
        redisPort: redis.port,
        key,
        limit: LIMIT,
        leaseMs: LEASE_MS,
        storeTimeoutMs: 5000,
        concurrency: 8,
        origin: recording.origin,
        client: 'pool',
        attempts: 20,
        ...overrides,
      })),
    )
    for (const worker of workers) worker.command('go')
    // Not vacuous: the cap is reached before the fault.
    await recording.until(() => jobsInFlight(recording).now === LIMIT, 'the cap reached', 10_000)
    return recording
  }

  /** Drains every worker and waits for their ends: every job started has its result. */
  async function drain(): Promise<void> {
    for (const worker of workers) worker.command('stop')
    const ends = await Promise.all(workers.map((w) => w.when('end', undefined, 20_000)))
    expect(ends.every((end) => end.count > 0)).toBe(true)
    for (const worker of workers) {
      const results = worker.all('result')
      expect(
        results.filter((r) => !r.ok),
        `${worker.name}: every job finished`,
      ).toEqual([])
    }
  }

  function lostAborts(): { count: number; codes: string[] } {
    const aborted = workers.flatMap((w) => w.all('aborted'))
    return { count: aborted.length, codes: [...new Set(aborted.map((a) => String(a.code)))] }
  }

  it('Redis killed (SIGKILL) and restarted empty mid-run: at most 8 in flight throughout', async () => {
    const recording = await fleet()
    const killedAt = performance.timeOrigin + performance.now()
    await redis.restart()
    // Recovered: the jobs cut by the restart were retried, the cap reached again.
    await recording.until(
      () => jobArrivals(recording, killedAt) >= LIMIT && jobsInFlight(recording).now === LIMIT,
      'work at the cap again after the restart',
      15_000,
    )
    await drain()
    const aborts = lostAborts()
    const max = jobsInFlight(recording).max
    console.info(
      `restart: max in flight ${max} (≤ ${LIMIT}); ${aborts.count} attempts cut ` +
        `(${aborts.codes.join(', ')}); ${jobArrivals(recording)} requests`,
    )
    expect(max).toBeLessThanOrEqual(LIMIT)
    // The holders from before the restart were cut, with the lease's own error.
    expect(aborts.count).toBeGreaterThan(0)
    expect(aborts.codes).toEqual(['RX_FANOUT_LEASE_LOST'])
  }, 30_000)

  it('Redis stalled (DEBUG SLEEP 1.2 s, longer than leaseMs) mid-run: at most 8 in flight', async () => {
    const recording = await fleet()
    const admin = await redis.client()
    try {
      const sleptAt = performance.timeOrigin + performance.now()
      // Every client's commands wait behind it: renewals, acquires, releases.
      await admin.call('DEBUG', 'SLEEP', '1.2')
      const wokeAt = performance.timeOrigin + performance.now()
      await recording.until(
        () => jobArrivals(recording, wokeAt) >= LIMIT && jobsInFlight(recording).now === LIMIT,
        'work at the cap again after the stall',
        15_000,
      )
      await drain()
      const aborts = lostAborts()
      const max = jobsInFlight(recording).max
      // The holders' deadlines (≤ 800 ms after their last confirmed renewal) fell in the stall.
      const during = workers
        .flatMap((w) => w.all('aborted'))
        .filter((a) => a.at >= sleptAt && a.at <= wokeAt).length
      console.info(
        `DEBUG SLEEP 1.2 s: max in flight ${max} (≤ ${LIMIT}); ${aborts.count} attempts cut ` +
          `(${during} during the stall; ${aborts.codes.join(', ')}); ${jobArrivals(recording)} requests`,
      )
      // No attempt started after the stall is cut: a grant answered late (sent during the
      // stall) is confirmed at once, or given back if its deadline has passed already.
      const cutAfter = workers.flatMap((w) =>
        w.all('aborted').filter((a) => {
          const start = w.all('attempt').find((t) => t.id === a.id && t.attempt === a.attempt)
          return (start?.at ?? 0) > wokeAt
        }),
      )
      expect(cutAfter).toEqual([])
      expect(max).toBeLessThanOrEqual(LIMIT)
      expect(during).toBeGreaterThan(0)
      expect(aborts.codes).toEqual(['RX_FANOUT_LEASE_LOST'])
    } finally {
      admin.disconnect()
    }
  }, 30_000)
})
