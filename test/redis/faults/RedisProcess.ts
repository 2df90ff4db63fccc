/**
 * A `redis-server` child process the test owns: on free ports, in a temp dir of its own,
 * killed by its PID. The fault tests crash it (SIGKILL), freeze it (SIGSTOP) and start it
 * again on the same port and dir, so a client sees the very server it was talking to come
 * back, with its AOF when `appendonly` is on. The shared server on 6379 is never touched:
 * nothing here signals a process it did not spawn.
 *
 * Options cover what the fault tests need: persistence (`appendonly`, `appendfsync`),
 * cluster mode, TLS (a CA and a server certificate made with `openssl` in the temp dir),
 * ACL users and `requirepass`. Anything else goes through `extraArgs`.
 *
 * If the test process exits or is sent SIGTERM (how vitest ends a worker) without `stop()`
 * having run (a forgotten cleanup, a hook that timed out), a hook SIGKILLs every server
 * still running and removes its dir, so a failed run does not leave redis-servers behind.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync, rmSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Redis, type RedisOptions } from 'ioredis'
import { freePorts } from './freePorts.js'

export interface RedisProcessOptions {
  /** AOF persistence (default off). The AOF lives in `dir`, so it survives `restart()`. */
  appendonly?: boolean
  /** With `appendonly`: 'always' makes every acknowledged write survive a SIGKILL. */
  appendfsync?: 'always' | 'everysec'
  /** RDB snapshot rule, e.g. '60 1'. Default '' (none: a kill loses what AOF does not keep). */
  save?: string
  /** `cluster-enabled yes`, with its own bus port (`clusterPort`) and `nodes.conf` in `dir`. */
  cluster?: boolean
  /** `cluster-node-timeout` (default 1000 ms: failovers in about two seconds). */
  clusterNodeTimeoutMs?: number
  /** TLS only (`--port 0`): `port` is the TLS port, `caFile` the CA to trust. */
  tls?: boolean
  /**
   * ACL users with every permission. Unless `requirePass` is given too, the `default`
   * user is switched off, so a client that does not authenticate is refused (NOAUTH)
   * rather than quietly let in: a test of credentials then proves something.
   */
  aclUsers?: { name: string; password: string }[]
  /** The `default` user's password. */
  requirePass?: string
  /** Appended last, so they override anything above. */
  extraArgs?: string[]
  /** How long to wait for "Ready to accept connections" (default 10 s). */
  startTimeoutMs?: number
}

const HOST = '127.0.0.1'
const READY = 'Ready to accept connections'
/** The log kept for error messages: the tail is what explains a failure. */
const LOG_LIMIT = 64 * 1024
const execFileAsync = promisify(execFile)

// ── the exit hook ────────────────────────────────────────────────────────────────────────

/** A server not yet stopped: its PID while its process runs, and its dir. */
interface Entry {
  pid: number | undefined
  dir: string
}

// One registry and one hook per process, however often this module is evaluated (vitest
// may evaluate it once per test file in the same worker): a listener per evaluation would
// pile up and trip MaxListenersExceededWarning.
const REGISTRY = Symbol.for('rx-fanout.test.RedisProcess.registry')
function registry(): Set<Entry> {
  const global = globalThis as { [REGISTRY]?: Set<Entry> }
  let entries = global[REGISTRY]
  if (entries === undefined) {
    const created = new Set<Entry>()
    entries = created
    global[REGISTRY] = created
    // Synchronous, as 'exit' listeners must be: process.kill and rmSync are.
    const cleanUp = () => {
      for (const entry of created) {
        try {
          if (entry.pid !== undefined) process.kill(entry.pid, 'SIGKILL')
        } catch {}
        try {
          rmSync(entry.dir, { recursive: true, force: true })
        } catch {}
      }
    }
    process.once('exit', cleanUp)
    // vitest ends its forked workers with SIGTERM, which skips 'exit'. A listener replaces
    // the default action (dying), so once done it signals again, unless someone else
    // listens too and has taken over what SIGTERM does.
    process.once('SIGTERM', () => {
      cleanUp()
      if (process.listenerCount('SIGTERM') === 0) process.kill(process.pid, 'SIGTERM')
    })
  }
  return entries
}

// ── the server ───────────────────────────────────────────────────────────────────────────

export class RedisProcess {
  readonly host = HOST
  #child: ChildProcess | null = null
  #log = ''
  #frozen = false
  #stopped = false
  readonly #entry: Entry

  private constructor(
    /** The client port (the TLS port with `tls`). Kept across `restart()`. */
    readonly port: number,
    /** The cluster bus port (cluster mode only), also kept across `restart()`. */
    readonly clusterPort: number | null,
    /** The temp dir: `--dir`, the AOF, `nodes.conf`, the certificates. */
    readonly dir: string,
    readonly options: Readonly<RedisProcessOptions>,
  ) {
    this.#entry = { pid: undefined, dir }
  }

