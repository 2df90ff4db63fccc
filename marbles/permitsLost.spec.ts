/**
 * A shared permit lost while held (issue 8, item 2), on the pool's side: `Permits.acquire()`
 * emits the `Release`, stays open, and errors with `LeaseLostError` at a chosen frame. The
 * attempt running on it ends at that very frame (its signal aborted with that error, its
 * inner unsubscribed) and counts as failed then; a job waiting for its token or its retry
 * delay asks for a new permit; a late settlement of the ended attempt changes nothing.
 */
import { map, Observable, type ObservableInput } from 'rxjs'
import { describe, expect, it } from 'vitest'
import { LeaseLostError } from '../src/errors.js'
import {
  JobError,
  type Limiter,
  type Permits,
  PoolMetrics,
  type Release,
  type Result,
  ratePool,
  type TaskContext,
} from '../src/index.js'
import { createScheduler, ko, ok, pendingAt } from './helpers.js'

const gauges = (metrics: PoolMetrics) => ({
  queued: metrics.queued,
  waiting: metrics.waiting,
  inFlight: metrics.inFlight,
})
const idle = { queued: 0, waiting: 0, inFlight: 0 }

/**
 * A fake `Permits` whose n-th `acquire()` is `scripts[n]`: an Observable that emits a
 * `Release` made by `release(name)` and may error later (the loss). Calls to each release
 * are recorded with their frame.
 */
function scripted(now: () => number) {
  const released: [string, number][] = []
  const scripts: Observable<Release>[] = []
  let acquired = 0
  const permits: Permits = {
    acquire: () => {
      const script = scripts[acquired++]
      if (script === undefined) throw new Error(`acquire #${acquired}: no script`)
      return script
    },
  }
  const release =
    (name: string): Release =>
    () =>
      released.push([name, now()])
  return { permits, scripts, released, acquires: () => acquired, release }
}

/** Records when and why each attempt's signal aborted: `value#attempt` → [frame, reason]. */
function abortLog(now: () => number) {
  const aborted = new Map<string, [number, unknown]>()
  const watch = <T>(value: T, { signal, attempt }: TaskContext<T>) =>
    signal.addEventListener('abort', () =>
      aborted.set(`${String(value)}#${attempt}`, [now(), signal.reason]),
    )
  return { aborted, watch }
}

