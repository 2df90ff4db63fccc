/**
 * Four Node processes share one RedisTokenBucket (50/s, burst 10) and one RedisSemaphore
 * (limit 8) on the same key, each running `ratePoolFrom(ids, job, { concurrency: 8,
 * limiter, permits })` whose jobs are GETs to ONE local HTTP server here. The server keeps
 * the books: arrival times and requests in flight. Times are performance.timeOrigin +
 * performance.now() in every process (the machine's clock, sub-ms): the server's arrivals
 * and the workers' job starts are on one time line. Each worker warms up before it says
 * ready (see worker.ts); w0 starts first, the others join after the burst (goStaggered).
 * Then one process is killed with SIGKILL mid-run.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { EventEmitter, once } from 'node:events'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import type { Redis } from 'ioredis'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  client,
  deleteUnder,
  REDIS_URL,
  redisAvailable,
  requiredBurst,
  testPrefix,
  until,
} from './helpers.js'
import type { WorkerConfig } from './worker.js'

const redisUp = await redisAvailable('test/redis/multiprocess.test.ts')

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const WORKER = fileURLToPath(new URL('./worker.ts', import.meta.url))

const RATE = 50
const BURST = 10
const LIMIT = 8
const LEASE_MS = 1000
/**
 * Tolerance on the envelope, in tokens. Each grant is decided on Redis's clock and acted
 * on after the reply travels back, the timer fires (a setTimeout, even for a wait of 0)
 * and the request reaches the server: every arrival is its ideal instant plus a delay
 * ≥ 0 that varies from request to request. The ideal instants keep the envelope exactly
 * (store.test.ts checks that math with no tolerance); the arrivals can exceed it by
 * rate × (largest − smallest such delay) over a window that opens on a full bucket — here
 * only the start of the run. Measured on two cores with the rest of the suite running:
 * 10.00–10.14 typically, 10.31 in 1 run of 50 and 10.79 in another (one process stalled
 * ~16 ms while the bucket was full). 1 token = 20 ms of such stall at 50/s; a bucket not
 * shared, or granted twice, is off by 10 tokens or more.
 */
const JITTER_TOKENS = 1

/** Job duration at the server: 20–60 ms, fixed per id. */
const delayOf = (id: number) => 20 + ((id * 37) % 41)

interface Arrival {
  t: number
  worker: string
  id: number
}

/** The one downstream: records arrivals and in-flight counts; can hang chosen requests. */
class JobServer extends EventEmitter {
  readonly arrivals: Arrival[] = []
  inFlight = 0
  maxInFlight = 0
  /** Requests in flight per worker (ids). */
  readonly open = new Map<string, Set<number>>()
  hang: (worker: string, nth: number) => boolean = () => false
  readonly #server: Server
  readonly #seen = new Map<string, number>()

  constructor() {
    super()
    this.#server = createServer((req, res) => this.#handle(req, res))
  }

