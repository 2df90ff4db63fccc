/**
 * FanOutClient against a real server that enforces its own quota: the envelope and the
 * in-flight cap as the server sees them, fail-fast and external aborts (what reaches the
 * server after, which sockets close), fetchAll$ / fetchEach$, and the ids (checks,
 * duplicates, path injection). Small real-time parameters; the contract's own numbers run
 * in contract.test.ts.
 */
import { lastValueFrom, toArray } from 'rxjs'
import { afterEach, describe, expect, it } from 'vitest'
import { HttpStatusError } from '../../src/http/index.js'
import {
  bodyOf,
  cleanup,
  expectEnvelope,
  loopLag,
  makeClient,
  quiet,
  range,
  rejection,
  reply,
  startServer,
  text,
  urlOf,
  warmPool,
  watchStarts,
} from './helpers.js'

afterEach(cleanup)

const client = makeClient

/**
 * A request the client had already sent when it learnt of the failure may still be on its
 * way: it counts as "before" if it arrives within this many ms (plus any event-loop stall
 * measured meanwhile, see `loopLag`) of when the client knew.
 */
const NETWORK_ALLOWANCE_MS = 10

describe('FanOutClient: quota, in-flight cap, every id once', () => {
  it('60 ids at 50/s, burst 10, 8 in flight: no 429, ≤ 8 at once, each id once, arrivals within the envelope', async () => {
    const rate = 50
    const burst = 10
    const starts = watchStarts()
    // 20..200 ms per request: the slots bind in the opening burst, the rate after it.
    const server = await startServer({
      quota: { rate, burst },
      starts,
      latencyMs: (id) => 20 + ((Number(id) * 37) % 181),
    })
    // Warm sockets: the envelope is about the client's starts, not about connecting.
    const dispatcher = await warmPool(server, 8)
    const ids = range(1, 60)
    const result = await client(server, { rate, burst, maxInFlight: 8, dispatcher }).fetchAll(ids)

    expect(server.throttled).toBe(0)
    expect(server.arrivals.every((a) => a.status === 200)).toBe(true)
    // The burst (10) is above the cap (8) and every request takes ≥ 20 ms: the cap is hit.
    expect(server.maxInFlight).toBe(8)
    expect(server.arrivals).toHaveLength(ids.length)
    for (const id of ids) expect(server.count(urlOf(id))).toBe(1)
    expect([...result.keys()].sort((a, b) => Number(a) - Number(b))).toEqual(ids)
    for (const id of ids) expect(text(result.get(id))).toBe(bodyOf(id))
    expectEnvelope(server, starts, rate, burst)
  })
})

