/**
 * HTTP fan-out: 10^5 GETs (10^4 with --quick) to a local keep-alive `node:http` server
 * (200-byte body) that runs in its own process, 8 requests in flight, no rate limit.
 * `FanOutClient` against autocannon (its own HTTP parser: the practical ceiling), a raw
 * undici `Pool` with 8 request loops (the floor for any undici client), RxJS `mergeMap(8)`
 * over the same kind of Pool, and global `fetch` + p-limit(8).
 *
 * Each case starts its own server process, warms the client up with a few thousand
 * requests, then times the n requests. The server counts the requests it answered and
 * reports its own CPU time, so the table shows how the two cores were shared.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { from, mergeMap } from 'rxjs'
import type { Pool } from 'undici'
import {
  type Benchmark,
  fmt,
  type Metrics,
  mb,
  med,
  problems,
  ratio,
  type Spec,
  seconds,
  si,
  spread,
  table,
} from './lib/harness.js'

const IN_FLIGHT = 8
const BODY_BYTES = 200

/** The server, run with `node -e`: CommonJS, no dependency, talks to its parent over IPC. */
const SERVER_SOURCE = `
const http = require('node:http')
const body = Buffer.alloc(${BODY_BYTES}, 'x')
let count = 0
const server = http.createServer((req, res) => {
  count++
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': '${BODY_BYTES}' })
  res.end(body)
})
server.keepAliveTimeout = 120000
server.headersTimeout = 121000
server.listen(0, '127.0.0.1', () => process.send({ type: 'listening', port: server.address().port }))
process.on('message', (m) => {
  if (m && m.type === 'stats') {
    const u = process.resourceUsage()
    process.send({ type: 'stats', count, cpuUs: u.userCPUTime + u.systemCPUTime, maxRssKiB: u.maxRSS })
  }
})
process.on('disconnect', () => process.exit(0))
`

interface ServerStats {
  count: number
  cpuUs: number
  maxRssKiB: number
}

class Server {
  private constructor(
    private readonly child: ChildProcess,
    readonly origin: string,
  ) {}

  static start(): Promise<Server> {
    const child = spawn(process.execPath, ['-e', SERVER_SOURCE], {
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    })
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the server did not start in 10 s')), 10_000)
      child.once('error', reject)
      child.once('exit', (code) =>
        reject(new Error(`the server exited (${code}) before listening`)),
      )
      child.once('message', (m: { type: string; port: number }) => {
        clearTimeout(timer)
        child.removeAllListeners('exit')
        resolve(new Server(child, `http://127.0.0.1:${m.port}`))
      })
    })
  }

  stats(): Promise<ServerStats> {
    return new Promise((resolve) => {
      this.child.once('message', (m: ServerStats) => resolve(m))
      this.child.send({ type: 'stats' })
    })
  }

  stop(): void {
    this.child.disconnect()
    this.child.kill()
  }
}

/** What a runner got back: responses, and body bytes in all (each should be 200). */
interface Tally {
  count: number
  bytes: number
}

interface Client {
  run(ids: number[]): Promise<Tally>
  close(): Promise<void>
  /** When the last response of the latest run arrived, if the runner knows it better. */
  doneAt?: () => number
}

let lastResponseAt = Number.NaN

type Runner = (origin: string) => Promise<Client>

const pathOf = (id: number) => `/items/${id}`

// undici and the library's http entry are imported by the cases that use them, so that
// the children of the other benchmarks never load them (their peak RSS is compared).
async function undiciPool(origin: string): Promise<Pool> {
  const { Pool } = await import('undici')
  return new Pool(origin, { connections: IN_FLIGHT, pipelining: 1 })
}

async function fanOutClient(origin: string) {
  const { FanOutClient } = await import('../src/http/index.js')
  return new FanOutClient({
    baseUrl: origin,
    path: '/items/{id}',
    rate: Number.POSITIVE_INFINITY,
    maxInFlight: IN_FLIGHT,
  })
}

