/**
 * What the marble specs share: the TestScheduler they run on, the probe of actions still
 * scheduled at a frame, and the expected `Result`s of a pool's jobs.
 */
import { TestScheduler } from 'rxjs/testing'
import { expect } from 'vitest'

/** A TestScheduler asserting with `toEqual`. One frame is one virtual millisecond. */
export const createScheduler = () =>
  new TestScheduler((actual, expected) => expect(actual).toEqual(expected))

/**
 * How many actions are still scheduled when virtual time reaches `frame` (the probe
 * itself excluded): a leaked or stale bucket timer, retry delay or inner subscription
 * shows up here, whereas `flush()` would simply run it.
 */
export function pendingAt(scheduler: TestScheduler, frame: number): { count: number } {
  const probe = { count: Number.NaN }
  scheduler.schedule(() => {
    probe.count = scheduler.actions.length
  }, frame)
  return probe
}

/** The expected `Result` of a job that succeeded. */
export const ok = (
  id: number,
  value: unknown,
  result: unknown,
  durationMs: number,
  attempts = 1,
) => ({
  ok: true,
  job: { id, value },
  value: result,
  attempts,
  durationMs,
})

/** The expected `Result` of a job that failed (collect mode). */
export const ko = (
  id: number,
  value: unknown,
  error: unknown,
  durationMs: number,
  attempts = 1,
) => ({
  ok: false,
  job: { id, value },
  error,
  attempts,
  durationMs,
})

/** What `fn` throws (undefined when it returns). */
export const thrownBy = (fn: () => unknown): unknown => {
  try {
    fn()
  } catch (error) {
    return error
  }
  return undefined
}
