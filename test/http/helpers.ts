/**
 * A real `node:http` downstream for the FanOutClient tests, on 127.0.0.1 port 0.
 *
 * It keeps its own books, independent of rx-fanout: a quota enforced with GCRA (answers
 * 429 to any excess), every arrival with its time, url and socket, requests in flight and
 * the most at once, per-url counts, and every connection from 'connection' to 'close'.
 * Per id it can be told to answer a status (with Retry-After or RateLimit headers), to
 * delay or never send headers, to drip the body, to send a big body (with or without a
 * content-length), or to reset the connection (before the headers, or mid-body).
 *
 * Times are `performance.now()` on the server's side. Waiting is done by `until()`, which
 * resolves on the server event that makes a condition true; its guard only turns a hang
 * into a readable failure. Allowances for timing are stated where they are defined
 * (`JITTER_MS`, `CLOCK_MS`, `watchStarts`, `loopLag`).
 */
import { createHook } from 'node:async_hooks'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { monitorEventLoopDelay, performance } from 'node:perf_hooks'
import { Pool } from 'undici'
import { expect } from 'vitest'
import { FanOutClient, type FanOutClientOptions } from '../../src/http/index.js'
import type { Limiter } from '../../src/index.js'

/**
 * How early (ms) an arrival may come against the quota's ideal schedule and still be let
 * in, beyond the transit spread measured per request (see `watchStarts`): the client's
 * clock (`Date.now()`) ticks in whole ms, and a request's start is noted a little before
 * its bytes leave. A tolerance on the schedule, not per request: it never accumulates.
 */
export const JITTER_MS = 5

/** The client's clock (`Date.now()`) reads whole ms: its instants are off by up to 1 ms. */
export const CLOCK_MS = 2

/**
 * When the client handed each request to undici (`Pool#dispatch`, called synchronously
 * from the job's start), by url in order, on the server's clock. undici's Pool prototype
 * is spied on until the end of the test, so the client's own Pool is seen too.
 *
 * A request's transit (start → the server's 'request' event) varies: new connections,
 * loopback, event-loop stalls (client and server share one loop, and a loaded machine
 * stalls it). When an earlier request is held up longer than a later one, the server
 * sees the two closer together than they started; the server's accounting allows for
 * exactly that measured difference, so the allowance is evidence, not a guess.
 */
export interface Starts {
  readonly byUrl: Map<string, number[]>
  readonly all: number[]
}

export function watchStarts(): Starts {
  const starts: Starts = { byUrl: new Map(), all: [] }
  const proto = Pool.prototype as { dispatch: Pool['dispatch'] }
  const own = Object.hasOwn(proto, 'dispatch')
  const original = proto.dispatch
  proto.dispatch = function (this: Pool, options, handler) {
    const url = String(options.path)
    if (url !== WARM_PATH) {
      const at = now()
      starts.all.push(at)
      const list = starts.byUrl.get(url)
      if (list) list.push(at)
      else starts.byUrl.set(url, [at])
    }
    return original.call(this, options, handler)
  }
  onCleanup(() => {
    if (own) proto.dispatch = original
    else delete (proto as Partial<typeof proto>).dispatch
  })
  return starts
}

/**
 * The longest event-loop stall since the call (ms, beyond the 1 ms sampling interval).
 * Client and server share one loop: a request sent before a stall reaches the server's
 * handler only after it, while one sent after it is not held up, so a stall brings two
 * arrivals closer by up to its length, and delays the server's view of anything the
 * client does. Neither side controls that (a loaded CI machine does), so the bounds on
 * the server's clock allow for it on top of their own margin.
 */
export function loopLag(): { readonly ms: number } {
  const histogram = monitorEventLoopDelay({ resolution: 1 })
  histogram.enable()
  onCleanup(() => histogram.disable())
  return {
    get ms() {
      return Math.max(0, histogram.max / 1e6 - 1)
    },
  }
}

