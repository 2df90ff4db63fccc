/**
 * One process of the bucket fault tests (restart*.test.ts, fallback*.test.ts), run with
 * `node --import tsx`: a RedisTokenBucket shared with the other processes (same key), and
 * a backlog that never empties — `outstanding` takes waiting at all times, each grant sent
 * at once as a GET to the test's RecordingServer (not awaited: the next take starts right
 * away). The server's arrival times are what the tests measure.
 *
 * argv[2]: a JSON BucketWorkerConfig. Protocol, NDJSON on stdout:
 *   {"type":"ready"}                       then it waits for "go\n" on stdin
 *   {"type":"grant","t":…,"local":…}       per grant, epochNow() ms; local: the bucket was
 *                                          falling back (a local grant, or one reserved
 *                                          before the failure and delivered during it)
 *   {"type":"refused","code":…}            a take that errored (fail-closed); retried later
 *   {"type":"charged","debt":…,"t":…}      the bucket said local grants were charged
 *   {"type":"failed","t":…}                the bucket logged a failed call to Redis
 *   {"type":"end","grants":…,"refused":…}  after "stop\n": closed; exit code 0
 */
import { Agent, request } from 'node:http'
import { createInterface } from 'node:readline'
import { Redis } from 'ioredis'
import { pino } from 'pino'
import { lastValueFrom, type Subscription } from 'rxjs'
import { RedisTokenBucket } from '../../src/redis/RedisTokenBucket.js'

export interface BucketWorkerConfig {
  name: string
  /** The port to reach Redis on (Redis itself, or a HoldingProxy in front of it). */
  port: number
  /**
   * 'waiting': the user's own ioredis client, told to keep commands until Redis is back
   * (maxRetriesPerRequest: null); 'url': the bucket's own client from a redis:// URL
   * (fails a command after one reconnection attempt).
   */
  client: 'waiting' | 'url'
  key: string
  rate: number
  burst: number
  onStoreError: 'fail-closed' | 'local-fallback'
  localShare?: number
  storeTimeoutMs?: number
  retryStoreAfterMs?: number
  /** Takes waiting at all times. */
  outstanding: number
  /** The RecordingServer's origin. */
  origin: string
  /** After a refused take, take again after this long. Default 50 ms. */
  retryRefusedMs?: number
}

const config = JSON.parse(process.argv[2] ?? '') as BucketWorkerConfig
const send = (message: object) => process.stdout.write(`${JSON.stringify(message)}\n`)
const epochNow = () => performance.timeOrigin + performance.now()

// The bucket's own log, read for one record: how much local debt was charged on return.
const logger = pino(
  { level: 'info' },
  {
    write(line: string) {
      const record = JSON.parse(line) as { msg?: string; charged?: number; level?: number }
      if (record.msg === 'redis answers again: back to the shared bucket') {
        send({ type: 'charged', debt: record.charged ?? null, t: epochNow() })
      } else if (record.msg === 'redis failed') {
        send({ type: 'failed', t: epochNow() })
      } else if ((record.level ?? 0) >= 50) {
        process.stderr.write(line)
      }
    },
  },
)

let redis: Redis | null = null
if (config.client === 'waiting') {
  redis = new Redis({
    host: '127.0.0.1',
    port: config.port,
    maxRetriesPerRequest: null,
    // Back quickly after a restart (ioredis's default backs off up to 2 s).
    retryStrategy: (times) => Math.min(times * 20, 200),
  })
  redis.on('error', () => {})
}

const bucket = new RedisTokenBucket({
  redis: redis ?? `redis://127.0.0.1:${config.port}`,
  key: config.key,
  rate: config.rate,
  burst: config.burst,
  onStoreError: config.onStoreError,
  ...(config.localShare === undefined ? {} : { localShare: config.localShare }),
  ...(config.storeTimeoutMs === undefined ? {} : { storeTimeoutMs: config.storeTimeoutMs }),
  ...(config.retryStoreAfterMs === undefined
    ? {}
    : { retryStoreAfterMs: config.retryStoreAfterMs }),
  logger,
})
const agent = new Agent({ keepAlive: true, maxSockets: 64 })
const origin = new URL(config.origin)

let inFlight = 0
let drained: (() => void) | null = null
/** One GET to the server, not awaited by the caller; resolves when answered (or failed). */
function get(path: string): Promise<void> {
  inFlight++
  return new Promise<void>((resolve) => {
    const done = () => {
      if (--inFlight === 0) drained?.()
      resolve()
    }
    const req = request(
      {
        host: origin.hostname,
        port: origin.port,
        path,
        agent,
        headers: { 'x-worker': config.name },
      },
      (res) => {
        res.resume()
        res.once('end', done)
        res.once('error', done)
      },
    )
    req.once('error', done)
    req.end()
  })
}

let stopped = false
let grants = 0
let refused = 0
let seq = 0
const takes = new Set<Subscription>()

function takeOne(): void {
  if (stopped) return
  let subscription: Subscription | null = null
  let finished = false
  subscription = bucket.take().subscribe({
    complete: () => {
      finished = true
      if (subscription) takes.delete(subscription)
      if (stopped) return
      grants++
      send({ type: 'grant', t: epochNow(), local: bucket.fallingBack })
      void get(`/g/${config.name}/${seq++}`)
      takeOne()
    },
    error: (error: unknown) => {
      finished = true
      if (subscription) takes.delete(subscription)
      if (stopped) return
      refused++
      send({ type: 'refused', code: (error as { code?: unknown } | null)?.code ?? null })
      setTimeout(takeOne, config.retryRefusedMs ?? 50)
    },
  })
  if (!finished) takes.add(subscription)
}

async function stop(): Promise<void> {
  stopped = true
  for (const subscription of takes) subscription.unsubscribe()
  takes.clear()
  await bucket.close()
  if (inFlight > 0) await new Promise<void>((resolve) => (drained = resolve))
  agent.destroy()
  redis?.disconnect()
  send({ type: 'end', grants, refused })
  process.exit(0)
}

// Warm up before "ready", so that the first grants of the run are not later than the
// next ones (lateness while the bucket is full is what the envelope counts): a bucket of
// this worker's own on the same client takes a few tokens, each sent as a GET to /warm
// (which the tests do not count). That opens the connections, loads the scripts and runs
// every code path once. A short storeTimeoutMs may be too short for the first connection
// on a busy machine: the warm-up tries again.
const warm = new RedisTokenBucket({
  redis: redis ?? `redis://127.0.0.1:${config.port}`,
  key: `${config.key}:warm:${config.name}`,
  rate: config.rate,
  burst: config.burst,
  storeTimeoutMs: 2000,
})
for (let attempt = 1; ; attempt++) {
  try {
    await bucket.peek()
    await Promise.all(
      Array.from({ length: config.outstanding * 2 }, () =>
        lastValueFrom(warm.take(), { defaultValue: undefined }).then(() => get('/warm')),
      ),
    )
    break
  } catch (error) {
    if (attempt >= 20) throw error
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}
await warm.close()

const lines = createInterface({ input: process.stdin })
lines.on('line', (line) => {
  if (line === 'go') for (let i = 0; i < config.outstanding; i++) takeOne()
  else if (line === 'stop') {
    lines.close()
    void stop()
  }
})
send({ type: 'ready' })
