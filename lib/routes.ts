// `kube-cni routes`: pods on other nodes, reached without NAT. The bash tutorial left this to hand-made
// cloud routes; here a NodeList becomes the desired routing (pure: planRoutes), and reconcile() makes the
// kernel match it the way kindnet does: add what is missing, replace what is wrong, remove what is stale.
//
// Every route kube-cni makes carries `proto 211`, so routes it did not make are never touched.
//
// Two backends:
//   host-gw  <podCIDR> via <peer InternalIP>: the peer must be on a directly connected network.
//   vxlan    flannel style: one device kube-cni.1 (VNI 1, UDP 4789, local = this node's InternalIP) and per
//            peer `<podCIDR> via <peer VTEP> dev kube-cni.1 onlink`, a permanent neighbour for the VTEP
//            and an fdb entry sending its MAC to the peer's InternalIP. It crosses routers.
//
// The VTEP scheme needs no annotations: every node derives its VTEP address and MAC from its podCIDR alone
// (the subnet's network address, e.g. 10.200.2.0, and 0a:58 + those four bytes), so each node can compute
// every peer's from the NodeList.
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { CONFLIST_NAME } from './conflist.ts'
import { type Step, explain, explainSteps, run } from './exec.ts'
import { type Cidr, type Family, contains, containsAddress, formatAddress, formatCidr, macFromAddress, parseAddress, parseCidr } from './ip.ts'
import { type NodeList, internalIPs, podCIDRs } from './kube.ts'
import { type NetConf, parseNetConf } from './netconf.ts'

export const ROUTE_PROTO = 211
export const VXLAN_DEV = 'kube-cni.1'
export const VXLAN_VNI = 1
export const VXLAN_PORT = 4789
/** VXLAN over IPv4 adds 50 bytes of headers; over IPv6, 70. */
const VXLAN_OVERHEAD: Record<Family, number> = { 4: 50, 6: 70 }

export type Backend = 'host-gw' | 'vxlan'

export interface LocalAddress {
  ifname: string
  mtu: number
  family: Family
  value: bigint
  prefix: number
}

export interface DesiredRoute {
  node: string // the peer it leads to
  family: Family
  dst: string // canonical CIDR, as `ip -j route` prints it
  via: string
  dev?: string // set for vxlan: the route goes through the overlay device, `onlink`
}

/** A peer, or a part of one, left out of the plan: one line per Node in the log. */
export interface Skip {
  node: string
  reason: string
}

export interface Plan {
  routes: DesiredRoute[]
  vxlan?: {
    local: string
    mac: string
    mtu: number
    vteps: { family: Family; address: string }[] // this node's own VTEP addresses
    neighbours: { address: string; mac: string }[]
    fdb: { mac: string; dst: string }[]
  }
  skipped: Skip[]
}

/** Ranges a pod range can never be: a route there would hijack traffic the node itself depends on. */
const RESERVED = [
  ['127.0.0.0/8', 'loopback'],
  ['::1/128', 'loopback'],
  ['224.0.0.0/4', 'multicast'],
  ['ff00::/8', 'multicast'],
  ['169.254.0.0/16', 'link-local'],
  ['fe80::/10', 'link-local'],
].map(([range, what]) => ({ cidr: parseCidr(range)!, what }))

const overlaps = (a: Cidr, b: Cidr) => a.family === b.family && a.network <= b.last && b.network <= a.last

/** Why a peer's podCIDR must not become a route here, or undefined when it may. */
function cidrProblem(c: Cidr, own: Cidr[], networks: Cidr[] | undefined, local: LocalAddress[]): string | undefined {
  const text = formatCidr(c)
  if (c.prefix === 0) return `podCIDR ${text} is a default route`
  const reserved = RESERVED.find((r) => overlaps(r.cidr, c))
  if (reserved) return `podCIDR ${text} overlaps the ${reserved.what} range ${formatCidr(reserved.cidr)}`
  if (networks && !networks.some((n) => contains(n, c)))
    return `podCIDR ${text} is outside the cluster network ${networks.map(formatCidr).join(', ')}`
  const mine = own.find((o) => overlaps(o, c))
  if (mine) return `podCIDR ${text} ${formatCidr(mine) === text ? 'is' : 'overlaps'} this node's own podCIDR ${formatCidr(mine)}`
  const connected = local.find((l) => overlaps(subnetOf(l), c))
  if (connected) return `podCIDR ${text} overlaps ${formatCidr(subnetOf(connected))}, a network connected on ${connected.ifname}`
  return undefined
}