describe('FanOutClient: fail-fast', () => {
  it('a 500 among 1,000 slow ids: nothing new reaches the server, in-flight sockets close within 100 ms, the 500 itself rejects', async () => {
    const failing = 30
    const lag = loopLag()
    const server = await startServer({ latencyMs: 200 })
    server.script(failing, reply.status(500, { body: 'boom: internal error' }))
    const ids = range(1, 1000)
    const error = await rejection(
      client(server, { rate: 100, burst: 10, maxInFlight: 8 }).fetchAll(ids),
    )
    const rejectedAt = performance.now()

    expect(error).toBeInstanceOf(HttpStatusError)
    expect(error).toMatchObject({
      code: 'RX_FANOUT_HTTP_STATUS',
      status: 500,
      id: failing,
      attempt: 1,
      excerpt: 'boom: internal error',
    })
    const [failure, ...again] = server.arrivalsFor(failing)
    expect(again).toEqual([]) // 500 is not retried
    const failedAt = failure?.endedAt as number
    expect(failedAt).toBeTypeOf('number')

    // Every request the server was still answering when it sent the 500 is aborted by the
    // client, its socket closed, within 100 ms (the contract; plus any stall of the loop
    // the server shares with the client, which delays the server's view of it).
    const inFlight = server.arrivals.filter(
      (a) => a !== failure && a.at <= failedAt && (a.endedAt === undefined || a.endedAt > failedAt),
    )
    expect(inFlight.length).toBeGreaterThanOrEqual(1)
    await server.until(
      () => inFlight.every((a) => a.abortedAt !== undefined && server.conns[a.conn]?.closedAt),
      'every in-flight request aborted and its socket closed',
    )
    const bound = 100 + lag.ms
    for (const a of inFlight) {
      expect((a.abortedAt as number) - failedAt).toBeLessThanOrEqual(bound)
      expect((server.conns[a.conn]?.closedAt as number) - failedAt).toBeLessThanOrEqual(bound)
    }

    // Nothing new once the client knew (a token granted just before may still land):
    // watched for longer than one request takes (200 ms), so a pool that went on, with
    // or without waiting for its slots, would show.
    await quiet(250)
    const knewAt = Math.max(failedAt, rejectedAt)
    const late = server.arrivals.filter((a) => a.at > knewAt + NETWORK_ALLOWANCE_MS + lag.ms)
    expect(late.map((a) => a.url)).toEqual([])
    expect(server.arrivals.length).toBeLessThan(60)
    expect(server.inFlight).toBe(0)
  })

  it('an external signal: rejects with its reason, and the requests in flight are aborted at the server', async () => {
    const lag = loopLag()
    const server = await startServer({ latencyMs: 2_000 })
    const controller = new AbortController()
    const running = client(server, { rate: 100, burst: 10, maxInFlight: 8 }).fetchAll(
      range(1, 100),
      { signal: controller.signal },
    )
    await server.until(() => server.inFlight === 8, '8 requests in flight')
    const reason = new Error('the caller gave up')
    const abortedAt = performance.now()
    controller.abort(reason)

    expect(await rejection(running)).toBe(reason)
    const inFlight = server.arrivals.filter((a) => a.endedAt === undefined)
    expect(inFlight).toHaveLength(8)
    await server.until(
      () => inFlight.every((a) => a.abortedAt !== undefined && server.conns[a.conn]?.closedAt),
      'every in-flight request aborted and its socket closed',
    )
    for (const a of inFlight) expect((a.abortedAt as number) - abortedAt).toBeLessThan(100 + lag.ms)
    await quiet(50)
    const late = server.arrivals.filter((a) => a.at > abortedAt + NETWORK_ALLOWANCE_MS + lag.ms)
    expect(late).toEqual([])
  })

  it('a signal already aborted: rejects with its reason, no request made', async () => {
    const server = await startServer()
    const reason = new Error('too late')
    const error = await rejection(
      client(server).fetchAll([1, 2], { signal: AbortSignal.abort(reason) }),
    )
    expect(error).toBe(reason)
    expect(server.arrivals).toEqual([])
  })
})

