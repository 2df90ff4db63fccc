/**
 * Properties of the worker pool (`ratePool`, `ratePoolFrom`) on virtual time: one
 * TestScheduler frame is one millisecond, and the scheduler is passed explicitly to the
 * pool, to the bucket and to every job, so that everything the pool schedules is one of
 * the TestScheduler's actions and can be counted.
 *
 * A scenario is a bucket (rate 1..100/s, burst 1..10), a concurrency (1..8, sometimes
 * Infinity) and 1..40 jobs, each with an arrival frame (nondecreasing), a duration
 * (0..500 ms) and how many of its first attempts fail. Job `i` is the value `i`: pushed
 * by a cold Observable at its arrival frame (`ratePool`), or pulled from a generator
 * (`ratePoolFrom`, every value available at 0). A job's attempt is `timer(duration)`
 * followed by its value, or by `throwError` for a failing attempt.
 *
 * Properties:
 * (a) jobs in flight (process called, inner not yet torn down) never exceed concurrency;
 * (b) process calls keep the bucket's envelope: in every window [s, e] between two call
 *     instants, calls ≤ burst + rate·(e − s)/1000, even when slots are the bottleneck;
 * (c) collect mode: one result per job, ok exactly for the jobs that do not fail;
 * (d) fail-fast: the error is a JobError for the first failure delivered; nothing is
 *     called after it; every other job's inner is torn down (and its signal aborted) at
 *     that instant; the source is unsubscribed. "First" is well defined even for ties at
 *     one frame: the inners are torn down as soon as one failure is delivered, so exactly
 *     one is ever delivered, and no job that started was due to fail earlier;
 * (e) with retries every attempt takes a token: all attempts keep the envelope;
 * (f) nothing dangles: once the output completes, errors or is unsubscribed, the
 *     TestScheduler has no pending action and a shared bucket has no waiter.
 *
 * The reproductions at the end pin a bug these properties found (a process call during
 * teardown), since fixed.
 */
import fc from 'fast-check'
import {
  finalize,
  mergeMap,
  Observable,
  type ObservableInput,
  of,
  type Subscription,
  tap,
  throwError,
  timer,
} from 'rxjs'
import { TestScheduler } from 'rxjs/testing'
import { describe, expect, it } from 'vitest'
import {
  JobError,
  type PoolOptions,
  type Result,
  rateLimit,
  ratePool,
  ratePoolFrom,
  type TaskContext,
  TokenBucket,
} from '../src/index.js'

// ── scenarios ───────────────────────────────────────────────────────────────────────

interface JobSpec {
  /** Arrival frame (push feed only). */
  at: number
  /** Frames each attempt takes. */
  duration: number
  /** How many of the first attempts fail (0 = the first attempt succeeds). */
  fails: number
}

interface Scenario {
  rate: number
  burst: number
  concurrency: number
  jobs: JobSpec[]
  /** 'push': ratePool over a cold Observable; 'pull': ratePoolFrom over a generator. */
  feed: 'push' | 'pull'
  /** Pass a TokenBucket (shared, inspectable) instead of `{ rate, burst }`. */
  shared: boolean
  errors: 'fail-fast' | 'collect'
  /** Attempts in all; 1 = retries off. */
  attempts: number
  /** Unsubscribe at this frame, if set. */
  unsubscribeAt: number | null
}

interface ScenarioShape {
  errors?: 'fail-fast' | 'collect'
  /** Largest number of attempts (retry.attempts is drawn from 1..this). */
  maxAttempts?: number
  /** Draw an unsubscribe frame in some runs. */
  unsubscribe?: boolean
}

