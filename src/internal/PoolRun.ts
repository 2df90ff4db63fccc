import type { Subscriber } from 'rxjs'
import { CancelledError, JobError, QueueOverflowError } from '../errors.js'
import type { Limiter } from '../Limiter.js'
import { PoolMetrics } from '../PoolMetrics.js'
import { TokenBucket } from '../TokenBucket.js'
import type { ProcessFn, Result } from '../types.js'
import { LinkedList, type Node } from './LinkedList.js'
import type { ResolvedPoolOptions } from './poolOptions.js'
import { Ring } from './Ring.js'
import { cancelAll, Task } from './Task.js'

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
  #stopped = false
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
    return this.#stopped || this.subscriber.closed
  }

  /** Whether a pull feed should produce another value now. */
  get wantsMore(): boolean {
    return (
      !this.#inputDone &&
      !this.#draining &&
      this.#slots < this.options.concurrency &&
      this.#queue.size === 0 &&
      !this.closed
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
    if (this.#draining || this.closed) return
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
    if (this.#draining || this.closed) return
    this.#draining = true
    // Drop the queue before stopping the feed: stopping a push feed completes it, and
    // its completion pumps, which would start a queued value in a free slot.
    this.metrics.queued -= this.#queue.size
    this.metrics.dropped += this.#queue.size
    this.#queue.clear()
    this.feed?.stop()
    const unstarted = this.#taskList().filter((task) => !task.started)
    for (const task of unstarted) this.#release(task)
    this.metrics.dropped += unstarted.length
    cancelAll(unstarted, new CancelledError('the pool was drained before this job started'))
    this.pump()
  }

  /** Everything stops at once: intake, token waits, retry delays, running jobs. */
  teardown(reason: unknown): void {
    // Stopped: nothing more starts or completes, even while the feed winds down below.
    this.#stopped = true
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
        while (this.#slots < concurrency && this.#queue.size > 0 && !this.closed) {
          this.metrics.queued--
          this.#start(this.#queue.shift() as T)
        }
        if (this.wantsMore) this.feed?.demand()
      } while (this.#again)
      if (
        (this.#inputDone || this.#draining) &&
        this.#slots === 0 &&
        this.#queue.size === 0 &&
        !this.closed
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
