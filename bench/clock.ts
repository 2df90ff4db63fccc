/**
 * Real clock: a source that always has a backlog, limited to `rate`/s with burst 1, for a
 * few seconds of wall time. Every emission (or job start) is stamped on two clocks, the
 * fine one (`performance.timeOrigin + performance.now()`) and `Date.now()` (1 ms grain,
 * what `asyncScheduler` reads), and checked against the envelope `burst + rate·w`.
 */
import { asyncScheduler, range, type SchedulerLike } from 'rxjs'
import { rateLimit, ratePoolFrom } from '../src/index.js'
import {
  type Benchmark,
  extreme,
  fmt,
  type Metrics,
  med,
  problems,
  quantileSorted,
  type Spec,
  spread,
  table,
} from './lib/harness.js'

const BURST = 1

/** asyncScheduler's timers with a sub-millisecond clock: what the bucket would see then. */
const fineScheduler: SchedulerLike = {
  now: () => performance.timeOrigin + performance.now(),
  schedule: asyncScheduler.schedule.bind(asyncScheduler) as SchedulerLike['schedule'],
}

interface Context {
  rate: number
  durationMs: number
  /** Stamps one emission (ignored once the window is over). */
  record(): void
  /** Resolves when the window is over. */
  until(): Promise<void>
}

type Runner = (ctx: Context) => Promise<void>

/** Enough queued values that the source never runs dry within the window. */
const backlog = (ctx: Context) => Math.ceil((ctx.rate * ctx.durationMs) / 1000) * 2 + 16

function rateLimitRunner(scheduler: SchedulerLike): Runner {
  return async (ctx) => {
    const sub = range(0, backlog(ctx))
      .pipe(rateLimit({ rate: ctx.rate, burst: BURST }, { scheduler }))
      .subscribe(() => ctx.record())
    await ctx.until()
    sub.unsubscribe()
  }
}

function* naturals(): Generator<number> {
  for (let i = 0; ; i++) yield i
}

function pQueueRunner(strict: boolean): Runner {
  return async (ctx) => {
    const { default: PQueue } = await import('p-queue')
    const queue = new PQueue({ intervalCap: 1, interval: 1000 / ctx.rate, strict })
    const n = backlog(ctx)
    for (let i = 0; i < n; i++) {
      queue.add(async () => {
        ctx.record()
      })
    }
    await ctx.until()
    queue.pause()
    queue.clear()
  }
}

const runners: Record<string, Runner> = {
  rateLimit: rateLimitRunner(asyncScheduler),
  rateLimitFine: rateLimitRunner(fineScheduler),

  async ratePoolFrom(ctx) {
    const sub = ratePoolFrom(
      naturals(),
      (x) => {
        ctx.record()
        return Promise.resolve(x)
      },
      { concurrency: 8, limiter: { rate: ctx.rate, burst: BURST } },
    ).subscribe()
    await ctx.until()
    sub.unsubscribe()
  },

  // The baseline's "plain GCRA": one setTimeout per token, aimed at the theoretical arrival
  // time on the fine clock. With burst 1 a timer that fires late loses that time for good.
  async gcra(ctx) {
    const interval = 1000 / ctx.rate
    let tat = Number.NEGATIVE_INFINITY
    let timer: NodeJS.Timeout | undefined
    const step = () => {
      const now = performance.now()
      if (now >= tat) {
        ctx.record()
        tat = Math.max(tat, now) + interval
      }
      timer = setTimeout(step, Math.max(0, tat - performance.now()))
    }
    step()
    await ctx.until()
    clearTimeout(timer)
  },

  pQueueInterval: pQueueRunner(false),
  pQueueStrict: pQueueRunner(true),
}

interface Envelope {
  violations: number
  /** Largest number of tokens above `burst + rate·w` over any window. */
  maxExcess: number
}

/**
 * Counts emissions that end a window holding more than `burst + rate·w` emissions, in O(n):
 * with f(j) = j − rate·t_j, the window i..j breaks the envelope iff f(j) − f(i) > burst − 1.
 */
function envelope(times: readonly number[], rate: number, burst: number): Envelope {
  let violations = 0
  let maxExcess = 0
  let minF = Number.POSITIVE_INFINITY
  const t0 = times[0] ?? 0
  for (let j = 0; j < times.length; j++) {
    // Relative times keep the products small enough for the 1e-6 tolerance to mean something.
    const f = j - (rate * ((times[j] as number) - t0)) / 1000
    if (f < minF) minF = f
    const excess = f - minF - (burst - 1)
    if (excess > 1e-6) {
      violations++
      if (excess > maxExcess) maxExcess = excess
    }
  }
  return { violations, maxExcess }
}

interface ClockParams {
  runner: string
  rate: number
  durationMs: number
  /** The clock the limiter itself reads: its violations there are failures, not findings. */
  ownClock: 'date' | 'fine' | null
}

