import { createWriteStream, openSync, type WriteStream } from 'node:fs'
import { Subject } from 'rxjs'
import { FanOutClient, type Id } from '../http/index.js'
import type { Fetched } from '../http/options.js'
import type { Result } from '../types.js'
import { UsageError } from './args.js'

export interface RunOptions {
  url: string
  ids: Id[]
  rate: number
  burst: number
  concurrency: number
  collect: boolean
  out: string | undefined
  retries: number
  timeoutMs: number
  graceMs: number
  quiet: boolean
  /** Share the quota with other processes through Redis. */
  redis?: { url: string; key: string } | undefined
}

export interface RunSummary {
  fetched: number
  failed: number
  retries: number
  elapsedMs: number
  achievedRate: number
  p50: number
  p99: number
  interrupted: boolean
  firstError: unknown
}

async function sharedQuota(options: RunOptions) {
  const { url, key } = options.redis as { url: string; key: string }
  const { RedisTokenBucket, RedisSemaphore } = await import('../redis/index.js')
  const bucket = new RedisTokenBucket({ redis: url, key, rate: options.rate, burst: options.burst })
  const semaphore = new RedisSemaphore({ redis: url, key, limit: options.concurrency })
  return {
    bucket,
    semaphore,
    close: () => Promise.all([bucket.close(), semaphore.close()]),
  }
}

function percentile(sorted: number[], q: number): number {
  return sorted.length === 0 ? Number.NaN : (sorted[Math.ceil(q * sorted.length) - 1] as number)
}

function splitUrl(url: string): { baseUrl: string; path: string } {
  if (!url.includes('{id}'))
    throw new UsageError(`--url must contain {id}, got ${JSON.stringify(url)}`)
  let probe: URL
  try {
    probe = new URL(url.replaceAll('{id}', 'ID'))
  } catch {
    throw new UsageError(`--url is not a valid URL: ${JSON.stringify(url)}`)
  }
  if (probe.protocol !== 'http:' && probe.protocol !== 'https:') {
    throw new UsageError(`--url must be http(s), got ${JSON.stringify(url)}`)
  }
  return { baseUrl: probe.origin, path: url.slice(probe.origin.length) }
}

// Opened before any request: a path that can't be written is bad usage, found up front.
function openOut(path: string): WriteStream {
  let fd: number
  try {
    fd = openSync(path, 'w')
  } catch (error) {
    throw new UsageError(
      `--out ${JSON.stringify(path)} can't be written: ${(error as Error).message}`,
    )
  }
  return createWriteStream('', { fd })
}

function toLine(result: Result<Id, Fetched>): string {
  if (result.ok) {
    const { id, status, body, attempts, latencyMs } = result.value
    const text = Buffer.from(body).toString('utf8')
    let parsed: unknown
    try {
      parsed = JSON.parse(text)
    } catch {
      parsed = undefined
    }
    const payload =
      parsed === undefined ? { bodyBase64: Buffer.from(body).toString('base64') } : { body: parsed }
    return JSON.stringify({
      id,
      ok: true,
      status,
      attempts,
      latencyMs: Math.round(latencyMs),
      ...payload,
    })
  }
  const error = result.error as { name?: string; code?: string; message?: string; status?: number }
  return JSON.stringify({
    id: result.job.value,
    ok: false,
    attempts: result.attempts,
    error: {
      name: error?.name,
      code: error?.code,
      status: error?.status,
      message: error?.message ?? String(error),
    },
  })
}