function scenarioArb(shape: ScenarioShape = {}): fc.Arbitrary<Scenario> {
  const maxAttempts = shape.maxAttempts ?? 1
  return fc
    .record({
      rate: fc.integer({ min: 1, max: 100 }),
      burst: fc.integer({ min: 1, max: 10 }),
      concurrency: fc.oneof(
        { weight: 5, arbitrary: fc.integer({ min: 1, max: 8 }) },
        { weight: 1, arbitrary: fc.constant(Number.POSITIVE_INFINITY) },
      ),
      jobs: fc.array(
        fc.record({
          // Bunches at one frame, short gaps and idle periods.
          gap: fc.oneof(
            fc.constant(0),
            fc.integer({ min: 0, max: 40 }),
            fc.integer({ min: 0, max: 600 }),
          ),
          duration: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 500 })),
          fails: fc.oneof(
            { weight: 3, arbitrary: fc.constant(0) },
            { weight: 1, arbitrary: fc.integer({ min: 1, max: maxAttempts + 1 }) },
          ),
        }),
        { minLength: 1, maxLength: 40 },
      ),
      feed: fc.constantFrom<'push' | 'pull'>('push', 'pull'),
      shared: fc.boolean(),
      errors: shape.errors
        ? fc.constant(shape.errors)
        : fc.constantFrom<'fail-fast' | 'collect'>('fail-fast', 'collect'),
      attempts: fc.integer({ min: 1, max: maxAttempts }),
      unsubscribeAt: shape.unsubscribe
        ? fc.option(fc.integer({ min: 0, max: 3000 }), { freq: 2 })
        : fc.constant(null),
    })
    .map(({ jobs, ...rest }) => {
      let at = 0
      return {
        ...rest,
        jobs: jobs.map(({ gap, duration, fails }) => {
          at += gap
          return { at, duration, fails }
        }),
      }
    })
}

// ── one run on virtual time, recorded ───────────────────────────────────────────────

class Failure extends Error {
  constructor(
    readonly id: number,
    readonly attempt: number,
  ) {
    super(`job ${id} attempt ${attempt} failed`)
  }
}

interface Call {
  id: number
  attempt: number
  at: number
  seq: number
  /** When this attempt's inner was torn down (finalize), if it was. */
  endedAt: number | null
  endedSeq: number | null
  signal: AbortSignal
}

interface Trace {
  calls: Call[]
  maxInFlight: number
  inFlightAtEnd: number
  /** Errors delivered by the jobs' inners, in delivery order. */
  innerErrors: { id: number; at: number; seq: number; error: Failure }[]
  results: { result: Result<number, number>; at: number; seq: number }[]
  end: { kind: 'complete' | 'error' | 'unsubscribe'; at: number; seq: number } | null
  error: unknown
  /** TestScheduler actions still pending right after the pool's teardown. */
  pendingAtEnd: number | null
  /** Waiters left in the shared bucket right after the pool's teardown. */
  waitingAtEnd: number | null
  /** When the push source was torn down, or the generator's `finally` ran. */
  sourceEndedAt: number | null
  /** Just after the pool's teardown had run. */
  tornDownSeq: number | null
}

