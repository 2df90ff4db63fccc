/**
 * The contract's own numbers, on the real clock: 300 ids at 10/s with bursts of 20 and 8
 * in flight (DESIGN.md, HTTP contract defaults), against a server that enforces exactly
 * that quota. About 29 s: (300 − 20) / 10 s after the opening burst. Its own file, so
 * that it runs beside the others.
 */
import { afterEach, expect, it } from 'vitest'
import {
  bodyOf,
  cleanup,
  expectEnvelope,
  makeClient,
  range,
  startServer,
  text,
  urlOf,
  watchStarts,
} from './helpers.js'

afterEach(cleanup)

it('300 ids at 10/s, burst 20, 8 in flight: no 429, ≤ 8 at once, each id once, within the envelope', async () => {
  const rate = 10
  const burst = 20
  // The client's own Pool starts cold: its opening burst pays for 8 new connections, the
  // requests after it do not. The server allows for the transit spread it measures.
  const starts = watchStarts()
  // 100..799 ms per request: the 8 slots bind in the opening burst and now and then after.
  const server = await startServer({
    quota: { rate, burst },
    starts,
    latencyMs: (id) => 100 + ((Number(id) * 37) % 700),
  })
  const ids = range(1, 300)
  const result = await makeClient(server).fetchAll(ids) // the defaults: 10/s, 20, 8

  expect(server.throttled).toBe(0)
  expect(server.maxInFlight).toBe(8)
  expect(server.arrivals).toHaveLength(ids.length)
  for (const id of ids) expect(server.count(urlOf(id))).toBe(1)
  expect(result.size).toBe(ids.length)
  for (const id of ids) expect(text(result.get(id))).toBe(bodyOf(id))
  expectEnvelope(server, starts, rate, burst)
}, 45_000)