  /**
   * Starts a server on fresh ports in a fresh temp dir; resolves once it accepts
   * connections, rejects with its log if it exits first. Ports are picked right before
   * the spawn; if one was taken meanwhile ("Address already in use"), it tries again on
   * others (twice), since nothing else can be done about that race.
   */
  static async start(options: RedisProcessOptions = {}): Promise<RedisProcess> {
    const dir = await mkdtemp(join(tmpdir(), 'rxf-redis-'))
    const entries = registry()
    try {
      if (options.tls) await makeCertificates(dir)
      for (let attempt = 1; ; attempt++) {
        const [port, clusterPort] = await freePorts(options.cluster ? 2 : 1)
        const server = new RedisProcess(
          port as number,
          options.cluster ? (clusterPort as number) : null,
          dir,
          options,
        )
        entries.add(server.#entry)
        try {
          await server.#spawn()
          return server
        } catch (error) {
          entries.delete(server.#entry)
          if (attempt < 3 && server.#log.includes('Address already in use')) continue
          throw error
        }
      }
    } catch (error) {
      await rm(dir, { recursive: true, force: true })
      throw error
    }
  }

  /** The running process's PID (undefined when it is not running). */
  get pid(): number | undefined {
    return this.running ? this.#child?.pid : undefined
  }

  get running(): boolean {
    const child = this.#child
    return child !== null && child.exitCode === null && child.signalCode === null
  }

  /** Stopped by SIGSTOP (`freeze()`): connections are accepted by the kernel, never answered. */
  get frozen(): boolean {
    return this.#frozen
  }

  /** Everything the server logged (its last 64 KiB), across restarts. */
  get log(): string {
    return this.#log
  }

  /** The CA that signed the server's certificate (`tls` only). */
  get caFile(): string | undefined {
    return this.options.tls ? join(this.dir, 'ca.crt') : undefined
  }

  /**
   * The credentials a client should use: the first ACL user, else the `default` user's
   * `requirePass`, else none.
   */
  get credentials(): { username?: string; password: string } | undefined {
    const user = this.options.aclUsers?.[0]
    if (user !== undefined) return { username: user.name, password: user.password }
    if (this.options.requirePass !== undefined) return { password: this.options.requirePass }
    return undefined
  }

  /** `redis://` or `rediss://`, with `user:password@` when there are credentials. */
  get url(): string {
    return this.#url(false)
  }

  /** `url` with the password replaced by `***`: for logs and assertion messages. */
  get redactedUrl(): string {
    return this.#url(true)
  }

  /**
   * ioredis options for this server: host, port, credentials and, with TLS, the CA.
   * (A `rediss://` url alone does not carry the CA, and ours is self-signed.)
   */
  clientOptions(): RedisOptions {
    const credentials = this.credentials
    const caFile = this.caFile
    return {
      host: HOST,
      port: this.port,
      ...(credentials?.username !== undefined ? { username: credentials.username } : {}),
      ...(credentials !== undefined ? { password: credentials.password } : {}),
      ...(caFile !== undefined ? { tls: { ca: readFileSync(caFile) } } : {}),
    }
  }

  /**
   * A connected ioredis client on this server, with an 'error' listener (a test that
   * kills the server must not get an unhandled error event). The caller disconnects it.
   */
  async client(options: RedisOptions = {}): Promise<Redis> {
    const redis = new Redis({ ...this.clientOptions(), lazyConnect: true, ...options })
    redis.on('error', () => {})
    try {
      await redis.connect()
    } catch (error) {
      redis.disconnect()
      throw error
    }
    return redis
  }

  /**
   * `fn` on a short-lived connection that gives up at once (no retries, no offline queue,
   * 2 s to connect or answer): an admin probe must fail fast against a dead or frozen
   * server, not hang. The connection is closed whatever `fn` does.
   */
  async withClient<T>(fn: (redis: Redis) => Promise<T>): Promise<T> {
    const redis = await this.client({
      connectTimeout: 2000,
      commandTimeout: 2000,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    })
    try {
      return await fn(redis)
    } finally {
      redis.disconnect()
    }
  }

  /** One command on a short-lived connection (see `withClient`). */
  call(command: string, ...args: (string | number)[]): Promise<unknown> {
    return this.withClient((redis) => redis.call(command, ...args))
  }

  /** `INFO [section]`, as field → value. */
  async info(section?: string): Promise<Record<string, string>> {
    return parseInfo(String(await this.call('INFO', ...(section ? [section] : []))))
  }

  /**
   * Sends `signal` to the PID and awaits the exit. SIGKILL (the default) is a crash: no
   * shutdown, no final fsync. SIGTERM is a clean shutdown. A frozen server is thawed
   * first, except for SIGKILL, which needs no thawing.
   */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.#child
    if (child === null || !this.running || child.pid === undefined) return
    const exited = once(child, 'exit')
    process.kill(child.pid, signal)
    if (this.#frozen && signal !== 'SIGKILL') process.kill(child.pid, 'SIGCONT')
    await exited
    this.#frozen = false
  }

  /** SIGSTOP: the server hangs with every connection open (the kernel still accepts new ones). */
  freeze(): void {
    const pid = this.pid
    if (pid === undefined) throw new Error(`redis-server on port ${this.port} is not running`)
    process.kill(pid, 'SIGSTOP')
    this.#frozen = true
  }

  /** SIGCONT: the server answers again, everything queued meanwhile included. */
  thaw(): void {
    const pid = this.pid
    if (pid === undefined || !this.#frozen) return
    process.kill(pid, 'SIGCONT')
    this.#frozen = false
  }

  /**
   * Starts the server again on the same port(s) and dir (killing it first with SIGKILL if
   * it still runs): an AOF or a cluster's `nodes.conf` is read back, as after a crash and
   * a supervisor's restart.
   */
  async restart(): Promise<void> {
    if (this.#stopped) throw new Error(`redis-server on port ${this.port} was stopped for good`)
    await this.kill('SIGKILL')
    registry().add(this.#entry)
    // The dir may have been emptied meanwhile (OwnRedis removes it on every stop).
    await mkdir(this.dir, { recursive: true })
    await this.#spawn()
  }

  /** Kills the server (SIGKILL) and removes its dir. Idempotent. */
  async stop(): Promise<void> {
    this.#stopped = true
    this.thaw()
    await this.kill('SIGKILL')
    registry().delete(this.#entry)
    await rm(this.dir, { recursive: true, force: true })
  }

  #url(redact: boolean): string {
    const scheme = this.options.tls ? 'rediss' : 'redis'
    const credentials = this.credentials
    const auth =
      credentials === undefined
        ? ''
        : `${encodeURIComponent(credentials.username ?? '')}:${
            redact ? '***' : encodeURIComponent(credentials.password)
          }@`
    return `${scheme}://${auth}${HOST}:${this.port}`
  }

  #args(): string[] {
    const o = this.options
    const args = ['--bind', HOST, '--dir', this.dir, '--daemonize', 'no', '--loglevel', 'notice']
    // No RDB unless asked: a kill must lose exactly what the AOF (if any) does not keep.
    args.push('--save', o.save ?? '')
    args.push('--appendonly', o.appendonly ? 'yes' : 'no')
    if (o.appendonly) args.push('--appendfsync', o.appendfsync ?? 'everysec')
    // DEBUG SLEEP / DEBUG SEGFAULT are faults too; 'local' allows them from loopback only.
    args.push('--enable-debug-command', 'local')
    if (o.tls) {
      args.push('--port', '0', '--tls-port', String(this.port))
      args.push('--tls-cert-file', join(this.dir, 'server.crt'))
      args.push('--tls-key-file', join(this.dir, 'server.key'))
      args.push('--tls-ca-cert-file', join(this.dir, 'ca.crt'))
      args.push('--tls-auth-clients', 'no')
    } else {
      args.push('--port', String(this.port))
    }
    if (o.cluster) {
      args.push('--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf')
      args.push('--cluster-node-timeout', String(o.clusterNodeTimeoutMs ?? 1000))
      // An explicit bus port (Redis 7): the default port + 10000 may be past 65535 for a
      // port from the ephemeral range, or taken.
      args.push('--cluster-port', String(this.clusterPort))
      if (o.tls) args.push('--tls-cluster', 'yes', '--tls-replication', 'yes')
    }
    if (o.requirePass !== undefined) args.push('--requirepass', o.requirePass)
    // Each word of an ACL rule is its own argv: redis-server quotes every argument after
    // an option, so "alice on >pw" as one argument would be a user named that.
    for (const user of o.aclUsers ?? []) {
      args.push('--user', user.name, 'reset', 'on', `>${user.password}`, '~*', '&*', '+@all')
    }
    if ((o.aclUsers?.length ?? 0) > 0 && o.requirePass === undefined) {
      args.push('--user', 'default', 'off')
    }
    // A replica (cluster failover tests) must authenticate to its master like a client.
    const credentials = this.credentials
    if (credentials?.username !== undefined) args.push('--masteruser', credentials.username)
    if (credentials !== undefined) args.push('--masterauth', credentials.password)
    args.push(...(o.extraArgs ?? []))
    return args
  }

  /** Spawns the process; resolves on "Ready to accept connections", rejects on exit. */
  async #spawn(): Promise<void> {
    if (this.running) throw new Error(`redis-server on port ${this.port} is already running`)
    if (this.#log !== '') this.#log += `\n---- restart on port ${this.port} ----\n`
    const child = spawn('redis-server', this.#args(), { stdio: ['ignore', 'pipe', 'pipe'] })
    this.#child = child
    this.#frozen = false
    this.#entry.pid = child.pid
    child.once('exit', () => {
      if (this.#entry.pid === child.pid) this.#entry.pid = undefined
    })
    // What this spawn logged: a restart must not take the previous run's READY for its own.
    let fresh = ''
    let waiting: ((chunk: string) => void) | null = null
    const onOutput = (chunk: Buffer) => {
      const text = chunk.toString()
      this.#log = (this.#log + text).slice(-LOG_LIMIT)
      waiting?.(text)
    }
    // Both pipes are drained for the whole life of the process: a full pipe would block it.
    child.stdout?.on('data', onOutput)
    child.stderr?.on('data', onOutput)
    const timeoutMs = this.options.startTimeoutMs ?? 10_000
    await new Promise<void>((resolve, reject) => {
      const settle = (error?: Error) => {
        waiting = null
        clearTimeout(timer)
        child.off('exit', onExit)
        child.off('error', onError)
        if (error) reject(error)
        else resolve()
      }
      const failure = (why: string) => {
        let hint = ''
        if (this.options.tls && /tls|Bad directive/i.test(this.#log)) {
          hint = '\n(is this redis-server built without TLS? tls: true needs TLS support)'
        }
        return new Error(`redis-server on port ${this.port} ${why}${hint}\n${this.#log}`)
      }
      const onExit = (code: number | null, signal: NodeJS.Signals | null) =>
        settle(failure(`exited at start (code ${code}, signal ${signal})`))
      const onError = (error: Error) => settle(failure(`could not be spawned: ${error.message}`))
      const timer = setTimeout(() => {
        settle(failure(`was not ready after ${timeoutMs} ms`))
        child.kill('SIGKILL')
      }, timeoutMs)
      waiting = (text) => {
        fresh += text
        if (fresh.includes(READY)) settle()
      }
      child.once('exit', onExit)
      child.once('error', onError)
    })
  }
}

/** `INFO` / `CLUSTER INFO` text as field → value (section headers and blanks skipped). */
export function parseInfo(text: string): Record<string, string> {
  const fields: Record<string, string> = {}
  for (const line of text.split(/\r?\n/)) {
    if (line === '' || line.startsWith('#')) continue
    const colon = line.indexOf(':')
    if (colon > 0) fields[line.slice(0, colon)] = line.slice(colon + 1)
  }
  return fields
}

/**
 * A throwaway CA and a server certificate for 127.0.0.1 (SAN IP:127.0.0.1, so Node's
 * hostname check passes on the IP), valid two days. P-256 keys: RSA key generation costs
 * a noticeable part of a second on a slow machine, EC next to nothing.
 */
async function makeCertificates(dir: string): Promise<void> {
  const openssl = async (args: string[]) => {
    try {
      await execFileAsync('openssl', args, { cwd: dir })
    } catch (error) {
      const e = error as NodeJS.ErrnoException & { stderr?: string }
      if (e.code === 'ENOENT') throw new Error('tls: true needs the openssl command, not found')
      throw new Error(`openssl ${args[0]} failed: ${e.stderr ?? e.message}`)
    }
  }
  // Split on spaces: no argument below has one (the subjects are passed apart).
  const ec = '-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'
  const caExt =
    '-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign'
  await openssl([
    ...`req -x509 -days 2 ${ec} ${caExt} -keyout ca.key -out ca.crt`.split(' '),
    ...['-subj', '/CN=rx-fanout test CA'],
  ])
  await openssl([
    ...`req -new ${ec} -keyout server.key -out server.csr`.split(' '),
    ...['-subj', '/CN=127.0.0.1'],
  ])
  // clientAuth too: with tls-cluster/tls-replication a node is also a TLS client.
  await writeFile(
    join(dir, 'server.ext'),
    [
      'subjectAltName=IP:127.0.0.1',
      'basicConstraints=CA:FALSE',
      'keyUsage=critical,digitalSignature,keyEncipherment',
      'extendedKeyUsage=serverAuth,clientAuth',
      '',
    ].join('\n'),
  )
  const sign = 'x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2'
  await openssl([...sign.split(' '), '-extfile', 'server.ext', '-out', 'server.crt'])
}
