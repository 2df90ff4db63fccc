import { EventEmitter } from 'node:events'
import type { Logger } from 'pino'
import {
  asyncScheduler,
  catchError,
  EMPTY,
  map,
  Observable,
  type ObservableInput,
  type SchedulerLike,
  throwError,
} from 'rxjs'
import { type Dispatcher, Pool } from 'undici'
import { Aimd, type AimdOptions } from '../aimd.js'
import { JobError } from '../errors.js'
import { checkInteger, checkRate, invalidOption } from '../internal/validate.js'
import type { Limiter } from '../Limiter.js'
import { isPermits, type Permits } from '../Permits.js'
import { ratePoolFrom } from '../ratePoolFrom.js'
import { TokenBucket } from '../TokenBucket.js'
import type { Result } from '../types.js'
import { readBody, readExcerpt } from './body.js'
import {
  BodyTooLargeError,
  ClientClosedError,
  HttpStatusError,
  type Id,
  isRetryableHttpError,
  RequestError,
} from './errors.js'
import { type Headers, parseRateLimitHeaders, parseRetryAfter } from './headers.js'
import type { FanOutClientOptions, FetchEachOptions, Fetched, FetchOptions } from './options.js'

const EXCERPT_BYTES = 256

/** One fetch call's requests: aborted together when the call ends. */
interface Call {
  readonly signal: EventEmitter | AbortSignal
  readonly aborted: boolean
}

/** A single job's requests, cut by its own signal. */
function jobCall(signal: AbortSignal): Call {
  return {
    signal,
    get aborted() {
      return signal.aborted
    },
  }
}

function encodeId(id: Id): string {
  // Dots too: an id of '..' must not climb out of the template.
  return encodeURIComponent(String(id)).replace(/\./g, '%2E')
}

/**
 * Fetches one resource per id from a rate-limited API: `rate` requests/s with bursts of
 * `burst`, at most `maxInFlight` at once, over one undici `Pool`. On the first failure
 * (after retries) everything stops at once — ids not yet requested are never requested,
 * requests in flight are aborted (their sockets closed) — and `fetchAll` rejects with
 * that failure.
 *
 * ```ts
 * import { FanOutClient } from 'rx-fanout/http'
 *
 * const client = new FanOutClient({ baseUrl: 'http://127.0.0.1:8080' })
 * const widgets = await client.fetchAll([1, 2, 3]) // Map<id, Uint8Array>
 * await client.close()
 * ```
 */
export class FanOutClient {
  readonly #origin: string
  readonly #basePath: string
  readonly #path: string | ((id: Id) => string)
  readonly #maxInFlight: number
  readonly #timeoutMs: number
  readonly #maxBodyBytes: number
  readonly #attempts: number
  readonly #baseDelayMs: number
  readonly #maxDelayMs: number
  readonly #maxRetryAfterMs: number
  readonly #headers: Record<string, string>
  readonly #limiter: Limiter
  readonly #permits: Permits | null
  readonly #configuredRate: number | undefined
  readonly #adaptive: Aimd | null
  readonly #dispatcher: Dispatcher
  readonly #ownsDispatcher: boolean
  readonly #log: Logger | null
  readonly #scheduler: SchedulerLike
  readonly #active = new Set<AbortController>()
  readonly #idle: (() => void)[] = []
  #closed = false
  #ending: Promise<void> | null = null
  #destroying: Promise<void> | null = null

