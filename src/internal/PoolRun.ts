import {
  finalize,
  from,
  type Observable,
  type ObservableInput,
  type Subscriber,
  type Subscription,
} from 'rxjs'
import { CancelledError, JobError, QueueOverflowError } from '../errors.js'
import type { Limiter } from '../Limiter.js'
import type { Release } from '../Permits.js'
import { PoolMetrics } from '../PoolMetrics.js'
import { TokenBucket } from '../TokenBucket.js'
import type { Job, ProcessFn, Result, TaskContext } from '../types.js'
import { LinkedList, type Node } from './LinkedList.js'
import type { ResolvedPoolOptions } from './poolOptions.js'
import { Ring } from './Ring.js'
import { kDelivered, kTakeNow } from './symbols.js'

/** Where a pool's values come from: a pushed Observable or a pulled iterator. */
export interface Feed {
  /** Begin intake (a push feed subscribes here, once the run can stop it). */
  start?(): void
  /** A slot is free: pull a value now if you can (pull feeds; push feeds ignore it). */
  demand(): void
  /** Intake is over: unsubscribe, or call the iterator's `return()`. */
  stop(): void
}

/**
 * One subscription's worth of pool: slots, the queue of values waiting for one, and the
 * jobs holding one. Every rule of the pool lives here; `ratePool` and `ratePoolFrom` only
 * differ in their `Feed`.
 */
export class PoolRun<T, R> {
  readonly #queue = new Ring<T>()
  // Jobs holding a slot, in an O(1) list (a Set's add/delete per job costs GC and memory).
  readonly #tasks = new LinkedList<Task<T, R>>()
  #slots = 0
  #nextId = 0
  #inputDone = false
  #draining = false
  #pumping = false
  #again = false
  feed: Feed | null = null
  readonly bucket: TokenBucket | null
  readonly metrics: PoolMetrics

  constructor(
    readonly subscriber: Subscriber<Result<T, R>>,
    readonly process: ProcessFn<T, R>,
    readonly options: ResolvedPoolOptions,
    readonly limiter: Limiter | null,
  ) {
    this.bucket = limiter instanceof TokenBucket ? limiter : null
    this.metrics = options.metrics ?? new PoolMetrics({ window: 1 })
    if (limiter) this.metrics.limiter = limiter
  }

  get closed(): boolean {
    return this.subscriber.closed
  }

  /** Whether a pull feed should produce another value now. */
  get wantsMore(): boolean {
    return (
      !this.#inputDone &&
      !this.#draining &&
      this.#slots < this.options.concurrency &&
      this.#queue.size === 0 &&
      !this.subscriber.closed
    )
  }

  /** Jobs waiting for a token (not for a retry delay). */
  tokenWaits = 0

  /** Someone waits for a token or a slot: the limiter, not demand, sets the pace. */
  get busy(): boolean {
    return this.#queue.size > 0 || this.tokenWaits > 0
  }

