/**
 * Proof that the fault-injection harness does what the fault tests will rely on; nothing
 * of rx-fanout is under test here. RedisProcess: killed by PID and restarted, losing or
 * keeping a key as its persistence says; TLS and ACL reachable with ioredis. HoldingProxy:
 * holds bytes both ways (and the server does not see a held command) until released,
 * then delivers them intact; cuts with a reset. RedisCluster: starts whole, routes a key,
 * fails over when a master is killed. RecordingServer: an aborted request leaves the
 * in-flight count when the server sees the close.
 *
 * Without redis-server the Redis parts are skipped (with a warning), except under CI,
 * where the file fails (see `redisServerInstalled`).
 */
import { readFileSync } from 'node:fs'
import { connect, type Socket } from 'node:net'
import { Redis, type RedisOptions } from 'ioredis'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { guardProcess, redisServerInstalled, until } from '../helpers.js'
import { epochNow } from './epochNow.js'
import { HoldingProxy } from './HoldingProxy.js'
import { RecordingServer } from './RecordingServer.js'
import { RedisCluster } from './RedisCluster.js'
import { RedisProcess } from './RedisProcess.js'

const installed = redisServerInstalled('test/redis/faults/harness.test.ts')

let guard: ReturnType<typeof guardProcess>
beforeEach(() => {
  guard = guardProcess()
})
afterEach(() => {
  guard.dispose()
  expect(guard.problems, 'nothing escaped as an unhandled error').toEqual([])
})

/**
 * A window in which something must NOT happen (a held reply arriving): absence cannot
 * be awaited, so it is watched for a stated time.
 */
const quiet = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Whether a process with this PID exists (signal 0 only checks). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** A raw TCP connection that keeps what it receives, to watch bytes without a client's logic. */
async function raw(port: number): Promise<{ socket: Socket; received: () => string }> {
  const socket = connect({ port, host: '127.0.0.1' })
  let received = ''
  socket.on('data', (chunk) => {
    received += chunk.toString('latin1')
  })
  socket.on('error', () => {})
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve)
    socket.once('error', reject)
  })
  return { socket, received: () => received }
}

/** An ioredis client that gives up at once instead of retrying (for "this must fail"). */
function oneShot(options: RedisOptions): Redis {
  const redis = new Redis({
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: 2000,
    ...options,
  })
  redis.on('error', () => {})
  return redis
}

describe('RecordingServer', () => {
  let server: RecordingServer
  afterEach(() => server?.close())

  it('counts an aborted request out of in-flight when it sees the close', async () => {
    server = await RecordingServer.start({
      delayMs: (path) => (path === '/hang' ? Number.POSITIVE_INFINITY : 20),
    })
    const before = epochNow()
    const abort = new AbortController()
    const hanging = fetch(`${server.origin}/hang`, { signal: abort.signal }).catch((e) => e)
    await server.until(() => server.count('/hang') === 1, 'the hanging request')
    const answered = await Promise.all(
      ['/a', '/a?x=1', '/b'].map((path) => fetch(`${server.origin}${path}`).then((r) => r.text())),
    )
    expect(answered).toEqual(['ok /a', 'ok /a', 'ok /b'])
    expect(server.inFlight).toBe(1)

    abort.abort()
    expect(await hanging).toMatchObject({ name: 'AbortError' })
    await server.until(() => server.inFlight === 0, 'the aborted request counted out')

    const hang = server.requests.find((r) => r.path === '/hang')
    expect(hang?.outcome).toBe('aborted')
    expect(hang?.status).toBeUndefined() // never answered
    expect(server.requests.filter((r) => r.outcome === 'finished')).toHaveLength(3)
    expect(Object.fromEntries(server.counts)).toEqual({ '/hang': 1, '/a': 2, '/b': 1 })
    // /hang was in flight throughout, so with each of the others at least 2 were; all 4 if
    // their 20 ms overlapped (not guaranteed on a loaded machine, so not asserted).
    expect(server.maxInFlight).toBeGreaterThanOrEqual(2)
    // The timeline: one +1 and one -1 per request, each step consistent with the last,
    // its peak the maximum, ending at 0.
    expect(server.timeline).toHaveLength(8)
    let count = 0
    for (const step of server.timeline) {
      count += step.change
      expect(step.inFlight).toBe(count)
    }
    expect(Math.max(...server.timeline.map((step) => step.inFlight))).toBe(server.maxInFlight)
    expect(count).toBe(0)
    for (const r of server.requests) {
      expect(r.at).toBeGreaterThanOrEqual(before)
      expect(r.doneAt).toBeGreaterThanOrEqual(r.at)
      expect(server.inFlightAt(r.at)).toBeGreaterThanOrEqual(1)
      if (r.path !== '/hang') expect(server.inFlightAt(r.at)).toBeGreaterThanOrEqual(2)
    }
    expect(hang?.doneAt).toBeGreaterThan(Math.max(...server.requests.map((r) => r.at)))
    expect(server.inFlightAt(before)).toBe(0)
    expect(server.inFlightAt(epochNow())).toBe(0)
  })
})