  async listen(): Promise<number> {
    this.#server.listen(0, '127.0.0.1')
    await once(this.#server, 'listening')
    return (this.#server.address() as AddressInfo).port
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections()
    this.#server.close()
    await once(this.#server, 'close')
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const t = performance.timeOrigin + performance.now()
    const worker = String(req.headers['x-worker'])
    const id = Number(req.url?.split('/')[2])
    if (id < 0) {
      // A worker's warm-up request: not counted.
      res.end('warm')
      return
    }
    const nth = (this.#seen.get(worker) ?? 0) + 1
    this.#seen.set(worker, nth)
    this.arrivals.push({ t, worker, id })
    this.inFlight++
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight)
    const open = this.open.get(worker) ?? new Set<number>()
    this.open.set(worker, open)
    open.add(id)
    let ended = false
    // 'finish' comes before the client can have the whole response; 'close' covers a
    // connection that goes away (a killed client).
    const end = () => {
      if (ended) return
      ended = true
      this.inFlight--
      open.delete(id)
      this.emit('end', worker, id)
    }
    res.once('finish', end)
    res.once('close', end)
    this.emit('arrival', worker, id)
    if (this.hang(worker, nth)) return
    const timer = setTimeout(() => res.end(`job ${id}`), delayOf(id))
    res.once('close', () => clearTimeout(timer))
  }
}

type Message =
  | { type: 'ready' }
  | { type: 'done'; id: number; ok: boolean; status?: number; error?: string; startedAt: number }
  | { type: 'end'; count: number }
  | { type: 'error'; message: string; code?: string }

/** A worker process and what it said on stdout. */
class Worker extends EventEmitter {
  readonly messages: Message[] = []
  stderr = ''
  readonly exited: Promise<number | null>
  readonly child: ChildProcess

  constructor(readonly config: WorkerConfig) {
    super()
    this.child = spawn(process.execPath, ['--import', 'tsx', WORKER, JSON.stringify(config)], {
      cwd: ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    this.exited = once(this.child, 'exit').then(([code]) => code as number | null)
    let buffer = ''
    this.child.stdout?.on('data', (chunk: Buffer) => {
      buffer += chunk.toString()
      for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
        const message = JSON.parse(buffer.slice(0, nl)) as Message
        buffer = buffer.slice(nl + 1)
        this.messages.push(message)
        this.emit('message', message)
      }
    })
    this.child.stderr?.on('data', (chunk: Buffer) => {
      this.stderr += chunk.toString()
    })
  }

  /** Resolves with the first message (past or future) that matches. */
  when(match: (message: Message) => boolean): Promise<Message> {
    const seen = this.messages.find(match)
    if (seen) return Promise.resolve(seen)
    return new Promise((resolve, reject) => {
      const onMessage = (message: Message) => {
        if (!match(message)) return
        this.off('message', onMessage)
        resolve(message)
      }
      this.on('message', onMessage)
      this.exited.then(() => {
        this.off('message', onMessage)
        reject(new Error(`${this.config.name} exited first; stderr:\n${this.stderr}`))
      })
    })
  }

  go(): void {
    this.child.stdin?.write('go\n')
  }

  done(): number[] {
    return this.messages.flatMap((m) => (m.type === 'done' && m.ok ? [m.id] : []))
  }
}

describe.skipIf(!redisUp)('four processes, one RedisTokenBucket and one RedisSemaphore', () => {
  let redis: Redis
  let server: JobServer
  let port: number
  let workers: Worker[] = []
  const prefixes: string[] = []

  beforeAll(() => {
    redis = client()
  })
  afterAll(async () => {
    for (const prefix of prefixes) await deleteUnder(redis, prefix)
    redis.disconnect()
  })
  afterEach(async () => {
    for (const worker of workers) {
      if (worker.child.exitCode === null && worker.child.signalCode === null) {
        worker.child.kill('SIGKILL')
      }
    }
    await Promise.all(workers.map((worker) => worker.exited))
    workers = []
    await server?.close()
  })

  async function startAll(jobsEach: number): Promise<{ key: string; workers: Worker[] }> {
    const key = testPrefix()
    prefixes.push(key)
    server = new JobServer()
    port = await server.listen()
    workers = [0, 1, 2, 3].map(
      (w) =>
        new Worker({
          name: `w${w}`,
          redisUrl: REDIS_URL,
          key,
          rate: RATE,
          burst: BURST,
          limit: LIMIT,
          leaseMs: LEASE_MS,
          concurrency: 8,
          port,
          ids: Array.from({ length: jobsEach }, (_, i) => w * 1000 + i),
        }),
    )
    await Promise.all(workers.map((worker) => worker.when((m) => m.type === 'ready')))
    return { key, workers }
  }

  /**
   * w0 starts alone; the other three join once the server has seen the burst's arrivals
   * (an event, not a delay). Five busy Node processes on two cores make the first
   * requests of processes that all wake at once arrive some ms late, and lateness at the
   * start of the run, where the bucket is full, is exactly what the envelope counts;
   * later, with the bucket empty, it cannot add up to a token. A process that did not
   * share the bucket would still burst on joining.
   */
  async function goStaggered(): Promise<void> {
    const burstSeen = new Promise<void>((resolve) => {
      const check = () => {
        if (server.arrivals.length < BURST) return
        server.off('arrival', check)
        resolve()
      }
      server.on('arrival', check)
    })
    workers[0]!.go()
    await burstSeen
    for (const worker of workers.slice(1)) worker.go()
  }

  /** Checks the envelope on the server's arrivals and on the workers' job starts. */
  function expectEnvelope(): { arrivals: number; starts: number } {
    const arrivals = requiredBurst(
      server.arrivals.map((a) => a.t),
      RATE,
    )
    const starts = requiredBurst(
      workers.flatMap((w) => w.messages.flatMap((m) => (m.type === 'done' ? [m.startedAt] : []))),
      RATE,
    )
    expect(arrivals, `burst the arrivals needed at ${RATE}/s`).toBeLessThanOrEqual(
      BURST + JITTER_TOKENS,
    )
    expect(starts, `burst the job starts needed at ${RATE}/s`).toBeLessThanOrEqual(
      BURST + JITTER_TOKENS,
    )
    // Not vacuous: the schedule really is rate-bound (the burst was used up).
    expect(arrivals).toBeGreaterThan(BURST - 1)
    return { arrivals, starts }
  }

  it('the combined arrivals keep the envelope and at most 8 are in flight', async () => {
    const jobsEach = 60
    await startAll(jobsEach)
    await goStaggered()
    const codes = await Promise.all(workers.map((worker) => worker.exited))
    for (const worker of workers) {
      expect(worker.stderr, `${worker.config.name} warned`).toBe('')
      expect(worker.messages.at(-1), worker.config.name).toEqual({ type: 'end', count: jobsEach })
      expect(worker.done().sort((a, b) => a - b)).toEqual(worker.config.ids)
    }
    expect(codes).toEqual([0, 0, 0, 0])
    expect(server.arrivals).toHaveLength(4 * jobsEach)
    const needed = expectEnvelope()
    // Eight permits are taken at once at the start (ten tokens, 32 slots): the cap is
    // reached, and never passed.
    expect(server.maxInFlight).toBe(LIMIT)
    console.info(
      `4 × ${jobsEach} jobs: burst needed by arrivals ${needed.arrivals.toFixed(3)}, by starts ` +
        `${needed.starts.toFixed(3)} (≤ ${BURST} + ${JITTER_TOKENS}), ` +
        `max in flight ${server.maxInFlight} (≤ ${LIMIT}), ` +
        `span ${(server.arrivals.at(-1)!.t - server.arrivals[0]!.t).toFixed(0)} ms`,
    )
  }, 20_000)

  it('kill -9 of one process: its leases lapse within leaseMs, the others finish every job', async () => {
    const jobsEach = 50
    const { key } = await startAll(jobsEach)
    const permits = `{${key}}:permits`
    const victim = workers[3]!
    const survivors = workers.slice(0, 3)
    const HANGING = 3
    // The victim's requests from its 3rd on are never answered: each holds a permit (the
    // pool holds it from slot to result) until the process dies.
    server.hang = (worker, nth) => worker === victim.config.name && nth >= 3
    const hanging = () => server.open.get(victim.config.name)?.size ?? 0
    const enough = new Promise<void>((resolve) => {
      const check = () => {
        if (hanging() < HANGING) return
        server.off('arrival', check)
        resolve()
      }
      server.on('arrival', check)
    })
    await goStaggered()
    await enough
    victim.child.kill('SIGKILL')
    // Every lease right after the kill, and Redis's clock then, in one transaction: an
    // acquire the victim sent just before it died may still run, but not between the two.
    const snapshot = await redis.multi().zrange(permits, 0, -1, 'WITHSCORES').time().exec()
    const atKill = snapshot?.[0]?.[1] as string[]
    const [seconds, micros] = snapshot?.[1]?.[1] as [string, string]
    const killedAt = Number(seconds) * 1000 + Number(micros) / 1000
    const scoreAtKill = new Map<string, number>()
    for (let i = 0; i < atKill.length; i += 2) scoreAtKill.set(atKill[i]!, Number(atKill[i + 1]))
    expect(await victim.exited).toBe(null)
    expect(victim.child.signalCode).toBe('SIGKILL')

    // The survivors' requests in flight at the kill end within 60 ms and their results
    // (written after the permit is given back) arrive: then every lease left from the
    // kill that was not renewed is the victim's.
    const inFlightAtKill = survivors.map((w) => [...(server.open.get(w.config.name) ?? [])])
    await Promise.all(
      survivors.flatMap((w, i) =>
        inFlightAtKill[i]!.map((id) => w.when((m) => m.type === 'done' && m.id === id)),
      ),
    )
    const leftover: string[] = []
    for (const [lease, score] of scoreAtKill) {
      const now = await redis.zscore(permits, lease)
      if (now !== null && Number(now) === score) leftover.push(lease)
    }
    expect(
      leftover.length,
      'the victim held a permit for each hanging request',
    ).toBeGreaterThanOrEqual(HANGING)
    expect(leftover.length).toBeLessThanOrEqual(LIMIT)
    // Each lapses within the lease TTL of the kill (its last renewal was before it)...
    for (const lease of leftover) {
      expect(scoreAtKill.get(lease)! - killedAt).toBeLessThanOrEqual(LEASE_MS)
    }
    // ...and the survivors' next acquire after that reclaims it (removes it from the set).
    const reclaimedAt = await until(
      'the dead process’s leases are reclaimed',
      async () => {
        const scores = await Promise.all(leftover.map((lease) => redis.zscore(permits, lease)))
        if (scores.some((s) => s !== null)) return false
        const [s, us] = await redis.time()
        return Number(s) * 1000 + Number(us) / 1000
      },
      { timeoutMs: LEASE_MS + 2000, everyMs: 10 },
    )
    // Within the TTL, plus the gap to the survivors' next acquire (≈ 1/rate) and polling.
    expect(reclaimedAt - killedAt).toBeLessThanOrEqual(LEASE_MS + 200)

    const codes = await Promise.all(survivors.map((worker) => worker.exited))
    expect(codes).toEqual([0, 0, 0])
    for (const worker of survivors) {
      expect(worker.messages.at(-1), worker.config.name).toEqual({ type: 'end', count: jobsEach })
      expect(worker.done().sort((a, b) => a - b)).toEqual(worker.config.ids)
    }
    expect(server.maxInFlight).toBeLessThanOrEqual(LIMIT)
    const needed = expectEnvelope()
    console.info(
      `kill -9: ${leftover.length} leases of the dead process reclaimed ` +
        `${(reclaimedAt - killedAt).toFixed(0)} ms after the kill (lease ${LEASE_MS} ms); ` +
        `burst needed by arrivals ${needed.arrivals.toFixed(3)}, by starts ` +
        `${needed.starts.toFixed(3)}; max in flight ${server.maxInFlight}`,
    )
  }, 20_000)
})
