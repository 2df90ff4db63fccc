import fc from 'fast-check'
import { ignoreElements, map, merge, timer } from 'rxjs'
import { TestScheduler } from 'rxjs/testing'
import { describe, expect, it } from 'vitest'
import { rateLimit } from '../src/index.js'

// Everything runs on virtual time: one TestScheduler frame is one millisecond.

interface Scenario {
  /** Tokens per second: an integer 1..200, or Infinity. */
  rate: number
  burst: number
  /** Arrival instant of each value (ms, nondecreasing). */
  arrivals: number[]
  /** Cost of each value: an integer 0..burst. */
  costs: number[]
  /** When the source completes (ms, at or after the last arrival). */
  endAt: number
  /** Pass the TestScheduler as `scheduler` rather than relying on the virtual asyncScheduler. */
  explicitScheduler: boolean
}

const MAX_ARRIVAL = 3000

const scenario: fc.Arbitrary<Scenario> = fc
  .record({
    rate: fc.oneof(
      { weight: 9, arbitrary: fc.integer({ min: 1, max: 200 }) },
      { weight: 1, arbitrary: fc.constant(Number.POSITIVE_INFINITY) },
    ),
    burst: fc.integer({ min: 1, max: 20 }),
  })
  .chain(({ rate, burst }) =>
    fc.record({
      rate: fc.constant(rate),
      burst: fc.constant(burst),
      values: fc.array(
        fc.record({
          // Many simultaneous arrivals, some short gaps, a few idle periods.
          gap: fc.oneof(
            fc.constant(0),
            fc.integer({ min: 1, max: 50 }),
            fc.integer({ min: 0, max: 1000 }),
          ),
          cost: fc.integer({ min: 0, max: burst }),
        }),
        { minLength: 1, maxLength: 60, size: 'max' },
      ),
      tail: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 2000 })),
      explicitScheduler: fc.boolean(),
    }),
  )
  .map(({ rate, burst, values, tail, explicitScheduler }) => {
    const arrivals: number[] = []
    let at = 0
    for (const { gap } of values) {
      at = Math.min(MAX_ARRIVAL, at + gap)
      arrivals.push(at)
    }
    return {
      rate,
      burst,
      arrivals,
      costs: values.map(({ cost }) => cost),
      endAt: at + tail,
      explicitScheduler,
    }
  })

/**
 * The reference: an integer token bucket stepped one millisecond at a time. Tokens are
 * kept in milli-tokens, so each ms adds exactly `rate` of them, capped at `burst·1000`;
 * it starts full. Values are served in order: value i goes out at the first whole ms
 * t ≥ max(arrival_i, emission_{i−1}) at which it holds cost_i·1000 milli-tokens, which
 * are then taken.
 */
function referenceEmissions({ rate, burst, arrivals, costs }: Scenario): number[] {
  const emissions: number[] = []
  if (rate === Number.POSITIVE_INFINITY) {
    let previous = 0
    for (const arrival of arrivals) {
      previous = Math.max(previous, arrival)
      emissions.push(previous)
    }
    return emissions
  }
  const capacity = burst * 1000
  let now = 0
  let milli = capacity
  const tick = () => {
    now += 1
    milli = Math.min(capacity, milli + rate)
  }
  arrivals.forEach((arrival, i) => {
    const start = Math.max(arrival, emissions[i - 1] ?? 0)
    while (now < start) tick()
    const need = (costs[i] as number) * 1000
    while (milli < need) tick()
    milli -= need
    emissions.push(now)
  })
  return emissions
}

interface Outcome {
  /** [value index, emission ms] in emission order. */
  emitted: Array<[number, number]>
  completedAt: number
  error: unknown
  /** Actions still scheduled one ms after the expected completion (the probe excluded). */
  pendingAfter: number
}

