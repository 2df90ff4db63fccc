import type { Observable } from 'rxjs'

/** Gives a permit back. Calling it more than once does nothing. */
export type Release = () => void

/**
 * A counting semaphore the pool can hold a permit of while a job runs — for example a
 * cap on requests in flight shared by several processes (`RedisSemaphore`). The pool
 * takes a permit after a local slot and before the token, and keeps it across retries.
 */
export interface Permits {
  /**
   * Emits one `Release` when a permit is granted; unsubscribing before gives up the place.
   * The Observable may stay open while the permit is held and error when the permit is
   * lost (`LeaseLostError`, `code: 'RX_FANOUT_LEASE_LOST'`): the pool then ends the job's
   * running attempt at once, its signal aborted with that error, as a failed attempt.
   * Completing, at any time after the `Release`, means nothing more will be said.
   */
  acquire(): Observable<Release>
}

export function isPermits(value: unknown): value is Permits {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as { acquire?: unknown }).acquire === 'function'
  )
}
