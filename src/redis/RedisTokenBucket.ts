import type { Cluster, Redis } from 'ioredis'
import type { Logger } from 'pino'
import { Observable, type SchedulerLike, type Subscriber, type Subscription } from 'rxjs'
import { BurstExceededError } from '../errors.js'
import { LinkedList, type Node } from '../internal/LinkedList.js'
import { scheduleAfter } from '../internal/scheduleAfter.js'
import { checkInteger, checkRate, checkTokens, invalidOption } from '../internal/validate.js'
import type { Limiter } from '../Limiter.js'
import { TokenBucket } from '../TokenBucket.js'
import {
  checkKey,
  checkPolicy,
  type RedisLike,
  type RedisOptions,
  setUp,
  watchBreaks,
  within,
} from './connection.js'
import { ConfigConflictError, StoreUnavailableError } from './errors.js'
import { type BatchAnswer, BucketStore, type Granted } from './store.js'

export interface RedisTokenBucketOptions extends RedisOptions {
  /** An ioredis `Redis` or `Cluster` (not closed by `close()`), or a redis:// URL (owned). */
  redis: RedisLike
  /** Names the bucket: its state lives at `{key}:bucket` (one hash slot). No braces. */
  key: string
  /**
   * Tokens per second (> 0, or Infinity). Stored with the key on first use: a process
   * that names the key with another rate or burst is refused (`RX_FANOUT_CONFIG_CONFLICT`).
   */
  rate: number
  /** Capacity, an integer ≥ 1 (stored with the key, as `rate`). */
  burst: number
  /** When Redis fails: stop granting (`'fail-closed'`, default) or grant from a local bucket. */
  onStoreError?: 'fail-closed' | 'local-fallback'
  /** The local bucket's share of rate and burst under 'local-fallback'. Default 0.25. */
  localShare?: number
  /** Under 'local-fallback', try Redis again after this long. Default 1000 ms. */
  retryStoreAfterMs?: number
  /** How long a `setRate`/`setBurst` lasts for everyone unless told. Default 60 000 ms. */
  overrideMs?: number
  /**
   * Besides the first waiter, reserve in the same round trip for the waiters behind it
   * whose tokens come within this many ms. Default 100.
   */
  reserveAheadMs?: number
}

// A waiter's state: in the queue; in a request to Redis; holding a reservation; waiting
// on the local bucket; granted (delivered as soon as it is at the head).
const QUEUED = 0
const ASKED = 1
const HELD = 2
const LOCAL = 3
const READY = 4

interface Held {
  /** When it may act, on this process's clock (the reply's arrival plus the wait). */
  dueAt: number
  timeToAct: string
  rateThen: string
  inc: string
  /** The connection generation it was reserved in: a break since means confirm first. */
  generation: number
  /** The charged count right after it (`adjust`'s mark), when Redis said. */
  mark?: number
}

interface Waiter {
  readonly n: number
  readonly subscriber: Subscriber<void>
  state: number
  held: Held | null
  local: Subscription | null
}

interface Batch {
  nodes: Node<Waiter>[]
  epoch: number
  generation: number
  debt: number
  confirm: boolean
}

// Most waiters one process holds reservations for (or asks for) at a time.
const MAX_AHEAD = 64

/**
 * A token bucket shared by every process that names the same `key`: the in-process
 * `TokenBucket`'s semantics (Go's x/time/rate: starts full, lazy refill, reservations in
 * debt, cancel gives back what it can), kept in one Redis hash and changed atomically by
 * Lua scripts, on Redis's clock.
 *
 * Waiters of one process are served first come, first served. The first waiter reserves
 * its tokens (going into debt if need be) and, in the same round trip, those behind it
 * whose tokens come within `reserveAheadMs`; each then waits on this process's clock for
 * its time to act. A waiter that gives up cancels its reservation (Go's CancelAt, newest
 * first). Long waits are waited in steps, never cut short by a timer's limits.
 *
 * Faults: a lost state (a restart, FLUSHALL, a failover) never comes back fuller than the
 * envelope allows (see scripts.ts), and reservations made before a connection broke are
 * confirmed before they are used. Under `'local-fallback'` the grants made while Redis
 * is away come from one local bucket (a share of rate and burst, never refilled at a
 * flap) and are charged to the shared bucket as debt when Redis answers again.
 */
