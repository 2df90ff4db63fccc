/** A node of {@link LinkedList}; `list` is null once the node is out of the list. */
export interface Node<T> {
  value: T
  prev: Node<T> | null
  next: Node<T> | null
  list: LinkedList<T> | null
}

/**
 * A doubly linked FIFO: push, and removal from the head or the middle, are O(1). Waiters
 * that give up leave from wherever they stand, so an array's `splice`/`shift` (O(n)) would
 * make a long queue quadratic.
 */
export class LinkedList<T> {
  head: Node<T> | null = null
  tail: Node<T> | null = null
  size = 0

  push(value: T): Node<T> {
    const node: Node<T> = { value, prev: this.tail, next: null, list: this }
    if (this.tail) this.tail.next = node
    else this.head = node
    this.tail = node
    this.size++
    return node
  }

  /** Removes `node` if it is still in this list; returns whether it was. */
  remove(node: Node<T>): boolean {
    if (node.list !== this) return false
    if (node.prev) node.prev.next = node.next
    else this.head = node.next
    if (node.next) node.next.prev = node.prev
    else this.tail = node.prev
    node.prev = node.next = null
    node.list = null
    this.size--
    return true
  }
}