/** What the server does with one request. */
export type Reply =
  /** `status` (default 200) after `delayMs`, with `body` (default `widgets:<id>`). */
  | {
      kind: 'answer'
      status?: number
      delayMs?: number
      body?: string | Buffer
      /** Fixed, or made when the answer is sent (e.g. an HTTP-date from the clock then). */
      headers?: Record<string, string> | (() => Record<string, string>)
    }
  /** Takes the request and never answers: no status line, no headers. */
  | { kind: 'hang' }
  /** Headers at once, then `count` chunks `everyMs` apart, then the end. */
  | { kind: 'drip'; chunk: string; everyMs: number; count: number }
  /**
   * A body of `bytes` (declared in content-length when `contentLength`, else chunked), of
   * which only `sendBytes` (default all) are written; short of all, the response is held
   * open and never ends.
   */
  | { kind: 'big'; bytes: number; contentLength: boolean; sendBytes?: number }
  /** `req.socket.destroy()`: the connection is reset under the request. */
  | { kind: 'reset' }
  /** Headers and the first `sendBytes` of a longer body, then the connection is reset. */
  | { kind: 'cut'; sendBytes: number }

/** Builders for the replies the tests script. */
export const reply = {
  ok: (options: { delayMs?: number; headers?: Record<string, string> } = {}): Reply => ({
    kind: 'answer',
    ...options,
  }),
  status: (
    status: number,
    options: { delayMs?: number; headers?: Record<string, string>; body?: string | Buffer } = {},
  ): Reply => ({ kind: 'answer', status, body: `status ${status}`, ...options }),
  /** 429 or 503 with `Retry-After` (delta-seconds or an HTTP-date, as given). */
  retryAfter: (status: number, value: string | (() => string)): Reply => ({
    kind: 'answer',
    status,
    body: `retry after`,
    headers: () => ({ 'retry-after': typeof value === 'function' ? value() : value }),
  }),
  hang: (): Reply => ({ kind: 'hang' }),
  drip: (chunk: string, everyMs: number, count: number): Reply => ({
    kind: 'drip',
    chunk,
    everyMs,
    count,
  }),
  big: (bytes: number, contentLength: boolean, sendBytes?: number): Reply => ({
    kind: 'big',
    bytes,
    contentLength,
    ...(sendBytes !== undefined ? { sendBytes } : {}),
  }),
  reset: (): Reply => ({ kind: 'reset' }),
  cut: (sendBytes: number): Reply => ({ kind: 'cut', sendBytes }),
}

/** One request as the server saw it. */
export interface Arrival {
  seq: number
  /** The request target exactly as received (still percent-encoded). */
  url: string
  /** The decoded `{id}` segment when the url is `/users/{id}/widgets`, else null. */
  id: string | null
  /** 1 + the arrivals on the same url before this one. */
  attempt: number
  /** When the request (its head) arrived. */
  at: number
  /** When the client started it (with `starts`): `at - startedAt` is its transit. */
  startedAt?: number
  /** Which connection carried it (see `conns`). */
  conn: number
  /** The status answered, once headers are sent. */
  status?: number
  /** Answered 429 by the quota. */
  throttled: boolean
  /** The server reset the connection under it. */
  reset: boolean
  /** The headers sent with the answer. */
  headers?: Record<string, string>
  /** `Date.now()` when the headers were sent (to read an HTTP-date against). */
  sentAtEpoch?: number
  /** The server called `end()` (the last byte is written). */
  endedAt?: number
  /** 'finish': the whole response was handed to the OS. */
  finishedAt?: number
  /** The response closed before it was finished and the server did not reset it: the client went away. */
  abortedAt?: number
}

/** One connection, from 'connection' to 'close'. */
export interface Conn {
  n: number
  openedAt: number
  closedAt?: number
}

export interface ServerOptions {
  /**
   * Enforce `rate`/s with bursts of `burst` (GCRA); excess is answered 429. The jitter
   * allowance defaults to `JITTER_MS`; with `starts`, each arrival is also allowed the
   * measured transit spread (how much longer an earlier request took to arrive).
   */
  quota?: { rate: number; burst: number; jitterMs?: number }
  /** The client's request starts (see `watchStarts`), to measure each request's transit. */
  starts?: Starts
  /** The default reply's delay before headers, ms (or per id). Default 0. */
  latencyMs?: number | ((id: string) => number)
  /** Headers added to every answer (e.g. a RateLimit-Policy). */
  headers?: Record<string, string>
}

const now = () => performance.now()

/**
 * The generic cell rate algorithm: a request may come at most `tau` ms ahead of its
 * theoretical arrival time; each admitted one pushes that time on by 1/rate. With
 * tau = (burst − 1)/rate it admits exactly the token bucket's envelope: at most
 * burst + rate·w requests in any window of w seconds. The jitter allowance widens tau.
 */
export class Gcra {
  readonly #interval: number
  readonly #tau: number
  #tat = Number.NEGATIVE_INFINITY