/**
 * The routing this node should have, from the NodeList alone. Pure: no I/O. `networks` is the cluster's pod
 * range (undefined when unknown); a peer's podCIDR outside it, or one that would shadow a route this node
 * needs, is skipped with the reason.
 */
export function planRoutes(nodes: NodeList, self: string, backend: Backend, local: LocalAddress[], networks?: Cidr[]): Plan {
  const me = nodes.items.find((n) => n.metadata?.name === self)
  if (!me) throw new Error(`node ${self} is not in the NodeList: pass the name Kubernetes knows it by with --node`)
  const plan: Plan = { routes: [], skipped: [] }
  const myIPs = internalIPs(me).flatMap((t) => parseAddress(t) ?? [])
  const myCidrs = podCIDRs(me).flatMap((t) => parseCidr(t) ?? [])

  if (backend === 'vxlan') {
    const underlay = myIPs.find((a) => a.family === 4) ?? myIPs[0]
    if (!underlay) throw new Error(`node ${self} has no InternalIP: vxlan needs one for the tunnel's local end`)
    if (!myCidrs.length) throw new Error(`node ${self} has no podCIDR`)
    const dev = local.find((l) => l.family === underlay.family && l.value === underlay.value)
    if (!dev) throw new Error(`InternalIP ${formatAddress(underlay.family, underlay.value)} of ${self} is not an address of this netns`)
    plan.vxlan = {
      local: formatAddress(underlay.family, underlay.value),
      mac: vtepMac(myCidrs),
      mtu: dev.mtu - VXLAN_OVERHEAD[underlay.family],
      vteps: myCidrs.map((c) => ({ family: c.family, address: formatAddress(c.family, c.network) })),
      neighbours: [],
      fdb: [],
    }
  }

  for (const peer of nodes.items) {
    const name = peer.metadata?.name
    if (!name || name === self) continue
    const problems: string[] = []
    const all = podCIDRs(peer).flatMap((t) => parseCidr(t) ?? [])
    const cidrs = all.filter((c) => {
      const problem = cidrProblem(c, myCidrs, networks, local)
      if (problem) problems.push(problem)
      return !problem
    })
    if (!all.length) problems.push('no podCIDR yet')
    const ips = internalIPs(peer).flatMap((t) => parseAddress(t) ?? [])
    if (plan.vxlan && cidrs.length) {
      const underlayFamily = parseAddress(plan.vxlan.local)!.family
      const dst = ips.find((a) => a.family === underlayFamily)
      if (!dst) problems.push(`no IPv${underlayFamily} InternalIP to tunnel to`)
      else {
        // The peer derives its VTEP MAC from all its podCIDRs, so this side must too.
        const mac = vtepMac(all)
        plan.vxlan.fdb.push({ mac, dst: formatAddress(dst.family, dst.value) })
        for (const c of cidrs) {
          const vtep = formatAddress(c.family, c.network)
          plan.vxlan.neighbours.push({ address: vtep, mac })
          plan.routes.push({ node: name, family: c.family, dst: formatCidr(c), via: vtep, dev: VXLAN_DEV })
        }
      }
    }
    if (!plan.vxlan)
      for (const c of cidrs) {
        const gw = ips.find((a) => a.family === c.family)
        if (!gw) {
          problems.push(`no IPv${c.family} InternalIP for ${formatCidr(c)}`)
          continue
        }
        const connected = local.some((l) => containsAddress(subnetOf(l), gw.family, gw.value))
        const via = formatAddress(gw.family, gw.value)
        if (!connected) problems.push(`${via} is not on a directly connected network; host-gw cannot reach it, use --backend vxlan`)
        else plan.routes.push({ node: name, family: c.family, dst: formatCidr(c), via })
      }
    if (problems.length) plan.skipped.push({ node: name, reason: problems.join('; ') })
  }
  return plan
}

