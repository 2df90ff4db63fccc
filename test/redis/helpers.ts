/**
 * Shared machinery of the Redis tests: is Redis there (skip on a laptop, fail under CI),
 * a key prefix per test and its cleanup, our own redis-server on a free port (to stop and
 * start without touching the shared one), the envelope check, a pino logger that writes
 * to memory, and a guard that fails a test on an unhandled rejection or error event.
 */
import { spawnSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { rm } from 'node:fs/promises'
import { Socket } from 'node:net'
import { Redis } from 'ioredis'
import { type Logger, pino } from 'pino'
import { freePorts } from './faults/freePorts.js'
import { RedisProcess } from './faults/RedisProcess.js'

export const REDIS_HOST = '127.0.0.1'
/** The shared server's port: 6379, or REDIS_PORT as .ci/run reads it. */
export const REDIS_PORT = Number(process.env.REDIS_PORT ?? 6379)
export const REDIS_URL = `redis://${REDIS_HOST}:${REDIS_PORT}`
const CI = process.env.CI === 'true'

/** PING over a raw socket with a short connect timeout: true on `+PONG`. */
export function ping(port = REDIS_PORT, host = REDIS_HOST, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = new Socket()
    let reply = ''
    const done = (up: boolean) => {
      socket.destroy()
      resolve(up)
    }
    socket.setTimeout(timeoutMs, () => done(false))
    socket.once('error', () => done(false))
    socket.on('data', (chunk) => {
      reply += chunk.toString('latin1')
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'))
    })
    socket.connect(port, host, () => socket.write('PING\r\n'))
  })
}

/**
 * Whether the shared Redis answers. Under CI (`CI=true`) a Redis that does not answer is
 * an error, not a reason to skip: the file fails at import.
 */
export async function redisAvailable(file: string): Promise<boolean> {
  const up = await ping()
  if (up) return true
  const why = `Redis does not answer PING on ${REDIS_HOST}:${REDIS_PORT}`
  if (CI) throw new Error(`${why}: under CI the Redis tests must run (${file})`)
  console.warn(`[rx-fanout] ${why}: skipping the Redis tests in ${file}`)
  return false
}

/** Whether a `redis-server` binary can be started here (our own server for outages). */
export function redisServerInstalled(file: string): boolean {
  const found = spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0
  if (found) return true
  if (CI) throw new Error(`redis-server is not installed: under CI these tests must run (${file})`)
  console.warn(
    `[rx-fanout] redis-server is not installed: skipping the tests that start their own in ${file}`,
  )
  return false
}

/** A key prefix of its own for one test. */
export function testPrefix(): string {
  return `rxf-test:${randomUUID()}`
}

/**
 * Every key under `prefix`, bare or as the start of a hash tag (`{prefix…}:…`, as the
 * Redis classes name theirs). SCAN, not KEYS: the shared server has other users.
 */
export async function keysUnder(redis: Redis, prefix: string): Promise<string[]> {
  const found: string[] = []
  for (const pattern of [`${prefix}*`, `{${prefix}*`]) {
    let cursor = '0'
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
      found.push(...keys)
      cursor = next
    } while (cursor !== '0')
  }
  return found
}

/** Deletes every key under `prefix`. */
export async function deleteUnder(redis: Redis, prefix: string): Promise<void> {
  const keys = await keysUnder(redis, prefix)
  if (keys.length > 0) await redis.del(...keys)
}

/** A client on the shared server whose errors cannot escape as an unhandled event. */
export function client(port = REDIS_PORT): Redis {
  const redis = new Redis({ host: REDIS_HOST, port, lazyConnect: false })
  redis.on('error', () => {})
  return redis
}

/**
 * Tokens a bucket needs to allow these event times at `rate` per second: 1 + the largest
 * excess of events over refill in any window, i.e. the least burst for which the schedule
 * keeps the envelope (at most burst + rate·w events in any window of w seconds):
 *   1 + max_j [ (j − r·t_j) − min_{i≤j} (i − r·t_i) ]   (t in seconds, sorted).
 */
