import { map, Observable, throwError, timer } from 'rxjs'
import { describe, expect, it } from 'vitest'
import { type Permits, type Release, ratePool } from '../src/index.js'
import { createScheduler } from './helpers.js'

/** An in-memory counting semaphore that records its grants and releases. */
function semaphore(size: number) {
  let free = size
  const waiters: ((release: Release) => void)[] = []
  const log: string[] = []
  const grant = (deliver: (release: Release) => void) => {
    free--
    let released = false
    deliver(() => {
      if (released) return
      released = true
      log.push('release')
      free++
      const next = waiters.shift()
      if (next) grant(next)
    })
  }
  const permits: Permits = {
    acquire: () =>
      new Observable<Release>((subscriber) => {
        const deliver = (release: Release) => {
          log.push('grant')
          subscriber.next(release)
          subscriber.complete()
        }
        if (free > 0 && waiters.length === 0) {
          grant(deliver)
          return
        }
        waiters.push(deliver)
        return () => {
          const i = waiters.indexOf(deliver)
          if (i >= 0) waiters.splice(i, 1)
        }
      }),
  }
  return { permits, log, free: () => free, waiting: () => waiters.length }
}

describe('ratePool with shared permits', () => {
  it('a job holds a permit beside its slot: 4 slots, 2 permits → two at a time', () => {
    const sem = semaphore(2)
    const starts: number[] = []
    const scheduler = createScheduler()
    scheduler.run(({ cold, expectObservable }) => {
      const source = cold('(abcd|)')
      const out = source.pipe(
        ratePool(
          (v: string) => {
            starts.push(scheduler.now())
            return timer(100).pipe(map(() => v))
          },
          { concurrency: 4, permits: sem.permits },
        ),
        map((r) => (r.ok ? r.value : '!')),
      )
      expectObservable(out).toBe('100ms (ab) 96ms (cd|)')
    })
    expect(starts).toEqual([0, 0, 100, 100])
    expect(sem.free()).toBe(2)
    expect(sem.log.filter((l) => l === 'grant')).toHaveLength(4)
  })

  it('the permit is kept across retries and given back once, at the result', () => {
    const sem = semaphore(1)
    const scheduler = createScheduler()
    const frees: number[] = []
    scheduler.run(({ cold, expectObservable }) => {
      let tries = 0
      const out = cold('(a|)').pipe(
        ratePool(
          () => {
            frees.push(sem.free())
            return ++tries < 3
              ? throwError(() => new Error('again'))
              : timer(10).pipe(map(() => 'ok'))
          },
          { concurrency: 1, permits: sem.permits, retry: { attempts: 3, random: () => 0 } },
        ),
        map((r) => (r.ok ? r.value : '!')),
      )
      expectObservable(out).toBe('10ms (x|)', { x: 'ok' })
    })
    expect(frees).toEqual([0, 0, 0])
    expect(sem.log).toEqual(['grant', 'release'])
  })

  it('fail-fast and unsubscribe give every permit back and give up every permit wait', () => {
    const sem = semaphore(2)
    const scheduler = createScheduler()
    scheduler.run(({ cold, expectObservable }) => {
      const out = cold('(abcd|)').pipe(
        ratePool((v: string) => (v === 'b' ? cold('50ms #') : cold('200ms (x|)')), {
          concurrency: 4,
          permits: sem.permits,
        }),
      )
      expectObservable(out).toBe('50ms #', undefined, expect.anything())
    })
    expect(sem.free()).toBe(2)
    expect(sem.waiting()).toBe(0)

    const sem2 = semaphore(1)
    createScheduler().run(({ cold, expectObservable }) => {
      const out = cold('(ab|)').pipe(
        ratePool(() => cold('200ms (x|)'), { concurrency: 2, permits: sem2.permits }),
      )
      expectObservable(out, '^ 99ms !').toBe('')
    })
    expect(sem2.free()).toBe(1)
    expect(sem2.waiting()).toBe(0)
  })
})
