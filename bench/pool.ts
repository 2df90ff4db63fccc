/**
 * Pool overhead: async no-op jobs (`x => Promise.resolve(x)`), concurrency 8, no rate
 * limit. What a job costs in the pool itself, against p-limit, p-queue, bottleneck, RxJS
 * `mergeMap` and a hand-written 8-worker pull loop (the floor).
 */
import { from, lastValueFrom, mergeMap, of } from 'rxjs'
import { ratePool, ratePoolFrom } from '../src/index.js'
import {
  type Benchmark,
  type Metrics,
  mb,
  med,
  problems,
  ratio,
  type Spec,
  seconds,
  si,
  spread,
  table,
} from './lib/harness.js'

const CONCURRENCY = 8

const job = (x: number): Promise<number> => Promise.resolve(x)

interface PoolParams {
  n: number
}

type Runner = (items: number[]) => Promise<{ count: number; sum: number }>

const runners: Record<string, Runner> = {
  async ratePool(items) {
    let count = 0
    let sum = 0
    await new Promise<void>((resolve, reject) => {
      from(items)
        .pipe(ratePool(job, { concurrency: CONCURRENCY }))
        .subscribe({
          next: (r) => {
            count++
            if (r.ok) sum += r.value
          },
          error: reject,
          complete: resolve,
        })
    })
    return { count, sum }
  },

  async ratePoolFrom(items) {
    let count = 0
    let sum = 0
    await new Promise<void>((resolve, reject) => {
      ratePoolFrom(items, job, { concurrency: CONCURRENCY }).subscribe({
        next: (r) => {
          count++
          if (r.ok) sum += r.value
        },
        error: reject,
        complete: resolve,
      })
    })
    return { count, sum }
  },

  async mergeMapOf(items) {
    let count = 0
    let sum = 0
    await new Promise<void>((resolve, reject) => {
      from(items)
        .pipe(mergeMap((x) => of(x), CONCURRENCY))
        .subscribe({
          next: (v) => {
            count++
            sum += v
          },
          error: reject,
          complete: resolve,
        })
    })
    return { count, sum }
  },

  async mergeMapPromise(items) {
    let count = 0
    let sum = 0
    await new Promise<void>((resolve, reject) => {
      from(items)
        .pipe(mergeMap(job, CONCURRENCY))
        .subscribe({
          next: (v) => {
            count++
            sum += v
          },
          error: reject,
          complete: resolve,
        })
    })
    return { count, sum }
  },

  async pLimit(items) {
    const { default: pLimit } = await import('p-limit')
    const limit = pLimit(CONCURRENCY)
    const values = await Promise.all(items.map((x) => limit(() => job(x))))
    let sum = 0
    for (const v of values) sum += v
    return { count: values.length, sum }
  },

  async pQueue(items) {
    const { default: PQueue } = await import('p-queue')
    const queue = new PQueue({ concurrency: CONCURRENCY })
    let count = 0
    let sum = 0
    for (const x of items) {
      queue.add(async () => {
        const v = await job(x)
        count++
        sum += v
      })
    }
    await queue.onIdle()
    return { count, sum }
  },

  async bottleneck(items) {
    const { default: Bottleneck } = await import('bottleneck')
    const limiter = new Bottleneck({ maxConcurrent: CONCURRENCY })
    const values = await Promise.all(items.map((x) => limiter.schedule(() => job(x))))
    let sum = 0
    for (const v of values) sum += v
    await limiter.stop({ dropWaitingJobs: false })
    return { count: values.length, sum }
  },

  async floor(items) {
    let next = 0
    let count = 0
    let sum = 0
    const n = items.length
    const worker = async () => {
      while (next < n) {
        const x = items[next++] as number
        // Not `sum += await …`: that reads `sum` before the await and loses updates.
        const v = await job(x)
        sum += v
        count++
      }
    }
    await Promise.all(Array.from({ length: CONCURRENCY }, worker))
    return { count, sum }
  },
}

async function run(runner: string, { n }: PoolParams): Promise<Metrics> {
  const fn = runners[runner]
  if (!fn) throw new Error(`unknown runner ${runner}`)
  const items = Array.from({ length: n }, (_, i) => i)
  const t0 = performance.now()
  const { count, sum } = await fn(items)
  const wallMs = performance.now() - t0
  const expectedSum = (n * (n - 1)) / 2
  const metrics: Metrics = { n, wallMs, jobsPerSec: (n / wallMs) * 1000, count }
  if (count !== n || sum !== expectedSum) {
    metrics.problem = `expected ${n} results summing to ${expectedSum}, got ${count} summing to ${sum}`
  }
  return metrics
}

interface Row {
  id: string
  runner: string
  label: string
  n: number
  ours: boolean
  rounds?: number
  timeoutMs?: number
}

