import { randomUUID } from 'node:crypto'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import { Observable, type SchedulerLike, type Subscriber, type Subscription } from 'rxjs'
import { LinkedList, type Node } from '../internal/LinkedList.js'
import { checkInteger, invalidOption } from '../internal/validate.js'
import type { Permits, Release } from '../Permits.js'
import { checkKey, setUp, within } from './connection.js'
import { StoreUnavailableError } from './errors.js'
import { SemaphoreStore } from './store.js'

export interface RedisSemaphoreOptions {
  /** An ioredis client (not closed by `close()`), or a redis:// URL (owned). */
  redis: Redis | string
  /** Namespace: leases live at `${key}:permits`. */
  key: string
  /** Permits in all, across every process. */
  limit: number
  /** A lease not renewed for this long is reclaimed (a crashed holder's). Default 10 000 ms. */
  leaseMs?: number
  /** Renew held leases this often. Default leaseMs / 3. */
  renewEveryMs?: number
  /** When no release is heard, look again after at most this long. Default 1000 ms. */
  pollMs?: number
  /** How long a Redis call may take before it counts as failed. Default 1000 ms. */
  storeTimeoutMs?: number
  logger?: Logger
  scheduler?: SchedulerLike
}

interface Waiter {
  readonly subscriber: Subscriber<Release>
}

/**
 * A cap on work in flight shared by processes: at most `limit` leases at once in a Redis
 * sorted set scored by expiry. A holder renews its lease while its job runs; a process
 * that dies stops renewing, and its permits come back within `leaseMs`. Releases are
 * published, so waiters in every process try again at once instead of polling; a slow
 * poll (`pollMs`, or the earliest lease expiry) covers the releases nobody announced.
 *
 * Implements `Permits`: pass it to the pool as `permits`, beside the local `concurrency`.
 */
export class RedisSemaphore implements Permits {
  readonly #store: SemaphoreStore
  readonly #client: Redis
  readonly #owned: boolean
  readonly #limit: number
  readonly #leaseMs: number
  readonly #renewEveryMs: number
  readonly #pollMs: number
  readonly #timeoutMs: number
  readonly #scheduler: SchedulerLike
  readonly #log: Logger | null
  readonly #waiters = new LinkedList<Waiter>()
  readonly #held = new Map<string, Subscription>()
  #subscriber: Redis | null = null
  #trying = false
  #again = false
  #poll: Subscription | null = null
  #closed = false

