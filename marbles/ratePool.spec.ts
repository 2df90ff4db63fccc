import { getEventListeners } from 'node:events'
import fc from 'fast-check'
import {
  finalize,
  firstValueFrom,
  from,
  map,
  Observable,
  type ObservableInput,
  of,
  Subject,
  tap,
  timer,
  toArray,
} from 'rxjs'
import type { ColdObservable } from 'rxjs/internal/testing/ColdObservable'
import { describe, expect, it } from 'vitest'
import {
  CancelledError,
  JobError,
  PoolMetrics,
  type PoolOptions,
  QueueOverflowError,
  type Result,
  ratePool,
  type TaskContext,
  TokenBucket,
} from '../src/index.js'
import { createScheduler, ko, ok, pendingAt, thrownBy } from './helpers.js'

/** The gauges a pool must bring back to zero whatever way it ends. */
const gauges = (metrics: PoolMetrics) => ({
  queued: metrics.queued,
  waiting: metrics.waiting,
  inFlight: metrics.inFlight,
})
const idle = { queued: 0, waiting: 0, inFlight: 0 }

/**
 * Whether `starts` keep a bucket's envelope: at most `burst + rate·w` starts in any
 * window of `w` seconds (the bucket starts full).
 */
function withinEnvelope(starts: readonly number[], rate: number, burst: number): boolean {
  const sorted = [...starts].sort((a, b) => a - b)
  for (let i = 0; i < sorted.length; i++) {
    for (let j = i; j < sorted.length; j++) {
      const window = (sorted[j] as number) - (sorted[i] as number)
      if (j - i + 1 > burst + (rate * window) / 1000 + 1e-9) return false
    }
  }
  return true
}

/**
 * Runs `fn` with the process-wide uncaught-exception handlers swapped for a collector, so
 * that an error Node reports on its own (an abort listener that throws) is asserted
 * instead of failing the run; the handlers are restored afterwards.
 */
async function collectUncaught(fn: () => void): Promise<unknown[]> {
  const caught: unknown[] = []
  const saved = process.listeners('uncaughtException')
  const collect = (error: unknown) => caught.push(error)
  process.removeAllListeners('uncaughtException')
  process.on('uncaughtException', collect)
  try {
    fn()
    await new Promise((resolve) => setImmediate(resolve))
  } finally {
    process.off('uncaughtException', collect)
    for (const listener of saved) process.on('uncaughtException', listener)
  }
  return caught
}

