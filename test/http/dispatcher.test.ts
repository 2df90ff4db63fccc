/**
 * The dispatcher: an injected one is used for every request and left open by close() and
 * destroy() (its owner closes it); without one the client uses a Pool of its own, never
 * undici's global dispatcher.
 */
import { Agent, Dispatcher, getGlobalDispatcher, Pool, request, setGlobalDispatcher } from 'undici'
import { afterEach, describe, expect, it } from 'vitest'
import {
  bodyOf,
  cleanup,
  makeClient,
  onCleanup,
  range,
  rejection,
  startServer,
  text,
  urlOf,
} from './helpers.js'

afterEach(cleanup)

/** Counts what goes through `dispatch` (every request of every API ends there). */
function counting<D extends Dispatcher>(dispatcher: D): D & { dispatched: string[] } {
  const counted = dispatcher as D & { dispatched: string[] }
  counted.dispatched = []
  const dispatch = dispatcher.dispatch.bind(dispatcher)
  counted.dispatch = (options, handler) => {
    counted.dispatched.push(String(options.path))
    return dispatch(options, handler)
  }
  return counted
}

describe('an injected dispatcher', () => {
  it.each([
    ['a Pool', (origin: string) => new Pool(origin, { connections: 2 })],
    ['an Agent', () => new Agent({ connections: 2 })],
  ] as const)(
    '%s is used for every request and is not closed by close() or destroy()',
    async (_, make) => {
      const server = await startServer()
      const dispatcher = counting(make(server.origin) as Pool | Agent)
      onCleanup(() => dispatcher.destroy())
      const ids = range(1, 5)

      const client = makeClient(server, { dispatcher, maxInFlight: 2 })
      const result = await client.fetchAll(ids)
      expect(text(result.get(5))).toBe(bodyOf(5))
      expect(dispatcher.dispatched.sort()).toEqual(ids.map(urlOf).sort())
      expect(server.arrivals).toHaveLength(ids.length)
      await client.close()

      const other = makeClient(server, { dispatcher })
      await other.destroy()

      // Still open: it serves its owner, and the server never saw its sockets go.
      expect(dispatcher.closed).toBe(false)
      expect(dispatcher.destroyed).toBe(false)
      const response = await dispatcher.request({
        origin: server.origin,
        path: urlOf(9),
        method: 'GET',
      })
      expect(await response.body.text()).toBe(bodyOf(9))
      expect(server.conns.every((c) => c.closedAt === undefined)).toBe(true)
    },
  )
})

describe('without one', () => {
  it("never uses undici's global dispatcher", async () => {
    const previous = getGlobalDispatcher()
    let used = 0
    class Refusing extends Dispatcher {
      override dispatch(): boolean {
        used++
        throw new Error('the global dispatcher was used')
      }
    }
    setGlobalDispatcher(new Refusing())
    onCleanup(() => setGlobalDispatcher(previous))

    const server = await startServer()
    // The trap is live: undici's own request() goes through it and fails.
    await expect(request(`${server.origin}${urlOf(0)}`)).rejects.toThrow('global dispatcher')
    expect(used).toBe(1)

    const client = makeClient(server)
    const result = await client.fetchAll(range(1, 3))
    expect(result.size).toBe(3)
    expect(used).toBe(1)
    expect(server.arrivals.map((a) => a.url).sort()).toEqual(range(1, 3).map(urlOf).sort())
    await client.close()
    expect(await rejection(client.fetchAll([4]))).toMatchObject({ code: 'RX_FANOUT_CLIENT_CLOSED' })
  })
})
