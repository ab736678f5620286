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
import { parseArgs } from 'node:util'
import { type Step, explain, explainSteps, run } from './exec.ts'
import { type Cidr, type Family, containsAddress, formatAddress, formatCidr, macFromAddress, parseAddress, parseCidr } from './ip.ts'
import { type NodeList, internalIPs, podCIDRs } from './kube.ts'

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
  family: Family
  dst: string // canonical CIDR, as `ip -j route` prints it
  via: string
  dev?: string // set for vxlan: the route goes through the overlay device, `onlink`
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
  skipped: string[] // peers left out, and why
}

/** The routing this node should have, from the NodeList alone. Pure: no I/O. */
export function planRoutes(nodes: NodeList, self: string, backend: Backend, local: LocalAddress[]): Plan {
  const me = nodes.items.find((n) => n.metadata?.name === self)
  if (!me) throw new Error(`node ${self} is not in the NodeList: pass the name Kubernetes knows it by with --node`)
  const plan: Plan = { routes: [], skipped: [] }
  const myIPs = internalIPs(me).flatMap((t) => parseAddress(t) ?? [])

  if (backend === 'vxlan') {
    const myCidrs = podCIDRs(me).flatMap((t) => parseCidr(t) ?? [])
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
    const cidrs = podCIDRs(peer).flatMap((t) => parseCidr(t) ?? [])
    if (!cidrs.length) {
      plan.skipped.push(`${name}: no podCIDR yet`)
      continue
    }
    const ips = internalIPs(peer).flatMap((t) => parseAddress(t) ?? [])
    if (plan.vxlan) {
      const underlayFamily = parseAddress(plan.vxlan.local)!.family
      const dst = ips.find((a) => a.family === underlayFamily)
      if (!dst) {
        plan.skipped.push(`${name}: no IPv${underlayFamily} InternalIP to tunnel to`)
        continue
      }
      const mac = vtepMac(cidrs)
      plan.vxlan.fdb.push({ mac, dst: formatAddress(dst.family, dst.value) })
      for (const c of cidrs) {
        const vtep = formatAddress(c.family, c.network)
        plan.vxlan.neighbours.push({ address: vtep, mac })
        plan.routes.push({ family: c.family, dst: formatCidr(c), via: vtep, dev: VXLAN_DEV })
      }
      continue
    }
    for (const c of cidrs) {
      const gw = ips.find((a) => a.family === c.family)
      if (!gw) {
        plan.skipped.push(`${name}: no IPv${c.family} InternalIP for ${formatCidr(c)}`)
        continue
      }
      const connected = local.some((l) => containsAddress(subnetOf(l), gw.family, gw.value))
      const via = formatAddress(gw.family, gw.value)
      if (!connected) plan.skipped.push(`${name}: ${via} is not on a directly connected network; host-gw cannot reach it, use --backend vxlan`)
      else plan.routes.push({ family: c.family, dst: formatCidr(c), via })
    }
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
  skipped: string[]
}

export async function reconcile(nodes: NodeList, self: string, backend: Backend, dryRun = false): Promise<ReconcileReport> {
  const current = await readCurrent()
  const plan = planRoutes(nodes, self, backend, current.local)
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

export const ROUTES_USAGE = `kube-cni routes --node NAME [--nodes-json FILE|- | --kubectl PATH] [--backend host-gw|vxlan]
                [--watch SECONDS] [--dry-run] [--explain]
  Makes this netns's routes to every other node's podCIDR match a Kubernetes NodeList.
  Nodes come from FILE (- for stdin), from \`kubectl get nodes -o json\`, or, inside a pod, from the API.`

export async function routesCommand(argv: string[]): Promise<number> {
  const { values: o } = parseArgs({
    args: argv,
    options: {
      node: { type: 'string' },
      'nodes-json': { type: 'string' },
      kubectl: { type: 'string' },
      backend: { type: 'string', default: 'host-gw' },
      watch: { type: 'string' },
      'dry-run': { type: 'boolean', default: false },
      explain: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  })
  if (o.help) return process.stdout.write(`${ROUTES_USAGE}\n`), 0
  if (!o.node) throw new Error(`--node is required\n${ROUTES_USAGE}`)
  if (o.backend !== 'host-gw' && o.backend !== 'vxlan') throw new Error(`--backend must be host-gw or vxlan, not ${o.backend}`)
  if (o.explain) explain.enabled = true
  const watch = o.watch === undefined ? 0 : Number(o.watch)
  if (!(watch >= 0)) throw new Error(`--watch takes a number of seconds, not ${o.watch}`)
  const kube = await import('./kube.ts')
  const readNodes = () =>
    o['nodes-json'] !== undefined
      ? Promise.resolve(kube.readNodeListFile(o['nodes-json']))
      : kube.readNodeList({ kubectl: o.kubectl })
  for (;;) {
    try {
      const report = await reconcile(await readNodes(), o.node, o.backend, o['dry-run'])
      for (const s of report.skipped) process.stderr.write(`kube-cni routes: skipped ${s}\n`)
      if (o['dry-run']) for (const c of report.changes) process.stdout.write(`${c}\n`)
      else process.stderr.write(`kube-cni routes: ${report.changes.length ? `${report.changes.length} changes` : 'no changes'}\n`)
    } catch (e) {
      if (!watch) throw e
      process.stderr.write(`kube-cni routes: ${(e as Error).message}; retrying in ${watch}s\n`)
    }
    if (!watch) return 0
    await new Promise((r) => setTimeout(r, watch * 1000))
  }
}
