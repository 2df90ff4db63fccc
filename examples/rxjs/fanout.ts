/**
 * Plain RxJS: fan out over user ids with `ratePool` and undici's `request`, against a
 * little HTTP server started here. Run: `npx tsx examples/rxjs/fanout.ts`.
 *
 * 8 at once at most, 10 requests/s with bursts of 5; each request gets the job's
 * AbortSignal, so a cancelled job (fail-fast, unsubscribe) aborts its HTTP request too.
 */
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { from, lastValueFrom, tap, toArray } from 'rxjs'
import { request } from 'undici'
import { ratePool } from '../../src/index.js'

interface Widget {
  id: string
  name: string
}

// The downstream: answers /users/:id/widgets after 50 ms and counts what it sees.
let inFlight = 0
let maxInFlight = 0
let requests = 0
const server = createServer((req, res) => {
  requests++
  inFlight++
  maxInFlight = Math.max(maxInFlight, inFlight)
  const match = /^\/users\/(\d+)\/widgets$/.exec(req.url ?? '')
  setTimeout(() => {
    inFlight--
    if (!match) {
      res.writeHead(404).end()
      return
    }
    const widgets: Widget[] = [{ id: `${match[1]}-1`, name: `widget of user ${match[1]}` }]
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(widgets))
  }, 50)
})
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
const { port } = server.address() as AddressInfo
const baseUrl = `http://127.0.0.1:${port}`

const userIds = Array.from({ length: 15 }, (_, i) => i + 1)
const started = performance.now()
const elapsed = () => `${String(Math.round(performance.now() - started)).padStart(5)} ms`

try {
  const results = await lastValueFrom(
    from(userIds).pipe(
      ratePool(
        async (id, { signal }) => {
          const { statusCode, body } = await request(`${baseUrl}/users/${id}/widgets`, { signal })
          if (statusCode !== 200) {
            await body.dump()
            throw new Error(`user ${id}: HTTP ${statusCode}`)
          }
          return (await body.json()) as Widget[]
        },
        { concurrency: 8, limiter: { rate: 10, burst: 5 } },
      ),
      tap((r) => {
        const what = r.ok ? r.value.map((w) => w.name).join(', ') : String(r.error)
        console.log(`${elapsed()}  user ${r.job.value}: ${what}`)
      }),
      toArray(),
    ),
  )
  const ok = results.filter((r) => r.ok).length
  console.log(
    `fetched ${ok} of ${userIds.length} users; the server saw ${requests} requests, ` +
      `at most ${maxInFlight} in flight`,
  )
} finally {
  await new Promise<void>((resolve) => {
    server.close(() => resolve())
    server.closeAllConnections()
  })
}
