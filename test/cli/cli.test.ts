/**
 * The CLI as users run it: `node bin/rx-fanout.mjs …` in a child process, over the built
 * `dist/` (built once here), against the embedded demo API or a node:http server of the
 * test's own on 127.0.0.1.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import type { ServerResponse } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  afterPendingIo,
  buildDist,
  cleanEnv,
  type Exit,
  killLeftovers,
  ndjson,
  runCli,
  startCli,
  startServer,
  userId,
} from './helpers.js'

const ESC = '\u001b['
let dir: string

beforeAll(() => {
  buildDist()
  dir = mkdtempSync(join(tmpdir(), 'rx-fanout-cli-'))
}, 60_000)

afterEach(killLeftovers)

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true })
})

const range = (from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => from + i)
const sortedIds = (lines: Record<string, unknown>[]) =>
  lines.map((line) => line.id as number).sort((a, b) => a - b)

/** `max N in flight of 8` from the demo's server verdict. */
function verdictOf(stderr: string): { requests: number; rejected: number; maxInFlight: number } {
  const match =
    /server verdict .*?: (\d+) requests, (\d+) answered 429 .*?max (\d+) in flight of 8/.exec(
      stderr,
    )
  if (!match) throw new Error(`no server verdict in stderr:\n${stderr}`)
  return { requests: Number(match[1]), rejected: Number(match[2]), maxInFlight: Number(match[3]) }
}

describe('rx-fanout demo', () => {
  it('fetches every id once, within the server’s quota', async () => {
    const run = await runCli(['demo', '--ids', '1-40', '--quiet'])
    expect(run.stderr).not.toContain('rx-fanout:')
    expect(run.code, run.stderr).toBe(0)
    const lines = ndjson(run.stdout)
    expect(lines).toHaveLength(40)
    for (const line of lines) {
      expect(line).toMatchObject({ ok: true, status: 200, attempts: 1 })
      expect(line.body).toMatchObject({ userId: String(line.id) })
    }
    expect(sortedIds(lines)).toEqual(range(1, 40))
    expect(run.stderr).toMatch(/^summary: 40 fetched, 0 failed, 0 retries, /m)
    const verdict = verdictOf(run.stderr)
    expect(verdict.requests).toBe(40)
    expect(verdict.rejected).toBe(0)
    expect(run.stderr).toContain('0 answered 429')
    expect(verdict.maxInFlight).toBeGreaterThanOrEqual(1)
    expect(verdict.maxInFlight).toBeLessThanOrEqual(8)
    // --quiet: no progress lines.
    expect(run.stderr).not.toContain('progress:')
  }, 30_000)

  it('fails fast: exit 1, the first error with its code, the rest never fetched', async () => {
    const run = await runCli(['demo', '--ids', '1-40', '--fail', '13', '--quiet'])
    expect(run.code, run.stderr).toBe(1)
    expect(run.stderr).toMatch(
      /^first error \(RX_FANOUT_HTTP_STATUS\): GET for id 13 answered 500/m,
    )
    const lines = ndjson(run.stdout)
    expect(lines.length).toBeLessThan(40)
    for (const line of lines) expect(line).toMatchObject({ ok: true, status: 200 })
    expect(lines.map((line) => line.id)).not.toContain(13)
    expect(new Set(lines.map((line) => line.id)).size).toBe(lines.length)
    // The server never saw the ids after the stop (10/s would need 2 s for all 40).
    expect(verdictOf(run.stderr).requests).toBeLessThan(40)
  }, 30_000)

  it('--collect: every id gets a line, failures as ok: false', async () => {
    const run = await runCli(['demo', '--ids', '1-30', '--fail', '3,7', '--collect', '--quiet'])
    expect(run.code, run.stderr).toBe(1)
    const lines = ndjson(run.stdout)
    expect(lines).toHaveLength(30)
    expect(sortedIds(lines)).toEqual(range(1, 30))
    const failed = lines.filter((line) => line.ok === false)
    expect(sortedIds(failed)).toEqual([3, 7])
    for (const line of failed) {
      expect(line.error).toMatchObject({ code: 'RX_FANOUT_HTTP_STATUS', status: 500 })
    }
    expect(run.stderr).toMatch(/^summary: 28 fetched, 2 failed, /m)
    // collect reports failures as results, not as "the first error".
    expect(run.stderr).not.toContain('first error')
  }, 30_000)

  describe('--plot FILE.svg', () => {
    let run: Exit
    let svg: string
    beforeAll(async () => {
      const file = join(dir, 'timeline.svg')
      // 12 ids: all within the burst, so the run's exit code does not hang on timing.
      run = await runCli(['demo', '--ids', '1-12', '--quiet', '--plot', file])
      svg = readFileSync(file, 'utf8')
    }, 30_000)

    it('writes a well-formed SVG titled with the request count', () => {
      expect(run.code, run.stderr).toBe(0)
      expect(run.stderr).toContain('plot: ')
      expect(svg.startsWith('<?xml')).toBe(true)
      expect(svg).toContain('<svg')
      expect(svg.trimEnd().endsWith('</svg>')).toBe(true)
      expect(wellFormed(svg)).toEqual([])
      const title = /<text [^>]*font-weight="bold">([^<]*)<\/text>/.exec(svg)?.[1]
      expect(title).toMatch(/^12 requests · 0 × 429 · max \d in flight/)
      // The arrivals are drawn: one step per request.
      expect(svg.match(/ V /g)?.length).toBeGreaterThanOrEqual(12)
    })

    // Regression: plot.ts used to draw a tick for every whole second up to ceil(lastTime),
    // so the last one landed right of the plot, past the SVG's width.
    it('draws every time-axis tick inside the picture', () => {
      const width = Number(/<svg [^>]*width="(\d+)"/.exec(svg)?.[1])
      const ticks = [...svg.matchAll(/<text x="([\d.]+)"[^>]*>(\d+)s<\/text>/g)]
      expect(ticks.length).toBeGreaterThan(0)
      for (const [, x, label] of ticks)
        expect({ label, x: Number(x) < width }).toEqual({ label, x: true })
    })
  })
})

