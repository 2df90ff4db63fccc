/**
 * A TCP proxy (node:net) in front of a port, for network partitions that HOLD bytes rather
 * than drop them: while `held`, nothing is forwarded in either direction, every byte is
 * kept, in order, and both sockets stay open; `release()` delivers what was held and
 * forwarding goes on. This is the partition a client cannot tell from a slow server: its
 * command was sent (the write succeeded), no answer comes, and when the network heals
 * the server executes it late, so a timed-out command may still take effect. Dropping
 * the bytes would test something easier.
 *
 * Ends and resets are held too, in their place in the stream: a server killed during a
 * partition is seen by the client only after `release()`, after any bytes before it.
 * Connections accepted while held are held from their first byte (the connection itself
 * is accepted: a TCP handshake is not what the tests are about). `cutAll()` is the other
 * kind of fault: every connection reset (RST) at once, on both sides.
 */
import { once } from 'node:events'
import { connect, createServer, type Server, type Socket } from 'node:net'

/** What one direction of a connection carries: bytes, a FIN, or a reset. */
type Item = Buffer | 'end' | 'reset'

/** One direction of a proxied connection: from `from`, to `to`. */
interface Direction {
  name: 'up' | 'down'
  from: Socket
  to: Socket
  /** What arrived while held, in order. */
  queue: Item[]
  /** Writes handed to `to` not yet flushed: a reset waits for them (RST drops unsent bytes). */
  pending: number
  resetWhenFlushed: boolean
}

interface Link {
  up: Direction
  down: Direction
}

export class HoldingProxy {
  readonly #links = new Set<Link>()
  #held = false
  #accepted = 0
  readonly #forwarded = { up: 0, down: 0 }

  private constructor(
    readonly server: Server,
    readonly port: number,
    readonly targetPort: number,
    readonly targetHost: string,
  ) {}

  /** A proxy on 127.0.0.1, on a port of its own, to `targetHost:targetPort`. */
  static async start(targetPort: number, targetHost = '127.0.0.1'): Promise<HoldingProxy> {
    // allowHalfOpen: a FIN from one side is passed on as a FIN, not turned into a close.
    const server = createServer({ allowHalfOpen: true, noDelay: true })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const address = server.address()
    if (address === null || typeof address === 'string') throw new Error('no port')
    const proxy = new HoldingProxy(server, address.port, targetPort, targetHost)
    server.on('connection', (client) => proxy.#accept(client))
    return proxy
  }

  /** Forwarding is stopped (bytes are held). */
  get held(): boolean {
    return this.#held
  }

  /** Connections open through the proxy now. */
  get connections(): number {
    return this.#links.size
  }

  /** Connections accepted since the start. */
  get accepted(): number {
    return this.#accepted
  }

  /**
   * Bytes handed to the OS so far: `up` towards the target, `down` back to the clients.
   * On loopback that is as good as delivered, so a test can tell that a command has
   * reached the server before it holds the answer.
   */
  get forwarded(): { readonly up: number; readonly down: number } {
    return { ...this.#forwarded }
  }

  /** Bytes held now, both directions together. */
  get heldBytes(): number {
    let bytes = 0
    for (const link of this.#links) {
      for (const item of [...link.up.queue, ...link.down.queue]) {
        if (typeof item !== 'string') bytes += item.length
      }
    }
    return bytes
  }

  /** Stops forwarding in both directions; keeps every byte, and every socket open. */
  hold(): void {
    this.#held = true
  }

  /** Delivers everything held, in order, and forwards again. */
  release(): void {
    // Synchronous: no 'data' event can come between the flush and the switch, so what
    // arrives next is written after what was held.
    this.#held = false
    for (const link of this.#links) {
      for (const direction of [link.up, link.down]) {
        for (const item of direction.queue.splice(0)) this.#deliver(direction, item)
      }
    }
  }

  /** Resets every connection (RST to both ends) and forgets what was held. Returns how many. */
  cutAll(): number {
    const count = this.#links.size
    for (const link of this.#links) this.#drop(link)
    return count
  }

  /** Cuts every connection and stops listening. */
  async close(): Promise<void> {
    this.cutAll()
    if (!this.server.listening) return
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }

  #accept(client: Socket): void {
    this.#accepted++
    const upstream = connect({
      port: this.targetPort,
      host: this.targetHost,
      allowHalfOpen: true,
      noDelay: true,
    })
    const link: Link = {
      up: {
        name: 'up',
        from: client,
        to: upstream,
        queue: [],
        pending: 0,
        resetWhenFlushed: false,
      },
      down: {
        name: 'down',
        from: upstream,
        to: client,
        queue: [],
        pending: 0,
        resetWhenFlushed: false,
      },
    }
    this.#links.add(link)
    for (const direction of [link.up, link.down]) {
      const { from } = direction
      from.on('data', (chunk: Buffer) => this.#forward(direction, chunk))
      from.on('end', () => this.#forward(direction, 'end'))
      // A reset (or a refused upstream) on one side is a reset for the other, in turn.
      from.on('error', () => this.#forward(direction, 'reset'))
      from.on('close', () => {
        if (link.up.from.destroyed && link.down.from.destroyed) this.#links.delete(link)
      })
    }
  }

  #forward(direction: Direction, item: Item): void {
    if (this.#held) direction.queue.push(item)
    else this.#deliver(direction, item)
  }

  #deliver(direction: Direction, item: Item): void {
    const { from, to } = direction
    if (to.destroyed) return
    if (item === 'end') {
      to.end()
      return
    }
    if (item === 'reset') {
      direction.resetWhenFlushed = true
      if (direction.pending === 0) reset(to)
      return
    }
    direction.pending++
    const flushed = to.write(item, (error) => {
      direction.pending--
      if (!error) this.#forwarded[direction.name] += item.length
      if (direction.pending === 0 && direction.resetWhenFlushed) reset(to)
    })
    // Backpressure: a slow reader slows the writer down rather than fill our memory.
    // (While held, reading goes on into the queue: holding is the point.)
    if (!flushed && !from.isPaused()) {
      from.pause()
      to.once('drain', () => from.resume())
    }
  }

  #drop(link: Link): void {
    this.#links.delete(link)
    for (const direction of [link.up, link.down]) {
      direction.queue.length = 0
      reset(direction.from)
    }
  }
}

/** RST rather than FIN: the peer gets ECONNRESET, as when a connection is torn down. */
function reset(socket: Socket): void {
  if (socket.destroyed) return
  try {
    socket.resetAndDestroy()
  } catch {
    socket.destroy()
  }
}
