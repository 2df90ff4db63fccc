/**
 * A real Redis Cluster that a test starts itself: `masters × (1 + replicasPerMaster)`
 * RedisProcess nodes in cluster mode, joined by `redis-cli --cluster create`, so that a
 * master can be SIGKILLed and a replica seen to take its slots over (a failover), with the
 * same timings and redirections (MOVED, CLUSTERDOWN) a client meets in production.
 *
 * `start()` returns only a cluster that is whole in every node's eyes: `cluster_state:ok`
 * and all 16384 slots assigned everywhere, every node known to every node, one slot map
 * that all agree on, every replica's link to its master up. Anything less and a test's
 * first command could meet a half-built cluster. If it fails, every node is stopped and
 * the error carries redis-cli's output and the tail of every node's log.
 *
 * Questions about the topology (`masterForKey`, `replicaOf`, …) are asked of one live
 * node and answered from its view: right after a kill that view may still name the dead
 * master; `waitForFailover()` is what waits for every survivor to agree again.
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { Cluster, type ClusterOptions } from 'ioredis'
import { until } from '../helpers.js'
import { parseInfo, RedisProcess } from './RedisProcess.js'

export interface RedisClusterOptions {
  /** At least 3 (redis-cli refuses fewer). Default 3. */
  masters?: number
  /** Default 1. */
  replicasPerMaster?: number
  /** `cluster-node-timeout`: how long a silent master takes to be declared failed. Default 1000. */
  nodeTimeoutMs?: number
  /** How long `start()` waits for the cluster to be whole after creation. Default 20 s. */
  readyTimeoutMs?: number
}

/** A slot range and the port of the master that serves it. */
interface SlotRange {
  from: number
  to: number
  port: number
}

/** What one node says about the cluster. */
interface View {
  node: RedisProcess
  info: Record<string, string>
  ranges: SlotRange[]
}

