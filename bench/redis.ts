/**
 * Shared limiters on Redis (127.0.0.1:6379, or $REDIS_PORT; every throughput row is
 * skipped with a message if it does not answer). Grants per second through ONE shared
 * `RedisTokenBucket` key at a rate that never limits (rate 1e9, burst 1e6: what the
 * machinery costs), from 1 and from 4 processes at once, each with 1 or 8 outstanding
 * `take()`s; the same against rate-limiter-flexible's `RateLimiterRedis.consume(key)`
 * (ioredis, points 1e9) and, with `--baseline`, against the baseline build's
 * RedisTokenBucket ("before": e.g. the code before issue 8) in the same rounds. Then one
 * LIMITING configuration (500/s, burst 10, 4 processes, 5 s): the rate achieved by all of
 * them together and the envelope of all their grant times. Then the fault rows (issue 8,
 * items 3 and 4; lib/fleet.ts), each on a redis-server of its own: a kill -9 and restart
 * of Redis under 3 processes, and a partition flapping 5 × (1.2 s down, 0.3 s up) under
 * 'local-fallback', reported as the burst the merged grants needed.
 *
 * Each row's case is a coordinator: it spawns the worker processes (this same child
 * script, case `worker`), lets each connect and warm up on a key of its own, starts them
 * all at one instant, and merges what they report. Round trips are counted twice: on the
 * client (every command an ioredis client sends, exact and ours alone) and on the server
 * (`INFO commandstats` deltas of evalsha + eval, which other users of the same Redis would
 * inflate); Redis's CPU per grant from `INFO cpu` (the same caveat). Every round is
 * reported, and ratios are taken within a round. ioredis, the library's redis entry and
 * the fault harness are imported by the cases that use them, so that the children of the
 * other benchmarks never load them.
 */
import { spawn } from 'node:child_process'
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import type { Redis } from 'ioredis'
import type { Subscription } from 'rxjs'
import {
  bucketClass,
  type FaultParams,
  type FleetImpl,
  faultCase,
  fleetWorker,
} from './lib/fleet.js'
import {
  type Benchmark,
  each,
  extreme,
  fmt,
  type Metrics,
  mb,
  med,
  median,
  problems,
  quantileSorted,
  type RunOptions,
  ratio,
  requiredCapacity,
  type Spec,
  spread,
  table,
} from './lib/harness.js'

const HOST = '127.0.0.1'
// As in .ci/run: another port through REDIS_PORT.
const PORT = Number(process.env.REDIS_PORT ?? 6379)

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across processes. */
const fineNow = () => performance.timeOrigin + performance.now()

/** Ours, the baseline build's (`--baseline`: "before"), rate-limiter-flexible's. */
type Impl = 'bucket' | 'before' | 'rlf'

interface WorkerParams {
  impl: Impl
  /** The baseline build's dist folder, for 'before'. */
  baselineDist: string | null
  key: string
  warmKey: string
  rate: number
  burst: number
  concurrency: number
  durationMs: number
  /** Prefix of the two sample files the worker writes: `.lat` and `.at` (Float64 arrays). */
  samplesFile: string
}

/** Counts every command this ioredis client sends (scripts: evalsha, and eval on NOSCRIPT). */
function countCommands(redis: Redis): () => number {
  let sent = 0
  const send = redis.sendCommand.bind(redis)
  redis.sendCommand = ((...args: Parameters<Redis['sendCommand']>) => {
    sent++
    return send(...args)
  }) as Redis['sendCommand']
  return () => sent
}

type Take = () => Promise<number>

