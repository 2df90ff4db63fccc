/**
 * The HTTP fan-out client: `FanOutClient.fetchAll` against a little HTTP server started
 * here. Run: `npx tsx examples/rxjs/client.ts`.
 *
 * One undici pool of 4 connections, 10 requests/s with bursts of 5, retries of 503 with
 * backoff; `fetchAll` resolves to a Map of id → body bytes.
 */
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { FanOutClient } from '../../src/http/index.js'

// The downstream: /users/:id/widgets as JSON; user 3 is answered 503 once, then served.
let requests = 0
let failedOnce = false
const server = createServer((req, res) => {
  requests++
  const id = /^\/users\/([^/]+)\/widgets$/.exec(req.url ?? '')?.[1]
  if (id === undefined) {
    res.writeHead(404).end()
    return
  }
  if (id === '3' && !failedOnce) {
    failedOnce = true
    res.writeHead(503, { 'retry-after': '0' }).end('busy')
    return
  }
  res
    .writeHead(200, { 'content-type': 'application/json' })
    .end(JSON.stringify({ userId: id, widgets: [`${id}-a`, `${id}-b`] }))
})
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
const { port } = server.address() as AddressInfo

const client = new FanOutClient({
  baseUrl: `http://127.0.0.1:${port}`,
  path: '/users/{id}/widgets',
  rate: 10,
  burst: 5,
  maxInFlight: 4,
  retry: { attempts: 3, baseDelayMs: 20 },
})

try {
  const ids = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
  const bodies = await client.fetchAll(ids)
  for (const id of ids) {
    const body = bodies.get(id)
    const parsed = JSON.parse(new TextDecoder().decode(body)) as { widgets: string[] }
    console.log(`user ${id}: ${parsed.widgets.join(', ')}`)
  }
  console.log(`fetched ${bodies.size} of ${ids.length} users in ${requests} requests`)
} finally {
  await client.close()
  await new Promise<void>((resolve) => {
    server.close(() => resolve())
    server.closeAllConnections()
  })
}
