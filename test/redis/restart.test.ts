/**
 * Issue 8, item 3, from the server's side: a Redis that loses its data does not refill the
 * bucket. Three worker processes (bucketWorker.ts) share one RedisTokenBucket (10/s, burst
 * 20) on a redis-server of this file's own, each with a backlog that never empties, each
 * grant sent at once to one RecordingServer. Mid-run Redis is killed (SIGKILL) and started
 * again without persistence, flushed (FLUSHALL), restarted several times in a row, or
 * restarted with an AOF (appendfsync always: the state survives, but is not trusted to be
 * fuller than it was). The merged arrival times at the server must need a bucket of at
 * most burst + 1 at 10/s over the whole run (requiredBurst, helpers.ts): 1 token (100 ms
 * at 10/s) is the allowance for network and event-loop jitter between Redis's decision
 * and the arrival. Before issue 8 each loss handed out a fresh full burst (+20).
 *
 * The client policy under a restart: 'fail-closed' with the user's own ioredis clients
 * told to wait for Redis (maxRetriesPerRequest: null) and a storeTimeoutMs longer than
 * the outage, as outage.test.ts does: no take is refused, the takes simply wait. Under
 * 'local-fallback' with the bucket's own client (which fails a command while Redis is
 * down) the local buckets grant during the outage, and the bound is item 4's: one burst
 * more than the envelope at most (fallback.test.ts).
 *
 * FLUSHALL is in restart.flushall.test.ts, restarts from an AOF or a stale snapshot in
 * restart.snapshot.test.ts, 'local-fallback' in restart.fallback.test.ts.
 *
 * The very first start of a cold system: a bucket's key missing from a Redis younger than
 * a refill (burst / rate: 2 s here) starts with rate × uptime tokens (capped at the
 * burst), as if it had been empty when Redis started, because a Redis that has just
 * started cannot tell a new key from one it has just lost. A fleet that starts together
 * with its Redis therefore ramps up at the rate from Redis's start instead of bursting
 * (restart.store.test.ts checks the numbers; `coldStart: 'full'` trusts a missing key and
 * starts full, as Go's limiter does). Once Redis is older than a refill a missing key
 * starts full, unless a client saw it alive until later (then it was lost: empty). The
 * runs here start on a Redis older than a refill, so each begins with a full burst of 20
 * and the envelope check is tight.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { cleanUp, failClosedAcross, newScenario, sleep } from './bucketFleet.js'
import { guardProcess, redisServerInstalled } from './helpers.js'

const installed = redisServerInstalled('test/redis/restart.test.ts')

let guard: ReturnType<typeof guardProcess>
beforeEach(() => {
  guard = guardProcess()
})
afterEach(() => {
  guard.dispose()
  expect(guard.problems, 'nothing escaped as an unhandled error').toEqual([])
})

describe.skipIf(!installed)("a restart does not refill the bucket ('fail-closed')", () => {
  const scenario = newScenario()
  afterEach(() => cleanUp(scenario))

  it('kill -9 and restart without persistence', async () => {
    await failClosedAcross(scenario, 'kill -9 + restart', (r) => r.restart())
  }, 20_000)

  it('three restarts 300 ms apart', async () => {
    await failClosedAcross(scenario, '3 restarts 300 ms apart', async (r) => {
      for (let i = 0; i < 3; i++) {
        if (i > 0) await sleep(300)
        await r.restart()
      }
    })
  }, 20_000)
})