describe('ratePool', () => {
  describe('slot, then token, then start', () => {
    it('concurrency 2, 10/s burst 2, jobs of 1000 ms: two start together at 0, 1000 and 2000', () => {
      const testScheduler = createScheduler()
      const starts: number[] = []
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  (abcdef|)')
        // The bucket is full again (2 tokens) long before the slots free up: two at once
        // is within the burst.
        const expected = '     1000ms (AB) 996ms (CD) 996ms (EF|)'
        const work = (value: string) => {
          starts.push(testScheduler.now())
          return cold('1000ms (x|)', { x: value.toUpperCase() })
        }
        const out = source.pipe(ratePool(work, { concurrency: 2, limiter: { rate: 10, burst: 2 } }))
        expectObservable(out).toBe(expected, {
          A: ok(0, 'a', 'A', 1000),
          B: ok(1, 'b', 'B', 1000),
          C: ok(2, 'c', 'C', 1000),
          D: ok(3, 'd', 'D', 1000),
          E: ok(4, 'e', 'E', 1000),
          F: ok(5, 'f', 'F', 1000),
        })
        expectSubscriptions(source.subscriptions).toBe('(^!)')
      })
      expect(starts).toEqual([0, 0, 1000, 1000, 2000, 2000])
    })

    it('concurrency 2, 1/s burst 1: the free slot does not help, starts stay 1000 ms apart', () => {
      const testScheduler = createScheduler()
      const starts: number[] = []
      testScheduler.run(({ cold, expectObservable }) => {
        const source = cold('  (abcd|)')
        const expected = '     1000ms A 999ms B 999ms C 999ms (D|)'
        const work = (value: string) => {
          starts.push(testScheduler.now())
          return cold('1000ms (x|)', { x: value.toUpperCase() })
        }
        const out = source.pipe(ratePool(work, { concurrency: 2, limiter: { rate: 1, burst: 1 } }))
        expectObservable(out).toBe(expected, {
          A: ok(0, 'a', 'A', 1000),
          B: ok(1, 'b', 'B', 1000),
          C: ok(2, 'c', 'C', 1000),
          D: ok(3, 'd', 'D', 1000),
        })
      })
      expect(starts).toEqual([0, 1000, 2000, 3000])
      expect(withinEnvelope(starts, 1, 1)).toBe(true)
    })

    it('slots freed together do not release a bunch of banked tokens: 10/s burst 1', () => {
      // a, b, c start at 0, 100, 200 and all end at 1000. Had d, e, f taken their tokens
      // while waiting for a slot (at 300, 400, 500) they would all start at 1000: three
      // starts in one instant with a burst of 1.
      const testScheduler = createScheduler()
      const starts: number[] = []
      const durations: Record<string, number> = { a: 1000, b: 900, c: 800, d: 100, e: 100, f: 100 }
      testScheduler.run(({ cold, expectObservable }) => {
        const source = cold('  (abcdef|)')
        const expected = '     1000ms (ABC) 95ms D 99ms E 99ms (F|)'
        const work = (value: string) => {
          starts.push(testScheduler.now())
          return cold(`${durations[value]}ms (x|)`, { x: value.toUpperCase() })
        }
        const out = source.pipe(
          ratePool(work, {
            concurrency: 3,
            limiter: { rate: 10, burst: 1 },
            scheduler: testScheduler,
          }),
        )
        expectObservable(out).toBe(expected, {
          A: ok(0, 'a', 'A', 1000),
          B: ok(1, 'b', 'B', 900),
          C: ok(2, 'c', 'C', 800),
          D: ok(3, 'd', 'D', 100),
          E: ok(4, 'e', 'E', 100),
          F: ok(5, 'f', 'F', 100),
        })
      })
      expect(starts).toEqual([0, 100, 200, 1000, 1100, 1200])
      expect(withinEnvelope(starts, 10, 1)).toBe(true)
    })

    it('property: starts keep the envelope and arrival order, never more than concurrency run', () => {
      const scenario = fc.record({
        concurrency: fc.integer({ min: 1, max: 4 }),
        rate: fc.constantFrom(1, 2, 3, 7, 10, 50),
        burst: fc.integer({ min: 1, max: 3 }),
        jobs: fc.array(
          fc.record({
            gap: fc.integer({ min: 0, max: 400 }),
            duration: fc.integer({ min: 0, max: 1500 }),
          }),
          { minLength: 1, maxLength: 12 },
        ),
      })
      fc.assert(
        fc.property(scenario, ({ concurrency, rate, burst, jobs }) => {
          const testScheduler = createScheduler()
          const starts: number[] = []
          const results: Result<number, number>[] = []
          let running = 0
          let mostRunning = 0
          let completed = false
          testScheduler.run(() => {
            // Value i arrives jobs[i].gap after value i - 1 and lasts jobs[i].duration.
            const source = new Observable<number>((subscriber) => {
              let at = 0
              jobs.forEach(({ gap }, i) => {
                at += gap
                subscriber.add(testScheduler.schedule(() => subscriber.next(i), at))
              })
              subscriber.add(testScheduler.schedule(() => subscriber.complete(), at))
            })
            const work = (i: number) => {
              starts[i] = testScheduler.now()
              running++
              mostRunning = Math.max(mostRunning, running)
              return timer((jobs[i] as { duration: number }).duration).pipe(
                map(() => i),
                finalize(() => running--),
              )
            }
            source.pipe(ratePool(work, { concurrency, limiter: { rate, burst } })).subscribe({
              next: (result) => results.push(result),
              complete: () => {
                completed = true
              },
            })
          })
          expect(completed).toBe(true)
          expect(results.map((r) => r.job.id).sort((a, b) => a - b)).toEqual([
            ...Array(jobs.length).keys(),
          ])
          expect(mostRunning).toBeLessThanOrEqual(concurrency)
          expect(withinEnvelope(starts, rate, burst)).toBe(true)
          // Slots and tokens are both handed out first come, first served.
          for (let i = 1; i < starts.length; i++) {
            expect(starts[i]).toBeGreaterThanOrEqual(starts[i - 1] as number)
          }
        }),
        { numRuns: 150 },
      )
    })
  })

  describe('results', () => {
    it('one Result per job in completion order, with the last value (undefined if none)', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold<'a' | 'b' | 'c'>('  a-b-c|     ')
        const inners = {
          a: cold('            -----x-y|  '),
          b: cold('              -|       '),
          c: cold('                z|     '),
        }
        const expected = '     ---B-C--(A|)'
        const work = (value: 'a' | 'b' | 'c') => inners[value]
        const out = source.pipe(ratePool(work, { concurrency: Number.POSITIVE_INFINITY }))
        expectObservable(out).toBe(expected, {
          A: ok(0, 'a', 'y', 8),
          B: ok(1, 'b', undefined, 1),
          C: ok(2, 'c', 'z', 1),
        })
        expectSubscriptions(source.subscriptions).toBe('^----!     ')
        expectSubscriptions(inners.a.subscriptions).toBe('^-------!  ')
        expectSubscriptions(inners.b.subscriptions).toBe('--^!       ')
        expectSubscriptions(inners.c.subscriptions).toBe('----^!     ')
      })
    })

    it('concurrency 1 runs the jobs one after the other', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  (abc|)       ')
        const inners = [cold('--x|'), cold('--y|'), cold('--z|')]
        const expected = '     ---A--B--(C|)'
        const out = source.pipe(
          ratePool((_: string, { job }) => inners[job.id] as Observable<string>, {
            concurrency: 1,
          }),
        )
        expectObservable(out).toBe(expected, {
          A: ok(0, 'a', 'x', 3),
          B: ok(1, 'b', 'y', 3),
          C: ok(2, 'c', 'z', 3),
        })
        expectSubscriptions(inners[0]?.subscriptions ?? []).toBe('^--!        ')
        expectSubscriptions(inners[1]?.subscriptions ?? []).toBe('---^--!     ')
        expectSubscriptions(inners[2]?.subscriptions ?? []).toBe('------^--!  ')
      })
    })

    it('any ObservableInput: an array gives its last element, a sync Observable ends at once', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable }) => {
        const source = cold('  a-b|')
        const expected = '     a-b|'
        const work = (value: string): ObservableInput<string> =>
          value === 'a' ? [value, `${value}${value}`] : of(value.toUpperCase())
        expectObservable(source.pipe(ratePool(work, { concurrency: 1 }))).toBe(expected, {
          a: ok(0, 'a', 'aa', 0),
          b: ok(1, 'b', 'B', 0),
        })
      })
    })

    it('completion while jobs are pending comes with the last result', () => {
      const testScheduler = createScheduler()
      let probe = { count: Number.NaN }
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  (ab|)       ')
        const expected = '     ----A 45ms (B|)'
        const work = (value: string) =>
          value === 'a' ? cold('---x|') : cold('50ms (y|)', { y: 'y' })
        expectObservable(source.pipe(ratePool(work, { concurrency: 2 }))).toBe(expected, {
          A: ok(0, 'a', 'x', 4),
          B: ok(1, 'b', 'y', 50),
        })
        expectSubscriptions(source.subscriptions).toBe('(^!)')
        probe = pendingAt(testScheduler, 51)
      })
      expect(probe.count).toBe(0)
    })

    it('a source completing after the last result completes the output then', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  a----|')
        const expected = '     --A--|'
        const work = () => cold('-x|')
        expectObservable(source.pipe(ratePool(work, { concurrency: 1 }))).toBe(expected, {
          A: ok(0, 'a', 'x', 2),
        })
        expectSubscriptions(source.subscriptions).toBe('^----!')
      })
    })

    it('empty source: completes at once, process never called', () => {
      const testScheduler = createScheduler()
      let calls = 0
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold<string>('|')
        const work = () => {
          calls++
          return of(1)
        }
        expectObservable(source.pipe(ratePool(work, { concurrency: 2 }))).toBe('|')
        expectSubscriptions(source.subscriptions).toBe('(^!)')
      })
      expect(calls).toBe(0)
    })

    it('never source: stays silent and subscribed', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold<string>('-')
        const out = source.pipe(
          ratePool(() => of(1), { concurrency: 2, limiter: { rate: 1, burst: 1 } }),
        )
        expectObservable(out).toBe('-')
        expectSubscriptions(source.subscriptions).toBe('^')
      })
    })

    it('error source: errors with the source error itself, not a JobError', () => {
      const testScheduler = createScheduler()
      const boom = new Error('source failed')
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold<string>('--#', undefined, boom)
        expectObservable(source.pipe(ratePool(() => of(1), { concurrency: 2 }))).toBe(
          '--#',
          undefined,
          boom,
        )
        expectSubscriptions(source.subscriptions).toBe('^-!')
      })
    })

    it('a source error while jobs run: the running jobs are torn down and aborted at that frame', () => {
      const testScheduler = createScheduler()
      const boom = new Error('source failed')
      const reasons: unknown[] = []
      const metrics = new PoolMetrics()
      let probe = { count: Number.NaN }
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold<'a' | 'b'>('  a-b-#    ', undefined, boom)
        const inners = { a: cold('---------x|'), b: cold('-------y|') }
        const expected = '     ----#    '
        const work = (value: 'a' | 'b', { signal }: TaskContext<'a' | 'b'>) => {
          signal.addEventListener('abort', () => reasons.push([testScheduler.now(), signal.reason]))
          return inners[value]
        }
        const out = source.pipe(ratePool(work, { concurrency: 2, metrics }))
        expectObservable(out).toBe(expected, undefined, boom)
        expectSubscriptions(source.subscriptions).toBe('^---!    ')
        expectSubscriptions(inners.a.subscriptions).toBe('^---!    ')
        expectSubscriptions(inners.b.subscriptions).toBe('--^-!    ')
        probe = pendingAt(testScheduler, 5)
      })
      expect(probe.count).toBe(0)
      expect(reasons).toHaveLength(2)
      for (const [at, reason] of reasons as [number, CancelledError][]) {
        expect(at).toBe(4)
        expect(reason).toBeInstanceOf(CancelledError)
        expect(reason.code).toBe('RX_FANOUT_CANCELLED')
        expect(reason.cause).toBe(boom)
      }
      expect(gauges(metrics)).toEqual(idle)
    })

    it('process returning a Promise: results in completion order (real async)', async () => {
      const resolvers: ((value: string) => void)[] = []
      let running = 0
      let mostRunning = 0
      const work = (value: string) =>
        new Promise<string>((resolve) => {
          running++
          mostRunning = Math.max(mostRunning, running)
          resolvers.push((v) => {
            running--
            resolve(v)
          })
        }).then((v) => `${value}:${v}`)
      const results = firstValueFrom(
        from(['a', 'b', 'c']).pipe(ratePool(work, { concurrency: 2 }), toArray()),
      )
      const tick = () => new Promise((resolve) => setImmediate(resolve))
      await tick()
      expect(resolvers).toHaveLength(2)
      resolvers[1]?.('second')
      await tick()
      expect(resolvers).toHaveLength(3)
      resolvers[2]?.('third')
      await tick()
      resolvers[0]?.('first')
      const list = await results
      expect(list.map((r) => [r.job.id, r.ok && r.value, r.attempts])).toEqual([
        [1, 'b:second', 1],
        [2, 'c:third', 1],
        [0, 'a:first', 1],
      ])
      expect(mostRunning).toBe(2)
    })

    it('process returning a rejected Promise: JobError in fail-fast, a result in collect (real async)', async () => {
      const boom = new Error('rejected')
      const work = async (value: number) => {
        if (value === 2) throw boom
        return value * 10
      }
      const failFast = firstValueFrom(
        from([1, 2, 3]).pipe(ratePool(work, { concurrency: 1 }), toArray()),
      )
      await expect(failFast).rejects.toEqual(new JobError({ id: 1, value: 2 }, boom, 1))
      const collected = await firstValueFrom(
        from([1, 2, 3]).pipe(ratePool(work, { concurrency: 1, errors: 'collect' }), toArray()),
      )
      expect(collected.map((r) => (r.ok ? r.value : r.error))).toEqual([10, boom, 30])
    })

    it('unsubscribing aborts the signal of a Promise job (real async)', async () => {
      let signal: AbortSignal | undefined
      const sub = from([1])
        .pipe(
          ratePool(
            (_, ctx) => {
              signal = ctx.signal
              return new Promise<never>(() => {})
            },
            { concurrency: 1 },
          ),
        )
        .subscribe()
      await new Promise((resolve) => setImmediate(resolve))
      expect(signal?.aborted).toBe(false)
      sub.unsubscribe()
      expect(signal?.aborted).toBe(true)
      expect(signal?.reason).toBeInstanceOf(CancelledError)
    })

    // Regression, fixed (was a bug in src/internal/PoolRun.ts, Task.#call: `from(input)` sits outside the try that
    // guards `run.process`): a process that returns something that is not an
    // ObservableInput (a forgotten `return` gives undefined) makes `from()` throw out of
    // the pool. The job never settles, its slot is held forever, the output neither errors
    // nor completes, and the TypeError surfaces as an unhandled error (here it is thrown
    // out of flush()). Expected: the job fails with that TypeError, as a throw inside
    // process does.
    it('a process returning undefined fails its job with a TypeError', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  a-b|')
        const expected = '     #   '
        const work = () => undefined as unknown as ObservableInput<string>
        expectObservable(source.pipe(ratePool(work, { concurrency: 1 }))).toBe(
          expected,
          undefined,
          expect.objectContaining({
            code: 'RX_FANOUT_JOB_FAILED',
            cause: expect.any(TypeError),
          }),
        )
        expectSubscriptions(source.subscriptions).toBe('(^!)')
      })
    })
  })

  describe('fail-fast', () => {
    it('the first failure errors with JobError; running jobs torn down and aborted, waits cancelled, source unsubscribed', () => {
      const testScheduler = createScheduler()
      const boom = new Error('b failed')
      const calls: string[] = []
      const aborted: [string, number, unknown][] = []
      const metrics = new PoolMetrics()
      let outputError: unknown
      let probe = { count: Number.NaN }
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        // a and b start at 0 (burst 2); c holds a slot and waits for a token (due 100);
        // d waits for a slot.
        const source = cold('  (abcd)    ')
        const inners: Record<string, ColdObservable<unknown>> = {
          a: cold('            100ms (x|)'),
          b: cold('            30ms #    ', undefined, boom),
        }
        const expected = '     30ms #    '
        const work = (value: string, { signal }: TaskContext<string>) => {
          calls.push(value)
          signal.addEventListener('abort', () =>
            aborted.push([value, testScheduler.now(), signal.reason]),
          )
          return inners[value] ?? cold('(z|)')
        }
        const out = source.pipe(
          ratePool(work, { concurrency: 3, limiter: { rate: 10, burst: 2 }, metrics }),
          tap({ error: (error: unknown) => (outputError = error) }),
        )
        expectObservable(out).toBe(
          expected,
          undefined,
          new JobError({ id: 1, value: 'b' }, boom, 1),
        )
        expectSubscriptions(source.subscriptions).toBe('^ 29ms !  ')
        expectSubscriptions(inners.a?.subscriptions ?? []).toBe('^ 29ms !  ')
        expectSubscriptions(inners.b?.subscriptions ?? []).toBe('^ 29ms !  ')
        probe = pendingAt(testScheduler, 31)
      })
      // Nothing left: no token timer for c, no inner for a.
      expect(probe.count).toBe(0)
      // No process call after the failure: c never started.
      expect(calls).toEqual(['a', 'b'])
      expect(outputError).toBeInstanceOf(JobError)
      const error = outputError as JobError<string>
      expect(error.code).toBe('RX_FANOUT_JOB_FAILED')
      expect(error.name).toBe('JobError')
      expect(error.job).toEqual({ id: 1, value: 'b' })
      expect(error.cause).toBe(boom)
      expect(error.attempts).toBe(1)
      expect(error.message).toBe('job 1 failed after 1 attempt(s): b failed')
      // a's signal aborted at 30, because of that very JobError; b's (the failed one) not.
      expect(aborted).toHaveLength(1)
      const [value, at, reason] = aborted[0] as [string, number, CancelledError]
      expect([value, at]).toEqual(['a', 30])
      expect(reason).toBeInstanceOf(CancelledError)
      expect(reason.code).toBe('RX_FANOUT_CANCELLED')
      expect(reason.cause).toBe(outputError)
      expect(gauges(metrics)).toEqual(idle)
      expect(metrics.failed).toBe(1)
      expect(metrics.succeeded).toBe(0)
    })

    it('a pending retry delay is cancelled by another job failing', () => {
      const testScheduler = createScheduler()
      const flaky = new Error('flaky')
      const fatal = new Error('fatal')
      const calls: [string, number][] = []
      let probe = { count: Number.NaN }
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  (ab)      ')
        const expected = '     20ms #    '
        const work = (value: string, { attempt }: TaskContext<string>) => {
          calls.push([value, attempt])
          // a fails at 10 and would retry at 60; b fails for good at 20.
          return value === 'a' ? cold('10ms #', undefined, flaky) : cold('20ms #', undefined, fatal)
        }
        const out = source.pipe(
          ratePool(work, {
            concurrency: 2,
            retry: { attempts: 3, random: () => 0.5, retryable: (e) => e !== fatal },
          }),
        )
        expectObservable(out).toBe(
          expected,
          undefined,
          new JobError({ id: 1, value: 'b' }, fatal, 1),
        )
        expectSubscriptions(source.subscriptions).toBe('^ 19ms !  ')
        probe = pendingAt(testScheduler, 21)
      })
      expect(probe.count).toBe(0)
      expect(calls).toEqual([
        ['a', 1],
        ['b', 1],
      ])
    })

    it('the output error stays the first failure when siblings react to the abort (throwing or erroring)', async () => {
      const boom = new Error('b failed')
      const reacted = new Error('a reacted to the abort')
      const listenerError = new Error('c listener threw')
      const outputs: unknown[] = []
      const uncaught = await collectUncaught(() => {
        const testScheduler = createScheduler()
        testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
          const source = cold('  (abc)    ')
          const inners: Record<string, ColdObservable<unknown>> = {
            b: cold('               10ms #  ', undefined, boom),
            c: cold('               100ms x|'),
          }
          const expected = '     10ms #    '
          const work = (value: string, { signal }: TaskContext<string>) => {
            if (value === 'a') {
              // A job that errors when aborted.
              return new Observable<string>((subscriber) => {
                signal.addEventListener('abort', () => subscriber.error(reacted))
              })
            }
            if (value === 'c') {
              signal.addEventListener('abort', () => {
                throw listenerError
              })
            }
            return inners[value] as Observable<string>
          }
          const out = source.pipe(
            ratePool(work, { concurrency: 3 }),
            tap({
              next: (v) => outputs.push(v),
              error: (e: unknown) => outputs.push(e),
              complete: () => outputs.push('complete'),
            }),
          )
          expectObservable(out).toBe(
            expected,
            undefined,
            new JobError({ id: 1, value: 'b' }, boom, 1),
          )
          expectSubscriptions(source.subscriptions).toBe('^ 9ms !')
          expectSubscriptions(inners.c?.subscriptions ?? []).toBe('^ 9ms !')
        })
      })
      expect(outputs).toHaveLength(1)
      expect((outputs[0] as JobError).cause).toBe(boom)
      // The listener's throw is Node's to report (EventTarget), not the pool's to eat or pass on.
      expect(uncaught).toEqual([listenerError])
    })

    it('a throw inside process is that job’s failure, at that frame', () => {
      const testScheduler = createScheduler()
      const boom = new Error('process threw')
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  a-b-c|')
        const inner = cold('   10ms x|')
        const expected = '     --#   '
        const work = (value: string) => {
          if (value === 'b') throw boom
          return inner
        }
        expectObservable(source.pipe(ratePool(work, { concurrency: 2 }))).toBe(
          expected,
          undefined,
          new JobError({ id: 1, value: 'b' }, boom, 1),
        )
        expectSubscriptions(source.subscriptions).toBe('^-!   ')
        expectSubscriptions(inner.subscriptions).toBe('^-!   ')
      })
    })

    it('a failure inside a synchronous burst stops the source midway', () => {
      let pulled = 0
      function* values() {
        for (let i = 0; i < 1000; i++) {
          pulled++
          yield i
        }
      }
      let error: unknown
      const boom = new Error('first job failed')
      from(values())
        .pipe(
          ratePool(
            () => {
              throw boom
            },
            { concurrency: 1 },
          ),
        )
        .subscribe({ error: (e: unknown) => (error = e) })
      expect((error as JobError).cause).toBe(boom)
      expect(pulled).toBe(1)
    })
  })

  describe('collect', () => {
    it('failures are { ok: false } results and the pool goes on; one result per job', () => {
      const testScheduler = createScheduler()
      const boom = new Error('b failed')
      const thrown = new Error('c threw')
      const metrics = new PoolMetrics()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  a-b-c-d|    ')
        const inners: Record<string, ColdObservable<unknown>> = {
          a: cold('            ---x|       '),
          b: cold('              -#        ', undefined, boom),
          d: cold('                  --y|  '),
        }
        // c arrives at 4 just before a ends: its throw is reported first.
        const expected = '     ---B(CA)-(D|)'
        const work = (value: string) => {
          if (value === 'c') throw thrown
          return inners[value] as Observable<string>
        }
        const out = source.pipe(ratePool(work, { concurrency: 2, errors: 'collect', metrics }))
        expectObservable(out).toBe(expected, {
          A: ok(0, 'a', 'x', 4),
          B: ko(1, 'b', boom, 1),
          C: ko(2, 'c', thrown, 0),
          D: ok(3, 'd', 'y', 3),
        })
        expectSubscriptions(source.subscriptions).toBe('^------!')
      })
      expect(gauges(metrics)).toEqual(idle)
      expect([metrics.succeeded, metrics.failed]).toEqual([2, 2])
    })
  })

  describe('retry', () => {
    it('backoff before retry k is floor(random · min(max, base · 2^(k-1))): 50, 100, 200', () => {
      const testScheduler = createScheduler()
      const starts: number[] = []
      const flaky = new Error('flaky')
      const metrics = new PoolMetrics()
      testScheduler.run(({ cold, expectObservable }) => {
        const source = cold('  (a|)           ')
        const expected = '     350ms (A|)     '
        const work = (_: string, { attempt }: TaskContext<string>) => {
          starts.push(testScheduler.now())
          return attempt < 4 ? cold('#', undefined, flaky) : cold('(x|)')
        }
        const out = source.pipe(
          ratePool(work, {
            concurrency: 1,
            retry: { attempts: 4, random: () => 0.5 },
            metrics,
            scheduler: testScheduler,
          }),
        )
        expectObservable(out).toBe(expected, { A: ok(0, 'a', 'x', 350, 4) })
      })
      expect(starts).toEqual([0, 50, 150, 350])
      expect(metrics.retried).toBe(3)
      expect(gauges(metrics)).toEqual(idle)
    })

    it('maxDelayMs caps the backoff: base 100, max 150, random 0.999 → 99, 149, 149', () => {
      const testScheduler = createScheduler()
      const starts: number[] = []
      const flaky = new Error('flaky')
      testScheduler.run(({ cold, expectObservable }) => {
        const source = cold('  (a|)          ')
        const expected = '     397ms #       '
        const work = () => {
          starts.push(testScheduler.now())
          return cold('#', undefined, flaky)
        }
        const out = source.pipe(
          ratePool(work, {
            concurrency: 1,
            retry: { attempts: 4, baseDelayMs: 100, maxDelayMs: 150, random: () => 0.999 },
          }),
        )
        expectObservable(out).toBe(
          expected,
          undefined,
          new JobError({ id: 0, value: 'a' }, flaky, 4),
        )
      })
      expect(starts).toEqual([0, 99, 248, 397])
    })

    it('every attempt takes its own token: a retry queues behind the jobs already waiting', () => {
      const testScheduler = createScheduler()
      const starts: [string, number, number][] = []
      const flaky = new Error('flaky')
      testScheduler.run(({ cold, expectObservable }) => {
        const source = cold('  (ab|)            ')
        // a fails at 0 and retries at once (random 0), but b has been waiting for the
        // 100 ms token since 0; a's second attempt gets the one at 200.
        const expected = '     100ms B 99ms (A|)'
        const work = (value: string, { attempt }: TaskContext<string>) => {
          starts.push([value, attempt, testScheduler.now()])
          if (value === 'a' && attempt === 1) return cold('#', undefined, flaky)
          return cold('(x|)', { x: value.toUpperCase() })
        }
        const bucket = new TokenBucket({ rate: 10, burst: 1, scheduler: testScheduler })
        const out = source.pipe(
          ratePool(work, {
            concurrency: 2,
            limiter: bucket,
            retry: { attempts: 2, random: () => 0 },
          }),
        )
        expectObservable(out).toBe(expected, {
          A: ok(0, 'a', 'A', 200, 2),
          B: ok(1, 'b', 'B', 0),
        })
      })
      expect(starts).toEqual([
        ['a', 1, 0],
        ['b', 1, 100],
        ['a', 2, 200],
      ])
    })

    it('retryable(error, attempt) returning false stops retrying', () => {
      const testScheduler = createScheduler()
      const flaky = new Error('flaky')
      const fatal = new Error('fatal')
      const asked: [unknown, number][] = []
      testScheduler.run(({ cold, expectObservable }) => {
        const source = cold('  (ab|)         ')
        const expected = '     10ms a 9ms (b|)'
        const work = (value: string, { attempt }: TaskContext<string>) =>
          value === 'a' || attempt === 2
            ? cold('10ms #', undefined, fatal)
            : cold('10ms #', undefined, flaky)
        const out = source.pipe(
          ratePool(work, {
            concurrency: 2,
            errors: 'collect',
            retry: {
              attempts: 5,
              random: () => 0,
              retryable: (error, attempt) => {
                asked.push([error, attempt])
                return error !== fatal
              },
            },
          }),
        )
        expectObservable(out).toBe(expected, {
          a: ko(0, 'a', fatal, 10, 1),
          b: ko(1, 'b', fatal, 20, 2),
        })
      })
      expect(asked).toEqual([
        [fatal, 1],
        [flaky, 1],
        [fatal, 2],
      ])
    })

    it('retryable that throws: its throw becomes the job’s error', () => {
      const testScheduler = createScheduler()
      const flaky = new Error('flaky')
      const classifierBug = new Error('retryable threw')
      testScheduler.run(({ cold, expectObservable }) => {
        const source = cold('  a|  ')
        const expected = '     -(A|)'
        const out = source.pipe(
          ratePool(() => cold('-#', undefined, flaky), {
            concurrency: 1,
            errors: 'collect',
            retry: {
              attempts: 3,
              retryable: () => {
                throw classifierBug
              },
            },
          }),
        )
        expectObservable(out).toBe(expected, { A: ko(0, 'a', classifierBug, 1, 1) })
      })
    })

    it('a throw inside process is retried like any failure', () => {
      const testScheduler = createScheduler()
      const thrown = new Error('threw')
      testScheduler.run(({ cold, expectObservable }) => {
        const source = cold('  a|         ')
        const expected = '     25ms (A|)  '
        const work = (_: string, { attempt }: TaskContext<string>) => {
          if (attempt === 1) throw thrown
          return cold('(x|)')
        }
        const out = source.pipe(
          ratePool(work, {
            concurrency: 1,
            retry: { attempts: 2, baseDelayMs: 50, random: () => 0.5 },
          }),
        )
        expectObservable(out).toBe(expected, { A: ok(0, 'a', 'x', 25, 2) })
      })
    })

    it('retryAfterMs pauses the shared limiter: nobody starts before now + 500', () => {
      const testScheduler = createScheduler()
      const starts: [string, number, number][] = []
      const metrics = new PoolMetrics()
      let outsider = Number.NaN
      let snapshot: ReturnType<PoolMetrics['snapshot']> | undefined
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const bucket = new TokenBucket({ rate: 100, burst: 5 })
        const source = cold('  a 19ms b|       ')
        // a gets a 429 at 10 asking for 500 ms: its retry waits at least those 500 ms and
        // then asks for a token behind b (arriving at 20, tokens to spare), which waited
        // for the pause too: both start at 510, b first.
        const expected = '     510ms (BA|)    '
        const throttled = Object.assign(new Error('429'), { retryAfterMs: 500 })
        const work = (value: string, { attempt }: TaskContext<string>) => {
          starts.push([value, attempt, testScheduler.now()])
          if (value === 'a' && attempt === 1) return cold('10ms #', undefined, throttled)
          return cold('(x|)', { x: value.toUpperCase() })
        }
        const out = source.pipe(
          ratePool(work, {
            concurrency: 3,
            limiter: bucket,
            metrics,
            retry: { attempts: 2, random: () => 0 },
          }),
        )
        expectObservable(out).toBe(expected, {
          A: ok(0, 'a', 'A', 510, 2),
          B: ok(1, 'b', 'B', 0),
        })
        expectSubscriptions(source.subscriptions).toBe('^ 20ms !')
        // Another user of the same bucket waits too.
        testScheduler.schedule(() => {
          bucket.take().subscribe(() => {
            outsider = testScheduler.now()
          })
          snapshot = metrics.snapshot()
        }, 100)
      })
      expect(starts).toEqual([
        ['a', 1, 0],
        ['b', 1, 510],
        ['a', 2, 510],
      ])
      expect(outsider).toBe(510)
      expect(snapshot).toMatchObject({ pausedUntil: 510, waiting: 2, inFlight: 0, retried: 1 })
    })

    // Regression, fixed (was a bug in src/internal/PoolRun.ts, Task.#failed): `options.random()` is called unguarded
    // (in the `schedule(…, Math.floor(options.random() * ceiling))` call). #failed runs
    // inside the inner's finalize callback, so the throw is swallowed by RxJS: the job
    // never settles, holds its slot forever, and the output neither errors nor completes.
    // Expected (STYLE habit 3: a throwing user callback becomes subscriber.error): the
    // output errors at that frame.
    it('a retry.random that throws errors the output instead of hanging it', () => {
      const testScheduler = createScheduler()
      const flaky = new Error('flaky')
      testScheduler.run(({ cold, expectObservable }) => {
        const source = cold('  a|')
        const random = () => {
          throw new Error('random threw')
        }
        const out = source.pipe(
          ratePool(() => cold('-#', undefined, flaky), {
            concurrency: 1,
            retry: { attempts: 2, random },
          }),
        )
        expectObservable(out).toBe('-#', undefined, expect.any(Error))
      })
    })
  })

  describe('cancellation from outside', () => {
    it('unsubscribing tears down running jobs, aborts their signals and cancels the waits', () => {
      const testScheduler = createScheduler()
      const calls: string[] = []
      const aborted: [string, number, unknown][] = []
      const metrics = new PoolMetrics()
      let probe = { count: Number.NaN }
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  (abc)       ')
        const inner = cold('   1000ms (x|) ')
        const unsub = '        ^ 49ms !    '
        const work = (value: string, { signal }: TaskContext<string>) => {
          calls.push(value)
          signal.addEventListener('abort', () =>
            aborted.push([value, testScheduler.now(), signal.reason]),
          )
          return inner
        }
        const out = source.pipe(
          ratePool(work, { concurrency: 2, limiter: { rate: 10, burst: 1 }, metrics }),
        )
        expectObservable(out, unsub).toBe('')
        expectSubscriptions(source.subscriptions).toBe('^ 49ms !')
        expectSubscriptions(inner.subscriptions).toBe('^ 49ms !')
        probe = pendingAt(testScheduler, 51)
      })
      expect(probe.count).toBe(0)
      // b held a slot waiting for its token (due 100): never called.
      expect(calls).toEqual(['a'])
      expect(aborted).toHaveLength(1)
      const [value, at, reason] = aborted[0] as [string, number, CancelledError]
      expect([value, at]).toEqual(['a', 50])
      expect(reason).toBeInstanceOf(CancelledError)
      expect(reason.code).toBe('RX_FANOUT_CANCELLED')
      expect(gauges(metrics)).toEqual(idle)
    })

    it('options.signal aborting errors with its reason; jobs abort with that reason', () => {
      const testScheduler = createScheduler()
      const controller = new AbortController()
      const reason = new Error('shutting down')
      const aborted: [number, unknown][] = []
      const metrics = new PoolMetrics()
      let probe = { count: Number.NaN }
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  (abc)      ')
        const inner = cold('   1000ms (x|)')
        const expected = '     50ms #     '
        const work = (_: string, { signal }: TaskContext<string>) => {
          signal.addEventListener('abort', () => aborted.push([testScheduler.now(), signal.reason]))
          return inner
        }
        const out = source.pipe(
          ratePool(work, {
            concurrency: 2,
            limiter: { rate: 10, burst: 1 },
            signal: controller.signal,
            metrics,
          }),
        )
        testScheduler.schedule(() => controller.abort(reason), 50)
        expectObservable(out).toBe(expected, undefined, reason)
        expectSubscriptions(source.subscriptions).toBe('^ 49ms !')
        expectSubscriptions(inner.subscriptions).toBe('^ 49ms !')
        probe = pendingAt(testScheduler, 51)
      })
      expect(probe.count).toBe(0)
      expect(aborted).toEqual([[50, reason]])
      expect(gauges(metrics)).toEqual(idle)
      expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0)
    })

    it('an already aborted signal errors at once; nothing is subscribed or called', () => {
      const testScheduler = createScheduler()
      const controller = new AbortController()
      const reason = new Error('too late')
      controller.abort(reason)
      let calls = 0
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  (abc|)')
        const work = () => {
          calls++
          return of(1)
        }
        expectObservable(
          source.pipe(ratePool(work, { concurrency: 2, signal: controller.signal })),
        ).toBe('#', undefined, reason)
        expectSubscriptions(source.subscriptions).toBe([])
      })
      expect(calls).toBe(0)
    })

    it('after completion no listener is left on the signal', () => {
      const testScheduler = createScheduler()
      const controller = new AbortController()
      testScheduler.run(({ cold, expectObservable }) => {
        const source = cold('  a|')
        const out = source.pipe(
          ratePool(() => cold('-x|'), { concurrency: 1, signal: controller.signal }),
        )
        expectObservable(out).toBe('--(A|)', { A: ok(0, 'a', 'x', 2) })
      })
      expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0)
    })
  })

  describe('drain', () => {
    it('stops intake at once, drops the queued and the token-waiting jobs, lets started ones finish', () => {
      const testScheduler = createScheduler()
      const calls: string[] = []
      const metrics = new PoolMetrics()
      let probe = { count: Number.NaN }
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        // a starts at 0; b holds a slot waiting for its token (due 100); c, d, e are queued.
        const source = cold('  (abcde)        ')
        const drain = cold('   50ms x         ')
        const inner = cold('   300ms (x|)     ')
        const expected = '     300ms (A|)     '
        const work = (value: string) => {
          calls.push(value)
          return inner
        }
        const out = source.pipe(
          ratePool(work, { concurrency: 2, limiter: { rate: 10, burst: 1 }, drain, metrics }),
        )
        expectObservable(out).toBe(expected, { A: ok(0, 'a', 'x', 300) })
        expectSubscriptions(source.subscriptions).toBe('^ 49ms !        ')
        expectSubscriptions(drain.subscriptions).toBe('^ 49ms !        ')
        expectSubscriptions(inner.subscriptions).toBe('^ 299ms !       ')
        probe = pendingAt(testScheduler, 301)
      })
      expect(probe.count).toBe(0)
      // Had b's token wait survived the drain, b would have started at 100.
      expect(calls).toEqual(['a'])
      expect(metrics.dropped).toBe(4)
      expect(gauges(metrics)).toEqual(idle)
    })

    it('a started job in its retry delay is finished, retry included', () => {
      const testScheduler = createScheduler()
      const flaky = new Error('flaky')
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  (ab)           ')
        const drain = cold('   30ms x         ')
        // a fails at 10, drain at 30, a's retry at 60 ends at 70; b ends at 100.
        const expected = '     70ms A 29ms (B|)'
        const work = (value: string, { attempt }: TaskContext<string>) => {
          if (value === 'b') return cold('100ms (y|)')
          return attempt === 1 ? cold('10ms #', undefined, flaky) : cold('10ms (x|)')
        }
        const out = source.pipe(
          ratePool(work, { concurrency: 2, drain, retry: { attempts: 2, random: () => 0.5 } }),
        )
        expectObservable(out).toBe(expected, {
          A: ok(0, 'a', 'x', 70, 2),
          B: ok(1, 'b', 'y', 100),
        })
        expectSubscriptions(source.subscriptions).toBe('^ 29ms !       ')
      })
    })

    it('an AbortSignal as drain; with nothing running the output completes at that frame', () => {
      const testScheduler = createScheduler()
      const controller = new AbortController()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  a 9ms b       ')
        const expected = '     -A 9ms B 38ms |'
        testScheduler.schedule(() => controller.abort(), 50)
        const out = source.pipe(
          ratePool((v: string) => cold('-(x|)', { x: v.toUpperCase() }), {
            concurrency: 1,
            drain: controller.signal,
          }),
        )
        expectObservable(out).toBe(expected, {
          A: ok(0, 'a', 'A', 1),
          B: ok(1, 'b', 'B', 1),
        })
        expectSubscriptions(source.subscriptions).toBe('^ 49ms !')
      })
      expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0)
    })

    it('an already aborted drain signal takes nothing in: completes at once', () => {
      const testScheduler = createScheduler()
      let calls = 0
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  (abc|)')
        const work = () => {
          calls++
          return of(1)
        }
        expectObservable(
          source.pipe(ratePool(work, { concurrency: 2, drain: AbortSignal.abort() })),
        ).toBe('|')
        expectSubscriptions(source.subscriptions).toBe([])
      })
      expect(calls).toBe(0)
    })

    it('a drain that completes without emitting changes nothing', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  a-b|      ')
        const inner = cold('   ---x|     ')
        const drain = cold('   -|        ')
        const expected = '     ----A-(B|)'
        const out = source.pipe(ratePool(() => inner, { concurrency: 2, drain }))
        expectObservable(out).toBe(expected, { A: ok(0, 'a', 'x', 4), B: ok(1, 'b', 'x', 4) })
        expectSubscriptions(source.subscriptions).toBe('^--!      ')
        expectSubscriptions(inner.subscriptions).toBe(['^---!     ', '--^---!   '])
      })
    })

    it('a drain that errors errors the pool with that error', () => {
      const testScheduler = createScheduler()
      const drainFailed = new Error('drain failed')
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  a-b|')
        const inner = cold('   ---x|')
        const drain = cold('   --#  ', undefined, drainFailed)
        const expected = '     --#  '
        const out = source.pipe(ratePool(() => inner, { concurrency: 2, drain }))
        expectObservable(out).toBe(expected, undefined, drainFailed)
        // The drain is subscribed before the source, so its error comes before b.
        expectSubscriptions(source.subscriptions).toBe('^-!  ')
        expectSubscriptions(inner.subscriptions).toBe('^-!  ')
      })
    })
  })

  describe('maxQueued', () => {
    it('one value more than maxQueued waiting for a slot errors with QueueOverflowError', () => {
      const testScheduler = createScheduler()
      let outputError: unknown
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  abcd  ')
        const inner = cold('   100ms x|')
        const expected = '     ---#   '
        const out = source.pipe(
          ratePool(() => inner, { concurrency: 1, maxQueued: 2 }),
          tap({ error: (e: unknown) => (outputError = e) }),
        )
        expectObservable(out).toBe(expected, undefined, new QueueOverflowError(2))
        expectSubscriptions(source.subscriptions).toBe('^--!   ')
        expectSubscriptions(inner.subscriptions).toBe('^--!   ')
      })
      expect(outputError).toBeInstanceOf(QueueOverflowError)
      expect((outputError as QueueOverflowError).code).toBe('RX_FANOUT_QUEUE_OVERFLOW')
      expect((outputError as QueueOverflowError).maxQueued).toBe(2)
    })

    it('maxQueued 0 with a limiter: a value holding a slot and waiting for a token is not queued', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable }) => {
        const source = cold('  (ab)c     ')
        const expected = '     ----#     '
        const out = source.pipe(
          ratePool(() => cold('1000ms x|'), {
            concurrency: 2,
            maxQueued: 0,
            limiter: { rate: 10, burst: 1 },
          }),
        )
        expectObservable(out).toBe(expected, undefined, new QueueOverflowError(0))
      })
    })
  })

  describe('dynamic rate', () => {
    it('a shared TokenBucket raised mid-run releases waiting jobs sooner', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable }) => {
        const bucket = new TokenBucket({ rate: 10, burst: 1 })
        // Half a token by 50; at 20/s the other half takes 25 ms.
        testScheduler.schedule(() => bucket.setRate(20), 50)
        const source = cold('  (abc|)             ')
        const expected = '     A 74ms B 49ms (C|) '
        const work = (v: string) => cold('(x|)', { x: v.toUpperCase() })
        expectObservable(source.pipe(ratePool(work, { concurrency: 3, limiter: bucket }))).toBe(
          expected,
          { A: ok(0, 'a', 'A', 0), B: ok(1, 'b', 'B', 0), C: ok(2, 'c', 'C', 0) },
        )
      })
    })

    it('a shared TokenBucket lowered mid-run releases waiting jobs later', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable }) => {
        const bucket = new TokenBucket({ rate: 10, burst: 1, scheduler: testScheduler })
        // Half a token by 50; at 5/s the other half takes 100 ms.
        testScheduler.schedule(() => bucket.setRate(5), 50)
        const source = cold('  (abc|)              ')
        const expected = '     A 149ms B 199ms (C|)'
        const work = (v: string) => cold('(x|)', { x: v.toUpperCase() })
        expectObservable(source.pipe(ratePool(work, { concurrency: 3, limiter: bucket }))).toBe(
          expected,
          { A: ok(0, 'a', 'A', 0), B: ok(1, 'b', 'B', 0), C: ok(2, 'c', 'C', 0) },
        )
      })
    })

    it('{ rate: Observable }: intake starts with the first rate, later rates re-plan the waits', () => {
      const testScheduler = createScheduler()
      const starts: number[] = []
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const rate = cold('    20ms a 29ms b        ', { a: 10, b: 20 })
        const source = cold('  (abc|)               ')
        // a at 20 (full bucket); b was due at 120: at 50 it has 0.3 token, the other 0.7
        // at 20/s takes 35 ms; c 50 ms after b.
        const expected = '     20ms A 64ms B 49ms (C|)'
        const work = (v: string) => {
          starts.push(testScheduler.now())
          return cold('(x|)', { x: v.toUpperCase() })
        }
        const out = source.pipe(ratePool(work, { concurrency: 3, limiter: { rate, burst: 1 } }))
        expectObservable(out).toBe(expected, {
          A: ok(0, 'a', 'A', 0),
          B: ok(1, 'b', 'B', 0),
          C: ok(2, 'c', 'C', 0),
        })
        expectSubscriptions(source.subscriptions).toBe('20ms (^!)')
        expectSubscriptions(rate.subscriptions).toBe('^ 134ms !')
      })
      expect(starts).toEqual([20, 85, 135])
    })

    it('{ rate: Observable } emitting an invalid rate errors with a RangeError naming limiter.rate', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const rate = cold('    a 9ms b', { a: 10, b: 0 })
        const source = cold('  a      ')
        const inner = cold('   1000ms x|')
        const out = source.pipe(
          ratePool(() => inner, { concurrency: 1, limiter: { rate, burst: 1 } }),
        )
        expectObservable(out).toBe(
          '10ms #',
          undefined,
          expect.objectContaining({
            name: 'RangeError',
            code: 'RX_FANOUT_INVALID_OPTION',
            message: 'limiter.rate must be a number > 0 or Infinity, got 0',
          }),
        )
        expectSubscriptions(inner.subscriptions).toBe('^ 9ms !')
      })
    })

    it('{ rate: Observable } erroring errors the pool with that error', () => {
      const testScheduler = createScheduler()
      const rateFailed = new Error('no rate')
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const rate = cold('    a 9ms #', { a: 10 }, rateFailed)
        const source = cold('  a      ')
        const inner = cold('   1000ms x|')
        const out = source.pipe(
          ratePool(() => inner, { concurrency: 1, limiter: { rate, burst: 1 } }),
        )
        expectObservable(out).toBe('10ms #', undefined, rateFailed)
        expectSubscriptions(source.subscriptions).toBe('^ 9ms !')
        expectSubscriptions(inner.subscriptions).toBe('^ 9ms !')
      })
    })

    // Regression, fixed (was a bug in src/internal/subscribePool.ts, the rate-stream branch: it has an error handler
    // but no complete handler): a rate stream that completes before its first value leaves
    // the pool waiting for a rate that can never come. The source is never subscribed and
    // the output neither errors nor completes: a silent hang. Expected: the output ends
    // (an error such as a RangeError on limiter.rate is the natural choice).
    it('{ rate: Observable } completing without a value ends the output', () => {
      const testScheduler = createScheduler()
      let ended = false
      testScheduler.run(({ cold }) => {
        const rate = cold<number>('--|')
        cold('a|')
          .pipe(ratePool(() => of(1), { concurrency: 1, limiter: { rate, burst: 1 } }))
          .subscribe({
            error: () => (ended = true),
            complete: () => (ended = true),
          })
      })
      expect(ended).toBe(true)
    })

    // Regression, fixed (was a bug in src/internal/subscribePool.ts, onDrain: with no run yet it only sets
    // drainRequested, which start() reads when the first rate arrives): a drain before the
    // first rate value completes the output only when that rate comes — never, if it never
    // does. Nothing has started, so there is nothing to finish: expected, complete at the
    // drain's frame (the source is never subscribed either way).
    it('a drain before the first rate value completes the output at once', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const rate = cold('    ----a', { a: 10 })
        const drain = cold('   -x   ')
        const source = cold('  (abc|)')
        const out = source.pipe(
          ratePool(() => of(1), { concurrency: 1, limiter: { rate, burst: 1 }, drain }),
        )
        expectObservable(out).toBe('-|')
        expectSubscriptions(source.subscriptions).toBe([])
      })
    })
  })

  describe('metrics', () => {
    it('gauges at chosen frames, and back to zero at the end', () => {
      const testScheduler = createScheduler()
      const metrics = new PoolMetrics()
      const snaps: ReturnType<PoolMetrics['snapshot']>[] = []
      testScheduler.run(({ cold, expectObservable }) => {
        // a at 0, b at 100 (token), c at 200 (a's slot), d at 300 (b's slot); 200 ms each.
        const source = cold('  (abcd|)                        ')
        const expected = '     200ms A 99ms B 99ms C 99ms (D|)'
        const work = (v: string) => cold('200ms (x|)', { x: v.toUpperCase() })
        const out = source.pipe(
          ratePool(work, { concurrency: 2, limiter: { rate: 10, burst: 1 }, metrics }),
        )
        expectObservable(out).toBe(expected, {
          A: ok(0, 'a', 'A', 200),
          B: ok(1, 'b', 'B', 200),
          C: ok(2, 'c', 'C', 200),
          D: ok(3, 'd', 'D', 200),
        })
        for (const at of [50, 150, 250, 450]) {
          testScheduler.schedule(() => snaps.push(metrics.snapshot()), at)
        }
      })
      const pick = ({
        at,
        queued,
        waiting,
        inFlight,
        succeeded,
        tokens,
        rate,
      }: (typeof snaps)[0]) => ({
        at,
        queued,
        waiting,
        inFlight,
        succeeded,
        tokens,
        rate,
      })
      expect(snaps.map(pick)).toEqual([
        { at: 50, queued: 2, waiting: 1, inFlight: 1, succeeded: 0, tokens: 0.5, rate: 10 },
        { at: 150, queued: 2, waiting: 0, inFlight: 2, succeeded: 0, tokens: 0.5, rate: 10 },
        { at: 250, queued: 1, waiting: 0, inFlight: 2, succeeded: 1, tokens: 0.5, rate: 10 },
        { at: 450, queued: 0, waiting: 0, inFlight: 1, succeeded: 3, tokens: 1, rate: 10 },
      ])
      expect(snaps[0]?.latency.count).toBe(0)
      expect(snaps[0]?.pausedUntil).toBeUndefined()
      const end = metrics.snapshot()
      expect(end).toMatchObject({
        queued: 0,
        waiting: 0,
        inFlight: 0,
        succeeded: 4,
        failed: 0,
        retried: 0,
        dropped: 0,
        latency: { count: 4, p50: 200, p95: 200, p99: 200 },
      })
    })
  })
})

