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
import { type Step, explain, explainSteps, run } from '../plugin/exec.ts'
import { type Cidr, type Family, contains, containsAddress, defaultRoute, formatAddress, formatCidr, macFromAddress, networkOf, nodad, parseAddress, parseCidr, specialRangeOverlapped } from '../plugin/ip.ts'
import { type NodeList, apiServerFor, internalIPs, nodeName, nodeSource, podCIDRs } from './kube.ts'
import { type NetConf, parseNetConf } from '../plugin/netconf.ts'

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
    neighbours: { address: string; mac: string; node?: string }[]
    fdb: { mac: string; dst: string; node?: string }[]
  }
  skipped: Skip[]
}

/** A kernel change, and the peer it is for (none for the device itself): a failure is reported per peer. */
export interface Change extends Step {
  node?: string
}

const overlaps = (a: Cidr, b: Cidr) => a.family === b.family && a.network <= b.last && b.network <= a.last

/**
 * The podCIDRs already given to a peer, per family, sorted by start. They never overlap one another, so the only
 * one that can overlap a new range is the last that starts before that range ends: a binary search, where a scan
 * of every claim for every peer would cost seconds at thousands of Nodes.
 */
class Claims {
  private readonly byFamily = new Map<Family, { cidr: Cidr; node: string }[]>()

  overlapping(c: Cidr): { cidr: Cidr; node: string } | undefined {
    const list = this.byFamily.get(c.family) ?? []
    const k = list[this.lastStartingBy(list, c.last)]
    return k && k.cidr.last >= c.network ? k : undefined
  }

  add(cidr: Cidr, node: string): void {
    if (this.overlapping(cidr)) return // one peer's own ranges overlapping each other: the first stands
    const list = this.byFamily.get(cidr.family) ?? []
    list.splice(this.lastStartingBy(list, cidr.network) + 1, 0, { cidr, node })
    this.byFamily.set(cidr.family, list)
  }

  private lastStartingBy(list: { cidr: Cidr }[], value: bigint): number {
    let lo = 0
    let hi = list.length
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (list[mid].cidr.network <= value) lo = mid + 1
      else hi = mid
    }
    return lo - 1
  }
}