function rows(quick: boolean): Row[] {
  const n = quick ? 100_000 : 1_000_000
  return [
    {
      id: 'floor',
      runner: 'floor',
      label: 'hand-written 8-worker pull loop (floor)',
      n,
      ours: false,
    },
    { id: 'ratePool', runner: 'ratePool', label: '**ratePool** over `from(array)`', n, ours: true },
    { id: 'ratePoolFrom', runner: 'ratePoolFrom', label: '**ratePoolFrom**(array)', n, ours: true },
    {
      id: 'mergeMapOf',
      runner: 'mergeMapOf',
      label: 'RxJS `mergeMap(x => of(x), 8)`',
      n,
      ours: false,
    },
    { id: 'pLimit', runner: 'pLimit', label: 'p-limit(8) + `Promise.all`', n, ours: false },
    {
      id: 'pQueue',
      runner: 'pQueue',
      label: 'p-queue({ concurrency: 8 }) + `onIdle`',
      n,
      ours: false,
    },
    {
      id: 'mergeMapPromise-125k',
      runner: 'mergeMapPromise',
      label: 'RxJS `mergeMap(x => Promise.resolve(x), 8)`',
      n: quick ? 25_000 : 125_000,
      ours: false,
    },
    {
      id: 'mergeMapPromise-250k',
      runner: 'mergeMapPromise',
      label: 'RxJS `mergeMap(x => Promise.resolve(x), 8)`',
      n: quick ? 50_000 : 250_000,
      ours: false,
    },
    {
      id: 'bottleneck',
      runner: 'bottleneck',
      label: 'bottleneck({ maxConcurrent: 8 })',
      n: quick ? 1_000 : 10_000,
      ours: false,
      // ~370 jobs/s: one round is already ~27 s at 10^4.
      rounds: 1,
      timeoutMs: 120_000,
    },
  ]
}

export const pool: Benchmark = {
  name: 'pool',
  title: 'Pool overhead: async no-op jobs, concurrency 8, no rate limit',
  cases: Object.fromEntries(
    Object.keys(runners).map((runner) => [runner, (params: PoolParams) => run(runner, params)]),
  ),
  plan({ quick, rounds }): Spec[] {
    return rows(quick).map((row) => ({
      id: row.id,
      caseName: row.runner,
      params: { n: row.n },
      rounds: rounds ?? row.rounds ?? (quick ? 1 : 3),
      timeoutMs: row.timeoutMs ?? 180_000,
      ours: row.ours,
    }))
  },
  report(results, { quick }): string {
    const floorRate = med(results.get('floor'), 'jobsPerSec')
    const pLimitRate = med(results.get('pLimit'), 'jobsPerSec')
    const body = rows(quick).map((row) => {
      const r = results.get(row.id)
      const wall = med(r, 'wallMs')
      const rate = med(r, 'jobsPerSec')
      const issues = problems(r)
      return [
        row.label + (issues.length ? ` ⚠ ${issues.join('; ')}` : ''),
        si(row.n),
        seconds(wall),
        spread(r, 'wallMs'),
        si(rate),
        mb(med(r, 'maxRssKiB')),
        ratio(rate, pLimitRate),
        ratio(rate, floorRate),
        String(r?.length ?? 0),
      ]
    })
    const lines = [
      table(
        [
          'runner',
          'jobs',
          'wall (median)',
          'wall min–max (ms)',
          'jobs/s',
          'peak RSS',
          'speed vs p-limit',
          'speed vs floor',
          'rounds',
        ],
        body,
      ),
    ]
    // Quadratic extrapolation of the Promise-inner mergeMap (its backlog is drained with
    // Array#shift), from the larger of its two sizes.
    const big = rows(quick).find((row) => row.id === 'mergeMapPromise-250k')
    const small = rows(quick).find((row) => row.id === 'mergeMapPromise-125k')
    const tBig = med(results.get('mergeMapPromise-250k'), 'wallMs')
    const tSmall = med(results.get('mergeMapPromise-125k'), 'wallMs')
    const full = quick ? 100_000 : 1_000_000
    if (big && small && Number.isFinite(tBig) && Number.isFinite(tSmall)) {
      const exponent = Math.log(tBig / tSmall) / Math.log(big.n / small.n)
      const extrapolated = tBig * (full / big.n) ** 2
      lines.push(
        '',
        `RxJS mergeMap with a Promise inner: ×${(big.n / small.n).toFixed(0)} jobs took ` +
          `×${(tBig / tSmall).toFixed(2)} time (growth exponent ${exponent.toFixed(2)}); ` +
          `quadratic extrapolation to ${si(full)} jobs: ~${seconds(extrapolated)} ` +
          '(BASELINES: ~95 s at 10^6).',
      )
    }
    const bn = rows(quick).find((row) => row.id === 'bottleneck')
    const bnRate = med(results.get('bottleneck'), 'jobsPerSec')
    if (bn && Number.isFinite(bnRate)) {
      lines.push(
        '',
        `bottleneck at ${si(bn.n)} jobs: ${si(bnRate)} jobs/s, so ~${seconds((full / bnRate) * 1000)} ` +
          `extrapolated to ${si(full)} jobs (linear).`,
      )
    }
    return lines.join('\n')
  },
}
