import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import { Observable, type SchedulerLike, type Subscriber, type Subscription } from 'rxjs'
import { BurstExceededError } from '../errors.js'
import { LinkedList, type Node } from '../internal/LinkedList.js'
import { checkInteger, checkRate, checkTokens, invalidOption } from '../internal/validate.js'
import type { Limiter } from '../Limiter.js'
import { TokenBucket } from '../TokenBucket.js'
import { checkKey, setUp, within } from './connection.js'
import { StoreUnavailableError } from './errors.js'
import { BucketStore, type StoreReservation } from './store.js'

export interface RedisTokenBucketOptions {
  /** An ioredis client (not closed by `close()`), or a redis:// URL (owned). */
  redis: Redis | string
  /** Namespace: the state lives at `${key}:bucket`. */
  key: string
  /** Tokens per second (> 0, or Infinity), unless `setRate` stored another. */
  rate: number
  /** Capacity, an integer ≥ 1, unless `setBurst` stored another. */
  burst: number
  /** When Redis fails: stop granting (`'fail-closed'`, default) or grant from a local bucket. */
  onStoreError?: 'fail-closed' | 'local-fallback'
  /** The local bucket's share of rate and burst under 'local-fallback'. Default 0.25. */
  localShare?: number
  /** How long a Redis call may take before it counts as failed. Default 1000 ms. */
  storeTimeoutMs?: number
  /** Under 'local-fallback', try Redis again after this long. Default 1000 ms. */
  retryStoreAfterMs?: number
  logger?: Logger
  scheduler?: SchedulerLike
}

interface Waiter {
  readonly n: number
  readonly subscriber: Subscriber<void>
}

// The head's pending work: a reservation request, a timer till its time to act, or a
// wait on the fallback bucket.
interface Head {
  node: Node<Waiter>
  reservation: StoreReservation | null
  timer: Subscription | null
  fallback: Subscription | null
}

/**
 * A token bucket shared by every process that names the same `key`: the in-process
 * `TokenBucket`'s semantics (Go's x/time/rate: starts full, lazy refill, reservations in
 * debt, cancel gives back what it can), kept in one Redis hash and changed atomically by
 * one Lua script per grant, on Redis's clock.
 *
 * Waiting costs one round trip per grant: the head of this process's FIFO queue reserves
 * its tokens (going into debt if need be), learns from the script how long to wait, and
 * sleeps on the scheduler; a waiter that gives up cancels its reservation, which gives
 * back what later reservations did not build on. `setRate`, `setBurst` and `pauseFor` are
 * stored for every process and re-plan this process's head at once.
 */
export class RedisTokenBucket implements Limiter {
  readonly #store: BucketStore
  readonly #client: Redis
  readonly #owned: boolean
  readonly #scheduler: SchedulerLike
  readonly #policy: 'fail-closed' | 'local-fallback'
  readonly #share: number
  readonly #timeoutMs: number
  readonly #retryAfterMs: number
  readonly #log: Logger | null
  #rate: number
  #burst: number
  readonly #waiters = new LinkedList<Waiter>()
  #head: Head | null = null
  #fallback: TokenBucket | null = null
  #probeAt = Number.NEGATIVE_INFINITY
  #closed = false

  constructor(options: RedisTokenBucketOptions) {
    if (typeof options !== 'object' || options === null) {
      throw invalidOption(TypeError, 'options', 'an object { redis, key, rate, burst }', options)
    }
    const key = checkKey(options.key)
    this.#rate = checkRate('rate', options.rate, false)
    this.#burst = checkInteger('burst', options.burst, 1)
    const policy = options.onStoreError ?? 'fail-closed'
    if (policy !== 'fail-closed' && policy !== 'local-fallback') {
      throw invalidOption(RangeError, 'onStoreError', "'fail-closed' or 'local-fallback'", policy)
    }
    this.#policy = policy
    const share = options.localShare ?? 0.25
    if (typeof share !== 'number' || !(share > 0 && share <= 1)) {
      throw invalidOption(RangeError, 'localShare', 'a number in (0, 1]', share)
    }
    this.#share = share
    this.#retryAfterMs = checkInteger('retryStoreAfterMs', options.retryStoreAfterMs ?? 1000, 0)
    const { timeoutMs, scheduler, log, client, owned } = setUp(options, key)
    this.#timeoutMs = timeoutMs
    this.#scheduler = scheduler
    this.#log = log
    this.#client = client
    this.#owned = owned
    this.#store = new BucketStore(client, `${key}:bucket`)
  }