/** The connected network of a local address: 192.0.2.10/24 -> 192.0.2.0/24. */
function subnetOf(l: LocalAddress): Cidr {
  const bits = BigInt((l.family === 4 ? 32 : 128) - l.prefix)
  const network = (l.value >> bits) << bits
  return { family: l.family, network, last: network + (1n << bits) - 1n, prefix: l.prefix }
}

function vtepMac(cidrs: Cidr[]): string {
  const first = cidrs.find((c) => c.family === 4) ?? cidrs[0]
  return macFromAddress(first.network)
}

// ---- the kernel's side ---------------------------------------------------------------------------------

export interface Current {
  local: LocalAddress[]
  routes: { family: Family; dst: string; gateway?: string; dev?: string }[]
  vxlan?: { id?: number; local?: string; port?: number; mtu: number; mac: string; up: boolean; addresses: string[] }
  neighbours: { address: string; mac: string }[]
  fdb: { mac: string; dst: string }[]
}

async function ipJson(args: string[], tool = 'ip'): Promise<any[]> {
  const r = await run([tool, '-j', ...args])
  if (r.code !== 0) throw new Error(`${tool} ${args.join(' ')}: ${r.stderr.trim()}`)
  return r.stdout.trim() ? JSON.parse(r.stdout) : []
}

export async function readCurrent(): Promise<Current> {
  const links = await ipJson(['-d', 'addr', 'show'])
  const local: LocalAddress[] = links.flatMap((l: any) =>
    (l.addr_info ?? [])
      .filter((a: any) => a.scope === 'global' && l.ifname !== VXLAN_DEV)
      .flatMap((a: any) => {
        const addr = parseAddress(a.local)
        return addr ? [{ ifname: l.ifname, mtu: l.mtu, family: addr.family, value: addr.value, prefix: a.prefixlen }] : []
      }),
  )
  const routes = []
  for (const family of [4, 6] as Family[])
    for (const r of await ipJson([`-${family}`, 'route', 'show', 'proto', String(ROUTE_PROTO)]))
      routes.push({ family, dst: normalizeDst(r.dst, family), gateway: r.gateway, dev: r.dev })
  const dev = links.find((l: any) => l.ifname === VXLAN_DEV)
  if (!dev) return { local, routes, neighbours: [], fdb: [] }
  const info = dev.linkinfo?.info_data ?? {}
  return {
    local,
    routes,
    vxlan: {
      id: info.id,
      local: info.local ?? info.local6,
      port: info.port,
      mtu: dev.mtu,
      mac: dev.address,
      up: (dev.flags ?? []).includes('UP'),
      addresses: (dev.addr_info ?? []).filter((a: any) => a.scope === 'global').map((a: any) => a.local),
    },
    neighbours: (await ipJson(['neigh', 'show', 'dev', VXLAN_DEV, 'nud', 'permanent'])).map((n: any) => ({ address: n.dst, mac: n.lladdr })),
    fdb: (await ipJson(['fdb', 'show', 'dev', VXLAN_DEV], 'bridge'))
      .filter((f: any) => f.dst && f.mac !== '00:00:00:00:00:00')
      .map((f: any) => ({ mac: f.mac, dst: f.dst })),
  }
}

function normalizeDst(dst: string, family: Family): string {
  if (dst === 'default') return family === 4 ? '0.0.0.0/0' : '::/0'
  const c = parseCidr(dst.includes('/') ? dst : `${dst}/${family === 4 ? 32 : 128}`)
  return c ? formatCidr(c) : dst
}