async function limiterFor(
  impl: Impl,
  baselineDist: string | null,
  redis: Redis,
  key: string,
  rate: number,
  burst: number,
  stops: Set<() => void>,
): Promise<{ take: Take; close(): Promise<void> }> {
  if (impl === 'bucket' || impl === 'before') {
    const RedisTokenBucket = await bucketClass(impl, baselineDist)
    const bucket = new RedisTokenBucket({ redis, key, rate, burst })
    // Resolves with the grant's time, or NaN if the window closed first (then the take is
    // unsubscribed, which cancels its reservation).
    const take: Take = () =>
      new Promise((resolve, reject) => {
        let sub: Subscription | null = null
        let settled = false
        const stop = () => {
          settled = true
          sub?.unsubscribe()
          resolve(Number.NaN)
        }
        stops.add(stop)
        sub = bucket.take().subscribe({
          next: () => {
            const at = fineNow()
            settled = true
            stops.delete(stop)
            resolve(at)
          },
          error: (error: unknown) => {
            stops.delete(stop)
            reject(error)
          },
        })
        if (settled) sub.unsubscribe()
      })
    return { take, close: () => bucket.close() }
  }
  const { RateLimiterRedis } = await import('rate-limiter-flexible')
  const limiter = new RateLimiterRedis({
    storeClient: redis,
    keyPrefix: `${key}:rlf`,
    points: 1e9,
    duration: 60,
  })
  return { take: () => limiter.consume('shared').then(fineNow), close: async () => {} }
}

function message<T>(predicate: (m: T) => boolean): Promise<T> {
  return new Promise((resolve) => {
    const on = (m: T) => {
      if (!predicate(m)) return
      process.off('message', on)
      resolve(m)
    }
    process.on('message', on)
  })
}

/** One worker process: warm up, say ready, wait for the start instant, take for the window. */
async function workerCase(p: WorkerParams): Promise<Metrics> {
  if (!process.send) throw new Error('the redis worker needs an IPC channel')
  const { Redis } = await import('ioredis')
  const redis = new Redis({ host: HOST, port: PORT, maxRetriesPerRequest: 1 })
  redis.on('error', () => {})
  await redis.ping()
  const sent = countCommands(redis)
  const stops = new Set<() => void>()
  // Warm-up on a key of this worker's own, at a rate that never limits: scripts loaded,
  // code compiled, and the shared key untouched (the limiting run starts with it full).
  const warm = await limiterFor(p.impl, p.baselineDist, redis, p.warmKey, 1e9, 1e6, stops)
  for (let i = 0; i < 300; i++) await warm.take()
  await warm.close()
  const limiter = await limiterFor(p.impl, p.baselineDist, redis, p.key, p.rate, p.burst, stops)

  const go = message<{ type: string; at: number }>((m) => m?.type === 'go')
  process.send({ type: 'ready' })
  const { at } = await go
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, at - fineNow())))

  const deadline = at + p.durationMs
  const closeTimer = setTimeout(
    () => {
      for (const stop of [...stops]) stop()
    },
    Math.max(0, deadline - fineNow()),
  )
  const latencies: number[] = []
  const grants: number[] = []
  let late = 0
  const sent0 = sent()
  const cpu0 = process.cpuUsage()
  const loop = async () => {
    for (;;) {
      const asked = fineNow()
      if (asked >= deadline) return
      const granted = await limiter.take()
      if (Number.isNaN(granted)) return
      if (granted > deadline) {
        late++
        return
      }
      latencies.push(granted - asked)
      grants.push(granted)
    }
  }
  let error: unknown = null
  await Promise.all(Array.from({ length: p.concurrency }, loop)).catch((e: unknown) => {
    error = e
  })
  clearTimeout(closeTimer)
  for (const stop of [...stops]) stop()
  const cpu = process.cpuUsage(cpu0)
  // Let the cancels of the takes cut off at the deadline reach Redis: they are counted.
  await new Promise((resolve) => setTimeout(resolve, 50))
  const commands = sent() - sent0
  await limiter.close()
  await redis.quit().catch(() => redis.disconnect())

  writeFileSync(`${p.samplesFile}.lat`, Float64Array.from(latencies))
  writeFileSync(`${p.samplesFile}.at`, Float64Array.from(grants))
  const metrics: Metrics = {
    grants: grants.length,
    late,
    commands,
    cpuPct: ((cpu.user + cpu.system) / 1000 / p.durationMs) * 100,
  }
  if (error !== null) {
    metrics.problem = `a take failed: ${error instanceof Error ? error.message : String(error)}`
  }
  return metrics
}

