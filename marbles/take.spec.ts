import { map } from 'rxjs'
import { describe, expect, it } from 'vitest'
import { BurstExceededError, TokenBucket } from '../src/index.js'
import { createScheduler, pendingAt } from './helpers.js'

// One frame is one virtual millisecond. `take()` emits `undefined`: `g` marks a grant.
const g = { g: undefined }

describe('TokenBucket.take', () => {
  it('grants at once while tokens last, then serves waiters FIFO one interval apart', () => {
    const testScheduler = createScheduler()
    let probe = { count: Number.NaN }
    let bucket = null as TokenBucket | null
    testScheduler.run(({ expectObservable }) => {
      // No scheduler given: inside run() asyncScheduler is virtual.
      bucket = new TokenBucket({ rate: 10, burst: 1 })
      expectObservable(bucket.take()).toBe('(g|)                    ', g)
      expectObservable(bucket.take()).toBe('100ms (g|)              ', g)
      expectObservable(bucket.take()).toBe('200ms (g|)              ', g)
      probe = pendingAt(testScheduler, 201)
    })
    expect(probe.count).toBe(0)
    expect(bucket?.waiting).toBe(0)
  })

  it('uses the TestScheduler passed explicitly as scheduler', () => {
    const testScheduler = createScheduler()
    testScheduler.run(({ expectObservable }) => {
      // 250/s: one token every 4 ms, so the marbles can be drawn frame by frame.
      const bucket = new TokenBucket({ rate: 250, burst: 2, scheduler: testScheduler })
      expectObservable(bucket.take()).toBe('(g|)        ', g)
      expectObservable(bucket.take()).toBe('(g|)        ', g)
      expectObservable(bucket.take()).toBe('----(g|)    ', g)
      expectObservable(bucket.take()).toBe('--------(g|)', g)
    })
  })

  it('FIFO across sizes: a take(1) queued behind a waiting take(3) is served after it', () => {
    const testScheduler = createScheduler()
    testScheduler.run(({ expectObservable }) => {
      const bucket = new TokenBucket({ rate: 10, burst: 3 })
      expectObservable(bucket.take(3)).toBe('(g|)                ', g)
      expectObservable(bucket.take(3)).toBe('300ms (g|)          ', g)
      expectObservable(bucket.take(1)).toBe('400ms (g|)          ', g)
    })
  })

  it('a late take(1) does not overtake a waiting head though tokens are free', () => {
    const testScheduler = createScheduler()
    testScheduler.run(({ expectObservable }) => {
      const bucket = new TokenBucket({ rate: 10, burst: 3 })
      expectObservable(bucket.take(3)).toBe('(g|)                ', g)
      expectObservable(bucket.take(3)).toBe('300ms (g|)          ', g)
      // 1.5 tokens are there at 150, but the head is first in line.
      expectObservable(bucket.take(1), '150ms ^').toBe('400ms (g|)', g)
    })
  })

  it('lowering the burst caps the tokens held at once', () => {
    const testScheduler = createScheduler()
    testScheduler.run(({ expectObservable }) => {
      const bucket = new TokenBucket({ rate: 10, burst: 5 })
      bucket.setBurst(2)
      expectObservable(bucket.take()).toBe('(g|)                ', g)
      expectObservable(bucket.take()).toBe('(g|)                ', g)
      expectObservable(bucket.take()).toBe('100ms (g|)          ', g)
    })
  })

  it('a middle waiter that unsubscribes leaves the queue; the one behind moves up', () => {
    const testScheduler = createScheduler()
    let bucket = null as TokenBucket | null
    let probe = { count: Number.NaN }
    testScheduler.run(({ expectObservable }) => {
      bucket = new TokenBucket({ rate: 10, burst: 1 })
      expectObservable(bucket.take().pipe(map(() => 'a'))).toBe('(a|)                ')
      expectObservable(bucket.take().pipe(map(() => 'b'))).toBe('100ms (b|)          ')
      // c gives up at 50 while b is still the head.
      expectObservable(bucket.take().pipe(map(() => 'c')), '^ 49ms !').toBe('')
      // Had c kept its place (or taken a token) d would come at 300.
      expectObservable(bucket.take().pipe(map(() => 'd'))).toBe('200ms (d|)          ')
      probe = pendingAt(testScheduler, 201)
    })
    expect(probe.count).toBe(0)
    expect(bucket?.waiting).toBe(0)
  })

  it('the head waiter that unsubscribes re-aims the timer at the next waiter at once', () => {
    const testScheduler = createScheduler()
    let probe = { count: Number.NaN }
    testScheduler.run(({ expectObservable }) => {
      const bucket = new TokenBucket({ rate: 10, burst: 3 })
      expectObservable(bucket.take(3)).toBe('(g|)              ', g)
      // Head: 3 tokens, due at 300. Gives up at 50 without having taken any.
      expectObservable(bucket.take(3), '^ 49ms !').toBe('', g)
      // Behind it: 1 token, due at 100 once the head is gone (400 had it stayed).
      expectObservable(bucket.take(1)).toBe('100ms (g|)        ', g)
      probe = pendingAt(testScheduler, 101)
    })
    // No stale timer left aimed at 300.
    expect(probe.count).toBe(0)
  })

  it('n > burst errors with BurstExceededError at once instead of waiting forever', () => {
    const testScheduler = createScheduler()
    let caught: unknown
    let bucket = null as TokenBucket | null
    testScheduler.run(({ expectObservable }) => {
      bucket = new TokenBucket({ rate: 10, burst: 3 })
      expectObservable(bucket.take(4)).toBe('#', undefined, new BurstExceededError(4, 3))
      bucket.take(4).subscribe({ error: (error: unknown) => (caught = error) })
    })
    expect(caught).toBeInstanceOf(BurstExceededError)
    expect((caught as BurstExceededError).code).toBe('RX_FANOUT_BURST_EXCEEDED')
    expect(bucket?.waiting).toBe(0)
  })

  it('lowering the burst below a waiting n errors that waiter at once; the next is re-planned', () => {
    const testScheduler = createScheduler()
    testScheduler.run(({ expectObservable }) => {
      const bucket = new TokenBucket({ rate: 10, burst: 3 })
      testScheduler.schedule(() => bucket.setBurst(2), 50)
      expectObservable(bucket.take(3)).toBe('(g|)          ', g)
      expectObservable(bucket.take(3)).toBe('50ms #        ', g, new BurstExceededError(3, 2))
      // 0.5 token at 50 ms: the remaining half comes at 100 (not 400 behind the head).
      expectObservable(bucket.take(1)).toBe('100ms (g|)    ', g)
    })
  })

  it('setRate raised while callers wait releases them sooner', () => {
    const testScheduler = createScheduler()
    testScheduler.run(({ expectObservable }) => {
      const bucket = new TokenBucket({ rate: 10, burst: 1 })
      // At 50 ms half a token has come at 10/s; at 20/s the other half takes 25 ms.
      testScheduler.schedule(() => bucket.setRate(20), 50)
      expectObservable(bucket.take()).toBe('(g|)           ', g)
      expectObservable(bucket.take()).toBe('75ms (g|)      ', g)
      expectObservable(bucket.take()).toBe('125ms (g|)     ', g)
    })
  })

  it('setRate lowered while callers wait releases them later', () => {
    const testScheduler = createScheduler()
    testScheduler.run(({ expectObservable }) => {
      const bucket = new TokenBucket({ rate: 10, burst: 1 })
      // Half a token at 50 ms; at 5/s the other half takes 100 ms.
      testScheduler.schedule(() => bucket.setRate(5), 50)
      expectObservable(bucket.take()).toBe('(g|)           ', g)
      expectObservable(bucket.take()).toBe('150ms (g|)     ', g)
      expectObservable(bucket.take()).toBe('350ms (g|)     ', g)
    })
  })

  it('rate 0: a waiter waits, with no timer, until the rate changes', () => {
    const testScheduler = createScheduler()
    let scheduledDuring: number[] = []
    let after = { count: Number.NaN }
    let waitingDuring = Number.NaN
    testScheduler.run(({ expectObservable }) => {
      const bucket = new TokenBucket({ rate: 0, burst: 1 })
      testScheduler.schedule(() => {
        waitingDuring = bucket.waiting
        scheduledDuring = testScheduler.actions.map((action) => action.delay)
      }, 400)
      testScheduler.schedule(() => bucket.setRate(10), 500)
      expectObservable(bucket.take()).toBe('(g|)           ', g)
      expectObservable(bucket.take()).toBe('600ms (g|)     ', g)
      after = pendingAt(testScheduler, 601)
    })
    expect(waitingDuring).toBe(1)
    // At 400 only the test's own actions are scheduled (setRate at 500, the probe at
    // 601): the bucket keeps no timer while the rate is 0.
    expect(scheduledDuring).toEqual([500, 601])
    expect(after.count).toBe(0)
  })

  it('rate Infinity grants every take at once, whatever n and the burst', () => {
    const testScheduler = createScheduler()
    testScheduler.run(({ expectObservable }) => {
      const bucket = new TokenBucket({ rate: Number.POSITIVE_INFINITY, burst: 0 })
      expectObservable(bucket.take(1000)).toBe('(g|)', g)
      expectObservable(bucket.take()).toBe('    (g|)', g)
      expectObservable(bucket.take(5)).toBe('   (g|)', g)
    })
  })

  it('fractional rate 3/s, burst 3: waits round up to whole ms (334, 667), never early', () => {
    const testScheduler = createScheduler()
    testScheduler.run(({ expectObservable }) => {
      const bucket = new TokenBucket({ rate: 3, burst: 3 })
      expectObservable(bucket.take()).toBe('(g|)            ', g)
      expectObservable(bucket.take()).toBe('(g|)            ', g)
      expectObservable(bucket.take()).toBe('(g|)            ', g)
      // Ideal 333.33 and 666.67: rounding the first wait up does not delay the next.
      expectObservable(bucket.take()).toBe('334ms (g|)      ', g)
      expectObservable(bucket.take()).toBe('667ms (g|)      ', g)
    })
  })

  it('fractional rate 3/s, burst 1: the bucket is full from 333.33 to 334 ms, so the third grant is at 668', () => {
    // Capacity 1 is reached at 333.33 ms; the refill between then and the 334 ms grant
    // spills over the cap, so the next token is whole only at 334 + 333.33 -> 668. This is
    // what the integer reference model of test/rateLimit.property.test.ts computes too.
    const testScheduler = createScheduler()
    testScheduler.run(({ expectObservable }) => {
      const bucket = new TokenBucket({ rate: 3, burst: 1 })
      expectObservable(bucket.take()).toBe('(g|)            ', g)
      expectObservable(bucket.take()).toBe('334ms (g|)      ', g)
      expectObservable(bucket.take()).toBe('668ms (g|)      ', g)
    })
  })

  it('pauseFor: nothing is granted before the pause ends though tokens are there', () => {
    const testScheduler = createScheduler()
    testScheduler.run(({ expectObservable }) => {
      const bucket = new TokenBucket({ rate: 10, burst: 2 })
      bucket.pauseFor(500)
      expect(bucket.pausedUntil).toBe(500)
      expectObservable(bucket.take()).toBe('500ms (g|)      ', g)
      expectObservable(bucket.take()).toBe('500ms (g|)      ', g)
      expectObservable(bucket.take()).toBe('600ms (g|)      ', g)
    })
  })

  it('pauses only extend: a shorter pauseUntil is ignored, a longer pauseFor re-plans', () => {
    const testScheduler = createScheduler()
    const pausedUntil: number[] = []
    testScheduler.run(({ expectObservable }) => {
      const bucket = new TokenBucket({ rate: 10, burst: 1 })
      bucket.pauseUntil(500)
      bucket.pauseUntil(200)
      pausedUntil.push(bucket.pausedUntil)
      // At 300 a pause of 400 ms extends the wait to 700.
      testScheduler.schedule(() => {
        bucket.pauseFor(400)
        pausedUntil.push(bucket.pausedUntil)
      }, 300)
      expectObservable(bucket.take()).toBe('700ms (g|)      ', g)
    })
    expect(pausedUntil).toEqual([500, 700])
  })

  it('tokens keep refilling during a pause, but only up to the burst', () => {
    const testScheduler = createScheduler()
    let probe = { count: Number.NaN }
    testScheduler.run(({ expectObservable }) => {
      const bucket = new TokenBucket({ rate: 10, burst: 3 })
      expectObservable(bucket.take(3)).toBe('(g|)                ', g)
      // Paused at 0, once take(3) has emptied the bucket.
      testScheduler.schedule(() => bucket.pauseFor(1000), 0)
      // 1 s at 10/s would be 10 tokens: the bucket holds 3.
      expectObservable(bucket.take()).toBe('1000ms (g|)          ', g)
      expectObservable(bucket.take()).toBe('1000ms (g|)          ', g)
      expectObservable(bucket.take()).toBe('1000ms (g|)          ', g)
      expectObservable(bucket.take()).toBe('1100ms (g|)          ', g)
      expectObservable(bucket.take()).toBe('1200ms (g|)          ', g)
      probe = pendingAt(testScheduler, 1201)
    })
    expect(probe.count).toBe(0)
  })
})
