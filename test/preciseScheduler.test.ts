import { describe, expect, it } from 'vitest'
import { preciseScheduler, TokenBucket } from '../src/index.js'

describe('preciseScheduler', () => {
  it('reads a sub-millisecond clock on the same epoch as Date.now()', () => {
    const before = Date.now()
    const now = preciseScheduler.now()
    const after = Date.now()
    // performance.timeOrigin + performance.now() drifts from the wall clock by a few ms at most.
    expect(now).toBeGreaterThan(before - 50)
    expect(now).toBeLessThan(after + 50)
    const reads = Array.from({ length: 50 }, () => preciseScheduler.now())
    expect(reads.some((t) => !Number.isInteger(t))).toBe(true)
    for (let i = 1; i < reads.length; i++) {
      expect(reads[i] as number).toBeGreaterThanOrEqual(reads[i - 1] as number)
    }
  })

  it('runs work on asyncScheduler timers, with its state, and unsubscribing cancels it', async () => {
    const ran: string[] = []
    await new Promise<void>((resolve) => {
      preciseScheduler.schedule((state) => ran.push(`a:${state}`), 1, 'x')
      const cancelled = preciseScheduler.schedule(() => ran.push('cancelled'), 5)
      cancelled.unsubscribe()
      // Timers with a longer delay run later: when this one runs, the cancelled one is due.
      preciseScheduler.schedule(() => resolve(), 15)
    })
    expect(ran).toEqual(['a:x'])
  })

  it('drives a bucket: waiters are granted in order, nothing left waiting', async () => {
    const bucket = new TokenBucket({ rate: 1000, burst: 1, scheduler: preciseScheduler })
    const order: number[] = []
    await new Promise<void>((resolve) => {
      for (let i = 0; i < 5; i++) {
        bucket.take().subscribe(() => {
          order.push(i)
          if (i === 4) resolve()
        })
      }
    })
    expect(order).toEqual([0, 1, 2, 3, 4])
    expect(bucket.waiting).toBe(0)
  })
})
