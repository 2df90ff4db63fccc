/**
 * Bad input and credentials (issue 8, "How it is proven"): a clear coded error at
 * construction for a key with a brace, a localShare outside (0, 1], a lease that cannot be
 * renewed in time, or a `redis` that is not a redis:// URL — the value echoed, a password
 * never; an ioredis Cluster whose nodes are unreachable errors on first use with
 * RX_FANOUT_STORE_UNAVAILABLE within storeTimeoutMs, and a process that closes it exits;
 * a wrong password shows up in no error and no log line; TLS and ACL users work as ioredis
 * supports them.
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createServer, type Server } from 'node:net'
import { fileURLToPath } from 'node:url'
import { inspect } from 'node:util'
import { Cluster, Redis } from 'ioredis'
import { firstValueFrom, lastValueFrom } from 'rxjs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { RedisSemaphore, type RedisSemaphoreOptions } from '../../src/redis/RedisSemaphore.js'
import { RedisTokenBucket, type RedisTokenBucketOptions } from '../../src/redis/RedisTokenBucket.js'
import { freePorts } from './faults/freePorts.js'
import { RedisProcess } from './faults/RedisProcess.js'
import { guardProcess, memoryLogger, redisServerInstalled, testPrefix, until } from './helpers.js'

const ownRedis = redisServerInstalled('test/redis/badinput.test.ts')
const ROOT = fileURLToPath(new URL('../..', import.meta.url))

const SECRET = 's3cr3t-Pa55'

/** What the constructor throws (fails the test if it throws nothing). */
function thrown(make: () => unknown): Error & { code?: string } {
  try {
    make()
  } catch (error) {
    return error as Error & { code?: string }
  }
  throw new Error('expected the constructor to throw')
}

/** An error and everything it carries (cause, command, stack), as a log line would. */
const everything = (error: unknown) => inspect(error, { depth: 10, showHidden: true })

