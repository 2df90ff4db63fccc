import { describe } from '../errors.js'

type OptionError = (RangeError | TypeError) & { code: 'RX_FANOUT_INVALID_OPTION' }

/** A RangeError/TypeError that names the option and echoes the value it received. */
export function invalidOption(
  Kind: typeof RangeError | typeof TypeError,
  name: string,
  expected: string,
  value: unknown,
): OptionError {
  const error = new Kind(`${name} must be ${expected}, got ${describe(value)}`) as OptionError
  error.code = 'RX_FANOUT_INVALID_OPTION'
  return error
}

/** A rate in tokens per second: a number ≥ `min` (0 or just above it), or Infinity. */
export function checkRate(name: string, value: unknown, allowZero: boolean): number {
  if (typeof value !== 'number') throw invalidOption(TypeError, name, 'a number', value)
  if (Number.isNaN(value) || value < 0 || (!allowZero && value === 0)) {
    const expected = allowZero ? 'a number >= 0 or Infinity' : 'a number > 0 or Infinity'
    throw invalidOption(RangeError, name, expected, value)
  }
  return value
}

/** A whole number ≥ `min`. */
export function checkInteger(name: string, value: unknown, min: number): number {
  if (typeof value !== 'number') throw invalidOption(TypeError, name, 'a number', value)
  if (!Number.isInteger(value) || value < min) {
    throw invalidOption(RangeError, name, `an integer >= ${min}`, value)
  }
  return value
}

/** A token count: a finite number ≥ 0. */
export function checkTokens(name: string, value: unknown): number {
  if (typeof value !== 'number') throw invalidOption(TypeError, name, 'a number', value)
  if (!Number.isFinite(value) || value < 0) {
    throw invalidOption(RangeError, name, 'a finite number >= 0', value)
  }
  return value
}