describe('ratePool: a permit lost while its job runs', () => {
  it('ends that attempt at the frame of the loss: signal aborted with the LeaseLostError, failed then (attempts 1)', () => {
    const scheduler = createScheduler()
    const now = () => scheduler.now()
    const lost = new LeaseLostError('the lease could not be confirmed')
    const fake = scripted(now)
    const { aborted, watch } = abortLog(now)
    const metrics = new PoolMetrics()
    let probe = { count: Number.NaN }
    scheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const permitA = cold<Release>('r 49ms #', { r: fake.release('a') }, lost)
      const permitB = cold<Release>('r       ', { r: fake.release('b') })
      fake.scripts.push(permitA, permitB)
      const inners = { a: cold('200ms (x|)'), b: cold('80ms (y|)') }
      const out = cold<'a' | 'b'>('(ab|)').pipe(
        ratePool(
          (value: 'a' | 'b', ctx: TaskContext<'a' | 'b'>) => {
            watch(value, ctx)
            return inners[value]
          },
          { concurrency: 2, permits: fake.permits, errors: 'collect', metrics },
        ),
      )
      expectObservable(out).toBe('50ms A 29ms (B|)', {
        A: ko(0, 'a', lost, 50),
        B: ok(1, 'b', 'y', 80),
      })
      expectSubscriptions(inners.a.subscriptions).toBe('^ 49ms !')
      expectSubscriptions(inners.b.subscriptions).toBe('^ 79ms !')
      expectSubscriptions(permitA.subscriptions).toBe('^ 49ms !')
      expectSubscriptions(permitB.subscriptions).toBe('^ 79ms !')
      probe = pendingAt(scheduler, 81)
    })
    expect([...aborted]).toEqual([['a#1', [50, lost]]])
    expect(lost.code).toBe('RX_FANOUT_LEASE_LOST')
    // The lost permit is not given back (its holder already dropped it); b's is, at its result.
    expect(fake.released).toEqual([['b', 80]])
    expect(fake.acquires()).toBe(2)
    expect(probe.count).toBe(0)
    expect(gauges(metrics)).toEqual(idle)
  })

  it('with attempts 2 the job retries on a new permit, from the frame of the loss', () => {
    const scheduler = createScheduler()
    const now = () => scheduler.now()
    const lost = new LeaseLostError('redis no longer has it')
    const fake = scripted(now)
    const { aborted, watch } = abortLog(now)
    const calls: [number, number][] = []
    const metrics = new PoolMetrics()
    let probe = { count: Number.NaN }
    scheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const first = cold<Release>('r 49ms #', { r: fake.release('first') }, lost)
      const second = cold<Release>('r       ', { r: fake.release('second') })
      fake.scripts.push(first, second)
      const inners = [cold('200ms (x|)'), cold('30ms (z|)')]
      const out = cold('(a|)').pipe(
        ratePool(
          (value: string, ctx: TaskContext<string>) => {
            watch(value, ctx)
            calls.push([now(), ctx.attempt])
            return inners[ctx.attempt - 1] as ObservableInput<string>
          },
          {
            concurrency: 1,
            permits: fake.permits,
            errors: 'collect',
            retry: { attempts: 2, random: () => 0 },
            metrics,
          },
        ),
      )
      expectObservable(out).toBe('80ms (R|)', { R: ok(0, 'a', 'z', 80, 2) })
      expectSubscriptions(inners[0]!.subscriptions).toBe('^ 49ms !      ')
      expectSubscriptions(inners[1]!.subscriptions).toBe('50ms ^ 29ms !')
      expectSubscriptions(first.subscriptions).toBe('    ^ 49ms !      ')
      expectSubscriptions(second.subscriptions).toBe('   50ms ^ 29ms !')
      probe = pendingAt(scheduler, 81)
    })
    expect(calls).toEqual([
      [0, 1],
      [50, 2],
    ])
    expect([...aborted]).toEqual([['a#1', [50, lost]]])
    expect(fake.released).toEqual([['second', 80]])
    expect(metrics.retried).toBe(1)
    expect(probe.count).toBe(0)
    expect(gauges(metrics)).toEqual(idle)
  })

  it('fail-fast with attempts 1: the pool errors at that frame with a JobError whose cause is the loss', () => {
    const scheduler = createScheduler()
    const lost = new LeaseLostError('lost')
    const fake = scripted(() => scheduler.now())
    scheduler.run(({ cold, expectObservable }) => {
      fake.scripts.push(cold<Release>('r 49ms #', { r: fake.release('a') }, lost))
      const out = cold('(a|)').pipe(
        ratePool(() => cold('200ms (x|)'), { concurrency: 1, permits: fake.permits }),
      )
      expectObservable(out).toBe('50ms #', undefined, new JobError({ id: 0, value: 'a' }, lost, 1))
    })
    expect(fake.released).toEqual([])
  })

  it('a late settlement of the ended attempt’s Promise is ignored, even during the next attempt', async () => {
    const scheduler = createScheduler()
    const now = () => scheduler.now()
    const lostA = new LeaseLostError('a lost')
    const lostB = new LeaseLostError('b lost')
    const fake = scripted(now)
    const { aborted, watch } = abortLog(now)
    // Every attempt's Promise, settled by hand once virtual time has run.
    const settle = new Map<string, { resolve(v: string): void; reject(e: unknown): void }>()
    const results: Result<string, string>[] = []
    let completed = false
    const metrics = new PoolMetrics()
    scheduler.run(({ cold }) => {
      fake.scripts.push(
        cold<Release>('r 49ms #', { r: fake.release('a1') }, lostA),
        cold<Release>('r 59ms #', { r: fake.release('b1') }, lostB),
        cold<Release>('r', { r: fake.release('a2') }),
        cold<Release>('r', { r: fake.release('b2') }),
      )
      cold('(ab|)')
        .pipe(
          ratePool(
            (value: string, ctx: TaskContext<string>) => {
              watch(value, ctx)
              // A process that ignores its signal: the worst case for a late settlement.
              return new Promise<string>((resolve, reject) =>
                settle.set(`${value}#${ctx.attempt}`, { resolve, reject }),
              )
            },
            {
              concurrency: 2,
              permits: fake.permits,
              errors: 'collect',
              retry: { attempts: 2, random: () => 0 },
              metrics,
              // Its clock stays virtual after run() (asyncScheduler only is while it runs).
              scheduler,
            },
          ),
        )
        .subscribe({ next: (r) => results.push(r), complete: () => (completed = true) })
    })
    // Virtual time is over: both first attempts ended at their loss, both second ones run.
    expect([...aborted]).toEqual([
      ['a#1', [50, lostA]],
      ['b#1', [60, lostB]],
    ])
    expect([...settle.keys()]).toEqual(['a#1', 'b#1', 'a#2', 'b#2'])
    expect(metrics.inFlight).toBe(2)
    // The ended attempts settle now, while the next ones run: nothing happens.
    settle.get('a#1')?.resolve('stale')
    settle.get('b#1')?.reject(new Error('stale failure'))
    await new Promise((resolve) => setImmediate(resolve))
    expect(results).toEqual([])
    expect(metrics.inFlight).toBe(2)
    // Only the running attempts' own outcomes count.
    settle.get('b#2')?.resolve('b fresh')
    settle.get('a#2')?.resolve('a fresh')
    await new Promise((resolve) => setImmediate(resolve))
    expect(results).toEqual([ok(1, 'b', 'b fresh', 60, 2), ok(0, 'a', 'a fresh', 60, 2)])
    expect(completed).toBe(true)
    expect(fake.released.map(([name]) => name)).toEqual(['b2', 'a2'])
    expect(gauges(metrics)).toEqual(idle)
  })

  it('attempts 1 with a Promise: { ok: false, code RX_FANOUT_LEASE_LOST } at the loss, the late value ignored', async () => {
    const scheduler = createScheduler()
    const lost = new LeaseLostError('lost')
    const fake = scripted(() => scheduler.now())
    let resolveLate: (v: string) => void = () => {}
    const results: Result<string, string>[] = []
    let completedAt = Number.NaN
    scheduler.run(({ cold }) => {
      fake.scripts.push(cold<Release>('r 49ms #', { r: fake.release('a') }, lost))
      cold('(a|)')
        .pipe(
          ratePool(() => new Promise<string>((resolve) => (resolveLate = resolve)), {
            concurrency: 1,
            permits: fake.permits,
            errors: 'collect',
          }),
        )
        .subscribe({
          next: (r) => results.push(r),
          complete: () => (completedAt = scheduler.now()),
        })
    })
    expect(results).toEqual([ko(0, 'a', lost, 50)])
    expect(results[0]?.ok === false && (results[0].error as LeaseLostError).code).toBe(
      'RX_FANOUT_LEASE_LOST',
    )
    expect(completedAt).toBe(50)
    resolveLate('late')
    await new Promise((resolve) => setImmediate(resolve))
    expect(results).toHaveLength(1)
  })
})

