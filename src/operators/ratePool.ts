import { Observable, type OperatorFunction, Subject, takeUntil } from 'rxjs'
import { resolvePoolOptions } from '../internal/poolOptions.js'
import { subscribePool } from '../internal/subscribePool.js'
import type { PoolOptions, ProcessFn, Result } from '../types.js'

/**
 * Runs `process` on each value with at most `concurrency` jobs at once, each job started
 * only when the limiter grants its token: a rate-limited worker pool, as an operator.
 *
 * A job first gets a slot, then its token, then its process function is called — so job
 * starts keep the bucket's envelope even when slots are the bottleneck. Each job yields
 * one `Result`, in completion order. In `'fail-fast'` mode (default) the first failure
 * errors the output with a `JobError` at once and cancels everything else (signals
 * aborted, waits cancelled, source unsubscribed); in `'collect'` mode failures are
 * `{ ok: false }` results.
 *
 * ```
 * ratePool(work, { concurrency: 2, limiter: { rate: 10, burst: 2 } })
 * work takes 50 ms                                  1 char = 10 ms
 * source:  (abc|)
 * starts:  (ab)------c              c: slot at 50 ms, token at 100 ms
 * result:  -----(AB)------(C|)      A, B at 50 ms; C at 150 ms, then complete
 * ```
 *
 * ```ts
 * import { from } from 'rxjs'
 * import { ratePool } from 'rx-fanout'
 *
 * from(userIds)
 *   .pipe(ratePool((id, { signal }) => fetchUser(id, signal), {
 *     concurrency: 8,
 *     limiter: { rate: 10, burst: 20 },
 *   }))
 *   .subscribe((r) => console.log(r.job.id, r.ok ? r.value : r.error))
 * ```
 *
 * @param process turns a value into its result (Observable, Promise, iterable…); gets
 *   `{ signal, attempt, job }`.
 * @param options see `PoolOptions`; validated here, at construction.
 */
export function ratePool<T, R>(
  process: ProcessFn<T, R>,
  options: PoolOptions,
): OperatorFunction<T, Result<T, R>> {
  if (typeof process !== 'function') {
    throw new TypeError(`process must be a function, got ${typeof process}`)
  }
  const resolved = resolvePoolOptions(options)
  return (source) =>
    new Observable<Result<T, R>>((subscriber) =>
      subscribePool(subscriber, process, resolved, (run) => {
        // takeUntil so that stopping works even while a synchronous source is emitting.
        const stop = new Subject<void>()
        return {
          start: () =>
            source.pipe(takeUntil(stop)).subscribe({
              next: (value) => run.offer(value),
              error: (error: unknown) => run.fail(error),
              complete: () => run.inputComplete(),
            }),
          demand() {},
          stop: () => stop.next(),
        }
      }),
    )
}
