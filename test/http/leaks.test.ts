/**
 * Nothing held after any ending. With an injected undici Pool, every response body is
 * read or dumped on every path — success, error status, abort, oversize — so the pool
 * has nothing running, pending or queued, and every socket the server still sees open
 * is an idle keep-alive one in the pool (reused by the next fetch) or closed.
 * close() drains, destroy() aborts, and after either (and the server's close) no handle
 * is left beyond the baseline.
 */

import { Pool } from 'undici'
import { afterEach, describe, expect, it } from 'vitest'
import { ClientClosedError } from '../../src/http/index.js'
import {
  bodyOf,
  cleanup,
  handleBaseline,
  leftOver,
  makeClient,
  onCleanup,
  range,
  rejection,
  reply,
  startServer,
  type TestServer,
  text,
  tick,
  urlOf,
} from './helpers.js'

afterEach(cleanup)

/**
 * Resolves once the pool is idle and every socket open at the server is a free one of it.
 * A Pool's counters change without an event of its own (a connection's need-drain flag),
 * so this looks again every event-loop turn, for at most 3 s.
 */
async function idle(server: TestServer, pool: Pool, what: string): Promise<void> {
  const isIdle = () => {
    const s = pool.stats
    return (
      s.running === 0 &&
      s.pending === 0 &&
      s.queued === 0 &&
      s.size === 0 &&
      s.free === s.connected &&
      server.openSockets === s.connected &&
      server.inFlight === 0
    )
  }
  const giveUpAt = performance.now() + 3000
  while (!isIdle()) {
    if (performance.now() > giveUpAt) {
      throw new Error(
        `${what}: the pool is not idle (stats ${JSON.stringify(pool.stats)}, ` +
          `${server.openSockets} open at the server, ${server.inFlight} in flight)`,
      )
    }
    await tick()
  }
}

describe('every body read or dumped: the dispatcher is idle after every ending', () => {
  it('success, error statuses, abort and oversize, one after the other on one Pool', async () => {
    const server = await startServer({ latencyMs: 5 })
    const pool = new Pool(server.origin, { connections: 4 })
    onCleanup(() => pool.destroy())
    const client = makeClient(server, {
      dispatcher: pool,
      rate: 1000,
      burst: 50,
      maxInFlight: 4,
      maxBodyBytes: 4000,
    })

    // success: keep-alive sockets, reused by the next fetch
    const ok = await client.fetchAll(range(1, 8))
    expect(text(ok.get(8))).toBe(bodyOf(8))
    await idle(server, pool, 'after success')
    const conns = server.conns.length
    expect(conns).toBeGreaterThan(0)
    await client.fetchAll(range(11, 14))
    await idle(server, pool, 'after a second success')
    expect(server.conns.length).toBe(conns)

    // error statuses: a small body, and one far longer than the excerpt
    server.script(20, reply.status(404))
    expect(await rejection(client.fetchAll([20]))).toMatchObject({ status: 404 })
    await idle(server, pool, 'after a 404')
    server.script(21, reply.status(500, { body: 'e'.repeat(1_000_000) }))
    expect(await rejection(client.fetchAll([21]))).toMatchObject({ status: 500 })
    await idle(server, pool, 'after a 500 with a 1 MB body')

    // abort, with requests in flight
    for (const id of range(30, 33)) server.script(id, reply.ok({ delayMs: 10_000 }))
    const controller = new AbortController()
    const running = rejection(client.fetchAll(range(30, 33), { signal: controller.signal }))
    await server.until(() => server.inFlight === 4, '4 in flight')
    controller.abort(new Error('stop'))
    await running
    await idle(server, pool, 'after an abort')

    // oversize: declared, and chunked
    server.script(40, reply.big(10_000_000, true, 0))
    expect(await rejection(client.fetchAll([40]))).toMatchObject({
      code: 'RX_FANOUT_BODY_TOO_LARGE',
    })
    await idle(server, pool, 'after a declared oversize body')
    server.script(41, reply.big(10_000_000, false, 5000))
    expect(await rejection(client.fetchAll([41]))).toMatchObject({
      code: 'RX_FANOUT_BODY_TOO_LARGE',
    })
    await idle(server, pool, 'after a chunked oversize body')

    // and the pool still serves
    const after = await client.fetchAll([50])
    expect(text(after.get(50))).toBe(bodyOf(50))
  })
})

