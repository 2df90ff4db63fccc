import { finalize, from, type Observable, type ObservableInput, type Subscription } from 'rxjs'
import type { Release } from '../Permits.js'
import type { Job, ProcessFn, TaskContext } from '../types.js'
import type { Node } from './LinkedList.js'
import type { PoolRun } from './PoolRun.js'
import { scheduleAfter } from './scheduleAfter.js'
import { kDelivered, kTakeNow } from './symbols.js'

// Orders token requests across every pool, so that waits can be given up newest first.
let takeCount = 0

/**
 * Cancels jobs, giving up their token waits newest first: giving up the oldest first would
 * let the bucket serve the next of them in that very moment — a process call after the
 * stop, and a token lost. Newest first, each leaving waiter is behind the others, except
 * the last, whose departure lets the bucket serve someone else's waiter, as it should.
 */
export function cancelAll<T, R>(tasks: Task<T, R>[], reason: unknown): void {
  for (const task of tasks) task.cancelling = true
  tasks.sort((a, b) => b.takeSeq - a.takeSeq)
  for (const task of tasks) task.cancel(reason)
}

/**
 * One job in one slot: token, call, retries. It is its own `TaskContext`, so a job costs
 * one object; its AbortController is only made if the process function reads `signal`.
 */
export class Task<T, R> implements TaskContext<T> {
  attempt = 0
  started = false
  /** This job's place in the run's list of slot holders. */
  node: Node<Task<T, R>> | null = null
  /** When this job last asked the limiter for a token (0: never). */
  takeSeq = 0
  /** Set for every job of a teardown before any is cancelled: no grant may start one. */
  cancelling = false
  #startedAt = 0
  #wait: Subscription | null = null
  #controller: AbortController | null = null
  #cancelled: unknown = undefined
  #isCancelled = false

  constructor(
    readonly run: PoolRun<T, R>,
    readonly job: Job<T>,
  ) {}

