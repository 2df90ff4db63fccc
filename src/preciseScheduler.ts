import { asyncScheduler, type SchedulerLike } from 'rxjs'

/**
 * `asyncScheduler`'s timers with a sub-millisecond clock (`performance.timeOrigin +
 * performance.now()`) instead of `Date.now()`.
 *
 * With `asyncScheduler` a bucket keeps its envelope on `Date.now()`'s 1 ms grain: two
 * grants one "millisecond" apart may be 0.1 ms apart in real time. Give a bucket this
 * scheduler when the envelope must hold on a fine clock too (a strict downstream, burst 1
 * at high rates): waits are aimed at the due instant on the fine clock, and a timer that
 * fires early is simply re-aimed, so no grant is ever early.
 *
 * Falls back to `Date.now()` where `performance` is missing.
 */
export const preciseScheduler: SchedulerLike = {
  now:
    typeof performance !== 'undefined' && typeof performance.now === 'function'
      ? () => performance.timeOrigin + performance.now()
      : () => asyncScheduler.now(),
  schedule: asyncScheduler.schedule.bind(asyncScheduler),
}