/** The commands that turn `current` into `plan`; none when they already match. Pure. */
export function diff(plan: Plan, current: Current): { ip: Step[]; bridge: Step[] } {
  const ip: Step[] = []
  const bridge: Step[] = []
  const why = 'bash: routes to other nodes were made by hand (ip route add <podCIDR> via <node IP>)'
  let routes = current.routes
  const want = plan.vxlan
  const have = current.vxlan
  let fresh = false // the device is (re)created, so it has no neighbours, fdb entries or routes yet
  if (have && (!want || have.id !== VXLAN_VNI || have.local !== want.local || have.port !== VXLAN_PORT)) {
    ip.push({ line: `link del ${VXLAN_DEV}`, why: want ? 'the VXLAN device has the wrong VNI, local address or port' : 'switching to host-gw' })
    routes = routes.filter((r) => r.dev !== VXLAN_DEV)
    fresh = true
  }
  if (want) {
    if (!have || fresh) {
      ip.push({
        line: `link add ${VXLAN_DEV} address ${want.mac} mtu ${want.mtu} type vxlan id ${VXLAN_VNI} local ${want.local} dstport ${VXLAN_PORT} nolearning`,
        why: 'new: the overlay device (flannel.1 in flannel)',
      })
    } else {
      if (have.mtu !== want.mtu) ip.push({ line: `link set ${VXLAN_DEV} mtu ${want.mtu}` })
      if (have.mac !== want.mac) ip.push({ line: `link set ${VXLAN_DEV} address ${want.mac}` })
    }
    if (!have?.up || fresh) ip.push({ line: `link set ${VXLAN_DEV} up` })
    for (const v of want.vteps)
      if (fresh || !have?.addresses.includes(v.address))
        ip.push({ line: `addr replace ${v.address}/${v.family === 4 ? 32 : 128} dev ${VXLAN_DEV}${v.family === 6 ? ' nodad' : ''}` })
    const neighbours = fresh ? [] : current.neighbours
    for (const n of want.neighbours)
      if (!neighbours.some((c) => c.address === n.address && c.mac === n.mac))
        ip.push({ line: `neigh replace ${n.address} lladdr ${n.mac} dev ${VXLAN_DEV} nud permanent` })
    for (const c of neighbours)
      if (!want.neighbours.some((n) => n.address === c.address)) ip.push({ line: `neigh del ${c.address} dev ${VXLAN_DEV}` })
    const fdb = fresh ? [] : current.fdb
    for (const f of want.fdb)
      if (!fdb.some((c) => c.mac === f.mac && c.dst === f.dst))
        bridge.push({ line: `fdb replace ${f.mac} dev ${VXLAN_DEV} dst ${f.dst} self permanent` })
    for (const c of fdb)
      if (!want.fdb.some((f) => f.mac === c.mac && f.dst === c.dst)) bridge.push({ line: `fdb del ${c.mac} dev ${VXLAN_DEV} dst ${c.dst} self` })
  }
  for (const r of plan.routes) {
    const c = routes.find((x) => x.dst === r.dst)
    const spec = `${r.dst} via ${r.via}${r.dev ? ` dev ${r.dev} onlink` : ''} proto ${ROUTE_PROTO}`
    if (c && c.gateway === r.via && (!r.dev || c.dev === r.dev)) continue
    // IPv6 refuses to replace a route with one through another device ("Nexthop has invalid gateway"):
    // delete it first. IPv4 replaces in place.
    if (c && r.family === 6 && c.dev !== r.dev) ip.push({ line: `route del ${r.dst} proto ${ROUTE_PROTO}` })
    ip.push({ line: `route replace ${spec}`, why })
  }
  for (const c of routes)
    if (!plan.routes.some((r) => r.dst === c.dst)) ip.push({ line: `route del ${c.dst} proto ${ROUTE_PROTO}`, why: 'the node is gone' })
  // The ip lines create the device that the fdb lines need, so ip runs first.
  return { ip, bridge }
}

export interface ReconcileReport {
  changes: string[] // the shell lines that ran (or, with dryRun, would run)
  skipped: Skip[]
}

