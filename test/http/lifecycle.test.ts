import { afterEach, describe, expect, it } from 'vitest'
import { ClientClosedError } from '../../src/http/index.js'
import { cleanup, makeClient, range, reply, startServer } from './helpers.js'

afterEach(cleanup)

describe('close() and destroy() can be called in any order, any number of times', () => {
  it('close() twice: both resolve, after the running fetch', async () => {
    const server = await startServer()
    const client = makeClient(server)
    const running = client.fetchAll(range(1, 3))
    const first = client.close()
    const second = client.close()
    expect(second).toBe(first)
    await expect(running).resolves.toHaveProperty('size', 3)
    await expect(Promise.all([first, second])).resolves.toBeDefined()
    await expect(client.fetchAll([4])).rejects.toBeInstanceOf(ClientClosedError)
  })

  it('destroy() while close() waits: the fetch is aborted and both resolve', async () => {
    const server = await startServer()
    server.script(1, reply.hang())
    const client = makeClient(server)
    const running = client.fetchAll([1])
    await server.until(() => server.arrivals.length === 1, 'the request to arrive')
    const closing = client.close()
    const destroying = client.destroy()
    await expect(running).rejects.toBeInstanceOf(ClientClosedError)
    await expect(Promise.all([closing, destroying])).resolves.toBeDefined()
    await expect(client.close()).resolves.toBeUndefined()
  })

  it('close() after destroy() resolves', async () => {
    const server = await startServer()
    const client = makeClient(server)
    await client.destroy()
    await expect(client.close()).resolves.toBeUndefined()
    await expect(client.destroy()).resolves.toBeUndefined()
  })
})
