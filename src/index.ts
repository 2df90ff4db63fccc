export {
  BurstExceededError,
  InvalidCostError,
  type RxFanoutErrorCode,
} from './errors.js'
export { type BucketConfig, isLimiter, type Limiter } from './Limiter.js'
export { type RateLimitOptions, rateLimit } from './operators/rateLimit.js'
export { every, type Reservation, TokenBucket, type TokenBucketOptions } from './TokenBucket.js'