/** Calls per command (and the server's CPU seconds) from INFO. */
async function serverCounters(redis: Redis): Promise<{ scripts: number; cpuS: number }> {
  const stats = await redis.info('commandstats')
  let scripts = 0
  for (const m of stats.matchAll(/^cmdstat_(evalsha|eval):calls=(\d+)/gm)) scripts += Number(m[2])
  const cpu = await redis.info('cpu')
  const field = (name: string) => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(cpu)?.[1] ?? 0)
  return { scripts, cpuS: field('used_cpu_sys') + field('used_cpu_user') }
}

async function connectOrNull(): Promise<Redis | null> {
  const { Redis } = await import('ioredis')
  const redis = new Redis({
    host: HOST,
    port: PORT,
    lazyConnect: true,
    connectTimeout: 1000,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  })
  redis.on('error', () => {})
  try {
    await redis.connect()
    await redis.ping()
    return redis
  } catch {
    redis.disconnect()
    return null
  }
}

interface RunParams {
  impl: Impl
  baselineDist: string | null
  procs: number
  concurrency: number
  rate: number
  burst: number
  durationMs: number
  limiting: boolean
}

interface Worker {
  ready: Promise<void>
  exited: Promise<number | null>
  send(m: unknown): void
  stderr(): string
  outFile: string
  samplesFile: string
}

function startWorker(params: WorkerParams, outFile: string): Worker {
  const script = process.argv[1] as string
  const child = spawn(
    process.execPath,
    [script, 'redis', 'worker', JSON.stringify(params), outFile],
    { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] },
  )
  let stderr = ''
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-2000)
  })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  const ready = new Promise<void>((resolve, reject) => {
    child.on('message', (m: { type?: string }) => {
      if (m?.type === 'ready') resolve()
    })
    exited.then((code) => reject(new Error(`a worker exited (${code}) before it was ready`)))
  })
  ready.catch(() => {})
  return {
    ready,
    exited,
    send: (m) => child.send(m as object),
    stderr: () => stderr,
    outFile,
    samplesFile: params.samplesFile,
  }
}

function readFloats(file: string): Float64Array {
  if (!existsSync(file)) return new Float64Array(0)
  const buffer = readFileSync(file)
  rmSync(file, { force: true })
  return new Float64Array(buffer.buffer, buffer.byteOffset, buffer.byteLength / 8)
}

