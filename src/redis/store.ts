import type { Redis } from 'ioredis'
import { ACQUIRE, CANCEL, CONFIGURE, PAUSE, PEEK, RELEASE, RENEW, RESERVE } from './scripts.js'

/** ioredis with our commands defined: each runs by SHA, and reloads itself on NOSCRIPT. */
type Scripted = Redis & {
  rxfReserve(key: string, ...args: string[]): Promise<[number, string, string, string, string]>
  rxfCancel(key: string, ...args: string[]): Promise<string>
  rxfConfigure(key: string, ...args: string[]): Promise<[string, string]>
  rxfPause(key: string, ...args: string[]): Promise<string>
  rxfPeek(key: string, ...args: string[]): Promise<[string, string, string, string, string]>
  rxfAcquire(key: string, ...args: string[]): Promise<[number, string]>
  rxfRenew(key: string, ...args: string[]): Promise<number>
  rxfRelease(key: string, channel: string, id: string): Promise<number>
}

const COMMANDS: [string, number, string][] = [
  ['rxfReserve', 1, RESERVE],
  ['rxfCancel', 1, CANCEL],
  ['rxfConfigure', 1, CONFIGURE],
  ['rxfPause', 1, PAUSE],
  ['rxfPeek', 1, PEEK],
  ['rxfAcquire', 1, ACQUIRE],
  ['rxfRenew', 1, RENEW],
  ['rxfRelease', 2, RELEASE],
]

/** Defines the scripts on a client once (ioredis caches them by SHA). */
export function scripted(redis: Redis): Scripted {
  const client = redis as Scripted
  for (const [name, numberOfKeys, lua] of COMMANDS) {
    if (typeof (client as unknown as Record<string, unknown>)[name] !== 'function') {
      redis.defineCommand(name, { numberOfKeys, lua })
    }
  }
  return client
}

const num = (value: number) => (value === Number.POSITIVE_INFINITY ? '-1' : String(value))
const at = (now: number | undefined) => (now === undefined ? '' : String(now))

export interface StoreReservation {
  ok: boolean
  /** Ms from `now` until the tokens may be used (or, if not ok, that would be needed). */
  wait: number
  /** Redis's clock when it decided. */
  now: number
  /** When the holder may act, on Redis's clock; pass it back to cancel. */
  timeToAct: string
  /** The rate in force when reserved (-1 = unlimited). */
  rateThen: string
}

/**
 * The bucket's operations on Redis, explicit-time where a test passes `now` (ms), on
 * Redis's clock otherwise. No state here: everything is in the hash at `key`.
 */
export class BucketStore {
  readonly #redis: Scripted

  constructor(
    redis: Redis,
    readonly key: string,
  ) {
    this.#redis = scripted(redis)
  }

  async reserve(
    rate: number,
    burst: number,
    n: number,
    maxWaitMs: number,
    now?: number,
  ): Promise<StoreReservation> {
    const maxWait = maxWaitMs === Number.POSITIVE_INFINITY ? '-1' : String(maxWaitMs)
    const [ok, wait, decided, rateThen, timeToAct] = await this.#redis.rxfReserve(
      this.key,
      at(now),
      num(rate),
      String(burst),
      String(n),
      maxWait,
    )
    // timeToAct stays a string, as Redis wrote it: cancel compares it with the stored
    // last event exactly.
    return { ok: ok === 1, wait: Number(wait), now: Number(decided), timeToAct, rateThen }
  }

  async cancel(
    rate: number,
    burst: number,
    n: number,
    timeToAct: string,
    rateThen: string,
    now?: number,
  ): Promise<number> {
    return Number(
      await this.#redis.rxfCancel(
        this.key,
        at(now),
        num(rate),
        String(burst),
        String(n),
        timeToAct,
        rateThen,
      ),
    )
  }

  async configure(
    rate: number,
    burst: number,
    change: { rate?: number; burst?: number },
    now?: number,
  ): Promise<void> {
    await this.#redis.rxfConfigure(
      this.key,
      at(now),
      num(rate),
      String(burst),
      change.rate === undefined ? '' : num(change.rate),
      change.burst === undefined ? '' : String(change.burst),
    )
  }

  async pause(rate: number, burst: number, ms: number, now?: number): Promise<number> {
    return Number(
      await this.#redis.rxfPause(this.key, at(now), num(rate), String(burst), String(ms)),
    )
  }

  async peek(rate: number, burst: number, now?: number) {
    const [tokens, decided, r, b, paused] = await this.#redis.rxfPeek(
      this.key,
      at(now),
      num(rate),
      String(burst),
    )
    const rateNow = Number(r)
    return {
      tokens: Number(tokens),
      now: Number(decided),
      rate: rateNow < 0 ? Number.POSITIVE_INFINITY : rateNow,
      burst: Number(b),
      pausedUntil: Number(paused),
    }
  }
}

/** The semaphore's operations on Redis. */
export class SemaphoreStore {
  readonly #redis: Scripted

  constructor(
    redis: Redis,
    readonly key: string,
  ) {
    this.#redis = scripted(redis)
  }

  get channel(): string {
    return `${this.key}:released`
  }

  async acquire(
    limit: number,
    leaseMs: number,
    id: string,
    now?: number,
  ): Promise<{ granted: boolean; retryInMs: number }> {
    const [granted, retry] = await this.#redis.rxfAcquire(
      this.key,
      at(now),
      String(limit),
      String(leaseMs),
      id,
    )
    return { granted: granted === 1, retryInMs: Number(retry) }
  }

  async renew(leaseMs: number, id: string, now?: number): Promise<boolean> {
    return (await this.#redis.rxfRenew(this.key, at(now), String(leaseMs), id)) === 1
  }

  async release(id: string): Promise<boolean> {
    return (await this.#redis.rxfRelease(this.key, this.channel, id)) === 1
  }
}