  constructor(rate: number, burst: number, jitterMs: number) {
    this.#interval = 1000 / rate
    this.#tau = (burst - 1) * this.#interval + jitterMs
  }

  /** `extraMs`: how much earlier than scheduled this one may come (measured transit). */
  admit(at: number, extraMs = 0): boolean {
    const tat = Math.max(this.#tat, at)
    if (tat - at > this.#tau + extraMs) return false
    this.#tat = tat + this.#interval
    return true
  }
}

/**
 * The smallest bucket capacity that admits these arrival times at `rate`/s: the largest
 * `count − rate·w` over every window of w seconds between two arrivals. A client that
 * keeps a token bucket's envelope with burst B gives at most B (plus the jitter).
 */
export function requiredBurst(times: readonly number[], rate: number): number {
  const sorted = [...times].sort((a, b) => a - b)
  let worst = 0
  for (let i = 0; i < sorted.length; i++) {
    for (let j = i; j < sorted.length; j++) {
      const need = j - i + 1 - (rate * ((sorted[j] as number) - (sorted[i] as number))) / 1000
      if (need > worst) worst = need
    }
  }
  return worst
}

/**
 * The envelope (at most burst + rate·w requests in any w seconds), twice: on the client's
 * starts, as the contract states it (give or take its whole-ms clock), and on the
 * server's arrivals, give or take the transit spread measured in this very run.
 */
export function expectEnvelope(
  server: TestServer,
  starts: Starts,
  rate: number,
  burst: number,
): void {
  const urls = new Set(server.arrivals.map((a) => a.url))
  const started = [...starts.byUrl].filter(([url]) => urls.has(url)).flatMap(([, at]) => at)
  expect(started).toHaveLength(server.arrivals.length)
  expect(requiredBurst(started, rate), 'on the starts').toBeLessThanOrEqual(
    burst + (rate * CLOCK_MS) / 1000,
  )
  const slackMs = JITTER_MS + server.transitSpread
  expect(
    requiredBurst(
      server.arrivals.map((a) => a.at),
      rate,
    ),
    `on the arrivals (transit spread ${server.transitSpread.toFixed(1)} ms)`,
  ).toBeLessThanOrEqual(burst + (rate * slackMs) / 1000)
}

interface Waiter {
  check(): boolean
}

export class TestServer {
  readonly arrivals: Arrival[] = []
  readonly conns: Conn[] = []
  /** Requests the server is still answering (from arrival to `end()` or close). */
  inFlight = 0
  maxInFlight = 0
  /** 429s from the quota (not scripted ones). */
  throttled = 0
  /** Longest and shortest transit so far (with `starts`). */
  maxTransit = Number.NEGATIVE_INFINITY
  minTransit = Number.POSITIVE_INFINITY
  origin = ''
  readonly #server: Server
  readonly #options: ServerOptions
  readonly #gcra: Gcra | null
  readonly #scripts = new Map<string, Reply[]>()
  readonly #perUrl = new Map<string, number>()
  readonly #connOf = new WeakMap<Socket, Conn>()
  readonly #timers = new Set<NodeJS.Timeout>()
  readonly #byResponse = new WeakMap<ServerResponse, Set<NodeJS.Timeout>>()
  readonly #waiters = new Set<Waiter>()
  #closed = false

  private constructor(options: ServerOptions) {
    this.#options = options
    const quota = options.quota
    this.#gcra = quota ? new Gcra(quota.rate, quota.burst, quota.jitterMs ?? JITTER_MS) : null
    this.#server = createServer((req, res) => this.#onRequest(req, res))
    this.#server.on('connection', (socket: Socket) => {
      const conn: Conn = { n: this.conns.length, openedAt: now() }
      this.conns.push(conn)
      this.#connOf.set(socket, conn)
      socket.on('close', () => {
        conn.closedAt = now()
        this.#changed()
      })
      this.#changed()
    })
  }

  static async start(options: ServerOptions = {}): Promise<TestServer> {
    const server = new TestServer(options)
    await new Promise<void>((resolve, reject) => {
      server.#server.once('error', reject)
      server.#server.listen(0, '127.0.0.1', () => resolve())
    })
    const { port } = server.#server.address() as AddressInfo
    server.origin = `http://127.0.0.1:${port}`
    return server
  }

  /** The replies for `id`'s successive attempts; the last one repeats. */
  script(id: string | number, ...replies: Reply[]): this {
    this.#scripts.set(String(id), replies)
    return this
  }

