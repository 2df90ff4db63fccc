/**
 * rateLimit overhead: 10^6 synchronous values through a limiter that never limits, against
 * the source alone and `map(x => x)`. What the token check costs per value on the pass-
 * through path.
 */
import { identity, map, type Observable, type OperatorFunction, range } from 'rxjs'
import { rateLimit, TokenBucket } from '../src/index.js'
import {
  type Benchmark,
  fmt,
  type Metrics,
  med,
  median,
  problems,
  ratio,
  type Spec,
  spread,
  table,
} from './lib/harness.js'

type Variant = () => OperatorFunction<number, number>

// Each factory is called once per timed iteration, so a shared bucket starts full each time.
const variants: Record<string, { label: string; make: Variant; ours: boolean }> = {
  none: { label: '`range` alone (no operator)', make: () => identity, ours: false },
  map: { label: '`map(x => x)`', make: () => map((x: number) => x), ours: false },
  infinite: {
    label: '**rateLimit**({ rate: Infinity, burst: 1 })',
    make: () => rateLimit({ rate: Number.POSITIVE_INFINITY, burst: 1 }),
    ours: true,
  },
  sharedInfinite: {
    label: '**rateLimit**(new TokenBucket({ rate: Infinity, burst: 1 }))',
    make: () => rateLimit(new TokenBucket({ rate: Number.POSITIVE_INFINITY, burst: 1 })),
    ours: true,
  },
  finite: {
    label: '**rateLimit**({ rate: 1e12, burst: 1e6 })',
    make: () => rateLimit({ rate: 1e12, burst: 1e6 }),
    ours: true,
  },
  sharedFinite: {
    label: '**rateLimit**(new TokenBucket({ rate: 1e12, burst: 1e6 }))',
    make: () => rateLimit(new TokenBucket({ rate: 1e12, burst: 1e6 })),
    ours: true,
  },
}

interface OverheadParams {
  variant: string
  n: number
  iterations: number
}

function once(source: Observable<number>, operator: OperatorFunction<number, number>): number {
  let count = 0
  let completed = false
  // range is synchronous, and so is every variant while it never limits: the whole run
  // happens inside subscribe().
  source.pipe(operator).subscribe({
    next: () => {
      count++
    },
    complete: () => {
      completed = true
    },
  })
  return completed ? count : -1
}

async function overhead({ variant, n, iterations }: OverheadParams): Promise<Metrics> {
  const v = variants[variant]
  if (!v) throw new Error(`unknown variant ${variant}`)
  const source = range(0, n)
  const times: number[] = []
  let problem: string | null = null
  for (let i = 0; i < iterations; i++) {
    const operator = v.make()
    const t0 = performance.now()
    const count = once(source, operator)
    times.push(performance.now() - t0)
    if (count !== n && problem === null) {
      problem = `iteration ${i}: ${count === -1 ? 'did not complete synchronously' : `${count} values`}, expected ${n}`
    }
  }
  const [cold = Number.NaN, ...warm] = times
  const metrics: Metrics = {
    n,
    coldNsPerValue: (cold * 1e6) / n,
    // Steady state: the median of the iterations after the first (JIT warm).
    nsPerValue: (median(warm) * 1e6) / n,
  }
  if (problem !== null) metrics.problem = problem
  return metrics
}

export const rateLimitOverhead: Benchmark = {
  name: 'rateLimit',
  title: 'rateLimit overhead: 10^6 synchronous values, a limiter that never limits',
  cases: { overhead },
  plan({ quick, rounds }): Spec[] {
    return Object.entries(variants).map(([variant, v]) => ({
      id: variant,
      caseName: 'overhead',
      params: { variant, n: quick ? 200_000 : 1_000_000, iterations: quick ? 4 : 8 },
      rounds: rounds ?? (quick ? 1 : 5),
      timeoutMs: 60_000,
      ours: v.ours,
    }))
  },
  report(results): string {
    const mapNs = med(results.get('map'), 'nsPerValue')
    const body = Object.entries(variants).map(([variant, v]) => {
      const r = results.get(variant)
      const ns = med(r, 'nsPerValue')
      const issues = problems(r)
      return [
        v.label + (issues.length ? ` ⚠ ${issues.join('; ')}` : ''),
        fmt(ns, 1),
        spread(r, 'nsPerValue', 1),
        fmt(med(r, 'coldNsPerValue'), 1),
        ratio(ns, mapNs),
        fmt(ns - mapNs, 1),
      ]
    })
    return table(
      [
        'pipeline',
        'ns/value (warm median)',
        'min–max over rounds',
        'ns/value (first iteration)',
        'vs map',
        'ns/value over map',
      ],
      body,
    )
  },
}
