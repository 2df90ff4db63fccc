/**
 * The test side of bucketWorker.ts: spawns worker processes, reads what they say, starts
 * and stops them together. Used by the bucket fault tests (restart*.test.ts,
 * fallback*.test.ts); each worker process is killed by its own PID if a test ends early.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { EventEmitter, once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { expect } from 'vitest'
import type { BucketWorkerConfig } from './bucketWorker.js'
import { epochNow } from './faults/epochNow.js'
import { HoldingProxy } from './faults/HoldingProxy.js'
import { RecordingServer } from './faults/RecordingServer.js'
import { RedisProcess, type RedisProcessOptions } from './faults/RedisProcess.js'
import { requiredBurst, testPrefix, until } from './helpers.js'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const WORKER = fileURLToPath(new URL('./bucketWorker.ts', import.meta.url))

export type WorkerMessage =
  | { type: 'ready' }
  | { type: 'grant'; t: number; local: boolean }
  | { type: 'refused'; code: string | null }
  | { type: 'charged'; debt: number | null; t: number }
  | { type: 'failed'; t: number }
  | { type: 'end'; grants: number; refused: number }

export class BucketWorker extends EventEmitter {
  readonly messages: WorkerMessage[] = []
  stderr = ''
  readonly child: ChildProcess
  readonly exited: Promise<number | null>

  constructor(readonly config: BucketWorkerConfig) {
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
        const message = JSON.parse(buffer.slice(0, nl)) as WorkerMessage
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
  when(match: (message: WorkerMessage) => boolean): Promise<WorkerMessage> {
    const seen = this.messages.find(match)
    if (seen) return Promise.resolve(seen)
    return new Promise((resolve, reject) => {
      const onMessage = (message: WorkerMessage) => {
        if (!match(message)) return
        this.off('message', onMessage)
        resolve(message)
      }
      this.on('message', onMessage)
      void this.exited.then(() => {
        this.off('message', onMessage)
        reject(new Error(`${this.config.name} exited first; stderr:\n${this.stderr}`))
      })
    })
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null
  }

  /** Grant times (epochNow() ms) as the worker saw them. */
  grants(): number[] {
    return this.messages.flatMap((m) => (m.type === 'grant' ? [m.t] : []))
  }

  /** Grant times while the bucket was falling back (see bucketWorker.ts). */
  localGrants(): number[] {
    return this.messages.flatMap((m) => (m.type === 'grant' && m.local ? [m.t] : []))
  }

  refused(): number {
    return this.messages.filter((m) => m.type === 'refused').length
  }

  /** Debts the bucket said it charged on its returns to Redis, in order. */
  charged(): { debt: number; t: number }[] {
    return this.messages.flatMap((m) =>
      m.type === 'charged' && m.debt !== null ? [{ debt: m.debt, t: m.t }] : [],
    )
  }
}

/** Spawns one worker per config; resolves when every one is ready. */
export async function startFleet(configs: BucketWorkerConfig[]): Promise<BucketWorker[]> {
  const workers = configs.map((config) => new BucketWorker(config))
  try {
    await Promise.all(workers.map((worker) => worker.when((m) => m.type === 'ready')))
  } catch (error) {
    await killFleet(workers)
    throw error
  }
  return workers
}

export function go(workers: readonly BucketWorker[]): void {
  for (const worker of workers) worker.child.stdin?.write('go\n')
}

/** Tells every worker to stop; resolves with their exit codes (each must end by itself). */
export async function stopFleet(workers: readonly BucketWorker[]): Promise<(number | null)[]> {
  for (const worker of workers) if (worker.running) worker.child.stdin?.write('stop\n')
  return Promise.all(workers.map((worker) => worker.exited))
}