/** Runs a fetch: results to the output, progress and the summary to stderr. */
export async function runFetch(
  options: RunOptions,
  log: (line: string) => void,
): Promise<RunSummary> {
  const { baseUrl, path } = splitUrl(options.url)
  // The output first: a path that can't be written is found before anything connects.
  const out: WriteStream | NodeJS.WriteStream = options.out ? openOut(options.out) : process.stdout
  // Loaded only when asked for: without --redis, ioredis is never imported.
  let shared: Awaited<ReturnType<typeof sharedQuota>> | null = null
  let client: FanOutClient
  try {
    shared = options.redis ? await sharedQuota(options) : null
    client = new FanOutClient({
      baseUrl,
      path,
      rate: options.rate,
      burst: options.burst,
      maxInFlight: options.concurrency,
      timeoutMs: options.timeoutMs,
      retry: { attempts: options.retries },
      ...(shared ? { limiter: shared.bucket, permits: shared.semaphore } : {}),
    })
  } catch (error) {
    // Nothing may stay open, or the process would not exit.
    await shared?.close()
    if (options.out) (out as WriteStream).destroy()
    throw error
  }
  const total = new Set(options.ids).size
  const latencies: number[] = []
  let fetched = 0
  let failed = 0
  let retries = 0
  let interrupted = false
  let firstError: unknown
  const started = performance.now()
  const drain = new Subject<void>()
  const hardStop = new AbortController()

  const tty = process.stderr.isTTY && !options.quiet
  const color = tty && !process.env.NO_COLOR
  const progress = () => {
    const done = fetched + failed
    const seconds = (performance.now() - started) / 1000
    const rate = seconds > 0 ? done / seconds : 0
    if (tty) {
      const width = 30
      const filled = total === 0 ? width : Math.round((done / total) * width)
      const bar = '#'.repeat(filled) + '-'.repeat(width - filled)
      const failedText =
        color && failed > 0 ? `\u001b[31m${failed} failed\u001b[0m` : `${failed} failed`
      process.stderr.write(`\r[${bar}] ${done}/${total}  ${rate.toFixed(1)}/s  ${failedText}  `)
    } else if (!options.quiet) {
      log(`progress: ${done}/${total} done, ${failed} failed, ${rate.toFixed(1)}/s`)
    }
  }
  const ticker = setInterval(progress, tty ? 200 : 2000)

  const onSignal = () => {
    if (interrupted) {
      hardStop.abort(new Error('interrupted twice'))
      return
    }
    interrupted = true
    log(`\ninterrupted: no new requests; ${options.graceMs} ms for the ones in flight`)
    drain.next()
    setTimeout(() => hardStop.abort(new Error('interrupted')), options.graceMs).unref()
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)

  try {
    await new Promise<void>((resolve) => {
      client
        .fetchEach$(options.ids, {
          errors: options.collect ? 'collect' : 'fail-fast',
          signal: hardStop.signal,
          drain,
        })
        .subscribe({
          next: (result) => {
            retries += result.attempts - 1
            if (result.ok) {
              fetched++
              latencies.push(result.value.latencyMs)
            } else {
              failed++
              firstError ??= result.error
            }
            out.write(`${toLine(result)}\n`)
          },
          error: (error: unknown) => {
            failed++
            firstError ??= error
            resolve()
          },
          complete: resolve,
        })
    })
  } finally {
    clearInterval(ticker)
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    if (tty) progress()
    if (tty) process.stderr.write('\n')
    await client.destroy()
    await shared?.close()
    if (options.out) await new Promise<void>((resolve) => (out as WriteStream).end(resolve))
  }
  const elapsedMs = performance.now() - started
  latencies.sort((a, b) => a - b)
  return {
    fetched,
    failed,
    retries,
    elapsedMs,
    achievedRate: elapsedMs > 0 ? ((fetched + failed) * 1000) / elapsedMs : 0,
    p50: percentile(latencies, 0.5),
    p99: percentile(latencies, 0.99),
    interrupted,
    firstError,
  }
}

export function describeSummary(s: RunSummary): string {
  const ms = (n: number) => (Number.isNaN(n) ? '–' : `${Math.round(n)} ms`)
  return (
    `summary: ${s.fetched} fetched, ${s.failed} failed, ${s.retries} retries, ` +
    `${(s.elapsedMs / 1000).toFixed(1)} s, ${s.achievedRate.toFixed(2)}/s achieved, ` +
    `latency p50 ${ms(s.p50)}, p99 ${ms(s.p99)}`
  )
}
