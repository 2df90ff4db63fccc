/** The runnable examples (examples/rxjs, examples/demo.ts), run with tsx as their headers say. */
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { describe, expect, it } from 'vitest'
import { cleanEnv, ROOT } from './helpers.js'

const TSX = join(ROOT, 'node_modules', '.bin', 'tsx')

async function runExample(file: string): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(TSX, [file], {
      cwd: ROOT,
      env: cleanEnv(),
    })
    return { code: 0, stdout, stderr }
  } catch (error) {
    const { code, stdout, stderr } = error as { code: unknown; stdout: string; stderr: string }
    return { code: typeof code === 'number' ? code : -1, stdout, stderr }
  }
}

describe('examples/rxjs', () => {
  it('fanout.ts: ratePool over undici against its own server, then exits 0', async () => {
    const run = await runExample('examples/rxjs/fanout.ts')
    expect(run.code, run.stderr).toBe(0)
    const lines = run.stdout.trimEnd().split('\n')
    for (let id = 1; id <= 15; id++) {
      expect(lines).toContainEqual(
        expect.stringMatching(new RegExp(`user ${id}: widget of user ${id}$`)),
      )
    }
    const summary =
      /fetched 15 of 15 users; the server saw 15 requests, at most (\d+) in flight/.exec(run.stdout)
    expect(summary, run.stdout).not.toBeNull()
    expect(Number(summary?.[1])).toBeLessThanOrEqual(8)
  }, 30_000)

  it('client.ts: FanOutClient.fetchAll, one 503 retried, then exits 0', async () => {
    const run = await runExample('examples/rxjs/client.ts')
    expect(run.code, run.stderr).toBe(0)
    for (let id = 1; id <= 10; id++) expect(run.stdout).toContain(`user ${id}: ${id}-a, ${id}-b\n`)
    expect(run.stdout).toContain('fetched 10 of 10 users in 11 requests')
  }, 30_000)
})

describe('examples/demo.ts', () => {
  it('rateLimit and the pool on the real clock: within the envelope, every job done, exits 0', async () => {
    const run = await runExample('examples/demo.ts')
    expect(run.code, run.stderr).toBe(0)
    // The demo checks its own emissions against the envelope and prints the worst excess.
    const excess = [...run.stdout.matchAll(/worst excess[^:]*: (-?[\d.]+)/g)].map((m) =>
      Number(m[1]),
    )
    expect(excess).toHaveLength(2)
    for (const e of excess) expect(e).toBeLessThanOrEqual(0)
    expect(run.stdout).toMatch(/burst: 5 at once/)
    expect(run.stdout).toMatch(/30 results; max in flight [1-4] \(cap 4\); retried 1;/)
  }, 30_000)
})