/** SIGKILLs the workers still running (by their own PIDs) and awaits their exits. */
export async function killFleet(workers: readonly BucketWorker[]): Promise<void> {
  for (const worker of workers) if (worker.running) worker.child.kill('SIGKILL')
  await Promise.all(workers.map((worker) => worker.exited))
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** A fault injected mid-run, and when the test started it (epochNow() ms). */
export interface Mark {
  name: string
  at: number
}

export interface Phase {
  name: string
  fault: () => Promise<void>
}

/**
 * Runs a fleet: starts one worker per config (pushed into `fleet` at once, so that the
 * caller's cleanup finds them even if this throws), waits for `ready` (an async check,
 * e.g. Redis old enough), says go, runs `steadyMs`, then each phase's fault followed by
 * `steadyMs`, and stops the fleet (each worker must exit 0 with nothing on stderr).
 * Returns the server's arrival times of the grants (`/g/…`) and the marks.
 */
export async function runFleet(options: {
  configs: BucketWorkerConfig[]
  server: RecordingServer
  fleet: BucketWorker[]
  steadyMs: number
  phases: Phase[]
  ready?: () => Promise<unknown>
}): Promise<{ arrivals: number[]; marks: Mark[]; end: number }> {
  const workers = options.configs.map((config) => new BucketWorker(config))
  options.fleet.push(...workers)
  await Promise.all(workers.map((worker) => worker.when((m) => m.type === 'ready')))
  await options.ready?.()
  // The first worker alone takes the burst; the others join once the server has seen it
  // (an event, not a delay). Processes that all wake at once on two cores send their
  // first requests some ms late, and lateness while the bucket is full is exactly what
  // the envelope counts (later, the bucket empty, it cannot add up to a token). A process
  // that did not share the bucket would still burst on joining.
  const burst = options.configs[0]?.burst ?? 0
  go(workers.slice(0, 1))
  await options.server.until(
    () => options.server.requests.filter((r) => r.path.startsWith('/g/')).length >= burst,
    'the first worker’s burst',
  )
  go(workers.slice(1))
  await sleep(options.steadyMs)
  const marks: Mark[] = []
  for (const phase of options.phases) {
    marks.push({ name: phase.name, at: epochNow() })
    await phase.fault()
    await sleep(options.steadyMs)
  }
  const end = epochNow()
  const codes = await stopFleet(workers)
  const problems = workers.flatMap((worker, i) =>
    codes[i] === 0 && worker.stderr === ''
      ? []
      : [`${worker.config.name} exited ${codes[i]}: ${worker.stderr}`],
  )
  if (problems.length > 0) throw new Error(problems.join('\n'))
  const arrivals = options.server.requests.filter((r) => r.path.startsWith('/g/')).map((r) => r.at)
  if (process.env.RXF_DEBUG) {
    const t0 = arrivals[0] ?? 0
    for (const worker of workers) {
      const events = worker.messages.flatMap((m) =>
        m.type === 'failed' || m.type === 'charged'
          ? [`${m.type}${m.type === 'charged' ? `(${m.debt})` : ''}@${(m.t - t0).toFixed(0)}`]
          : [],
      )
      console.log(`${worker.config.name}: ${events.join(' ')}`)
    }
    console.log(marks.map((m) => `${m.name}@${(m.at - t0).toFixed(0)}`).join(' '))
    console.log(
      options.server.requests
        .filter((r) => r.path.startsWith('/g/'))
        .map((r) => `${(r.at - t0).toFixed(0)}:${r.path.slice(3)}`)
        .join(' '),
    )
  }
  return { arrivals, marks, end }
}

/** Resolves once `redis` has been up for `seconds` (INFO uptime_in_seconds). */
export function olderThan(redis: RedisProcess, seconds: number): Promise<unknown> {
  return until(
    `redis up for ${seconds} s`,
    async () => Number((await redis.info('server')).uptime_in_seconds) >= seconds,
    { timeoutMs: (seconds + 3) * 1000, everyMs: 100 },
  )
}

/**
 * The envelope figures of a run: the burst the merged arrivals need at `rate` over the
 * whole run and before the first fault, and the arrivals in each phase, from its fault to
 * the next (how much granting went on after the fault).
 */
export function envelopeFigures(
  run: { arrivals: number[]; marks: Mark[]; end: number },
  rate: number,
) {
  const { arrivals, marks, end } = run
  const first = marks[0]?.at ?? end
  return {
    whole: requiredBurst(arrivals, rate),
    beforeFaults: requiredBurst(
      arrivals.filter((t) => t < first),
      rate,
    ),
    count: arrivals.length,
    perPhase: marks.map((mark, i) => {
      const phaseEnd = marks[i + 1]?.at ?? end
      return arrivals.filter((t) => t >= mark.at && t < phaseEnd).length
    }),
  }
}

/** What a fleet test starts, for its cleanup to stop (whatever happened). */
export interface Scenario {
  redis: RedisProcess | null
  server: RecordingServer | null
  proxies: HoldingProxy[]
  fleet: BucketWorker[]
}

export const newScenario = (): Scenario => ({
  redis: null,
  server: null,
  proxies: [],
  fleet: [],
})

/** Kills the workers still running, closes the proxies, stops Redis and the server. */
export async function cleanUp(scenario: Scenario): Promise<void> {
  await killFleet(scenario.fleet)
  scenario.fleet.length = 0
  await Promise.all(scenario.proxies.map((proxy) => proxy.close()))
  scenario.proxies = []
  await scenario.redis?.stop()
  scenario.redis = null
  await scenario.server?.close()
  scenario.server = null
}

/**
 * One run, one fault, on a redis-server of its own: `processes` workers share a bucket
 * (`rate`, `burst`) and saturate it; the run starts once Redis is older than a refill
 * (so the bucket starts full), goes on `steadyMs` (the burst is used up and no slack is
 * left to hide an excess), then `fault`, then `steadyMs` more.
 */
export async function runOneFault(
  scenario: Scenario,
  options: {
    label: string
    redisOptions?: RedisProcessOptions
    processes: number
    rate: number
    burst: number
    steadyMs: number
    worker: Omit<BucketWorkerConfig, 'name' | 'port' | 'key' | 'rate' | 'burst' | 'origin'>
    fault: (redis: RedisProcess) => Promise<unknown>
  },
) {
  const redis = await RedisProcess.start(options.redisOptions)
  scenario.redis = redis
  const server = await RecordingServer.start()
  scenario.server = server
  const key = testPrefix()
  const configs = Array.from({ length: options.processes }, (_, w) => ({
    ...options.worker,
    name: `w${w}`,
    port: redis.port,
    key,
    rate: options.rate,
    burst: options.burst,
    origin: server.origin,
  }))
  const run = await runFleet({
    configs,
    server,
    fleet: scenario.fleet,
    steadyMs: options.steadyMs,
    phases: [{ name: options.label, fault: () => options.fault(redis).then(() => {}) }],
    ready: () => olderThan(redis, options.burst / options.rate),
  })
  return { ...envelopeFigures(run, options.rate), run }
}

// ── item 3: one fault under 'fail-closed' ────────────────────────────────────────────

export const RATE = 10
export const BURST = 20
/** Network and event-loop jitter allowed on the envelope: 1 token = 100 ms at 10/s. */
export const JITTER_TOKENS = 1

/**
 * Three processes, four takes waiting in each, 'fail-closed' with the user's own clients
 * that wait for Redis and a store timeout longer than the outage. Asserts the envelope
 * over the whole run, that the run used its burst, that granting went on after the
 * fault, and that no take was refused.
 */
export async function failClosedAcross(
  scenario: Scenario,
  label: string,
  fault: (redis: RedisProcess) => Promise<unknown>,
  redisOptions: RedisProcessOptions = {},
) {
  const figures = await runOneFault(scenario, {
    label,
    redisOptions,
    processes: 3,
    rate: RATE,
    burst: BURST,
    steadyMs: 2000,
    worker: {
      client: 'waiting',
      onStoreError: 'fail-closed',
      storeTimeoutMs: 10_000,
      outstanding: 4,
    },
    fault,
  })
  // The figures first: a failed run must still show them.
  console.log(
    `${label}: burst needed ${figures.whole.toFixed(2)} (≤ ${BURST} + ${JITTER_TOKENS}; ` +
      `${figures.beforeFaults.toFixed(2)} before the fault), ${figures.count} arrivals, ` +
      `${figures.perPhase[0]} since the fault began`,
  )
  expect(figures.whole, `burst the merged arrivals needed at ${RATE}/s`).toBeLessThanOrEqual(
    BURST + JITTER_TOKENS,
  )
  // Not vacuous: the run started with the whole burst and used it up...
  expect(figures.beforeFaults).toBeGreaterThan(BURST - 1)
  // ...and granting went on after the fault. (A loss costs a stall of about the debt the
  // fleet held, 0.5–1.2 s here: the reservations held are charged again.)
  expect(figures.perPhase[0]).toBeGreaterThanOrEqual(RATE / 2)
  // The takes waited through the outage: none was refused.
  expect(scenario.fleet.map((w) => w.refused())).toEqual([0, 0, 0])
  return figures
}

// ── item 4: a flapping partition under 'local-fallback' ───────────────────────────────

export const SHARE = 0.25
export const DOWN_MS = 1200
export const UP_MS = 300
export const FLAPS = 5

/**
 * Three processes share a bucket (10/s, burst 20) under 'local-fallback' at localShare
 * 0.25, each through a HoldingProxy of its own to a redis-server of the scenario's own,
 * four takes waiting in each. After 2 s the processes at `cut` are partitioned from Redis
 * 5 × (1.2 s down, 0.3 s up); then 2 s more.
 */
export async function runFlapping(scenario: Scenario, cut: number[]) {
  const processes = 3
  const redis = await RedisProcess.start()
  scenario.redis = redis
  const server = await RecordingServer.start()
  scenario.server = server
  scenario.proxies = await Promise.all(
    Array.from({ length: processes }, () => HoldingProxy.start(redis.port)),
  )
  const proxies = scenario.proxies
  const key = testPrefix()
  const configs: BucketWorkerConfig[] = proxies.map((proxy, w) => ({
    name: `w${w}`,
    port: proxy.port,
    key,
    rate: RATE,
    burst: BURST,
    origin: server.origin,
    client: 'url',
    onStoreError: 'local-fallback',
    localShare: SHARE,
    // A failure is seen within 200 ms, and Redis is tried again every 100 ms after one:
    // a probe reaches Redis within each 0.3 s that the partition is healed.
    storeTimeoutMs: 200,
    retryStoreAfterMs: 100,
    outstanding: 4,
  }))
  const run = await runFleet({
    configs,
    server,
    fleet: scenario.fleet,
    steadyMs: 2000,
    ready: () => olderThan(redis, BURST / RATE),
    phases: [
      {
        name: 'flapping',
        fault: async () => {
          for (let i = 0; i < FLAPS; i++) {
            for (const w of cut) proxies[w]?.hold()
            await sleep(DOWN_MS)
            for (const w of cut) proxies[w]?.release()
            await sleep(UP_MS)
          }
        },
      },
    ],
  })
  return {
    ...envelopeFigures(run, RATE),
    /** Grants while each process was falling back (see bucketWorker.ts). */
    local: scenario.fleet.map((w) => w.localGrants().length),
    /** The debt each process said it charged as it came back to Redis, summed. */
    charged: scenario.fleet.map((w) => w.charged().reduce((sum, c) => sum + c.debt, 0)),
  }
}
