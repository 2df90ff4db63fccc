/**
 * A growable ring buffer used as a FIFO: push and shift are O(1) amortised and nothing is
 * copied on shift (RxJS's own buffers drain an array with `shift()`, which is O(n) per
 * call and makes a large backlog quadratic).
 */
export class Ring<T> {
  #items: (T | undefined)[]
  #head = 0
  #size = 0

  constructor(capacity = 16) {
    this.#items = new Array(capacity)
  }

  get size(): number {
    return this.#size
  }

  push(item: T): void {
    const items = this.#items
    if (this.#size === items.length) this.#grow()
    this.#items[(this.#head + this.#size) % this.#items.length] = item
    this.#size++
  }

  peek(): T | undefined {
    return this.#size === 0 ? undefined : this.#items[this.#head]
  }

  shift(): T | undefined {
    if (this.#size === 0) return undefined
    const item = this.#items[this.#head]
    // Drop the reference so a drained ring keeps nothing alive.
    this.#items[this.#head] = undefined
    this.#head = (this.#head + 1) % this.#items.length
    this.#size--
    return item
  }

  clear(): void {
    this.#items = new Array(16)
    this.#head = 0
    this.#size = 0
  }

  #grow(): void {
    const old = this.#items
    const next = new Array<T | undefined>(old.length * 2)
    for (let i = 0; i < this.#size; i++) next[i] = old[(this.#head + i) % old.length]
    this.#items = next
    this.#head = 0
  }
}