describe('close() and destroy()', () => {
  it('close() waits for the running fetchAll, then takes no new fetch and closes its sockets', async () => {
    const server = await startServer({ latencyMs: 100 })
    const client = makeClient(server, { rate: 100, burst: 10, maxInFlight: 4 })
    const order: string[] = []
    const ids = range(1, 8) // two waves of 4
    const running = client.fetchAll(ids).then((map) => {
      order.push('fetchAll')
      return map
    })
    await server.until(() => server.inFlight === 4, '4 in flight')
    const closing = client.close().then(() => order.push('close'))

    expect((await running).size).toBe(ids.length)
    await closing
    expect(order).toEqual(['fetchAll', 'close'])
    for (const id of ids) expect(server.count(urlOf(id))).toBe(1)

    const error = await rejection(client.fetchAll([99]))
    expect(error).toBeInstanceOf(ClientClosedError)
    expect(error).toMatchObject({ code: 'RX_FANOUT_CLIENT_CLOSED' })
    const viaObservable = await new Promise((resolve) =>
      client.fetchAll$([99]).subscribe({ error: resolve, complete: () => resolve('completed') }),
    )
    expect(viaObservable).toBeInstanceOf(ClientClosedError)
    expect(server.count(urlOf(99))).toBe(0)
    // Its own Pool is closed: the server sees every socket go.
    await server.until(() => server.openSockets === 0, 'every socket closed')
  })

  it('close() with nothing running closes the sockets', async () => {
    const server = await startServer()
    const client = makeClient(server)
    await client.fetchAll([1])
    expect(server.openSockets).toBe(1)
    await client.close()
    await server.until(() => server.openSockets === 0, 'every socket closed')
  })

  it('destroy() aborts the running fetch: ClientClosedError, and the server sees every request go', async () => {
    const server = await startServer({ latencyMs: 10_000 })
    const client = makeClient(server, { rate: 100, burst: 10, maxInFlight: 4 })
    const running = rejection(client.fetchAll(range(1, 20)))
    await server.until(() => server.inFlight === 4, '4 in flight')
    await client.destroy()

    const error = await running
    expect(error).toBeInstanceOf(ClientClosedError)
    expect(error).toMatchObject({ code: 'RX_FANOUT_CLIENT_CLOSED' })
    await server.until(
      () => server.arrivals.every((a) => a.abortedAt !== undefined) && server.openSockets === 0,
      'every request aborted, every socket closed',
    )
    expect(server.arrivals).toHaveLength(4)
    expect(await rejection(client.fetchAll([1]))).toBeInstanceOf(ClientClosedError)
  })
})

describe('no handle left', () => {
  it.each([
    ['a fetch, then close()', 'close'],
    ['a fetch cut short by destroy()', 'destroy'],
    ['a fail-fast fetch, then close()', 'fail'],
    ['a fetch paused by Retry-After, aborted, then close()', 'pause'],
  ] as const)('%s: nothing beyond the baseline once the server is closed', async (_, how) => {
    const base = await handleBaseline()
    const server = await startServer({ latencyMs: how === 'destroy' ? 10_000 : 5 })
    const client = makeClient(server, { rate: 100, burst: 4, maxInFlight: 4 })
    if (how === 'close') {
      await client.fetchAll(range(1, 10))
      await client.close()
    } else if (how === 'destroy') {
      const running = rejection(client.fetchAll(range(1, 10)))
      await server.until(() => server.inFlight === 4, '4 in flight')
      await client.destroy()
      await running
    } else if (how === 'fail') {
      server.script(3, reply.status(500))
      await rejection(client.fetchAll(range(1, 10)))
      await client.close()
    } else {
      // A 30 s pause: the limiter's timer must go when the fetch is given up.
      server.script(1, reply.retryAfter(503, '30'))
      const controller = new AbortController()
      const running = rejection(client.fetchAll(range(1, 10), { signal: controller.signal }))
      await server.until(() => server.arrivalsFor(1)[0]?.endedAt !== undefined, 'the 503 sent')
      await server.until(() => server.inFlight === 0, 'nothing in flight')
      controller.abort(new Error('enough'))
      await running
      await client.close()
    }
    await server.close()
    expect(await leftOver(base)).toEqual([])
  })
})
