/**
 * One process of the multi-process Redis tests (run with `node --import tsx`): a pool over
 * its ids that shares one RedisTokenBucket and one RedisSemaphore (same key) with the other
 * processes, each job one GET to the test's HTTP server.
 *
 * argv[2]: a JSON WorkerConfig. Protocol, NDJSON on stdout:
 *   {"type":"ready"}                      then it waits for "go\n" on stdin
 *   {"type":"done","id":…,"ok":…,"status":…,"startedAt":…}   per result, as the pool
 *                                        emits it; startedAt: wall-clock ms of the call
 *   {"type":"end","count":…}              the pool completed; exit code 0
 *   {"type":"error","message":…,"code":…} the pool errored; exit code 1
 * Warnings from rx-fanout/redis go to stderr (pino).
 */
import { Agent, request } from 'node:http'
import { createInterface } from 'node:readline'
import { pino } from 'pino'
import { firstValueFrom, lastValueFrom } from 'rxjs'
import { ratePoolFrom } from '../../src/ratePoolFrom.js'
import { RedisSemaphore } from '../../src/redis/RedisSemaphore.js'
import { RedisTokenBucket } from '../../src/redis/RedisTokenBucket.js'

export interface WorkerConfig {
  name: string
  redisUrl: string
  key: string
  rate: number
  burst: number
  limit: number
  leaseMs: number
  concurrency: number
  port: number
  ids: number[]
}

const config = JSON.parse(process.argv[2] ?? '') as WorkerConfig
const logger = pino({ level: 'warn' }, pino.destination(2))
const send = (message: object) => process.stdout.write(`${JSON.stringify(message)}\n`)

function limiters(key: string) {
  const bucket = new RedisTokenBucket({
    redis: config.redisUrl,
    key,
    rate: config.rate,
    burst: config.burst,
    logger,
  })
  const semaphore = new RedisSemaphore({
    redis: config.redisUrl,
    key,
    limit: config.limit,
    leaseMs: config.leaseMs,
    logger,
  })
  return { bucket, semaphore }
}
const { bucket, semaphore } = limiters(config.key)
const agent = new Agent({ keepAlive: true, maxSockets: config.concurrency })

/** Wall-clock ms (the same clock in every process here), sub-ms precise. */
const wallNow = () => performance.timeOrigin + performance.now()
const startedAt = new Map<number, number>()

function get(id: number): Promise<number> {
  // The pool calls this right after the token is granted: the job's start.
  startedAt.set(id, wallNow())
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: config.port,
        path: `/job/${id}`,
        agent,
        headers: { 'x-worker': config.name },
      },
      (res) => {
        res.resume()
        res.once('end', () => resolve(res.statusCode ?? 0))
        res.once('error', reject)
      },
    )
    req.once('error', reject)
    req.end()
  })
}

async function shutdown(code: number): Promise<never> {
  await Promise.allSettled([bucket.close(), semaphore.close()])
  agent.destroy()
  process.exit(code)
}

// Warm up before "ready": a pool of the same shape over 8 uncounted ids (negative: the
// server does not record them) on a bucket and semaphore of this worker's own, then one
// round trip on each shared client. This opens the sockets and runs every code path once;
// otherwise each process's first grants reach the server several ms later than the next
// ones, which bunches the arrivals up against the burst.
const warm = limiters(`${config.key}:warmup:${config.name}`)
await lastValueFrom(
  ratePoolFrom([-1, -2, -3, -4, -5, -6, -7, -8], (id) => get(id), {
    concurrency: config.concurrency,
    limiter: warm.bucket,
    permits: warm.semaphore,
  }),
)
await Promise.all([warm.bucket.close(), warm.semaphore.close()])
await bucket.peek()
await firstValueFrom(semaphore.acquire()).then((release) => release())
startedAt.clear()

const lines = createInterface({ input: process.stdin })
lines.once('line', () => {
  lines.close()
  let count = 0
  ratePoolFrom(config.ids, (id) => get(id), {
    concurrency: config.concurrency,
    limiter: bucket,
    permits: semaphore,
    errors: 'collect',
  }).subscribe({
    next: (result) => {
      count++
      send({
        type: 'done',
        id: result.job.value,
        ok: result.ok,
        startedAt: startedAt.get(result.job.value),
        status: result.ok ? result.value : undefined,
        error: result.ok ? undefined : String(result.error),
      })
    },
    error: (error: unknown) => {
      send({
        type: 'error',
        message: String(error),
        code: (error as { code?: unknown } | null)?.code,
      })
      void shutdown(1)
    },
    complete: () => {
      send({ type: 'end', count })
      void shutdown(0)
    },
  })
})
send({ type: 'ready' })