function simulate(s: Scenario): Trace {
  const scheduler = new TestScheduler((actual, expected) => expect(actual).toEqual(expected))
  const actions = (scheduler as unknown as { actions: unknown[] }).actions
  let seq = 0
  let inFlight = 0
  const trace: Trace = {
    calls: [],
    maxInFlight: 0,
    inFlightAtEnd: 0,
    innerErrors: [],
    results: [],
    end: null,
    error: undefined,
    pendingAtEnd: null,
    waitingAtEnd: null,
    sourceEndedAt: null,
    tornDownSeq: null,
  }
  const bucket = s.shared ? new TokenBucket({ rate: s.rate, burst: s.burst, scheduler }) : null
  const options: PoolOptions = {
    concurrency: s.concurrency,
    limiter: bucket ?? { rate: s.rate, burst: s.burst },
    errors: s.errors,
    scheduler,
    ...(s.attempts > 1 ? { retry: { attempts: s.attempts, random: () => 0.5 } } : {}),
  }

  const process = (id: number, ctx: TaskContext<number>): ObservableInput<number> => {
    const spec = s.jobs[id] as JobSpec
    const call: Call = {
      id,
      attempt: ctx.attempt,
      at: scheduler.now(),
      seq: seq++,
      endedAt: null,
      endedSeq: null,
      signal: ctx.signal,
    }
    trace.calls.push(call)
    inFlight++
    if (inFlight > trace.maxInFlight) trace.maxInFlight = inFlight
    const fails = ctx.attempt <= spec.fails
    return timer(spec.duration, scheduler).pipe(
      mergeMap(() => (fails ? throwError(() => new Failure(id, ctx.attempt)) : of(id * 10))),
      tap({
        error: (error: Failure) =>
          trace.innerErrors.push({ id, at: scheduler.now(), seq: seq++, error }),
      }),
      finalize(() => {
        inFlight--
        call.endedAt = scheduler.now()
        call.endedSeq = seq++
      }),
    )
  }

  const pushSource = new Observable<number>((subscriber) => {
    s.jobs.forEach((job, id) => {
      subscriber.add(scheduler.schedule(() => subscriber.next(id), job.at))
    })
    const last = (s.jobs[s.jobs.length - 1] as JobSpec).at
    subscriber.add(scheduler.schedule(() => subscriber.complete(), last))
    return () => {
      trace.sourceEndedAt = scheduler.now()
    }
  })
  function* pullSource(): Generator<number> {
    try {
      for (let id = 0; id < s.jobs.length; id++) yield id
    } finally {
      trace.sourceEndedAt = scheduler.now()
    }
  }

  scheduler.run(() => {
    const pool$ =
      s.feed === 'push'
        ? pushSource.pipe(ratePool(process, options))
        : ratePoolFrom(pullSource(), process, options)
    let stopper: Subscription | null = null
    const subscription = pool$
      .pipe(
        // Runs after the pool's own teardown: what is left now dangles.
        finalize(() => {
          stopper?.unsubscribe()
          trace.pendingAtEnd = actions.length
          trace.waitingAtEnd = bucket?.waiting ?? null
          trace.inFlightAtEnd = inFlight
          trace.tornDownSeq = seq++
        }),
      )
      .subscribe({
        next: (result) => trace.results.push({ result, at: scheduler.now(), seq: seq++ }),
        error: (error: unknown) => {
          trace.error = error
          trace.end = { kind: 'error', at: scheduler.now(), seq: seq++ }
        },
        complete: () => {
          trace.end = { kind: 'complete', at: scheduler.now(), seq: seq++ }
        },
      })
    if (s.unsubscribeAt !== null) {
      stopper = scheduler.schedule(() => {
        stopper = null
        trace.end = { kind: 'unsubscribe', at: scheduler.now(), seq: seq++ }
        subscription.unsubscribe()
      }, s.unsubscribeAt)
    }
  })
  return trace
}

// ── checks ──────────────────────────────────────────────────────────────────────────

/**
 * The first window [s, e] (s, e instants of `times`) holding more than
 * burst + rate·(e − s)/1000 instants, or null if there is none.
 */
function envelopeViolation(
  times: number[],
  rate: number,
  burst: number,
): { from: number; to: number; count: number; allowed: number } | null {
  const sorted = [...times].sort((a, b) => a - b)
  for (let i = 0; i < sorted.length; i++) {
    // Start each window at the first of the instants equal to sorted[i].
    if (i > 0 && sorted[i - 1] === sorted[i]) continue
    const from = sorted[i] as number
    for (let j = i; j < sorted.length; j++) {
      // End each window at the last of the instants equal to sorted[j].
      if (j + 1 < sorted.length && sorted[j + 1] === sorted[j]) continue
      const to = sorted[j] as number
      const count = j - i + 1
      const allowed = burst + (rate * (to - from)) / 1000
      if (count > allowed + 1e-9) return { from, to, count, allowed }
    }
  }
  return null
}

function expectEnvelope(trace: Trace, s: Scenario): void {
  const times = trace.calls.map((call) => call.at)
  expect(envelopeViolation(times, s.rate, s.burst)).toBeNull()
}

/** Process calls made after the given event (by sequence number). */
function callsAfter(trace: Trace, seq: number): Call[] {
  return trace.calls.filter((call) => call.seq > seq)
}

