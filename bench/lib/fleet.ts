/**
 * The fault rows of the redis benchmark (issue 8, items 3 and 4), as the fault tests run
 * them (test/redis/bucketFleet.ts, restart.test.ts, fallback.test.ts) but without vitest,
 * against the compiled library, and measured at the workers: grant times as each worker
 * process saw them (`performance.timeOrigin + performance.now()`, comparable across the
 * processes of one machine), merged.
 *
 * One case is a coordinator (`fault`): it starts a redis-server of its own (RedisProcess:
 * free port, temp dir, no persistence), spawns the worker processes (this same child
 * script, case `fleetWorker`), starts the first one alone until it has taken the burst and
 * then the others (lateness while the bucket is full is what an envelope counts, and
 * processes that all wake at once on two cores are late), lets them take `steadyMs`,
 * injects the fault, lets them take `afterMs` more, stops them and merges their grants.
 *
 * - `restart`: SIGKILL the redis-server and start it again on the same port (no data
 *   survives). Each worker's takes wait through the outage ('fail-closed' with the user's
 *   own ioredis client, maxRetriesPerRequest null, and storeTimeoutMs 10 s, as
 *   restart.test.ts does): none is refused.
 * - `flapping`: every worker reaches Redis through a HoldingProxy of its own (a partition
 *   that holds bytes); all are cut off `flaps` × (`downMs` down, `upMs` up), under
 *   'local-fallback' at `localShare`, with the bucket's own client from a redis:// URL
 *   (storeTimeoutMs 200, retryStoreAfterMs 100, as fallback.test.ts does).
 *
 * The figure is the required capacity of the merged grant times at the bucket's rate
 * (`requiredCapacity`, harness.ts): what burst a bucket of that rate would have needed to
 * make those grants. Item 3's bound is burst + 1 across a restart, item 4's 2·burst + 1
 * through the flapping partition (1 token of jitter: 100 ms at 10/s).
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import type { Redis } from 'ioredis'
import type { Observable, Subscription } from 'rxjs'
import type {
  HoldingProxy as HoldingProxyType,
  RedisProcess as RedisProcessType,
} from './faults.js'
import { type Metrics, requiredCapacity } from './harness.js'

const HOST = '127.0.0.1'
const fineNow = () => performance.timeOrigin + performance.now()
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Our RedisTokenBucket, the baseline build's (`--baseline`), or rate-limiter-flexible. */
export type FleetImpl = 'bucket' | 'before' | 'rlf'