  /** A value arrives: start it in a free slot, or queue it. */
  offer(value: T): void {
    if (this.#draining || this.subscriber.closed) return
    if (this.#slots < this.options.concurrency && this.#queue.size === 0) {
      this.#start(value)
      return
    }
    if (this.#queue.size >= this.options.maxQueued) {
      this.fail(new QueueOverflowError(this.options.maxQueued))
      return
    }
    this.#queue.push(value)
    this.metrics.queued++
  }

  inputComplete(): void {
    this.#inputDone = true
    this.pump()
  }

  fail(error: unknown): void {
    this.subscriber.error(error)
  }

  /** Stop intake; started jobs finish; the output completes after the last of them. */
  drain(): void {
    if (this.#draining || this.subscriber.closed) return
    this.#draining = true
    this.feed?.stop()
    this.metrics.queued -= this.#queue.size
    this.metrics.dropped += this.#queue.size
    this.#queue.clear()
    const unstarted = this.#taskList().filter((task) => !task.started)
    for (const task of unstarted) this.#release(task)
    this.metrics.dropped += unstarted.length
    cancelAll(unstarted, new CancelledError('the pool was drained before this job started'))
    this.pump()
  }

  /** Everything stops at once: intake, token waits, retry delays, running jobs. */
  teardown(reason: unknown): void {
    this.feed?.stop()
    this.metrics.queued -= this.#queue.size
    this.#queue.clear()
    const tasks = this.#taskList()
    for (const task of tasks) this.#tasks.remove(task.node as Node<Task<T, R>>)
    this.#slots = 0
    cancelAll(tasks, reason)
  }

  /** Fills free slots from the queue and the feed; completes when all is done. */
  pump(): void {
    // Jobs that end synchronously call back in here: loop instead of recursing.
    if (this.#pumping) {
      this.#again = true
      return
    }
    this.#pumping = true
    try {
      do {
        this.#again = false
        const concurrency = this.options.concurrency
        while (this.#slots < concurrency && this.#queue.size > 0 && !this.subscriber.closed) {
          this.metrics.queued--
          this.#start(this.#queue.shift() as T)
        }
        if (this.wantsMore) this.feed?.demand()
      } while (this.#again)
      if (
        (this.#inputDone || this.#draining) &&
        this.#slots === 0 &&
        this.#queue.size === 0 &&
        !this.subscriber.closed
      ) {
        this.subscriber.complete()
      }
    } finally {
      this.#pumping = false
    }
  }

  /** A job ends with a result. */
  settle(task: Task<T, R>, result: Result<T, R>): void {
    task.releasePermit()
    this.metrics.record(result.durationMs)
    if (!result.ok) {
      this.metrics.failed++
      if (this.options.failFast) {
        this.#release(task)
        this.fail(new JobError(result.job, result.error, result.attempts))
        return
      }
    } else this.metrics.succeeded++
    this.#release(task)
    this.subscriber.next(result)
    this.pump()
  }

  #start(value: T): void {
    const task = new Task<T, R>(this, { id: this.#nextId++, value })
    this.#slots++
    task.node = this.#tasks.push(task)
    task.acquire()
  }

  #taskList(): Task<T, R>[] {
    const out: Task<T, R>[] = []
    for (let node = this.#tasks.head; node !== null; node = node.next) out.push(node.value)
    return out
  }

  #release(task: Task<T, R>): void {
    if (task.node !== null && this.#tasks.remove(task.node)) this.#slots--
  }
}

// Orders token requests across every pool, so that waits can be given up newest first.
let takeCount = 0

/**
 * Cancels jobs, giving up their token waits newest first: giving up the oldest first would
 * let the bucket serve the next of them in that very moment — a process call after the
 * stop, and a token lost. Newest first, each leaving waiter is behind the others, except
 * the last, whose departure lets the bucket serve someone else's waiter, as it should.
 */
function cancelAll<T, R>(tasks: Task<T, R>[], reason: unknown): void {
  for (const task of tasks) task.cancelling = true
  tasks.sort((a, b) => b.takeSeq - a.takeSeq)
  for (const task of tasks) task.cancel(reason)
}

/**
 * One job in one slot: token, call, retries. It is its own `TaskContext`, so a job costs
 * one object; its AbortController is only made if the process function reads `signal`.
 */
class Task<T, R> implements TaskContext<T> {
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
    const wait = permits.acquire().subscribe({
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
      error: (error: unknown) => run.fail(error),
    })
    sync = false
    if (granted !== null) {
      run.metrics.waiting--
      this.#release = granted
      this.#acquireToken()
    } else if (!wait.closed) this.#wait = wait
  }

  /** Gives the shared permit back, if the job holds one. */
  releasePermit(): void {
    const release = this.#release
    this.#release = null
    release?.()
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
      error: (error: unknown) => run.fail(error),
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

  #call(): void {
    const run = this.run
    if (!this.started) {
      this.started = true
      this.#startedAt = run.options.scheduler.now()
    }
    this.#calling = true
    run.metrics.inFlight++
    let input: ObservableInput<R>
    let source: Observable<R>
    try {
      input = run.process(this.job.value, this)
      if (input instanceof Promise) {
        // The common case, without an Observable around it.
        input.then(
          (value: R) => this.#succeeded(value),
          (error: unknown) => this.#failed(error),
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
    run.options.adaptive?.onSuccess(run.busy)
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
      this.#wait = options.scheduler.schedule(() => {
        this.#wait = null
        run.metrics.waiting--
        this.acquire()
      }, delay)
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
