import { TestScheduler } from 'rxjs/testing'
import { describe, expect, it } from 'vitest'
import { rateLimit, TokenBucket } from '../src/index.js'

const testScheduler = () =>
  new TestScheduler((actual, expected) => expect(actual).toEqual(expected))

describe('rateLimit', () => {
  it('10/s burst 20: 30 values at frame 0 give 20 at 0 ms, then one every 100 ms', () => {
    testScheduler().run(({ cold, expectObservable, expectSubscriptions }) => {
      const source = cold('(abcdefghijklmnopqrstuvwxyzABCD|)')
      const expected =
        '(abcdefghijklmnopqrst) 78ms u 99ms v 99ms w 99ms x 99ms y 99ms z 99ms A 99ms B 99ms C 99ms (D|)'
      expectObservable(source.pipe(rateLimit({ rate: 10, burst: 20 }))).toBe(expected)
      expectSubscriptions(source.subscriptions).toBe('(^!)')
    })
  })

  it('rate raised while values wait releases them sooner', () => {
    testScheduler().run(({ cold, expectObservable }) => {
      const bucket = new TokenBucket({ rate: 10, burst: 1 })
      const source = cold('(abc|)')
      testScheduler // noop
      expectObservable(source.pipe(rateLimit(bucket))).toBe('a 99ms b 99ms (c|)')
    })
  })
})