/**
 * A minimal XML check: the declaration first, tags nest and close, no stray `<` or `&`
 * in text or attribute values. Returns the problems found.
 */
function wellFormed(xml: string): string[] {
  const problems: string[] = []
  const body = xml.replace(/^<\?xml[^?]*\?>\s*/, '')
  if (body === xml) problems.push('no XML declaration')
  const stack: string[] = []
  const token = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>|([^<]+)|(<)/g
  for (const m of body.matchAll(token)) {
    const [, close, name, attrs, selfClose, text, stray] = m
    if (stray) problems.push(`stray < at ${m.index}`)
    else if (text !== undefined) {
      if (/&(?!(amp|lt|gt|quot|apos|#\d+);)/.test(text)) problems.push(`bare & in ${text}`)
      if (stack.length === 0 && text.trim() !== '') problems.push('text outside the root')
    } else if (close) {
      if (stack.pop() !== name) problems.push(`</${name}> closes nothing open`)
    } else {
      if (/&(?!(amp|lt|gt|quot|apos|#\d+);)/.test(attrs ?? '')) problems.push(`bare & in <${name}>`)
      if (stack.length === 0 && name !== 'svg') problems.push(`root is <${name}>`)
      if (!selfClose) stack.push(name as string)
    }
  }
  if (stack.length > 0) problems.push(`unclosed: ${stack.join(' > ')}`)
  return problems
}

describe('rx-fanout fetch', () => {
  it('--out FILE: one NDJSON line per id in the file, nothing on stdout; non-JSON as base64', async () => {
    const server = await startServer((req, res) => {
      const id = Number(userId(req.url ?? ''))
      if (id % 5 === 0) {
        res.writeHead(200, { 'content-type': 'text/plain' }).end(`plain text for ${id}`)
      } else {
        res
          .writeHead(200, { 'content-type': 'application/json' })
          .end(JSON.stringify({ user: id, widgets: [id * 10] }))
      }
    })
    try {
      const out = join(dir, 'widgets.ndjson')
      const run = await runCli([
        'fetch',
        '--url',
        `${server.url}/users/{id}/widgets`,
        '--ids',
        '1-20',
        '--out',
        out,
      ])
      expect(run.code, run.stderr).toBe(0)
      expect(run.stdout).toBe('')
      expect(run.stderr).toMatch(/^summary: 20 fetched, 0 failed, /m)
      const lines = ndjson(readFileSync(out, 'utf8'))
      expect(lines).toHaveLength(20)
      expect(sortedIds(lines)).toEqual(range(1, 20))
      for (const line of lines) {
        const id = line.id as number
        expect(line).toMatchObject({ ok: true, status: 200 })
        if (id % 5 === 0) {
          expect(line).not.toHaveProperty('body')
          expect(Buffer.from(line.bodyBase64 as string, 'base64').toString()).toBe(
            `plain text for ${id}`,
          )
        } else {
          expect(line).not.toHaveProperty('bodyBase64')
          expect(line.body).toEqual({ user: id, widgets: [id * 10] })
        }
      }
      expect(server.paths.map(userId).sort((a, b) => Number(a) - Number(b))).toEqual(
        range(1, 20).map(String),
      )
    } finally {
      await server.close()
    }
  }, 30_000)

  it('exits 1 on a failure (fail-fast) and says which', async () => {
    const server = await startServer((req, res) => {
      const id = userId(req.url ?? '')
      if (id === '4') res.writeHead(404).end('no such user')
      else res.writeHead(200, { 'content-type': 'application/json' }).end('{}')
    })
    try {
      const run = await runCli([
        'fetch',
        '--url',
        `${server.url}/users/{id}/widgets`,
        '--ids',
        '1-200',
        '--rate',
        '50',
        '--burst',
        '4',
        '--concurrency',
        '1',
        '--quiet',
      ])
      expect(run.code, run.stderr).toBe(1)
      expect(run.stderr).toMatch(/first error.*GET for id 4 answered 404/)
      expect(ndjson(run.stdout).map((line) => line.id)).toEqual([1, 2, 3])
      // One at a time: nothing after id 4 was requested. 404 is not retried.
      expect(server.paths.map(userId)).toEqual(['1', '2', '3', '4'])
    } finally {
      await server.close()
    }
  }, 30_000)

  describe('SIGINT', () => {
    it('lets in-flight requests finish, starts no new one, writes whole lines, exits 130', async () => {
      // The server holds every response until released: with 8 slots held, the client
      // cannot start a 9th request unless it breaks its concurrency or, after the
      // release, ignores the interrupt. So any request past the 8th is a failure.
      const held: ServerResponse[] = []
      let released = false
      const answer = (res: ServerResponse, path: string) =>
        res
          .writeHead(200, { 'content-type': 'application/json' })
          .end(JSON.stringify({ id: userId(path), pad: 'x'.repeat(2000) }))
      const server = await startServer((req, res) => {
        if (released) answer(res, req.url ?? '')
        else held.push(res)
      })
      try {
        const cli = startCli([
          'fetch',
          '--url',
          `${server.url}/users/{id}/widgets`,
          '--ids',
          '1-500',
          '--rate',
          '20',
          '--grace-ms',
          '10000',
          '--quiet',
        ])
        await server.requests(8)
        cli.child.kill('SIGINT')
        await cli.stderrIncludes('interrupted')
        released = true
        held.forEach((res, i) => answer(res, server.paths[i] as string))
        const run = await cli.done
        expect(run.code, run.stderr).toBe(130)
        expect(run.stderr).toContain('interrupted: no new requests')
        expect(run.stderr).toMatch(/^summary: 8 fetched, 0 failed, /m)
        expect(server.paths).toHaveLength(8)
        const lines = ndjson(run.stdout)
        expect(lines).toHaveLength(8)
        for (const line of lines) expect(line).toMatchObject({ ok: true, status: 200 })
        expect(sortedIds(lines)).toEqual(range(1, 8))
      } finally {
        await server.close()
      }
    }, 30_000)

    it('aborts what outlives --grace-ms, never starts a job waiting for its token, exits 130', async () => {
      // Burst 4 at 1/s: 4 requests at once (held forever); the 5th job has a slot and
      // waits for a token due 1 s later, within the 2 s grace. It must not start.
      const server = await startServer(() => {})
      try {
        const cli = startCli([
          'fetch',
          '--url',
          `${server.url}/users/{id}/widgets`,
          '--ids',
          '1-500',
          '--rate',
          '1',
          '--burst',
          '4',
          '--grace-ms',
          '2000',
          // Longer than the test: only the grace can end these requests.
          '--timeout-ms',
          '60000',
          '--quiet',
        ])
        await server.requests(4)
        cli.child.kill('SIGINT')
        await cli.stderrIncludes('interrupted')
        // Requests the CLI started before it took in the signal have arrived by now.
        await afterPendingIo()
        const seenByInterrupt = server.paths.length
        const run = await cli.done
        expect(run.code, run.stderr).toBe(130)
        expect(run.stderr).toContain('interrupted: no new requests; 2000 ms for the ones in flight')
        // The held requests were aborted by the end of the grace, not by a timeout.
        expect(run.stderr).toMatch(/^first error: interrupted$/m)
        expect(run.stdout).toBe('')
        expect(server.paths).toHaveLength(seenByInterrupt)
        expect(server.paths.map(userId)).toEqual(['1', '2', '3', '4'])
      } finally {
        await server.close()
      }
    }, 30_000)
  })
})

describe('bad usage: exit 2 and a message', () => {
  const url = 'http://127.0.0.1:9/users/{id}/widgets'
  it.each([
    [['frob'], /unknown command "frob"/],
    [['demo', '--frob'], /Unknown option '--frob'/],
    [['fetch', '--url', url, '--ids', '1-3', '--frob', 'x'], /Unknown option '--frob'/],
    [['demo', '--rate', '0'], /--rate must be a number > 0, got "0"/],
    [['fetch', '--url', url, '--ids', '1-3', '--rate', '0'], /--rate must be a number > 0/],
    [['demo', '--ids', '5-1'], /--ids: range 5-1 runs backwards/],
    [['fetch', '--url', 'http://127.0.0.1:9/users', '--ids', '1-3'], /--url must contain \{id\}/],
    [['fetch', '--ids', '1-3'], /--url is required/],
    [['fetch', '--url', url], /--ids is required/],
    [['fetch', '--url', 'ftp://127.0.0.1/{id}', '--ids', '1'], /--url must be http\(s\)/],
    [['demo', '--concurrency', '1.5'], /--concurrency must be an integer > 0/],
  ])('%j', async (args, message) => {
    const run = await runCli(args)
    expect(run.stderr).toMatch(message)
    expect(run.stderr).toContain("Try 'rx-fanout --help'.")
    expect(run.stderr).not.toMatch(/\n\s+at /) // a message, not a stack trace
    expect(run.stdout).toBe('')
    expect(run.code, run.stderr).toBe(2)
  })

  // Regression: `new URL(...)` used to throw a TypeError that main() did not count as
  // usage, so a malformed --url printed a stack and exited 1.
  it('a malformed --url, or an --out that cannot be written, is bad usage too', async () => {
    const unwritable = await runCli(['demo', '--ids', '1-3', '--out', '/nonexistent/dir/x.ndjson'])
    expect(unwritable.stderr).not.toMatch(/\n\s+at /)
    expect(unwritable.stderr).toMatch(/--out .* can't be written/)
    expect(unwritable.code, unwritable.stderr).toBe(2)

    const run = await runCli(['fetch', '--url', 'not a url/{id}', '--ids', '1'])
    expect(run.stderr).not.toMatch(/\n\s+at /)
    expect(run.code, run.stderr).toBe(2)
  })

  it('no arguments: the help on stdout, exit 2', async () => {
    const run = await runCli([])
    expect(run.code, run.stderr).toBe(2)
    expect(run.stdout).toMatch(/^rx-fanout — rate-limited fan-out/)
    expect(run.stdout).toContain('rx-fanout fetch --url')
  })

  it.each([
    [['--help'], /^rx-fanout — rate-limited fan-out[\s\S]*Exit codes: 0 all fetched/],
    [['help'], /^rx-fanout — rate-limited fan-out/],
    [['fetch', '--help'], /^rx-fanout fetch — [\s\S]*--url URL[\s\S]*--grace-ms N/],
    [['fetch', '-h'], /^rx-fanout fetch — /],
    [['demo', '--help'], /^rx-fanout demo — [\s\S]*--plot FILE\.svg/],
  ])('%j prints the usage and exits 0', async (args, usage) => {
    const run = await runCli(args)
    expect(run.code, run.stderr).toBe(0)
    expect(run.stdout).toMatch(usage)
    expect(run.stdout).toContain('Usage:')
    expect(run.stderr).toBe('')
  })
})

describe('colour', () => {
  // A run with a failure: on a terminal its progress line shows "1 failed" in red.
  const args = ['demo', '--ids', '1-10', '--fail', '3', '--collect']
  // Makes stderr look like a terminal to the CLI (it reads process.stderr.isTTY).
  const fakeTty = ['--import', 'data:text/javascript,process.stderr.isTTY=true']

  it('no ANSI escapes at all when stderr is not a terminal (NO_COLOR unset)', async () => {
    const run = await runCli(args, { env: cleanEnv() })
    expect(run.code, run.stderr).toBe(1)
    expect(run.stderr).toContain('summary: 9 fetched, 1 failed')
    expect(run.stderr).not.toContain(ESC)
    expect(run.stdout).not.toContain(ESC)
  }, 30_000)

  it('NO_COLOR=1 on a terminal: the progress bar, but no ANSI escapes', async () => {
    const run = await runCli(args, { env: cleanEnv({ NO_COLOR: '1' }), nodeArgs: fakeTty })
    expect(run.code, run.stderr).toBe(1)
    expect(run.stderr).toMatch(/\r\[#+\] 10\/10 .*1 failed/)
    expect(run.stderr).not.toContain(ESC)
  }, 30_000)

  it('on a terminal without NO_COLOR the failure count is red (the check above can fail)', async () => {
    const run = await runCli(args, { env: cleanEnv(), nodeArgs: fakeTty })
    expect(run.code, run.stderr).toBe(1)
    expect(run.stderr).toContain(`${ESC}31m1 failed${ESC}0m`)
  }, 30_000)
})
