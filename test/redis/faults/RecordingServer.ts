/**
 * A `node:http` server on 127.0.0.1 (port 0) that records, from the server's side, what a
 * fan-out did to it: when every request arrived, how many were in flight at each instant
 * and at most, and how many came per path. The fault tests hold a limit (rate, concurrency)
 * across a Redis failure; this is the witness that does not depend on the library's books.
 *
 * Times are `epochNow()` (performance.timeOrigin + performance.now()), so they can be set
 * against times taken in other processes on this machine (a multi-process test's workers).
 *
 * In flight means: from the request's arrival ('request' event) until its response is
 * finished (the last byte handed to the OS) or its connection closes first. A client that
 * gives up on a request is counted out when the server sees the close, not when the
 * handler would have answered: a limiter that releases a slot on abort must not look as
 * if it overran.
 *
 * test/http/helpers.ts has TestServer, which does more for the FanOutClient tests (quota,
 * scripted replies) but counts a request out at `end()`, keeps `performance.now()` times
 * of its own process, and only routes `/users/{id}/widgets`; hence this smaller one.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { epochNow } from './epochNow.js'

export interface RecordingServerOptions {
  /**
   * How long to wait before answering, ms, fixed or per path. `Infinity` never answers
   * (the request stays in flight until the client gives up or the server closes).
   */
  delayMs?: number | ((path: string) => number)
  /** The status to answer, fixed or per path. Default 200. */
  status?: number | ((path: string) => number)
}

/** One request as the server saw it. */
export interface RecordedRequest {
  seq: number
  method: string
  /** The request target as received. */
  url: string
  /** Its path, without the query. */
  path: string
  /** Arrival ('request' event), epochNow(). */
  at: number
  /** When it stopped being in flight. */
  doneAt?: number
  /** 'finished': the response was sent; 'aborted': the connection closed first. */
  outcome?: 'finished' | 'aborted'
  status?: number
}

/** One change of the in-flight count: `inFlight` is the count right after it. */
export interface InFlightChange {
  at: number
  seq: number
  change: 1 | -1
  inFlight: number
}

interface Waiter {
  check(): boolean
}

export class RecordingServer {
  readonly requests: RecordedRequest[] = []
  readonly timeline: InFlightChange[] = []
  inFlight = 0
  maxInFlight = 0
  port = 0
  /** `http://127.0.0.1:<port>` */
  origin = ''
  readonly #counts = new Map<string, number>()
  readonly #server: Server
  readonly #options: RecordingServerOptions
  readonly #timers = new Set<NodeJS.Timeout>()
  readonly #waiters = new Set<Waiter>()
  #closed = false

  private constructor(options: RecordingServerOptions) {
    this.#options = options
    this.#server = createServer((req, res) => this.#onRequest(req, res))
  }

  static async start(options: RecordingServerOptions = {}): Promise<RecordingServer> {
    const server = new RecordingServer(options)
    await new Promise<void>((resolve, reject) => {
      server.#server.once('error', reject)
      server.#server.listen(0, '127.0.0.1', () => resolve())
    })
    server.port = (server.#server.address() as AddressInfo).port
    server.origin = `http://127.0.0.1:${server.port}`
    return server
  }

  /** Requests received on `path` (without the query). */
  count(path: string): number {
    return this.#counts.get(path) ?? 0
  }

  /** Per-path counts. */
  get counts(): ReadonlyMap<string, number> {
    return this.#counts
  }

  /** The in-flight count at instant `at` (epochNow() ms), from the timeline. */
  inFlightAt(at: number): number {
    let count = 0
    for (const change of this.timeline) {
      if (change.at > at) break
      count = change.inFlight
    }
    return count
  }

  /**
   * Resolves as soon as `predicate()` holds, checked now and at every arrival and every
   * request done; rejects after `timeoutMs`, naming `what`, so a hang reads as a failure.
   */
  until(predicate: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
    if (predicate()) return Promise.resolve()
    return new Promise<void>((resolve, reject) => {
      const guard = setTimeout(() => {
        this.#waiters.delete(waiter)
        reject(new Error(`RecordingServer never saw: ${what}`))
      }, timeoutMs)
      const waiter: Waiter = {
        check: () => {
          if (!predicate()) return false
          clearTimeout(guard)
          resolve()
          return true
        },
      }
      this.#waiters.add(waiter)
    })
  }

  /** Stops pending answers, destroys every connection (keep-alive ones too), stops listening. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    for (const timer of this.#timers) clearTimeout(timer)
    this.#timers.clear()
    this.#server.closeAllConnections()
    await new Promise<void>((resolve) => this.#server.close(() => resolve()))
  }

  #changed(): void {
    for (const waiter of this.#waiters) if (waiter.check()) this.#waiters.delete(waiter)
  }

  #note(seq: number, change: 1 | -1, at: number): void {
    this.inFlight += change
    if (this.inFlight > this.maxInFlight) this.maxInFlight = this.inFlight
    this.timeline.push({ at, seq, change, inFlight: this.inFlight })
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    const at = epochNow()
    const url = req.url ?? ''
    const query = url.indexOf('?')
    const path = query === -1 ? url : url.slice(0, query)
    const request: RecordedRequest = {
      seq: this.requests.length,
      method: req.method ?? '',
      url,
      path,
      at,
    }
    this.requests.push(request)
    this.#counts.set(path, this.count(path) + 1)
    this.#note(request.seq, 1, at)

    let timer: NodeJS.Timeout | undefined
    const socket = req.socket
    const done = (outcome: 'finished' | 'aborted') => {
      if (request.outcome !== undefined) return
      request.outcome = outcome
      request.doneAt = epochNow()
      if (timer !== undefined) {
        clearTimeout(timer)
        this.#timers.delete(timer)
      }
      // Off the socket again: a keep-alive socket carries many requests, and a listener
      // left per request would pile up on it.
      socket.off('close', onSocketClose)
      this.#note(request.seq, -1, request.doneAt)
      this.#changed()
    }
    const onSocketClose = () => done('aborted')
    res.once('finish', () => done('finished'))
    // 'close' before 'finish': the connection went first (the client gave up, or a reset).
    res.once('close', () => done(res.writableFinished ? 'finished' : 'aborted'))
    socket.once('close', onSocketClose)
    // The body is not used; reading it lets the request complete (and the socket be reused).
    req.resume()
    this.#changed()

    const { delayMs = 0, status = 200 } = this.#options
    const delay = typeof delayMs === 'function' ? delayMs(path) : delayMs
    const answer = () => {
      if (res.destroyed) return
      request.status = typeof status === 'function' ? status(path) : status
      res.writeHead(request.status, { 'content-type': 'text/plain' })
      res.end(`ok ${path}`)
    }
    if (!Number.isFinite(delay)) return
    if (delay <= 0) {
      answer()
      return
    }
    timer = setTimeout(() => {
      if (timer !== undefined) this.#timers.delete(timer)
      answer()
    }, delay)
    this.#timers.add(timer)
  }
}
