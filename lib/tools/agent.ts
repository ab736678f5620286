// `kube-cni routes --watch`: the routes agent. It keeps this node's routes matching the cluster's Nodes,
// either by list-then-watch against the API server (lib/tools/watch.ts) or, for a NodeList file or kubectl, by
// reading them again every N seconds; and it tells how it is doing on /healthz, /readyz and /metrics.
import { existsSync, readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { MissingTool, run } from '../plugin/exec.ts'
import { type Cidr, formatCidr } from '../plugin/ip.ts'
import { Store } from '../plugin/ipam.ts'
import type { ApiServer, NodeList } from './kube.ts'
import { Registry, serveMetrics } from './metrics.ts'
import { type Backend, ROUTE_PROTO, type ReconcileReport, type Skip, VXLAN_DEV, netConfFromConflist, reconcile } from './routes.ts'
import { NodeWatcher, backoffMs } from './watch.ts'

export interface AgentOptions {
  node: string
  backend: Backend
  networks?: Cidr[]
  dryRun: boolean
  source: { api: ApiServer; resyncMs: number } | { poll: () => Promise<NodeList>; everyMs: number }
  metricsAddr?: string
  conflist: string // where the IPAM pool is described, for its metrics
}

/** A burst of watch events (a rolling node upgrade) is one reconcile. */
const DEBOUNCE_MS = 100
/** /readyz turns 503 when reconciles have failed for this long without a success in between. */
export const READY_FAILING_MS = 60_000

const say = (msg: string) => process.stderr.write(`kube-cni routes: ${msg}\n`)

/** Retrying cannot install a tool: exit, so that systemd or the kubelet shows a crash loop with the reason. */
function stopIfMissingTool(e: unknown): void {
  if (!(e instanceof MissingTool)) return
  say(`${e.message}: ${e.details}`)
  process.exit(1)
}

/**
 * One reconcile, logged: a skipped Node is logged when its reason is new, so a watch that reconciles on every
 * event does not repeat the same thousand lines.
 */
export async function reconcileLogged(nodes: NodeList, o: Pick<AgentOptions, 'node' | 'backend' | 'networks' | 'dryRun'>, known = new Map<string, string>()): Promise<ReconcileReport> {
  const report = await reconcile(nodes, o.node, o.backend, o.networks, o.dryRun)
  const now = new Map(report.skipped.map((s) => [s.node, s.reason]))
  for (const [node, reason] of now) if (known.get(node) !== reason) say(`skipped ${node}: ${reason}`)
  known.clear()
  for (const [node, reason] of now) known.set(node, reason)
  for (const f of report.failed) say(`failed${f.node ? ` for ${f.node}` : ''}: ${f.line}: ${f.error}`)
  const failed = report.failed.length
  if (o.dryRun) for (const c of report.changes) process.stdout.write(`${c}\n`)
  else if (!report.changes.length) say('no changes')
  else say(`${report.changes.length} ${report.changes.length === 1 ? 'change' : 'changes'}${failed ? `, ${failed} of them failed (the others were made)` : ''}`)
  return report
}

/** A skip's reason, cut to a label value of a few kinds (the full text, with its CIDRs, is in the log). */
export function skipKinds(s: Skip): string[] {
  const kinds: [RegExp, string][] = [
    [/no podCIDR/, 'no_podcidr'],
    [/is a default route/, 'default_route'],
    [/overlaps the \S+ range/, 'reserved_range'],
    [/outside the cluster network/, 'outside_network'],
    [/this node's own podCIDR/, 'own_podcidr'],
    [/a network connected on/, 'connected_network'],
    [/InternalIP/, 'no_internal_ip'],
    [/not on a directly connected network/, 'gateway_not_connected'],
  ]
  return s.reason.split('; ').map((part) => kinds.find(([re]) => re.test(part))?.[1] ?? 'other')
}

export async function runAgent(o: AgentOptions): Promise<never> {
  const registry = new Registry()
  const m = {
    reconciles: registry.counter('kube_cni_reconciles_total', 'Reconciles of the routes with the Nodes, failed or not.'),
    errors: registry.counter('kube_cni_reconcile_errors_total', 'Reconciles that failed.'),
    lastSuccess: registry.gauge('kube_cni_last_success_timestamp_seconds', 'When a reconcile last succeeded (Unix time).'),
    routes: registry.gauge('kube_cni_routes', 'Routes kube-cni made (proto 211) in this netns, by backend.'),
    failedChanges: registry.gauge('kube_cni_failed_changes', 'Changes the kernel refused at the last reconcile (the others were made).'),
    skipped: registry.gauge('kube_cni_skipped_nodes', 'Nodes (or parts of them) left out of the routes at the last reconcile, by reason.'),
    lists: registry.counter('kube_cni_watch_lists_total', 'Full lists of the Nodes from the API server.'),
    relists: registry.counter('kube_cni_watch_relists_total', 'Lists after the first: a 410 Gone, or the --resync safety net.'),
    restarts: registry.counter('kube_cni_watch_restarts_total', 'Watches started again after one ended or failed.'),
    poolSize: registry.gauge('kube_cni_ipam_pool_size', "Addresses this node's pool can give to pods, by podCIDR."),
    poolUsed: registry.gauge('kube_cni_ipam_used_addresses', "Addresses of this node's pool held by pods, by podCIDR."),
  }
  let lastTurn = Date.now()
  let lastSuccess: number | undefined
  let failingSince: number | undefined
  let failures = 0
  const turn = () => (lastTurn = Date.now())
  // The loop turns at least once per watch (which ends before the next resync) or per poll.
  const stallMs = 'api' in o.source ? o.source.resyncMs + 120_000 : o.source.everyMs * 3 + 60_000

  const known = new Map<string, string>()
  // Reading the Nodes is part of the pass when polling: a list that fails is a reconcile that failed.
  const pass = async (read: () => NodeList | Promise<NodeList>) => {
    m.reconciles.inc()
    try {
      const report = await reconcileLogged(await read(), o, known)
      lastSuccess = Date.now()
      failingSince = undefined
      failures = 0
      m.lastSuccess.set(Math.floor(lastSuccess / 1000))
      m.failedChanges.set(report.failed.length)
      const kinds = new Map<string, number>()
      for (const k of report.skipped.flatMap(skipKinds)) kinds.set(k, (kinds.get(k) ?? 0) + 1)
      m.skipped.replace([...kinds].map(([reason, n]) => [{ reason }, n]))
    } catch (e) {
      m.errors.inc()
      failingSince ??= Date.now()
      failures++
      throw e
    }
  }

  let watcher: NodeWatcher | undefined
  registry.collect(async () => {
    if (watcher) {
      m.lists.set(watcher.stats.lists)
      m.relists.set(watcher.stats.relists)
      m.restarts.set(watcher.stats.watchRestarts)
    }
    const byBackend = new Map<string, number>()
    for (const family of ['-4', '-6']) {
      const r = await run(['ip', '-j', family, 'route', 'show', 'proto', String(ROUTE_PROTO)])
      if (r.code !== 0) throw new Error(`ip route show: ${r.stderr.trim()}`)
      for (const route of JSON.parse(r.stdout || '[]')) {
        const backend = route.dev === VXLAN_DEV ? 'vxlan' : 'host-gw'
        byBackend.set(backend, (byBackend.get(backend) ?? 0) + 1)
      }
    }
    m.routes.replace([...byBackend].map(([backend, n]) => [{ backend }, n]))
    const pools: [{ subnet: string }, number, number][] = []
    if (existsSync(o.conflist)) {
      const conf = netConfFromConflist(readFileSync(o.conflist, 'utf8'), o.conflist)
      const store = new Store(conf.dataDir, conf.name)
      // A store this process cannot see (a container without the host's dataDir) says nothing, not "0 used".
      if (existsSync(store.dir))
        for (const pool of conf.pools) pools.push([{ subnet: formatCidr(pool.subnet) }, store.capacity(pool), store.countReserved(pool)])
    }
    m.poolSize.replace(pools.map(([l, size]) => [l, size]))
    m.poolUsed.replace(pools.map(([l, , used]) => [l, used]))
  })

  if (o.metricsAddr)
    await serveMetrics(o.metricsAddr, registry, {
      live: () => (Date.now() - lastTurn > stallMs ? `the agent's loop has not turned for ${Math.round((Date.now() - lastTurn) / 1000)}s` : undefined),
      ready: () => {
        if (lastSuccess === undefined) return failures ? `no reconcile has succeeded yet (${failures} failed)` : 'the first reconcile has not finished'
        if (failingSince !== undefined && Date.now() - failingSince > READY_FAILING_MS)
          return `reconciles have failed for ${Math.round((Date.now() - failingSince) / 1000)}s (${failures} in a row)`
        return undefined
      },
    })

  const source = o.source
  if ('poll' in source) {
    for (;;) {
      turn()
      try {
        await pass(source.poll)
      } catch (e) {
        stopIfMissingTool(e)
        say(`${(e as Error).message}; retrying in ${source.everyMs / 1000}s`)
      }
      await sleep(source.everyMs)
    }
  }

  // Watch events only mark the Nodes dirty; one reconcile at a time runs on the latest of them.
  let dirty = false
  let running = false
  let timer: NodeJS.Timeout | undefined
  const kick = (delay = DEBOUNCE_MS) => {
    dirty = true
    if (!running && !timer) timer = setTimeout(drain, delay)
  }
  const drain = async () => {
    timer = undefined
    running = true
    while (dirty) {
      dirty = false
      try {
        await pass(() => watcher!.current())
      } catch (e) {
        stopIfMissingTool(e)
        const wait = backoffMs(failures)
        say(`${(e as Error).message}; retrying in ${(wait / 1000).toFixed(1)}s`)
        running = false
        return kick(wait)
      }
    }
    running = false
  }
  watcher = new NodeWatcher(source.api, { resyncMs: source.resyncMs, onChange: () => kick(), onTurn: turn, log: say })
  return watcher.run()
}