describe('ratePool: a permit lost while its job waits', () => {
  it('in its token wait: the wait is given up and the job asks for a new permit, the attempt not counted', () => {
    const scheduler = createScheduler()
    const now = () => scheduler.now()
    const lost = new LeaseLostError('lost')
    const fake = scripted(now)
    const calls: [number, number][] = []
    const metrics = new PoolMetrics()
    let probe = { count: Number.NaN }
    scheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const first = cold<Release>('r 49ms #', { r: fake.release('first') }, lost)
      const second = cold<Release>('r', { r: fake.release('second') })
      fake.scripts.push(first, second)
      // A limiter whose every take is granted 100 frames after it is asked for.
      const takes = [cold<void>('100ms (t|)'), cold<void>('100ms (t|)')]
      let taken = 0
      const limiter: Limiter = { take: () => takes[taken++] as Observable<void> }
      const inner = cold('10ms (x|)')
      const out = cold('(a|)').pipe(
        ratePool(
          (_: string, ctx: TaskContext<string>) => {
            calls.push([now(), ctx.attempt])
            return inner
          },
          { concurrency: 1, limiter, permits: fake.permits, errors: 'collect', metrics },
        ),
      )
      expectObservable(out).toBe('160ms (R|)', { R: ok(0, 'a', 'x', 10, 1) })
      expectSubscriptions(first.subscriptions).toBe('      ^ 49ms !            ')
      expectSubscriptions(takes[0]!.subscriptions).toBe('^ 49ms !            ')
      expectSubscriptions(second.subscriptions).toBe('     50ms ^ 109ms !')
      expectSubscriptions(takes[1]!.subscriptions).toBe('50ms ^ 99ms !      ')
      expectSubscriptions(inner.subscriptions).toBe('    150ms ^ 9ms !  ')
      probe = pendingAt(scheduler, 161)
    })
    expect(calls).toEqual([[150, 1]])
    expect(fake.released).toEqual([['second', 160]])
    expect(probe.count).toBe(0)
    expect(gauges(metrics)).toEqual(idle)
  })

  it('in its retry delay: the next attempt asks for a new permit when the delay ends', () => {
    const scheduler = createScheduler()
    const now = () => scheduler.now()
    const lost = new LeaseLostError('lost')
    const flaky = new Error('flaky')
    const fake = scripted(now)
    const { aborted, watch } = abortLog(now)
    const metrics = new PoolMetrics()
    let probe = { count: Number.NaN }
    scheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const first = cold<Release>('r 29ms #', { r: fake.release('first') }, lost)
      const second = cold<Release>('r', { r: fake.release('second') })
      fake.scripts.push(first, second)
      const inners = [cold<string>('10ms #', undefined, flaky), cold('10ms (x|)')]
      const out = cold('(a|)').pipe(
        ratePool(
          (value: string, ctx: TaskContext<string>) => {
            watch(value, ctx)
            return inners[ctx.attempt - 1] as ObservableInput<string>
          },
          {
            concurrency: 1,
            permits: fake.permits,
            errors: 'collect',
            // Backoff floor(0.5 · 100) = 50: attempt 1 fails at 10, attempt 2 starts at 60.
            retry: { attempts: 2, random: () => 0.5 },
            metrics,
          },
        ),
      )
      expectObservable(out).toBe('70ms (R|)', { R: ok(0, 'a', 'x', 70, 2) })
      expectSubscriptions(first.subscriptions).toBe('^ 29ms !           ')
      expectSubscriptions(second.subscriptions).toBe('60ms ^ 9ms !')
      expectSubscriptions(inners[1]!.subscriptions).toBe('60ms ^ 9ms !')
      probe = pendingAt(scheduler, 71)
    })
    // Lost between attempts: no attempt was running, no signal to abort.
    expect([...aborted]).toEqual([])
    expect(fake.released).toEqual([['second', 70]])
    expect(probe.count).toBe(0)
    expect(gauges(metrics)).toEqual(idle)
  })

  it('lost in the very call that granted it (emitted and errored synchronously): the job never runs on it', () => {
    const scheduler = createScheduler()
    const now = () => scheduler.now()
    const lost = new LeaseLostError('lost at once')
    const fake = scripted(now)
    // Permits granted and neither lost nor released, as each process call sees them.
    let live = 0
    const grant = (name: string) => {
      live++
      let over = false
      const release = fake.release(name)
      return {
        release: () => {
          if (over) return
          over = true
          live--
          release()
        },
        lose: () => {
          over = true
          live--
        },
      }
    }
    const liveAtCall: number[] = []
    const metrics = new PoolMetrics()
    scheduler.run(({ cold, expectObservable }) => {
      fake.scripts.push(
        new Observable<Release>((subscriber) => {
          const permit = grant('first')
          subscriber.next(permit.release)
          permit.lose()
          subscriber.error(lost)
        }),
        cold('5ms r').pipe(map(() => grant('second').release)),
      )
      const out = cold('(a|)').pipe(
        ratePool(
          () => {
            liveAtCall.push(live)
            return cold('10ms (x|)')
          },
          { concurrency: 1, permits: fake.permits, errors: 'collect', metrics },
        ),
      )
      expectObservable(out).toBe('15ms (R|)', { R: ok(0, 'a', 'x', 10, 1) })
    })
    expect(liveAtCall).toEqual([1])
    expect(fake.acquires()).toBe(2)
    expect(gauges(metrics)).toEqual(idle)
  })
})