  /** Requests received on this exact url (e.g. `/users/7/widgets`). */
  count(url: string): number {
    return this.#perUrl.get(url) ?? 0
  }

  /** Transit spread (ms): longest − shortest start → arrival (0 without `starts`). */
  get transitSpread(): number {
    return this.maxTransit >= this.minTransit ? this.maxTransit - this.minTransit : 0
  }

  /** Per-url counts. */
  get perUrl(): ReadonlyMap<string, number> {
    return this.#perUrl
  }

  /** Connections open now. */
  get openSockets(): number {
    return this.conns.filter((conn) => conn.closedAt === undefined).length
  }

  arrivalsFor(id: string | number): Arrival[] {
    return this.arrivals.filter((a) => a.id === String(id))
  }

  /**
   * Resolves as soon as `predicate()` holds, checked now and on every server event
   * (arrival, end, abort, connection open or close). The guard only names a hang.
   */
  until(predicate: () => boolean, what: string | (() => string), guardMs = 5000): Promise<void> {
    if (predicate()) return Promise.resolve()
    return new Promise<void>((resolve, reject) => {
      const guard = setTimeout(() => {
        this.#waiters.delete(waiter)
        reject(new Error(`never saw: ${typeof what === 'function' ? what() : what}`))
      }, guardMs)
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

  /** Stops everything: pending replies, every connection, the listener. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    for (const timer of this.#timers) clearTimeout(timer)
    this.#timers.clear()
    this.#server.closeAllConnections()
    await new Promise<void>((resolve) => this.#server.close(() => resolve()))
  }

  /** Checks the `until()` conditions again (for state outside the server, e.g. a Pool's). */
  recheck(): void {
    this.#changed()
  }

  #changed(): void {
    for (const waiter of this.#waiters) if (waiter.check()) this.#waiters.delete(waiter)
  }

  // Timers of a response are cleared when it closes (one 'close' listener per response).
  #later(res: ServerResponse, ms: number, fn: () => void): void {
    let own = this.#byResponse.get(res)
    if (own === undefined) {
      const timers = new Set<NodeJS.Timeout>()
      own = timers
      this.#byResponse.set(res, timers)
      res.once('close', () => {
        for (const timer of timers) {
          clearTimeout(timer)
          this.#timers.delete(timer)
        }
      })
    }
    const timers = own
    const timer = setTimeout(() => {
      this.#timers.delete(timer)
      timers.delete(timer)
      if (!res.destroyed) fn()
    }, ms)
    this.#timers.add(timer)
    timers.add(timer)
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    const at = now()
    const url = req.url ?? ''
    if (url === WARM_PATH) {
      // Opens connections for warmPool(): outside the books and the quota.
      this.#later(res, 20, () => res.writeHead(204).end())
      return
    }
    const match = /^\/users\/([^/?#]*)\/widgets$/.exec(url)
    let id: string | null = null
    if (match) {
      try {
        id = decodeURIComponent(match[1] as string)
      } catch {
        id = null
      }
    }
    const attempt = (this.#perUrl.get(url) ?? 0) + 1
    this.#perUrl.set(url, attempt)
    const arrival: Arrival = {
      seq: this.arrivals.length,
      url,
      id,
      attempt,
      at,
      conn: this.#connOf.get(req.socket)?.n ?? -1,
      throttled: false,
      reset: false,
    }
    this.arrivals.push(arrival)
    this.inFlight++
    if (this.inFlight > this.maxInFlight) this.maxInFlight = this.inFlight

    let counted = true
    const done = () => {
      if (!counted) return
      counted = false
      this.inFlight--
    }
    const end = (chunk?: string | Buffer) => {
      done()
      arrival.endedAt = now()
      res.end(chunk)
      this.#changed()
    }
    res.on('finish', () => {
      arrival.finishedAt = now()
      this.#changed()
    })
    res.on('close', () => {
      if (!res.writableFinished && !arrival.reset) arrival.abortedAt = now()
      done()
      this.#changed()
    })
    const head = (status: number, headers: Record<string, string> = {}) => {
      arrival.status = status
      arrival.headers = { ...this.#options.headers, ...headers }
      arrival.sentAtEpoch = Date.now()
      res.writeHead(status, arrival.headers)
    }

    // This request may arrive closer to earlier ones by as much as they took longer.
    let spread = 0
    const startedAt = this.#options.starts?.byUrl.get(url)?.[attempt - 1]
    if (startedAt !== undefined) {
      arrival.startedAt = startedAt
      const transit = at - startedAt
      spread = Math.max(0, this.maxTransit - transit)
      this.maxTransit = Math.max(this.maxTransit, transit)
      this.minTransit = Math.min(this.minTransit, transit)
    }
    if (this.#gcra && !this.#gcra.admit(at, spread)) {
      arrival.throttled = true
      this.throttled++
      head(429, { 'content-type': 'text/plain' })
      end('over quota')
      return
    }
    this.#changed()
    if (id === null) {
      head(404, { 'content-type': 'text/plain' })
      end('no such route')
      return
    }
    const script = this.#scripts.get(id)
    const latency = this.#options.latencyMs ?? 0
    const r: Reply = script?.[Math.min(attempt, script.length) - 1] ?? {
      kind: 'answer',
      delayMs: typeof latency === 'function' ? latency(id) : latency,
    }

    switch (r.kind) {
      case 'answer': {
        const send = () => {
          const headers = typeof r.headers === 'function' ? r.headers() : r.headers
          head(r.status ?? 200, { 'content-type': 'text/plain', ...headers })
          end(r.body ?? `widgets:${id}`)
        }
        if (r.delayMs) this.#later(res, r.delayMs, send)
        else send()
        return
      }
      case 'hang':
        return
      case 'drip': {
        head(200, { 'content-type': 'text/plain' })
        res.flushHeaders()
        let sent = 0
        const next = () => {
          if (sent === r.count) {
            end()
            return
          }
          sent++
          res.write(r.chunk)
          this.#later(res, r.everyMs, next)
        }
        next()
        return
      }
      case 'big': {
        head(
          200,
          r.contentLength
            ? { 'content-type': 'application/octet-stream', 'content-length': String(r.bytes) }
            : { 'content-type': 'application/octet-stream' },
        )
        const sendBytes = r.sendBytes ?? r.bytes
        res.flushHeaders()
        for (let sent = 0; sent < sendBytes; sent += 16_384) {
          res.write(Buffer.alloc(Math.min(16_384, sendBytes - sent), 0x61))
        }
        if (sendBytes >= r.bytes) end()
        return
      }
      case 'reset':
        arrival.reset = true
        done()
        req.socket.destroy()
        this.#changed()
        return
      case 'cut':
        head(200, { 'content-type': 'text/plain', 'content-length': String(r.sendBytes * 2) })
        res.write('x'.repeat(r.sendBytes), () => {
          arrival.reset = true
          done()
          req.socket.destroy()
          this.#changed()
        })
        return
    }
  }
}

// ── cleanup: everything a test makes is torn down right after it ───────────────────────

const cleanups: (() => unknown)[] = []

/** Runs `fn` after the current test (last registered, first run). */
export function onCleanup(fn: () => unknown): void {
  cleanups.push(fn)
}

/** For `afterEach`: runs every registered cleanup. */
export async function cleanup(): Promise<void> {
  for (const fn of cleanups.splice(0).reverse()) await fn()
}

/** Starts a server that is closed (all connections too) after the current test. */
export async function startServer(options: ServerOptions = {}): Promise<TestServer> {
  const server = await TestServer.start(options)
  onCleanup(() => server.close())
  return server
}

/** A FanOutClient on `server`, destroyed after the test. */
export function makeClient(
  server: TestServer,
  options: Partial<FanOutClientOptions> = {},
): FanOutClient {
  const client = new FanOutClient({ baseUrl: server.origin, ...options })
  onCleanup(() => client.destroy())
  return client
}

export const range = (from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => from + i)

/**
 * Notes when the client's limiter is told to pause or to change its rate (server clock).
 * When the client *reads* a response is its own business — a cold first response can take
 * 15 ms — so windows that start "once the client knew" start at these instants; windows
 * that end are anchored on the server's clock.
 */
export function watchLimiter(limiter: Limiter): { pausedAt: number[]; rateSetAt: number[] } {
  const seen = { pausedAt: [] as number[], rateSetAt: [] as number[] }
  const target = limiter as { pauseFor?: (ms: number) => void; setRate?: (rate: number) => void }
  const { pauseFor, setRate } = target
  if (pauseFor) {
    target.pauseFor = (ms) => {
      seen.pausedAt.push(now())
      pauseFor.call(limiter, ms)
    }
  }
  if (setRate) {
    target.setRate = (rate) => {
      seen.rateSetAt.push(now())
      setRate.call(limiter, rate)
    }
  }
  return seen
}

const WARM_PATH = '/warm'

/**
 * An undici Pool on `server` with `connections` sockets already open, closed after the
 * test. A cold pool's opening burst pays for its connections (measured here: 5 to 15 ms
 * from the grant to the server for the first requests, against well under 1 ms later), so
 * the server would see that burst compressed against the requests after it; a measured
 * run on warm sockets sees only loopback and event-loop jitter.
 */
export async function warmPool(server: TestServer, connections: number): Promise<Pool> {
  const pool = new Pool(server.origin, { connections, pipelining: 1 })
  onCleanup(() => pool.destroy())
  await Promise.all(
    Array.from({ length: connections }, async () => {
      const response = await pool.request({ path: WARM_PATH, method: 'GET' })
      await response.body.dump()
    }),
  )
  const open = server.openSockets
  if (open !== connections) throw new Error(`warmPool: ${open} sockets open, not ${connections}`)
  return pool
}

/** `/users/{id}/widgets` as the client must send it for a plain id. */
export const urlOf = (id: string | number) => `/users/${id}/widgets`

/** The body the server sends by default for `id`. */
export const bodyOf = (id: string | number) => `widgets:${id}`

export const text = (bytes: Uint8Array | undefined) =>
  bytes === undefined ? undefined : Buffer.from(bytes).toString('utf8')

/**
 * An observation window for something that must NOT happen (a request after fail-fast):
 * absence cannot be awaited, so it is watched for a stated time.
 */
export const quiet = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** One turn of the event loop. */
export const tick = () => new Promise<void>((resolve) => setImmediate(resolve))

/** Settles a promise into what it rejected with (or throws if it resolved). */
export async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise
  } catch (error) {
    return error
  }
  throw new Error('expected a rejection, but the promise resolved')
}

// ── active handles ──────────────────────────────────────────────────────────────────────

/**
 * Timers tracked from creation to destruction with their creator's stack, so that the
 * runner's own (vitest throttles its reports with timers) are told apart from ours.
 */
interface TrackedTimer {
  caller: string
  resource: { hasRef?: () => boolean }
}
const timers = new Map<number, TrackedTimer>()
let hookOn = false
const hook = createHook({
  init(asyncId, type, _trigger, resource) {
    if (type !== 'Timeout') return
    const stack = new Error().stack ?? ''
    timers.set(asyncId, { caller: stack, resource: resource as TrackedTimer['resource'] })
  },
  destroy(asyncId) {
    timers.delete(asyncId)
  },
})
const isRunners = (timer: TrackedTimer) => /[\\/](@vitest|vitest|tinypool)[\\/]/.test(timer.caller)

export interface HandleBaseline {
  /** Non-timer resources by type (sockets, servers, …). */
  resources: Map<string, number>
  timerIds: Set<number>
}

function resourceCounts(): Map<string, number> {
  const counts = new Map<string, number>()
  for (const type of process.getActiveResourcesInfo()) {
    if (type === 'Timeout' || type === 'Immediate') continue // timers: tracked by the hook
    counts.set(type, (counts.get(type) ?? 0) + 1)
  }
  return counts
}

/** What keeps the event loop alive now; call before the server starts. */
export async function handleBaseline(): Promise<HandleBaseline> {
  if (!hookOn) {
    hook.enable()
    hookOn = true
  }
  await tick()
  return { resources: resourceCounts(), timerIds: new Set(timers.keys()) }
}

/**
 * What is alive now beyond the baseline: resources of a type above its baseline count,
 * and ref'd timers made since the baseline by anyone but the runner (with the frame that
 * made them).
 */
export async function leftOver(base: HandleBaseline): Promise<string[]> {
  await tick()
  await tick()
  const out: string[] = []
  for (const [type, count] of resourceCounts()) {
    const before = base.resources.get(type) ?? 0
    if (count > before) out.push(`${type} ×${count - before}`)
  }
  for (const [id, timer] of timers) {
    if (base.timerIds.has(id) || isRunners(timer) || timer.resource.hasRef?.() === false) continue
    const frame = timer.caller
      .split('\n')
      .find((line) => /at /.test(line) && !/node:internal|async_hooks|helpers\.ts/.test(line))
    out.push(`timer ${frame?.trim() ?? 'unknown'}`)
  }
  return out
}