const runners: Record<string, Runner> = {
  async fanOutFetchAll(origin) {
    const client = await fanOutClient(origin)
    return {
      async run(ids) {
        const bodies = await client.fetchAll(ids)
        let bytes = 0
        for (const body of bodies.values()) bytes += body.length
        return { count: bodies.size, bytes }
      },
      close: () => client.close(),
    }
  },

  async fanOutFetchAll$(origin) {
    const client = await fanOutClient(origin)
    return {
      run: (ids) =>
        new Promise((resolve, reject) => {
          const tally: Tally = { count: 0, bytes: 0 }
          client.fetchAll$(ids).subscribe({
            next: (r) => {
              tally.count++
              tally.bytes += r.body.length
            },
            error: reject,
            complete: () => resolve(tally),
          })
        }),
      close: () => client.close(),
    }
  },

  async autocannon(origin) {
    const { default: autocannon } = await import('autocannon')
    return {
      doneAt: () => lastResponseAt,
      async run(ids) {
        const instance = autocannon({
          url: `${origin}${pathOf(0)}`,
          connections: IN_FLIGHT,
          pipelining: 1,
          amount: ids.length,
          timeout: 10,
        }) as unknown as import('autocannon').Instance & Promise<import('autocannon').Result>
        // autocannon notices that it is done only at its next 1 s sample tick: stamp the
        // last response instead, so its wall time is as exact as the other rows'.
        let responses = 0
        instance.on('response', () => {
          if (++responses === ids.length) lastResponseAt = performance.now()
        })
        const result = await instance
        // autocannon reads the bodies but does not hand them out: check the count and
        // status, and that the bytes received cover a 200-byte body per response.
        const ok = result['2xx']
        const bodyBytes = result.errors === 0 && result.non2xx === 0 ? ok * BODY_BYTES : 0
        return { count: ok, bytes: bodyBytes }
      },
      async close() {},
    }
  },

  async undiciPool(origin) {
    const pool = await undiciPool(origin)
    return {
      async run(ids) {
        const tally: Tally = { count: 0, bytes: 0 }
        let next = 0
        const loop = async () => {
          while (next < ids.length) {
            const id = ids[next++] as number
            const { statusCode, body } = await pool.request({ path: pathOf(id), method: 'GET' })
            const bytes = (await body.arrayBuffer()).byteLength
            if (statusCode === 200) {
              tally.count++
              tally.bytes += bytes
            }
          }
        }
        await Promise.all(Array.from({ length: IN_FLIGHT }, loop))
        return tally
      },
      close: () => pool.close(),
    }
  },

  async mergeMapPool(origin) {
    const pool = await undiciPool(origin)
    return {
      run: (ids) =>
        new Promise((resolve, reject) => {
          const tally: Tally = { count: 0, bytes: 0 }
          from(ids)
            .pipe(
              mergeMap(async (id) => {
                const { statusCode, body } = await pool.request({
                  path: pathOf(id),
                  method: 'GET',
                })
                const bytes = (await body.arrayBuffer()).byteLength
                return statusCode === 200 ? bytes : -1
              }, IN_FLIGHT),
            )
            .subscribe({
              next: (bytes) => {
                if (bytes < 0) return
                tally.count++
                tally.bytes += bytes
              },
              error: reject,
              complete: () => resolve(tally),
            })
        }),
      close: () => pool.close(),
    }
  },

  async fetchPLimit(origin) {
    const { default: pLimit } = await import('p-limit')
    return {
      async run(ids) {
        const limit = pLimit(IN_FLIGHT)
        const sizes = await Promise.all(
          ids.map((id) =>
            limit(async () => {
              const response = await fetch(`${origin}${pathOf(id)}`)
              const bytes = (await response.arrayBuffer()).byteLength
              return response.status === 200 ? bytes : -1
            }),
          ),
        )
        const tally: Tally = { count: 0, bytes: 0 }
        for (const bytes of sizes) {
          if (bytes < 0) continue
          tally.count++
          tally.bytes += bytes
        }
        return tally
      },
      async close() {},
    }
  },
}

interface HttpParams {
  runner: string
  n: number
  warmup: number
}

async function httpCase({ runner, n, warmup }: HttpParams): Promise<Metrics> {
  const make = runners[runner]
  if (!make) throw new Error(`unknown runner ${runner}`)
  const server = await Server.start()
  try {
    const client = await make(server.origin)
    // Warm-up: connections open, code compiled. Its ids differ from the timed ones.
    const warm = Array.from({ length: warmup }, (_, i) => n + i)
    const warmed = await client.run(warm)
    const ids = Array.from({ length: n }, (_, i) => i)
    const before = await server.stats()
    const cpu0 = process.cpuUsage()
    const t0 = performance.now()
    const got = await client.run(ids)
    const wallMs = (client.doneAt?.() ?? performance.now()) - t0
    const cpu = process.cpuUsage(cpu0)
    const after = await server.stats()
    await client.close()
    const metrics: Metrics = {
      n,
      wallMs,
      reqPerSec: (n / wallMs) * 1000,
      count: got.count,
      clientCpuPct: ((cpu.user + cpu.system) / 1000 / wallMs) * 100,
      serverCpuPct: ((after.cpuUs - before.cpuUs) / 1000 / wallMs) * 100,
      // CPU per request: steadier than requests/s when other work shares the two cores.
      clientCpuUsPerReq: (cpu.user + cpu.system) / n,
      serverCpuUsPerReq: (after.cpuUs - before.cpuUs) / n,
      serverRssKiB: after.maxRssKiB,
      served: after.count - before.count,
    }
    const wrong: string[] = []
    if (warmed.count !== warmup) wrong.push(`warm-up got ${warmed.count} of ${warmup} responses`)
    if (got.count !== n) wrong.push(`got ${got.count} of ${n} responses`)
    if (got.bytes !== n * BODY_BYTES) wrong.push(`bodies held ${got.bytes} bytes, not ${n}×200`)
    if (after.count - before.count !== n) {
      wrong.push(`the server answered ${after.count - before.count} requests, not ${n}`)
    }
    if (wrong.length) metrics.problem = wrong.join('; ')
    return metrics
  } finally {
    server.stop()
  }
}

