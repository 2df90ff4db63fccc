import { type Cluster, Redis } from 'ioredis'
import type { Logger } from 'pino'
import { asyncScheduler, type SchedulerLike, type Subscription } from 'rxjs'
import { redactUrl, redactValue } from '../internal/redactUrl.js'
import { scheduleAfter } from '../internal/scheduleAfter.js'
import { checkInteger, invalidOption } from '../internal/validate.js'

/** A standalone client, a Cluster, or a redis:// / rediss:// URL. */
export type RedisLike = Redis | Cluster | string

const isClient = (value: unknown): value is Redis | Cluster =>
  typeof value === 'object' &&
  value !== null &&
  typeof (value as Redis).defineCommand === 'function' &&
  typeof (value as Redis).duplicate === 'function'

/** A client given, or one made from a URL (then owned: quit on close). */
export function connect(
  redis: RedisLike,
  logger: Logger | undefined,
): { client: Redis | Cluster; owned: boolean } {
  if (typeof redis === 'string') {
    if (!/^rediss?:\/\//i.test(redis)) {
      throw invalidOption(TypeError, 'redis', 'a redis:// or rediss:// URL', redactUrl(redis))
    }
    // Fail a command fast while disconnected: the store-error policy decides what then.
    const client = new Redis(redis, { maxRetriesPerRequest: 1, enableOfflineQueue: true })
    // Connection errors go to the log, never into unrelated code as an 'error' event.
    client.on('error', (error: unknown) =>
      logger?.warn({ err: redactError(error) }, 'redis connection error'),
    )
    return { client, owned: true }
  }
  if (!isClient(redis)) {
    throw invalidOption(
      TypeError,
      'redis',
      'an ioredis Redis or Cluster, or a redis:// URL',
      // ioredis options given instead of a client would carry the password.
      redactValue(redis),
    )
  }
  return { client: redis, owned: false }
}

/**
 * `error`, with the credentials it may carry redacted: ioredis puts the failed command on
 * its errors (`command.args`), and a failed AUTH or HELLO carries the password there.
 * Every error from Redis passes here before it is logged or becomes a cause.
 */
export function redactError<T>(error: T): T {
  const command = (error as { command?: { name?: unknown; args?: unknown } } | null)?.command
  if (
    typeof command === 'object' &&
    command !== null &&
    typeof command.name === 'string' &&
    /^(auth|hello)$/i.test(command.name) &&
    Array.isArray(command.args)
  ) {
    command.args = command.args.map(() => '***')
  }
  return error
}

/**
 * Calls `onBreak` whenever a connection to Redis closes: afterwards the server may be
 * another one (a restart, a failover) that lost what the old one knew, so whatever was
 * decided before is confirmed again. Returns the unsubscribe.
 */
export function watchBreaks(client: Redis | Cluster, onBreak: () => void): () => void {
  const events = (client as Cluster).isCluster ? ['-node', 'node error', 'close'] : ['close']
  for (const event of events) client.on(event, onBreak)
  return () => {
    for (const event of events) client.off(event, onBreak)
  }
}

/** Rejects with a timeout error if `promise` has not settled within `ms` on the scheduler. */
export function within<T>(promise: Promise<T>, ms: number, scheduler: SchedulerLike): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let timer: Subscription | null = scheduleAfter(
      scheduler,
      () => {
        timer = null
        reject(new Error(`redis did not answer within ${ms} ms`))
      },
      ms,
    )
    promise.then(
      (value) => {
        timer?.unsubscribe()
        resolve(value)
      },
      (error: unknown) => {
        timer?.unsubscribe()
        reject(redactError(error))
      },
    )
  })
}

/**
 * A key names one bucket or semaphore; its Redis keys are `{key}:…`, one hash slot. A
 * brace in the name would change which part Redis hashes, so it is refused.
 */
export function checkKey(key: unknown): string {
  if (typeof key !== 'string' || key.length === 0) {
    throw invalidOption(TypeError, 'key', 'a non-empty string', key)
  }
  if (key.includes('{') || key.includes('}')) {
    throw invalidOption(RangeError, 'key', 'a name without { or } (it becomes the hash tag)', key)
  }
  return key
}

/** What RedisTokenBucket and RedisSemaphore are both given. */
export interface RedisOptions {
  redis: RedisLike
  storeTimeoutMs?: number
  /** A key missing from a Redis younger than a refill (or a lease): see the README. */
  coldStart?: 'safe' | 'full'
  logger?: Logger
  scheduler?: SchedulerLike
}

/** The store-error policy and the local share, as both classes check them. */
export function checkPolicy(options: { onStoreError?: unknown; localShare?: unknown }): {
  policy: 'fail-closed' | 'local-fallback'
  share: number
} {
  const policy = options.onStoreError ?? 'fail-closed'
  if (policy !== 'fail-closed' && policy !== 'local-fallback') {
    throw invalidOption(RangeError, 'onStoreError', "'fail-closed' or 'local-fallback'", policy)
  }
  const share = options.localShare ?? 0.25
  if (typeof share !== 'number' || !(share > 0 && share <= 1)) {
    throw invalidOption(RangeError, 'localShare', 'a number in (0, 1]', share)
  }
  return { policy, share }
}

/**
 * The setup both Redis classes share: the store timeout, the clock, a child logger for
 * `key`, and the client. Called after every other option is checked, so that an invalid
 * option never leaves a connection open.
 */
export function setUp(options: RedisOptions, key: string) {
  const timeoutMs = checkInteger('storeTimeoutMs', options.storeTimeoutMs ?? 1000, 1)
  const coldStart = options.coldStart ?? 'safe'
  if (coldStart !== 'safe' && coldStart !== 'full') {
    throw invalidOption(RangeError, 'coldStart', "'safe' or 'full'", coldStart)
  }
  const scheduler = options.scheduler ?? asyncScheduler
  const log = options.logger?.child({ component: 'rx-fanout/redis', key }) ?? null
  const { client, owned } = connect(options.redis, options.logger)
  return { timeoutMs, coldStart, scheduler, log, client, owned }
}
