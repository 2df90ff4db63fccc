import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

export interface DemoServerOptions {
  /** Requests per second the server allows. Default 10. */
  rate?: number
  /** Burst the server allows. Default 20. */
  burst?: number
  /** Requests it serves at once. Default 8. */
  maxInFlight?: number
  /** Allowance for arrival jitter, in ms: loopback, the event loop, and above all the TCP
   * connects of the first requests, which delay the head of the burst. Default 100. */
  jitterMs?: number
  /** Response time range, in ms. Default [30, 120]. */
  latencyMs?: readonly [number, number]
  /** Ids answered 500 (for trying fail-fast). */
  failIds?: ReadonlySet<string>
}

/** What the server saw, by its own accounting. */
export interface Verdict {
  requests: number
  served: number
  rejected429: number
  maxInFlight: number
  /** The smallest bucket (at the server's rate) the arrival schedule fits in. */
  requiredCapacity: number
  /** Arrival times, ms since the server started. */
  arrivals: number[]
  /** In-flight count after every change: [ms since start, count]. */
  inFlight: [number, number][]
  ok: boolean
}

export interface DemoServer {
  readonly url: string
  readonly options: Required<Omit<DemoServerOptions, 'failIds'>>
  verdict(): Verdict
  close(): Promise<void>
}

/**
 * The smallest capacity b such that every window [tᵢ, tⱼ] of the arrival schedule holds at
 * most b + rate·(tⱼ − tᵢ) arrivals — in one pass: b = 1 + max over j of
 * (j − rate·tⱼ) − min over i ≤ j of (i − rate·tᵢ).
 */
export function requiredCapacity(arrivalsMs: readonly number[], rate: number): number {
  let best = 0
  let lowest = Number.POSITIVE_INFINITY
  arrivalsMs.forEach((t, j) => {
    const level = j - (rate * t) / 1000
    if (level < lowest) lowest = level
    best = Math.max(best, 1 + level - lowest)
  })
  return best
}

/**
 * A downstream API on 127.0.0.1 that enforces a quota the way a strict server would: a
 * GCRA (virtual scheduling) of `rate` with `burst`, and a cap of `maxInFlight`; anything
 * over either is answered 429. Its accounting is its own — it shares no code with the
 * client's bucket — so its verdict is an independent check.
 */
export async function startDemoServer(options: DemoServerOptions = {}): Promise<DemoServer> {
  const opts = {
    rate: options.rate ?? 10,
    burst: options.burst ?? 20,
    maxInFlight: options.maxInFlight ?? 8,
    jitterMs: options.jitterMs ?? 100,
    latencyMs: options.latencyMs ?? ([30, 120] as const),
  }
  const failIds = options.failIds ?? new Set<string>()
  const interval = 1000 / opts.rate
  const tolerance = (opts.burst - 1) * interval + opts.jitterMs
  const started = performance.now()
  let theoreticalArrival = Number.NEGATIVE_INFINITY
  let inFlight = 0
  let maxInFlight = 0
  let rejected429 = 0
  let served = 0
  const arrivals: number[] = []
  const inFlightSeries: [number, number][] = [[0, 0]]
  // A small deterministic generator: the same run gives the same latencies.
  let seed = 0x2545f491
  const random = () => {
    seed ^= seed << 13
    seed ^= seed >>> 17
    seed ^= seed << 5
    return (seed >>> 0) / 0x1_0000_0000
  }

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const now = performance.now() - started
    arrivals.push(now)
    inFlight++
    maxInFlight = Math.max(maxInFlight, inFlight)
    inFlightSeries.push([now, inFlight])
    let done = false
    const finish = () => {
      if (done) return
      done = true
      inFlight--
      inFlightSeries.push([performance.now() - started, inFlight])
    }
    res.on('close', finish)

    const overQuota = now < theoreticalArrival - tolerance
    if (!overQuota) theoreticalArrival = Math.max(now, theoreticalArrival) + interval
    if (overQuota || inFlight > opts.maxInFlight) {
      rejected429++
      res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '1' })
      res.end(JSON.stringify({ error: overQuota ? 'rate limit exceeded' : 'too many in flight' }))
      return
    }
    const match = /^\/users\/([^/]+)\/widgets$/.exec(req.url ?? '')
    const [min, max] = opts.latencyMs
    const timer = setTimeout(
      () => {
        if (!match) {
          res.writeHead(404, { 'content-type': 'application/json' })
          res.end(JSON.stringify({ error: 'not found' }))
          return
        }
        const userId = decodeURIComponent(match[1] as string)
        if (failIds.has(userId)) {
          res.writeHead(500, { 'content-type': 'application/json' })
          res.end(JSON.stringify({ error: `widgets of ${userId} are on fire` }))
          return
        }
        served++
        const widgets = Array.from({ length: 1 + (userId.length % 3) }, (_, i) => ({
          id: `${userId}-${i + 1}`,
          name: `widget ${i + 1} of user ${userId}`,
        }))
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ userId, widgets }))
      },
      min + random() * (max - min),
    )
    res.on('close', () => clearTimeout(timer))
  })
  server.keepAliveTimeout = 5_000
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo

  return {
    url: `http://127.0.0.1:${port}`,
    options: opts,
    verdict(): Verdict {
      const capacity = requiredCapacity(arrivals, opts.rate)
      return {
        requests: arrivals.length,
        served,
        rejected429,
        maxInFlight,
        requiredCapacity: capacity,
        arrivals: [...arrivals],
        inFlight: [...inFlightSeries],
        ok: rejected429 === 0 && maxInFlight <= opts.maxInFlight,
      }
    },
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()))
        server.closeAllConnections()
      }),
  }
}
