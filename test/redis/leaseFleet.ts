/**
 * What the lease tests share: worker processes running test/redis/leaseWorker.ts (spawned,
 * told what to do on stdin, heard on stdout), the RecordingServer's answer delays, and the
 * in-flight figures taken from the server's own timeline.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { EventEmitter, once } from 'node:events'
import { fileURLToPath } from 'node:url'
import type { RecordingServer } from './faults/RecordingServer.js'
import type { LeaseWorkerConfig } from './leaseWorker.js'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const WORKER = fileURLToPath(new URL('./leaseWorker.ts', import.meta.url))

export type LeaseMessage =
  | { type: 'ready' }
  | { type: 'attempt'; id: number; attempt: number; at: number }
  | { type: 'aborted'; id: number; attempt: number; at: number; code?: string }
  | { type: 'result'; id: number; ok: boolean; attempts: number; code?: string }
  | { type: 'lease'; id: string; sentAt: number }
  | { type: 'renewed'; ids: string[]; sentAt: number }
  | { type: 'gone'; id: string }
  | { type: 'stalled'; deadline: number; from: number; to: number }
  | { type: 'log'; msg: string; code?: string }
  | { type: 'end'; count: number }
  | { type: 'error'; message: string; code?: string }

type Of<K extends LeaseMessage['type']> = Extract<LeaseMessage, { type: K }>

/** One worker process and everything it said. */
export class LeaseWorker extends EventEmitter {
  readonly messages: LeaseMessage[] = []
  stderr = ''
  readonly exited: Promise<number | null>
  readonly child: ChildProcess

  constructor(readonly config: LeaseWorkerConfig) {
    super()
    this.child = spawn(process.execPath, ['--import', 'tsx', WORKER, JSON.stringify(config)], {
      cwd: ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    this.exited = once(this.child, 'exit').then(([code]) => code as number | null)
    let buffer = ''
    this.child.stdout?.on('data', (chunk: Buffer) => {
      buffer += chunk.toString()
      for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
        const message = JSON.parse(buffer.slice(0, nl)) as LeaseMessage
        buffer = buffer.slice(nl + 1)
        this.messages.push(message)
        this.emit('message', message)
      }
    })
    this.child.stderr?.on('data', (chunk: Buffer) => {
      this.stderr += chunk.toString()
    })
  }

  get name(): string {
    return this.config.name
  }

  /** Resolves with the first message (past or future) of this type that matches. */
  when<K extends LeaseMessage['type']>(
    type: K,
    match: (message: Of<K>) => boolean = () => true,
    timeoutMs = 15_000,
  ): Promise<Of<K>> {
    const hit = (m: LeaseMessage): m is Of<K> => m.type === type && match(m as Of<K>)
    const seen = this.messages.find(hit)
    if (seen) return Promise.resolve(seen)
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('message', onMessage)
        reject(new Error(`${this.name}: no ${type} message within ${timeoutMs} ms`))
      }, timeoutMs)
      const onMessage = (message: LeaseMessage) => {
        if (!hit(message)) return
        clearTimeout(timer)
        this.off('message', onMessage)
        resolve(message)
      }
      this.on('message', onMessage)
      this.exited.then(() => {
        if (!this.listeners('message').includes(onMessage)) return
        clearTimeout(timer)
        this.off('message', onMessage)
        reject(new Error(`${this.name} exited first; stderr:\n${this.stderr}`))
      })
    })
  }

  all<K extends LeaseMessage['type']>(type: K): Of<K>[] {
    return this.messages.filter((m): m is Of<K> => m.type === type)
  }

  command(line: string): void {
    this.child.stdin?.write(`${line}\n`)
  }

  /** Lease ids this process held (confirmed, not given back) as of message index `upTo`. */
  leasesHeld(upTo = this.messages.length): string[] {
    const held = new Set<string>()
    for (const m of this.messages.slice(0, upTo)) {
      if (m.type === 'lease') held.add(m.id)
      else if (m.type === 'gone') held.delete(m.id)
    }
    return [...held]
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL')
  }
}

/** Spawns the workers and resolves once every one has warmed up. */
export async function startWorkers(configs: LeaseWorkerConfig[]): Promise<LeaseWorker[]> {
  const workers = configs.map((config) => new LeaseWorker(config))
  try {
    await Promise.all(workers.map((worker) => worker.when('ready', undefined, 20_000)))
  } catch (error) {
    for (const worker of workers) worker.kill()
    throw error
  }
  return workers
}

/** Kills whatever still runs and waits for the exits. */
export async function stopWorkers(workers: LeaseWorker[]): Promise<void> {
  for (const worker of workers) worker.kill()
  await Promise.all(workers.map((worker) => worker.exited))
}

/**
 * The RecordingServer's delay for a job request `/w/<name>/<id>`: `lo`–`hi` ms, spread
 * over the ids (fixed per request, so a retry is as slow as its first try). Anything else
 * (the warm-up) is answered at once.
 */
export function jobDelay(lo: number, hi: number): (path: string) => number {
  return (path) => {
    const match = /^\/w\/w(\d+)\/(\d+)$/.exec(path)
    if (match === null) return 0
    const spread = (Number(match[2]) * 7919 + Number(match[1]) * 104_729) % (hi - lo + 1)
    return lo + spread
  }
}

export const isJob = (path: string) => path.startsWith('/w/')

/**
 * Job requests in flight at the server: the most at once over the whole run (or from
 * `from`, epochNow() ms), from the server's timeline (warm-up requests left out).
 */
export function jobsInFlight(
  server: RecordingServer,
  from = Number.NEGATIVE_INFINITY,
): { max: number; now: number } {
  let now = 0
  let max = 0
  for (const change of server.timeline) {
    if (!isJob(server.requests[change.seq]?.path ?? '')) continue
    now += change.change
    if (change.at >= from && now > max) max = now
  }
  return { max, now }
}

/** Job requests that arrived at the server at or after `from` (epochNow() ms). */
export function jobArrivals(server: RecordingServer, from = Number.NEGATIVE_INFINITY): number {
  return server.requests.filter((r) => isJob(r.path) && r.at >= from).length
}
