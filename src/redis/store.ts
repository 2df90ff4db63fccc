import type { Cluster, Redis } from 'ioredis'
import { ACQUIRE, CANCEL, CONFIGURE, PAUSE, PEEK, RELEASE, RENEW, RESERVE } from './scripts.js'

type Reply = (string | number)[]

/** ioredis with our commands defined: each runs by SHA, and reloads itself on NOSCRIPT. */
type Scripted = (Redis | Cluster) & {
  rxfReserve(...args: string[]): Promise<Reply>
  rxfCancel(...args: string[]): Promise<string>
  rxfConfigure(...args: string[]): Promise<[string, string]>
  rxfPause(...args: string[]): Promise<string>
  rxfPeek(...args: string[]): Promise<string[]>
  rxfAcquire(...args: string[]): Promise<Reply>
  rxfRenew(...args: string[]): Promise<Reply>
  rxfRelease(...args: string[]): Promise<number>
}

const COMMANDS: [string, number, string][] = [
  ['rxfReserve', 1, RESERVE],
  ['rxfCancel', 1, CANCEL],
  ['rxfConfigure', 1, CONFIGURE],
  ['rxfPause', 1, PAUSE],
  ['rxfPeek', 1, PEEK],
  ['rxfAcquire', 2, ACQUIRE],
  ['rxfRenew', 2, RENEW],
  ['rxfRelease', 1, RELEASE],
]

/** Defines the scripts on a client once (ioredis caches them by SHA). */
export function scripted(redis: Redis | Cluster): Scripted {
  const client = redis as Scripted
  for (const [name, numberOfKeys, lua] of COMMANDS) {
    if (typeof (client as unknown as Record<string, unknown>)[name] !== 'function') {
      redis.defineCommand(name, { numberOfKeys, lua })
    }
  }
  return client
}

const num = (value: number) => (value === Number.POSITIVE_INFINITY ? '-1' : String(value))
const fromNum = (value: string | number) => {
  const n = Number(value)
  return n < 0 ? Number.POSITIVE_INFINITY : n
}
const at = (now: number | undefined) => (now === undefined ? '' : String(now))

/**
 * What a client remembers of a state it has used, sent with every call: the signal of a
 * data loss that survives the loss (see scripts.ts).
 */
export interface Known {
  /** The incarnation last seen ('' = none yet). */
  inc: string
  /** Until when (Redis ms) the state was to live, as of the last answer. */
  aliveUntil: number
  /**
   * The latest time to act reserved in an answer (Redis ms, 0 = none): a state lost
   * before then still had reservations (anyone's) to honour until then.
   */
  lastEvent: number
}

/** How a store treats a key missing on a young Redis (see scripts.ts, `establish`). */
export interface StoreOptions {
  /** 'safe' (default): as if empty when Redis started; 'full': as never used. */
  coldStart?: 'safe' | 'full'
  /** Tests: Redis's uptime in seconds, instead of INFO's. */
  uptime?: number
}

/** One reservation of a batch. */
export interface Granted {
  /** Ms from the decision until the tokens may be used. */
  wait: number
  /** When the holder may act, on Redis's clock, as Redis wrote it (cancel compares it). */
  timeToAct: string
  /** The charged count right after this grant: a later give-back's bound (see RESERVE). */
  mark: number
}

export type BatchAnswer =
  | {
      kind: 'ok'
      now: number
      /** The rate in force when reserved (-1 = unlimited), for cancel. */
      rateThen: string
      inc: string
      aliveUntil: number
      /** The burst in force (an override's, while it lasts). */
      burst: number
      /** When the override in force ends (0 = none). */
      overrideEnds: number
      /** The first waiter was not reserved: the wait it needed (Infinity: never). */
      needed: number
      /** One per waiter reserved, in order; fewer than asked when the rest were not. */
      granted: Granted[]
    }
  | { kind: 'confirmed'; now: number; inc: string; aliveUntil: number }
  | { kind: 'conflict'; rate: number; burst: number }

export interface BatchRequest {
  ns: readonly number[]
  /** Refuse if the stored configuration differs from this one. */
  check?: boolean
  /** Tokens granted locally, charged first; negative gives back (bounded by `mark`). */
  debt?: number
  /** The grant a give-back corrects (its `Granted.mark`). */
  mark?: number
  /** The first waiter's limit on its wait (default none). */
  maxWaitMs?: number
  /** Later waiters are reserved only while their wait is within this. Default 0. */
  horizonMs?: number
  /** An incarnation: if the state is still that one, answer 'confirmed'. */
  confirm?: string
  now?: number
}