async function clockCase({ runner, rate, durationMs, ownClock }: ClockParams): Promise<Metrics> {
  const run = runners[runner]
  if (!run) throw new Error(`unknown runner ${runner}`)
  const fine: number[] = []
  const wall: number[] = []
  let open = true
  let stop: () => void = () => {}
  const over = new Promise<void>((resolve) => {
    stop = resolve
  })
  const ctx: Context = {
    rate,
    durationMs,
    record() {
      if (!open) return
      fine.push(performance.timeOrigin + performance.now())
      wall.push(Date.now())
    },
    until: () => over,
  }
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  setTimeout(() => {
    open = false
    stop()
  }, durationMs)
  await run(ctx)
  const elapsedMs = performance.now() - t0
  const cpu = process.cpuUsage(cpu0)

  const interval = 1000 / rate
  const first = fine[0] ?? Number.NaN
  const lateness = Float64Array.from(fine, (t, k) => t - (first + k * interval)).sort()
  const gaps = new Float64Array(Math.max(0, fine.length - 1))
  for (let k = 1; k < fine.length; k++) gaps[k - 1] = (fine[k] as number) - (fine[k - 1] as number)
  gaps.sort()
  const onFine = envelope(fine, rate, BURST)
  const onDate = envelope(wall, rate, BURST)

  const metrics: Metrics = {
    count: fine.length,
    achievedPerSec: (fine.length / durationMs) * 1000,
    latenessP50: quantileSorted(lateness, 0.5),
    latenessP99: quantileSorted(lateness, 0.99),
    latenessMax: quantileSorted(lateness, 1),
    gapMin: quantileSorted(gaps, 0),
    gapP50: quantileSorted(gaps, 0.5),
    gapP99: quantileSorted(gaps, 0.99),
    gapMax: quantileSorted(gaps, 1),
    violationsFine: onFine.violations,
    maxExcessFine: onFine.maxExcess,
    violationsDate: onDate.violations,
    maxExcessDate: onDate.maxExcess,
    cpuPct: ((cpu.user + cpu.system) / 1000 / elapsedMs) * 100,
  }
  const own = ownClock === 'date' ? onDate : ownClock === 'fine' ? onFine : null
  if (own && own.violations > 0) {
    // Stable text, so that rounds de-duplicate; the counts are in the metrics.
    metrics.problem = `envelope broken on the limiter's own clock (${ownClock === 'date' ? 'Date.now' : 'performance.now'})`
  }
  if (fine.length === 0) metrics.problem = 'no emission at all'
  return metrics
}

interface Row {
  id: string
  runner: string
  label: string
  rate: number
  ownClock: ClockParams['ownClock']
}

const labels: Record<string, [string, ClockParams['ownClock']]> = {
  rateLimit: ['**rateLimit** (asyncScheduler: Date.now)', 'date'],
  rateLimitFine: ['**rateLimit**, scheduler with a performance.now() clock', 'fine'],
  ratePoolFrom: ['**ratePoolFrom**, concurrency 8 (job starts)', 'date'],
  gcra: ['plain GCRA, setTimeout per token', null],
  pQueueInterval: ['p-queue intervalCap 1 / interval', null],
  pQueueStrict: ['p-queue intervalCap 1 / interval, strict', null],
}

function rows(): Row[] {
  const at = (rate: number, ids: string[]) =>
    ids.map((runner) => {
      const [label, ownClock] = labels[runner] as [string, ClockParams['ownClock']]
      return { id: `${runner}@${rate}`, runner, label, rate, ownClock }
    })
  return [
    ...at(1000, [
      'rateLimit',
      'rateLimitFine',
      'ratePoolFrom',
      'gcra',
      'pQueueInterval',
      'pQueueStrict',
    ]),
    ...at(50, ['rateLimit', 'ratePoolFrom', 'gcra', 'pQueueInterval', 'pQueueStrict']),
  ]
}

export const clock: Benchmark = {
  name: 'clock',
  title: 'Real clock: rate/s with burst 1, a backlog always waiting',
  cases: { clock: clockCase },
  plan({ quick, rounds }): Spec[] {
    const durationMs = quick ? 2000 : 5000
    return rows().map((row) => ({
      id: row.id,
      caseName: 'clock',
      params: { runner: row.runner, rate: row.rate, durationMs, ownClock: row.ownClock },
      rounds: rounds ?? (quick ? 1 : row.rate === 1000 ? 3 : 2),
      timeoutMs: durationMs + 30_000,
      ours: row.ownClock !== null,
    }))
  },
  report(results, { quick }): string {
    const durationMs = quick ? 2000 : 5000
    const section = (rate: number) => {
      const body = rows()
        .filter((row) => row.rate === rate)
        .map((row) => {
          const r = results.get(row.id)
          const issues = problems(r)
          return [
            row.label + (issues.length ? ` ⚠ ${issues.join('; ')}` : ''),
            `${fmt(med(r, 'achievedPerSec'), 1)}/s`,
            spread(r, 'achievedPerSec', 0),
            `${fmt(med(r, 'gapP50'), 2)} / ${fmt(med(r, 'gapP99'), 2)} / ${fmt(med(r, 'gapMax'), 1)}`,
            fmt(extreme(r, 'gapMin', 'min'), 3),
            `${fmt(med(r, 'latenessP50'), 0)} / ${fmt(med(r, 'latenessP99'), 0)} / ${fmt(med(r, 'latenessMax'), 0)}`,
            `${fmt(med(r, 'violationsFine'), 0)} (max +${fmt(extreme(r, 'maxExcessFine', 'max'), 2)})`,
            `${fmt(med(r, 'violationsDate'), 0)} (max +${fmt(extreme(r, 'maxExcessDate', 'max'), 2)})`,
            `${fmt(med(r, 'cpuPct'), 1)} %`,
            spread(r, 'cpuPct', 1),
          ]
        })
      return table(
        [
          `limiter @ ${rate}/s, burst 1, ${durationMs / 1000} s`,
          'achieved',
          'min–max',
          'gap p50 / p99 / max (ms)',
          'smallest gap, all rounds (ms)',
          'lateness vs ideal p50 / p99 / max (ms)',
          'violations, fine clock: median (largest excess, tokens)',
          'violations, Date.now: median (largest excess)',
          'CPU (% of a core)',
          'CPU min–max',
        ],
        body,
      )
    }
    return [section(1000), '', section(50)].join('\n')
  },
}
