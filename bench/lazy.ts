/**
 * Lazy sources: millions of jobs from a generator, each awaiting `setImmediate`,
 * concurrency 8. A pool with real backpressure pulls a value only for a free slot, so its
 * memory must not grow with the number of jobs. Peak RSS is compared at 5·10^4 and 5·10^6.
 */
import { from, mergeMap, type Subscription } from 'rxjs'
import { ratePoolFrom } from '../src/index.js'
import {
  type Benchmark,
  fmt,
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

/** Pulled and started counts; the backlog is what was pulled but not started yet. */
class Tally {
  pulled = 0
  started = 0
  done = 0
  sum = 0
  maxBacklog = 0

  // Sampled at each pull, after counting it: the value being handed out counts, so the
  // smallest possible maximum is 1.
  pull(): void {
    this.pulled++
    const backlog = this.pulled - this.started
    if (backlog > this.maxBacklog) this.maxBacklog = backlog
  }
}

function* syncSource(n: number, tally: Tally): Generator<number> {
  for (let i = 0; i < n; i++) {
    tally.pull()
    yield i
  }
}

async function* asyncSource(n: number, tally: Tally): AsyncGenerator<number> {
  for (let i = 0; i < n; i++) {
    tally.pull()
    yield i
  }
}

function makeJob(tally: Tally) {
  return (x: number): Promise<number> => {
    tally.started++
    return new Promise((resolve) => setImmediate(resolve, x))
  }
}

type Runner = (n: number, tally: Tally, capMs: number) => Promise<void>

function ratePoolFromRunner(source: typeof syncSource | typeof asyncSource): Runner {
  return (n, tally) =>
    new Promise((resolve, reject) => {
      ratePoolFrom(source(n, tally), makeJob(tally), { concurrency: CONCURRENCY }).subscribe({
        next: (r) => {
          tally.done++
          if (r.ok) tally.sum += r.value
        },
        error: reject,
        complete: resolve,
      })
    })
}

const runners: Record<string, Runner> = {
  ratePoolFromSync: ratePoolFromRunner(syncSource),
  ratePoolFromAsync: ratePoolFromRunner(asyncSource),

  async floorSync(n, tally) {
    const iterator = syncSource(n, tally)
    const job = makeJob(tally)
    const worker = async () => {
      for (let step = iterator.next(); !step.done; step = iterator.next()) {
        const v = await job(step.value)
        tally.sum += v
        tally.done++
      }
    }
    await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  },

  async floorAsync(n, tally) {
    const iterator = asyncSource(n, tally)
    const job = makeJob(tally)
    const worker = async () => {
      for (let step = await iterator.next(); !step.done; step = await iterator.next()) {
        const v = await job(step.value)
        tally.sum += v
        tally.done++
      }
    }
    await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  },

  // from(asyncIterable) pulls as fast as the generator yields and mergeMap parks the rest
  // in an array drained with shift(): stopped after `capMs`.
  mergeMapAsync(n, tally, capMs) {
    return new Promise((resolve, reject) => {
      let sub: Subscription | null = null
      const timer = setTimeout(() => {
        sub?.unsubscribe()
        resolve()
      }, capMs)
      sub = from(asyncSource(n, tally))
        .pipe(mergeMap(makeJob(tally), CONCURRENCY))
        .subscribe({
          next: (v) => {
            tally.done++
            tally.sum += v
          },
          error: (error: unknown) => {
            clearTimeout(timer)
            reject(error)
          },
          complete: () => {
            clearTimeout(timer)
            resolve()
          },
        })
    })
  },
}

interface LazyParams {
  runner: string
  n: number
  capMs: number
}

async function lazyCase({ runner, n, capMs }: LazyParams): Promise<Metrics> {
  const run = runners[runner]
  if (!run) throw new Error(`unknown runner ${runner}`)
  const tally = new Tally()
  const t0 = performance.now()
  await run(n, tally, capMs)
  const wallMs = performance.now() - t0
  const finished = tally.done === n
  const metrics: Metrics = {
    n,
    wallMs,
    done: tally.done,
    jobsPerSec: (tally.done / wallMs) * 1000,
    pulled: tally.pulled,
    maxBacklog: tally.maxBacklog,
    finished,
  }
  if (finished && tally.sum !== (n * (n - 1)) / 2) metrics.problem = `wrong sum ${tally.sum}`
  if (!finished && runner !== 'mergeMapAsync') {
    metrics.problem = `${tally.done} of ${n} jobs done`
  }
  return metrics
}

interface Row {
  runner: string
  label: string
  ours: boolean
}

const rowsOf: Row[] = [
  { runner: 'floorSync', label: 'hand-written pull loop, sync generator (floor)', ours: false },
  { runner: 'ratePoolFromSync', label: '**ratePoolFrom**(sync generator)', ours: true },
  { runner: 'floorAsync', label: 'hand-written pull loop, async generator (floor)', ours: false },
  { runner: 'ratePoolFromAsync', label: '**ratePoolFrom**(async generator)', ours: true },
]

function sizes(quick: boolean): [number, number] {
  return quick ? [50_000, 500_000] : [50_000, 5_000_000]
}

export const lazy: Benchmark = {
  name: 'lazy',
  title: 'Lazy sources: generator jobs awaiting setImmediate, concurrency 8',
  cases: { lazy: lazyCase },
  plan({ quick, rounds }): Spec[] {
    const [small, big] = sizes(quick)
    const capMs = quick ? 5_000 : 30_000
    const specs: Spec[] = []
    for (const row of rowsOf) {
      for (const n of [small, big]) {
        specs.push({
          id: `${row.runner}@${n}`,
          caseName: 'lazy',
          params: { runner: row.runner, n, capMs },
          rounds: rounds ?? (quick ? 1 : 2),
          timeoutMs: 180_000,
          ours: row.ours,
        })
      }
    }
    specs.push({
      id: `mergeMapAsync@${big}`,
      caseName: 'lazy',
      params: { runner: 'mergeMapAsync', n: big, capMs },
      rounds: 1,
      timeoutMs: capMs + 120_000,
      ours: false,
    })
    return specs
  },
  report(results, { quick }): string {
    const [small, big] = sizes(quick)
    const capMs = quick ? 5_000 : 30_000
    const floorOf = (row: Row) => (row.runner.endsWith('Sync') ? 'floorSync' : 'floorAsync')
    const body = rowsOf.map((row) => {
      const s = results.get(`${row.runner}@${small}`)
      const b = results.get(`${row.runner}@${big}`)
      const floorBig = results.get(`${floorOf(row)}@${big}`)
      const issues = [...problems(s), ...problems(b)]
      const rssSmall = med(s, 'maxRssKiB')
      const rssBig = med(b, 'maxRssKiB')
      return [
        row.label + (issues.length ? ` ⚠ ${issues.join('; ')}` : ''),
        seconds(med(b, 'wallMs')),
        spread(b, 'wallMs'),
        si(med(b, 'jobsPerSec')),
        ratio(med(b, 'jobsPerSec'), med(floorBig, 'jobsPerSec')),
        mb(rssSmall),
        mb(rssBig),
        ratio(rssBig, rssSmall),
        fmt(Math.max(med(s, 'maxBacklog'), med(b, 'maxBacklog')), 0),
      ]
    })
    const m = results.get(`mergeMapAsync@${big}`)
    const mm = m?.[0]
    if (mm) {
      body.push([
        `RxJS \`from(asyncGenerator)\` + \`mergeMap(job, 8)\`${problems(m).length ? ` ⚠ ${problems(m).join('; ')}` : ''}`,
        mm.finished === true
          ? seconds(mm.wallMs as number)
          : `stopped at ${seconds(mm.wallMs as number)}: ${si(mm.done as number)} done, ${si(mm.pulled as number)} pulled`,
        '',
        si(mm.jobsPerSec as number),
        ratio(mm.jobsPerSec as number, med(results.get(`floorAsync@${big}`), 'jobsPerSec')),
        '',
        mb(mm.maxRssKiB as number),
        '',
        fmt(mm.maxBacklog as number, 0),
      ])
    }
    return [
      table(
        [
          'runner',
          `wall at ${si(big)}`,
          'min–max (ms)',
          'jobs/s',
          'speed vs floor (same source kind)',
          `peak RSS at ${si(small)}`,
          `peak RSS at ${si(big)}`,
          'RSS growth',
          'largest backlog pulled, not started',
        ],
        body,
      ),
      '',
      `(the mergeMap row runs once at ${si(big)} jobs and is stopped after ${capMs / 1000} s)`,
    ].join('\n')
  },
}