  constructor(options: RedisSemaphoreOptions) {
    if (typeof options !== 'object' || options === null) {
      throw invalidOption(TypeError, 'options', 'an object { redis, key, limit }', options)
    }
    const key = checkKey(options.key)
    this.#limit = checkInteger('limit', options.limit, 1)
    this.#leaseMs = checkInteger('leaseMs', options.leaseMs ?? 10_000, 1)
    this.#renewEveryMs = checkInteger(
      'renewEveryMs',
      options.renewEveryMs ?? Math.max(1, Math.floor(this.#leaseMs / 3)),
      1,
    )
    if (this.#renewEveryMs >= this.#leaseMs) {
      throw invalidOption(
        RangeError,
        'renewEveryMs',
        `< leaseMs (${this.#leaseMs})`,
        this.#renewEveryMs,
      )
    }
    this.#pollMs = checkInteger('pollMs', options.pollMs ?? 1000, 1)
    const { timeoutMs, scheduler, log, client, owned } = setUp(options, key)
    this.#timeoutMs = timeoutMs
    this.#scheduler = scheduler
    this.#log = log
    this.#client = client
    this.#owned = owned
    this.#store = new SemaphoreStore(client, `${key}:permits`)
  }

  get limit(): number {
    return this.#limit
  }

  /** Leases this process holds now. */
  get held(): number {
    return this.#held.size
  }

  acquire(): Observable<Release> {
    return new Observable<Release>((subscriber) => {
      if (this.#closed) {
        subscriber.error(new StoreUnavailableError('the RedisSemaphore is closed', undefined))
        return
      }
      const node = this.#waiters.push({ subscriber })
      this.#try()
      return () => {
        this.#waiters.remove(node)
        if (this.#waiters.size === 0) {
          // Nobody waits any more: no poll to keep the event loop alive.
          this.#poll?.unsubscribe()
          this.#poll = null
        }
      }
    })
  }

  /** Gives back every lease held here, stops listening, and quits an owned client. */
  async close(): Promise<void> {
    this.#closed = true
    this.#poll?.unsubscribe()
    const error = new StoreUnavailableError('the RedisSemaphore was closed', undefined)
    for (let node = this.#waiters.head; node; node = this.#waiters.head) {
      this.#waiters.remove(node)
      node.value.subscriber.error(error)
    }
    await Promise.all([...this.#held.keys()].map((id) => this.#releaseLease(id)))
    if (this.#subscriber) this.#subscriber.disconnect()
    if (this.#owned) await this.#client.quit().catch(() => this.#client.disconnect())
  }

  // Grants leases to the local waiters, head first, while Redis has permits.
  #try(): void {
    if (this.#closed) return
    if (this.#trying) {
      // A release heard while Redis decides: look again as soon as it has answered.
      this.#again = true
      return
    }
    const node = this.#waiters.head
    if (node === null) {
      this.#poll?.unsubscribe()
      this.#poll = null
      return
    }
    this.#trying = true
    const id = randomUUID()
    within(
      this.#store.acquire(this.#limit, this.#leaseMs, id),
      this.#timeoutMs,
      this.#scheduler,
    ).then(
      ({ granted, retryInMs }) => {
        this.#trying = false
        const again = this.#again
        this.#again = false
        if (!granted) {
          if (again) this.#try()
          else this.#wait(retryInMs)
          return
        }
        if (!this.#waiters.remove(node) || this.#closed) {
          // The waiter left while Redis was deciding: the lease goes straight back.
          void this.#releaseLease(id, false)
          this.#try()
          return
        }
        this.#hold(id, node)
        this.#try()
      },
      (error: unknown) => {
        this.#trying = false
        this.#log?.warn({ err: error }, 'redis semaphore acquire failed')
        const failure = new StoreUnavailableError('redis is unavailable: no permit', error)
        for (let n = this.#waiters.head; n; n = this.#waiters.head) {
          this.#waiters.remove(n)
          n.value.subscriber.error(failure)
        }
      },
    )
  }

  #hold(id: string, node: Node<Waiter>): void {
    const renew = this.#scheduler.schedule(function (this: {
      schedule(s?: unknown, d?: number): void
    }) {
      // Re-arms itself: one timer per lease while it is held.
      this.schedule(undefined, renewEvery)
      renewLease()
    }, this.#renewEveryMs)
    const renewEvery = this.#renewEveryMs
    const renewLease = () =>
      within(this.#store.renew(this.#leaseMs, id), this.#timeoutMs, this.#scheduler).then(
        (kept) => {
          if (!kept) this.#log?.warn({ lease: id }, 'lease lost (expired before renewal)')
        },
        (error: unknown) => this.#log?.warn({ err: error, lease: id }, 'lease renewal failed'),
      )
    this.#held.set(id, renew)
    let released = false
    node.value.subscriber.next(() => {
      if (released) return
      released = true
      void this.#releaseLease(id)
    })
    node.value.subscriber.complete()
  }

  async #releaseLease(id: string, announce = true): Promise<void> {
    this.#held.get(id)?.unsubscribe()
    this.#held.delete(id)
    try {
      await within(this.#store.release(id), this.#timeoutMs, this.#scheduler)
    } catch (error) {
      // The lease expires by itself within leaseMs: nothing is lost for good.
      this.#log?.warn({ err: error, lease: id }, 'lease release failed')
    }
    if (announce) this.#try()
  }

  // No permit now: listen for releases, and look again at the earliest expiry at the latest.
  #wait(retryInMs: number): void {
    this.#listen()
    this.#poll?.unsubscribe()
    const delay = Math.max(1, Math.min(this.#pollMs, Math.ceil(retryInMs)))
    this.#poll = this.#scheduler.schedule(() => {
      this.#poll = null
      this.#try()
    }, delay)
  }

  #listen(): void {
    if (this.#subscriber !== null) return
    const subscriber = this.#client.duplicate()
    this.#subscriber = subscriber
    subscriber.on('error', (error: unknown) =>
      this.#log?.warn({ err: error }, 'redis subscriber error'),
    )
    subscriber.on('message', () => this.#try())
    subscriber.subscribe(this.#store.channel).catch((error: unknown) => {
      this.#log?.warn({ err: error }, 'redis subscribe failed; polling only')
    })
  }
}
