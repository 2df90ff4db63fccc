/**
 * Issue 8, item 4, the partial case: of three processes sharing a RedisTokenBucket (10/s,
 * burst 20, 'local-fallback' at localShare 0.25), only one is cut off from Redis, through
 * a HoldingProxy flapping 5 × (1.2 s down, 0.3 s up) (the set-up of fallback.test.ts).
 *
 * The two others keep draining the shared bucket at its rate, so what the cut-off one
 * grants from its local bucket comes on top until it is charged as debt, when Redis
 * answers it again. Its local bucket holds at most localShare × burst and refills at
 * localShare × rate, so the excess is at most localShare × (burst + rate × outage) per
 * cut-off process and outage: 0.25 × (20 + 10 × 1.2) = 8 here. The merged arrivals then
 * need a bucket of at most 20 + 8, plus 1 token (100 ms at 10/s) of jitter. The debt
 * charged after each outage keeps the excesses of successive outages from adding up.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import {
  BURST,
  cleanUp,
  DOWN_MS,
  JITTER_TOKENS,
  newScenario,
  RATE,
  runFlapping,
  SHARE,
} from './bucketFleet.js'
import { guardProcess, redisServerInstalled } from './helpers.js'

const installed = redisServerInstalled('test/redis/fallback.partial.test.ts')

let guard: ReturnType<typeof guardProcess>
beforeEach(() => {
  guard = guardProcess()
})
afterEach(() => {
  guard.dispose()
  expect(guard.problems, 'nothing escaped as an unhandled error').toEqual([])
})

describe.skipIf(!installed)("'local-fallback', one process of three cut off", () => {
  const scenario = newScenario()
  afterEach(() => cleanUp(scenario))

  it('the excess is at most localShare × (burst + rate × outage)', async () => {
    const result = await runFlapping(scenario, [0])
    const excess = SHARE * (BURST + (RATE * DOWN_MS) / 1000)
    console.log(
      `flapping, 1 of 3 cut off: burst needed ${result.whole.toFixed(2)} ` +
        `(≤ ${BURST} + ${excess} + ${JITTER_TOKENS}; ${result.beforeFaults.toFixed(2)} before), ` +
        `${result.count} arrivals, grants while falling back ${result.local.join('/')}, ` +
        `debt charged on coming back ${result.charged.join('/')}`,
    )
    expect(result.whole).toBeLessThanOrEqual(BURST + excess + JITTER_TOKENS)
    expect(result.beforeFaults).toBeGreaterThan(BURST - 1)
    // The cut-off process granted locally; the others never fell back.
    expect(result.local[0]).toBeGreaterThan(0)
    expect(result.local.slice(1)).toEqual([0, 0])
  }, 30_000)
})