  /** This process's view of the rate (what it last set, or was configured with). */
  get rate(): number {
    return this.#rate
  }

  get burst(): number {
    return this.#burst
  }

  /** Whether grants currently come from the local fallback bucket. */
  get fallingBack(): boolean {
    return this.#fallback !== null
  }

  /** The shared state as Redis has it now. */
  peek() {
    return this.#call(this.#store.peek(this.#rate, this.#burst))
  }

  take(n = 1): Observable<void> {
    checkTokens('n', n)
    return new Observable<void>((subscriber) => {
      if (this.#closed) {
        subscriber.error(new StoreUnavailableError('the RedisTokenBucket is closed', undefined))
        return
      }
      if (this.#rate !== Number.POSITIVE_INFINITY && n > this.#burst) {
        subscriber.error(new BurstExceededError(n, this.#burst))
        return
      }
      const node = this.#waiters.push({ n, subscriber })
      this.#plan()
      return () => this.#leave(node)
    })
  }

  /** No grant, in any process, for `ms` from now (Redis's now). */
  pauseFor(ms: number): void {
    checkTokens('ms', ms)
    this.#background(this.#store.pause(this.#rate, this.#burst, ms), 'pause')
    this.#fallback?.pauseFor(ms)
    this.#replan()
  }

  /** Stores a new rate for every process (tokens settled at the old one first). */
  setRate(rate: number): void {
    this.#rate = checkRate('rate', rate, false)
    this.#background(this.#store.configure(this.#rate, this.#burst, { rate }), 'setRate')
    this.#fallback?.setRate(rate * this.#share)
    this.#replan()
  }

  /** Stores a new burst for every process. */
  setBurst(burst: number): void {
    this.#burst = checkInteger('burst', burst, 1)
    this.#background(this.#store.configure(this.#rate, this.#burst, { burst }), 'setBurst')
    this.#replan()
  }

  /** Errors the waiters, and quits the Redis client if it was made here. */
  async close(): Promise<void> {
    this.#closed = true
    const error = new StoreUnavailableError('the RedisTokenBucket was closed', undefined)
    for (let node = this.#waiters.head; node; node = this.#waiters.head) {
      this.#leave(node)
      node.value.subscriber.error(error)
    }
    if (this.#owned) await this.#client.quit().catch(() => this.#client.disconnect())
  }

  #call<T>(promise: Promise<T>): Promise<T> {
    return within(promise, this.#timeoutMs, this.#scheduler)
  }

  // Fire-and-forget writes: a failure is logged, never thrown at the caller.
  #background(promise: Promise<unknown>, what: string): void {
    this.#call(promise).catch((error: unknown) =>
      this.#log?.warn({ err: error }, `redis ${what} failed`),
    )
  }

  // The head gives its reservation back and asks again under the new settings.
  #replan(): void {
    const head = this.#head
    if (head === null || head.reservation === null) return
    head.timer?.unsubscribe()
    this.#cancel(head.reservation, head.node.value.n)
    this.#head = null
    this.#plan()
  }