function expectNothingDangles(trace: Trace, s: Scenario): void {
  expect(trace.end).not.toBeNull()
  expect(trace.pendingAtEnd).toBe(0)
  if (s.shared) expect(trace.waitingAtEnd).toBe(0)
  expect(trace.inFlightAtEnd).toBe(0)
  for (const call of trace.calls) expect(call.endedAt).not.toBeNull()
  const end = trace.end as NonNullable<Trace['end']>
  // Nothing at all happens after the end.
  expect(callsAfter(trace, end.seq)).toEqual([])
  for (const { seq } of trace.results) expect(seq).toBeLessThan(end.seq)
  // The source was unsubscribed, or its generator returned, by the end.
  expect(trace.sourceEndedAt).not.toBeNull()
  expect(trace.sourceEndedAt).toBeLessThanOrEqual(end.at)
}

const NUM_RUNS = 200

// ── properties ──────────────────────────────────────────────────────────────────────

describe('ratePool properties (virtual time)', () => {
  it('the envelope check finds a window over the quota', () => {
    expect(envelopeViolation([0, 100, 200], 10, 1)).toBeNull()
    expect(envelopeViolation([0, 0], 10, 2)).toBeNull()
    expect(envelopeViolation([0, 0], 10, 1)).toEqual({ from: 0, to: 0, count: 2, allowed: 1 })
    expect(envelopeViolation([0, 50, 100, 150], 10, 2)).toEqual({
      from: 0,
      to: 150,
      count: 4,
      allowed: 3.5,
    })
  })

  it('tokens before slots breaks the envelope; ratePool (slot, then token) keeps it', () => {
    // rate 10/s, burst 1, two slots; jobs 0 and 1 end together at 1000 ms, so jobs 2 and
    // 3 find both slots free at once.
    const durations = [1000, 900, 10, 10, 10]
    const run = (
      pipeline: (work: (id: number) => ObservableInput<number>) => Observable<unknown>,
    ) => {
      const scheduler = new TestScheduler(() => {})
      const starts: number[] = []
      scheduler.run(() => {
        pipeline((id) => {
          starts.push(scheduler.now())
          return timer(durations[id] as number, scheduler).pipe(mergeMap(() => of(id)))
        }).subscribe()
      })
      return starts
    }
    const ids = new Observable<number>((subscriber) => {
      for (let id = 0; id < durations.length; id++) subscriber.next(id)
      subscriber.complete()
    })
    const tokensFirst = run((work) =>
      ids.pipe(
        rateLimit({ rate: 10, burst: 1 }),
        mergeMap((id) => work(id), 2),
      ),
    )
    expect(tokensFirst).toEqual([0, 100, 1000, 1000, 1010])
    expect(envelopeViolation(tokensFirst, 10, 1)).not.toBeNull()

    const pooled = run((work) =>
      ids.pipe(ratePool((id) => work(id), { concurrency: 2, limiter: { rate: 10, burst: 1 } })),
    )
    expect(pooled).toEqual([0, 100, 1000, 1100, 1200])
    expect(envelopeViolation(pooled, 10, 1)).toBeNull()
  })

  it('(a, b, f) in flight ≤ concurrency, calls keep the envelope, nothing dangles — any mode, retries, unsubscribe', () => {
    fc.assert(
      fc.property(scenarioArb({ maxAttempts: 3, unsubscribe: true }), (s) => {
        const trace = simulate(s)
        expect(trace.maxInFlight).toBeLessThanOrEqual(s.concurrency)
        expectEnvelope(trace, s)
        expectNothingDangles(trace, s)
      }),
      { numRuns: NUM_RUNS },
    )
  })

  it('(c) collect: every job yields exactly one result, ok unless it was designed to fail', () => {
    fc.assert(
      fc.property(scenarioArb({ errors: 'collect' }), (s) => {
        const trace = simulate(s)
        expect(trace.end?.kind).toBe('complete')
        expect(trace.results.map(({ result }) => result.job.id).sort((a, b) => a - b)).toEqual(
          s.jobs.map((_, id) => id),
        )
        for (const { result } of trace.results) {
          const id = result.job.id
          const spec = s.jobs[id] as JobSpec
          expect(result.job.value).toBe(id)
          expect(result.attempts).toBe(1)
          // One attempt, so the duration is the job's own, exactly, on virtual time.
          expect(result.durationMs).toBe(spec.duration)
          if (spec.fails > 0) {
            expect(result.ok).toBe(false)
            expect(!result.ok && result.error).toEqual(new Failure(id, 1))
          } else {
            expect(result).toMatchObject({ ok: true, value: id * 10 })
          }
        }
        expect(trace.maxInFlight).toBeLessThanOrEqual(s.concurrency)
        expectEnvelope(trace, s)
        expectNothingDangles(trace, s)
      }),
      { numRuns: NUM_RUNS },
    )
  })

  it('(d) fail-fast: JobError for the first failure, then nothing starts and everything else ends', () => {
    fc.assert(
      fc.property(scenarioArb({ errors: 'fail-fast' }), (s) => {
        const trace = simulate(s)
        expectNothingDangles(trace, s)
        expect(trace.maxInFlight).toBeLessThanOrEqual(s.concurrency)
        expectEnvelope(trace, s)
        if (s.jobs.every((job) => job.fails === 0)) {
          expect(trace.end?.kind).toBe('complete')
          expect(trace.results).toHaveLength(s.jobs.length)
          return
        }
        // Some job fails, and every job starts unless the pool stops first: it errors.
        expect(trace.end?.kind).toBe('error')
        const end = trace.end as NonNullable<Trace['end']>
        const failureAt = end.at
        // Once one failure is delivered the other inners are torn down at once, even those
        // due to fail at the same frame: exactly one failure is ever delivered.
        expect(trace.innerErrors).toHaveLength(1)
        const first = trace.innerErrors[0] as Trace['innerErrors'][number]
        expect(first.at).toBe(failureAt)
        const error = trace.error as JobError<number>
        expect(error).toBeInstanceOf(JobError)
        expect(error.code).toBe('RX_FANOUT_JOB_FAILED')
        expect(error.cause).toBe(first.error)
        expect(error.job).toEqual({ id: first.id, value: first.id })
        expect(error.attempts).toBe(1)
        // It is the earliest failure: no job that started was due to fail before it.
        for (const call of trace.calls) {
          if ((s.jobs[call.id] as JobSpec).fails > 0) {
            expect(call.at + (s.jobs[call.id] as JobSpec).duration).toBeGreaterThanOrEqual(
              failureAt,
            )
          }
        }
        // Nothing is called after it (calls at the same frame came before it).
        for (const call of trace.calls) expect(call.at).toBeLessThanOrEqual(failureAt)
        expect(callsAfter(trace, first.seq)).toEqual([])
        const delivered = new Set(trace.results.map(({ result }) => result.job.id))
        for (const call of trace.calls) {
          const due = call.at + (s.jobs[call.id] as JobSpec).duration
          // Every inner ends at the failure's frame at the latest: its own end, or torn down.
          expect(call.endedAt).toBe(Math.min(due, failureAt))
          // The jobs still running when it failed were aborted.
          if (call.id !== first.id && !delivered.has(call.id)) {
            expect(call.signal.aborted).toBe(true)
          }
        }
        for (const { result } of trace.results) expect(result.ok).toBe(true)
        // The source was unsubscribed (or its generator returned) by then.
        expect(trace.sourceEndedAt).not.toBeNull()
        expect(trace.sourceEndedAt).toBeLessThanOrEqual(failureAt)
      }),
      { numRuns: NUM_RUNS },
    )
  })

  it('(e) retries: every attempt takes a token, so all attempts keep the envelope', () => {
    fc.assert(
      fc.property(scenarioArb({ errors: 'collect', maxAttempts: 3 }), (s) => {
        const trace = simulate(s)
        expect(trace.end?.kind).toBe('complete')
        expectEnvelope(trace, s)
        expect(trace.maxInFlight).toBeLessThanOrEqual(s.concurrency)
        expectNothingDangles(trace, s)
        expect(trace.results).toHaveLength(s.jobs.length)
        for (const { result } of trace.results) {
          const id = result.job.id
          const spec = s.jobs[id] as JobSpec
          const attempts = Math.min(spec.fails + 1, s.attempts)
          expect(result.ok).toBe(spec.fails < s.attempts)
          expect(result.attempts).toBe(attempts)
          const calls = trace.calls.filter((call) => call.id === id)
          expect(calls.map((call) => call.attempt)).toEqual(
            Array.from({ length: attempts }, (_, k) => k + 1),
          )
          // Attempt k + 1 waits out its backoff (random 0.5 of 100·2^(k−1) ms) after
          // attempt k ended, and then maybe for its token.
          for (let k = 1; k < calls.length; k++) {
            const before = calls[k - 1] as Call
            const backoff = Math.floor(0.5 * 100 * 2 ** (k - 1))
            expect((calls[k] as Call).at).toBeGreaterThanOrEqual(
              before.at + spec.duration + backoff,
            )
          }
        }
      }),
      { numRuns: NUM_RUNS },
    )
  })
})