describe.runIf(installed)('RedisProcess', () => {
  const servers: RedisProcess[] = []
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => s.stop()))
  })
  const start = async (options?: Parameters<typeof RedisProcess.start>[0]) => {
    const server = await RedisProcess.start(options)
    servers.push(server)
    return server
  }

  it('without persistence: SIGKILL by PID and restart on the same port loses the key', async () => {
    const server = await start()
    await server.call('SET', 'k', 'v')
    const { pid, port } = server
    expect(pid).toBeTypeOf('number')
    await server.kill()
    expect(server.running).toBe(false)
    expect(server.pid).toBeUndefined()
    expect(alive(pid as number)).toBe(false)

    await server.restart()
    expect(server.port).toBe(port)
    expect(server.pid).not.toBe(pid)
    expect(await server.call('GET', 'k')).toBeNull()
    expect((await server.info('server')).tcp_port).toBe(String(port))
  })

  it('with appendonly and appendfsync always: an acknowledged write survives SIGKILL + restart', async () => {
    const server = await start({ appendonly: true, appendfsync: 'always' })
    const redis = await server.client()
    await redis.set('k', 'kept')
    redis.disconnect()
    const { pid } = server
    await server.kill('SIGKILL')
    expect(alive(pid as number)).toBe(false)

    await server.restart()
    expect(await server.call('GET', 'k')).toBe('kept')
    expect((await server.info('persistence')).aof_enabled).toBe('1')
  })

  it('TLS: ioredis connects with the CA (tls: { ca }), and is refused without it', async () => {
    const server = await start({ tls: true })
    expect(server.url).toBe(`rediss://127.0.0.1:${server.port}`)
    const ca = readFileSync(server.caFile as string)
    const redis = oneShot({ host: '127.0.0.1', port: server.port, tls: { ca } })
    await redis.connect()
    expect(await redis.ping()).toBe('PONG')
    redis.disconnect()
    expect((await server.info('server')).redis_version).toMatch(/^\d/) // info() speaks TLS too

    // Without our CA: refused by the certificate check (ioredis reports it as an 'error'
    // event; connect() itself only says the connection closed).
    const untrusting = oneShot({ host: '127.0.0.1', port: server.port, tls: {} })
    const error = new Promise<Error>((resolve) => untrusting.once('error', resolve))
    await expect(untrusting.connect()).rejects.toThrow()
    expect((await error).message).toMatch(/self[- ]signed|unable to verify/i)
    untrusting.disconnect()
  })

  it('ACL: the user connects with the url; without credentials the client is refused', async () => {
    const server = await start({ aclUsers: [{ name: 'app', password: 'p@ss:w rd' }] })
    expect(server.url).toBe(`redis://app:p%40ss%3Aw%20rd@127.0.0.1:${server.port}`)
    expect(server.redactedUrl).toBe(`redis://app:***@127.0.0.1:${server.port}`)
    const redis = new Redis(server.url, { lazyConnect: true })
    redis.on('error', () => {})
    await redis.connect()
    expect(await redis.call('ACL', 'WHOAMI')).toBe('app')
    redis.disconnect()

    const anonymous = oneShot({ host: '127.0.0.1', port: server.port, enableReadyCheck: false })
    await anonymous.connect()
    await expect(anonymous.ping()).rejects.toThrow(/NOAUTH/)
    anonymous.disconnect()

    const withPassword = await start({ requirePass: 'sekret' })
    expect(withPassword.url).toBe(`redis://:sekret@127.0.0.1:${withPassword.port}`)
    const client = new Redis(withPassword.url, { lazyConnect: true })
    client.on('error', () => {})
    await client.connect()
    expect(await client.call('ACL', 'WHOAMI')).toBe('default')
    client.disconnect()
  })
})

