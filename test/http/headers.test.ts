/**
 * Retry-After and the RateLimit headers: the parsers on fixed instants, then end to end
 * against a server that enforces the quota it declares — the client lowers its rate to
 * it (never raises it) and pauses everyone when the server says nothing is left.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { parseRateLimitHeaders, parseRetryAfter } from '../../src/http/index.js'
import {
  type Arrival,
  CLOCK_MS,
  cleanup,
  expectEnvelope,
  JITTER_MS,
  loopLag,
  makeClient,
  range,
  reply,
  requiredBurst,
  startServer,
  urlOf,
  watchLimiter,
  watchStarts,
} from './helpers.js'

afterEach(cleanup)

/**
 * Requests already on their way when the client read the headers may land this late
 * (plus any event-loop stall measured meanwhile, see `loopLag`).
 */
const NETWORK_ALLOWANCE_MS = 10

const NOW = Date.parse('Wed, 21 Oct 2015 07:28:00 GMT')

describe('parseRetryAfter', () => {
  it.each([
    ['1', 1000],
    ['0', 0],
    ['1.5', 1500],
    [' 2 ', 2000],
    ['Wed, 21 Oct 2015 07:28:05 GMT', 5000],
    ['Wed, 21 Oct 2015 07:27:00 GMT', 0], // in the past: now
    ['120', 60_000], // capped
    [['3', '9'], 3000], // the first of repeated headers
  ] as const)('%j → %i ms', (value, ms) => {
    expect(parseRetryAfter(value as string | string[], NOW, 60_000)).toBe(ms)
  })

  it.each([undefined, '', 'soon', 'Someday'])('%j → undefined', (value) => {
    expect(parseRetryAfter(value, NOW, 60_000)).toBeUndefined()
  })
})

