/**
 * pino, passed in: a real logger writing JSON lines to a memory stream. At 'debug' every
 * fetch is logged with userId, attempt, latencyMs and status; a retry is a warn and the
 * final failure an error with `err`. At a level that leaves debug off, no debug call is
 * made at all (so no debug object is built); the child logger is made once per client.
 */
import { Writable } from 'node:stream'
import pino, { type Logger } from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import { cleanup, makeClient, range, rejection, reply, startServer } from './helpers.js'

afterEach(cleanup)

interface Line {
  level: number
  msg: string
  component?: string
  userId?: unknown
  attempt?: number
  latencyMs?: number
  status?: number
  err?: { type: string; message: string; status?: number; code?: string }
}

/** A pino logger into memory, with its child() and the child's debug() counted. */
function memoryLogger(level: string) {
  const lines: Line[] = []
  const stream = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split('\n')) if (line) lines.push(JSON.parse(line))
      done()
    },
  })
  const logger = pino({ level }, stream)
  const counts = { children: 0, debugCalls: 0 }
  const child = logger.child.bind(logger)
  logger.child = ((...args: Parameters<Logger['child']>) => {
    counts.children++
    const made = child(...args)
    // Every debug() call is counted, whatever the level: a call at a disabled level
    // would mean its fields object was built for nothing.
    return new Proxy(made, {
      get(target, key, receiver) {
        if (key === 'debug') {
          return (...a: unknown[]) => {
            counts.debugCalls++
            return (target.debug as (...x: unknown[]) => void)(...a)
          }
        }
        return Reflect.get(target, key, receiver)
      },
    })
  }) as Logger['child']
  return { logger, lines, counts }
}

const LEVEL = { debug: 20, info: 30, warn: 40, error: 50 }

describe('pino logging', () => {
  it("at 'debug': fetched (debug), retrying (warn), failed (error, with err)", async () => {
    const server = await startServer()
    server.script(2, reply.retryAfter(503, '0'), reply.ok())
    server.script(9, reply.status(500, { body: 'kaput' }))
    const { logger, lines, counts } = memoryLogger('debug')
    const client = makeClient(server, { logger, retry: { attempts: 3, baseDelayMs: 1 } })

    await client.fetchAll([1, 2])
    const fetched = lines.filter((l) => l.msg === 'fetched')
    expect(fetched.map((l) => l.userId).sort()).toEqual([1, 2])
    for (const l of fetched) {
      expect(l.level).toBe(LEVEL.debug)
      expect(l.component).toBe('rx-fanout')
      expect(l.status).toBe(200)
      expect(l.attempt).toBe(l.userId === 2 ? 2 : 1)
      expect(l.latencyMs).toBeTypeOf('number')
      expect(l.latencyMs).toBeGreaterThanOrEqual(0)
    }
    const retrying = lines.filter((l) => l.msg === 'retrying')
    expect(retrying).toHaveLength(1)
    expect(retrying[0]).toMatchObject({
      level: LEVEL.warn,
      userId: 2,
      attempt: 1,
      status: 503,
      err: { type: 'HttpStatusError', status: 503 },
    })

    await rejection(client.fetchAll([9]))
    const failed = lines.filter((l) => l.msg === 'failed')
    expect(failed).toHaveLength(1)
    expect(failed[0]).toMatchObject({
      level: LEVEL.error,
      userId: 9,
      attempt: 1,
      status: 500,
      err: { type: 'HttpStatusError', status: 500, code: 'RX_FANOUT_HTTP_STATUS' },
    })
    expect(failed[0]?.latencyMs).toBeTypeOf('number')
    expect(failed[0]?.err?.message).toContain('500')

    expect(counts.debugCalls).toBe(2)
    expect(counts.children).toBe(1) // made once, not per request
  })

  it.each(['info', 'silent'])(
    "at '%s': no debug call at all; warn and error as the level allows",
    async (level) => {
      const server = await startServer()
      server.script(2, reply.retryAfter(503, '0'), reply.ok())
      server.script(9, reply.status(500))
      const { logger, lines, counts } = memoryLogger(level)
      const client = makeClient(server, { logger, retry: { attempts: 3, baseDelayMs: 1 } })
      await client.fetchAll(range(1, 5))
      await rejection(client.fetchAll([9]))

      expect(counts.debugCalls).toBe(0)
      expect(lines.filter((l) => l.level < LEVEL.info)).toEqual([])
      if (level === 'silent') expect(lines).toEqual([])
      else expect(lines.map((l) => l.msg).sort()).toEqual(['failed', 'retrying'])
    },
  )

  it('works without a logger', async () => {
    const server = await startServer()
    const result = await makeClient(server).fetchAll(range(1, 3))
    expect(result.size).toBe(3)
  })
})
