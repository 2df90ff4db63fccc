import type { SchedulerAction, SchedulerLike, Subscription } from 'rxjs'

/**
 * The longest delay a timer can be set for: Node (and browsers) clamp anything above
 * 2³¹−1 ms (24.8 days) to 1 ms — with a `TimeoutOverflowWarning` in Node — so a longer
 * wait set in one go would end at once.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1

/**
 * `scheduler.schedule(work, delay)` for any delay: a delay above {@link MAX_TIMER_MS} is
 * waited in steps of at most that, the clock read again at each step, so a long wait
 * neither ends early nor spins. One action is rescheduled step by step; unsubscribing the
 * returned Subscription cancels whatever step is pending.
 */
export function scheduleAfter(
  scheduler: SchedulerLike,
  work: () => void,
  delay: number,
): Subscription {
  if (!(delay > MAX_TIMER_MS)) return scheduler.schedule(work, delay > 0 ? delay : 0)
  const due = scheduler.now() + delay
  return scheduler.schedule(function (this: SchedulerAction<unknown>) {
    const left = due - scheduler.now()
    if (left > 0) this.schedule(undefined, left < MAX_TIMER_MS ? left : MAX_TIMER_MS)
    else work()
  }, MAX_TIMER_MS)
}
