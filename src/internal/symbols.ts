/** The allocation-free "take now if free" fast path between TokenBucket and rateLimit. */
export const kTakeNow: unique symbol = Symbol('rx-fanout.takeNow')

/**
 * After a grant was delivered (the value emitted, the job started): count the grant at
 * this later instant, without the refill in between, so that what the consumer observed
 * keeps the envelope on the bucket's clock even when delivery crossed a clock tick.
 */
export const kDelivered: unique symbol = Symbol('rx-fanout.delivered')