describe('construction: a coded error naming the option and echoing the value', () => {
  // Refused options must not open a connection: the URL points at a listener that counts.
  let sentinel: Server
  let connections = 0
  let url = ''
  beforeAll(async () => {
    sentinel = createServer((socket) => {
      connections++
      socket.destroy()
    })
    sentinel.listen(0, '127.0.0.1')
    await once(sentinel, 'listening')
    url = `redis://:${SECRET}@127.0.0.1:${(sentinel.address() as { port: number }).port}`
  })
  afterAll(async () => {
    // Every refused construction above had a valid URL: none may have connected.
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(connections, 'connections opened by refused constructions').toBe(0)
    await new Promise((resolve) => sentinel.close(resolve))
  })

  const bucket = (options: Partial<RedisTokenBucketOptions>) => () =>
    new RedisTokenBucket({ redis: url, key: 'k', rate: 10, burst: 5, ...options })
  const semaphore = (options: Partial<RedisSemaphoreOptions>) => () =>
    new RedisSemaphore({ redis: url, key: 'k', limit: 2, ...options })

  it.each(['a{b', 'a}b', '{tag}', 'tenant:{42}:quota'])('key %j: RangeError', (key) => {
    for (const make of [bucket({ key }), semaphore({ key })]) {
      const error = thrown(make)
      expect(error).toBeInstanceOf(RangeError)
      expect(error.code).toBe('RX_FANOUT_INVALID_OPTION')
      expect(error.message).toMatch(/^key must be /)
      expect(error.message).toContain(JSON.stringify(key))
    }
  })

  it.each([
    ['', TypeError],
    [42, TypeError],
  ])('key %j: TypeError', (key, Kind) => {
    for (const make of [bucket({ key: key as string }), semaphore({ key: key as string })]) {
      const error = thrown(make)
      expect(error).toBeInstanceOf(Kind)
      expect(error.code).toBe('RX_FANOUT_INVALID_OPTION')
      expect(error.message).toMatch(/^key must be /)
    }
  })

  it.each([0, -1, 1.5, Number.NaN])('localShare %s: RangeError', (localShare) => {
    for (const onStoreError of ['fail-closed', 'local-fallback'] as const) {
      for (const make of [
        bucket({ localShare, onStoreError }),
        semaphore({ localShare, onStoreError }),
      ]) {
        const error = thrown(make)
        expect(error).toBeInstanceOf(RangeError)
        expect(error.code).toBe('RX_FANOUT_INVALID_OPTION')
        expect(error.message).toBe(`localShare must be a number in (0, 1], got ${localShare}`)
      }
    }
  })

  it.each([
    // renewEveryMs ≥ leaseMs − safetyMarginMs, given or by default (margin max(200, lease/10),
    // renewal lease/3).
    [{ leaseMs: 1000, renewEveryMs: 800, safetyMarginMs: 200 }, 800, '1000 − 200'],
    [{ leaseMs: 1000, renewEveryMs: 900 }, 900, '1000 − 200'],
    [{ leaseMs: 1000, safetyMarginMs: 1000 }, 333, '1000 − 1000'],
    [{ leaseMs: 1000, renewEveryMs: 1000, safetyMarginMs: 0 }, 1000, '1000 − 0'],
    [{ leaseMs: 1000, renewEveryMs: 5000, safetyMarginMs: 0 }, 5000, '1000 − 0'],
    [{ leaseMs: 300 }, 100, '300 − 200'],
    [{ leaseMs: 20_000, safetyMarginMs: 15_000 }, 6666, '20000 − 15000'],
  ])('%j: RangeError on renewEveryMs', (options, renew, window) => {
    const error = thrown(semaphore(options))
    expect(error).toBeInstanceOf(RangeError)
    expect(error.code).toBe('RX_FANOUT_INVALID_OPTION')
    expect(error.message).toMatch(/^renewEveryMs must be < leaseMs − safetyMarginMs/)
    expect(error.message).toContain(`(${window})`)
    expect(error.message).toMatch(new RegExp(`got ${renew}$`))
  })

  it.each([{ leaseMs: 0 }, { leaseMs: 1000.5 }, { renewEveryMs: 0 }, { safetyMarginMs: -1 }])(
    '%j: RangeError naming the option',
    (options) => {
      const error = thrown(semaphore(options))
      expect(error).toBeInstanceOf(RangeError)
      expect(error.code).toBe('RX_FANOUT_INVALID_OPTION')
      expect(error.message.split(' ')[0]).toBe(Object.keys(options)[0])
    },
  )

  it('a lease renewed in time is accepted (no connection is made without a command)', async () => {
    const redis = new Redis({ port: 1, lazyConnect: true })
    try {
      for (const options of [
        { leaseMs: 1000, renewEveryMs: 799, safetyMarginMs: 200 },
        { leaseMs: 1000 },
        { leaseMs: 10_000, renewEveryMs: 9999, safetyMarginMs: 0 },
      ]) {
        const made = new RedisSemaphore({ redis, key: 'k', limit: 1, ...options })
        await made.close()
      }
    } finally {
      redis.disconnect()
    }
  })

  it.each([
    `http://user:${SECRET}@127.0.0.1:6379`,
    `https://:${SECRET}@cache.internal:6380`,
    `mysql://${SECRET}@db`,
    `user:${SECRET}@127.0.0.1:6379`,
    `//user:${SECRET}@127.0.0.1:6379`,
    `redis:/user:${SECRET}@127.0.0.1:6379`,
    `redis//:${SECRET}@127.0.0.1:6379`,
    ` redis://user:${SECRET}@127.0.0.1:6379`,
    `http://user:pa/${SECRET}@127.0.0.1`,
    `http://user:${SECRET}#x@127.0.0.1`,
    `127.0.0.1:6379?password=${SECRET}`,
  ])('redis %j: TypeError, the password redacted', (redis) => {
    for (const make of [bucket({ redis }), semaphore({ redis })]) {
      const error = thrown(make)
      expect(error).toBeInstanceOf(TypeError)
      expect(error.code).toBe('RX_FANOUT_INVALID_OPTION')
      expect(error.message).toMatch(/^redis must be a redis:\/\/ or rediss:\/\/ URL, got "/)
      expect(error.message).toContain('***')
      expect(everything(error)).not.toContain(SECRET)
    }
  })

  it.each([
    { host: '127.0.0.1', port: 6379, password: SECRET },
    { host: '127.0.0.1', username: 'app', pass: SECRET, tls: { key: SECRET } },
    { url: `redis://:${SECRET}@127.0.0.1:6379` },
  ])('redis given as options %#: TypeError, no password', (redis) => {
    for (const make of [bucket({ redis: redis as never }), semaphore({ redis: redis as never })]) {
      const error = thrown(make)
      expect(error).toBeInstanceOf(TypeError)
      expect(error.code).toBe('RX_FANOUT_INVALID_OPTION')
      expect(error.message).toMatch(/^redis must be an ioredis Redis or Cluster/)
      expect(error.message).toContain('127.0.0.1')
      expect(everything(error)).not.toContain(SECRET)
    }
  })
})

describe('an ioredis Cluster whose nodes are unreachable', () => {
  const STORE_TIMEOUT_MS = 500
  // A timer fires late by as much as the event loop is held up (a loaded CI machine holds
  // it up to ~100 ms): "within storeTimeoutMs" allows that much on top.
  const LATE_MS = 250

  it('first take and first acquire: RX_FANOUT_STORE_UNAVAILABLE within storeTimeoutMs; nothing hangs', async () => {
    const guard = guardProcess()
    const ports = await freePorts(3)
    const cluster = new Cluster(ports.map((port) => ({ host: '127.0.0.1', port })))
    const clusterErrors: unknown[] = []
    cluster.on('error', (error) => clusterErrors.push(error))
    const { logger, records } = memoryLogger()
    const key = testPrefix()
    const bucket = new RedisTokenBucket({
      redis: cluster,
      key,
      rate: 10,
      burst: 5,
      storeTimeoutMs: STORE_TIMEOUT_MS,
      logger,
    })
    const semaphore = new RedisSemaphore({
      redis: cluster,
      key,
      limit: 2,
      storeTimeoutMs: STORE_TIMEOUT_MS,
      logger,
    })
    try {
      const started = performance.now()
      const timed = (promise: Promise<unknown>) =>
        promise.then(
          () => ({ error: undefined, ms: performance.now() - started }),
          (error: { code?: string }) => ({ error, ms: performance.now() - started }),
        )
      const [take, acquire] = await Promise.all([
        timed(firstValueFrom(bucket.take())),
        timed(firstValueFrom(semaphore.acquire())),
      ])
      console.log(
        `unreachable cluster: take ${take.error?.code} after ${take.ms.toFixed(0)} ms, ` +
          `acquire ${acquire.error?.code} after ${acquire.ms.toFixed(0)} ms ` +
          `(storeTimeoutMs ${STORE_TIMEOUT_MS}), ${records.length} log records`,
      )
      for (const { error, ms } of [take, acquire]) {
        expect(error?.code).toBe('RX_FANOUT_STORE_UNAVAILABLE')
        expect(ms).toBeLessThanOrEqual(STORE_TIMEOUT_MS + LATE_MS)
      }
      // The next use fails the same way (no hang on a half-made connection either).
      const again = await timed(firstValueFrom(bucket.take()))
      expect(again.error?.code).toBe('RX_FANOUT_STORE_UNAVAILABLE')
    } finally {
      await bucket.close()
      await semaphore.close()
      cluster.disconnect()
      guard.dispose()
    }
    // Closed, it tries no node again (a retry would fail with another error event); that
    // it leaves nothing behind is the next test's (a process that has to exit).
    const errorsAtClose = clusterErrors.length
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect(clusterErrors.length).toBe(errorsAtClose)
    expect(guard.problems).toEqual([])
  })

  it('a process that does the same, then closes everything, exits by itself', async () => {
    const ports = await freePorts(3)
    // No process.exit: the process must end because nothing is left to keep it alive.
    // (It takes ~2 s after the disconnect: ioredis arms a 2 s disconnectTimeout for each
    // socket of its failed connection attempts, cleared only by a 'close' already past.)
    const script = `
      import { Cluster } from 'ioredis'
      import { firstValueFrom } from 'rxjs'
      import { RedisTokenBucket } from './src/redis/RedisTokenBucket.ts'
      import { RedisSemaphore } from './src/redis/RedisSemaphore.ts'
      const ports = ${JSON.stringify(ports)}
      const cluster = new Cluster(ports.map((port) => ({ host: '127.0.0.1', port })))
      cluster.on('error', () => {})
      const options = { redis: cluster, key: 'exit-test', storeTimeoutMs: ${STORE_TIMEOUT_MS} }
      const bucket = new RedisTokenBucket({ ...options, rate: 10, burst: 5 })
      const semaphore = new RedisSemaphore({ ...options, limit: 2 })
      const codes = await Promise.all([
        firstValueFrom(bucket.take()).then(() => 'granted', (e) => e.code),
        firstValueFrom(semaphore.acquire()).then(() => 'granted', (e) => e.code),
      ])
      await bucket.close()
      await semaphore.close()
      cluster.disconnect()
      console.log(JSON.stringify(codes))
    `
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', '--input-type=module', '--eval', script],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
    )
    let out = ''
    let err = ''
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString()
    })
    child.stderr.on('data', (chunk: Buffer) => {
      err += chunk.toString()
    })
    const started = performance.now()
    const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>
    // A hang is what is tested: give it far more than it needs, then kill it and fail.
    const killer = setTimeout(() => child.kill('SIGKILL'), 15_000)
    const [code, signal] = await exited
    clearTimeout(killer)
    const ms = performance.now() - started
    console.log(
      `unreachable cluster, child process: exited ${code ?? signal} after ${ms.toFixed(0)} ms, ${out.trim()}`,
    )
    expect(signal, `killed: it hung (stderr: ${err})`).toBeNull()
    expect(code, err).toBe(0)
    expect(JSON.parse(out)).toEqual(['RX_FANOUT_STORE_UNAVAILABLE', 'RX_FANOUT_STORE_UNAVAILABLE'])
  }, 20_000)
})

