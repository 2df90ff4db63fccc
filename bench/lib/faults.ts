/**
 * The fault harness of the test suite (a redis-server of our own, killed and restarted by
 * its PID; a TCP proxy that holds bytes), for the redis benchmark's fault rows. `run.ts`
 * bundles this file apart, to `bench/out/faults.mjs`, and the child imports it only in
 * the cases that need it: RedisProcess imports ioredis, which the children of the other
 * benchmarks must not load. Neither file imports vitest.
 */
export { HoldingProxy } from '../../test/redis/faults/HoldingProxy.js'
export { RedisProcess } from '../../test/redis/faults/RedisProcess.js'
