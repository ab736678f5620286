// List, then watch: how the routes agent follows the Nodes without fetching all of them again and again.
// It is what client-go's reflector does, cut down to one resource: one list gives the Nodes and a
// resourceVersion; a watch from there streams every change as one JSON line. A watch that ends (the server's
// timeout, a dropped connection) resumes from the last resourceVersion seen, which bookmarks keep fresh while
// nothing changes; only a 410 Gone (that version is no longer in the server's history) costs a new list.
import type { IncomingMessage } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { type ApiServer, ApiError, type KubeNode, type NodeList, apiGet, apiRequest, parseNodeList } from './kube.ts'

export interface WatchStats {
  lists: number // every list: the first, a relist after 410, a resync
  relists: number // the lists after the first
  watchRestarts: number // watches started again after one ended or failed
}

export interface WatcherOptions {
  resyncMs: number // a full relist at least this often, a safety net against a missed event
  onChange: () => void // the Nodes changed: read them with current(), debounced, as a burst is one change
  onTurn: () => void // the loop went round: for /healthz
  log: (msg: string) => void
}

/** Waits after the n-th failure in a row: exponential from 0.5 s, capped at 30 s, with jitter so agents spread out. */
export function backoffMs(failures: number, baseMs = 500, capMs = 30_000): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(failures - 1, 20))
  return ceiling / 2 + Math.random() * (ceiling / 2)
}


/**
 * Only what planning routes reads is kept: a real Node is about 5 KB of images, conditions and labels, and
 * the agent holds every Node of the cluster.
 */
function slim(n: KubeNode): KubeNode {
  return {
    metadata: { name: n.metadata.name },
    spec: { podCIDR: n.spec?.podCIDR, podCIDRs: n.spec?.podCIDRs },
    status: { addresses: n.status?.addresses },
  }
}

const isNode = (o: any): o is KubeNode => typeof o?.metadata?.name === 'string' && o.metadata.name !== ''

/** The Nodes of one API server, kept current by list and watch. */
export class NodeWatcher {
  readonly stats: WatchStats = { lists: 0, relists: 0, watchRestarts: 0 }
  private readonly nodes = new Map<string, KubeNode>()
  private resourceVersion = ''

  constructor(
    private readonly api: ApiServer,
    private readonly opts: WatcherOptions,
  ) {}

  /** Runs until the process ends; every failure is logged and retried after a backoff. */
  async run(): Promise<never> {
    let failures = 0
    let listedAt = -Infinity
    for (;;) {
      this.opts.onTurn()
      try {
        if (!this.resourceVersion || Date.now() - listedAt >= this.opts.resyncMs) {
          await this.list()
          listedAt = Date.now()
        }
        const until = listedAt + this.opts.resyncMs - Date.now()
        const gone = await this.watch(Math.max(1, Math.round(until / 1000)))
        if (gone) {
          this.opts.log(`the watch's resourceVersion ${this.resourceVersion} is gone (410): listing the nodes again`)
          this.resourceVersion = ''
        }
        failures = 0
      } catch (e) {
        const wait = backoffMs(++failures)
        this.opts.log(`${(e as Error).message}; retrying in ${(wait / 1000).toFixed(1)}s`)
        await sleep(wait)
      }
      this.stats.watchRestarts++
    }
  }

  private async list(): Promise<void> {
    if (this.stats.lists++) this.stats.relists++
    const list = parseNodeList(await apiGet(this.api, '/api/v1/nodes'), 'the API server') as NodeList & { metadata?: { resourceVersion?: string } }
    const rv = list.metadata?.resourceVersion
    if (typeof rv !== 'string' || !rv) throw new Error('the API server sent a NodeList without metadata.resourceVersion: cannot watch from it')
    this.nodes.clear()
    for (const n of list.items) if (isNode(n)) this.nodes.set(n.metadata.name, slim(n))
    this.resourceVersion = rv
    this.opts.onChange()
  }

  /**
   * One watch, until the server ends it (true when with 410 Gone) or it fails (thrown). The server ends it
   * after timeoutSeconds; a socket silent for a minute longer than that is dead, whatever TCP thinks.
   */
  private async watch(timeoutSeconds: number): Promise<boolean> {
    const path = `/api/v1/nodes?watch=1&allowWatchBookmarks=true&resourceVersion=${encodeURIComponent(this.resourceVersion)}&timeoutSeconds=${timeoutSeconds}`
    const res = await apiRequest(this.api, path, (timeoutSeconds + 60) * 1000)
    if (res.statusCode === 410) return res.resume(), true
    if (res.statusCode !== 200) {
      let body = ''
      for await (const d of res.setEncoding('utf8')) body += d
      throw new ApiError(res.statusCode ?? 0, `watch nodes: HTTP ${res.statusCode}: ${body.slice(0, 200)}`)
    }
    return this.read(res)
  }

  private async read(res: IncomingMessage): Promise<boolean> {
    let pending = ''
    for await (const chunk of res.setEncoding('utf8')) {
      this.opts.onTurn()
      pending += chunk
      let nl: number
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl).trim()
        pending = pending.slice(nl + 1)
        if (line && this.event(line)) return res.destroy(), true
      }
    }
    return false
  }

  /** Applies one watch event; true when it says the resourceVersion is gone. */
  private event(line: string): boolean {
    let e: any
    try {
      e = JSON.parse(line)
    } catch {
      throw new Error(`the API server sent a watch event that is not JSON: ${line.slice(0, 200)}`)
    }
    const o = e?.object
    if (e?.type === 'ERROR') {
      if (o?.code === 410) return true
      throw new ApiError(o?.code ?? 0, `watch nodes: ${o?.message ?? JSON.stringify(o).slice(0, 200)}`)
    }
    const rv = o?.metadata?.resourceVersion
    if (typeof rv === 'string' && rv) this.resourceVersion = rv
    if (e?.type === 'BOOKMARK') return false
    if (!isNode(o) || !['ADDED', 'MODIFIED', 'DELETED'].includes(e?.type)) {
      this.opts.log(`ignored a watch event that is not a Node change: ${line.slice(0, 200)}`)
      return false
    }
    const name = o.metadata.name
    if (e.type === 'DELETED') {
      if (!this.nodes.delete(name)) return false
    } else {
      // Most MODIFIED events are a kubelet's status updates (conditions, images): nothing routes depend on.
      const node = slim(o)
      if (JSON.stringify(node) === JSON.stringify(this.nodes.get(name))) return false
      this.nodes.set(name, node)
    }
    this.opts.onChange()
    return false
  }

  current(): NodeList {
    return { items: [...this.nodes.values()] }
  }
}
