/**
 * One process of the lease tests (run with `node --import tsx`): a RedisSemaphore with a
 * connection of its own (straight to Redis, or through the test's HoldingProxy), shared by
 * key with the other processes, and a pool whose jobs are GETs to the test's
 * RecordingServer, each request cut by its job's signal. `client: 'pool'` runs
 * `ratePoolFrom` over endless ids (until "stop"); `'fanout'` runs a FanOutClient over
 * `jobs` ids. Either way the permits are the semaphore and the local concurrency is
 * `concurrency`.
 *
 * The Redis client waits for Redis (maxRetriesPerRequest: null) and `storeTimeoutMs` is
 * set longer than the tests' outages: waiters ride an outage out instead of failing the
 * pool, so what is measured is what the holders do. A lease's end does not depend on
 * either: its deadline is its own.
 *
 * argv[2]: a JSON LeaseWorkerConfig. stdin, one command a line:
 *   go          start the pool
 *   stop        drain: no new job; running ones (and their retries) finish, then "end"
 *   stall <ms>  block the event loop from just before the earliest deadline of the leases
 *               held now until <ms> past it: a stall of the holder at its worst moment
 * stdout, NDJSON:
 *   {"type":"ready"}
 *   {"type":"attempt","id","attempt","at"}        a job's attempt sends its request
 *   {"type":"aborted","id","attempt","at","code"} that attempt's signal aborted
 *   {"type":"result","id","ok","attempts","code"}  the pool's result for a job
 *   {"type":"lease","id","sentAt"} / {"type":"renewed","ids","sentAt"} / {"type":"gone","id"}
 *                                       leases as confirmed to this process (Date.now())
 *   {"type":"stalled","deadline","from","to"}     the stall done (epochNow() ms)
 *   {"type":"log","msg","code"}                   a warning of rx-fanout
 *   {"type":"end","count"} / {"type":"error","message","code"}
 * Times `at` are epochNow() (comparable with the RecordingServer's).
 */
import { Agent, request } from 'node:http'
import { createInterface } from 'node:readline'
import { Writable } from 'node:stream'
import { Redis } from 'ioredis'
import { pino } from 'pino'
import { firstValueFrom, type Observable } from 'rxjs'
import { FanOutClient } from '../../src/http/FanOutClient.js'
import { ratePoolFrom } from '../../src/ratePoolFrom.js'
import { RedisSemaphore } from '../../src/redis/RedisSemaphore.js'
import type { Result, TaskContext } from '../../src/types.js'
import { epochNow } from './faults/epochNow.js'

export interface LeaseWorkerConfig {
  name: string
  /** Where this process reaches Redis: the server's port, or a HoldingProxy's. */
  redisPort: number
  key: string
  limit: number
  leaseMs: number
  storeTimeoutMs: number
  concurrency: number
  /** The RecordingServer; requests go to `/w/<name>/<id>`. */
  origin: string
  client: 'pool' | 'fanout'
  /** 'fanout': ids 0 … jobs − 1. */
  jobs?: number
  /** Attempts per job (LeaseLostError is retried). */
  attempts: number
}

const config = JSON.parse(process.argv[2] ?? '') as LeaseWorkerConfig
const send = (message: object) => process.stdout.write(`${JSON.stringify(message)}\n`)
const codeOf = (error: unknown) => (error as { code?: unknown } | null)?.code

// rx-fanout's warnings, forwarded as messages (a lost lease is one).
const logger = pino(
  { level: 'warn' },
  new Writable({
    write(line: Buffer, _encoding, done) {
      const record = JSON.parse(line.toString()) as { msg?: string; err?: { code?: string } }
      send({ type: 'log', msg: record.msg, code: record.err?.code })
      done()
    },
  }),
)

const redis = new Redis({ host: '127.0.0.1', port: config.redisPort, maxRetriesPerRequest: null })
redis.on('error', () => {})
const semaphore = new RedisSemaphore({
  redis,
  key: config.key,
  limit: config.limit,
  leaseMs: config.leaseMs,
  storeTimeoutMs: config.storeTimeoutMs,
  logger,
})

// ── what Redis confirmed of this process's leases (for the stall, and for the tests) ──
// The semaphore's own books are private; its script calls are not: each is wrapped to see
// when a confirmation was sent (the lease's deadline counts from there) and what came back.
const marginMs = Math.max(200, Math.ceil(config.leaseMs / 10)) // the default safetyMarginMs
const confirmedSentAt = new Map<string, number>()
type Scripted = Record<string, (...args: unknown[]) => Promise<unknown>>
const scripts = redis as unknown as Scripted
/** The scripts' ARGV before their own: the lease set, meta, and 7 common values. */
const HEAD = 9
function wrap(name: string, after: (args: unknown[], reply: unknown, sentAt: number) => void) {
  const original = scripts[name]
  if (typeof original !== 'function') return
  scripts[name] = (...args: unknown[]) => {
    const sentAt = Date.now()
    const reply = original.apply(redis, args)
    reply.then(
      (value) => {
        try {
          after(args, value, sentAt)
        } catch {
          // A reply of another shape (the scripts before issue 8): nothing to report.
        }
      },
      () => {},
    )
    return reply
  }
}
wrap('rxfAcquire', (args, reply, sentAt) => {
  if ((reply as unknown[])[0] !== 'ok') return
  const id = String(args[HEAD + 1])
  confirmedSentAt.set(id, sentAt)
  send({ type: 'lease', id, sentAt })
})
wrap('rxfRenew', (args, reply, sentAt) => {
  const ids = args.slice(HEAD).map(String)
  const kept = (reply as unknown[]).slice(2)
  const renewed = ids.filter((id, i) => Number(kept[i]) === 1 && confirmedSentAt.has(id))
  for (const id of renewed) confirmedSentAt.set(id, sentAt)
  send({ type: 'renewed', ids: renewed, sentAt })
})
wrap('rxfRelease', (args) => {
  const id = String(args[2])
  confirmedSentAt.delete(id)
  send({ type: 'gone', id })
})