  constructor(options: FanOutClientOptions) {
    if (typeof options !== 'object' || options === null) {
      throw invalidOption(TypeError, 'options', 'an object { baseUrl, … }', options)
    }
    let url: URL
    try {
      url = new URL(options.baseUrl)
    } catch {
      throw invalidOption(TypeError, 'baseUrl', 'an absolute http(s) URL', options.baseUrl)
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw invalidOption(TypeError, 'baseUrl', 'an absolute http(s) URL', options.baseUrl)
    }
    this.#origin = url.origin
    this.#basePath = url.pathname.replace(/\/$/, '')
    const path = options.path ?? '/users/{id}/widgets'
    if (typeof path === 'string' ? !path.includes('{id}') : typeof path !== 'function') {
      throw invalidOption(TypeError, 'path', "a template with '{id}' or a function", path)
    }
    this.#path = path
    this.#maxInFlight = checkInteger('maxInFlight', options.maxInFlight ?? 8, 1)
    this.#timeoutMs = checkInteger('timeoutMs', options.timeoutMs ?? 10_000, 1)
    this.#maxBodyBytes = checkInteger('maxBodyBytes', options.maxBodyBytes ?? 1 << 20, 0)
    const retry = options.retry ?? {}
    this.#attempts = checkInteger('retry.attempts', retry.attempts ?? 3, 1)
    this.#baseDelayMs = checkInteger('retry.baseDelayMs', retry.baseDelayMs ?? 100, 0)
    this.#maxDelayMs = checkInteger('retry.maxDelayMs', retry.maxDelayMs ?? 5000, 0)
    this.#maxRetryAfterMs = checkInteger(
      'retry.maxRetryAfterMs',
      retry.maxRetryAfterMs ?? 60_000,
      0,
    )
    this.#headers = { ...options.headers }
    this.#scheduler = options.scheduler ?? asyncScheduler

