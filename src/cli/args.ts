/** A usage error: exit code 2, with this message. */
export class UsageError extends Error {
  override readonly name = 'UsageError'
}

/** `1-300`, `1,2,7-9`, `alice,bob` → ids (numbers where they are integers). */
export function parseIds(spec: string): (number | string)[] {
  const ids: (number | string)[] = []
  for (const part of spec.split(',').map((s) => s.trim())) {
    if (part === '') throw new UsageError(`--ids: empty item in ${JSON.stringify(spec)}`)
    // Plain integers; a zero-padded id (007) stays a string, as it was written.
    const range = /^(0|[1-9]\d*)-(0|[1-9]\d*)$/.exec(part)
    if (range) {
      const from = Number(range[1])
      const to = Number(range[2])
      if (to < from) throw new UsageError(`--ids: range ${part} runs backwards`)
      if (to - from > 10_000_000) throw new UsageError(`--ids: range ${part} is too large`)
      for (let id = from; id <= to; id++) ids.push(id)
    } else ids.push(/^(0|[1-9]\d*)$/.test(part) ? Number(part) : part)
  }
  return ids
}

export function positiveNumber(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback
  const n = value === 'Infinity' ? Number.POSITIVE_INFINITY : Number(value)
  if (!(n > 0)) throw new UsageError(`${name} must be a number > 0, got ${JSON.stringify(value)}`)
  return n
}

export function positiveInteger(name: string, value: string | undefined, fallback: number): number {
  const n = positiveNumber(name, value, fallback)
  if (!Number.isInteger(n))
    throw new UsageError(`${name} must be an integer > 0, got ${JSON.stringify(value)}`)
  return n
}

export const HELP = {
  main: `rx-fanout — rate-limited fan-out from the command line

Usage:
  rx-fanout fetch --url 'http://host:port/users/{id}/widgets' --ids 1-300 [options]
  rx-fanout demo [--ids 1-300] [--rate 10] [--burst 20] [--concurrency 8] [--plot FILE.svg]
  rx-fanout fetch … --redis redis://127.0.0.1:6379 --key NAME    (one quota for many processes)
  rx-fanout <command> --help

Results are NDJSON on stdout (or --out FILE); progress and the summary go to stderr.
Exit codes: 0 all fetched, 1 a job failed, 2 bad usage, 130 interrupted.`,
  fetch: `rx-fanout fetch — fetch one resource per id, rate-limited

Usage:
  rx-fanout fetch --url 'http://host:port/users/{id}/widgets' --ids 1-300 [options]

Options:
  --url URL          template with {id} (URL-encoded in)              required
  --ids LIST         ids: 1-300, 1,2,7-9, alice,bob                    required
  --rate N           requests per second                               10
  --burst N          bucket capacity                                   20
  --concurrency N    requests in flight at once                        8
  --collect          go on after a failure (failures are results too)  off: fail fast
  --out FILE         write the NDJSON results to FILE                  stdout
  --retries N        attempts per id in all                            3
  --timeout-ms N     connect/headers/body timeout                      10000
  --grace-ms N       on SIGINT/SIGTERM: let in-flight requests finish  2000
  --redis URL        share the quota with other processes: redis://host:port
  --key NAME         the shared quota's name in Redis (with --redis)
  --quiet            no progress lines
  --help             this text

With --redis, the rate and burst are one bucket for every process using the same --key,
and --concurrency is one cap on requests in flight across them (leases that expire if a
process dies). NO_COLOR is respected. On SIGINT or SIGTERM no new request starts; in-flight ones
get --grace-ms to finish, then are aborted; the output is flushed; exit 130.`,
  demo: `rx-fanout demo — fetch against an embedded API that enforces its quota

Starts a real HTTP server on 127.0.0.1 that allows 10 requests/s with bursts of 20 and
8 in flight, answering 429 to any excess by its own accounting; runs fetch against it;
prints the server's verdict: 429s (must be 0), the most requests it saw in flight, and
the bucket capacity the arrival schedule needs.

Usage:
  rx-fanout demo [options]

Options:
  --ids LIST         ids to fetch                                      1-300
  --rate N           client's requests per second                      10
  --burst N          client's bucket capacity                          20
  --concurrency N    client's requests in flight                       8
  --fail ID[,ID…]    ids the server answers 500 (to see fail-fast)     none
  --collect          go on after a failure                             off
  --out FILE         write the NDJSON results to FILE                  stdout
  --plot FILE.svg    write a timeline of starts vs the envelope and in-flight
  --quiet            no progress lines
  --help             this text`,
}
