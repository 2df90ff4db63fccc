export {
  type AdjustableLimiter,
  Aimd,
  type AimdDecision,
  type AimdOptions,
  aimd,
  isThrottleError,
} from './aimd.js'
export {
  BurstExceededError,
  CancelledError,
  InvalidCostError,
  JobError,
  LeaseLostError,
  QueueOverflowError,
  type RxFanoutErrorCode,
} from './errors.js'
export { type BucketConfig, isLimiter, type Limiter } from './Limiter.js'
export { type RateLimitOptions, rateLimit } from './operators/rateLimit.js'
export { ratePool } from './operators/ratePool.js'
export { isPermits, type Permits, type Release } from './Permits.js'
export { PoolMetrics, type PoolMetricsOptions, type PoolSnapshot } from './PoolMetrics.js'
export { preciseScheduler } from './preciseScheduler.js'
export { ratePoolFrom } from './ratePoolFrom.js'
export { every, type Reservation, TokenBucket, type TokenBucketOptions } from './TokenBucket.js'
export type {
  Job,
  PoolLimiterConfig,
  PoolOptions,
  ProcessFn,
  Result,
  RetryOptions,
  TaskContext,
} from './types.js'
