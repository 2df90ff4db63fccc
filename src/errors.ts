/**
 * Every error rx-fanout raises on its own account carries a stable `code` (`RX_FANOUT_…`):
 * match on it, not on the message. Errors from user code or from lower layers are kept
 * as `cause`.
 */
export type RxFanoutErrorCode =
  | 'RX_FANOUT_INVALID_OPTION'
  | 'RX_FANOUT_BURST_EXCEEDED'
  | 'RX_FANOUT_INVALID_COST'

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