describe('ratePool options', () => {
  const work = () => of(1)
  const optionError = (Kind: typeof RangeError | typeof TypeError, name: string, echoed: string) =>
    expect.objectContaining({
      name: Kind.name,
      code: 'RX_FANOUT_INVALID_OPTION',
      message: expect.stringMatching(new RegExp(`^${name.replace('.', '\\.')} .*got ${echoed}$`)),
    })

  it.each<[string, Partial<PoolOptions>, typeof RangeError | typeof TypeError, string, string]>([
    ['concurrency 0', { concurrency: 0 }, RangeError, 'concurrency', '0'],
    ['concurrency 1.5', { concurrency: 1.5 }, RangeError, 'concurrency', '1.5'],
    ['concurrency NaN', { concurrency: Number.NaN }, RangeError, 'concurrency', 'NaN'],
    ['concurrency -1', { concurrency: -1 }, RangeError, 'concurrency', '-1'],
    ['concurrency "2"', { concurrency: '2' as unknown as number }, TypeError, 'concurrency', '"2"'],
    ["errors 'x'", { errors: 'x' as 'collect' }, RangeError, 'errors', '"x"'],
    ['retry.attempts 0', { retry: { attempts: 0 } }, RangeError, 'retry.attempts', '0'],
    ['retry.attempts 2.5', { retry: { attempts: 2.5 } }, RangeError, 'retry.attempts', '2.5'],
    ['maxQueued -1', { maxQueued: -1 }, RangeError, 'maxQueued', '-1'],
    ['limiter { rate: 0 }', { limiter: { rate: 0, burst: 1 } }, RangeError, 'limiter.rate', '0'],
    ['limiter { rate: -5 }', { limiter: { rate: -5, burst: 1 } }, RangeError, 'limiter.rate', '-5'],
    ['limiter { burst: 0 }', { limiter: { rate: 10, burst: 0 } }, RangeError, 'limiter.burst', '0'],
    [
      'retry.baseDelayMs -1',
      { retry: { attempts: 2, baseDelayMs: -1 } },
      RangeError,
      'retry.baseDelayMs',
      '-1',
    ],
  ])(
    '%s is thrown at construction, naming the option and echoing the value',
    (_, bad, Kind, name, echoed) => {
      const error = thrownBy(() => ratePool(work, { concurrency: 1, ...bad }))
      expect(error).toBeInstanceOf(Kind)
      expect(error).toEqual(optionError(Kind, name, echoed))
    },
  )

  it('a process that is not a function is a TypeError at construction', () => {
    expect(() => ratePool(42 as unknown as () => never, { concurrency: 1 })).toThrow(TypeError)
  })

  it('concurrency Infinity and maxQueued 0 are valid', () => {
    expect(() =>
      ratePool(work, { concurrency: Number.POSITIVE_INFINITY, maxQueued: 0 }),
    ).not.toThrow()
  })

  it('nothing is thrown at subscribe for options that passed construction', () => {
    const subject = new Subject<number>()
    const operator = ratePool(work, { concurrency: 1, limiter: { rate: 10, burst: 1 } })
    expect(() => subject.pipe(operator).subscribe().unsubscribe()).not.toThrow()
  })
})