function runRateLimit(s: Scenario, expectedCompletion: number): Outcome {
  const testScheduler = new TestScheduler((actual, expected) => expect(actual).toEqual(expected))
  const outcome: Outcome = {
    emitted: [],
    completedAt: Number.NaN,
    error: undefined,
    pendingAfter: Number.NaN,
  }
  testScheduler.run(() => {
    // Same-instant timers fire in subscription order, so values arrive in index order.
    const source = merge(
      ...s.arrivals.map((at, i) => timer(at).pipe(map(() => i))),
      timer(s.endAt).pipe(ignoreElements()),
    )
    const limited = rateLimit<number>(
      { rate: s.rate, burst: s.burst },
      {
        cost: (i) => s.costs[i] as number,
        ...(s.explicitScheduler ? { scheduler: testScheduler } : {}),
      },
    )
    source.pipe(limited).subscribe({
      next: (i) => outcome.emitted.push([i, testScheduler.now()]),
      error: (error: unknown) => {
        outcome.error = error
      },
      complete: () => {
        outcome.completedAt = testScheduler.now()
      },
    })
    testScheduler.schedule(() => {
      outcome.pendingAfter = testScheduler.actions.length
    }, expectedCompletion + 1)
  })
  return outcome
}

/** The largest excess of cost over `burst + rate·(e−s)/1000` over windows [s, e]. */
function worstWindowExcess(s: Scenario, emitted: Array<[number, number]>): number {
  // Cost per emission instant, instants ascending.
  const byInstant = new Map<number, number>()
  for (const [i, at] of emitted)
    byInstant.set(at, (byInstant.get(at) ?? 0) + (s.costs[i] as number))
  const instants = [...byInstant.keys()].sort((a, b) => a - b)
  let worst = Number.NEGATIVE_INFINITY
  for (let a = 0; a < instants.length; a++) {
    let total = 0
    for (let b = a; b < instants.length; b++) {
      const start = instants[a] as number
      const end = instants[b] as number
      total += byInstant.get(end) as number
      const allowed =
        s.rate === Number.POSITIVE_INFINITY
          ? Number.POSITIVE_INFINITY
          : s.burst + (s.rate * (end - start)) / 1000
      worst = Math.max(worst, total - allowed)
    }
  }
  return worst
}

describe('rateLimit properties (virtual time)', () => {
  it('the reference model agrees with the hand-worked marble cases', () => {
    // Pins the reference itself, so a mistake in it cannot hide behind agreement.
    const base = { endAt: 0, explicitScheduler: false }
    const zeros = (n: number) => Array.from({ length: n }, () => 0)
    const ones = (n: number) => Array.from({ length: n }, () => 1)
    expect(
      referenceEmissions({ ...base, rate: 10, burst: 3, arrivals: zeros(3), costs: ones(3) }),
    ).toEqual([0, 0, 0])
    expect(
      referenceEmissions({ ...base, rate: 10, burst: 5, arrivals: zeros(4), costs: [3, 3, 3, 3] }),
    ).toEqual([0, 100, 400, 700])
    expect(
      referenceEmissions({ ...base, rate: 3, burst: 3, arrivals: zeros(5), costs: ones(5) }),
    ).toEqual([0, 0, 0, 334, 667])
    expect(
      referenceEmissions({
        ...base,
        rate: 10,
        burst: 3,
        arrivals: [0, 0, 0, 1000, 1000, 1000, 1000, 1000],
        costs: ones(8),
      }),
    ).toEqual([0, 0, 0, 1000, 1000, 1000, 1100, 1200])
  })

  it('emits every value, in order, exactly when the reference bucket says; stays within the envelope; completes on time; leaves nothing scheduled', () => {
    fc.assert(
      fc.property(scenario, (s) => {
        const expected = referenceEmissions(s)
        const lastEmission = expected[expected.length - 1] as number
        const expectedCompletion = Math.max(lastEmission, s.endAt)
        const outcome = runRateLimit(s, expectedCompletion)

        expect(outcome.error).toBeUndefined()
        // (c) nothing lost, order kept.
        expect(outcome.emitted.map(([i]) => i)).toEqual(s.arrivals.map((_, i) => i))
        // (b) work-conserving and ordered: exactly the reference's instants.
        expect(outcome.emitted.map(([, at]) => at)).toEqual(expected)
        // (a) the envelope: no window [s, e] carries more than burst + rate·(e−s).
        expect(worstWindowExcess(s, outcome.emitted)).toBeLessThanOrEqual(1e-9)
        // (c) completion exactly at the last emission, or at the source's if later.
        expect(outcome.completedAt).toBe(expectedCompletion)
        // One-shot timers only: nothing left once everything is out.
        expect(outcome.pendingAfter).toBe(0)
      }),
      { numRuns: 500 },
    )
  })
})