function stall(ms: number): void {
  if (confirmedSentAt.size === 0) {
    send({ type: 'error', message: 'stall: no lease held' })
    return
  }
  const deadline = Math.min(...confirmedSentAt.values()) + config.leaseMs - marginMs
  // Begin a little before the deadline (a timer may be late), end `ms` after it: the
  // deadline's own timer then runs `ms` late, the longest stall the margin is meant for.
  // The thread is blocked in Atomics.wait rather than spinning: the event loop is stuck
  // all the same (as in a long GC pause or a synchronous hog), but a process that spins on
  // a loaded two-core machine is descheduled by the OS, and the stall overshot by 90 ms
  // in one run — a longer stall than the one stated.
  setTimeout(
    () => {
      const from = Date.now()
      const cell = new Int32Array(new SharedArrayBuffer(4))
      for (let left = deadline + ms - Date.now(); left > 0; left = deadline + ms - Date.now()) {
        Atomics.wait(cell, 0, 0, left)
      }
      const to = Date.now()
      // On the epochNow() line, as every other time this process reports.
      const shift = epochNow() - Date.now()
      send({ type: 'stalled', deadline: deadline + shift, from: from + shift, to: to + shift })
    },
    Math.max(0, deadline - Date.now() - 20),
  )
}

// ── the jobs ──
const agent = new Agent({ keepAlive: true })
const url = new URL(config.origin)

function get(path: string, signal?: AbortSignal): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: url.hostname, port: url.port, path, agent, ...(signal ? { signal } : {}) },
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

function job(id: number, ctx: TaskContext<number>): Promise<number> {
  const { attempt, signal } = ctx
  send({ type: 'attempt', id, attempt, at: epochNow() })
  signal.addEventListener(
    'abort',
    () => send({ type: 'aborted', id, attempt, at: epochNow(), code: codeOf(signal.reason) }),
    { once: true },
  )
  return get(`/w/${config.name}/${id}`, signal)
}

function* endless(): Generator<number> {
  for (let id = 0; ; id++) yield id
}

const drain = new AbortController()
let fanout: FanOutClient | null = null

function run(): Observable<Result<number, unknown>> {
  if (config.client === 'pool') {
    return ratePoolFrom(endless(), job, {
      concurrency: config.concurrency,
      permits: semaphore,
      errors: 'collect',
      retry: { attempts: config.attempts, baseDelayMs: 20 },
      drain: drain.signal,
    })
  }
  fanout = new FanOutClient({
    baseUrl: config.origin,
    path: `/w/${config.name}/{id}`,
    // The shared cap is what binds here, not the rate.
    rate: 10_000,
    burst: 100,
    maxInFlight: config.concurrency,
    permits: semaphore,
    retry: { attempts: config.attempts, baseDelayMs: 20 },
    logger,
  })
  const ids = Array.from({ length: config.jobs ?? 0 }, (_, i) => i)
  return fanout.fetchEach$(ids, { errors: 'collect', drain: drain.signal }) as Observable<
    Result<number, unknown>
  >
}

async function shutdown(code: number): Promise<never> {
  await Promise.allSettled([semaphore.close(), fanout?.close()])
  redis.disconnect()
  agent.destroy()
  process.exit(code)
}

// Warm up before "ready": a permit (a fresh Redis makes the first wait, see coldStart) and
// one request, so that the sockets are open when the run starts.
await firstValueFrom(semaphore.acquire()).then((release) => release())
await get(`/warm/${config.name}`)

const lines = createInterface({ input: process.stdin })
lines.on('line', (line) => {
  const [command, arg] = line.trim().split(/\s+/)
  if (command === 'stop') drain.abort()
  else if (command === 'stall') stall(Number(arg))
  else if (command === 'go') {
    let count = 0
    run().subscribe({
      next: (result) => {
        count++
        send({
          type: 'result',
          id: Number(result.job.value),
          ok: result.ok,
          attempts: result.attempts,
          code: result.ok ? undefined : codeOf(result.error),
        })
      },
      error: (error: unknown) => {
        send({ type: 'error', message: String(error), code: codeOf(error) })
        void shutdown(1)
      },
      complete: () => {
        send({ type: 'end', count })
        lines.close()
        void shutdown(0)
      },
    })
  }
})
send({ type: 'ready' })
