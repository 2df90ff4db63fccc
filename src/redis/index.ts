export { StoreUnavailableError } from './errors.js'
export { RedisSemaphore, type RedisSemaphoreOptions } from './RedisSemaphore.js'
export { RedisTokenBucket, type RedisTokenBucketOptions } from './RedisTokenBucket.js'
export { BucketStore, SemaphoreStore, type StoreReservation } from './store.js'
