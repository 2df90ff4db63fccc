import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { EventEmitter, once } from 'node:events'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const BIN = join(ROOT, 'bin', 'rx-fanout.mjs')

/** `bin/` imports `dist/`: build it the way `npm run build` does, with this Node. */
export function buildDist(): void {
  execFileSync(
    process.execPath,
    [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'],
    { cwd: ROOT, stdio: 'pipe' },
  )
}

/** The environment of the tests' processes: no colour settings inherited from outside. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env }
  delete env.NO_COLOR
  delete env.FORCE_COLOR
  return { ...env, ...extra }
}

export interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

export interface Cli {
  child: ChildProcess
  /** Resolves when the process has exited and its output is all read. */
  done: Promise<Exit>
  /** Resolves once stderr contains `text`; rejects if the process ends first. */
  stderrIncludes(text: string): Promise<void>
}

const running = new Set<ChildProcess>()

/** Kills what a failed or timed-out test left running (call it in `afterEach`). */
export function killLeftovers(): void {
  for (const child of running) child.kill('SIGKILL')
  running.clear()
}

/** Runs `node bin/rx-fanout.mjs ...args`, as a user would. */
export function startCli(
  args: string[],
  options: { env?: NodeJS.ProcessEnv; nodeArgs?: string[] } = {},
): Cli {
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), BIN, ...args], {
    cwd: ROOT,
    env: options.env ?? cleanEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  running.add(child)
  child.once('exit', () => running.delete(child))
  let stdout = ''
  let stderr = ''
  const stderrEvents = new EventEmitter()
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk
  })
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk
    stderrEvents.emit('data')
  })
  const done = new Promise<Exit>((resolve, reject) => {
    child.once('error', reject)
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }))
  })
  return {
    child,
    done,
    stderrIncludes: (text) =>
      new Promise<void>((resolve, reject) => {
        const check = () => {
          if (!stderr.includes(text)) return
          stderrEvents.off('data', check)
          resolve()
        }
        stderrEvents.on('data', check)
        check()
        done.then(() => {
          stderrEvents.off('data', check)
          reject(new Error(`the CLI ended without printing ${JSON.stringify(text)}:\n${stderr}`))
        }, reject)
      }),
  }
}

export const runCli = (args: string[], options?: Parameters<typeof startCli>[1]) =>
  startCli(args, options).done

/** NDJSON: every line must parse; the text must end with a newline (no partial line). */
export function ndjson(text: string): Record<string, unknown>[] {
  if (text === '') return []
  if (!text.endsWith('\n')) throw new Error(`output ends in a partial line: ${text.slice(-80)}`)
  return text
    .slice(0, -1)
    .split('\n')
    .map((line) => JSON.parse(line) as Record<string, unknown>)
}

export interface TestServer {
  /** `http://127.0.0.1:PORT` */
  readonly url: string
  /** Request paths in arrival order. */
  readonly paths: string[]
  /** Resolves when the server has seen at least `n` requests. */
  requests(n: number): Promise<void>
  close(): Promise<void>
}

/** A node:http server on an ephemeral port of 127.0.0.1 that counts what it sees. */
export async function startServer(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<TestServer> {
  const paths: string[] = []
  const seen = new EventEmitter()
  const server = createServer((req, res) => {
    paths.push(req.url ?? '')
    seen.emit('request')
    handler(req, res)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    paths,
    requests: (n) =>
      new Promise<void>((resolve) => {
        const check = () => {
          if (paths.length < n) return
          seen.off('request', check)
          resolve()
        }
        seen.on('request', check)
        check()
      }),
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()))
        server.closeAllConnections()
      }),
  }
}

/** The id in `/users/{id}/widgets`. */
export function userId(path: string): string | undefined {
  const match = /^\/users\/([^/]+)\/widgets$/.exec(path)
  return match ? decodeURIComponent(match[1] as string) : undefined
}

/** Resolves after the I/O callbacks already due have run (a poll phase, then check). */
export const afterPendingIo = () => new Promise<void>((resolve) => setImmediate(resolve))