export interface FleetWorkerParams {
  name: string
  impl: FleetImpl
  /** The baseline build's dist folder, for 'before'. */
  baselineDist: string | null
  /** Redis itself, or a HoldingProxy in front of it. */
  port: number
  /**
   * 'waiting': an ioredis client of the worker's own that keeps commands until Redis is
   * back (maxRetriesPerRequest null); 'url': the bucket's own client from a redis:// URL.
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
}

type FromWorker = { type: 'ready' } | { type: 'grant'; t: number; local: boolean }
type ToWorker = { type: 'go' } | { type: 'stop' }

/** What the fleet worker uses of a RedisTokenBucket, ours or the baseline's. */
interface BucketLike {
  take(): Observable<void>
  peek(): Promise<unknown>
  close(): Promise<void>
  readonly fallingBack: boolean
  /** RESERVE calls (ours only: the baseline has no counter). */
  readonly roundTrips?: number
}
type BucketClass = new (options: Record<string, unknown>) => BucketLike

/** The RedisTokenBucket class of the build measured, or of the baseline build. */
export async function bucketClass(
  impl: 'bucket' | 'before',
  baselineDist: string | null,
): Promise<BucketClass> {
  if (impl === 'bucket') {
    const { RedisTokenBucket } = await import('../../src/redis/index.js')
    return RedisTokenBucket as unknown as BucketClass
  }
  if (baselineDist === null) throw new Error('a "before" row needs --baseline')
  // A computed specifier: esbuild leaves it to Node, which loads the baseline's build.
  const url = pathToFileURL(join(baselineDist, 'redis', 'index.js')).href
  const lib = (await import(url)) as { RedisTokenBucket: BucketClass }
  return lib.RedisTokenBucket
}

function nextMessage<T>(predicate: (m: T) => boolean): Promise<T> {
  return new Promise((resolve) => {
    const on = (m: T) => {
      if (!predicate(m)) return
      process.off('message', on)
      resolve(m)
    }
    process.on('message', on)
  })
}

/**
 * One worker process: warms up on a key of its own, says `ready`, and on `go` keeps
 * `outstanding` takes waiting on the shared key, sending every grant's time to the
 * coordinator as it happens; on `stop` cancels what waits, closes, and returns its counts.
 */
export async function fleetWorker(p: FleetWorkerParams): Promise<Metrics> {
  const send = (m: FromWorker) => process.send?.(m)
  if (!process.send) throw new Error('the fleet worker needs an IPC channel')
  // The coordinator gone (killed), nothing will say stop: do not take on forever.
  process.once('disconnect', () => process.exit(1))
  const { Redis } = await import('ioredis')
  let redis: Redis | null = null
  if (p.client === 'waiting' || p.impl === 'rlf') {
    redis = new Redis({
      host: HOST,
      port: p.port,
      maxRetriesPerRequest: p.client === 'waiting' ? null : 1,
      // Back quickly after a restart (ioredis's default backs off up to 2 s).
      retryStrategy: (times) => Math.min(times * 20, 200),
    })
    redis.on('error', () => {})
  }
  let stopped = false
  let grants = 0
  let local = 0
  let refused = 0
  const granted = (isLocal: boolean) => {
    grants++
    if (isLocal) local++
    send({ type: 'grant', t: fineNow(), local: isLocal })
  }

  let begin: () => void
  let end: () => Promise<number | null>
  if (p.impl === 'rlf') {
    const { RateLimiterRedis, RateLimiterRes } = await import('rate-limiter-flexible')
    const client = redis as Redis
    // Fixed window: `burst` points per burst/rate seconds (20 per 2 s at 10/s).
    const limiter = new RateLimiterRedis({
      storeClient: client,
      keyPrefix: `${p.key}:rlf`,
      points: p.burst,
      duration: Math.max(1, Math.round(p.burst / p.rate)),
    })
    const warm = new RateLimiterRedis({
      storeClient: client,
      keyPrefix: `${p.key}:warm:${p.name}`,
      points: 1e9,
      duration: 60,
    })
    for (let i = 0; i < p.outstanding * 2; i++) await warm.consume('w')
    // A rejection is a RateLimiterRes (wait msBeforeNext, then again); an Error is Redis
    // failing (refused, again after 50 ms).
    const loop = async () => {
      while (!stopped) {
        try {
          await limiter.consume('shared')
          if (!stopped) granted(false)
        } catch (error) {
          if (error instanceof RateLimiterRes) await sleep(Math.max(1, error.msBeforeNext))
          else {
            refused++
            await sleep(50)
          }
        }
      }
    }
    begin = () => {
      for (let i = 0; i < p.outstanding; i++) void loop()
    }
    end = async () => {
      stopped = true
      return null
    }
  } else {
    const Bucket = await bucketClass(p.impl, p.baselineDist)
    const target = redis ?? `redis://${HOST}:${p.port}`
    const bucket = new Bucket({
      redis: target,
      key: p.key,
      rate: p.rate,
      burst: p.burst,
      onStoreError: p.onStoreError,
      ...(p.localShare === undefined ? {} : { localShare: p.localShare }),
      ...(p.storeTimeoutMs === undefined ? {} : { storeTimeoutMs: p.storeTimeoutMs }),
      ...(p.retryStoreAfterMs === undefined ? {} : { retryStoreAfterMs: p.retryStoreAfterMs }),
    })
    // Warm-up on a bucket of this worker's own on the same kind of client: connections
    // open, scripts loaded, code paths run once. A short storeTimeoutMs may be too short
    // for the first connection on a busy machine: try again.
    const warm = new Bucket({
      redis: target,
      key: `${p.key}:warm:${p.name}`,
      rate: p.rate,
      burst: p.burst,
      storeTimeoutMs: 2000,
    })
    const takeOnce = (b: BucketLike) =>
      new Promise<void>((resolve, reject) =>
        b.take().subscribe({ complete: resolve, error: reject }),
      )
    for (let attempt = 1; ; attempt++) {
      try {
        await bucket.peek()
        await Promise.all(Array.from({ length: p.outstanding * 2 }, () => takeOnce(warm)))
        break
      } catch (error) {
        if (attempt >= 20) throw error
        await sleep(100)
      }
    }
    await warm.close()
    const rt0 = bucket.roundTrips ?? Number.NaN

    const takes = new Set<Subscription>()
    const takeOne = (): void => {
      if (stopped) return
      let subscription: Subscription | null = null
      let finished = false
      subscription = bucket.take().subscribe({
        complete: () => {
          finished = true
          if (subscription) takes.delete(subscription)
          if (stopped) return
          granted(bucket.fallingBack)
          takeOne()
        },
        error: () => {
          finished = true
          if (subscription) takes.delete(subscription)
          if (stopped) return
          refused++
          setTimeout(takeOne, 50)
        },
      })
      if (!finished) takes.add(subscription)
    }
    begin = () => {
      for (let i = 0; i < p.outstanding; i++) takeOne()
    }
    end = async () => {
      stopped = true
      for (const subscription of takes) subscription.unsubscribe()
      takes.clear()
      const roundTrips = (bucket.roundTrips ?? Number.NaN) - rt0
      await bucket.close()
      return Number.isFinite(roundTrips) ? roundTrips : null
    }
  }

  const go = nextMessage<ToWorker>((m) => m?.type === 'go')
  const stop = nextMessage<ToWorker>((m) => m?.type === 'stop')
  send({ type: 'ready' })
  await go
  begin()
  await stop
  const roundTrips = await end()
  redis?.disconnect()
  return { grants, local, refused, roundTrips }
}

// ── the coordinator ──────────────────────────────────────────────────────────────────────

export interface FaultParams {
  fault: 'restart' | 'flapping'
  impl: FleetImpl
  baselineDist: string | null
  processes: number
  rate: number
  burst: number
  outstanding: number
  /** Taking before the fault, once the first worker has taken the burst. */
  steadyMs: number
  /** Taking after the fault. */
  afterMs: number
  /** restart: the grants counted in this window from the moment Redis is back. */
  countAfterMs: number
  /** flapping: cut-offs, each `downMs` down then `upMs` up. */
  flaps: number
  downMs: number
  upMs: number
  localShare: number
}

interface FleetChild {
  child: ChildProcess
  ready: Promise<void>
  exited: Promise<number | null>
  stderr(): string
  outFile: string
}

function startFleetWorker(
  params: FleetWorkerParams,
  outFile: string,
  onGrant: (m: { t: number; local: boolean }, worker: string) => void,
): FleetChild {
  const script = process.argv[1] as string
  const child = spawn(
    process.execPath,
    [script, 'redis', 'fleetWorker', JSON.stringify(params), outFile],
    { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] },
  )
  let stderr = ''
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-2000)
  })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  const ready = new Promise<void>((resolve, reject) => {
    child.on('message', (m: FromWorker) => {
      if (m?.type === 'ready') resolve()
      else if (m?.type === 'grant') onGrant(m, params.name)
    })
    exited.then((code) => reject(new Error(`a worker exited (${code}) before it was ready`)))
  })
  ready.catch(() => {})
  return { child, ready, exited, stderr: () => stderr, outFile }
}

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (
      await Promise.resolve()
        .then(check)
        .catch(() => false)
    )
      return
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(50)
  }
}

