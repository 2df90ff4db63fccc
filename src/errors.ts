/**
 * Every error rx-fanout raises on its own account carries a stable `code` (`RX_FANOUT_…`):
 * match on it, not on the message. Errors from user code or from lower layers are kept
 * as `cause`.
 */
export type RxFanoutErrorCode =
  | 'RX_FANOUT_INVALID_OPTION'
  | 'RX_FANOUT_BURST_EXCEEDED'
  | 'RX_FANOUT_INVALID_COST'
  | 'RX_FANOUT_JOB_FAILED'
  | 'RX_FANOUT_QUEUE_OVERFLOW'
  | 'RX_FANOUT_CANCELLED'
  | 'RX_FANOUT_LEASE_LOST'
  | 'RX_FANOUT_STORE_UNAVAILABLE'
  | 'RX_FANOUT_CONFIG_CONFLICT'

/** A request for more tokens than the bucket can ever hold at its current burst. */
export class BurstExceededError extends RangeError {
  readonly code = 'RX_FANOUT_BURST_EXCEEDED'
  override readonly name = 'BurstExceededError'
  constructor(
    readonly requested: number,
    readonly burst: number,
  ) {
    super(`requested ${requested} tokens but the burst is ${burst}: this can never be granted`)
  }
}

/** `rateLimit`'s `cost` returned something that is not a finite number ≥ 0. */
export class InvalidCostError extends RangeError {
  readonly code = 'RX_FANOUT_INVALID_COST'
  override readonly name = 'InvalidCostError'
  constructor(readonly cost: unknown) {
    super(`cost must return a finite number >= 0, got ${describe(cost)}`)
  }
}

/**
 * A pool job failed (after its retries) in `'fail-fast'` mode. `cause` is the job's own
 * error, unchanged; `job` is the job that failed.
 */
export class JobError<T = unknown> extends Error {
  readonly code = 'RX_FANOUT_JOB_FAILED'
  override readonly name = 'JobError'
  // Set by Error itself from `{ cause }`: own and not enumerable, as for any Error. A class
  // field would redefine it as enumerable, and the suite saw JobErrors differ in that
  // from run to run; leaving it to Error makes every JobError alike.
  declare readonly cause: unknown
  constructor(
    readonly job: { readonly id: number; readonly value: T },
    cause: unknown,
    readonly attempts: number,
  ) {
    super(`job ${job.id} failed after ${attempts} attempt(s): ${messageOf(cause)}`, { cause })
  }
}

/** A push source outran the pool: more than `maxQueued` values waited for a slot. */
export class QueueOverflowError extends Error {
  readonly code = 'RX_FANOUT_QUEUE_OVERFLOW'
  override readonly name = 'QueueOverflowError'
  constructor(readonly maxQueued: number) {
    super(`more than maxQueued (${maxQueued}) values are waiting for a slot`)
  }
}

/**
 * The reason a job's `signal` is aborted with: the pool stopped (unsubscribed, failed
 * fast, aborted from outside, or drained before the job started). `cause` says why, when
 * there is a why (the first failure, the external signal's reason).
 */
export class CancelledError extends Error {
  readonly code = 'RX_FANOUT_CANCELLED'
  override readonly name = 'AbortError'
  constructor(message = 'the job was cancelled', cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause })
  }
}

/**
 * A permit (a lease on a shared cap) was lost while held: it could not be confirmed before
 * it might have expired, or the store answered that it was gone. The job holding it is
 * ended at once, its signal aborted with this error, so the permit is not in use twice;
 * the pool treats it as that attempt's failure (retryable).
 */
export class LeaseLostError extends Error {
  readonly code = 'RX_FANOUT_LEASE_LOST'
  override readonly name = 'LeaseLostError'
  declare readonly cause: unknown
  constructor(message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause })
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : describe(error)
}

/** Echo a received value in an error message without throwing on exotic input. */
export function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'bigint') return `${value}n`
  if (typeof value === 'function') return `function ${value.name || '(anonymous)'}`
  if (typeof value === 'object' && value !== null) {
    try {
      return JSON.stringify(value) ?? String(value)
    } catch {
      return Object.prototype.toString.call(value)
    }
  }
  return String(value)
}