export function requiredBurst(timesMs: readonly number[], rate: number): number {
  const times = [...timesMs].sort((a, b) => a - b)
  let lowest = Number.POSITIVE_INFINITY
  let worst = 0
  times.forEach((t, j) => {
    const x = j - (rate * t) / 1000
    if (x < lowest) lowest = x
    if (x - lowest > worst) worst = x - lowest
  })
  return times.length === 0 ? 0 : 1 + worst
}

/** A pino logger whose records land in `records` (parsed), for assertions. */
export function memoryLogger(): { logger: Logger; records: Record<string, unknown>[] } {
  const records: Record<string, unknown>[] = []
  const logger = pino(
    { level: 'debug' },
    { write: (line: string) => records.push(JSON.parse(line) as Record<string, unknown>) },
  )
  return { logger, records }
}

/**
 * Collects unhandled rejections, uncaught exceptions and ioredis's "Unhandled error event"
 * (what ioredis prints when an 'error' event has no listener) while installed.
 */
export function guardProcess(): { problems: string[]; dispose(): void } {
  const problems: string[] = []
  const onRejection = (reason: unknown) => problems.push(`unhandledRejection: ${String(reason)}`)
  const onException = (error: unknown) => problems.push(`uncaughtException: ${String(error)}`)
  process.on('unhandledRejection', onRejection)
  process.on('uncaughtException', onException)
  const consoleError = console.error
  console.error = (...args: unknown[]) => {
    if (String(args[0]).includes('[ioredis] Unhandled error event')) {
      problems.push(`ioredis error event without a listener: ${String(args[1]).split('\n')[0]}`)
    }
    consoleError(...args)
  }
  return {
    problems,
    dispose() {
      process.off('unhandledRejection', onRejection)
      process.off('uncaughtException', onException)
      console.error = consoleError
    },
  }
}

/**
 * Polls `probe` every `everyMs` until it returns something other than undefined/false;
 * rejects with `what` after `timeoutMs` (the guard turns a hang into a readable failure).
 */
export async function until<T>(
  what: string,
  probe: () => Promise<T | undefined | false> | T | undefined | false,
  { timeoutMs = 5000, everyMs = 20 }: { timeoutMs?: number; everyMs?: number } = {},
): Promise<T> {
  const deadline = performance.now() + timeoutMs
  for (;;) {
    const value = await probe()
    if (value !== undefined && value !== false) return value
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`)
    await new Promise((resolve) => setTimeout(resolve, everyMs))
  }
}

/** A TCP port that was free a moment ago. */
export async function freePort(): Promise<number> {
  const [port] = await freePorts(1, REDIS_HOST)
  return port as number
}

/**
 * Our own `redis-server` (no persistence) on a port of its own: stopped and started again
 * on the same port to play a Redis restart, so the shared server is never touched.
 * A thin front on RedisProcess (test/redis/faults), which does the spawning, for the tests
 * written against this smaller API.
 */
export class OwnRedis {
  private constructor(readonly server: RedisProcess) {}

  static async start(): Promise<OwnRedis> {
    return new OwnRedis(await RedisProcess.start())
  }

  get port(): number {
    return this.server.port
  }

  get url(): string {
    return this.server.url
  }

  get running(): boolean {
    return this.server.running
  }

  /** Starts the server again on the same port; resolves when it accepts connections. */
  async start(): Promise<void> {
    if (this.running) throw new Error('already running')
    await this.server.restart()
  }

  /**
   * Stops the server (SIGKILL: its state is gone, as after a crash) and awaits its exit.
   * Its dir goes too (without persistence nothing in it matters, and a test's last stop
   * must leave nothing behind); `start()` makes it again.
   */
  async stop(): Promise<void> {
    await this.server.kill('SIGKILL')
    await rm(this.server.dir, { recursive: true, force: true })
  }
}