const count = (times: readonly number[], from: number, to: number) =>
  times.filter((t) => t >= from && t < to).length

/**
 * A round that has not ended after this long gives up and cleans up (workers killed,
 * Redis stopped) before run.ts's timeout (two minutes) would SIGKILL the coordinator
 * and leave its redis-server behind.
 */
const WATCHDOG_MS = 90_000

/** One round of a fault row; see the file's comment. */
export async function faultCase(p: FaultParams): Promise<Metrics> {
  const { RedisProcess, HoldingProxy } = await import('./faults.js')
  let redis: RedisProcessType
  try {
    redis = await RedisProcess.start()
  } catch (error) {
    const why = error instanceof Error ? error.message.split('\n')[0] : String(error)
    return { skipped: `no redis-server of our own could be started (${why})` }
  }
  const proxies: HoldingProxyType[] = []
  const workers: FleetChild[] = []
  let watchdog: NodeJS.Timeout | undefined
  try {
    return await Promise.race([
      oneRound(p, redis, HoldingProxy, proxies, workers),
      new Promise<never>((_, reject) => {
        watchdog = setTimeout(
          () => reject(new Error(`the round did not end within ${WATCHDOG_MS / 1000} s`)),
          WATCHDOG_MS,
        )
      }),
    ])
  } finally {
    clearTimeout(watchdog)
    for (const w of workers) {
      if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill('SIGKILL')
    }
    await Promise.all(proxies.map((proxy) => proxy.close()))
    await redis.stop()
  }
}