async function runCase(p: RunParams): Promise<Metrics> {
  const admin = await connectOrNull()
  if (admin === null) return { skipped: `no Redis answered on ${HOST}:${PORT}` }
  const key = `rxf-bench:${process.pid}:${Date.now()}`
  const workers: Worker[] = []
  try {
    for (let i = 0; i < p.procs; i++) {
      const base = `${process.argv[5] ?? `/tmp/rxf-bench-${process.pid}`}.w${i}`
      workers.push(
        startWorker(
          {
            impl: p.impl,
            baselineDist: p.baselineDist,
            key,
            warmKey: `${key}:warm${i}`,
            rate: p.rate,
            burst: p.burst,
            concurrency: p.concurrency,
            durationMs: p.durationMs,
            samplesFile: base,
          },
          `${base}.json`,
        ),
      )
    }
    await Promise.all(workers.map((w) => w.ready))
    const before = await serverCounters(admin)
    const at = fineNow() + 100
    for (const w of workers) w.send({ type: 'go', at })
    const codes = await Promise.all(workers.map((w) => w.exited))
    const after = await serverCounters(admin)

    const results: Metrics[] = workers.map((w, i) => {
      try {
        const m = JSON.parse(readFileSync(w.outFile, 'utf8')) as Metrics
        rmSync(w.outFile, { force: true })
        return m
      } catch {
        const tail = w.stderr().trim().split('\n').slice(-2).join(' / ')
        return { problem: `worker ${i} exited ${codes[i]} without a result: ${tail}` }
      }
    })
    const latencies = Float64Array.from(
      workers.flatMap((w) => [...readFloats(`${w.samplesFile}.lat`)]),
    )
    const times = Float64Array.from(workers.flatMap((w) => [...readFloats(`${w.samplesFile}.at`)]))
    latencies.sort()
    times.sort()
    const num = (m: Metrics, k: string) => (typeof m[k] === 'number' ? (m[k] as number) : 0)
    const grants = results.reduce((s, m) => s + num(m, 'grants'), 0)
    const commands = results.reduce((s, m) => s + num(m, 'commands'), 0)
    const seconds = p.durationMs / 1000
    const metrics: Metrics = {
      grants,
      grantsPerSec: grants / seconds,
      perProcessPerSec: grants / seconds / p.procs,
      commandsPerGrant: commands / grants,
      scriptsPerGrant: (after.scripts - before.scripts) / grants,
      latencyP50: quantileSorted(latencies, 0.5),
      latencyP99: quantileSorted(latencies, 0.99),
      latencyMax: quantileSorted(latencies, 1),
      workerCpuPct: Math.max(...results.map((m) => num(m, 'cpuPct'))),
      redisCpuPct: ((after.cpuS - before.cpuS) / seconds) * 100,
      // The whole server's CPU (INFO cpu): other users of the same Redis inflate it, as
      // they inflate the server-counted scripts (compare those with the client's count).
      redisCpuUsPerGrant: ((after.cpuS - before.cpuS) * 1e6) / grants,
      workerRssKiB: Math.max(...results.map((m) => num(m, 'maxRssKiB'))),
      late: results.reduce((s, m) => s + num(m, 'late'), 0),
    }
    const wrong: string[] = []
    for (const m of results) if (typeof m.problem === 'string') wrong.push(m.problem)
    if (results.some((m) => num(m, 'grants') === 0)) wrong.push('a process got no grant')
    if (p.limiting) {
      const capacity = requiredCapacity(times, p.rate)
      metrics.requiredCapacity = capacity
      metrics.allowed = p.burst + (p.rate * p.durationMs) / 1000
      // Each grant is delivered no earlier than its time to act on Redis's clock (the same
      // machine's clock), and the key is fresh: the window can hold at most burst + rate·w.
      // 5 ms of slack for the processes' clock origins.
      const bound = p.burst + (p.rate * (p.durationMs + 5)) / 1000
      if (grants > bound) {
        wrong.push(
          `more grants in the window than burst + rate·window allows (${grants} > ${bound})`,
        )
      }
    }
    if (wrong.length) metrics.problem = [...new Set(wrong)].join('; ')
    return metrics
  } finally {
    // `${key}:bucket` (the baseline), `{${key}}:bucket` (ours), `${key}:rlf…`.
    for (const pattern of [`${key}*`, `{${key}*`]) {
      const keys = await admin.keys(pattern).catch(() => [] as string[])
      if (keys.length) await admin.del(...keys).catch(() => 0)
    }
    admin.disconnect()
  }
}

interface Row {
  id: string
  impl: Impl
  procs: number
  concurrency: number
  limiting: boolean
}

const UNLIMITED = { rate: 1e9, burst: 1e6 }
const LIMITING = { rate: 500, burst: 10, procs: 4, concurrency: 8 }

/** The throughput rows ("before" ones only with --baseline), then the limiting one. */
function rows(baseline: boolean): Row[] {
  const out: Row[] = []
  const impls: Impl[] = baseline ? ['bucket', 'before', 'rlf'] : ['bucket', 'rlf']
  for (const impl of impls) {
    for (const procs of [1, 4]) {
      for (const concurrency of [1, 8]) {
        out.push({
          id: `${impl}-${procs}p-c${concurrency}`,
          impl,
          procs,
          concurrency,
          limiting: false,
        })
      }
    }
  }
  out.push({
    id: 'bucket-limiting',
    impl: 'bucket',
    procs: LIMITING.procs,
    concurrency: LIMITING.concurrency,
    limiting: true,
  })
  return out
}

/**
 * The fault rows (issue 8, items 3 and 4; see lib/fleet.ts): 3 processes share a bucket
 * of 10/s, burst 20 (the fault tests' figures: 1 token of jitter is 100 ms), 4 takes
 * waiting in each, on a redis-server of the row's own.
 */
const FAULT = {
  processes: 3,
  rate: 10,
  burst: 20,
  outstanding: 4,
  steadyMs: 2000,
  countAfterMs: 2000,
  flaps: 5,
  downMs: 1200,
  upMs: 300,
  localShare: 0.25,
}