/** Why a peer's podCIDR must not become a route here, or undefined when it may. */
function cidrProblem(c: Cidr, own: Cidr[], networks: Cidr[] | undefined, local: LocalAddress[]): string | undefined {
  const text = formatCidr(c)
  if (c.prefix === 0) return `podCIDR ${text} is a default route`
  // A route there would hijack traffic the node itself depends on.
  const special = specialRangeOverlapped(c)
  if (special) return `podCIDR ${text} overlaps ${special}`
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
  const me = nodes.items.find((n) => nodeName(n) === self)
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

  // First what each peer claims on its own, then the claims against each other, in name order.
  const peers: { name: string; all: Cidr[]; cidrs: Cidr[]; ips: { family: Family; value: bigint }[]; problems: string[] }[] = []
  for (const [i, item] of nodes.items.entries()) {
    const name = nodeName(item)
    if (name === self) continue
    if (!name) {
      const what = item && typeof item === 'object' ? `its metadata.name ${quote((item as any).metadata?.name)} is not a Node name` : 'it is not a Node object'
      plan.skipped.push({ node: `NodeList item ${i}`, reason: what })
      continue
    }
    const problems: string[] = []
    const texts = podCIDRs(item)
    for (const t of texts) if (!parseCidr(t)) problems.push(`podCIDR ${quote(t)} is not a CIDR`)
    const all = texts.flatMap((t) => parseCidr(t) ?? [])
    const ips = internalIPs(item).flatMap((t) => parseAddress(t) ?? [])
    const mine = ips.find((a) => myIPs.some((m) => m.family === a.family && m.value === a.value) || local.some((l) => l.family === a.family && l.value === a.value))
    let cidrs: Cidr[] = []
    if (mine) problems.push(`its InternalIP ${formatAddress(mine.family, mine.value)} is this node's own`)
    else
      cidrs = all.filter((c) => {
        const problem = cidrProblem(c, myCidrs, networks, local)
        if (problem) problems.push(problem)
        return !problem
      })
    if (!texts.length) problems.push('no podCIDR yet')
    peers.push({ name, all, cidrs, ips, problems })
  }

  // Two Nodes claiming one range: the first by name keeps it, every run, instead of the route flipping.
  const claimed = new Claims()
  for (const p of [...peers].sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0))) {
    const clash = p.cidrs.map((c) => ({ c, k: claimed.overlapping(c) })).find(({ k }) => k)
    if (clash) {
      p.problems.push(`podCIDR ${formatCidr(clash.c)} is also claimed by ${clash.k!.node} (${formatCidr(clash.k!.cidr)}), which keeps it: the first by name`)
      p.cidrs = []
    }
    for (const cidr of p.cidrs) claimed.add(cidr, p.name)
  }

  for (const { name, all, cidrs, ips, problems } of peers) {
    if (plan.vxlan && cidrs.length) {
      const underlayFamily = parseAddress(plan.vxlan.local)!.family
      const dst = ips.find((a) => a.family === underlayFamily)
      if (!dst) problems.push(`no IPv${underlayFamily} InternalIP to tunnel to`)
      else {
        // The peer derives its VTEP MAC from all its podCIDRs, so this side must too.
        const mac = vtepMac(all)
        plan.vxlan.fdb.push({ mac, dst: formatAddress(dst.family, dst.value), node: name })
        for (const c of cidrs) {
          const vtep = formatAddress(c.family, c.network)
          plan.vxlan.neighbours.push({ address: vtep, mac, node: name })
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

/** Text from the NodeList, quoted and cut short, so it cannot forge or flood a log line. */
const quote = (v: unknown) => (JSON.stringify(v) ?? String(v)).slice(0, 80)

/** The connected network of a local address: 192.0.2.10/24 -> 192.0.2.0/24. */
function subnetOf(l: LocalAddress): Cidr {
  return networkOf(l.family, l.value, l.prefix)
}

function vtepMac(cidrs: Cidr[]): string {
  const first = cidrs.find((c) => c.family === 4) ?? cidrs[0]
  // The last four bytes of an IPv6 podCIDR's network address are zero for every /64: its subnet number, the bits
  // above the prefix, tells the nodes apart instead.
  return macFromAddress(first.family === 4 ? first.network : first.network >> BigInt(128 - first.prefix))
}

// ---- the kernel's side ---------------------------------------------------------------------------------

export interface CurrentRoute {
  family: Family
  dst: string
  gateway?: string
  dev?: string
  proto: string // a number, as `ip -N` prints it
  type?: string // set for blackhole, unreachable, ...
}

export interface Current {
  local: LocalAddress[]
  routes: CurrentRoute[] // the main table, every protocol: kube-cni's are `proto` "211"
  vxlan?: {
    kind?: string // "vxlan", unless something else took the name
    id?: number
    local?: string
    port?: number
    learning?: boolean
    ttl?: number // 0: inherit
    link?: string // the underlay device it is bound to, if any
    mtu: number
    mac: string
    up: boolean
    addresses: string[]
  }
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
  const routes: CurrentRoute[] = []
  // -N: protocols as numbers, so 211 is recognised even where rt_protos gives it a name.
  for (const family of [4, 6] as Family[])
    for (const r of await ipJson(['-N', `-${family}`, 'route', 'show']))
      routes.push({ family, dst: normalizeDst(r.dst, family), gateway: r.gateway, dev: r.dev, proto: r.protocol ?? '3', type: r.type })
  const dev = links.find((l: any) => l.ifname === VXLAN_DEV)
  if (!dev) return { local, routes, neighbours: [], fdb: [] }
  const info = dev.linkinfo?.info_data ?? {}
  return {
    local,
    routes,
    vxlan: {
      kind: dev.linkinfo?.info_kind,
      id: info.id,
      local: info.local ?? info.local6,
      port: info.port,
      learning: info.learning,
      ttl: info.ttl,
      link: info.link,
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
  if (dst === 'default') return defaultRoute(family)
  const c = parseCidr(dst.includes('/') ? dst : `${dst}/${family === 4 ? 32 : 128}`)
  return c ? formatCidr(c) : dst
}

// The names `ip route` prints for the numbers `ip -N` gives, for the common ones.
const PROTO_NAMES: Record<string, string> = { '2': 'kernel', '3': 'boot', '4': 'static', '16': 'dhcp' }
const TYPE_NAMES: Record<string, string> = { '6': 'blackhole', '7': 'unreachable', '8': 'prohibit' }

/** A route as `ip route` shows it, for the report that it is in the way. */
function describe(r: CurrentRoute): string {
  const type = r.type && r.type !== '1' ? (TYPE_NAMES[r.type] ?? `type ${r.type}`) : ''
  const parts = [type, r.gateway ? `via ${r.gateway}` : '', r.dev ? `dev ${r.dev}` : '', `proto ${PROTO_NAMES[r.proto] ?? r.proto}`]
  return parts.filter(Boolean).join(' ')
}

/** What makes an existing kube-cni.1 not the device kube-cni makes. */
function vxlanDifferences(have: NonNullable<Current['vxlan']>, local: string): string[] {
  const wrong: [boolean, string][] = [
    [have.kind !== 'vxlan', `type ${have.kind}`],
    [have.id !== VXLAN_VNI, `VNI ${have.id}`],
    [have.local !== local, `local ${have.local}`],
    [have.port !== VXLAN_PORT, `port ${have.port}`],
    [have.learning !== false, 'learning'],
    [(have.ttl ?? 0) !== 0, `ttl ${have.ttl}`],
    [have.link !== undefined, `dev ${have.link}`],
  ]
  return wrong.filter(([bad]) => bad).map(([, what]) => what)
}

/**
 * The commands that turn `current` into `plan`; none when they already match. Pure. A destination that
 * already has a route kube-cni did not make is left alone, and reported: `ip route replace` matches on
 * destination and metric, not on `proto`, so it would take over the admin's or the kernel's route.
 */
export function diff(plan: Plan, current: Current): { ip: Change[]; bridge: Change[]; skipped: Skip[] } {
  const ip: Change[] = []
  const bridge: Change[] = []
  const skipped: Skip[] = []
  const why = 'bash: routes to other nodes were made by hand (ip route add <podCIDR> via <node IP>)'
  const foreign = current.routes.filter((r) => r.proto !== String(ROUTE_PROTO))
  let routes = current.routes.filter((r) => r.proto === String(ROUTE_PROTO))
  const want = plan.vxlan
  const have = current.vxlan
  let fresh = false // the device is (re)created, so it has no neighbours, fdb entries or routes yet
  const wrong = have && want ? vxlanDifferences(have, want.local) : []
  if (have && (!want || wrong.length)) {
    // The kernel changes none of these on a live VXLAN device: it is made again.
    ip.push({ line: `link del dev ${VXLAN_DEV}`, why: want ? `the VXLAN device differs: ${wrong.join(', ')}` : 'switching to host-gw' })
    routes = routes.filter((r) => r.dev !== VXLAN_DEV)
    fresh = true
  }
  if (want) {
    if (!have || fresh) {
      ip.push({
        line: `link add name ${VXLAN_DEV} address ${want.mac} mtu ${want.mtu} type vxlan id ${VXLAN_VNI} local ${want.local} dstport ${VXLAN_PORT} nolearning`,
        why: 'new: the overlay device (flannel.1 in flannel)',
      })
    } else {
      if (have.mtu !== want.mtu) ip.push({ line: `link set dev ${VXLAN_DEV} mtu ${want.mtu}` })
      if (have.mac !== want.mac) ip.push({ line: `link set dev ${VXLAN_DEV} address ${want.mac}` })
    }
    if (!have?.up || fresh) ip.push({ line: `link set dev ${VXLAN_DEV} up` })
    for (const v of want.vteps)
      if (fresh || !have?.addresses.includes(v.address))
        ip.push({ line: `addr replace ${v.address}/${v.family === 4 ? 32 : 128} dev ${VXLAN_DEV}${nodad(v.family)}` })
    // Maps and sets, not nested searches: with thousands of peers a quadratic diff costs seconds per reconcile.
    const neighbours = fresh ? [] : current.neighbours
    const macOf = new Map(neighbours.map((c) => [c.address, c.mac]))
    for (const n of want.neighbours)
      if (macOf.get(n.address) !== n.mac) ip.push({ line: `neigh replace ${n.address} lladdr ${n.mac} dev ${VXLAN_DEV} nud permanent`, node: n.node })
    const wantedNeighbours = new Set(want.neighbours.map((n) => n.address))
    for (const c of neighbours) if (!wantedNeighbours.has(c.address)) ip.push({ line: `neigh del ${c.address} dev ${VXLAN_DEV}` })
    const fdbKey = (f: { mac: string; dst: string }) => `${f.mac} ${f.dst}`
    const fdb = fresh ? [] : current.fdb
    const haveFdb = new Set(fdb.map(fdbKey))
    for (const f of want.fdb)
      if (!haveFdb.has(fdbKey(f))) bridge.push({ line: `fdb replace ${f.mac} dev ${VXLAN_DEV} dst ${f.dst} self permanent`, node: f.node })
    const wantedFdb = new Set(want.fdb.map(fdbKey))
    for (const c of fdb) if (!wantedFdb.has(fdbKey(c))) bridge.push({ line: `fdb del ${c.mac} dev ${VXLAN_DEV} dst ${c.dst} self` })
  }
  const foreignTo = new Map(foreign.map((f) => [`${f.family} ${f.dst}`, f]))
  const wanted = plan.routes.filter((r) => {
    const other = foreignTo.get(`${r.family} ${r.dst}`)
    if (other) skipped.push({ node: r.node, reason: `a route to ${r.dst} that kube-cni did not make is there (${describe(other)}): left alone` })
    return !other
  })
  const ours = new Map(routes.map((c) => [c.dst, c]))
  for (const r of wanted) {
    const c = ours.get(r.dst)
    const spec = `${r.dst} via ${r.via}${r.dev ? ` dev ${r.dev} onlink` : ''} proto ${ROUTE_PROTO}`
    if (c && c.gateway === r.via && (!r.dev || c.dev === r.dev)) continue
    // IPv6 refuses to replace a route with one through another device ("Nexthop has invalid gateway"):
    // delete it first. IPv4 replaces in place.
    if (c && r.family === 6 && c.dev !== r.dev) ip.push({ line: `route del ${r.dst} proto ${ROUTE_PROTO}`, node: r.node })
    ip.push({ line: `route replace ${spec}`, why, node: r.node })
  }
  const wantedDsts = new Set(wanted.map((r) => r.dst))
  for (const c of routes)
    if (!wantedDsts.has(c.dst)) ip.push({ line: `route del ${c.dst} proto ${ROUTE_PROTO}`, why: 'no peer needs it any more' })
  // The ip lines create the device that the fdb lines need, so ip runs first.
  return { ip, bridge, skipped }
}

export interface Failure {
  node?: string
  line: string
  error: string
}

export interface ReconcileReport {
  changes: string[] // the shell lines that ran (or, with dryRun, would run)
  skipped: Skip[]
  failed: Failure[] // changes the kernel refused; every other change was made
}

export async function reconcile(nodes: NodeList, self: string, backend: Backend, networks: Cidr[] | undefined, dryRun = false): Promise<ReconcileReport> {
  const current = await readCurrent()
  const plan = planRoutes(nodes, self, backend, current.local, networks)
  const { ip, bridge, skipped } = diff(plan, current)
  const changes = [...ip.map((s) => `ip ${s.line}`), ...bridge.map((s) => `bridge ${s.line}`)]
  const failed: Failure[] = []
  if (!dryRun) {
    if (explain.enabled) explainSteps([...ip.map((s) => ({ ...s, line: `ip ${s.line}` })), ...bridge.map((s) => ({ ...s, line: `bridge ${s.line}` }))])
    failed.push(...(await apply('ip', ip)), ...(await apply('bridge', bridge)))
  }
  return { changes, skipped: mergeSkips([...plan.skipped, ...skipped]), failed }
}

/** One entry per Node, its reasons joined, so each skipped Node is one line in the log. */
function mergeSkips(skips: Skip[]): Skip[] {
  const byNode = new Map<string, string[]>()
  for (const s of skips) byNode.set(s.node, [...(byNode.get(s.node) ?? []), s.reason])
  return [...byNode].map(([node, reasons]) => ({ node, reason: reasons.join('; ') }))
}

/**
 * One `-batch` for all the changes, with `-force` so that each line succeeds or fails on its own: without it
 * the first refused line (one Node's unusable gateway) stops the batch, and no later peer gets its route.
 */
async function apply(tool: string, steps: Change[]): Promise<Failure[]> {
  if (!steps.length) return []
  const r = await run([tool, '-force', '-batch', '-'], steps.map((s) => s.line).join('\n') + '\n')
  return r.code === 0 ? [] : batchFailures(tool, steps, r.stderr)
}

/** Which lines failed, from `-force -batch` stderr: each failure's messages, then "Command failed -:N". Pure. */
export function batchFailures(tool: string, steps: Change[], stderr: string): Failure[] {
  const failed: Failure[] = []
  let messages: string[] = []
  for (const text of stderr.split('\n').map((l) => l.trim())) {
    const n = /^Command failed -:(\d+)$/.exec(text)?.[1]
    if (n === undefined) {
      if (text) messages.push(text)
      continue
    }
    const step = steps[Number(n) - 1]
    failed.push({ node: step?.node, line: `${tool} ${step?.line ?? `-batch line ${n}`}`, error: messages.join(' ') || 'failed' })
    messages = []
  }
  if (!failed.length) failed.push({ line: `${tool} -force -batch`, error: stderr.trim() || 'failed' })
  return failed
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
  const { read: readNodes } = nodeSource(o)
  if (o.explain) explain.enabled = true
  const seconds = o.watch ? Number(o.watch) : 0
  if (!(seconds >= 0)) throw new Error(`--watch takes a number of seconds, or nothing to watch the API server; not ${o.watch}`)
  const resyncMs = parseDuration('--resync', o.resync)
  const networks = clusterNetworks(o.network, o.conflist)
  const api = o['nodes-json'] === undefined ? apiServerFor({ kubectl: o.kubectl, kubeconfig: o.kubeconfig }) : undefined
  const { runAgent, reconcileLogged } = await import('./agent.ts')
  const agent = { node: o.node, backend: o.backend as Backend, networks, dryRun: o['dry-run'], metricsAddr: o['metrics-addr'], conflist: o.conflist }
  if (o.watch === undefined) {
    if (o['metrics-addr']) throw new Error('--metrics-addr is for the agent: add --watch')
    return (await reconcileLogged(await readNodes(), agent)).failed.length ? 1 : 0
  }
  if (o.watch === '') {
    if (!api)
      throw new Error('--watch without SECONDS lists and watches the API server: give --kubeconfig FILE or run in a pod; with --nodes-json or --kubectl give --watch SECONDS')
    return runAgent({ ...agent, source: { api, resyncMs } })
  }
  if (api) process.stderr.write(`kube-cni routes: polling the API server every ${seconds}s; --watch without SECONDS lists once and then watches\n`)
  return runAgent({ ...agent, source: { poll: readNodes, everyMs: seconds * 1000 } })
}
