import { Redis } from 'ioredis'
import type { Logger } from 'pino'
import { asyncScheduler, type SchedulerLike, type Subscription } from 'rxjs'
import { checkInteger, invalidOption } from '../internal/validate.js'

/** A client given, or one made from a URL (then owned: quit on close). */
export function connect(
  redis: Redis | string,
  logger: Logger | undefined,
): { client: Redis; owned: boolean } {
  if (typeof redis === 'string') {
    // Fail a command fast while disconnected: the store-error policy decides what then.
    const client = new Redis(redis, { maxRetriesPerRequest: 1, enableOfflineQueue: true })
    // Connection errors go to the log, never into unrelated code as an 'error' event.
    client.on('error', (error: unknown) => logger?.warn({ err: error }, 'redis connection error'))
    return { client, owned: true }
  }
  if (
    typeof redis !== 'object' ||
    redis === null ||
    typeof (redis as Redis).defineCommand !== 'function'
  ) {
    throw invalidOption(TypeError, 'redis', 'an ioredis client or a redis:// URL', redis)
  }
  return { client: redis, owned: false }
}

/** Rejects with a timeout error if `promise` has not settled within `ms` on the scheduler. */
export function within<T>(promise: Promise<T>, ms: number, scheduler: SchedulerLike): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let timer: Subscription | null = scheduler.schedule(() => {
      timer = null
      reject(new Error(`redis did not answer within ${ms} ms`))
    }, ms)
    promise.then(
      (value) => {
        timer?.unsubscribe()
        resolve(value)
      },
      (error: unknown) => {
        timer?.unsubscribe()
        reject(error)
      },
    )
  })
}

export function checkKey(key: unknown): string {
  if (typeof key !== 'string' || key.length === 0) {
    throw invalidOption(TypeError, 'key', 'a non-empty string', key)
  }
  return key
}

/** What RedisTokenBucket and RedisSemaphore are both given. */
export interface RedisOptions {
  redis: Redis | string
  storeTimeoutMs?: number
  logger?: Logger
  scheduler?: SchedulerLike
}

/**
 * The setup both Redis classes share: the store timeout, the clock, a child logger for
 * `key`, and the client. Called after every other option is checked, so that an invalid
 * option never leaves a connection open.
 */
export function setUp(options: RedisOptions, key: string) {
  const timeoutMs = checkInteger('storeTimeoutMs', options.storeTimeoutMs ?? 1000, 1)
  const scheduler = options.scheduler ?? asyncScheduler
  const log = options.logger?.child({ component: 'rx-fanout/redis', key }) ?? null
  const { client, owned } = connect(options.redis, options.logger)
  return { timeoutMs, scheduler, log, client, owned }
}