interface FaultRow {
  id: string
  fault: 'restart' | 'flapping'
  impl: FleetImpl
}

function faultRows(baseline: boolean): FaultRow[] {
  const out: FaultRow[] = [
    { id: 'restart-bucket', fault: 'restart', impl: 'bucket' },
    { id: 'restart-rlf', fault: 'restart', impl: 'rlf' },
  ]
  if (baseline) out.push({ id: 'restart-before', fault: 'restart', impl: 'before' })
  out.push({ id: 'flapping-bucket', fault: 'flapping', impl: 'bucket' })
  if (baseline) out.push({ id: 'flapping-before', fault: 'flapping', impl: 'before' })
  return out
}

const windows = (quick: boolean) =>
  quick ? { unlimitedMs: 1000, limitingMs: 2000 } : { unlimitedMs: 3000, limitingMs: 5000 }

const implLabel: Record<Impl, string> = {
  bucket: '**RedisTokenBucket**.take()',
  before: 'RedisTokenBucket (before).take()',
  rlf: 'rate-limiter-flexible `RateLimiterRedis.consume`',
}

const faultLabel: Record<FleetImpl, string> = {
  bucket: '**RedisTokenBucket**',
  before: 'RedisTokenBucket (before)',
  rlf: `rate-limiter-flexible, ${FAULT.burst} points per ${FAULT.burst / FAULT.rate} s (fixed window)`,
}

function skipped(results: Map<string, Metrics[]>, ids: readonly string[]): string | null {
  for (const id of ids) {
    for (const m of results.get(id) ?? []) if (typeof m.skipped === 'string') return m.skipped
  }
  return null
}

/** Round i of `a` over round i of `b` (rounds of the same run, interleaved). */
function perRound(a: Metrics[] | undefined, b: Metrics[] | undefined, key: string): number[] {
  const out: number[] = []
  for (let i = 0; i < Math.min(a?.length ?? 0, b?.length ?? 0); i++) {
    const x = a?.[i]?.[key]
    const y = b?.[i]?.[key]
    out.push(typeof x === 'number' && typeof y === 'number' && y !== 0 ? x / y : Number.NaN)
  }
  return out
}

/** "1.02× (0.97 · 1.02 · 1.10)": the median of the per-round ratios, then each. */
function roundRatios(ratios: number[]): string {
  if (ratios.length === 0) return '—'
  const head = ratio(median(ratios), 1)
  if (ratios.length === 1) return head
  return `${head} (${ratios.map((r) => fmt(r, 2)).join(' · ')})`
}

const label = (text: string, rounds: Metrics[] | undefined) => {
  const issues = problems(rounds)
  return text + (issues.length ? ` ⚠ ${issues.join('; ')}` : '')
}