describe.skipIf(!ownRedis)('credentials, TLS and ACL users on our own redis-servers', () => {
  const RIGHT = 'right-Pa55-7'
  const WRONG = SECRET
  let secured: RedisProcess
  let tls: RedisProcess

  beforeAll(async () => {
    ;[secured, tls] = await Promise.all([
      RedisProcess.start({ requirePass: RIGHT, aclUsers: [{ name: 'app', password: RIGHT }] }),
      RedisProcess.start({ tls: true }),
    ])
  }, 30_000)
  afterAll(async () => {
    await Promise.all([secured?.stop(), tls?.stop()])
  })

  /** Grants on both classes through `redis`: a take, and a permit handed on by a release. */
  async function grantsNormally(redis: Redis | string, what: string): Promise<void> {
    const key = testPrefix()
    // coldStart 'full': these servers are seconds old, and a young Redis would otherwise
    // (rightly) hold back permits for a lease's length after its start.
    const bucket = new RedisTokenBucket({ redis, key, rate: 100, burst: 2, coldStart: 'full' })
    const semaphore = new RedisSemaphore({
      redis,
      key,
      limit: 1,
      leaseMs: 2000,
      coldStart: 'full',
    })
    try {
      await lastValueFrom(bucket.take(2))
      await firstValueFrom(bucket.take())
      const first = await firstValueFrom(semaphore.acquire())
      let second: (() => void) | null = null
      const waiting = semaphore.acquire().subscribe((release) => {
        second = release
      })
      // Handed on when the first is released (the subscriber connection, a duplicate of
      // the client, must authenticate too).
      first()
      await until(`${what}: the second permit`, () => second !== null, { timeoutMs: 3000 })
      ;(second as unknown as () => void)()
      waiting.unsubscribe()
    } finally {
      await bucket.close()
      await semaphore.close()
    }
  }

  it('a wrong password (requirepass and ACL user) is in no error and no log record', async () => {
    const { logger, records } = memoryLogger()
    const errors: unknown[] = []
    for (const url of [
      `redis://:${WRONG}@127.0.0.1:${secured.port}`,
      `redis://app:${WRONG}@127.0.0.1:${secured.port}`,
    ]) {
      const key = testPrefix()
      const bucket = new RedisTokenBucket({ redis: url, key, rate: 10, burst: 5, logger })
      const semaphore = new RedisSemaphore({ redis: url, key, limit: 1, logger })
      try {
        errors.push(await firstValueFrom(bucket.take()).catch((e: unknown) => e))
        errors.push(await firstValueFrom(semaphore.acquire()).catch((e: unknown) => e))
      } finally {
        await bucket.close()
        await semaphore.close()
      }
    }
    const logged = JSON.stringify(records)
    console.log(
      `wrong password: ${errors.length} errors (${errors.map((e) => (e as { code?: string }).code).join(', ')}), ` +
        `${records.length} log records; password in errors: ${errors.some((e) => everything(e).includes(WRONG))}, ` +
        `in logs: ${logged.includes(WRONG)}`,
    )
    for (const error of errors) {
      expect((error as { code?: string }).code).toBe('RX_FANOUT_STORE_UNAVAILABLE')
      expect(everything(error)).not.toContain(WRONG)
    }
    // The failures were logged (with their causes), and the password is in none of it.
    expect(records.length).toBeGreaterThan(0)
    expect(logged).toMatch(/WRONGPASS|NOAUTH/)
    expect(logged).not.toContain(WRONG)
  })

  it('ACL user: a client built with username/password, and a redis://user:pass@ URL', async () => {
    const redis = await secured.client()
    try {
      await grantsNormally(redis, 'ACL client')
    } finally {
      redis.disconnect()
    }
    await grantsNormally(`redis://app:${RIGHT}@127.0.0.1:${secured.port}`, 'ACL URL')
  })

  it('TLS: a client built with the CA grants normally', async () => {
    const redis = await tls.client()
    try {
      expect(redis.options.tls).toBeDefined()
      await grantsNormally(redis, 'TLS client')
    } finally {
      redis.disconnect()
    }
  })
})
