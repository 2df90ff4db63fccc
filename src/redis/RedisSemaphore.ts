import { randomUUID } from 'node:crypto'
import type { Cluster, Redis } from 'ioredis'
import type { Logger } from 'pino'
import { Observable, type SchedulerLike, type Subscriber, type Subscription } from 'rxjs'
import { LeaseLostError } from '../errors.js'
import { LinkedList, type Node } from '../internal/LinkedList.js'
import { scheduleAfter } from '../internal/scheduleAfter.js'
import { checkInteger, invalidOption } from '../internal/validate.js'
import type { Permits, Release } from '../Permits.js'
import {
  checkKey,
  checkPolicy,
  type RedisLike,
  type RedisOptions,
  redactError,
  setUp,
  watchBreaks,
  within,
} from './connection.js'
import { ConfigConflictError, StoreUnavailableError } from './errors.js'
import { SemaphoreStore } from './store.js'

export interface RedisSemaphoreOptions extends RedisOptions {
  /** An ioredis `Redis` or `Cluster` (not closed by `close()`), or a redis:// URL (owned). */
  redis: RedisLike
  /** Names the semaphore: leases live at `{key}:permits` (one hash slot). No braces. */
  key: string
  /** Permits in all, across every process (stored with the key, as the bucket's rate). */
  limit: number
  /** A lease not renewed for this long is reclaimed (a crashed holder's). Default 10 000 ms. */
  leaseMs?: number
  /** Renew held leases this often. Default leaseMs / 3. */
  renewEveryMs?: number
  /**
   * A holder that has not confirmed its lease within `leaseMs − safetyMarginMs` of the
   * last confirmation it sent ends its job: the margin must cover the longest event-loop
   * stall of a holder, the clocks' drift over a lease, and the time for the job's abort
   * to reach the downstream. Default max(200, leaseMs / 10).
   */
  safetyMarginMs?: number
  /** When no release is heard, look again after at most this long. Default 1000 ms. */
  pollMs?: number
  /** When Redis fails: refuse permits (`'fail-closed'`, default) or grant local ones. */
  onStoreError?: 'fail-closed' | 'local-fallback'
  /** Under 'local-fallback', this process's cap while cut off: max(1, ⌊share × limit⌋). */
  localShare?: number
  /** Under 'local-fallback', try Redis again after this long. Default 1000 ms. */
  retryStoreAfterMs?: number
}

interface Waiter {
  readonly subscriber: Subscriber<Release>
}

interface Lease {
  readonly id: string
  readonly subscriber: Subscriber<Release>
  /** When the last confirmation (acquire or renewal) that Redis answered was sent. */
  confirmedSentAt: number
  deadline: Subscription | null
}

/**
 * A cap on work in flight shared by processes: at most `limit` leases at once in a Redis
 * sorted set scored by expiry. Implements `Permits`: pass it to the pool as `permits`,
 * beside the local `concurrency`.
 *
 * A holder renews its leases (all of this process's in one round trip); a process that
 * dies stops renewing, and its permits come back within `leaseMs`. Releases are
 * published, so waiters in every process try again at once; a slow poll covers what
 * nobody announced.
 *
 * **A lost lease ends its job.** Each lease has a deadline on this process's clock: the
 * instant its last confirmed renewal was *sent*, plus `leaseMs − safetyMarginMs` — before
 * Redis could let it expire. If no renewal is confirmed by then (Redis down, a partition,
 * a stall), or Redis answers that the lease is gone (restarted, flushed), the `acquire()`
 * Observable errors with `LeaseLostError` at once, and the pool aborts that job's signal.
 * The guarantee rests on the margin (see `safetyMarginMs`) and on the job honouring its
 * signal. After Redis lost its data, no lease is granted to anyone until every holder that
 * may still run has stopped (see scripts.ts).
 */
export class RedisSemaphore implements Permits {
  readonly #store: SemaphoreStore
  readonly #client: Redis | Cluster
  readonly #owned: boolean
  readonly #key: string
  readonly #limit: number
  readonly #leaseMs: number
  readonly #renewEveryMs: number
  readonly #marginMs: number
  readonly #pollMs: number
  readonly #timeoutMs: number
  readonly #policy: 'fail-closed' | 'local-fallback'
  readonly #localCap: number
  readonly #retryAfterMs: number
  readonly #scheduler: SchedulerLike
  readonly #log: Logger | null
  readonly #waiters = new LinkedList<Waiter>()
  readonly #held = new Map<string, Lease>()
  #localHeld = 0
  #fallingBack = false
  #probeAt = Number.NEGATIVE_INFINITY
  #verified = false
  #subscriber: Redis | Cluster | null = null
  #trying = false
  #again = false
  #poll: Subscription | null = null
  #renewal: Subscription | null = null
  #closed = false
  readonly #unwatch: () => void