export async function reconcile(nodes: NodeList, self: string, backend: Backend, networks: Cidr[] | undefined, dryRun = false): Promise<ReconcileReport> {
  const current = await readCurrent()
  const plan = planRoutes(nodes, self, backend, current.local, networks)
  const { ip, bridge } = diff(plan, current)
  const changes = [...ip.map((s) => `ip ${s.line}`), ...bridge.map((s) => `bridge ${s.line}`)]
  if (!dryRun) {
    explainSteps([...ip.map((s) => ({ ...s, line: `ip ${s.line}` })), ...bridge.map((s) => ({ ...s, line: `bridge ${s.line}` }))])
    await batch('ip', ip)
    await batch('bridge', bridge)
  }
  return { changes, skipped: plan.skipped }
}

async function batch(tool: string, steps: Step[]): Promise<void> {
  if (!steps.length) return
  const r = await run([tool, '-batch', '-'], steps.map((s) => s.line).join('\n') + '\n')
  if (r.code !== 0) throw new Error(`${tool} -batch failed: ${r.stderr.trim()}`)
}

// ---- the command ---------------------------------------------------------------------------------------

/** The node's conflist, where `kube-cni routes` finds the cluster network when --network is not given. */
export const NODE_CONFLIST = join('/etc/cni/net.d', CONFLIST_NAME)

export const ROUTES_USAGE = `kube-cni routes --node NAME [--network CIDR[,CIDR]] [--nodes-json FILE|- | --kubectl PATH | --kubeconfig FILE]
                [--backend host-gw|vxlan] [--watch [SECONDS]] [--resync DURATION] [--metrics-addr HOST:PORT]
                [--conflist FILE] [--dry-run] [--explain]
  Makes this netns's routes to every other node's podCIDR match a Kubernetes NodeList.
  Nodes come from FILE (- for stdin), from \`kubectl get nodes -o json\`, or from the API server: with
  --kubeconfig FILE, or inside a pod with its service account.
  Only podCIDRs inside the cluster network become routes: --network, or else the one in the conflist
  (--conflist, default ${NODE_CONFLIST}).
  --watch               keeps going: lists the nodes once, then watches the API server (needs an API source);
                        a full relist at most every --resync (default 10m)
  --watch SECONDS       keeps going by reading the nodes again every SECONDS (any source)
  --metrics-addr        serves /healthz, /readyz and /metrics (Prometheus) there, e.g. 127.0.0.1:9101`

/** The kube-cni plugin's configuration in the text of a conflist, validated as the plugin validates it. */
export function netConfFromConflist(text: string, source: string): NetConf {
  try {
    const list = JSON.parse(text)
    const conf = (Array.isArray(list?.plugins) ? list.plugins : []).find((p: any) => p?.type === 'kube-cni')
    if (!conf) throw new Error('it has no plugin of type kube-cni')
    return parseNetConf(JSON.stringify({ cniVersion: list.cniVersion, name: list.name, ...conf }))
  } catch (e) {
    throw new Error(`${source}: ${(e as Error).message}; pass the cluster network with --network CIDR[,CIDR]`)
  }
}

/** The cluster's pod ranges from the text of a kube-cni conflist. */
export function networksFromConflist(text: string, source: string): Cidr[] {
  return netConfFromConflist(text, source).pools.map((p) => p.network)
}

function parseNetworks(text: string): Cidr[] {
  const cidrs = text.split(',').map((t) => t.trim())
  const bad = cidrs.find((t) => !parseCidr(t))
  if (bad !== undefined) throw new Error(`--network takes CIDR[,CIDR], the cluster's pod ranges; ${JSON.stringify(bad)} is not a CIDR`)
  return cidrs.map((t) => parseCidr(t)!)
}

/** --network, else the node's conflist; undefined (and a warning) when neither is there. */
function clusterNetworks(flag: string | undefined, conflist: string): Cidr[] | undefined {
  if (flag !== undefined) return parseNetworks(flag)
  if (existsSync(conflist)) return networksFromConflist(readFileSync(conflist, 'utf8'), conflist)
  process.stderr.write(`kube-cni routes: the cluster network is unknown (no --network, no ${conflist}): podCIDRs are not checked against it\n`)
  return undefined
}

