/** The allocation-free "take now if free" fast path between TokenBucket and rateLimit. */
export const kTakeNow: unique symbol = Symbol('rx-fanout.takeNow')