/**
 * Regressions for a bug found by the properties above, fixed in `PoolRun` (waits are now
 * given up newest first, and a grant to a job being cancelled starts nothing).
 *
 * Three jobs, concurrency 3, rate 10/s, burst 1: job 0 takes the one token at 0; jobs 1
 * and 2 hold slots and wait for tokens, job 1 first (due at 100). At frame 100 the pool
 * stops (job 0 fails, or the output is unsubscribed) before the bucket's timer for 100
 * fires. Teardown used to cancel job 1's wait first; the bucket then served its next waiter
 * at once, job 2, whose token was due — so job 2's process function was called after the
 * error/unsubscribe, and a token was taken from the (possibly shared) bucket by a pool that
 * no longer existed. Drain had the same cascade.
 */
describe('teardown gives up token waits without serving its own jobs', () => {
  const stopAt100 = (mode: 'fail-fast' | 'unsubscribe' | 'drain') => {
    const scheduler = new TestScheduler(() => {})
    const log: string[] = []
    const bucket = new TokenBucket({ rate: 10, burst: 1, scheduler })
    const drain = new AbortController()
    scheduler.run(() => {
      let subscription: Subscription | null = null
      if (mode !== 'fail-fast') {
        // Scheduled first, so it runs before the bucket's timer at the same frame.
        scheduler.schedule(() => {
          log.push(`${mode} @${scheduler.now()}`)
          if (mode === 'drain') drain.abort()
          else subscription?.unsubscribe()
        }, 100)
      }
      subscription = ratePoolFrom(
        [0, 1, 2],
        (id) => {
          log.push(`call ${id} @${scheduler.now()}`)
          const fails = mode === 'fail-fast' && id === 0
          return timer(id === 0 ? 100 : 500, scheduler).pipe(
            mergeMap(() => (fails ? throwError(() => new Failure(id, 1)) : of(id))),
          )
        },
        { concurrency: 3, limiter: bucket, scheduler, drain: drain.signal },
      ).subscribe({
        next: (result) => log.push(`result ${result.job.id} @${scheduler.now()}`),
        error: () => log.push(`error @${scheduler.now()}`),
        complete: () => log.push(`complete @${scheduler.now()}`),
      })
    })
    return { log, bucket }
  }

  it('fail-fast: no process function is called after the error (rule 2)', () => {
    expect(stopAt100('fail-fast').log).toEqual(['call 0 @0', 'error @100'])
  })

  it('unsubscribe: no process function is called after unsubscribing', () => {
    expect(stopAt100('unsubscribe').log).toEqual(['call 0 @0', 'unsubscribe @100'])
  })

  it('drain: a job still waiting for its token when drain is requested never starts', () => {
    // Job 0 ends at 100 too, just after the drain; jobs 1 and 2 never started: dropped.
    expect(stopAt100('drain').log).toEqual([
      'call 0 @0',
      'drain @100',
      'result 0 @100',
      'complete @100',
    ])
  })

  it('unsubscribe: a shared bucket keeps the tokens of the waits it gave up', () => {
    const { bucket } = stopAt100('unsubscribe')
    // Only job 0's token was used (at 0); by 100 the bucket is full again.
    expect(bucket.waiting).toBe(0)
    expect(bucket.tokensAt(100)).toBe(1)
  })
})