  get signal(): AbortSignal {
    if (this.#controller === null) {
      this.#controller = new AbortController()
      if (this.#isCancelled) this.#controller.abort(this.#cancelled)
    }
    return this.#controller.signal
  }

  /** Slot held: a shared permit (once per job), this attempt's token, then the call. */
  acquire(): void {
    const permits = this.run.options.permits
    if (permits === null || this.#release !== null) {
      this.#acquireToken()
      return
    }
    const run = this.run
    run.metrics.waiting++
    let sync = true
    let granted: Release | null = null
    let lostAtOnce = false
    const sub = permits.acquire().subscribe({
      next: (release) => {
        if (sync) {
          granted = release
          return
        }
        this.#wait = null
        run.metrics.waiting--
        if (this.cancelling || this.#isCancelled) release()
        else {
          this.#release = release
          this.#acquireToken()
        }
      },
      error: (error: unknown) => {
        if (sync && granted !== null) {
          // Granted and lost before acquire() returned: as if never granted, asked again.
          granted = null
          lostAtOnce = true
          return
        }
        if (this.#release !== null) {
          this.#permitLost(error)
          return
        }
        // The wait is over, if by an error: no longer counted as waiting.
        this.#wait = null
        run.metrics.waiting--
        run.fail(error)
      },
    })
    this.#permit = sub
    sync = false
    if (lostAtOnce) {
      run.metrics.waiting--
      this.#permit = null
      this.acquire()
    } else if (granted !== null) {
      run.metrics.waiting--
      this.#release = granted
      this.#acquireToken()
    } else if (!sub.closed) this.#wait = sub
  }

  /** Gives the shared permit back, if the job holds one. */
  releasePermit(): void {
    const release = this.#release
    const permit = this.#permit
    this.#release = null
    this.#permit = null
    release?.()
    permit?.unsubscribe()
  }

  // The permit was lost while held (a shared lease that could not be confirmed): the
  // attempt running on it ends now, its signal aborted with the loss, as a failed attempt;
  // a job still waiting for its token asks for a permit again.
  #permitLost(error: unknown): void {
    this.#release = null
    this.#permit = null
    if (this.#isCancelled) return
    const run = this.run
    if (this.#calling) {
      const running = this.#wait
      this.#controller?.abort(error)
      this.#failed(error)
      running?.unsubscribe()
      return
    }
    if (this.#inTokenWait) {
      const wait = this.#wait
      this.#wait = null
      this.#inTokenWait = false
      run.metrics.waiting--
      run.tokenWaits--
      wait?.unsubscribe()
      // The attempt that was waiting never started: it is asked for again, whole.
      this.attempt--
      this.acquire()
    }
    // In a retry delay: the next attempt asks for a permit first (acquire sees none held).
  }

  #acquireToken(): void {
    this.attempt++
    const run = this.run
    const limiter = run.limiter
    if (limiter === null) {
      this.#call()
      return
    }
    const bucket = run.bucket
    if (bucket?.[kTakeNow](1)) {
      this.#call()
      bucket[kDelivered]()
      return
    }
    run.metrics.waiting++
    run.tokenWaits++
    this.#inTokenWait = true
    let sync = true
    let granted = false
    this.takeSeq = ++takeCount
    const wait = limiter.take(1).subscribe({
      next: () => {
        granted = true
        if (sync || this.cancelling || this.#isCancelled) return
        this.#wait = null
        run.metrics.waiting--
        run.tokenWaits--
        this.#inTokenWait = false
        this.#call()
      },
      error: (error: unknown) => {
        this.#wait = null
        run.metrics.waiting--
        run.tokenWaits--
        this.#inTokenWait = false
        run.fail(error)
      },
    })
    sync = false
    if (granted) {
      run.metrics.waiting--
      run.tokenWaits--
      this.#inTokenWait = false
      this.#call()
    } else if (!wait.closed) this.#wait = wait
  }

  cancel(reason: unknown): void {
    if (this.#isCancelled) return
    this.#isCancelled = true
    this.#cancelled = reason
    const wait = this.#wait
    this.#wait = null
    // Whatever the job was doing is no longer counted: running, or waiting (token/retry).
    if (this.#calling) {
      this.#calling = false
      this.run.metrics.inFlight--
    } else if (wait !== null) this.run.metrics.waiting--
    if (this.#inTokenWait) {
      this.#inTokenWait = false
      this.run.tokenWaits--
    }
    wait?.unsubscribe()
    this.releasePermit()
    this.#controller?.abort(reason)
  }

  #calling = false
  #inTokenWait = false
  #release: Release | null = null
  #permit: Subscription | null = null

  #call(): void {
    const run = this.run
    if (!this.started) {
      this.started = true
      this.#startedAt = run.options.scheduler.now()
    }
    this.#calling = true
    // Each attempt has its own signal: a retry must not start with an aborted one.
    this.#controller = null
    run.metrics.inFlight++
    let input: ObservableInput<R>
    let source: Observable<R>
    try {
      input = run.process(this.job.value, this)
      if (input instanceof Promise) {
        // The common case, without an Observable around it. An attempt ended early (its
        // permit lost) may settle later, even during the next attempt: only this one's
        // own outcome counts.
        const attempt = this.attempt
        input.then(
          (value: R) => {
            if (attempt === this.attempt) this.#succeeded(value)
          },
          (error: unknown) => {
            if (attempt === this.attempt) this.#failed(error)
          },
        )
        return
      }
      // Inside the try: a process that returns no ObservableInput fails its job.
      source = from(input)
    } catch (error) {
      this.#failed(error)
      return
    }
    // The job ends once its Observable is torn down, not when it signals the end: the
    // next job must not start while this one still holds its resources.
    let last: R | undefined
    let outcome: 'ok' | 'error' | null = null
    let failure: unknown
    const sub = source
      .pipe(
        finalize(() => {
          if (outcome === 'ok') this.#succeeded(last as R)
          else if (outcome === 'error') this.#failed(failure)
        }),
      )
      .subscribe({
        next: (value) => {
          last = value
        },
        error: (error: unknown) => {
          outcome = 'error'
          failure = error
        },
        complete: () => {
          outcome = 'ok'
        },
      })
    if (!sub.closed && this.#calling) this.#wait = sub
  }

  #succeeded(value: R): void {
    if (this.#isCancelled || !this.#calling) return
    this.#ended()
    const run = this.run
    try {
      run.options.adaptive?.onSuccess(run.busy)
    } catch (error) {
      // A controller that throws fails the pool, rather than leaving this slot held.
      run.fail(error)
      return
    }
    run.settle(this, {
      ok: true,
      job: this.job,
      value,
      attempts: this.attempt,
      durationMs: run.options.scheduler.now() - this.#startedAt,
    })
  }

  #failed(error: unknown): void {
    if (this.#isCancelled || !this.#calling) return
    this.#ended()
    const run = this.run
    const { options, limiter } = run
    const retryAfter = (error as { retryAfterMs?: unknown } | null)?.retryAfterMs
    const retryAfterMs = typeof retryAfter === 'number' && retryAfter > 0 ? retryAfter : 0
    // Push-back is about the downstream, not this job: everyone waits.
    if (retryAfterMs > 0) limiter?.pauseFor?.(retryAfterMs)
    let retry = false
    let delay = 0
    try {
      if (options.adaptive?.isThrottle(error)) options.adaptive.onThrottle()
      if (this.attempt < options.attempts && options.retryable(error, this.attempt)) {
        const ceiling = Math.min(options.maxDelayMs, options.baseDelayMs * 2 ** (this.attempt - 1))
        // Never sooner than the server asked, with or without a limiter to pause.
        delay = Math.max(Math.floor(options.random() * ceiling), Math.ceil(retryAfterMs))
        retry = true
      }
    } catch (thrown) {
      // A user callback (retryable, random, isThrottle) threw: that ends the job, with it.
      error = thrown
      retry = false
    }
    if (retry) {
      run.metrics.retried++
      run.metrics.waiting++
      this.#wait = scheduleAfter(
        options.scheduler,
        () => {
          this.#wait = null
          run.metrics.waiting--
          this.acquire()
        },
        delay,
      )
      return
    }
    run.settle(this, {
      ok: false,
      job: this.job,
      error,
      attempts: this.attempt,
      durationMs: options.scheduler.now() - this.#startedAt,
    })
  }

  #ended(): void {
    this.#calling = false
    this.#wait = null
    this.run.metrics.inFlight--
  }
}