interface Row {
  id: string
  runner: string
  label: string
  ours: boolean
  rounds?: number
}

const ROWS: Row[] = [
  {
    id: 'autocannon',
    runner: 'autocannon',
    label: 'autocannon, 8 connections (the ceiling)',
    ours: false,
  },
  {
    id: 'undiciPool',
    runner: 'undiciPool',
    label: 'undici `Pool({ connections: 8 })`, 8 request loops (the floor)',
    ours: false,
  },
  {
    id: 'fanOutFetchAll',
    runner: 'fanOutFetchAll',
    label: '**FanOutClient.fetchAll**, rate Infinity, maxInFlight 8',
    ours: true,
  },
  {
    id: 'fanOutFetchAll$',
    runner: 'fanOutFetchAll$',
    label: '**FanOutClient.fetchAll$**, rate Infinity, maxInFlight 8',
    ours: true,
  },
  {
    id: 'mergeMapPool',
    runner: 'mergeMapPool',
    label: 'RxJS `mergeMap(8)` over an undici Pool',
    ours: false,
  },
  {
    id: 'fetchPLimit',
    runner: 'fetchPLimit',
    label: 'global `fetch` + p-limit(8)',
    ours: false,
    // ~18 s a round at 10^5.
    rounds: 2,
  },
]

const sizes = (quick: boolean) =>
  quick ? { n: 10_000, warmup: 1_000 } : { n: 100_000, warmup: 5_000 }

export const http: Benchmark = {
  name: 'http',
  title: 'HTTP fan-out: GETs to a local keep-alive server in its own process, 8 in flight',
  cases: { http: httpCase },
  plan({ quick, rounds }): Spec[] {
    return ROWS.map((row) => ({
      id: row.id,
      caseName: 'http',
      params: { runner: row.runner, ...sizes(quick) },
      rounds: rounds ?? (quick ? 1 : (row.rounds ?? 3)),
      timeoutMs: 180_000,
      ours: row.ours,
    }))
  },
  report(results, { quick }): string {
    const { n, warmup } = sizes(quick)
    const ceiling = med(results.get('autocannon'), 'reqPerSec')
    const floor = med(results.get('undiciPool'), 'reqPerSec')
    const body = ROWS.map((row) => {
      const r = results.get(row.id)
      const rate = med(r, 'reqPerSec')
      const issues = problems(r)
      return [
        row.label + (issues.length ? ` ⚠ ${issues.join('; ')}` : ''),
        fmt(rate, 0),
        spread(r, 'reqPerSec'),
        seconds(med(r, 'wallMs')),
        ratio(rate, ceiling),
        ratio(rate, floor),
        `${fmt(med(r, 'clientCpuUsPerReq'), 1)} / ${fmt(med(r, 'serverCpuUsPerReq'), 1)}`,
        `${fmt(med(r, 'clientCpuPct'), 0)} % / ${fmt(med(r, 'serverCpuPct'), 0)} %`,
        mb(med(r, 'maxRssKiB')),
        String(r?.length ?? 0),
      ]
    })
    const lines = [
      `${si(n)} timed GETs per round after ${si(warmup)} warm-up GETs on the same client; ` +
        `${BODY_BYTES}-byte body; a fresh server process per round.`,
      '',
      table(
        [
          'client',
          'requests/s (median)',
          'min–max',
          'wall',
          'vs autocannon',
          'vs undici Pool loop',
          'CPU µs per request: client / server',
          'CPU client / server (% of a core)',
          'peak RSS (client)',
          'rounds',
        ],
        body,
      ),
    ]
    const ours = med(results.get('fanOutFetchAll'), 'reqPerSec')
    if (Number.isFinite(ours) && Number.isFinite(floor) && Number.isFinite(ceiling)) {
      lines.push(
        '',
        `FanOutClient.fetchAll: ${ratio(ours, ceiling)} of autocannon (issue target ≥ 0.85×), ` +
          `${ratio(ours, floor)} of the raw undici Pool loop, which itself reaches ` +
          `${ratio(floor, ceiling)} of autocannon (BASELINES: 0.61×).`,
      )
    }
    return lines.join('\n')
  },
}
