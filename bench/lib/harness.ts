/**
 * The shape every benchmark file exports, and the small statistics they share.
 *
 * A benchmark is a set of named cases (each run in a fresh child process by `run.ts`) plus
 * a plan (which cases, with which parameters, how many rounds) and a report that turns the
 * children's metrics into a Markdown table.
 */

/** What a child reports: numbers, labels, and `problem` when a correctness check failed. */
export type Metrics = Record<string, number | string | boolean | null>

export interface RunOptions {
  /** Smaller sizes, shorter windows, one or two rounds: a smoke run in well under a minute. */
  quick: boolean
  /** Overrides every spec's round count. */
  rounds: number | null
  /**
   * `--baseline`: another version of src/, compiled like the one measured, that the
   * benchmarks which support it (redis) run side by side with it in the same rounds.
   * Absent or null: no baseline rows.
   */
  baseline?: Baseline | null
}

export interface Baseline {
  /** The compiled library's dist folder (absolute): `redis/index.js` is under it. */
  dist: string
  /** What was compiled, for the reports: e.g. "src/ of /work/wt-old (commit 1885de9)". */
  label: string
}

export interface Spec {
  /** Row key in the report: unique within a benchmark. */
  id: string
  /** Key into `Benchmark.cases`. */
  caseName: string
  params: Record<string, unknown>
  rounds: number
  /** The parent kills the child after this long and records a timeout. */
  timeoutMs: number
  /** Failures of this row's correctness checks fail the run (ours), or are only reported. */
  ours: boolean
}

export interface Benchmark {
  name: string
  title: string
  // Each case takes its own JSON parameters object.
  cases: Record<string, (params: any) => Promise<Metrics>>
  plan(options: RunOptions): Spec[]
  report(results: Map<string, Metrics[]>, options: RunOptions): string
}

export function median(values: readonly number[]): number {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b)
  if (sorted.length === 0) return Number.NaN
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2
}

/** Nearest-rank quantile of an already sorted array. */
export function quantileSorted(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return Number.NaN
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(q * sorted.length)))
  return sorted[rank - 1] as number
}

/** The median over rounds of one metric; NaN when no round reported it. */
export function med(rounds: Metrics[] | undefined, key: string): number {
  if (!rounds) return Number.NaN
  return median(rounds.map((m) => m[key]).filter((v): v is number => typeof v === 'number'))
}

/** Every round's value of one metric, in the order the rounds ran: "12,741 · 11,976 · —". */
export function each(rounds: Metrics[] | undefined, key: string, digits = 0): string {
  return (rounds ?? [])
    .map((m) => {
      const v = m[key]
      return typeof v === 'number' ? fmt(v, digits) : '—'
    })
    .join(' · ')
}

/**
 * The smallest capacity b such that every window [t_i, t_j] of the merged grant times
 * (sorted, ms) holds at most b + rate·(t_j − t_i) grants: max over i ≤ j of
 * (j − i + 1) − rate·(t_j − t_i). A token bucket of that rate and burst b could have made
 * those grants; one of burst `burst` could not if the result is above it.
 */
export function requiredCapacity(times: ArrayLike<number>, rate: number): number {
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

/** min–max over rounds, for showing the spread next to a median. */
export function spread(rounds: Metrics[] | undefined, key: string, digits = 0): string {
  const values = (rounds ?? [])
    .map((m) => m[key])
    .filter((v): v is number => typeof v === 'number' && Number.isFinite(v))
  if (values.length < 2) return ''
  return `${fmt(Math.min(...values), digits)}–${fmt(Math.max(...values), digits)}`
}

export function fmt(value: number, digits = 0): string {
  if (!Number.isFinite(value)) return Number.isNaN(value) ? '—' : String(value)
  return value.toLocaleString('en-US', {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  })
}

/** 1234567 → "1.23 M", 12345 → "12.3 k". */
export function si(value: number): string {
  if (!Number.isFinite(value)) return '—'
  const abs = Math.abs(value)
  if (abs >= 1e6) return `${(value / 1e6).toPrecision(3)} M`
  if (abs >= 1e3) return `${(value / 1e3).toPrecision(3)} k`
  return value.toPrecision(3)
}

export function seconds(ms: number): string {
  if (!Number.isFinite(ms)) return '—'
  if (ms >= 10_000) return `${fmt(ms / 1000, 1)} s`
  if (ms >= 1000) return `${fmt(ms / 1000, 2)} s`
  return `${fmt(ms, ms >= 100 ? 0 : 1)} ms`
}

export function mb(kib: number): string {
  return Number.isFinite(kib) ? `${fmt(kib / 1024, 0)} MB` : '—'
}

export function ratio(value: number, base: number): string {
  if (!Number.isFinite(value) || !Number.isFinite(base) || base === 0) return '—'
  const r = value / base
  return `${r >= 10 ? fmt(r, 0) : r >= 1 ? fmt(r, 2) : fmt(r, 3)}×`
}

/** Rows → a Markdown table. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`]
  for (const row of rows) lines.push(`| ${row.join(' | ')} |`)
  return lines.join('\n')
}

/** Problems reported by the rounds of one row, de-duplicated, with how many rounds had each. */
export function problems(rounds: Metrics[] | undefined): string[] {
  const seen = new Map<string, number>()
  for (const m of rounds ?? []) {
    if (typeof m.problem === 'string') seen.set(m.problem, (seen.get(m.problem) ?? 0) + 1)
  }
  const total = rounds?.length ?? 0
  return [...seen].map(([problem, k]) =>
    total > 1 ? `${problem} (${k}/${total} rounds)` : problem,
  )
}

/** The largest (or smallest) value of one metric over rounds. */
export function extreme(rounds: Metrics[] | undefined, key: string, pick: 'max' | 'min'): number {
  const values = (rounds ?? [])
    .map((m) => m[key])
    .filter((v): v is number => typeof v === 'number' && Number.isFinite(v))
  if (values.length === 0) return Number.NaN
  return pick === 'max' ? Math.max(...values) : Math.min(...values)
}