function throughputReport(
  results: Map<string, Metrics[]>,
  options: RunOptions,
  all: Row[],
): string | null {
  if (!all.some((row) => results.has(row.id))) return null
  const { unlimitedMs, limitingMs } = windows(options.quick)
  const unlimited = all.filter((row) => !row.limiting)
  const skip = skipped(
    results,
    all.map((row) => row.id),
  )
  if (skip !== null) return `Throughput and limiting rows skipped: ${skip}.`
  const rlfOf = (row: Row) =>
    results.get(
      unlimited.find(
        (o) => o.impl === 'rlf' && o.procs === row.procs && o.concurrency === row.concurrency,
      )?.id ?? '',
    )
  const body = unlimited.map((row) => {
    const r = results.get(row.id)
    return [
      label(implLabel[row.impl], r),
      String(row.procs),
      String(row.concurrency),
      fmt(med(r, 'grantsPerSec'), 0),
      each(r, 'grantsPerSec'),
      fmt(med(r, 'perProcessPerSec'), 0),
      row.impl === 'rlf' ? '' : roundRatios(perRound(r, rlfOf(row), 'grantsPerSec')),
      `${fmt(med(r, 'commandsPerGrant'), 3)} / ${fmt(med(r, 'scriptsPerGrant'), 3)}`,
      `${fmt(med(r, 'redisCpuUsPerGrant'), 1)} (${each(r, 'redisCpuUsPerGrant', 1)})`,
      `${fmt(med(r, 'latencyP50'), 2)} / ${fmt(med(r, 'latencyP99'), 2)}`,
      `${fmt(med(r, 'workerCpuPct'), 0)} % / ${fmt(med(r, 'redisCpuPct'), 0)} %`,
      mb(med(r, 'workerRssKiB')),
      String(r?.length ?? 0),
    ]
  })
  const sections = [
    `Rate ${UNLIMITED.rate.toExponential()}/s, burst ${UNLIMITED.burst.toExponential()} ` +
      `(never waits); every process ` +
      `takes for ${unlimitedMs / 1000} s; rate-limiter-flexible with points 1e9 per 60 s. ` +
      'Rounds are interleaved: each round runs every row once (the order rotated by one ' +
      'each round), and every round is shown, in the order they ran. "vs ' +
      'rate-limiter-flexible" is the median over rounds of (this row ÷ rate-limiter-' +
      'flexible) within the same round, then each round. Redis CPU per grant is the whole ' +
      "server's (INFO cpu): other users of the same Redis inflate it, as they inflate the " +
      'server-counted scripts (a server count above the client count shows them).' +
      (options.baseline ? ` "(before)": ${options.baseline.label}.` : ''),
    '',
    table(
      [
        'limiter',
        'processes',
        'outstanding per process',
        'grants/s, all processes (median)',
        'every round',
        'per process',
        'vs rate-limiter-flexible (median; each round)',
        'round trips per grant: client-counted / server evalsha+eval',
        'Redis CPU µs per grant (median; each round)',
        'grant latency p50 / p99 (ms)',
        'CPU: busiest worker / Redis (% of a core)',
        'peak RSS (worker)',
        'rounds',
      ],
      body,
    ),
  ]
  if (options.baseline) {
    const beforeRows = unlimited.filter((row) => row.impl === 'bucket')
    const versus = beforeRows.map((row) => {
      const now = results.get(row.id)
      const then = results.get(row.id.replace(/^bucket-/, 'before-'))
      return [
        String(row.procs),
        String(row.concurrency),
        `${fmt(med(now, 'grantsPerSec'), 0)} / ${fmt(med(then, 'grantsPerSec'), 0)}`,
        roundRatios(perRound(now, then, 'grantsPerSec')),
        `${fmt(med(now, 'latencyP50'), 3)} / ${fmt(med(then, 'latencyP50'), 3)}`,
        roundRatios(perRound(now, then, 'latencyP50')),
        `${fmt(med(now, 'commandsPerGrant'), 3)} / ${fmt(med(then, 'commandsPerGrant'), 3)}`,
        `${fmt(med(now, 'redisCpuUsPerGrant'), 1)} / ${fmt(med(then, 'redisCpuUsPerGrant'), 1)}`,
      ]
    })
    sections.push(
      '',
      `Now against before (${options.baseline.label}), the same rows in the same rounds. ` +
        'Ratios are medians over rounds of now ÷ before within each round, then each ' +
        'round; issue 8 asks for a 1-outstanding p50 latency ratio of at most 1.1×.',
      '',
      table(
        [
          'processes',
          'outstanding per process',
          'grants/s now / before (median)',
          'grants/s now ÷ before (median; each round)',
          'p50 latency now / before (ms)',
          'p50 latency now ÷ before (median; each round)',
          'round trips per grant now / before',
          'Redis CPU µs per grant now / before',
        ],
        versus,
      ),
    )
  }
  const limiting = results.get('bucket-limiting')
  const limitRow = [
    label(`**RedisTokenBucket**, ${LIMITING.rate}/s, burst ${LIMITING.burst}`, limiting),
    `${LIMITING.procs} × ${LIMITING.concurrency}`,
    `${fmt(med(limiting, 'grantsPerSec'), 1)}/s`,
    spread(limiting, 'grantsPerSec', 1),
    `${fmt(med(limiting, 'allowed'), 0)} (${fmt(med(limiting, 'allowed') / (limitingMs / 1000), 1)}/s)`,
    fmt(med(limiting, 'grants'), 0),
    `${fmt(extreme(limiting, 'requiredCapacity', 'max'), 2)} (burst ${LIMITING.burst})`,
    `${fmt(med(limiting, 'commandsPerGrant'), 3)} / ${fmt(med(limiting, 'scriptsPerGrant'), 3)}`,
    `${fmt(med(limiting, 'latencyP50'), 1)} / ${fmt(med(limiting, 'latencyP99'), 1)}`,
    String(limiting?.length ?? 0),
  ]
  sections.push(
    '',
    `Limiting: ${LIMITING.procs} processes × ${LIMITING.concurrency} outstanding take()s ` +
      `for ${limitingMs / 1000} s on one fresh key. "Most allowed" is burst + rate·window; ` +
      'the required capacity is the smallest burst that would hold every window of the ' +
      'merged grant times (largest over rounds).',
    '',
    table(
      [
        'limiter',
        'processes × outstanding',
        'achieved, all processes (median)',
        'min–max',
        'most allowed in the window',
        'grants (median)',
        'required capacity',
        'round trips per grant: client / server',
        'grant latency p50 / p99 (ms)',
        'rounds',
      ],
      [limitRow],
    ),
  )
  return sections.join('\n')
}