export class RedisTokenBucket implements Limiter {
  readonly #store: BucketStore
  readonly #client: Redis | Cluster
  readonly #owned: boolean
  readonly #scheduler: SchedulerLike
  readonly #policy: 'fail-closed' | 'local-fallback'
  readonly #share: number
  readonly #timeoutMs: number
  readonly #retryAfterMs: number
  readonly #overrideMs: number
  readonly #aheadMs: number
  readonly #log: Logger | null
  readonly #key: string
  readonly #configured: { rate: number; burst: number }
  #rate: number
  #burst: number
  #overrideEnds = Number.NEGATIVE_INFINITY
  readonly #waiters = new LinkedList<Waiter>()
  #batch: Batch | null = null
  #timer: Subscription | null = null
  #timerAt = Number.NaN
  #holdOffUntil = Number.NEGATIVE_INFINITY
  #pausedUntil = Number.NEGATIVE_INFINITY
  #epoch = 0
  #generation = 0
  /** The incarnation of the shared state in the last answer. */
  #inc = ''
  #verified = false
  #fallback: TokenBucket | null = null
  #fallingBack = false
  #probeAt = Number.NEGATIVE_INFINITY
  #debt = 0
  #cancels: { held: Held; n: number }[] = []
  #planning = false
  #again = false
  #askPending = false
  #closed = false
  readonly #unwatch: () => void
  #roundTrips = 0
  #lastMark: number | undefined = undefined

  readonly #options: RedisTokenBucketOptions

