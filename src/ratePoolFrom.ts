import { Observable } from 'rxjs'
import type { Feed, PoolRun } from './internal/PoolRun.js'
import { resolvePoolOptions } from './internal/poolOptions.js'
import { subscribePool } from './internal/subscribePool.js'
import type { PoolOptions, ProcessFn, Result } from './types.js'

/**
 * The worker pool over an `Iterable` or `AsyncIterable` that it pulls from only when a
 * slot is free: true backpressure, so ten million lazily generated values cost memory for
 * `concurrency` jobs, not for ten million. Rules and results as in `ratePool`; stopping
 * (failure, drain, unsubscribe) calls the iterator's `return()`.
 *
 * ```ts
 * import { ratePoolFrom } from 'rx-fanout'
 *
 * function* ids() { for (let id = 1; id <= 10_000_000; id++) yield id }
 * ratePoolFrom(ids(), (id) => fetchUser(id), { concurrency: 8, limiter: { rate: 100, burst: 10 } })
 *   .subscribe((r) => r.ok || console.error(r.error))
 * ```
 */
export function ratePoolFrom<T, R>(
  source: Iterable<T> | AsyncIterable<T>,
  process: ProcessFn<T, R>,
  options: PoolOptions,
): Observable<Result<T, R>> {
  const asyncSource = typeof (source as AsyncIterable<T>)?.[Symbol.asyncIterator] === 'function'
  if (!asyncSource && typeof (source as Iterable<T>)?.[Symbol.iterator] !== 'function') {
    throw new TypeError(`source must be an Iterable or an AsyncIterable, got ${typeof source}`)
  }
  if (typeof process !== 'function') {
    throw new TypeError(`process must be a function, got ${typeof process}`)
  }
  const resolved = resolvePoolOptions(options)
  return new Observable<Result<T, R>>((subscriber) =>
    subscribePool(subscriber, process, resolved, (run) =>
      asyncSource
        ? pullAsync((source as AsyncIterable<T>)[Symbol.asyncIterator](), run)
        : pullSync((source as Iterable<T>)[Symbol.iterator](), run),
    ),
  )
}

function pullSync<T>(iterator: Iterator<T>, run: PoolRun<T, unknown>): Feed {
  let done = false
  return {
    demand() {
      // One value per free slot, and not one more.
      while (!done && run.wantsMore) {
        let step: IteratorResult<T>
        try {
          step = iterator.next()
        } catch (error) {
          done = true
          run.fail(error)
          return
        }
        if (step.done) {
          done = true
          run.inputComplete()
          return
        }
        run.offer(step.value)
      }
    },
    stop() {
      if (done) return
      done = true
      try {
        iterator.return?.()
      } catch {
        // The pool is stopping already; a failing return() has nobody to tell.
      }
    },
  }
}

function pullAsync<T>(iterator: AsyncIterator<T>, run: PoolRun<T, unknown>): Feed {
  let done = false
  let pending = false
  const fail = (error: unknown) => {
    pending = false
    if (done) return
    done = true
    run.fail(error)
  }
  return {
    demand() {
      if (done || pending || !run.wantsMore) return
      // At most one next() outstanding: a value is pulled only for a free slot.
      pending = true
      let next: Promise<IteratorResult<T>>
      try {
        next = Promise.resolve(iterator.next())
      } catch (error) {
        fail(error)
        return
      }
      next.then((step) => {
        pending = false
        if (done) {
          // Pulled just before a drain: taken from the source but never started.
          if (!step.done && !run.closed) run.metrics.dropped++
          return
        }
        if (step.done) {
          done = true
          run.inputComplete()
          return
        }
        run.offer(step.value)
        run.pump()
      }, fail)
    },
    stop() {
      if (done) return
      done = true
      try {
        Promise.resolve(iterator.return?.()).catch(() => {})
      } catch {
        // As in pullSync: nobody left to tell.
      }
    },
  }
}