function faultReport(results: Map<string, Metrics[]>, rows: FaultRow[]): string | null {
  if (!rows.some((row) => results.has(row.id))) return null
  const skip = skipped(
    results,
    rows.map((row) => row.id),
  )
  if (skip !== null) return `Fault rows skipped: ${skip}.`
  const { rate, burst, processes, outstanding } = FAULT
  const restart = rows
    .filter((row) => row.fault === 'restart' && results.has(row.id))
    .map((row) => {
      const r = results.get(row.id)
      return [
        label(faultLabel[row.impl], r),
        `${fmt(extreme(r, 'requiredCapacity', 'max'), 2)} (${each(r, 'requiredCapacity', 2)})`,
        `${fmt(extreme(r, 'extraGrants', 'max'), 2)} (${each(r, 'extraGrants', 2)})`,
        each(r, 'requiredBeforeFault', 2),
        `${fmt(med(r, 'grantsAfter'), 0)} (${each(r, 'grantsAfter')})`,
        each(r, 'firstGrantAfterMs'),
        each(r, 'refused'),
        each(r, 'faultMs'),
        String(r?.length ?? 0),
      ]
    })
  const flapping = rows
    .filter((row) => row.fault === 'flapping' && results.has(row.id))
    .map((row) => {
      const r = results.get(row.id)
      return [
        label(faultLabel[row.impl], r),
        `${fmt(extreme(r, 'requiredCapacity', 'max'), 2)} (${each(r, 'requiredCapacity', 2)})`,
        String(2 * burst + 1),
        each(r, 'requiredBeforeFault', 2),
        `${each(r, 'grantsDuringFault')} (local: ${each(r, 'localGrants')})`,
        each(r, 'grants'),
        String(r?.length ?? 0),
      ]
    })
  const out: string[] = [
    `Faults: ${processes} processes share one bucket of ${rate}/s, burst ${burst}, ` +
      `${outstanding} take()s waiting in each at all times, on a redis-server of the row's ` +
      'own (no persistence), started once Redis is older than a refill (the bucket starts ' +
      'full); the first process takes the burst alone, then the others join. The required ' +
      `capacity is the smallest burst a bucket of ${rate}/s would need to make the merged ` +
      'grant times (as each worker saw them) over the whole run; every round shown, the ' +
      'largest first.',
  ]
  if (restart.length) {
    out.push(
      '',
      `Restart (issue 8, item 3): ${FAULT.steadyMs / 1000} s after the others joined, ` +
        'SIGKILL the redis-server and start it again on the same port; then ' +
        `${(FAULT.countAfterMs + 500) / 1000} s more. 'fail-closed', each process with ` +
        'its own ioredis client that keeps commands until Redis is back ' +
        '(maxRetriesPerRequest null) and storeTimeoutMs 10 s: takes wait, none is ' +
        `refused. Bound: burst + 1 = ${burst + 1} (1 token of jitter). Extra grants across ` +
        'the fault = required capacity − burst. rate-limiter-flexible, for context: its ' +
        'fixed window restarts with the lost key, but its takes, rejected, sleep until the ' +
        'old window would have ended (msBeforeNext), so a restart mid-window changes little.',
      '',
      table(
        [
          'limiter',
          `required capacity (largest; each round)`,
          'extra grants across the fault (largest; each round)',
          'required capacity before the fault',
          `grants in the ${FAULT.countAfterMs / 1000} s after Redis is back (median; each round)`,
          'first grant after Redis is back (ms)',
          'takes refused',
          'kill + restart took (ms)',
          'rounds',
        ],
        restart,
      ),
    )
  }
  if (flapping.length) {
    out.push(
      '',
      `Flapping partition (issue 8, item 4): ${FAULT.steadyMs / 1000} s after the others ` +
        `joined, every process is cut off from Redis ${FAULT.flaps} × ` +
        `(${FAULT.downMs / 1000} s down, ${FAULT.upMs / 1000} s up) by a HoldingProxy of ` +
        `its own (bytes held, not dropped); then ${FAULT.steadyMs / 1000} s more. ` +
        `'local-fallback' at localShare ${FAULT.localShare}, the bucket's own client from a ` +
        'redis:// URL, storeTimeoutMs 200, retryStoreAfterMs 100. Bound (every process cut ' +
        `off, localShare × processes ≤ 1): 2·burst + 1 = ${2 * burst + 1}. Before issue 8 ` +
        'the issue measured a capacity of about 108.',
      '',
      table(
        [
          'limiter',
          'required capacity (largest; each round)',
          'bound',
          'required capacity before the flapping',
          'grants while flapping (of which while falling back)',
          'grants in all',
          'rounds',
        ],
        flapping,
      ),
    )
  }
  return out.join('\n')
}