describe('parseRateLimitHeaders', () => {
  it.each([
    // A policy's window is how long a rate learned from it lasts (resetMs) at most.
    [{ 'ratelimit-policy': '5;w=1' }, { rate: 5, resetMs: 1000 }],
    [{ 'ratelimit-policy': '"default";q=5;w=1' }, { rate: 5, resetMs: 1000 }],
    [{ 'ratelimit-policy': '120;w=60' }, { rate: 2, resetMs: 60_000 }],
    [
      { 'ratelimit-policy': '"burst";q=100;w=60, "daily";q=1000;w=86400' },
      { rate: 100 / 60, resetMs: 60_000 },
    ],
    [{ ratelimit: 'limit=5, remaining=0, reset=1' }, { exhaustedForMs: 1000, resetMs: 1000 }],
    [{ ratelimit: '"default";r=0;t=2' }, { exhaustedForMs: 2000, resetMs: 2000 }],
    [{ ratelimit: 'limit=5, remaining=3, reset=1' }, { resetMs: 1000 }],
    [
      { 'x-ratelimit-limit': '5', 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': '2' },
      { exhaustedForMs: 2000, resetMs: 2000 },
    ],
    // X-RateLimit-Reset as epoch seconds
    [
      { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': String(NOW / 1000 + 3) },
      { exhaustedForMs: 3000, resetMs: 3000 },
    ],
    [{ 'ratelimit-policy': 'lots', ratelimit: 'who knows' }, {}],
    [{}, {}],
  ])('%j → %j', (headers, quota) => {
    expect(parseRateLimitHeaders(headers, NOW)).toEqual(quota)
  })
})

describe('RateLimit headers, end to end', () => {
  it.each(['5;w=1', '"default";q=5;w=1'])(
    'RateLimit-Policy: %s lowers 50/s to 5/s; the server, enforcing 5/s, sees no excess',
    async (policy) => {
      const burst = 3
      const starts = watchStarts()
      // The server allows what it declares: 5 in any 1 s window.
      const server = await startServer({
        quota: { rate: 5, burst: 5 },
        starts,
        headers: { 'ratelimit-policy': policy },
      })
      // One in flight: the first answer (and its declaration) is read before a second
      // request can start, so none goes out at 50/s after the first.
      const client = makeClient(server, { rate: 50, burst, maxInFlight: 1 })
      const seen = watchLimiter(client.limiter)
      const ids = range(1, 8)
      const result = await client.fetchAll(ids)

      expect(result.size).toBe(ids.length)
      expect(client.limiter.rate).toBe(5)
      // At 50/s the 8 would come within 150 ms: over the server's 5/s with bursts of 5.
      expect(server.throttled).toBe(0)
      expect(seen.rateSetAt).toHaveLength(1)
      const switchedAt = seen.rateSetAt[0] as number
      expect(switchedAt).toBeGreaterThan(server.arrivals[0]?.endedAt as number)
      // Every request after the first starts after the switch, from at most `burst`
      // tokens (what the bucket held then) plus 5/s: on the starts and at the server.
      const after = server.arrivals.slice(1)
      expect(after.every((a) => (a.startedAt as number) > switchedAt)).toBe(true)
      expect(
        requiredBurst(
          after.map((a) => a.startedAt as number),
          5,
        ),
      ).toBeLessThanOrEqual(burst + (5 * CLOCK_MS) / 1000)
      expect(
        requiredBurst(
          after.map((a) => a.at),
          5,
        ),
      ).toBeLessThanOrEqual(burst + (5 * (JITTER_MS + server.transitSpread)) / 1000)
    },
  )

  it('a declared quota above the configured rate does not raise it', async () => {
    const starts = watchStarts()
    const server = await startServer({ starts, headers: { 'ratelimit-policy': '50;w=1' } })
    const client = makeClient(server, { rate: 4, burst: 2 })
    await client.fetchAll(range(1, 4))
    expect(client.limiter.rate).toBe(4)
    expectEnvelope(server, starts, 4, 2)
  })

  /** Ms the server said nothing is left for, from the headers it sent. */
  function exhaustedFor(a: Arrival): number {
    const h = a.headers ?? {}
    if (h.ratelimit) return Number(/reset=(\d+)/.exec(h.ratelimit)?.[1]) * 1000
    const reset = Number(h['x-ratelimit-reset'] ?? h['ratelimit-reset'])
    return reset > 1e9 ? reset * 1000 - (a.sentAtEpoch as number) : reset * 1000
  }

  it.each([
    [
      'RateLimit: limit=5, remaining=0, reset=1',
      () => ({ ratelimit: 'limit=5, remaining=0, reset=1' }),
    ],
    [
      'X-RateLimit-Remaining: 0, X-RateLimit-Reset: 1',
      () => ({ 'x-ratelimit-limit': '5', 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': '1' }),
    ],
    [
      // Draft 6's separate fields (regression: they were parsed but never heeded).
      'RateLimit-Remaining: 0, RateLimit-Reset: 1',
      () => ({ 'ratelimit-limit': '5', 'ratelimit-remaining': '0', 'ratelimit-reset': '1' }),
    ],
    [
      'X-RateLimit-Reset as epoch seconds',
      () => ({
        'x-ratelimit-limit': '5',
        'x-ratelimit-remaining': '0',
        'x-ratelimit-reset': String(Math.floor(Date.now() / 1000) + 2),
      }),
    ],
  ])('%s on a 200: everyone pauses until the reset', async (_, headers) => {
    const lag = loopLag()
    const server = await startServer()
    server.script(1, { kind: 'answer', headers })
    // Burst 1 at 5/s: id 1 goes alone, and its answer is back well before the next token
    // (200 ms; at 50/s a loaded machine sometimes let id 2 out before the pause).
    const client = makeClient(server, { rate: 5, burst: 1, maxInFlight: 4 })
    const seen = watchLimiter(client.limiter)
    const ids = range(1, 5)
    const result = await client.fetchAll(ids)
    expect(result.size).toBe(ids.length)

    const first = server.arrivalsFor(1)[0] as Arrival
    // From when the client knew (it paused) to when the server said the quota resets.
    expect(seen.pausedAt).toHaveLength(1)
    const from = (seen.pausedAt[0] as number) + NETWORK_ALLOWANCE_MS + lag.ms
    const to = (first.endedAt as number) + exhaustedFor(first) - CLOCK_MS
    expect(to - from).toBeGreaterThan(500) // most of the pause, even on a loaded machine
    expect(server.arrivals.filter((a) => a.at > from && a.at < to).map((a) => a.url)).toEqual([])
    expect(server.arrivals.filter((a) => a.at >= to)).toHaveLength(ids.length - 1)
    for (const id of ids) expect(server.count(urlOf(id))).toBe(1)
  })
})