describe.runIf(installed)('HoldingProxy', () => {
  let server: RedisProcess
  let proxy: HoldingProxy
  beforeAll(async () => {
    server = await RedisProcess.start()
  })
  afterAll(() => server?.stop())
  beforeEach(async () => {
    proxy = await HoldingProxy.start(server.port)
  })
  afterEach(() => proxy.close())

  it('holds a command until released (the server does not see it); new connections are held too', async () => {
    const a = await raw(proxy.port)
    a.socket.write('PING\r\n')
    await until('PONG through the proxy', () => a.received() === '+PONG\r\n')

    proxy.hold()
    a.socket.write('INCR held\r\n')
    // A connection made while held: accepted, its bytes held as well.
    const b = await raw(proxy.port)
    b.socket.write('ECHO late\r\n')
    await until(
      'both commands held',
      () => proxy.heldBytes === 'INCR held\r\n'.length + 'ECHO late\r\n'.length,
    )
    await quiet(100)
    expect(a.received()).toBe('+PONG\r\n')
    expect(b.received()).toBe('')
    expect(await server.call('GET', 'held')).toBeNull() // the held INCR has not run
    expect(proxy.connections).toBe(2)
    expect(proxy.held).toBe(true)

    proxy.release()
    await until('the held replies', () => a.received().endsWith(':1\r\n') && b.received() !== '')
    expect(a.received()).toBe('+PONG\r\n:1\r\n')
    expect(b.received()).toBe('$4\r\nlate\r\n')
    expect(await server.call('GET', 'held')).toBe('1')
    expect(proxy.heldBytes).toBe(0)
    a.socket.destroy()
    b.socket.destroy()
  })

  it('holds a megabyte each way and delivers it intact and in order', async () => {
    const big = Buffer.alloc(1 << 20)
    for (let i = 0; i < big.length; i++) big[i] = (i * 7919) % 251 // no repeating pattern at chunk size
    const value = big.toString('latin1')
    const redis = new Redis({ host: '127.0.0.1', port: proxy.port, maxRetriesPerRequest: null })
    redis.on('error', () => {})
    try {
      await redis.ping()
      // Towards the server: a 1 MiB SET, held whole.
      proxy.hold()
      const set = redis.set('big', big)
      await until('the SET held', () => proxy.heldBytes > big.length)
      expect(await server.call('EXISTS', 'big')).toBe(0)
      proxy.release()
      expect(await set).toBe('OK')
      expect(await server.call('STRLEN', 'big')).toBe(big.length)

      // Back to the client: the GET reaches the server (frozen, so it cannot answer yet),
      // then the proxy is held and the server thawed: its 1 MiB answer is held.
      server.freeze()
      const sentBefore = proxy.forwarded.up
      const get = redis.getBuffer('big')
      await until('the GET forwarded', () => proxy.forwarded.up > sentBefore)
      proxy.hold()
      server.thaw()
      await until('the answer held', () => proxy.heldBytes > big.length, { timeoutMs: 5000 })
      let got = false
      void get.then(() => {
        got = true
      })
      await quiet(50)
      expect(got).toBe(false)
      proxy.release()
      const answer = await get
      expect(answer?.length).toBe(big.length)
      expect(answer?.toString('latin1') === value).toBe(true)
    } finally {
      server.thaw()
      redis.disconnect()
    }
  })

  it('cutAll resets every connection, held or not, on both sides', async () => {
    const a = await raw(proxy.port)
    const b = await raw(proxy.port)
    a.socket.write('PING\r\n')
    await until('PONG', () => a.received() === '+PONG\r\n')
    const clients = Number((await server.info('clients')).connected_clients)
    proxy.hold()
    b.socket.write('PING\r\n')
    const errors = [a, b].map(
      ({ socket }) =>
        new Promise<string | undefined>((resolve) =>
          socket.once('error', (e: NodeJS.ErrnoException) => resolve(e.code)),
        ),
    )
    expect(proxy.cutAll()).toBe(2)
    expect(await Promise.all(errors)).toEqual(['ECONNRESET', 'ECONNRESET'])
    expect(proxy.connections).toBe(0)
    // The server's side was reset too: its two proxied clients are gone.
    await until(
      'the server sees its clients go',
      async () => Number((await server.info('clients')).connected_clients) === clients - 2,
    )
    // The proxy goes on: a new connection works (released).
    proxy.release()
    const c = await raw(proxy.port)
    c.socket.write('PING\r\n')
    await until('PONG after the cut', () => c.received() === '+PONG\r\n')
    c.socket.destroy()
  })
})

