/**
 * Now, in ms since the epoch, with sub-ms precision: `performance.timeOrigin +
 * performance.now()`. Unlike `performance.now()` alone (ms since this process started),
 * it can be compared across processes on this machine, so a server's arrival times can be
 * set against a worker process's grant times (each process fixes its origin from the wall
 * clock when it starts, so a clock step between two starts would show as an offset).
 * Unlike `Date.now()` it is not rounded to the ms, and within a process it never goes
 * back.
 */
import { performance } from 'node:perf_hooks'

export function epochNow(): number {
  return performance.timeOrigin + performance.now()
}