export const redis: Benchmark = {
  name: 'redis',
  title:
    'Shared limiters on Redis: grants through one key from 1 and 4 processes; restarts and partitions',
  cases: { run: runCase, worker: workerCase, fault: faultCase, fleetWorker },
  plan(options): Spec[] {
    const { quick, rounds } = options
    const baselineDist = options.baseline?.dist ?? null
    const { unlimitedMs, limitingMs } = windows(quick)
    const throughput = rows(baselineDist !== null).map((row): Spec => {
      const durationMs = row.limiting ? limitingMs : unlimitedMs
      const limits = row.limiting ? LIMITING : UNLIMITED
      return {
        id: row.id,
        caseName: 'run',
        params: {
          impl: row.impl,
          baselineDist,
          procs: row.procs,
          concurrency: row.concurrency,
          rate: limits.rate,
          burst: limits.burst,
          durationMs,
          limiting: row.limiting,
        } satisfies RunParams,
        rounds: rounds ?? (quick ? 1 : row.limiting ? 2 : 3),
        timeoutMs: durationMs + 60_000,
        ours: row.impl === 'bucket',
      }
    })
    const faults = faultRows(baselineDist !== null).map(
      (row): Spec => ({
        id: row.id,
        caseName: 'fault',
        params: {
          fault: row.fault,
          impl: row.impl,
          baselineDist,
          processes: FAULT.processes,
          rate: FAULT.rate,
          burst: FAULT.burst,
          outstanding: FAULT.outstanding,
          steadyMs: FAULT.steadyMs,
          afterMs: row.fault === 'restart' ? FAULT.countAfterMs + 500 : FAULT.steadyMs,
          countAfterMs: FAULT.countAfterMs,
          flaps: FAULT.flaps,
          downMs: FAULT.downMs,
          upMs: FAULT.upMs,
          localShare: FAULT.localShare,
        } satisfies FaultParams,
        rounds: rounds ?? (quick ? 1 : 2),
        timeoutMs: 120_000,
        ours: row.impl === 'bucket',
      }),
    )
    return [...throughput, ...faults]
  },
  report(results, options): string {
    const baseline = Boolean(options.baseline)
    return [
      throughputReport(results, options, rows(baseline)),
      faultReport(results, faultRows(baseline)),
    ]
      .filter((section) => section !== null)
      .join('\n\n')
  },
}
