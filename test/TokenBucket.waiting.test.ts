import type { SchedulerAction, SchedulerLike, Subscription } from 'rxjs'
import { Subscription as RxSubscription } from 'rxjs'
import { describe, expect, it } from 'vitest'
import { TokenBucket } from '../src/index.js'

/** A clock the test sets by hand, and timers it fires by hand. */
function manualScheduler() {
  const state = { now: 0, timers: [] as { work: () => void; at: number; sub: Subscription }[] }
  const scheduler: SchedulerLike = {
    now: () => state.now,
    schedule<T>(work: (this: SchedulerAction<T>, s?: T) => void, delay = 0): Subscription {
      const sub = new RxSubscription()
      const timer = { work: () => work.call(undefined as never), at: state.now + delay, sub }
      state.timers.push(timer)
      sub.add(() => {
        state.timers = state.timers.filter((t) => t !== timer)
      })
      return sub
    },
  }
  const fire = () => {
    const [next] = state.timers.splice(0, 1)
    if (!next) throw new Error('no timer pending')
    state.now = Math.max(state.now, next.at)
    next.work()
  }
  return { scheduler, state, fire }
}

describe('TokenBucket waiting with a clock that moves during grants', () => {
  it('grants each waiter at a fresh instant, so user code that takes tokens in between is not counted twice', () => {
    const { scheduler, state, fire } = manualScheduler()
    const bucket = new TokenBucket({ rate: 1, burst: 3, scheduler })
    expect(bucket.allowAt(0, 3)).toBe(true)
    const granted: number[] = []
    bucket.take(1).subscribe(() => {
      granted.push(state.now)
      // The first grant's subscriber takes a token itself, half a second later.
      state.now = 3500
      expect(bucket.allow()).toBe(true)
    })
    bucket.take(1).subscribe(() => granted.push(state.now))
    expect(state.timers.map((t) => t.at)).toEqual([1000])
    // Nobody looks at the bucket until 3000: three tokens by then.
    state.now = 3000
    fire()
    expect(granted).toEqual([3000, 3500])
    // 3 at 3000, −1 (first waiter), +0.5 by 3500, −1 (allow), −1 (second waiter) = 0.5.
    expect(bucket.tokensAt(3500)).toBeCloseTo(0.5, 12)
    expect(state.timers).toEqual([])
  })

  it('re-aims the one timer when a due waiter is not yet due on a timer that fired early', () => {
    const { scheduler, state, fire } = manualScheduler()
    const bucket = new TokenBucket({ rate: 10, burst: 1, scheduler })
    bucket.take(1).subscribe()
    let at = Number.NaN
    bucket.take(1).subscribe(() => {
      at = state.now
    })
    expect(state.timers.map((t) => t.at)).toEqual([100])
    // The host fires it early (a coarse timer): no grant, and exactly one timer again.
    state.timers[0] = { ...(state.timers[0] as (typeof state.timers)[0]), at: 60 }
    fire()
    expect(at).toBeNaN()
    expect(state.timers.map((t) => t.at)).toEqual([100])
    fire()
    expect(at).toBe(100)
    expect(state.timers).toEqual([])
  })
})

describe('a grant is counted when its delivery ended', () => {
  it('a consumer working 40 ms synchronously: the next grant is 100 ms after that work', () => {
    // The chosen trade (see kDelivered): what the consumer records while handling a grant
    // keeps the envelope on the bucket's clock, at the price of not refilling during its
    // synchronous work.
    const { scheduler, state, fire } = manualScheduler()
    const bucket = new TokenBucket({ rate: 10, burst: 1, scheduler })
    expect(bucket.allowAt(0, 1)).toBe(true)
    const recorded: number[] = []
    bucket.take(1).subscribe(() => {
      state.now += 40 // the consumer's synchronous work, on the bucket's clock
      recorded.push(state.now) // and it records when it is done
    })
    bucket.take(1).subscribe(() => recorded.push(state.now))
    fire()
    expect(state.timers.map((t) => t.at)).toEqual([240])
    fire()
    expect(recorded).toEqual([140, 240])
  })

  it('a delivery shorter than a tick is counted when it ended', () => {
    const { scheduler, state, fire } = manualScheduler()
    const bucket = new TokenBucket({ rate: 10, burst: 1, scheduler })
    expect(bucket.allowAt(0, 1)).toBe(true)
    bucket.take(1).subscribe(() => {
      state.now += 0.5
    })
    bucket.take(1).subscribe()
    fire()
    // Decided at 100, delivered by 100.5: the next is due at 200.5, not at 200.
    expect(state.timers.map((t) => t.at)).toEqual([200.5])
  })
})