  constructor(options: RedisSemaphoreOptions) {
    if (typeof options !== 'object' || options === null) {
      throw invalidOption(TypeError, 'options', 'an object { redis, key, limit }', options)
    }
    const key = checkKey(options.key)
    this.#key = key
    this.#limit = checkInteger('limit', options.limit, 1)
    this.#leaseMs = checkInteger('leaseMs', options.leaseMs ?? 10_000, 1)
    this.#marginMs = checkInteger(
      'safetyMarginMs',
      options.safetyMarginMs ?? Math.max(200, Math.ceil(this.#leaseMs / 10)),
      0,
    )
    this.#renewEveryMs = checkInteger(
      'renewEveryMs',
      options.renewEveryMs ?? Math.max(1, Math.floor(this.#leaseMs / 3)),
      1,
    )
    if (this.#renewEveryMs >= this.#leaseMs - this.#marginMs) {
      throw invalidOption(
        RangeError,
        'renewEveryMs',
        `< leaseMs − safetyMarginMs (${this.#leaseMs} − ${this.#marginMs}): a renewal must ` +
          'come before a lease is given up',
        this.#renewEveryMs,
      )
    }
    this.#pollMs = checkInteger('pollMs', options.pollMs ?? 1000, 1)
    const { policy, share } = checkPolicy(options)
    this.#policy = policy
    this.#localCap = Math.max(1, Math.floor(share * this.#limit))
    this.#retryAfterMs = checkInteger('retryStoreAfterMs', options.retryStoreAfterMs ?? 1000, 0)
    const { timeoutMs, coldStart, scheduler, log, client, owned } = setUp(options, key)
    this.#timeoutMs = timeoutMs
    this.#scheduler = scheduler
    this.#log = log
    this.#client = client
    this.#owned = owned
    this.#store = new SemaphoreStore(client, `{${key}}:permits`, `{${key}}:released`, {
      meta: `{${key}}:meta`,
      coldStart,
    })
    // After a break the server may be another (a failover): check the state against it.
    this.#unwatch = watchBreaks(client, () => {
      this.#store.forceCheck = true
    })
  }

  get limit(): number {
    return this.#limit
  }

  /** Permits this process holds now (leases, and local ones while falling back). */
  get held(): number {
    return this.#held.size + this.#localHeld
  }

  /** Whether permits currently come from the local cap. */
  get fallingBack(): boolean {
    return this.#fallingBack
  }

  /**
   * Emits one `Release` when a permit is granted, then stays open while it is held: it
   * completes when released, and errors with `LeaseLostError` if the lease is lost first.
   * Unsubscribing before the grant gives up the place; after it, the permit stays held
   * until `Release` is called (so `firstValueFrom(acquire())` works), only its loss is no
   * longer heard.
   */
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
    if (this.#closed) return
    this.#closed = true
    this.#unwatch()
    this.#poll?.unsubscribe()
    this.#renewal?.unsubscribe()
    const error = new StoreUnavailableError('the RedisSemaphore was closed', undefined)
    for (let node = this.#waiters.head; node; node = this.#waiters.head) {
      this.#waiters.remove(node)
      node.value.subscriber.error(error)
    }
    await Promise.all(
      [...this.#held.values()].map((lease) => {
        this.#drop(lease)
        return this.#releaseLease(lease.id, false)
      }),
    )
    if (this.#subscriber) this.#subscriber.disconnect()
    if (this.#owned) await this.#client.quit().catch(() => this.#client.disconnect())
  }

  // Grants permits to the local waiters, head first, while there are any.
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
    if (this.#fallingBack && this.#scheduler.now() < this.#probeAt) {
      this.#tryLocally(node)
      return
    }
    this.#trying = true
    const id = randomUUID()
    const sentAt = this.#scheduler.now()
    const request = this.#store.acquire(this.#limit, this.#leaseMs, id, {
      check: !this.#verified,
    })
    within(request, this.#timeoutMs, this.#scheduler).then(
      (answer) => {
        this.#trying = false
        const again = this.#again
        this.#again = false
        if (this.#fallingBack) {
          this.#fallingBack = false
          this.#log?.info('redis answers again: back to the shared cap')
        }
        if (answer.kind === 'conflict') {
          const error = new ConfigConflictError(
            this.#key,
            { limit: this.#limit },
            { limit: answer.limit },
          )
          this.#log?.error({ err: error }, 'configuration conflict')
          this.#failWaiters(error)
          return
        }
        this.#verified = true
        if (answer.kind === 'wait') {
          if (again) this.#try()
          else this.#wait(answer.retryInMs)
          return
        }
        if (sentAt + this.#leaseMs - this.#marginMs <= this.#scheduler.now()) {
          // Answered too late (a stall): its deadline has passed, the job would be cut
          // before it starts. It goes back, and the waiter, still in its place, asks again.
          void this.#releaseLease(id, !this.#closed)
          return
        }
        if (!this.#waiters.remove(node) || this.#closed) {
          // The waiter left while Redis was deciding: the lease goes straight back.
          void this.#releaseLease(id, !this.#closed)
          return
        }
        this.#hold(id, node.value.subscriber, sentAt)
        this.#try()
      },
      (error: unknown) => {
        this.#trying = false
        // Timed out here, it may still land in Redis: then it goes straight back.
        request.then(
          (late) => {
            if (late.kind === 'ok') void this.#releaseLease(id, false)
          },
          () => {},
        )
        this.#storeFailed(error)
      },
    )
  }

  #failWaiters(error: unknown): void {
    for (let n = this.#waiters.head; n; n = this.#waiters.head) {
      this.#waiters.remove(n)
      n.value.subscriber.error(error)
    }
  }

  #storeFailed(error: unknown): void {
    this.#log?.warn({ err: error, policy: this.#policy }, 'redis semaphore acquire failed')
    if (this.#closed) return
    if (this.#policy === 'fail-closed') {
      this.#failWaiters(new StoreUnavailableError('redis is unavailable: no permit', error))
      return
    }
    this.#fallingBack = true
    this.#probeAt = this.#scheduler.now() + this.#retryAfterMs
    this.#try()
  }

  // While Redis is away: at most the local cap held here (no lease, nothing to lose). The
  // leases still held from before count too: they run until released or lost.
  #tryLocally(node: Node<Waiter>): void {
    if (this.#localHeld + this.#held.size >= this.#localCap) {
      // Look at Redis again once the probe is due, if no local release comes first.
      this.#wait(this.#probeAt - this.#scheduler.now())
      return
    }
    this.#waiters.remove(node)
    this.#localHeld++
    let released = false
    const { subscriber } = node.value
    const release = () => {
      if (released) return
      released = true
      this.#localHeld--
      subscriber.complete()
      this.#try()
    }
    subscriber.next(release)
    this.#try()
  }

  #hold(id: string, subscriber: Subscriber<Release>, sentAt: number): void {
    const lease: Lease = { id, subscriber, confirmedSentAt: sentAt, deadline: null }
    this.#held.set(id, lease)
    this.#armDeadline(lease)
    this.#renewal ??= this.#scheduler.schedule(function (this: {
      schedule(state?: unknown, delay?: number): void
    }) {
      // Re-arms itself while any lease is held: one timer for all of them.
      this.schedule(undefined, renewEvery)
      renew()
    }, this.#renewEveryMs)
    const renewEvery = this.#renewEveryMs
    const renew = () => this.#renew()
    if (sentAt + this.#leaseMs - this.#marginMs - this.#scheduler.now() < renewEvery) {
      // Granted late (a slow answer): its deadline may come before the next round of
      // renewals, so it is confirmed at once.
      this.#renew()
    }
    const release = () => {
      if (this.#held.get(id) !== lease) return
      this.#drop(lease)
      subscriber.complete()
      void this.#releaseLease(id)
    }
    subscriber.next(release)
  }

  // The lease is given up at its deadline unless a renewal confirms it before.
  #armDeadline(lease: Lease): void {
    lease.deadline?.unsubscribe()
    const left = lease.confirmedSentAt + this.#leaseMs - this.#marginMs - this.#scheduler.now()
    lease.deadline = scheduleAfter(
      this.#scheduler,
      () => {
        lease.deadline = null
        this.#lose(lease, 'it could not be confirmed before it might expire')
      },
      left,
    )
  }

  #renew(): void {
    const leases = [...this.#held.values()]
    if (leases.length === 0) {
      this.#renewal?.unsubscribe()
      this.#renewal = null
      return
    }
    const sentAt = this.#scheduler.now()
    const ids = leases.map((lease) => lease.id)
    within(
      this.#store.renew(this.#limit, this.#leaseMs, ids),
      this.#timeoutMs,
      this.#scheduler,
    ).then(
      ({ kept }) => {
        leases.forEach((lease, i) => {
          if (this.#held.get(lease.id) !== lease) return
          if (kept[i]) {
            lease.confirmedSentAt = sentAt
            this.#armDeadline(lease)
          } else this.#lose(lease, 'redis no longer has it (expired, restarted or flushed)')
        })
      },
      (error: unknown) => this.#log?.warn({ err: error, leases: ids.length }, 'renewal failed'),
    )
  }

  #lose(lease: Lease, why: string): void {
    if (this.#held.get(lease.id) !== lease) return
    this.#drop(lease)
    const error = new LeaseLostError(`the permit's lease was lost: ${why}`)
    this.#log?.warn({ lease: lease.id, err: error }, 'lease lost: its job ends')
    // Best effort: if Redis still has it, it goes back now rather than at its expiry.
    void this.#releaseLease(lease.id, false)
    lease.subscriber.error(error)
  }

  #drop(lease: Lease): void {
    this.#held.delete(lease.id)
    lease.deadline?.unsubscribe()
    lease.deadline = null
    if (this.#held.size === 0) {
      this.#renewal?.unsubscribe()
      this.#renewal = null
    }
  }

  async #releaseLease(id: string, announce = true): Promise<void> {
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
    if (!this.#fallingBack) this.#listen()
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
      this.#log?.warn({ err: redactError(error) }, 'redis subscriber error'),
    )
    subscriber.on('message', () => this.#try())
    subscriber.subscribe(this.#store.channel).then(
      // A release published before the subscription took effect was not heard (on a
      // Cluster the subscriber first connects a whole client): look again now.
      () => this.#try(),
      (error: unknown) =>
        this.#log?.warn({ err: redactError(error) }, 'redis subscribe failed; polling only'),
    )
  }
}