/** 600, 30s, 10m, 1h: a duration in milliseconds. */
function parseDuration(flag: string, text: string): number {
  const m = /^(\d+(?:\.\d+)?)(s|m|h)?$/.exec(text)
  const ms = m ? Number(m[1]) * { s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 's' | 'm' | 'h' ?? 's'] : NaN
  if (!(ms >= 1000)) throw new Error(`${flag} takes a duration of at least 1s (600, 30s, 10m, 1h), not ${JSON.stringify(text)}`)
  return ms
}

export async function routesCommand(argv: string[]): Promise<number> {
  // A bare --watch (no SECONDS after it) means list-then-watch; parseArgs wants every string option to have a value.
  const args = argv.map((a, i) => (a === '--watch' && !/^\d/.test(argv[i + 1] ?? '') ? '--watch=' : a))
  const { values: o } = parseArgs({
    args,
    options: {
      node: { type: 'string' },
      network: { type: 'string' },
      'nodes-json': { type: 'string' },
      kubectl: { type: 'string' },
      kubeconfig: { type: 'string' },
      backend: { type: 'string', default: 'host-gw' },
      watch: { type: 'string' },
      resync: { type: 'string', default: '10m' },
      'metrics-addr': { type: 'string' },
      conflist: { type: 'string', default: NODE_CONFLIST },
      'dry-run': { type: 'boolean', default: false },
      explain: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  })
  if (o.help) return process.stdout.write(`${ROUTES_USAGE}\n`), 0
  if (!o.node) throw new Error(`--node is required\n${ROUTES_USAGE}`)
  if (o.backend !== 'host-gw' && o.backend !== 'vxlan') throw new Error(`--backend must be host-gw or vxlan, not ${o.backend}`)
  if ([o['nodes-json'], o.kubectl, o.kubeconfig].filter((s) => s !== undefined).length > 1)
    throw new Error('give one source of nodes: --nodes-json, --kubectl or --kubeconfig')
  if (o.explain) explain.enabled = true
  const seconds = o.watch ? Number(o.watch) : 0
  if (!(seconds >= 0)) throw new Error(`--watch takes a number of seconds, or nothing to watch the API server; not ${o.watch}`)
  const resyncMs = parseDuration('--resync', o.resync)
  const networks = clusterNetworks(o.network, o.conflist)
  const kube = await import('./kube.ts')
  const api = o['nodes-json'] === undefined ? kube.apiServerFor({ kubectl: o.kubectl, kubeconfig: o.kubeconfig }) : undefined
  const readNodes = () =>
    o['nodes-json'] !== undefined
      ? Promise.resolve(kube.readNodeListFile(o['nodes-json']))
      : kube.readNodeList({ kubectl: o.kubectl, kubeconfig: o.kubeconfig })
  const { runAgent, reconcileLogged } = await import('./agent.ts')
  const agent = { node: o.node, backend: o.backend as Backend, networks, dryRun: o['dry-run'], metricsAddr: o['metrics-addr'], conflist: o.conflist }
  if (o.watch === undefined) {
    if (o['metrics-addr']) throw new Error('--metrics-addr is for the agent: add --watch')
    await reconcileLogged(await readNodes(), agent)
    return 0
  }
  if (o.watch === '') {
    if (!api)
      throw new Error('--watch without SECONDS lists and watches the API server: give --kubeconfig FILE or run in a pod; with --nodes-json or --kubectl give --watch SECONDS')
    return runAgent({ ...agent, source: { api, resyncMs } })
  }
  if (api) process.stderr.write(`kube-cni routes: polling the API server every ${seconds}s; --watch without SECONDS lists once and then watches\n`)
  return runAgent({ ...agent, source: { poll: readNodes, everyMs: seconds * 1000 } })
}