const SLOTS = 16384
const execFileAsync = promisify(execFile)
// redis-cli colours its output even into a pipe.
const ANSI = /\u001b\[[0-9;]*m/g

export class RedisCluster {
  /** Node ids (CLUSTER MYID), read once at start: a dead node can no longer be asked. */
  readonly #ids = new Map<RedisProcess, string>()

  private constructor(
    /** Every node, masters and replicas, dead or alive, in the order they were created. */
    readonly nodes: readonly RedisProcess[],
  ) {}

  static async start({
    masters = 3,
    replicasPerMaster = 1,
    nodeTimeoutMs = 1000,
    readyTimeoutMs = 20_000,
  }: RedisClusterOptions = {}): Promise<RedisCluster> {
    if (masters < 3) throw new Error('a Redis Cluster needs at least 3 masters')
    const count = masters * (1 + replicasPerMaster)
    const started = await Promise.allSettled(
      Array.from({ length: count }, () =>
        RedisProcess.start({
          cluster: true,
          clusterNodeTimeoutMs: nodeTimeoutMs,
          // A master waits 5 s by default before a diskless sync, for more replicas to
          // join it; each of ours has at most one or two, all already there.
          extraArgs: ['--repl-diskless-sync-delay', '0'],
        }),
      ),
    )
    const nodes = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []))
    const cluster = new RedisCluster(nodes)
    try {
      const failed = started.find((s) => s.status === 'rejected')
      if (failed !== undefined) throw failed.reason
      await cluster.#create(replicasPerMaster)
      for (const node of nodes) cluster.#ids.set(node, String(await node.call('CLUSTER', 'MYID')))
      await cluster.#whole(masters, replicasPerMaster, readyTimeoutMs)
      return cluster
    } catch (error) {
      const logs = cluster.#logs()
      await cluster.stop()
      const message = error instanceof Error ? error.message : String(error)
      throw new Error(`RedisCluster.start failed: ${message}\n${logs}`, { cause: error })
    }
  }

  /** Every node as `{ host, port }`, for `new Cluster(startupNodes)`. */
  get startupNodes(): { host: string; port: number }[] {
    return this.nodes.map((node) => ({ host: node.host, port: node.port }))
  }

  /**
   * An ioredis Cluster client on this cluster, with an 'error' listener (a failover makes
   * it emit some). The caller quits or disconnects it.
   */
  client(options: ClusterOptions = {}): Cluster {
    const cluster = new Cluster(this.startupNodes, options)
    cluster.on('error', () => {})
    return cluster
  }

  /** The node on `port`. */
  nodeOnPort(port: number): RedisProcess {
    const node = this.nodes.find((n) => n.port === port)
    if (node === undefined) throw new Error(`no node of this cluster on port ${port}`)
    return node
  }

  /** The node's cluster id. */
  idOf(node: RedisProcess): string {
    const id = this.#ids.get(node)
    if (id === undefined) throw new Error(`port ${node.port} is not a node of this cluster`)
    return id
  }

  /** CLUSTER KEYSLOT, asked of a live node. */
  async slotOf(key: string): Promise<number> {
    return Number(await this.#anyLive().call('CLUSTER', 'KEYSLOT', key))
  }

  /** The master serving `slot`, in a live node's view (CLUSTER SLOTS). */
  async masterForSlot(slot: number): Promise<RedisProcess> {
    const ranges = parseSlots(await this.#anyLive().call('CLUSTER', 'SLOTS'))
    const port = ownerOf(ranges, slot)
    if (port === undefined) throw new Error(`slot ${slot} is served by no master`)
    return this.nodeOnPort(port)
  }

  /** The master serving `key`'s slot (CLUSTER KEYSLOT, then CLUSTER SLOTS). */
  async masterForKey(key: string): Promise<RedisProcess> {
    return this.masterForSlot(await this.slotOf(key))
  }

  /** The masters that serve slots, in a live node's view (CLUSTER SLOTS), by first slot. */
  async masters(): Promise<RedisProcess[]> {
    const ranges = parseSlots(await this.#anyLive().call('CLUSTER', 'SLOTS'))
    return [...new Set(ranges.map((r) => r.port))].map((port) => this.nodeOnPort(port))
  }

  /** The replicas of `master` not flagged as failing (CLUSTER REPLICAS, asked of a live node). */
  async replicasOf(master: RedisProcess): Promise<RedisProcess[]> {
    const asked = this.#anyLive(master)
    const lines = (await asked.call('CLUSTER', 'REPLICAS', this.idOf(master))) as string[]
    return lines.flatMap((line) => {
      // "<id> <ip>:<port>@<bus port> <flags> …"
      const [, address = '', flags = ''] = line.split(' ')
      if (flags.includes('fail')) return []
      const port = Number(/:(\d+)@/.exec(address)?.[1])
      return [this.nodeOnPort(port)]
    })
  }

  /** A replica of `master` (the first that is not failing); throws if it has none. */
  async replicaOf(master: RedisProcess): Promise<RedisProcess> {
    const [replica] = await this.replicasOf(master)
    if (replica === undefined) throw new Error(`the master on port ${master.port} has no replica`)
    return replica
  }

  /** SIGKILLs `node` by its PID, after checking that it is a master. */
  async killMaster(node: RedisProcess): Promise<void> {
    const { role } = await node.info('replication')
    if (role !== 'master') throw new Error(`port ${node.port} is not a master (role ${role})`)
    await node.kill('SIGKILL')
  }

  /**
   * Resolves, with the new master, once `slotOrKey`'s slot is served again: every running
   * node says `cluster_state:ok` and names the same master for it, and that master runs
   * and says it is one. Rejects after `timeoutMs` with what the survivors said last.
   */
  async waitForFailover(slotOrKey: number | string, timeoutMs = 10_000): Promise<RedisProcess> {
    const slot = typeof slotOrKey === 'number' ? slotOrKey : await this.slotOf(slotOrKey)
    let last = 'nothing yet'
    try {
      return await until(
        `slot ${slot} served by a new master`,
        async () => {
          try {
            const views = await this.#views()
            const notOk = views.filter((v) => v.info.cluster_state !== 'ok')
            const owners = new Set(views.map((v) => ownerOf(v.ranges, slot)))
            last = summary(views, slot)
            if (notOk.length > 0 || owners.size !== 1) return false
            const [port] = owners
            if (port === undefined) return false
            const owner = this.nodeOnPort(port)
            if (!owner.running) return false
            const { role } = await owner.info('replication')
            return role === 'master' ? owner : false
          } catch (error) {
            // A node may refuse a connection for a moment; the next round asks again.
            last = String(error)
            return false
          }
        },
        { timeoutMs, everyMs: 50 },
      )
    } catch (error) {
      throw new Error(`${(error as Error).message}; last seen: ${last}`)
    }
  }

  /** Stops every node (SIGKILL) and removes every temp dir, whatever fails on the way. */
  async stop(): Promise<void> {
    await Promise.allSettled(this.nodes.map((node) => node.stop()))
  }

  #anyLive(except?: RedisProcess): RedisProcess {
    const node = this.nodes.find((n) => n.running && n !== except)
    if (node === undefined) throw new Error('no node of this cluster is running')
    return node
  }

  async #create(replicasPerMaster: number): Promise<void> {
    const args = ['--cluster', 'create', ...this.nodes.map((n) => `${n.host}:${n.port}`)]
    args.push('--cluster-replicas', String(replicasPerMaster), '--cluster-yes')
    try {
      await execFileAsync('redis-cli', args, { timeout: 30_000 })
    } catch (error) {
      const e = error as NodeJS.ErrnoException & { stdout?: string; stderr?: string }
      const output = `${e.stdout ?? ''}${e.stderr ?? ''}`.replace(ANSI, '')
      throw new Error(`redis-cli ${args.join(' ')} failed (${e.code ?? e.message}):\n${output}`)
    }
  }

  /** What every running node says: CLUSTER INFO and CLUSTER SLOTS, on one connection each. */
  #views(): Promise<View[]> {
    return Promise.all(
      this.nodes
        .filter((node) => node.running)
        .map((node) =>
          node.withClient(async (redis) => ({
            node,
            info: parseInfo(String(await redis.call('CLUSTER', 'INFO'))),
            ranges: parseSlots(await redis.call('CLUSTER', 'SLOTS')),
          })),
        ),
    )
  }

  /** Waits until the cluster is whole (see the top of the file). */
  async #whole(masters: number, replicasPerMaster: number, timeoutMs: number): Promise<void> {
    let last = 'nothing yet'
    try {
      await until(
        'the cluster whole',
        async () => {
          const views = await this.#views()
          last = summary(views)
          const maps = new Set(views.map((v) => JSON.stringify(v.ranges)))
          const settled = views.every(
            (v) =>
              v.info.cluster_state === 'ok' &&
              Number(v.info.cluster_slots_assigned) === SLOTS &&
              Number(v.info.cluster_known_nodes) === this.nodes.length,
          )
          if (!settled || maps.size !== 1) return false
          const ranges = views[0]?.ranges ?? []
          if (new Set(ranges.map((r) => r.port)).size !== masters) return false
          const roles = await Promise.all(this.nodes.map((n) => n.info('replication')))
          last = `replication: ${roles
            .map((r, i) => `${this.nodes[i]?.port} ${r.role} ${r.master_link_status ?? ''}`)
            .join(', ')}`
          const replicas = roles.filter((r) => r.role === 'slave')
          return (
            replicas.length === masters * replicasPerMaster &&
            replicas.every((r) => r.master_link_status === 'up')
          )
        },
        { timeoutMs, everyMs: 100 },
      )
    } catch (error) {
      throw new Error(`${(error as Error).message}; last seen: ${last}`)
    }
  }

  #logs(): string {
    return this.nodes
      .map(
        (node) => `---- node on port ${node.port} (last 3000 chars) ----\n${node.log.slice(-3000)}`,
      )
      .join('\n')
  }
}

/** CLUSTER SLOTS → ranges with their master's port, sorted. */
function parseSlots(reply: unknown): SlotRange[] {
  return (reply as [number, number, [string, number, ...unknown[]], ...unknown[]][])
    .map(([from, to, [, port]]) => ({ from, to, port: Number(port) }))
    .sort((a, b) => a.from - b.from)
}

function ownerOf(ranges: readonly SlotRange[], slot: number): number | undefined {
  return ranges.find((r) => r.from <= slot && slot <= r.to)?.port
}

/** One line per node, for timeout messages: its state and who serves `slot`. */
function summary(views: readonly View[], slot?: number): string {
  return views
    .map((v) => {
      const owner = slot === undefined ? '' : ` slot ${slot} → ${ownerOf(v.ranges, slot)}`
      return `${v.node.port}: ${v.info.cluster_state} slots ${v.info.cluster_slots_assigned} known ${v.info.cluster_known_nodes}${owner}`
    })
    .join('; ')
}