  #leave(node: Node<Waiter>): void {
    const head = this.#head
    this.#waiters.remove(node)
    if (head?.node !== node) return
    this.#head = null
    head.timer?.unsubscribe()
    head.fallback?.unsubscribe()
    // A reservation still being requested is cancelled when it arrives (see #plan).
    if (head.reservation) this.#cancel(head.reservation, node.value.n)
    this.#plan()
  }

  #cancel(reservation: StoreReservation, n: number): void {
    if (!reservation.ok || this.#closed) return
    this.#background(
      this.#store.cancel(this.#rate, this.#burst, n, reservation.timeToAct, reservation.rateThen),
      'cancel',
    )
  }

  #grant(node: Node<Waiter>): void {
    this.#head = null
    this.#waiters.remove(node)
    node.value.subscriber.next()
    node.value.subscriber.complete()
    this.#plan()
  }

  #plan(): void {
    const node = this.#waiters.head
    if (this.#head !== null || node === null || this.#closed) return
    const { n } = node.value
    const head: Head = { node, reservation: null, timer: null, fallback: null }
    this.#head = head
    const fallback = this.#fallback
    if (fallback !== null && this.#scheduler.now() < this.#probeAt) {
      // A take larger than the local burst (but within the shared one) may still be granted:
      // the local capacity grows to n while it is the head, and shrinks back after.
      const localBurst = this.#localBurst()
      if (n > fallback.burst) fallback.setBurst(n)
      head.fallback = fallback.take(n).subscribe({
        next: () => {
          if (fallback.burst > localBurst) fallback.setBurst(localBurst)
          this.#grant(node)
        },
        error: (error: unknown) => this.#fail(node, error),
      })
      return
    }
    const request = this.#store.reserve(this.#rate, this.#burst, n, Number.POSITIVE_INFINITY)
    this.#call(request).then(
      (reservation) => {
        if (this.#head !== head) {
          // The waiter left (or a re-plan replaced it) while Redis was deciding.
          this.#cancel(reservation, n)
          return
        }
        if (this.#fallback !== null) {
          this.#log?.info('redis answers again: back to the shared bucket')
          this.#fallback = null
        }
        if (!reservation.ok) {
          // Rate 0 or a burst lowered under n by another process: try again later.
          if (n > this.#burst) this.#fail(node, new BurstExceededError(n, this.#burst))
          else
            head.timer = this.#scheduler.schedule(
              () => this.#retry(head),
              this.#retryAfterMs || 1000,
            )
          return
        }
        // Due now: granted now. (A timer, even of 0 ms, costs a millisecond or more.)
        if (!(reservation.wait > 0)) {
          this.#grant(node)
          return
        }
        head.reservation = reservation
        head.timer = this.#scheduler.schedule(() => this.#grant(node), Math.ceil(reservation.wait))
      },
      (error: unknown) => {
        // Timed out here, the reservation may still be made in Redis: give it back then.
        request.then(
          (late) => this.#cancel(late, n),
          () => {},
        )
        if (this.#head !== head) return
        this.#storeFailed(error)
      },
    )
  }

  #localBurst(): number {
    return Math.max(1, Math.floor(this.#burst * this.#share))
  }

  #retry(head: Head): void {
    if (this.#head !== head) return
    this.#head = null
    this.#plan()
  }

  #storeFailed(error: unknown): void {
    this.#log?.warn({ err: error, policy: this.#policy }, 'redis failed')
    this.#head = null
    if (this.#policy === 'fail-closed') {
      // Every waiter leaves the queue before any is told: telling one must not send the
      // next one's reservation to the store that just failed.
      const failure = new StoreUnavailableError(
        'redis is unavailable: no grant (fail-closed)',
        error,
      )
      const waiters: Waiter[] = []
      for (let node = this.#waiters.head; node; node = this.#waiters.head) {
        this.#waiters.remove(node)
        waiters.push(node.value)
      }
      for (const waiter of waiters) waiter.subscriber.error(failure)
      this.#plan()
      return
    }
    // local-fallback: a conservative local bucket until Redis answers again — the share of
    // the rate and of the burst (see #plan for a take larger than that burst).
    this.#fallback ??= new TokenBucket({
      rate: this.#rate * this.#share,
      burst: this.#localBurst(),
      scheduler: this.#scheduler,
    })
    this.#probeAt = this.#scheduler.now() + this.#retryAfterMs
    this.#plan()
  }

  #fail(node: Node<Waiter>, error: unknown): void {
    if (this.#head?.node === node) this.#head = null
    this.#waiters.remove(node)
    node.value.subscriber.error(error)
    this.#plan()
  }
}
