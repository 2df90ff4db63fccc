import type { Logger } from 'pino'
import type { ObservableInput, SchedulerLike } from 'rxjs'
import type { Dispatcher } from 'undici'
import type { AimdOptions } from '../aimd.js'
import type { Limiter } from '../Limiter.js'
import type { Permits } from '../Permits.js'
import type { Id } from './errors.js'

export interface FanOutRetryOptions {
  /** Attempts in all, the first included. Default 3. */
  attempts?: number
  /** Backoff ceiling before the first retry, doubling after. Default 100 ms. */
  baseDelayMs?: number
  /** Largest backoff ceiling. Default 5000 ms. */
  maxDelayMs?: number
  /** Longest Retry-After honoured. Default 60 000 ms. */
  maxRetryAfterMs?: number
}

export interface FanOutClientOptions {
  /** Origin (and optional base path) of the API, e.g. `'http://127.0.0.1:8080'`. */
  baseUrl: string
  /** Path template with `{id}` (URL-encoded in), or a function of the id. Default `'/users/{id}/widgets'`. */
  path?: string | ((id: Id) => string)
  /** Requests per second. Default 10. Ignored when `limiter` is given. */
  rate?: number
  /** Burst. Default 20. Ignored when `limiter` is given. */
  burst?: number
  /** Requests in flight at once (and connections). Default 8. */
  maxInFlight?: number
  /** A shared limiter (e.g. a Redis-backed one); overrides `rate`/`burst`. */
  limiter?: Limiter
  /** A cap on requests in flight shared with other processes (e.g. `RedisSemaphore`),
   * beside the local `maxInFlight`. */
  permits?: Permits
  /** Connect, headers and body timeouts, each. Default 10 000 ms. undici checks its
   * headers and body timers on a ~500 ms tick, so small values fire late (200 ms fires
   * after 0.5–1 s of silence). */
  timeoutMs?: number
  /** Largest body read. Default 1 MiB. */
  maxBodyBytes?: number
  retry?: FanOutRetryOptions
  /** A pino logger; the client is silent without one. */
  logger?: Logger
  /** Use this dispatcher instead of the client's own `Pool` (it is not closed by the client). */
  dispatcher?: Dispatcher
  /** Extra request headers. */
  headers?: Record<string, string>
  /** Adapt the rate with AIMD between `min` and the configured rate. */
  adaptive?: Omit<AimdOptions, 'max' | 'scheduler'> & { max?: number }
  /** Clock and timers. Default `asyncScheduler`. */
  scheduler?: SchedulerLike
}

/** One fetched resource. */
export interface Fetched {
  id: Id
  status: number
  body: Uint8Array
  attempts: number
  latencyMs: number
}

export interface FetchOptions {
  /** Aborting rejects with the signal's reason and cancels everything. */
  signal?: AbortSignal
}

export interface FetchEachOptions extends FetchOptions {
  /** `'fail-fast'` (default) or `'collect'` (failures become `{ ok: false }` results). */
  errors?: 'fail-fast' | 'collect'
  /** Graceful stop: when it emits (or aborts), no new id is requested; running ones finish. */
  drain?: ObservableInput<unknown> | AbortSignal
}
