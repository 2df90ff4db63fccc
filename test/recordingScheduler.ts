/**
 * A SchedulerLike that records every delay asked of it: by `schedule()` and by an action
 * that reschedules itself from inside its work (`this.schedule(state, delay)`, how
 * `scheduleAfter` waits in steps). Wraps any scheduler: a VirtualTimeScheduler for the
 * exact instants of long waits, `asyncScheduler` to count the timers a real-clock wait
 * costs.
 */
import type { SchedulerAction, SchedulerLike, Subscription } from 'rxjs'

export interface RecordingScheduler extends SchedulerLike {
  /** Every delay asked for, in order (ms). */
  readonly delays: number[]
}

/** The longest delay a timer can hold (Node clamps longer ones to 1 ms). */
export const MAX_TIMER_MS = 2 ** 31 - 1

export function recordingScheduler(inner: SchedulerLike): RecordingScheduler {
  const delays: number[] = []
  return {
    delays,
    now: () => inner.now(),
    schedule<T>(
      work: (this: SchedulerAction<T>, state?: T) => void,
      delay = 0,
      state?: T,
    ): Subscription {
      delays.push(delay)
      return inner.schedule(
        function (this: SchedulerAction<T>, value?: T) {
          const action = this
          // The action as the work sees it: the real one, except that rescheduling is seen.
          const seen = Object.create(action) as SchedulerAction<T>
          seen.schedule = (next?: T, after = 0) => {
            delays.push(after)
            return action.schedule(next, after)
          }
          work.call(seen, value)
        },
        delay,
        state,
      )
    },
  }
}

/** Collects the TimeoutOverflowWarnings Node emits while installed. */
export function overflowWarnings(): { readonly count: number; dispose(): void } {
  let count = 0
  const onWarning = (warning: Error) => {
    if (warning.name === 'TimeoutOverflowWarning') count++
  }
  process.on('warning', onWarning)
  return {
    get count() {
      return count
    },
    dispose: () => process.off('warning', onWarning),
  }
}