    if (options.limiter !== undefined) {
      if (typeof options.limiter?.take !== 'function') {
        throw invalidOption(TypeError, 'limiter', 'a Limiter', options.limiter)
      }
      this.#limiter = options.limiter
      this.#configuredRate = options.limiter.rate
    } else {
      const rate = checkRate('rate', options.rate ?? 10, false)
      const burst = checkInteger('burst', options.burst ?? 20, 1)
      this.#limiter = new TokenBucket({ rate, burst, scheduler: this.#scheduler })
      this.#configuredRate = rate
    }
    if (options.permits !== undefined && !isPermits(options.permits)) {
      throw invalidOption(TypeError, 'permits', 'an object with acquire()', options.permits)
    }
    this.#permits = options.permits ?? null
    this.#adaptive = null
    if (options.adaptive) {
      const limiter = this.#limiter
      if (typeof limiter.setRate !== 'function' || typeof limiter.rate !== 'number') {
        throw invalidOption(TypeError, 'adaptive', 'a limiter with rate and setRate()', limiter)
      }
      this.#adaptive = new Aimd(limiter as Limiter & { rate: number; setRate(r: number): void }, {
        ...options.adaptive,
        max: options.adaptive.max ?? limiter.rate,
        scheduler: this.#scheduler,
      })
    }

    if (options.dispatcher !== undefined) {
      if (typeof options.dispatcher?.request !== 'function') {
        throw invalidOption(TypeError, 'dispatcher', 'an undici Dispatcher', options.dispatcher)
      }
      this.#dispatcher = options.dispatcher
      this.#ownsDispatcher = false
    } else {
      this.#dispatcher = new Pool(this.#origin, {
        connections: this.#maxInFlight,
        pipelining: 1,
        connectTimeout: this.#timeoutMs,
        headersTimeout: this.#timeoutMs,
        bodyTimeout: this.#timeoutMs,
        keepAliveTimeout: 4_000,
      })
      this.#ownsDispatcher = true
    }
    this.#log = options.logger ? options.logger.child({ component: 'rx-fanout' }) : null
  }

  /** The limiter every request takes its token from. */
  get limiter(): Limiter {
    return this.#limiter
  }

  /** Decisions of the adaptive rate control, when `adaptive` is on. */
  get adaptive(): Aimd | null {
    return this.#adaptive
  }

  /**
   * Fetches every id (duplicates once) and resolves to a Map of id → body. Rejects with
   * the first failure (not a sibling's AbortError), or with `signal.reason`.
   */
  fetchAll(ids: readonly Id[], options: FetchOptions = {}): Promise<Map<Id, Uint8Array>> {
    return new Promise((resolve, reject) => {
      const out = new Map<Id, Uint8Array>()
      this.fetchAll$(ids, options).subscribe({
        next: (r) => out.set(r.id, r.body),
        error: reject,
        complete: () => resolve(out),
      })
    })
  }

  /** `fetchAll` as an Observable of each fetched resource, in completion order. */
  fetchAll$(ids: readonly Id[], options: FetchOptions = {}): Observable<Fetched> {
    return this.fetchEach$(ids, options).pipe(
      map((r) => (r as Extract<Result<Id, Fetched>, { ok: true }>).value),
    )
  }

  /** Every id's `Result`; with `errors: 'collect'` failures are results, not the end. */
  fetchEach$(ids: readonly Id[], options: FetchEachOptions = {}): Observable<Result<Id, Fetched>> {
    const unique = this.#checkIds(ids)
    const { signal, errors = 'fail-fast', drain } = options
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw invalidOption(TypeError, 'signal', 'an AbortSignal', signal)
    }
    return new Observable<Result<Id, Fetched>>((subscriber) => {
      if (this.#closed) {
        subscriber.error(new ClientClosedError())
        return
      }
      if (unique.length === 0) return EMPTY.subscribe(subscriber)
      // One controller per call, so that destroy() can stop every call at once.
      const controller = new AbortController()
      const forward = () => controller.abort(signal?.reason)
      if (signal?.aborted) forward()
      else signal?.addEventListener('abort', forward, { once: true })
      this.#active.add(controller)
      // One abort for the call's requests, fired when the call ends however it ends (a
      // failure, an unsubscribe, an abort): an EventEmitter, which undici takes as a signal,
      // costs far less per request than an AbortSignal per job.
      const requests = { signal: new EventEmitter(), aborted: false }
      requests.signal.setMaxListeners(0)
      // With shared permits a job can lose its permit mid-request: its own signal (which
      // the pool also aborts at the call's end) must cut that request alone.
      const perJob = this.#permits !== null
      const sub = ratePoolFrom(
        unique,
        (id, ctx) => this.#fetchOne(id, ctx.attempt, perJob ? jobCall(ctx.signal) : requests),
        {
          concurrency: this.#maxInFlight,
          limiter: this.#limiter,
          ...(this.#permits ? { permits: this.#permits } : {}),
          errors,
          retry: {
            attempts: this.#attempts,
            baseDelayMs: this.#baseDelayMs,
            maxDelayMs: Math.max(this.#baseDelayMs, this.#maxDelayMs),
            retryable: isRetryableHttpError,
          },
          signal: controller.signal,
          ...(drain !== undefined ? { drain } : {}),
          ...(this.#adaptive ? { adaptive: this.#adaptive } : {}),
          scheduler: this.#scheduler,
        },
      )
        .pipe(
          // The caller wants the failure itself, with its id and status, not the wrapper.
          catchError((error: unknown) =>
            throwError(() => (error instanceof JobError ? error.cause : error)),
          ),
        )
        .subscribe(subscriber)
      return () => {
        sub.unsubscribe()
        requests.aborted = true
        requests.signal.emit('abort')
        signal?.removeEventListener('abort', forward)
        this.#active.delete(controller)
        if (this.#active.size === 0) for (const done of this.#idle.splice(0)) done()
      }
    })
  }

  /** Takes no new fetch, lets the running ones finish, then closes the connections. */
  close(): Promise<void> {
    // Once ending, every later close() or destroy() answers with the same promise.
    this.#ending ??= (async () => {
      this.#closed = true
      if (this.#active.size > 0) await new Promise<void>((resolve) => this.#idle.push(resolve))
      // A destroy() meanwhile has ended the dispatcher already.
      if (this.#ownsDispatcher && !this.#destroying) await this.#dispatcher.close()
    })()
    return this.#ending
  }

  /** Takes no new fetch, aborts the running ones (and their sockets) now. */
  destroy(): Promise<void> {
    this.#closed = true
    const reason = new ClientClosedError('the FanOutClient was destroyed')
    for (const controller of [...this.#active]) controller.abort(reason)
    // A close() still waiting for running fetches finishes with this destroy.
    if (this.#ownsDispatcher && !this.#destroying) {
      this.#destroying = this.#dispatcher.destroy(reason)
    }
    this.#ending = Promise.all([this.#ending, this.#destroying]).then(() => {})
    return this.#ending
  }

  #checkIds(ids: readonly Id[]): Id[] {
    if (!Array.isArray(ids)) throw invalidOption(TypeError, 'ids', 'an array of ids', ids)
    const unique = new Set<Id>()
    for (const id of ids) {
      const ok =
        (typeof id === 'number' && Number.isSafeInteger(id)) ||
        (typeof id === 'string' && id.length > 0)
      if (!ok) throw invalidOption(TypeError, 'ids[]', 'an integer or a non-empty string', id)
      unique.add(id)
    }
    return [...unique]
  }

  #pathFor(id: Id): string {
    const path = this.#path
    const tail = typeof path === 'function' ? path(id) : path.replaceAll('{id}', encodeId(id))
    return this.#basePath + (tail.startsWith('/') ? tail : `/${tail}`)
  }

  async #fetchOne(id: Id, attempt: number, call: Call): Promise<Fetched> {
    const { signal } = call
    const started = this.#scheduler.now()
    let status = 0
    try {
      let response: Dispatcher.ResponseData
      try {
        response = await this.#dispatcher.request({
          origin: this.#origin,
          path: this.#pathFor(id),
          method: 'GET',
          headers: this.#headers,
          signal,
          headersTimeout: this.#timeoutMs,
          bodyTimeout: this.#timeoutMs,
        })
      } catch (error) {
        throw call.aborted ? error : new RequestError(id, attempt, error)
      }
      status = response.statusCode
      this.#heed(response.headers as Headers)
      if (status < 200 || status >= 300) {
        const excerpt = await readExcerpt(response.body, EXCERPT_BYTES)
        const retryAfterMs =
          status === 429 || status === 503
            ? parseRetryAfter(
                response.headers['retry-after'],
                this.#scheduler.now(),
                this.#maxRetryAfterMs,
              )
            : undefined
        throw new HttpStatusError({ status, id, attempt, excerpt, retryAfterMs })
      }
      let body: Uint8Array
      try {
        body = await readBody(response, this.#maxBodyBytes, id, attempt)
      } catch (error) {
        // A reset or a stall mid-body is a request failure like one before the headers
        // (retryable when it is a reset); an oversize body is its own error.
        if (call.aborted || error instanceof BodyTooLargeError) throw error
        throw new RequestError(id, attempt, error)
      }
      const latencyMs = this.#scheduler.now() - started
      if (this.#log?.isLevelEnabled('debug')) {
        this.#log.debug({ userId: id, attempt, latencyMs, status }, 'fetched')
      }
      return { id, status, body, attempts: attempt, latencyMs }
    } catch (error) {
      this.#logFailure(error, id, attempt, status, started, call)
      throw error
    }
  }

  // Adapt to what the server says of its quota: never above the configured rate.
  #heed(headers: Headers): void {
    if (
      !headers.ratelimit &&
      !headers['ratelimit-policy'] &&
      !headers['ratelimit-remaining'] &&
      !headers['x-ratelimit-remaining']
    )
      return
    const quota = parseRateLimitHeaders(headers, this.#scheduler.now())
    const limiter = this.#limiter
    if (quota.rate !== undefined && limiter.setRate && limiter.rate !== undefined) {
      const target = Math.min(quota.rate, this.#configuredRate ?? quota.rate)
      if (target < limiter.rate) {
        // Lowered until the quota resets, and never longer than a Retry-After may last: a
        // shared limiter stores it for every process, so a stray header can't hold it.
        const forMs = Math.min(quota.resetMs ?? this.#maxRetryAfterMs, this.#maxRetryAfterMs)
        limiter.setRate(target, { forMs: Math.max(1, Math.ceil(forMs)) })
        this.#log?.warn({ rate: target }, 'server declared a lower quota; rate lowered')
      }
    }
    if (quota.exhaustedForMs !== undefined && limiter.pauseFor) {
      limiter.pauseFor(Math.min(quota.exhaustedForMs, this.#maxRetryAfterMs))
    }
  }

  #logFailure(
    error: unknown,
    id: Id,
    attempt: number,
    status: number,
    started: number,
    call: Call,
  ): void {
    const log = this.#log
    if (log === null || call.aborted) return
    const willRetry = attempt < this.#attempts && isRetryableHttpError(error)
    const level = willRetry ? 'warn' : 'error'
    if (!log.isLevelEnabled(level)) return
    const fields = {
      userId: id,
      attempt,
      latencyMs: this.#scheduler.now() - started,
      ...(status ? { status } : {}),
      err: error,
    }
    if (willRetry) log.warn(fields, 'retrying')
    else log.error(fields, 'failed')
  }
}
