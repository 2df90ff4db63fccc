/**
 * One process of the Redis Cluster tests (run with `node --import tsx`): a pool over its
 * ids that shares one RedisTokenBucket and one RedisSemaphore (same key) with the other
 * processes through an ioredis `Cluster` built from the startup nodes it is given; each
 * job is one GET to the test's RecordingServer, aborted when the job's signal aborts (a
 * lost lease), so that the server counts it out at once.
 *
 * argv[2]: a JSON ClusterWorkerConfig. Protocol, NDJSON on stdout (as worker.ts):
 *   {"type":"ready"}                      then it waits for "go\n" on stdin
 *   {"type":"done","id":…,"ok":…,"attempts":…,"starts":[…],"error":…}   per result;
 *                                        starts: epochNow() of each attempt's call
 *   {"type":"lost","id":…,"attempt":…,"code":…}   an attempt's signal aborted (a lost lease)
 *   {"type":"end","count":…}              the pool completed; exit code 0
 *   {"type":"error","message":…,"code":…} the pool errored; exit code 1
 * Warnings from rx-fanout/redis go to stderr (pino).
 */
import { Agent, request } from 'node:http'
import { createInterface } from 'node:readline'
import { Cluster, type ClusterOptions } from 'ioredis'
import { pino } from 'pino'
import { firstValueFrom, lastValueFrom } from 'rxjs'
import { ratePoolFrom } from '../../src/ratePoolFrom.js'
import { RedisSemaphore } from '../../src/redis/RedisSemaphore.js'
import { RedisTokenBucket } from '../../src/redis/RedisTokenBucket.js'
import type { TaskContext } from '../../src/types.js'
import { epochNow } from './faults/epochNow.js'

export interface ClusterWorkerConfig {
  name: string
  startupNodes: { host: string; port: number }[]
  /** ioredis Cluster options (JSON): how the client rides a failover. */
  clusterOptions: ClusterOptions
  key: string
  rate: number
  burst: number
  limit: number
  leaseMs: number
  renewEveryMs?: number
  safetyMarginMs?: number
  storeTimeoutMs: number
  concurrency: number
  /** Attempts per job (a lost lease fails an attempt; the pool retries it). */
  attempts: number
  port: number
  ids: number[]
}

const config = JSON.parse(process.argv[2] ?? '') as ClusterWorkerConfig
const logger = pino({ level: 'warn' }, pino.destination(2))
const send = (message: object) => process.stdout.write(`${JSON.stringify(message)}\n`)

const redis = new Cluster(config.startupNodes, config.clusterOptions)
// A failover makes the client emit errors: they are the library's to handle, not ours.
redis.on('error', () => {})

function limiters(key: string) {
  const common = { redis, key, storeTimeoutMs: config.storeTimeoutMs, logger }
  const bucket = new RedisTokenBucket({ ...common, rate: config.rate, burst: config.burst })
  const semaphore = new RedisSemaphore({
    ...common,
    limit: config.limit,
    leaseMs: config.leaseMs,
    ...(config.renewEveryMs === undefined ? {} : { renewEveryMs: config.renewEveryMs }),
    ...(config.safetyMarginMs === undefined ? {} : { safetyMarginMs: config.safetyMarginMs }),
  })
  return { bucket, semaphore }
}
const { bucket, semaphore } = limiters(config.key)
const agent = new Agent({ keepAlive: true, maxSockets: config.concurrency })
const starts = new Map<number, number[]>()

/** GET /<worker>/<id>/<attempt>: the server picks each attempt's duration from the path. */
function get(id: number, { attempt, signal }: TaskContext<number>): Promise<number> {
  // The pool calls this right after the token is granted: the attempt's start.
  starts.set(id, [...(starts.get(id) ?? []), epochNow()])
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port: config.port, path: `/${config.name}/${id}/${attempt}`, agent },
      (res) => {
        res.resume()
        res.once('end', () => resolve(res.statusCode ?? 0))
        res.once('error', reject)
      },
    )
    const onAbort = () => {
      send({ type: 'lost', id, attempt, code: (signal.reason as { code?: unknown } | null)?.code })
      req.destroy(signal.reason as Error)
    }
    if (signal.aborted) onAbort()
    else signal.addEventListener('abort', onAbort, { once: true })
    req.once('close', () => signal.removeEventListener('abort', onAbort))
    req.once('error', reject)
    req.end()
  })
}

async function shutdown(code: number): Promise<never> {
  await Promise.allSettled([bucket.close(), semaphore.close()])
  redis.disconnect()
  agent.destroy()
  process.exit(code)
}

// Warm up before "ready" (see worker.ts): a pool of the same shape over uncounted ids (the
// server ignores negative ones) on limiters of this worker's own, then one round trip on
// each shared one: the sockets to every master are open, the scripts loaded, and the
// shared semaphore's state exists before the test starts.
const warm = limiters(`${config.key}:warmup:${config.name}`)
await lastValueFrom(
  ratePoolFrom([-1, -2, -3, -4, -5, -6, -7, -8], get, {
    concurrency: config.concurrency,
    limiter: warm.bucket,
    permits: warm.semaphore,
    // A machine busy enough to stall a renewal past a short lease must not end the run
    // before it starts.
    retry: { attempts: config.attempts, baseDelayMs: 20, maxDelayMs: 100 },
  }),
)
await Promise.all([warm.bucket.close(), warm.semaphore.close()])
await bucket.peek()
await firstValueFrom(semaphore.acquire()).then((release) => release())
starts.clear()

const lines = createInterface({ input: process.stdin })
lines.once('line', () => {
  lines.close()
  let count = 0
  ratePoolFrom(config.ids, get, {
    concurrency: config.concurrency,
    limiter: bucket,
    permits: semaphore,
    retry: { attempts: config.attempts, baseDelayMs: 20, maxDelayMs: 100 },
    errors: 'collect',
  }).subscribe({
    next: (result) => {
      count++
      send({
        type: 'done',
        id: result.job.value,
        ok: result.ok,
        attempts: result.attempts,
        starts: starts.get(result.job.value) ?? [],
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