async function oneRound(
  p: FaultParams,
  redis: RedisProcessType,
  HoldingProxy: typeof HoldingProxyType,
  proxies: HoldingProxyType[],
  workers: FleetChild[],
): Promise<Metrics> {
  if (p.fault === 'flapping') {
    for (let i = 0; i < p.processes; i++) proxies.push(await HoldingProxy.start(redis.port))
  }
  const key = `rxf-bench-fault:${process.pid}`
  const base = process.argv[5] ?? `/tmp/rxf-bench-${process.pid}`
  const times: number[] = []
  const perWorker = new Map<string, number>()
  const onGrant = (m: { t: number }, name: string) => {
    times.push(m.t)
    perWorker.set(name, (perWorker.get(name) ?? 0) + 1)
  }
  for (let i = 0; i < p.processes; i++) {
    const params: FleetWorkerParams = {
      name: `w${i}`,
      impl: p.impl,
      baselineDist: p.baselineDist,
      port: proxies[i]?.port ?? redis.port,
      client: p.fault === 'restart' ? 'waiting' : 'url',
      key,
      rate: p.rate,
      burst: p.burst,
      onStoreError: p.fault === 'restart' ? 'fail-closed' : 'local-fallback',
      outstanding: p.outstanding,
      ...(p.fault === 'restart'
        ? { storeTimeoutMs: 10_000 }
        : { localShare: p.localShare, storeTimeoutMs: 200, retryStoreAfterMs: 100 }),
    }
    workers.push(startFleetWorker(params, `${base}.f${i}.json`, onGrant))
  }
  await Promise.all(workers.map((w) => w.ready))
  // A key missing from a Redis younger than a refill starts below full (coldStart
  // 'safe'): start once Redis is older than that, so that the bucket starts full.
  const refillS = Math.ceil(p.burst / p.rate)
  await until(
    `redis up ${refillS} s`,
    async () => Number((await redis.info('server')).uptime_in_seconds) >= refillS,
    refillS * 1000 + 10_000,
  )
  const go = (w: FleetChild) => w.child.send({ type: 'go' } satisfies ToWorker)
  go(workers[0] as FleetChild)
  await until("the first worker's burst", () => times.length >= p.burst, 10_000)
  for (const w of workers.slice(1)) go(w)
  await sleep(p.steadyMs)

  const faultAt = fineNow()
  let backAt = faultAt
  if (p.fault === 'restart') {
    await redis.restart()
    backAt = fineNow()
  } else {
    for (let i = 0; i < p.flaps; i++) {
      for (const proxy of proxies) proxy.hold()
      await sleep(p.downMs)
      for (const proxy of proxies) proxy.release()
      await sleep(p.upMs)
    }
    backAt = fineNow()
  }
  await sleep(p.afterMs)
  const endAt = fineNow()
  for (const w of workers) w.child.send({ type: 'stop' } satisfies ToWorker)
  const codes = await Promise.race([
    Promise.all(workers.map((w) => w.exited)),
    sleep(15_000).then(() => null),
  ])

  const wrong: string[] = []
  if (codes === null) wrong.push('a worker did not stop within 15 s')
  const results: Metrics[] = workers.map((w, i) => {
    try {
      const m = JSON.parse(readFileSync(w.outFile, 'utf8')) as Metrics
      rmSync(w.outFile, { force: true })
      return m
    } catch {
      const tail = w.stderr().trim().split('\n').slice(-2).join(' / ')
      return { problem: `worker ${i} exited ${codes?.[i]} without a result: ${tail}` }
    }
  })
  for (const m of results) if (typeof m.problem === 'string') wrong.push(m.problem)
  const sum = (k: string) =>
    results.reduce((s, m) => s + (typeof m[k] === 'number' ? (m[k] as number) : 0), 0)

  times.sort((a, b) => a - b)
  const whole = requiredCapacity(times, p.rate)
  const beforeFault = requiredCapacity(
    times.filter((t) => t < faultAt),
    p.rate,
  )
  const firstAfter = times.find((t) => t >= backAt)
  const metrics: Metrics = {
    grants: times.length,
    requiredCapacity: whole,
    requiredBeforeFault: beforeFault,
    extraGrants: whole - p.burst,
    grantsDuringFault: count(times, faultAt, backAt),
    faultMs: backAt - faultAt,
    grantsAfter: count(times, backAt, backAt + p.countAfterMs),
    firstGrantAfterMs: firstAfter === undefined ? Number.NaN : firstAfter - backAt,
    localGrants: sum('local'),
    refused: sum('refused'),
    roundTripsPerGrant: results.every((m) => typeof m.roundTrips === 'number')
      ? sum('roundTrips') / times.length
      : null,
    perProcess: workers.map((_, i) => perWorker.get(`w${i}`) ?? 0).join('/'),
  }
  if ([...perWorker.values()].length < p.processes) wrong.push('a process got no grant')
  if (p.impl !== 'rlf') {
    // Not vacuous: the run used up its burst before the fault.
    if (beforeFault < p.burst - 1) {
      wrong.push(`the burst was not used up before the fault (${beforeFault.toFixed(1)})`)
    }
    if (p.fault === 'restart') {
      const bound = p.burst + 1
      if (whole > bound) {
        wrong.push(`the grants needed a bucket of ${whole.toFixed(2)} > burst + 1 = ${bound}`)
      }
      if (metrics.refused !== 0) wrong.push(`${metrics.refused} takes refused`)
    } else {
      const bound = 2 * p.burst + 1
      if (whole > bound) {
        wrong.push(`the grants needed a bucket of ${whole.toFixed(2)} > 2·burst + 1 = ${bound}`)
      }
      if (metrics.localGrants === 0) wrong.push('no local grant: the partition cut no one off')
    }
  }
  // Granting went on after a restart (restart.test.ts asks the same: half a second's
  // worth; the reservations held across the loss are charged again, a stall of about a
  // second). Not after the flapping: the local grants are then repaid as debt, a stall
  // as long as they were many, and rightly so.
  const since = count(times, faultAt, endAt)
  if (p.fault === 'restart' && since < p.rate / 2) {
    wrong.push(`only ${since} grants in the ${((endAt - faultAt) / 1000).toFixed(1)} s after`)
  }
  if (wrong.length) metrics.problem = [...new Set(wrong)].join('; ')
  return metrics
}