describe('FanOutClient: fetchAll$ and fetchEach$', () => {
  it('fetchAll$ emits { id, status, body, attempts, latencyMs } per id', async () => {
    const server = await startServer({ latencyMs: 30 })
    server.script(3, reply.retryAfter(503, '0'), reply.ok({ delayMs: 30 }))
    const fetched = await lastValueFrom(
      client(server, { rate: 100, burst: 10 }).fetchAll$([1, 2, 3]).pipe(toArray()),
    )
    expect(fetched.map((f) => f.id).sort()).toEqual([1, 2, 3])
    for (const f of fetched) {
      expect(Object.keys(f).sort()).toEqual(['attempts', 'body', 'id', 'latencyMs', 'status'])
      expect(f.status).toBe(200)
      expect(f.body).toBeInstanceOf(Uint8Array)
      expect(text(f.body)).toBe(bodyOf(f.id))
      expect(f.attempts).toBe(f.id === 3 ? 2 : 1)
      // The server held each answer 30 ms (the client's clock reads whole ms).
      expect(f.latencyMs).toBeGreaterThanOrEqual(29)
    }
    expect(server.count(urlOf(3))).toBe(2)
  })

  it("fetchEach$ with errors: 'collect' yields the failures as results and goes on", async () => {
    const server = await startServer({ latencyMs: 5 })
    server.script(2, reply.status(404)).script(5, reply.status(500))
    const ids = range(1, 8)
    const results = await lastValueFrom(
      client(server, { rate: 100, burst: 10, maxInFlight: 2 })
        .fetchEach$(ids, { errors: 'collect' })
        .pipe(toArray()),
    )
    expect(results).toHaveLength(ids.length)
    const failed = results.filter((r) => !r.ok)
    expect(failed.map((r) => r.job.value).sort()).toEqual([2, 5])
    for (const r of failed) {
      if (r.ok) continue
      expect(r.error).toBeInstanceOf(HttpStatusError)
      expect(r.error).toMatchObject({ id: r.job.value, status: r.job.value === 2 ? 404 : 500 })
    }
    const ok = results.filter((r) => r.ok)
    expect(ok.map((r) => r.job.value).sort()).toEqual([1, 3, 4, 6, 7, 8])
    for (const r of ok) if (r.ok) expect(text(r.value.body)).toBe(bodyOf(r.value.id))
    for (const id of ids) expect(server.count(urlOf(id))).toBe(1)
  })
})

describe('FanOutClient: ids', () => {
  it.each([
    [1.5, '1.5'],
    [Number.NaN, 'NaN'],
    [{}, '{}'],
    ['', '""'],
    [null, 'null'],
  ])(
    '%s is a TypeError naming ids[] and echoing the value, with no request made',
    async (bad, echo) => {
      const server = await startServer()
      const c = client(server)
      const ids = [1, bad, 2] as unknown as number[]
      // The Observable forms throw at call time; fetchAll, a Promise, rejects at once.
      expect(() => c.fetchAll$(ids)).toThrow(TypeError)
      expect(() => c.fetchEach$(ids)).toThrow(TypeError)
      const error = await rejection(c.fetchAll(ids))
      expect(error).toBeInstanceOf(TypeError)
      expect((error as Error).message).toContain('ids[]')
      expect((error as Error).message).toContain(`got ${echo}`)
      expect(server.arrivals).toEqual([])
    },
  )

  it('duplicates are fetched once; an empty list gives an empty Map with no request', async () => {
    const server = await startServer()
    const c = client(server)
    const result = await c.fetchAll([1, 2, 1, 3, 2, 1])
    expect([...result.keys()].sort()).toEqual([1, 2, 3])
    expect(server.arrivals).toHaveLength(3)
    for (const id of [1, 2, 3]) expect(server.count(urlOf(id))).toBe(1)

    const empty = await c.fetchAll([])
    expect(empty).toBeInstanceOf(Map)
    expect(empty.size).toBe(0)
    expect(server.arrivals).toHaveLength(3)
  })

  it('ids cannot leave the template: they arrive URL-encoded inside it, dots included', async () => {
    const server = await startServer()
    const sent: Record<string, string> = {
      '../admin': '/users/%2E%2E%2Fadmin/widgets',
      '..': '/users/%2E%2E/widgets',
      'a/b': '/users/a%2Fb/widgets',
      '?x=1': '/users/%3Fx%3D1/widgets',
      '#f': '/users/%23f/widgets',
      '100%': '/users/100%25/widgets',
      'a b': '/users/a%20b/widgets',
    }
    const ids = Object.keys(sent)
    const result = await client(server).fetchAll(ids)
    expect(server.arrivals.map((a) => a.url).sort()).toEqual(Object.values(sent).sort())
    for (const a of server.arrivals) expect(a.status).toBe(200) // the route, never another
    for (const id of ids) {
      expect(server.count(sent[id] as string)).toBe(1)
      expect(text(result.get(id))).toBe(bodyOf(id))
    }
  })
})
