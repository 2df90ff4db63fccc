/**
 * `npm run demo`: rx-fanout on the real clock, printed as it happens.
 *
 * 1. rateLimit: 25 values at once through 10/s burst 5; the rate is raised to 20/s
 *    halfway. Each emission is printed with its time; the envelope is checked at the end.
 * 2. ratePoolFrom: 30 jobs of 150 ms, 4 slots, 10/s burst 5; a job fails with a
 *    Retry-After once and is retried. Starts, in-flight and the pool's metrics are printed.
 */
import { asyncScheduler, range, tap, timer } from 'rxjs'
import { map } from 'rxjs/operators'
import { PoolMetrics, rateLimit, ratePoolFrom, TokenBucket } from '../src/index.js'

const clock = () => asyncScheduler.now()

/** Largest count of events in any window, minus what a bucket of this rate allows. */
function worstExcess(times: number[], rate: number, burst: number): number {
  let worst = Number.NEGATIVE_INFINITY
  for (let i = 0; i < times.length; i++) {
    for (let j = i; j < times.length; j++) {
      const allowed = burst + (rate * ((times[j] as number) - (times[i] as number))) / 1000
      worst = Math.max(worst, j - i + 1 - allowed)
    }
  }
  return worst
}

async function rateLimitDemo(): Promise<void> {
  console.log('— rateLimit: 25 values at 0 ms through 10/s, burst 5; rate → 20/s at 1000 ms')
  const bucket = new TokenBucket({ rate: 10, burst: 5 })
  const t0 = clock()
  const times: number[] = []
  const raise = timer(1000).subscribe(() => {
    bucket.setRate(20)
    console.log(`  ${String(clock() - t0).padStart(5)} ms  setRate(20): waiting values re-planned`)
  })
  await new Promise<void>((resolve, reject) =>
    range(0, 25)
      .pipe(rateLimit(bucket))
      .subscribe({
        next: (v) => {
          const t = clock() - t0
          times.push(t)
          console.log(`  ${String(t).padStart(5)} ms  value ${v}`)
        },
        error: reject,
        complete: resolve,
      }),
  )
  raise.unsubscribe()
  const before = times.filter((t) => t < 1000)
  const after = times.filter((t) => t >= 1000)
  console.log(
    `  burst: ${times.filter((t) => t < 50).length} at once; ` +
      `before the change ${before.length} values, after it ${after.length}; ` +
      `worst excess over the 10/s+5 envelope before 1000 ms: ${worstExcess(before, 10, 5).toFixed(2)} (≤ 0 is within)`,
  )
}

async function poolDemo(): Promise<void> {
  console.log('\n— ratePoolFrom: 30 jobs of 150 ms, concurrency 4, 10/s burst 5, errors collected')
  const metrics = new PoolMetrics()
  const t0 = clock()
  let inFlight = 0
  let maxInFlight = 0
  const starts: number[] = []
  let throttled = false
  const ids = (function* () {
    for (let id = 1; id <= 30; id++) yield id
  })()
  const results = await new Promise<number>((resolve, reject) => {
    let count = 0
    ratePoolFrom(
      ids,
      (id, { attempt }) => {
        starts.push(clock() - t0)
        inFlight++
        maxInFlight = Math.max(maxInFlight, inFlight)
        return timer(150).pipe(
          map(() => {
            if (id === 12 && !throttled) {
              throttled = true
              // The downstream pushes back: everyone pauses 300 ms, this job is retried.
              throw Object.assign(new Error('429 Too Many Requests'), { retryAfterMs: 300 })
            }
            return `user ${id} (attempt ${attempt})`
          }),
          tap({ finalize: () => inFlight-- }),
        )
      },
      {
        concurrency: 4,
        limiter: { rate: 10, burst: 5 },
        errors: 'collect',
        retry: { attempts: 3, baseDelayMs: 50 },
        metrics,
      },
    ).subscribe({
      next: (r) => {
        count++
        const t = String(clock() - t0).padStart(5)
        console.log(
          `  ${t} ms  job ${r.job.id} ${r.ok ? `ok: ${r.value}` : `failed: ${String(r.error)}`}`,
        )
      },
      error: reject,
      complete: () => resolve(count),
    })
  })
  const s = metrics.snapshot()
  console.log(
    `  ${results} results; max in flight ${maxInFlight} (cap 4); retried ${s.retried}; ` +
      `worst excess of starts over the 10/s+5 envelope: ${worstExcess(starts, 10, 5).toFixed(2)} (≤ 0 is within); ` +
      `latency p50 ${s.latency.p50} ms, p99 ${s.latency.p99} ms`,
  )
}

await rateLimitDemo()
await poolDemo()