/** The single-waiter form of a reservation, for the explicit-time tests and tools. */
export interface StoreReservation {
  ok: boolean
  /** Ms from `now` until the tokens may be used. */
  wait: number
  /** Redis's clock when it decided. */
  now: number
  /** When the holder may act, on Redis's clock ('inf' if not ok); pass it back to cancel. */
  timeToAct: string
  /** The rate in force when reserved (-1 = unlimited). */
  rateThen: string
  /** The incarnation reserved from. */
  inc: string
}

/**
 * The bucket's operations on Redis, explicit-time where a test passes `now` (ms), on
 * Redis's clock otherwise. No state here but what the client remembers (`known`).
 */
export class BucketStore {
  readonly #redis: Scripted
  readonly #cold: string
  readonly #uptime: string
  /** What this client has seen of the state (see {@link Known}). */
  readonly known: Known = { inc: '', aliveUntil: 0, lastEvent: 0 }
  /** Set when the connection broke: the next call checks the state against Redis now. */
  forceCheck = false

  constructor(
    redis: Redis | Cluster,
    readonly key: string,
    options: StoreOptions = {},
  ) {
    this.#redis = scripted(redis)
    this.#cold = options.coldStart ?? 'safe'
    this.#uptime = options.uptime === undefined ? '' : String(options.uptime)
  }

  #head(rate: number, burst: number, now: number | undefined): string[] {
    return [
      this.key,
      at(now),
      num(rate),
      String(burst),
      this.known.inc,
      String(this.known.aliveUntil),
      this.#uptime,
      this.forceCheck ? `${this.#cold}!` : this.#cold,
      String(this.known.lastEvent),
    ]
  }

  #saw(inc: string, aliveUntil: number): void {
    this.known.inc = inc
    this.known.aliveUntil = aliveUntil
    this.forceCheck = false
  }

  /** Reserves for several waiters in one round trip (see RESERVE). */
  async reserveBatch(rate: number, burst: number, request: BatchRequest): Promise<BatchAnswer> {
    const { maxWaitMs = Number.POSITIVE_INFINITY } = request
    const reply = await this.#redis.rxfReserve(
      ...this.#head(rate, burst, request.now),
      request.check ? '1' : '0',
      request.mark === undefined
        ? String(request.debt ?? 0)
        : `${request.debt ?? 0}:${request.mark}`,
      maxWaitMs === Number.POSITIVE_INFINITY ? '-1' : String(maxWaitMs),
      String(request.horizonMs ?? 0),
      request.confirm ?? '',
      ...request.ns.map(String),
    )
    const kind = reply[0]
    if (kind === 'conflict') {
      return { kind, rate: fromNum(reply[1] as string), burst: Number(reply[2]) }
    }
    if (kind === 'confirmed') {
      const answer = {
        kind,
        now: Number(reply[1]),
        inc: String(reply[2]),
        aliveUntil: Number(reply[3]),
      } as const
      this.#saw(answer.inc, answer.aliveUntil)
      return answer
    }
    const granted: Granted[] = []
    // A time to act is now + wait, the same double Redis computed (both travel exactly):
    // cancel compares it with the stored last event.
    const decided = Number(reply[1])
    let mark = Number(reply[8])
    for (let j = 9; j < reply.length; j++) {
      const wait = Number(reply[j])
      const timeToAct = decided + wait
      mark += request.ns[j - 9] ?? 0
      granted.push({ wait, timeToAct: String(timeToAct), mark })
      if (timeToAct > this.known.lastEvent) this.known.lastEvent = timeToAct
    }
    const answer = {
      kind: 'ok',
      now: Number(reply[1]),
      rateThen: String(reply[2]),
      inc: String(reply[3]),
      aliveUntil: Number(reply[4]),
      burst: Number(reply[5]),
      overrideEnds: Number(reply[6]),
      needed: Number(reply[7]) < 0 ? Number.POSITIVE_INFINITY : Number(reply[7]),
      granted,
    } as const
    this.#saw(answer.inc, answer.aliveUntil)
    return answer
  }

  /** One waiter's reservation (Go's ReserveN at `now`). */
  async reserve(
    rate: number,
    burst: number,
    n: number,
    maxWaitMs: number,
    now?: number,
  ): Promise<StoreReservation> {
    const answer = await this.reserveBatch(rate, burst, {
      ns: [n],
      maxWaitMs,
      ...(now === undefined ? {} : { now }),
    })
    if (answer.kind !== 'ok') throw new Error(`unexpected answer ${answer.kind}`)
    const granted = answer.granted[0]
    return {
      ok: granted !== undefined,
      wait: granted?.wait ?? Number.POSITIVE_INFINITY,
      now: answer.now,
      timeToAct: granted?.timeToAct ?? 'inf',
      rateThen: answer.rateThen,
      inc: answer.inc,
    }
  }

  /** Go's CancelAt for a reservation made from incarnation `inc`. → tokens given back */
  async cancel(
    rate: number,
    burst: number,
    n: number,
    timeToAct: string,
    rateThen: string,
    now?: number,
    inc = this.known.inc,
  ): Promise<number> {
    return Number(
      await this.#redis.rxfCancel(
        ...this.#head(rate, burst, now),
        inc,
        String(n),
        timeToAct,
        rateThen,
      ),
    )
  }

  /** A temporary override of rate and/or burst for `forMs` (0 ends it now). */
  async configure(
    rate: number,
    burst: number,
    change: { rate?: number; burst?: number },
    forMs: number,
    now?: number,
  ): Promise<void> {
    await this.#redis.rxfConfigure(
      ...this.#head(rate, burst, now),
      change.rate === undefined ? '' : num(change.rate),
      change.burst === undefined ? '' : String(change.burst),
      String(forMs),
    )
  }

  async pause(rate: number, burst: number, ms: number, now?: number): Promise<number> {
    return Number(await this.#redis.rxfPause(...this.#head(rate, burst, now), String(ms)))
  }

  async peek(rate: number, burst: number, now?: number) {
    const [tokens, decided, r, b, paused, cr, cb, ends] = await this.#redis.rxfPeek(
      ...this.#head(rate, burst, now),
    )
    return {
      tokens: Number(tokens),
      now: Number(decided),
      rate: fromNum(r as string),
      burst: Number(b),
      pausedUntil: Number(paused),
      configured: { rate: fromNum(cr as string), burst: Number(cb) },
      overrideEnds: Number(ends),
    }
  }
}

