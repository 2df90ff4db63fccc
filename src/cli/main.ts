import { writeFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { HELP, parseIds, positiveInteger, positiveNumber, UsageError } from './args.js'
import { startDemoServer } from './demoServer.js'
import { plotSvg } from './plot.js'
import { describeSummary, type RunOptions, runFetch } from './run.js'

const log = (line: string) => process.stderr.write(`${line}\n`)

const common = {
  ids: { type: 'string' },
  rate: { type: 'string' },
  burst: { type: 'string' },
  concurrency: { type: 'string' },
  collect: { type: 'boolean' },
  out: { type: 'string' },
  retries: { type: 'string' },
  'timeout-ms': { type: 'string' },
  'grace-ms': { type: 'string' },
  quiet: { type: 'boolean' },
  redis: { type: 'string' },
  key: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const

function runOptions(
  values: Record<string, string | boolean | undefined>,
  url: string,
  ids: string,
): RunOptions {
  const str = (k: string) => values[k] as string | undefined
  return {
    url,
    ids: parseIds(ids),
    rate: positiveNumber('--rate', str('rate'), 10),
    burst: positiveInteger('--burst', str('burst'), 20),
    concurrency: positiveInteger('--concurrency', str('concurrency'), 8),
    collect: values.collect === true,
    out: str('out'),
    retries: positiveInteger('--retries', str('retries'), 3),
    timeoutMs: positiveInteger('--timeout-ms', str('timeout-ms'), 10_000),
    graceMs: positiveInteger('--grace-ms', str('grace-ms'), 2_000),
    quiet: values.quiet === true,
    redis: redisOption(str('redis'), str('key')),
  }
}

function redisOption(url: string | undefined, key: string | undefined) {
  if (url === undefined && key === undefined) return undefined
  if (url === undefined || !/^rediss?:\/\//.test(url)) {
    throw new UsageError(`--redis must be a redis:// URL, got ${JSON.stringify(url)}`)
  }
  if (!key) throw new UsageError('--key NAME is required with --redis')
  return { url, key }
}

function reportFirstError(summary: { firstError: unknown }, collect: boolean): void {
  if (summary.firstError === undefined || collect) return
  const error = summary.firstError as { message?: string; code?: string }
  log(`first error${error.code ? ` (${error.code})` : ''}: ${error.message ?? String(error)}`)
}

function exitCode(summary: { failed: number; interrupted: boolean }): number {
  if (summary.interrupted) return 130
  return summary.failed > 0 ? 1 : 0
}

async function fetchCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { ...common, url: { type: 'string' } },
    strict: true,
  })
  if (values.help) {
    process.stdout.write(`${HELP.fetch}\n`)
    return 0
  }
  if (!values.url) throw new UsageError('--url is required')
  if (!values.ids) throw new UsageError('--ids is required')
  const options = runOptions(values, values.url, values.ids)
  const summary = await runFetch(options, log)
  log(describeSummary(summary))
  if (summary.firstError !== undefined && !options.collect)
    log(`first error: ${String((summary.firstError as Error)?.message ?? summary.firstError)}`)
  return exitCode(summary)
}

async function demoCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { ...common, plot: { type: 'string' }, fail: { type: 'string' } },
    strict: true,
  })
  if (values.help) {
    process.stdout.write(`${HELP.demo}\n`)
    return 0
  }
  const failIds = new Set((values.fail ?? '').split(',').filter((s) => s !== ''))
  const server = await startDemoServer({ failIds })
  const { rate, burst, maxInFlight, jitterMs } = server.options
  try {
    const options = runOptions(values, `${server.url}/users/{id}/widgets`, values.ids ?? '1-300')
    log(
      `demo: embedded API at ${server.url} allows ${rate}/s, burst ${burst}, ${maxInFlight} in flight; ` +
        `fetching ${options.ids.length} ids at ${options.rate}/s, burst ${options.burst}, ${options.concurrency} in flight`,
    )
    const summary = await runFetch(options, log)
    log(describeSummary(summary))
    reportFirstError(summary, options.collect)
    const verdict = server.verdict()
    const mark = (ok: boolean) => (ok ? 'ok' : 'NOT OK')
    log(
      `server verdict (its own accounting): ${verdict.requests} requests, ` +
        `${verdict.rejected429} answered 429 (${mark(verdict.rejected429 === 0)}), ` +
        `max ${verdict.maxInFlight} in flight of ${maxInFlight} (${mark(verdict.maxInFlight <= maxInFlight)}), ` +
        `arrival schedule needs a bucket of ${verdict.requiredCapacity.toFixed(2)} at ${rate}/s ` +
        `(allowed ${burst}, ${jitterMs} ms jitter allowance)`,
    )
    if (values.plot) {
      writeFileSync(values.plot, plotSvg(verdict, { rate, burst, maxInFlight }))
      log(`plot: ${values.plot}`)
    }
    const code = exitCode(summary)
    return code === 0 && !verdict.ok ? 1 : code
  } finally {
    await server.close()
  }
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv
  try {
    switch (command) {
      case 'fetch':
        return await fetchCommand(rest)
      case 'demo':
        return await demoCommand(rest)
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(`${HELP.main}\n`)
        return command === undefined ? 2 : 0
      default:
        throw new UsageError(`unknown command ${JSON.stringify(command)}`)
    }
  } catch (error) {
    const usage =
      error instanceof UsageError ||
      (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') ||
      (error as { code?: string }).code === 'RX_FANOUT_INVALID_OPTION'
    if (usage) {
      log(`rx-fanout: ${(error as Error).message}\nTry 'rx-fanout --help'.`)
      return 2
    }
    throw error
  }
}