describe.runIf(installed)('RedisCluster', () => {
  let cluster: RedisCluster
  beforeAll(async () => {
    cluster = await RedisCluster.start({ masters: 3, replicasPerMaster: 1, nodeTimeoutMs: 1000 })
  }, 40_000)
  afterAll(() => cluster?.stop())

  it('starts whole: 3 masters with a replica each, in sync, all slots served', async () => {
    expect(cluster.nodes).toHaveLength(6)
    expect(cluster.startupNodes).toHaveLength(6)
    const roles = await Promise.all(cluster.nodes.map((n) => n.info('replication')))
    const masters = await cluster.masters()
    expect(masters).toHaveLength(3)
    expect(roles.filter((r) => r.role === 'master')).toHaveLength(3)
    for (const master of masters) {
      const replica = await cluster.replicaOf(master)
      const info = await replica.info('replication')
      expect(info).toMatchObject({ role: 'slave', master_port: String(master.port) })
      expect(info.master_link_status).toBe('up')
    }
    const state = await cluster.nodes[0]?.call('CLUSTER', 'INFO')
    expect(String(state)).toContain('cluster_slots_ok:16384')
  })

  it('routes a key to its master', async () => {
    const key = 'rxf:route'
    const client = cluster.client()
    try {
      await client.set(key, 'here')
      const master = await cluster.masterForKey(key)
      expect(await master.call('GET', key)).toBe('here')
      // Any other master redirects to it.
      const slot = await cluster.slotOf(key)
      const other = (await cluster.masters()).find((m) => m !== master) as RedisProcess
      await expect(other.call('GET', key)).rejects.toThrow(`MOVED ${slot} 127.0.0.1:${master.port}`)
    } finally {
      client.disconnect()
    }
  })

  it('killing the master of a key promotes its replica; the slot is served again', async () => {
    const key = 'rxf:failover'
    const client = cluster.client()
    await client.set(key, 'survives')
    client.disconnect()
    const master = await cluster.masterForKey(key)
    const replica = await cluster.replicaOf(master)
    // The replica has the write before the master dies (else a failover may lose it).
    expect(await master.call('WAIT', 1, 2000)).toBe(1)
    const pid = master.pid as number

    const killedAt = performance.now()
    await cluster.killMaster(master)
    expect(alive(pid)).toBe(false)
    const promoted = await cluster.waitForFailover(key, 15_000)
    const failoverMs = performance.now() - killedAt
    expect(promoted).toBe(replica)
    expect(await cluster.masterForKey(key)).toBe(replica)
    // With a 1 s node timeout a failover takes a few seconds; far more means it was stuck.
    expect(failoverMs).toBeLessThan(15_000)

    const after = cluster.client()
    try {
      expect(await after.get(key)).toBe('survives')
      await after.set(key, 'written after')
      expect(await replica.call('GET', key)).toBe('written after')
    } finally {
      after.disconnect()
    }
  }, 20_000)
})
