/**
 * Shared limiters on Redis (127.0.0.1:6379, or $REDIS_PORT; every row is skipped with a
 * message if it does not answer). Grants per second through ONE shared `RedisTokenBucket`
 * key at a rate that never limits (rate 1e9, burst 1e6: what the machinery costs), from 1
 * and from 4 processes at once, each with 1 or 8 outstanding `take()`s; the same against
 * rate-limiter-flexible's `RateLimiterRedis.consume(key)` (ioredis, points 1e9). Then one
 * LIMITING configuration (500/s, burst 10, 4 processes, 5 s): the rate achieved by all of
 * them together and the envelope of all their grant times.
 *
 * Each row's case is a coordinator: it spawns the worker processes (this same child
 * script, case `worker`), lets each connect and warm up on a key of its own, starts them
 * all at one instant, and merges what they report. Round trips are counted twice: on the
 * client (every command an ioredis client sends, exact and ours alone) and on the server
 * (`INFO commandstats` deltas of evalsha + eval, which other users of the same Redis would
 * inflate). ioredis and the library's redis entry are imported by the cases that use them,
 * so that the children of the other benchmarks never load them.
 */
import { spawn } from 'node:child_process'
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import type { Redis } from 'ioredis'
import type { Subscription } from 'rxjs'
import {
  type Benchmark,
  extreme,
  fmt,
  type Metrics,
  mb,
  med,
  problems,
  quantileSorted,
  ratio,
  type Spec,
  spread,
  table,
} from './lib/harness.js'

const HOST = '127.0.0.1'
// As in .ci/run: another port through REDIS_PORT.
const PORT = Number(process.env.REDIS_PORT ?? 6379)

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across processes. */
const fineNow = () => performance.timeOrigin + performance.now()

type Impl = 'bucket' | 'rlf'

interface WorkerParams {
  impl: Impl
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
  redis: Redis,
  key: string,
  rate: number,
  burst: number,
  stops: Set<() => void>,
): Promise<{ take: Take; close(): Promise<void> }> {
  if (impl === 'bucket') {
    const { RedisTokenBucket } = await import('../src/redis/index.js')
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
  const warm = await limiterFor(p.impl, redis, p.warmKey, 1e9, 1e6, stops)
  for (let i = 0; i < 300; i++) await warm.take()
  await warm.close()
  const limiter = await limiterFor(p.impl, redis, p.key, p.rate, p.burst, stops)

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

/**
 * The smallest capacity b such that every window [t_i, t_j] of the merged grant times holds
 * at most b + rate·(t_j − t_i) grants: max over i ≤ j of (j − i + 1) − rate·(t_j − t_i).
 */
function requiredCapacity(times: Float64Array, rate: number): number {
  let best = 0
  let minF = Number.POSITIVE_INFINITY
  const t0 = times[0] ?? 0
  for (let j = 0; j < times.length; j++) {
    const f = j - (rate * ((times[j] as number) - t0)) / 1000
    if (f < minF) minF = f
    if (f - minF + 1 > best) best = f - minF + 1
  }
  return best
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
    const keys = await admin.keys(`${key}*`).catch(() => [] as string[])
    if (keys.length) await admin.del(...keys).catch(() => 0)
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

function rows(): Row[] {
  const out: Row[] = []
  for (const impl of ['bucket', 'rlf'] as const) {
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

const windows = (quick: boolean) =>
  quick ? { unlimitedMs: 1000, limitingMs: 2000 } : { unlimitedMs: 3000, limitingMs: 5000 }

const implLabel: Record<Impl, string> = {
  bucket: '**RedisTokenBucket**.take()',
  rlf: 'rate-limiter-flexible `RateLimiterRedis.consume`',
}

function skipped(results: Map<string, Metrics[]>): string | null {
  for (const list of results.values()) {
    for (const m of list) if (typeof m.skipped === 'string') return m.skipped
  }
  return null
}

export const redis: Benchmark = {
  name: 'redis',
  title: 'Shared limiters on Redis: grants through one key from 1 and 4 processes',
  cases: { run: runCase, worker: workerCase },
  plan({ quick, rounds }): Spec[] {
    const { unlimitedMs, limitingMs } = windows(quick)
    return rows().map((row) => {
      const durationMs = row.limiting ? limitingMs : unlimitedMs
      const limits = row.limiting ? LIMITING : UNLIMITED
      return {
        id: row.id,
        caseName: 'run',
        params: {
          impl: row.impl,
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
  },
  report(results, { quick }): string {
    const skip = skipped(results)
    if (skip !== null) return `Skipped: ${skip}.`
    const { unlimitedMs, limitingMs } = windows(quick)
    const all = rows()
    const body = all
      .filter((row) => !row.limiting)
      .map((row) => {
        const r = results.get(row.id)
        const rate = med(r, 'grantsPerSec')
        const other = all.find(
          (o) =>
            !o.limiting &&
            o.impl !== row.impl &&
            o.procs === row.procs &&
            o.concurrency === row.concurrency,
        )
        const otherRate = med(results.get(other?.id ?? ''), 'grantsPerSec')
        const issues = problems(r)
        return [
          implLabel[row.impl] + (issues.length ? ` ⚠ ${issues.join('; ')}` : ''),
          String(row.procs),
          String(row.concurrency),
          fmt(rate, 0),
          spread(r, 'grantsPerSec'),
          fmt(med(r, 'perProcessPerSec'), 0),
          row.impl === 'bucket' ? ratio(rate, otherRate) : '',
          `${fmt(med(r, 'commandsPerGrant'), 3)} / ${fmt(med(r, 'scriptsPerGrant'), 3)}`,
          `${fmt(med(r, 'latencyP50'), 2)} / ${fmt(med(r, 'latencyP99'), 2)}`,
          `${fmt(med(r, 'workerCpuPct'), 0)} % / ${fmt(med(r, 'redisCpuPct'), 0)} %`,
          mb(med(r, 'workerRssKiB')),
          String(r?.length ?? 0),
        ]
      })
    const limiting = results.get('bucket-limiting')
    const issues = problems(limiting)
    const limitRow = [
      `**RedisTokenBucket**, ${LIMITING.rate}/s, burst ${LIMITING.burst}` +
        (issues.length ? ` ⚠ ${issues.join('; ')}` : ''),
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
    return [
      `Rate ${UNLIMITED.rate.toExponential()}/s, burst ${UNLIMITED.burst.toExponential()} ` +
        `(never waits); every process ` +
        `takes for ${unlimitedMs / 1000} s; rate-limiter-flexible with points 1e9 per 60 s.`,
      '',
      table(
        [
          'limiter',
          'processes',
          'outstanding per process',
          'grants/s, all processes (median)',
          'min–max',
          'per process',
          'vs rate-limiter-flexible',
          'round trips per grant: client-counted / server evalsha+eval',
          'grant latency p50 / p99 (ms)',
          'CPU: busiest worker / Redis (% of a core)',
          'peak RSS (worker)',
          'rounds',
        ],
        body,
      ),
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
    ].join('\n')
  },
}