  constructor(options: RedisTokenBucketOptions) {
    if (typeof options !== 'object' || options === null) {
      throw invalidOption(TypeError, 'options', 'an object { redis, key, rate, burst }', options)
    }
    this.#options = options
    const key = checkKey(options.key)
    this.#key = key
    this.#rate = checkRate('rate', options.rate, false)
    this.#burst = checkInteger('burst', options.burst, 1)
    this.#configured = { rate: this.#rate, burst: this.#burst }
    const { policy, share } = checkPolicy(options)
    this.#policy = policy
    this.#share = share
    this.#retryAfterMs = checkInteger('retryStoreAfterMs', options.retryStoreAfterMs ?? 1000, 0)
    this.#overrideMs = checkInteger('overrideMs', options.overrideMs ?? 60_000, 1)
    this.#aheadMs = checkInteger('reserveAheadMs', options.reserveAheadMs ?? 100, 0)
    const { timeoutMs, coldStart, scheduler, log, client, owned } = setUp(options, key)
    this.#timeoutMs = timeoutMs
    this.#scheduler = scheduler
    this.#log = log
    this.#client = client
    this.#owned = owned
    this.#store = new BucketStore(client, `{${key}}:bucket`, { coldStart })
    this.#unwatch = watchBreaks(client, () => {
      this.#generation++
      this.#store.forceCheck = true
    })
  }

  /** This process's view of the rate: what it last set (while that lasts), or configured. */
  get rate(): number {
    this.#expireOverride()
    return this.#rate
  }

  get burst(): number {
    this.#expireOverride()
    return this.#burst
  }

  /** Whether grants currently come from the local fallback bucket. */
  get fallingBack(): boolean {
    return this.#fallingBack
  }

  /** Waiters in this process. */
  get waiting(): number {
    return this.#waiters.size
  }

  /** Redis round trips made for grants so far (reservations and confirmations). */
  get roundTrips(): number {
    return this.#roundTrips
  }

  /** The shared state as Redis has it now. */
  peek() {
    return this.#call(this.#store.peek(this.#configured.rate, this.#configured.burst))
  }

  take(n = 1): Observable<void> {
    checkTokens('n', n)
    return new Observable<void>((subscriber) => {
      if (this.#closed) {
        subscriber.error(new StoreUnavailableError('the RedisTokenBucket is closed', undefined))
        return
      }
      if (this.rate !== Number.POSITIVE_INFINITY && n > this.#burst) {
        subscriber.error(new BurstExceededError(n, this.#burst))
        return
      }
      const node = this.#waiters.push({ n, subscriber, state: QUEUED, held: null, local: null })
      this.#plan()
      return () => this.#leave(node)
    })
  }

  /** No grant, in any process, for `ms` from now (Redis's now). */
  pauseFor(ms: number): void {
    checkTokens('ms', ms)
    this.#background(this.#store.pause(this.#configured.rate, this.#configured.burst, ms), 'pause')
    const until = this.#scheduler.now() + ms
    if (until > this.#pausedUntil) this.#pausedUntil = until
    this.#fallback?.pauseFor(ms)
    this.#plan()
  }

  /**
   * Lowers (or raises) the rate for every process, for `forMs` (default `overrideMs`);
   * then the configured rate is back by itself. Setting the configured rate ends it.
   */
  setRate(rate: number, options: { forMs?: number } = {}): void {
    checkRate('rate', rate, false)
    this.#override({ rate }, options.forMs)
  }

  /** Changes the burst for every process, for `forMs` (default `overrideMs`). */
  setBurst(burst: number, options: { forMs?: number } = {}): void {
    checkInteger('burst', burst, 1)
    this.#override({ burst }, options.forMs)
  }

  /**
   * Takes `n` tokens now if they can be granted at once (one round trip) and resolves to
   * 0; otherwise takes nothing and resolves to the ms until they could be (`Infinity`:
   * never at the current settings). What the pool's fair slots ask a limiter that can't
   * tell without a round trip. It does not queue behind this process's `take` waiters.
   */
  async tryTakeAsync(n = 1): Promise<number> {
    checkTokens('n', n)
    if (this.#closed) throw new StoreUnavailableError('the RedisTokenBucket is closed', undefined)
    const { rate, burst } = this.#configured
    this.#roundTrips++
    const answer = await this.#call(
      this.#store.reserveBatch(rate, burst, { ns: [n], maxWaitMs: 0, check: !this.#verified }),
    )
    if (answer.kind === 'conflict') {
      throw new ConfigConflictError(this.#key, this.#configured, {
        rate: answer.rate,
        burst: answer.burst,
      })
    }
    this.#verified = true
    if (answer.kind !== 'ok') return 0
    const granted = answer.granted[0]
    if (granted === undefined) return answer.needed
    this.#lastMark = granted.mark
    return 0
  }

  /**
   * Corrects a grant after the fact, for every process: a positive `delta` takes that many
   * more tokens now (debt: later grants wait for it), a negative one gives them back (up to
   * the burst). This process's waiters are re-planned.
   */
  adjust(delta: number, mark?: unknown): void {
    if (typeof delta !== 'number' || !Number.isFinite(delta)) {
      throw invalidOption(RangeError, 'delta', 'a finite number', delta)
    }
    if (delta === 0 || this.#closed) return
    const { rate, burst } = this.#configured
    // A give-back names its grant: Redis gives back only what the envelope allows since.
    const given = delta < 0 && typeof mark === 'number' ? { mark } : {}
    this.#background(
      this.#store.reserveBatch(rate, burst, { ns: [], debt: delta, ...given }),
      'adjust',
    )
    if (delta < 0) this.#replan()
  }

  /** The mark of the grant this process delivered last (see `adjust`). */
  grantMark(): number | undefined {
    return this.#lastMark
  }

  /**
   * A bucket of the same kind for a related quota — one the server declared in its headers
   * (`FanOutClient` learns them) — at `{key:name}:bucket`, on the same connection and with the
   * same policies, so that every process that learns it shares it. Its first maker's rate
   * and burst are stored with it; a later change is made with `setRate`/`setBurst`, so a
   * quota that changed is never a configuration conflict. Closing it leaves the connection.
   */
  derive(name: string, config: { rate: number; burst: number }): RedisTokenBucket {
    if (typeof name !== 'string' || name.length === 0) {
      throw invalidOption(TypeError, 'name', 'a non-empty string', name)
    }
    const safe = name.replace(/[{}]/g, '_')
    const derived = new RedisTokenBucket({
      ...this.#options,
      redis: this.#client,
      key: `${this.#key}:${safe}`,
      rate: config.rate,
      burst: config.burst,
    })
    derived.#verified = true
    return derived
  }

  /** Errors the waiters, gives back what they reserved, and quits an owned client. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#unwatch()
    this.#stopTimer()
    const error = new StoreUnavailableError('the RedisTokenBucket was closed', undefined)
    const cancels: Promise<unknown>[] = []
    for (let node = this.#waiters.head; node; node = this.#waiters.head) {
      this.#waiters.remove(node)
      const { held, local, n, subscriber } = node.value
      local?.unsubscribe()
      if (held) this.#cancels.push({ held, n })
      subscriber.error(error)
    }
    cancels.push(...this.#flushCancels())
    await Promise.allSettled(cancels)
    if (this.#owned) await this.#client.quit().catch(() => this.#client.disconnect())
  }

  // ── overrides ─────────────────────────────────────────────────────────────────────

  #override(change: { rate?: number; burst?: number }, forMs = this.#overrideMs): void {
    checkInteger('forMs', forMs, 0)
    this.#expireOverride()
    if (change.rate !== undefined) this.#rate = change.rate
    if (change.burst !== undefined) this.#burst = change.burst
    const back = this.#rate === this.#configured.rate && this.#burst === this.#configured.burst
    const ms = back ? 0 : forMs
    this.#overrideEnds = ms === 0 ? Number.NEGATIVE_INFINITY : this.#scheduler.now() + ms
    this.#background(
      this.#store.configure(this.#configured.rate, this.#configured.burst, change, ms),
      'override',
    )
    if (change.rate !== undefined) this.#fallback?.setRate(this.#rate * this.#share)
    this.#replan()
  }

  #expireOverride(): void {
    if (this.#overrideEnds === Number.NEGATIVE_INFINITY) return
    if (this.#scheduler.now() < this.#overrideEnds) return
    this.#overrideEnds = Number.NEGATIVE_INFINITY
    this.#rate = this.#configured.rate
    this.#burst = this.#configured.burst
  }

  // Reservations made under the old settings are given back and asked for again.
  #replan(): void {
    this.#epoch++
    for (let node = this.#waiters.head; node !== null; node = node.next) {
      const waiter = node.value
      if (waiter.state !== HELD || waiter.held === null) continue
      this.#cancels.push({ held: waiter.held, n: waiter.n })
      waiter.held = null
      waiter.state = QUEUED
    }
    this.#flushCancels()
    this.#plan()
  }

  // ── store calls ───────────────────────────────────────────────────────────────────

  #call<T>(promise: Promise<T>): Promise<T> {
    return within(promise, this.#timeoutMs, this.#scheduler)
  }

  // Fire-and-forget writes: a failure is logged, never thrown at the caller.
  #background(promise: Promise<unknown>, what: string): Promise<unknown> {
    return this.#call(promise).catch((error: unknown) =>
      this.#log?.warn({ err: error }, `redis ${what} failed`),
    )
  }

  // Gives reservations back, newest first: cancelling an older one first would give back
  // less (later ones were planned on top of it).
  #flushCancels(): Promise<unknown>[] {
    const cancels = this.#cancels
    if (cancels.length === 0) return []
    this.#cancels = []
    cancels.sort((a, b) => Number(b.held.timeToAct) - Number(a.held.timeToAct))
    const { rate, burst } = this.#configured
    return cancels.map(({ held, n }) =>
      this.#background(
        this.#store.cancel(rate, burst, n, held.timeToAct, held.rateThen, undefined, held.inc),
        'cancel',
      ),
    )
  }

  // ── the waiters ───────────────────────────────────────────────────────────────────

  #leave(node: Node<Waiter>): void {
    if (!this.#waiters.remove(node)) return
    const waiter = node.value
    waiter.local?.unsubscribe()
    // A waiter in a request still out is given back when the answer comes (see #answer).
    if (waiter.held !== null) {
      this.#cancels.push({ held: waiter.held, n: waiter.n })
      waiter.held = null
      this.#flushCancels()
    }
    this.#plan()
  }

  #fail(node: Node<Waiter>, error: unknown): void {
    if (!this.#waiters.remove(node)) return
    node.value.local?.unsubscribe()
    node.value.subscriber.error(error)
  }

  #plan(): void {
    // Granting runs user code, which may take, give up or change the settings: the
    // outermost call loops instead of recursing.
    if (this.#planning) {
      this.#again = true
      return
    }
    this.#planning = true
    try {
      do {
        this.#again = false
        this.#step()
      } while (this.#again)
    } finally {
      this.#planning = false
    }
  }

  #step(): void {
    if (this.#closed) return
    const now = this.#scheduler.now()
    // Deliver from the head, in order, what is due.
    for (let node = this.#waiters.head; node !== null; node = this.#waiters.head) {
      const waiter = node.value
      if (waiter.state === HELD) {
        const held = waiter.held as Held
        if (Math.max(held.dueAt, this.#pausedUntil) > now) break
        // The connection broke since: the Redis that made it may have lost it.
        if (held.generation !== this.#generation) break
      } else if (waiter.state !== READY) break
      this.#waiters.remove(node)
      // Locally granted (fallback) tokens have no mark: nothing of them is given back.
      this.#lastMark = waiter.state === HELD ? waiter.held?.mark : undefined
      waiter.subscriber.next()
      waiter.subscriber.complete()
    }
    this.#aim(now)
    if (this.#batch === null && now >= this.#holdOffUntil) this.#askSoon()
  }

  // The request goes out after the current job of the event loop: takes made in the same
  // tick (the waiters a batch of grants just woke take again at once) share one round trip.
  #askSoon(): void {
    if (this.#askPending) return
    this.#askPending = true
    queueMicrotask(() => {
      this.#askPending = false
      if (this.#closed || this.#batch !== null) return
      const now = this.#scheduler.now()
      if (now >= this.#holdOffUntil) this.#ask(now)
    })
  }

  // One timer, aimed at whatever the head waits for on this process's clock.
  #aim(now: number): void {
    const head = this.#waiters.head?.value
    let due = Number.POSITIVE_INFINITY
    // The head's turn comes at its time to act; one due but not confirmed since a break
    // waits for its confirmation instead (#ask sends it; an answer re-plans).
    if (head?.state === HELD && head.held !== null) {
      due = Math.max(head.held.dueAt, this.#pausedUntil)
      if (head.held.generation !== this.#generation && due <= now) due = Number.POSITIVE_INFINITY
    }
    if (this.#batch === null && this.#holdOffUntil > now) due = Math.min(due, this.#holdOffUntil)
    if (this.#fallingBack && this.#waiters.size > 0 && this.#probeAt > now) {
      due = Math.min(due, this.#probeAt)
    }
    if (due === Number.POSITIVE_INFINITY) {
      this.#stopTimer()
      return
    }
    const fireAt = Math.max(now, Math.ceil(due))
    if (this.#timer !== null && this.#timerAt === fireAt) return
    this.#stopTimer()
    this.#timerAt = fireAt
    this.#timer = scheduleAfter(
      this.#scheduler,
      () => {
        this.#timer = null
        this.#timerAt = Number.NaN
        this.#plan()
      },
      fireAt - now,
    )
  }

  #stopTimer(): void {
    this.#timer?.unsubscribe()
    this.#timer = null
    this.#timerAt = Number.NaN
  }

  // Sends the next request: a confirmation for the head, or reservations for the waiters
  // not yet served — or, while Redis is away, the head's tokens from the local bucket.
  #ask(now: number): void {
    const head = this.#waiters.head
    if (head === null) return
    const first = head.value
    if (
      first.state === HELD &&
      first.held?.generation !== this.#generation &&
      Math.max((first.held as Held).dueAt, this.#pausedUntil) <= now
    ) {
      this.#send([head], true)
      return
    }
    if (this.#fallingBack && now < this.#probeAt) {
      if (first.state === QUEUED) this.#serveLocally(head)
      return
    }
    let ahead = 0
    const nodes: Node<Waiter>[] = []
    for (let node: Node<Waiter> | null = head; node !== null; node = node.next) {
      const state = node.value.state
      if (state === QUEUED) {
        if (ahead + nodes.length >= MAX_AHEAD) break
        nodes.push(node)
      } else if (state === HELD || state === LOCAL) ahead++
      else if (state === ASKED) return
    }
    if (nodes.length > 0) this.#send(nodes, false)
  }

  #send(nodes: Node<Waiter>[], confirm: boolean): void {
    const batch: Batch = {
      nodes,
      epoch: this.#epoch,
      generation: this.#generation,
      // A confirmation charges nothing: it answers before the debt would be taken.
      debt: confirm ? 0 : this.#debt,
      confirm,
    }
    this.#batch = batch
    for (const node of nodes) node.value.state = ASKED
    const { rate, burst } = this.#configured
    const request = this.#store.reserveBatch(rate, burst, {
      ns: nodes.map((node) => node.value.n),
      check: !this.#verified,
      debt: batch.debt,
      horizonMs: this.#aheadMs,
      ...(confirm ? { confirm: (nodes[0]?.value.held as Held).inc } : {}),
    })
    this.#roundTrips++
    this.#call(request).then(
      (answer) => this.#answer(batch, answer),
      (error: unknown) => {
        // Timed out here, it may still land in Redis: whatever it reserved goes back then.
        request.then(
          (late) => {
            if (late.kind === 'ok') this.#giveBack(late, this.#pairs(batch, late.granted))
          },
          () => {},
        )
        this.#failed(batch, error)
      },
    )
  }

  // What a request reserved for waiters no longer there for it goes back.
  #giveBack(answer: Extract<BatchAnswer, { kind: 'ok' }>, back: { g: Granted; n: number }[]): void {
    if (back.length === 0) return
    const { rateThen, inc } = answer
    for (const { g, n } of back) {
      this.#cancels.push({
        held: { dueAt: 0, timeToAct: g.timeToAct, rateThen, inc, generation: 0 },
        n,
      })
    }
    this.#flushCancels()
  }

  #pairs(batch: Batch, granted: Granted[]): { g: Granted; n: number }[] {
    return granted.map((g, i) => ({ g, n: batch.nodes[i]?.value.n ?? 0 }))
  }

  #answer(batch: Batch, answer: BatchAnswer): void {
    this.#batch = null
    if (this.#closed) {
      if (answer.kind === 'ok') this.#giveBack(answer, this.#pairs(batch, answer.granted))
      return
    }
    if (this.#fallingBack) {
      this.#fallingBack = false
      this.#log?.info({ charged: batch.debt }, 'redis answers again: back to the shared bucket')
    }
    if (answer.kind === 'conflict') {
      const error = new ConfigConflictError(this.#key, this.#configured, {
        rate: answer.rate,
        burst: answer.burst,
      })
      this.#log?.error({ err: error }, 'configuration conflict')
      for (let node = this.#waiters.head; node !== null; node = this.#waiters.head) {
        this.#fail(node, error)
      }
      return
    }
    this.#verified = true
    // The debt sent was charged (a confirmation carries none).
    this.#debt -= batch.debt
    // Another incarnation than the one reservations held here were made on: that state
    // was lost (a restart, or a FLUSHALL or an eviction, where no connection broke), and
    // its reservations with it. Each is reserved again now, in order (waiting for each to
    // be confirmed in turn at its time to act would leave one reservation per process in
    // the shared schedule until all are).
    if (answer.inc !== this.#inc) {
      this.#inc = answer.inc
      for (let node = this.#waiters.head; node !== null; node = node.next) {
        const waiter = node.value
        if (waiter.state === HELD && waiter.held !== null && waiter.held.inc !== answer.inc) {
          waiter.state = QUEUED
          waiter.held = null
        }
      }
    }
    const now = this.#scheduler.now()
    if (answer.kind === 'confirmed') {
      const waiter = batch.nodes[0]?.value
      if (waiter && waiter.state === ASKED && waiter.held) {
        waiter.state = HELD
        waiter.held.generation = batch.generation
      }
      this.#plan()
      return
    }
    const stale = batch.epoch !== this.#epoch
    const giveBack: { g: Granted; n: number }[] = []
    batch.nodes.forEach((node, i) => {
      const granted = answer.granted[i]
      const waiter = node.value
      const present = node.list === this.#waiters
      if (granted === undefined) {
        if (present) {
          waiter.state = QUEUED
          waiter.held = null
        }
        return
      }
      if (!present || stale) {
        giveBack.push({ g: granted, n: waiter.n })
        if (present) {
          waiter.state = QUEUED
          waiter.held = null
        }
        return
      }
      waiter.state = HELD
      waiter.held = {
        dueAt: now + granted.wait,
        timeToAct: granted.timeToAct,
        rateThen: answer.rateThen,
        inc: answer.inc,
        generation: batch.generation,
        mark: granted.mark,
      }
    })
    this.#giveBack(answer, giveBack)
    if (answer.granted.length === 0 && !stale) this.#refused(batch.nodes[0], answer, now)
    this.#plan()
  }

  // The first waiter could not be reserved: its n is over the burst in force.
  #refused(
    node: Node<Waiter> | undefined,
    answer: Extract<BatchAnswer, { kind: 'ok' }>,
    now: number,
  ): void {
    if (node === undefined || node.list !== this.#waiters) return
    const { n } = node.value
    if (n > this.#configured.burst) {
      this.#fail(node, new BurstExceededError(n, this.#configured.burst))
      return
    }
    // A lower burst set by another process for a while: ask again when it ends.
    const wait = answer.overrideEnds > answer.now ? answer.overrideEnds - answer.now : 0
    this.#holdOffUntil = now + Math.max(wait, this.#retryAfterMs || 1000)
  }

  #failed(batch: Batch, error: unknown): void {
    this.#batch = null
    for (const node of batch.nodes) {
      if (node.list === this.#waiters) {
        node.value.state = QUEUED
        node.value.held = null
      }
    }
    if (this.#closed) return
    this.#log?.warn({ err: error, policy: this.#policy }, 'redis failed')
    if (this.#policy === 'fail-closed') {
      // Every waiter not holding a reservation is told: telling one must not send the
      // next one's request to the store that just failed, so all leave first.
      const failure = new StoreUnavailableError(
        'redis is unavailable: no grant (fail-closed)',
        error,
      )
      const told: Node<Waiter>[] = []
      for (let node = this.#waiters.head; node !== null; node = node.next) {
        if (node.value.state === QUEUED) told.push(node)
      }
      for (const node of told) this.#waiters.remove(node)
      for (const node of told) node.value.subscriber.error(failure)
      this.#plan()
      return
    }
    // local-fallback: one local bucket for the life of this object, never refilled at a
    // flap; what it grants is charged to the shared bucket when Redis answers again.
    this.#fallback ??= new TokenBucket({
      rate: this.#rate * this.#share,
      burst: this.#localBurst(),
      scheduler: this.#scheduler,
    })
    this.#fallingBack = true
    this.#probeAt = this.#scheduler.now() + this.#retryAfterMs
    this.#plan()
  }

  #localBurst(): number {
    return Math.max(1, Math.floor(this.#burst * this.#share))
  }

  #serveLocally(node: Node<Waiter>): void {
    const fallback = this.#fallback as TokenBucket
    const waiter = node.value
    const { n } = waiter
    waiter.state = LOCAL
    // A take larger than the local burst (but within the shared one) may still be granted:
    // the local capacity grows to n while it is the head, and shrinks back after.
    const localBurst = this.#localBurst()
    if (n > fallback.burst) fallback.setBurst(n)
    waiter.local = fallback.take(n).subscribe({
      next: () => {
        if (fallback.burst > localBurst) fallback.setBurst(localBurst)
        waiter.local = null
        waiter.state = READY
        this.#debt += n
        this.#plan()
      },
      error: (error: unknown) => this.#fail(node, error),
    })
  }
}
