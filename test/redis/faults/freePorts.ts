/**
 * TCP ports on 127.0.0.1 that were free a moment ago, all different.
 *
 * Every listener is held open until all `count` ports are known and only then closed:
 * asking for one port at a time can get the same port twice (the kernel may hand out a
 * port again as soon as it is released), which a cluster of six nodes plus their bus
 * ports would hit now and then. A port can still be taken between this call and its use;
 * RedisProcess retries its first start on fresh ports when that happens.
 */
import { once } from 'node:events'
import { createServer, type Server } from 'node:net'

export async function freePorts(count: number, host = '127.0.0.1'): Promise<number[]> {
  const servers: Server[] = []
  try {
    for (let i = 0; i < count; i++) {
      const server = createServer()
      servers.push(server)
      server.listen(0, host)
      await once(server, 'listening')
    }
    return servers.map((server) => {
      const address = server.address()
      if (address === null || typeof address === 'string') throw new Error('no port')
      return address.port
    })
  } finally {
    await Promise.all(
      servers.map((server) =>
        server.listening ? new Promise((resolve) => server.close(resolve)) : undefined,
      ),
    )
  }
}
