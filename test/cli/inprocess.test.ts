/**
 * The CLI's modules in this process (the subprocess tests in cli.test.ts run the built
 * bin, which coverage cannot see): argument parsing, the demo server's verdict, the plot,
 * and main() end to end with output to a file.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { parseIds, UsageError } from '../../src/cli/args.js'
import { requiredCapacity, startDemoServer } from '../../src/cli/demoServer.js'
import { main } from '../../src/cli/main.js'
import { plotSvg } from '../../src/cli/plot.js'

let dir: string
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'rxf-cli-'))
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

/** Runs main() with stderr and stdout captured. */
async function run(argv: string[]) {
  const err: string[] = []
  const out: string[] = []
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => {
    err.push(String(chunk))
    return true
  })
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => {
    out.push(String(chunk))
    return true
  })
  try {
    const code = await main(argv)
    return { code, stderr: err.join(''), stdout: out.join('') }
  } finally {
    e.mockRestore()
    o.mockRestore()
  }
}

describe('parseIds', () => {
  it('ranges, lists and names', () => {
    expect(parseIds('1-3,7,alice')).toEqual([1, 2, 3, 7, 'alice'])
  })
  it('a zero-padded id stays as written (not 7)', () => {
    expect(parseIds('007,0,10')).toEqual(['007', 0, 10])
  })
  it.each([['5-1'], ['1,,2'], ['1-99999999']])('%s is a usage error', (spec) => {
    expect(() => parseIds(spec)).toThrow(UsageError)
  })
})

describe('requiredCapacity', () => {
  it('is the burst a schedule needs at a rate', () => {
    expect(requiredCapacity([], 10)).toBe(0)
    expect(requiredCapacity([0, 0, 0], 10)).toBe(3)
    // 3 at once, then one every 100 ms: a bucket of 3 at 10/s.
    expect(requiredCapacity([0, 0, 0, 100, 200, 300], 10)).toBeCloseTo(3, 12)
    // One 50 ms early: half a token more.
    expect(requiredCapacity([0, 0, 0, 100, 150], 10)).toBeCloseTo(3.5, 12)
  })
})

describe('the demo server, in process', () => {
  it('answers 429 over its quota and says so in its verdict', async () => {
    const server = await startDemoServer({
      rate: 10,
      burst: 2,
      maxInFlight: 8,
      jitterMs: 0,
      latencyMs: [1, 2],
    })
    try {
      const statuses = await Promise.all(
        [1, 2, 3].map((id) => fetch(`${server.url}/users/${id}/widgets`).then((r) => r.status)),
      )
      expect(statuses.sort()).toEqual([200, 200, 429])
      const verdict = server.verdict()
      expect(verdict).toMatchObject({ requests: 3, rejected429: 1, ok: false })
      const svg = plotSvg(verdict, { rate: 10, burst: 2, maxInFlight: 8 })
      expect(svg).toMatch(/^<\?xml/)
      expect(svg).toContain('3 requests · 1 × 429')
    } finally {
      await server.close()
    }
  })
})

describe('main()', () => {
  it('demo: fetches every id from the embedded API, writes NDJSON and a plot, exit 0', async () => {
    const out = join(dir, 'demo.ndjson')
    const plot = join(dir, 'demo.svg')
    const r = await run(['demo', '--ids', '1-12', '--quiet', '--out', out, '--plot', plot])
    expect(r.code, r.stderr).toBe(0)
    const lines = readFileSync(out, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
    expect(lines.map((l) => l.id).sort((a, b) => a - b)).toEqual([
      1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ])
    expect(r.stderr).toMatch(/server verdict .* 0 answered 429 \(ok\)/)
    expect(readFileSync(plot, 'utf8')).toContain('</svg>')
  })

  it('demo --fail: exit 1 with the first error; --collect: every id is a result', async () => {
    const failFast = await run([
      'demo',
      '--ids',
      '1-10',
      '--fail',
      '3',
      '--quiet',
      '--out',
      join(dir, 'f.ndjson'),
    ])
    expect(failFast.code).toBe(1)
    expect(failFast.stderr).toContain('first error (RX_FANOUT_HTTP_STATUS)')
    const out = join(dir, 'c.ndjson')
    const collect = await run([
      'demo',
      '--ids',
      '1-10',
      '--fail',
      '3',
      '--collect',
      '--quiet',
      '--out',
      out,
    ])
    expect(collect.code).toBe(1)
    const lines = readFileSync(out, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
    expect(lines).toHaveLength(10)
    expect(lines.filter((l) => !l.ok).map((l) => l.id)).toEqual([3])
  })

  it.each([
    [['nope']],
    [['fetch', '--ids', '1']],
    [['fetch', '--url', 'http://x/{id}']],
    [['fetch', '--url', 'http://x/{id}', '--ids', '1', '--rate', '0']],
    [['fetch', '--url', 'http://x/{id}', '--ids', '1', '--redis', 'http://x', '--key', 'k']],
    [['fetch', '--url', 'http://x/{id}', '--ids', '1', '--redis', 'redis://x']],
    // Regression: the Redis clients were opened before the output, and kept the process
    // alive after this usage error. The output is now checked before anything connects.
    [
      [
        'fetch',
        '--url',
        'http://x/{id}',
        '--ids',
        '1',
        '--redis',
        'redis://127.0.0.1:6399',
        '--key',
        'k',
        '--out',
        '/nonexistent/dir/x',
      ],
    ],
    [['demo', '--bogus']],
  ])('bad usage %j: exit 2', async (argv) => {
    const r = await run(argv)
    expect(r.code).toBe(2)
    expect(r.stderr).toMatch(/^rx-fanout: /)
  })

  it('help: exit 0 for --help, 2 with no command', async () => {
    expect((await run(['--help'])).code).toBe(0)
    expect((await run(['fetch', '--help'])).stdout).toContain('rx-fanout fetch')
    expect((await run(['demo', '--help'])).stdout).toContain('rx-fanout demo')
    expect((await run([])).code).toBe(2)
  })
})
