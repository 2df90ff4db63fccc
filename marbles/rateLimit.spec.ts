import { describe, expect, it } from 'vitest'
import { BurstExceededError, InvalidCostError, rateLimit, TokenBucket } from '../src/index.js'
import { createScheduler, pendingAt } from './helpers.js'

/** A cost function reading a table; letters not in it cost 1. */
const costOf =
  (table: Record<string, number>) =>
  (value: string): number =>
    table[value] ?? 1

describe('rateLimit', () => {
  describe('shaping', () => {
    it('10/s burst 20: 30 values at frame 0 give 20 at 0 ms, then one every 100 ms', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('(abcdefghijklmnopqrstuvwxyzABCD|)')
        const expected =
          '(abcdefghijklmnopqrst) 78ms u 99ms v 99ms w 99ms x 99ms y 99ms z 99ms A 99ms B 99ms C 99ms (D|)'
        expectObservable(source.pipe(rateLimit({ rate: 10, burst: 20 }))).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe('(^!)')
      })
    })

    it('an idle period refills up to the burst and no further', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        // 10/s burst 3: 1 s idle would be 10 tokens; the bucket holds 3.
        const source = cold('  (abc) 995ms (defgh|)            ')
        const expected = '     (abc) 995ms (def) 95ms g 99ms (h|)'
        const subs = '         ^     999ms !                   '
        expectObservable(source.pipe(rateLimit({ rate: 10, burst: 3 }))).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe(subs)
      })
    })

    it('completion while values wait comes with the last value', () => {
      const testScheduler = createScheduler()
      let probe = { count: Number.NaN }
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  (abc|)                 ')
        const expected = '     a 99ms b 99ms (c|)     '
        expectObservable(source.pipe(rateLimit({ rate: 10, burst: 1 }))).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe('(^!)')
        probe = pendingAt(testScheduler, 201)
      })
      expect(probe.count).toBe(0)
    })

    it('a source completing after the last value is out completes the result at once', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  (ab) 296ms |           ')
        const expected = '     a 99ms b 199ms |       '
        const subs = '         ^ 299ms !              '
        expectObservable(source.pipe(rateLimit({ rate: 10, burst: 1 }))).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe(subs)
      })
    })

    it('uses the TestScheduler passed explicitly as scheduler', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        // 250/s: one token every 4 ms.
        const source = cold('  (abcd|)     ')
        const expected = '     (ab)c---(d|)'
        const limited = rateLimit<string>({ rate: 250, burst: 2 }, { scheduler: testScheduler })
        expectObservable(source.pipe(limited)).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe('(^!)')
      })
    })

    it('rate Infinity lets everything through at once', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  a(bcd)e|')
        const expected = '     a(bcd)e|'
        const subs = '         ^------!'
        const limited = rateLimit<string>({ rate: Number.POSITIVE_INFINITY, burst: 1 })
        expectObservable(source.pipe(limited)).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe(subs)
      })
    })

    it('3/s burst 3: waits round up to whole ms (334, 667), never early and without drift', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  (abcde|)                   ')
        const expected = '     (abc) 329ms d 332ms (e|)   '
        expectObservable(source.pipe(rateLimit({ rate: 3, burst: 3 }))).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe('(^!)')
      })
    })

    it('3/s burst 1: 334 then 668, as the full bucket spills between 333.33 and 334 ms', () => {
      // Capacity 1 is reached at 333.33 ms and the grant comes at 334: the refill in
      // between is over the cap, so the next whole token is at 334 + 333.33 -> 668. The
      // integer reference model of test/rateLimit.property.test.ts says the same.
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  (abc|)                     ')
        const expected = '     a 333ms b 333ms (c|)       '
        expectObservable(source.pipe(rateLimit({ rate: 3, burst: 1 }))).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe('(^!)')
      })
    })
  })

  describe('changes while values wait', () => {
    it('rate raised while values wait releases them sooner', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const bucket = new TokenBucket({ rate: 10, burst: 1 })
        // At 50 ms half a token has come; at 20/s the other half takes 25 ms.
        testScheduler.schedule(() => bucket.setRate(20), 50)
        const source = cold('  (abc|)               ')
        const expected = '     a 74ms b 49ms (c|)   '
        expectObservable(source.pipe(rateLimit(bucket))).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe('(^!)')
      })
    })

    it('rate lowered while values wait releases them later', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const bucket = new TokenBucket({ rate: 10, burst: 1 })
        // Half a token at 50 ms; at 5/s the other half takes 100 ms.
        testScheduler.schedule(() => bucket.setRate(5), 50)
        const source = cold('  (abc|)                 ')
        const expected = '     a 149ms b 199ms (c|)   '
        expectObservable(source.pipe(rateLimit(bucket))).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe('(^!)')
      })
    })

    it('rate 0 holds values until setRate', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const bucket = new TokenBucket({ rate: 0, burst: 1 })
        testScheduler.schedule(() => bucket.setRate(10), 500)
        const source = cold('  (abc|)                 ')
        const expected = '     a 599ms b 99ms (c|)    '
        expectObservable(source.pipe(rateLimit(bucket))).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe('(^!)')
      })
    })

    it('burst raised while values wait: they keep their times, a later idle period fills the new burst', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const bucket = new TokenBucket({ rate: 10, burst: 1 })
        testScheduler.schedule(() => bucket.setBurst(3), 50)
        // With burst 1 d, e, f would come at 600, 700, 800.
        const source = cold('  (abc) 595ms (def|)             ')
        const expected = '     a 99ms b 99ms c 399ms (def|)   '
        const subs = '         ^ 599ms !                    '
        expectObservable(source.pipe(rateLimit(bucket))).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe(subs)
      })
    })

    it('burst lowered below the cost of a waiting value errors with BurstExceededError at once', () => {
      const testScheduler = createScheduler()
      let probe = { count: Number.NaN }
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const bucket = new TokenBucket({ rate: 10, burst: 4 })
        testScheduler.schedule(() => bucket.setBurst(3), 50)
        const source = cold('  (ab)           ')
        const expected = '     a 49ms #       '
        const subs = '         ^ 49ms !       '
        const limited = rateLimit(bucket, { cost: costOf({ a: 4, b: 4 }) })
        expectObservable(source.pipe(limited)).toBe(
          expected,
          undefined,
          new BurstExceededError(4, 3),
        )
        expectSubscriptions(source.subscriptions).toBe(subs)
        probe = pendingAt(testScheduler, 51)
      })
      expect(probe.count).toBe(0)
    })

    // Regression: #advance used to return the stored tokens uncapped when no time had
    // passed, so right after setBurst(2) a full bucket of 5 still let 5 values out at once.
    // Go's advance caps on every read: 2 at 0 ms, then one per 100 ms.
    it('burst lowered below the tokens held caps them at once', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const bucket = new TokenBucket({ rate: 10, burst: 5 })
        bucket.setBurst(2)
        const source = cold('  (abcde|)                   ')
        const expected = '     (ab) 96ms c 99ms d 99ms (e|)'
        expectObservable(source.pipe(rateLimit(bucket))).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe('(^!)')
      })
    })

    it('pauseFor at 0 with tokens available (Retry-After): nothing before 500, then the burst', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const bucket = new TokenBucket({ rate: 10, burst: 3 })
        bucket.pauseFor(500)
        const source = cold('  (abcde|)                       ')
        const expected = '     500ms (abc) 95ms d 99ms (e|)   '
        expectObservable(source.pipe(rateLimit(bucket))).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe('(^!)')
      })
    })

    it('pauseUntil while values wait holds them to the end of the pause; pauses only extend', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const bucket = new TokenBucket({ rate: 10, burst: 1 })
        testScheduler.schedule(() => bucket.pauseUntil(450), 150)
        testScheduler.schedule(() => bucket.pauseUntil(300), 200)
        // c was due at 200; the bucket refills to its burst (1) meanwhile, not beyond.
        const source = cold('  (abcd|)                       ')
        const expected = '     a 99ms b 349ms c 99ms (d|)    '
        expectObservable(source.pipe(rateLimit(bucket))).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe('(^!)')
      })
    })
  })

  describe('sources', () => {
    it('empty: completes at once', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  |')
        const expected = '     |'
        expectObservable(source.pipe(rateLimit({ rate: 10, burst: 1 }))).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe('(^!)')
      })
    })

    it('never: stays silent and subscribed', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  -')
        const expected = '     -'
        expectObservable(source.pipe(rateLimit({ rate: 10, burst: 1 }))).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe('^')
      })
    })

    it('error with nothing waiting passes through', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  a-#')
        const expected = '     a-#'
        const subs = '         ^-!'
        expectObservable(source.pipe(rateLimit({ rate: 10, burst: 1 }))).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe(subs)
      })
    })

    it('error with values waiting passes through at once; the waiting values are dropped', () => {
      const testScheduler = createScheduler()
      let probe = { count: Number.NaN }
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  (abc) 45ms #   ')
        const expected = '     a 49ms #       '
        const subs = '         ^ 49ms !       '
        expectObservable(source.pipe(rateLimit({ rate: 10, burst: 1 }))).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe(subs)
        probe = pendingAt(testScheduler, 51)
      })
      // The wait for b (due at 100) is cancelled.
      expect(probe.count).toBe(0)
    })
  })

  describe('unsubscription', () => {
    it('cancels the pending wait and leaves nothing scheduled', () => {
      const testScheduler = createScheduler()
      let probe = { count: Number.NaN }
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  (abc)')
        const unsub = '        ---!'
        const expected = '     a    '
        const subs = '         ^--!'
        expectObservable(source.pipe(rateLimit({ rate: 10, burst: 1 })), unsub).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe(subs)
        probe = pendingAt(testScheduler, 4)
      })
      expect(probe.count).toBe(0)
    })

    it('on a shared bucket leaves the queue: the other subscriber moves up', () => {
      const testScheduler = createScheduler()
      let bucket = null as TokenBucket | null
      testScheduler.run(({ cold, expectObservable, expectSubscriptions, time }) => {
        bucket = new TokenBucket({ rate: 10, burst: 1 })
        const first = cold('   (abc)     ')
        const second = cold('  (x|)      ')
        const unsub = '        ---!      '
        expectObservable(first.pipe(rateLimit(bucket)), unsub).toBe('a')
        // Had b kept its place x would come at 200.
        expectObservable(second.pipe(rateLimit(bucket))).toBe('100ms (x|)')
        expectSubscriptions(first.subscriptions).toBe('^--!')
        expectSubscriptions(second.subscriptions).toBe('(^!)')
        testScheduler.schedule(() => expect(bucket?.waiting).toBe(1), time('----|'))
      })
      expect(bucket?.waiting).toBe(0)
    })
  })

  describe('cost', () => {
    it('cost 3 at 10/s burst 5: 0, 100, 400, 700 ms', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  (abcd|)                         ')
        const expected = '     a 99ms b 299ms c 299ms (d|)     '
        const limited = rateLimit({ rate: 10, burst: 5 }, { cost: () => 3 })
        expectObservable(source.pipe(limited)).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe('(^!)')
      })
    })

    it('cost 0 passes with no tokens left, but never overtakes a waiting value', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const limited = rateLimit({ rate: 10, burst: 1 }, { cost: costOf({ z: 0 }) })
        // z costs 0: behind b it goes out with b; alone it goes out at once, though a took
        // the only token.
        const queued = cold('  (abzc|)               ')
        const queuedOut = '    a 99ms (bz) 96ms (c|)'
        const alone = cold('   a 49ms z|             ')
        const aloneOut = '     a 49ms z|             '
        expectObservable(queued.pipe(limited)).toBe(queuedOut)
        expectObservable(alone.pipe(limited)).toBe(aloneOut)
        expectSubscriptions(queued.subscriptions).toBe('(^!)')
        expectSubscriptions(alone.subscriptions).toBe('^ 50ms !')
      })
    })

    it('head of line: a costly value waits and the cheaper ones behind it keep their order', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        // b needs 5 tokens (500 ms); c and d, 1 each, wait behind it.
        const source = cold('  (abcd|)                         ')
        const expected = '     a 499ms b 99ms c 99ms (d|)      '
        const limited = rateLimit({ rate: 10, burst: 5 }, { cost: costOf({ a: 5, b: 5 }) })
        expectObservable(source.pipe(limited)).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe('(^!)')
      })
    })

    it('a cost above the burst errors with BurstExceededError', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  a-b-|')
        const expected = '     a-#  '
        const subs = '         ^-!  '
        const limited = rateLimit({ rate: 10, burst: 3 }, { cost: costOf({ b: 4 }) })
        expectObservable(source.pipe(limited)).toBe(
          expected,
          undefined,
          new BurstExceededError(4, 3),
        )
        expectSubscriptions(source.subscriptions).toBe(subs)
      })
    })

    it('a cost function that throws errors with that error; waiting values are dropped', () => {
      const testScheduler = createScheduler()
      const boom = new Error('no cost for x')
      let probe = { count: Number.NaN }
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const cost = (value: string) => {
          if (value === 'x') throw boom
          return 1
        }
        const source = cold('  (ab) 46ms x    ')
        const expected = '     a 49ms #       '
        const subs = '         ^ 49ms !       '
        const limited = rateLimit({ rate: 10, burst: 1 }, { cost })
        expectObservable(source.pipe(limited)).toBe(expected, undefined, boom)
        expectSubscriptions(source.subscriptions).toBe(subs)
        probe = pendingAt(testScheduler, 51)
      })
      expect(probe.count).toBe(0)
    })

    it.each([
      ['negative', -1],
      ['NaN', Number.NaN],
      ['Infinity', Number.POSITIVE_INFINITY],
      ['a string', '2'],
      ['undefined', undefined],
    ])('a cost that is %s errors with InvalidCostError', (_, bad) => {
      const testScheduler = createScheduler()
      let caught: unknown
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('  a-b|')
        const expected = '     #   '
        const subs = '         (^!)'
        const limited = rateLimit<string>({ rate: 10, burst: 5 }, { cost: () => bad as number })
        expectObservable(source.pipe(limited)).toBe(expected, undefined, new InvalidCostError(bad))
        expectSubscriptions(source.subscriptions).toBe(subs)
        cold('a')
          .pipe(limited)
          .subscribe({ error: (error: unknown) => (caught = error) })
      })
      expect(caught).toBeInstanceOf(InvalidCostError)
      expect((caught as InvalidCostError).code).toBe('RX_FANOUT_INVALID_COST')
    })
  })

  describe('limiters', () => {
    it('a shared TokenBucket: two sources interleave and together keep to 10/s', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const bucket = new TokenBucket({ rate: 10, burst: 1 })
        const first = cold('   (abcd|)                               ')
        const second = cold('  (wxyz|)                               ')
        const expected1 = '    a 99ms b 199ms c 199ms (d|)           '
        const expected2 = '    200ms w 199ms x 199ms y 99ms (z|)     '
        expectObservable(first.pipe(rateLimit(bucket))).toBe(expected1)
        expectObservable(second.pipe(rateLimit(bucket))).toBe(expected2)
        expectSubscriptions(first.subscriptions).toBe('(^!)')
        expectSubscriptions(second.subscriptions).toBe('(^!)')
      })
    })

    it('a shared TokenBucket is FIFO across sources: a later cheap value waits behind a costly one', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const bucket = new TokenBucket({ rate: 10, burst: 5 })
        const cost = costOf({ a: 5, b: 5 })
        // b waits for 5 tokens until 500; x comes at 200, when 2 tokens are there, and
        // queues behind b.
        const first = cold('   (ab|)                 ')
        const second = cold('  200ms x|              ')
        const expected1 = '    a 499ms (b|)          '
        const expected2 = '    600ms (x|)            '
        expectObservable(first.pipe(rateLimit(bucket, { cost }))).toBe(expected1)
        expectObservable(second.pipe(rateLimit(bucket, { cost }))).toBe(expected2)
        expectSubscriptions(first.subscriptions).toBe('(^!)')
        expectSubscriptions(second.subscriptions).toBe('^ 200ms !')
      })
    })

    it('{ rate, burst } makes a bucket per subscription: two subscriptions do not share', () => {
      const testScheduler = createScheduler()
      testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
        const limited = rateLimit<string>({ rate: 10, burst: 1 })
        const source = cold('  (abc|)             ')
        const expected = '     a 99ms b 99ms (c|) '
        expectObservable(source.pipe(limited)).toBe(expected)
        expectObservable(source.pipe(limited)).toBe(expected)
        expectSubscriptions(source.subscriptions).toBe(['(^!)', '(^!)'])
      })
    })
  })
})

describe('rateLimit options', () => {
  const optionError = (name: string, value: unknown) =>
    expect.objectContaining({
      name: 'RangeError',
      code: 'RX_FANOUT_INVALID_OPTION',
      message: expect.stringMatching(new RegExp(`^${name} .*got ${String(value)}$`)),
    })

  it.each([0, -1, Number.NaN])(
    'rate %s is a RangeError naming rate, thrown at construction',
    (rate) => {
      let thrown: unknown
      try {
        rateLimit({ rate, burst: 1 })
      } catch (error) {
        thrown = error
      }
      expect(thrown).toBeInstanceOf(RangeError)
      expect(thrown).toEqual(optionError('rate', rate))
    },
  )

  it.each([0, -1, 1.5])(
    'burst %s is a RangeError naming burst, thrown at construction',
    (burst) => {
      let thrown: unknown
      try {
        rateLimit({ rate: 10, burst })
      } catch (error) {
        thrown = error
      }
      expect(thrown).toBeInstanceOf(RangeError)
      expect(thrown).toEqual(optionError('burst', burst))
    },
  )
})
