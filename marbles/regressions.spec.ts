/** Regressions for bugs found by the final review of src/. */
import { Subject, timer } from 'rxjs'
import { describe, expect, it } from 'vitest'
import { PoolMetrics, ratePool, TokenBucket } from '../src/index.js'
import { createScheduler } from './helpers.js'

describe('fail-fast stops the pool before the error is delivered', () => {
  it('an error handler that frees a shared token starts none of this pool’s waiting jobs', () => {
    const scheduler = createScheduler()
    const calls: string[] = []
    scheduler.run(({ cold }) => {
      // One bucket (rate 1, burst 2) shared by the pool and by an outside take(2): a takes a
      // token at 0; the outside take(2) waits from 1; b waits behind it from 2.
      const bucket = new TokenBucket({ rate: 1, burst: 2 })
      let outside = { unsubscribe() {} }
      scheduler.schedule(() => {
        outside = bucket.take(2).subscribe()
      }, 1)
      cold('a-b')
        .pipe(
          ratePool(
            (v: string) => {
              calls.push(`${v}@${scheduler.now()}`)
              return v === 'a' ? cold('50ms #') : cold('10ms (x|)')
            },
            { concurrency: 2, limiter: bucket },
          ),
        )
        .subscribe({
          error: () => {
            calls.push(`error@${scheduler.now()}`)
            // Giving up the head's wait makes the bucket serve the next waiter at once:
            // b, whose token is due (1.05 tokens at 50), unless the pool already gave up.
            outside.unsubscribe()
          },
        })
    })
    expect(calls).toEqual(['a@0', 'error@50'])
  })
})

describe('drain', () => {
  it('called from a result, starts no queued value', () => {
    const scheduler = createScheduler()
    const calls: number[] = []
    scheduler.run(() => {
      const source = new Subject<number>()
      const drain = new Subject<void>()
      source
        .pipe(
          ratePool(
            (v: number) => {
              calls.push(v)
              return timer(10 * (v + 1))
            },
            { concurrency: 2, drain },
          ),
        )
        .subscribe(() => drain.next())
      for (let v = 0; v < 6; v++) source.next(v)
    })
    // 0 and 1 started; the first result (0, at 10) drains: 2..5 were queued, none starts.
    expect(calls).toEqual([0, 1])
  })
})

describe('metrics', () => {
  it('a token wait that errors at once is not left counted as waiting', () => {
    const scheduler = createScheduler()
    const metrics = new PoolMetrics()
    let error: unknown
    scheduler.run(({ cold }) => {
      // Burst 0 at a finite rate: take(1) errors with BurstExceededError at once.
      const bucket = new TokenBucket({ rate: 1, burst: 0 })
      cold('(a|)')
        .pipe(ratePool(() => cold('(x|)'), { concurrency: 1, limiter: bucket, metrics }))
        .subscribe({ error: (e: unknown) => (error = e) })
    })
    expect(error).toHaveProperty('code', 'RX_FANOUT_BURST_EXCEEDED')
    expect(metrics.snapshot()).toMatchObject({ waiting: 0, inFlight: 0, queued: 0 })
  })
})