export type AcquireAnswer =
  | { kind: 'ok'; expiresAt: number; now: number }
  | { kind: 'wait'; retryInMs: number; now: number }
  | { kind: 'conflict'; limit: number }

/** The semaphore's operations on Redis. */
export class SemaphoreStore {
  readonly #redis: Scripted
  readonly #cold: string
  readonly #uptime: string
  readonly known: Known = { inc: '', aliveUntil: 0, lastEvent: 0 }
  /** Set when the connection broke: the next acquire checks the state against Redis now. */
  forceCheck = false
  readonly meta: string

  constructor(
    redis: Redis | Cluster,
    /** The lease set's key (`{name}:permits`); its meta hash is `{name}:meta`. */
    readonly key: string,
    readonly channel: string,
    options: StoreOptions & { meta: string },
  ) {
    this.#redis = scripted(redis)
    this.meta = options.meta
    this.#cold = options.coldStart ?? 'safe'
    this.#uptime = options.uptime === undefined ? '' : String(options.uptime)
  }

  #head(limit: number, leaseMs: number, now: number | undefined): string[] {
    return [
      this.key,
      this.meta,
      at(now),
      String(limit),
      String(leaseMs),
      this.known.inc,
      String(this.known.aliveUntil),
      this.#uptime,
      this.forceCheck ? `${this.#cold}!` : this.#cold,
    ]
  }

  async acquire(
    limit: number,
    leaseMs: number,
    id: string,
    options: { check?: boolean; now?: number } = {},
  ): Promise<AcquireAnswer> {
    const reply = await this.#redis.rxfAcquire(
      ...this.#head(limit, leaseMs, options.now),
      options.check ? '1' : '0',
      id,
    )
    if (reply[0] === 'conflict') return { kind: 'conflict', limit: Number(reply[1]) }
    this.forceCheck = false
    this.known.inc = String(reply[2])
    this.known.aliveUntil = Number(reply[3])
    const now = Number(reply[4])
    if (reply[0] === 'ok') return { kind: 'ok', expiresAt: Number(reply[1]), now }
    return { kind: 'wait', retryInMs: Number(reply[1]), now }
  }

  /** Extends every lease in `ids` still held. → whether each was kept */
  async renew(limit: number, leaseMs: number, ids: readonly string[], now?: number) {
    const reply = await this.#redis.rxfRenew(...this.#head(limit, leaseMs, now), ...ids)
    this.known.aliveUntil = Number(reply[1])
    return { now: Number(reply[0]), kept: reply.slice(2).map((k) => Number(k) === 1) }
  }

  async release(id: string): Promise<boolean> {
    return (await this.#redis.rxfRelease(this.key, this.channel, id)) === 1
  }
}
