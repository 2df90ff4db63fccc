import { from, type Observable, type Subscriber, take } from 'rxjs'
import { CancelledError } from '../errors.js'
import type { Limiter } from '../Limiter.js'
import { TokenBucket } from '../TokenBucket.js'
import type { ProcessFn, Result } from '../types.js'
import { type Feed, PoolRun } from './PoolRun.js'
import type { ResolvedPoolOptions } from './poolOptions.js'
import { checkRate, invalidOption } from './validate.js'

/**
 * The body of a pool subscription: makes the limiter (following a rate stream if given
 * one), wires drain and the external signal, opens the feed, and tears all of it down.
 */
export function subscribePool<T, R>(
  subscriber: Subscriber<Result<T, R>>,
  process: ProcessFn<T, R>,
  options: ResolvedPoolOptions,
  openFeed: (run: PoolRun<T, R>) => Feed,
): void {
  let run: PoolRun<T, R> | null = null
  let drainRequested = false
  // Why the jobs still running are cancelled, as their signals' reason.
  let stopReason: unknown = new CancelledError('the pool was unsubscribed')
  // Added first, so that an error raised while still subscribing tears down at once.
  // Later finalizers go through subscriber.add too: it runs them at once if closed.
  subscriber.add(() => run?.teardown(stopReason))

  const fail = (error: unknown, reason: unknown) => {
    if (subscriber.closed) return
    stopReason = reason
    // Stop everything before the error is delivered: RxJS runs finalizers after the
    // downstream's error callback, and that callback may free a shared token that would
    // otherwise start one of this pool's waiting jobs.
    run?.teardown(reason)
    subscriber.error(error)
  }

  const start = (limiter: Limiter | null) => {
    if (subscriber.closed) return
    const current = new PoolRun(subscriber, process, options, limiter)
    current.fail = (error) =>
      fail(error, new CancelledError('the pool stopped: another job or the source failed', error))
    run = current
    if (drainRequested) {
      // Drained before intake began: nothing is taken in, the output just completes.
      current.drain()
      return
    }
    // The feed is in place before it starts, so a synchronous source that fails a job
    // midway is stopped midway.
    current.feed = openFeed(current)
    current.feed.start?.()
    current.pump()
  }

  const signal = options.signal
  if (signal) {
    const onAbort = () => fail(signal.reason, signal.reason)
    if (signal.aborted) {
      onAbort()
      return
    }
    signal.addEventListener('abort', onAbort, { once: true })
    subscriber.add(() => signal.removeEventListener('abort', onAbort))
  }

  const drain = options.drain
  if (drain !== null) {
    const onDrain = () => {
      drainRequested = true
      if (run) run.drain()
      // Still waiting for the first rate: nothing was taken in, so there is nothing to finish.
      else subscriber.complete()
    }
    if (typeof AbortSignal !== 'undefined' && drain instanceof AbortSignal) {
      if (drain.aborted) drainRequested = true
      else {
        drain.addEventListener('abort', onDrain, { once: true })
        subscriber.add(() => drain.removeEventListener('abort', onDrain))
      }
    } else {
      const sub = from(drain as Observable<unknown>)
        .pipe(take(1))
        .subscribe({
          next: onDrain,
          error: (error: unknown) => fail(error, error),
        })
      subscriber.add(sub)
    }
  }

  if (options.limiter !== null) start(options.limiter)
  else if (typeof options.rate === 'number') {
    const { rate, burst, scheduler } = options
    start(rate === Number.POSITIVE_INFINITY ? null : new TokenBucket({ rate, burst, scheduler }))
  } else {
    // A rate stream: intake starts with its first value; later values re-plan waiters.
    let bucket: TokenBucket | null = null
    const sub = options.rate.subscribe({
      next: (value) => {
        let rate: number
        try {
          rate = checkRate('limiter.rate', value, false)
        } catch (error) {
          fail(error, error)
          return
        }
        if (bucket) bucket.setRate(rate)
        else {
          bucket = new TokenBucket({ rate, burst: options.burst, scheduler: options.scheduler })
          start(bucket)
        }
      },
      error: (error: unknown) => fail(error, error),
      complete: () => {
        if (bucket === null) {
          const error = invalidOption(
            TypeError,
            'limiter.rate',
            'a stream that emits a rate',
            'a stream that completed empty',
          )
          fail(error, error)
        }
      },
    })
    subscriber.add(sub)
  }
}
