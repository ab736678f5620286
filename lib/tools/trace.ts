// `kube-cni lab trace FROM TO`: one real probe through a running lab, and the path the kernel gave it, hop by
// hop. The path is walked with `ip route get` from the source netns through the lab's netns (the next hop is
// whichever lab netns owns the next-hop address); then every netns on it has its iptables counters saved, the
// probe is sent, and the counters are saved again: the rules whose counters moved are the ones that probe hit,
// so NAT and drops are read from the kernel, not guessed.
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { $ } from 'zx/core'
import { type LabNode, type LabState, PORT, PREFIX, STATE_DIR, probe, startEchoServers } from './lab.ts'
import { type LabService, doctorLine, programServices, serviceEndpoint, serviceVip } from './scenarios.ts'
import { containsAddress, parseAddress, parseCidr } from '../plugin/ip.ts'
import { inNetns, ipj, netnsWithPrefix, sh } from './harness/netns.ts'

export const TRACE_USAGE = `kube-cni lab trace FROM TO [--port N] [--udp] [--json] [--svg FILE]
  Sends one probe (a TCP connect to the lab's echo port, or one UDP datagram with --udp) from FROM to TO in a
  running lab and shows the path the kernel took: per netns the interfaces, the route, the neighbour (bridge
  port or VXLAN remote), every iptables rule whose counter the probe moved, the addresses as seen there, and
  where and why it stopped, with the doctor finding that names the cause.
  FROM and TO: a pod (n1-p1), a node (node1), outside, or an address one of them has.
  TO may also be a Service: svc/POD (svc/n2-p1) is a ClusterIP Service whose one endpoint is POD, programmed
  for the trace in FROM's node as kube-proxy would (VIP 10.96.N.M for the pod 10.200.N.M, the same port; the
  VIPs \`lab check\` uses) and removed after it; or that VIP itself (10.96.2.2). FROM is then a pod or a node.
  Over --backend vxlan the hops include the underlay: the encapsulated packet (outer addresses, UDP port, VNI,
  the FDB entry), the router, and the decapsulation on the far node.
  --svg FILE also draws the path on the picture of the lab (\`kube-cni lab show --svg\`), its interfaces in red.`

/** A mistake in the command line: exit 2 and the usage, not a stack trace. */
class TraceUsage extends Error {}

interface Endpoint {
  ns: string
  ip: string
  node?: LabNode
}

interface Rule {
  table: string
  chain: string
  rule: string
  packets: number
}

export interface Hop {
  netns: string
  dev: string
  action: string
  in?: string
  out?: string
  /** When in or out is a bridge: the port the probe crossed it by (a pod's veth, the router's port of a node). */
  inPort?: string
  outPort?: string
  route?: string
  neighbour?: string
  src: string
  dst: string
  rules: Rule[]
  why?: string
  finding?: { id: string; message: string; fix: string }
  /** On the underlay hops of a VXLAN packet (src and dst are then the outer addresses): what it carries, how. */
  vxlan?: { vni: number; port: number; inner: { src: string; dst: string }; fdb?: string }
  /** On the underlay hops: the packets each of its interfaces received and sent while the probe ran. */
  packets?: { dev: string; rx: number; tx: number }[]
}

export interface Trace {
  delivered: boolean
  hops: Hop[]
}

function loadState(): LabState {
  const file = join(STATE_DIR, 'state.json')
  if (!existsSync(file)) throw new Error('no lab is running: start one with kube-cni lab up')
  return JSON.parse(readFileSync(file, 'utf8'))
}

/** Every address in the lab's netns (loopback aside), to find which netns a next hop is. */
function owners(): Map<string, { ns: string; dev: string }> {
  const map = new Map<string, { ns: string; dev: string }>()
  for (const ns of netnsWithPrefix(PREFIX))
    for (const link of ipj(ns, 'addr', 'show'))
      if (link.ifname !== 'lo') for (const a of link.addr_info ?? []) map.set(a.local, { ns, dev: link.ifname })
  return map
}

function resolve(state: LabState, name: string, v6: boolean): Endpoint {
  const fam = (ips: string[]) => ips.find((ip) => ip.includes(':') === v6) ?? ips[0]
  for (const node of state.nodes) {
    if (node.name === name || node.ips.includes(name)) return { ns: node.ns, ip: node.ips.includes(name) ? name : fam(node.ips), node }
    for (const pod of node.pods) if (pod.name === name || pod.ips.includes(name)) return { ns: pod.ns, ip: pod.ips.includes(name) ? name : fam(pod.ips), node }
  }
  if (name === 'outside') {
    const ns = `${PREFIX}outside`
    const ips = ipj(ns, 'addr', 'show', 'dev', 'eth0').flatMap((l: any) => l.addr_info.filter((a: any) => a.scope === 'global').map((a: any) => a.local))
    return { ns, ip: fam(ips) }
  }
  const owner = owners().get(name)
  if (owner) return { ns: owner.ns, ip: name }
  throw new TraceUsage(`${JSON.stringify(name)} is not in the lab: give a pod (n1-p1), a pod IP, a node (node1), outside, or as TO a Service (svc/n1-p2)`)
}

function routeGet(ns: string, dst: string, from?: { src: string; dev: string }): { ok: true; r: any } | { ok: false; error: string } {
  const args = ['ip', '-n', ns, '-j', 'route', 'get', dst, ...(from ? ['from', from.src, 'iif', from.dev] : [])]
  const out = sh(args)
  if (out.code !== 0) return { ok: false, error: out.stderr.replace(/^RTNETLINK answers: /, '').trim() }
  return { ok: true, r: JSON.parse(out.stdout)[0] }
}

const describeRoute = (r: any) => [r.type && r.type !== 'unicast' ? r.type : '', r.dst, r.gateway ? `via ${r.gateway}` : '', `dev ${r.dev}`, r.prefsrc ? `src ${r.prefsrc}` : ''].filter(Boolean).join(' ')

/** `iptables-save -c` as packet counts per rule (and per chain policy), keyed so that two saves can be diffed. */
function counters(ns: string, v6: boolean): Map<string, Rule> {
  const out = sh(inNetns(ns, [v6 ? 'ip6tables-save' : 'iptables-save', '-c'])).stdout
  const map = new Map<string, Rule>()
  let table = ''
  const seen = new Map<string, number>()
  for (const line of out.split('\n')) {
    if (line.startsWith('*')) table = line.slice(1)
    const policy = line.match(/^:(\S+) (\S+) \[(\d+):\d+\]/)
    const rule = line.match(/^\[(\d+):\d+\] (-A (\S+) .*)$/)
    if (policy && policy[2] !== '-') map.set(`${table} :${policy[1]}`, { table, chain: policy[1], rule: `policy ${policy[2]}`, packets: Number(policy[3]) })
    if (rule) {
      const key = `${table} ${rule[2]}`
      const n = (seen.get(key) ?? 0) + 1
      seen.set(key, n)
      map.set(`${key} #${n}`, { table, chain: rule[3], rule: rule[2], packets: Number(rule[1]) })
    }
  }
  return map
}

function moved(before: Map<string, Rule>, after: Map<string, Rule>): Rule[] {
  return [...after].flatMap(([k, r]) => (r.packets > (before.get(k)?.packets ?? 0) ? [{ ...r, packets: r.packets - (before.get(k)?.packets ?? 0) }] : []))
}

const drops = (rules: Rule[]) => rules.filter((r) => / -j (DROP|REJECT)\b/.test(r.rule) || r.rule === 'policy DROP')

/** What a walk needs besides its two ends: the lab, who owns each address, and the Service the trace made. */
interface Walk {
  state: LabState
  addrs: Map<string, { ns: string; dev: string }>
  svc?: TraceService
}

/** Where the routes say the packet goes, before it is sent; the walk ends where the kernel would not pass it on. */
function walk(w: Walk, from: Endpoint, to: Endpoint, v6: boolean): Hop[] {
  const hops: Hop[] = []
  let at = from.ns
  let inDev: string | undefined
  let src = from.ip
  let dst = to.ip
  const byNs = (ns: string) => w.state.nodes.find((n) => n.ns === ns)
  for (let ttl = 0; ttl < 16; ttl++) {
    const hop: Hop = { netns: at, dev: inDev ?? '', action: '', in: inDev, src, dst, rules: [] }
    hops.push(hop)
    // kube-proxy's DNAT comes before the routing decision (PREROUTING, or OUTPUT for the node's own packets).
    if (w.svc && at === w.svc.node.ns && dst === w.svc.vip) dst = w.svc.endpoint
    const node = byNs(at)
    // With forwarding off, `ip route get ... iif` says only "No route to host": name the real cause first.
    const forwarding = sh(inNetns(at, ['sysctl', '-n', v6 ? 'net.ipv6.conf.all.forwarding' : 'net.ipv4.ip_forward'])).stdout.trim() === '1'
    if (inDev && node && at !== to.ns && !forwarding) {
      Object.assign(hop, { action: 'not forwarded', why: `${node.name} has IP forwarding off: it drops packets that are not for itself` })
      return hops
    }
    const got = routeGet(at, dst, inDev ? { src, dev: inDev } : undefined)
    if (!got.ok) {
      Object.assign(hop, { action: 'no route', why: `ip route get ${dst}${inDev ? ` from ${src} iif ${inDev}` : ''}: ${got.error}` })
      return hops
    }
    const r = got.r
    hop.route = describeRoute(r)
    if (r.type === 'local') return Object.assign(hop, { action: at === to.ns ? 'delivered' : 'local' }), hops
    hop.out = r.dev
    hop.dev = r.dev
    if (!inDev) src = r.prefsrc ?? src
    hop.src = src
    // A node hands another node's pod network to its default gateway only when its own route to it is gone.
    const peer = w.state.nodes.find((n) => n !== node && n.subnets.some((s) => inSubnet(dst, s)))
    const podCIDR = peer?.subnets.find((s) => inSubnet(dst, s))
    if (node && peer && podCIDR && r.dev !== 'cni0' && !exactRoute(at, podCIDR)) {
      Object.assign(hop, {
        action: 'no route',
        why: `${node.name} has no route to ${podCIDR} (${peer.name}'s podCIDR): the kernel would send it to the default gateway${r.gateway ? ` ${r.gateway}` : ''}, which knows no pod network`,
      })
      return hops
    }
    // The Service's hairpin SNAT: an endpoint that reached itself sees the packet come from the bridge.
    if (w.svc && at === w.svc.node.ns && src === w.svc.endpoint) src = ipj(at, 'addr', 'show', 'dev', r.dev)[0].addr_info.find((a: any) => a.family === 'inet' && a.scope === 'global')?.local ?? src
    const next = r.gateway ?? dst
    hop.action = hops.length === 1 ? 'sent' : 'forwarded'
    hop.neighbour = next
    const vx = vxlanDevices(at).find((d) => d.dev === r.dev)
    if (vx) {
      const under = underlay(w, hop, vx, { src, dst })
      hops.push(...under.hops)
      if (!under.arrived) return hops
      ;({ ns: at, dev: inDev } = under.arrived)
      continue
    }
    const owner = w.addrs.get(next)
    if (!owner) {
      Object.assign(hop, { action: 'no neighbour', why: `no host in the lab has ${next}, the next hop on ${r.dev}` })
      return hops
    }
    at = owner.ns
    inDev = owner.dev
  }
  hops.at(-1)!.action = 'TTL exceeded'
  return hops
}

interface VxlanDevice {
  dev: string
  vni: number
  port: number
  local?: string
}

function vxlanDevices(ns: string): VxlanDevice[] {
  return ipj(ns, '-d', 'link', 'show', 'type', 'vxlan').map((l: any) => ({ dev: l.ifname, vni: l.linkinfo.info_data.id, port: l.linkinfo.info_data.port, local: l.linkinfo.info_data.local }))
}

/**
 * The underlay hops of a packet hop sends into a VXLAN device: the FDB entry for the next hop's MAC names the
 * remote VTEP, and the outer packet (UDP from the device's local address) is walked like any other, through
 * the router if there is one, to the node that owns the remote address and decapsulates it there.
 */
function underlay(w: Walk, hop: Hop, vx: VxlanDevice, inner: { src: string; dst: string }): { hops: Hop[]; arrived?: { ns: string; dev: string } } {
  const [n] = ipj(hop.netns, 'neigh', 'show', 'to', hop.neighbour!, 'dev', vx.dev)
  const entry = vxlanRemote(hop.netns, vx.dev, n?.lladdr)
  if (!entry) {
    const why = n?.lladdr ? `${vx.dev} has no FDB entry for ${n.lladdr} (${hop.neighbour}): it does not know which node to send it to` : `${vx.dev} has no neighbour entry for ${hop.neighbour}`
    Object.assign(hop, { action: 'no neighbour', why })
    return { hops: [] }
  }
  const remote: string = entry.dst
  const vxlan = { vni: entry.vni ?? vx.vni, port: entry.port ?? vx.port }
  const outer = walk({ ...w, svc: undefined }, { ns: hop.netns, ip: vx.local ?? '' }, { ns: w.addrs.get(remote)?.ns ?? '', ip: remote }, remote.includes(':'))
  for (const h of outer) h.vxlan = { ...vxlan, inner: { ...inner } }
  const [first, last] = [outer[0], outer.at(-1)!]
  if (first.action === 'sent') first.action = 'encapsulated'
  first.in = vx.dev
  first.vxlan!.fdb = `${entry.mac} dst ${remote} ${[...(entry.flags ?? []), entry.state].filter(Boolean).join(' ')}`
  if (last.action !== 'delivered') return { hops: outer }
  const decap = vxlanDevices(last.netns).find((d) => d.vni === vxlan.vni && d.port === vxlan.port)
  if (!decap) {
    Object.assign(last, { action: 'not decapsulated', why: `${last.netns} has no VXLAN device for VNI ${vxlan.vni} on UDP port ${vxlan.port}: the kernel answers port unreachable` })
    return { hops: outer }
  }
  Object.assign(last, { action: 'decapsulated', out: decap.dev, dev: decap.dev })
  return { hops: outer, arrived: { ns: last.netns, dev: decap.dev } }
}

const fdb = (ns: string): any[] => JSON.parse(sh(['bridge', '-n', ns, '-j', 'fdb', 'show']).stdout || '[]')

function inSubnet(ip: string, cidr: string): boolean {
  const [c, a] = [parseCidr(cidr), parseAddress(ip)]
  return !!c && !!a && containsAddress(c, a.family, a.value)
}

const exactRoute = (ns: string, cidr: string) => ipj(ns, ...(cidr.includes(':') ? ['-6'] : []), 'route', 'show', 'exact', cidr).length > 0

/** The neighbour entry a hop used after the probe, with its bridge port or VXLAN remote. */
function neighbour(ns: string, dev: string, ip: string): { text: string; port?: string } {
  const [n] = ipj(ns, 'neigh', 'show', 'to', ip, 'dev', dev)
  if (!n) return { text: `${ip}: no neighbour entry on ${dev}` }
  const state = (n.state ?? []).join(',')
  let where = ''
  const port = bridgePort(ns, dev, n.lladdr)
  const remote = vxlanRemote(ns, dev, n.lladdr)
  if (port) where = `, bridge port ${port}`
  if (remote) where = `, VXLAN remote ${remote.dst}`
  return { text: `${ip} lladdr ${n.lladdr ?? '-'} ${state}${where}`, port }
}

/** The FDB entry of VXLAN device dev that sends mac to a remote VTEP (its `dst`). */
const vxlanRemote = (ns: string, dev: string, mac: string | undefined): any => (mac ? fdb(ns).find((e) => e.mac === mac && e.ifname === dev && e.dst) : undefined)

/** The port of bridge dev that learned mac: where a packet to or from that MAC crosses the bridge. */
const bridgePort = (ns: string, dev: string, mac: string | undefined): string | undefined => (mac ? fdb(ns).find((e) => e.mac === mac && e.master === dev)?.ifname : undefined)

/** UDP datagrams that reached the netns's UDP layer (to a socket or not), from its /proc/net/snmp. */
function udpIn(ns: string): number {
  const lines = sh(inNetns(ns, ['cat', '/proc/net/snmp'])).stdout.split('\n').filter((l) => l.startsWith('Udp:'))
  const [names, values] = lines.map((l) => l.split(/\s+/))
  return ['InDatagrams', 'NoPorts'].reduce((s, k) => s + Number(values[names.indexOf(k)]), 0)
}

/** The first of ids that doctor, run in the node ns, finds failing. */
async function findingFor(state: LabState, ns: string, ...ids: string[]): Promise<Hop['finding'] | undefined> {
  const node = state.nodes.find((n) => n.ns === ns)
  if (!node) return undefined
  const r = await $({ quiet: true, nothrow: true })`${inNetns(node.ns, doctorLine(node, true))}`
  try {
    const failing = JSON.parse(r.stdout).findings.filter((x: any) => x.status === 'fail')
    const f = ids.map((id) => failing.find((x: any) => x.id === id)).find(Boolean)
    return f && { id: f.id, message: f.message, fix: f.fix }
  } catch {
    return undefined
  }
}

/** The Service a trace makes for TO svc/POD or a lab VIP, in FROM's node. */
interface TraceService extends LabService {
  node: LabNode
}

/** TO as a Service (svc/POD, or a lab VIP), or undefined when TO is not one. */
function service(state: LabState, from: Endpoint, toName: string, port: number): { svc: TraceService; to: Endpoint } | undefined {
  const pods = state.nodes.flatMap((node) => node.pods.map((pod) => ({ pod, node })))
  let found
  if (toName.startsWith('svc/')) {
    const name = toName.slice('svc/'.length)
    if (!name) throw new TraceUsage('svc/ needs a pod name: svc/n2-p1 is the Service whose one endpoint is n2-p1')
    found = pods.find((p) => p.pod.name === name)
    if (!found) throw new TraceUsage(`svc/${name}: the lab has no pod ${JSON.stringify(name)}; its pods are ${pods.map((p) => p.pod.name).join(', ')}`)
  } else {
    const endpoint = serviceEndpoint(toName)
    if (!endpoint) return undefined
    found = pods.find((p) => p.pod.ips.includes(endpoint))
    if (!found) throw new TraceUsage(`${toName} is no lab Service's VIP: the pod 10.200.N.M is the endpoint of 10.96.N.M, so give the VIP of a pod the lab has, or svc/POD`)
  }
  if (!from.node) throw new TraceUsage(`a Service is programmed in FROM's node, as kube-proxy does: trace to ${toName} from a pod or a node, not from outside`)
  const endpoint = found.pod.ips[0]
  const vip = serviceVip(endpoint)!
  return { svc: { node: from.node, vip, endpoint, port }, to: { ns: found.pod.ns, ip: vip, node: found.node } }
}

/** Every chain a built-in chain of roots leads to, through -j and -g, as `table chain`. */
function reachable(rules: Rule[], roots: string[]): Set<string> {
  const seen = new Set(rules.map((r) => r.table).flatMap((t) => roots.map((c) => `${t} ${c}`)))
  for (let grew = true; grew; ) {
    grew = false
    for (const r of rules) {
      const to = r.rule.match(/ -[jg] (\S+)/)?.[1]
      if (to && seen.has(`${r.table} ${r.chain}`) && !seen.has(`${r.table} ${to}`)) seen.add(`${r.table} ${to}`), (grew = true)
    }
  }
  return seen
}

/**
 * The rules a netns's counters moved, on that netns's hops. A node that encapsulates or decapsulates has two
 * hops, the pod packet's and the outer packet's: the node's own traffic (OUTPUT, INPUT) is the outer packet's.
 */
function placeRules(hops: Hop[], rules: Rule[], all: Rule[]): void {
  const [inner, outer] = [hops.find((h) => !h.vxlan), hops.find((h) => h.vxlan)]
  if (!inner || !outer) return void ((inner ?? outer)!.rules = rules)
  const transit = reachable(all, ['PREROUTING', 'FORWARD', 'POSTROUTING'])
  const own = reachable(all, ['OUTPUT', 'INPUT'])
  for (const r of rules) (own.has(`${r.table} ${r.chain}`) && !transit.has(`${r.table} ${r.chain}`) ? outer : inner).rules.push(r)
}

/** Packets received and sent per interface of a netns, from its `ip -s link` counters. */
function linkCounters(ns: string): Map<string, { rx: number; tx: number }> {
  return new Map(ipj(ns, '-s', 'link', 'show').map((l: any) => [l.ifname, { rx: l.stats64.rx.packets, tx: l.stats64.tx.packets }]))
}

const familyOf = (h: Hop) => (h.dst.includes(':') ? 6 : 4)

/** The counters the trace diffs, of every netns on the path: iptables per family, and the underlay's interfaces. */
function snapshot(hops: Hop[]) {
  const keys = [...new Set(hops.map((h) => `${familyOf(h)} ${h.netns}`))]
  return {
    rules: new Map(keys.map((k) => [k, counters(k.slice(2), k.startsWith('6'))])),
    links: new Map([...new Set(hops.filter((h) => h.vxlan).map((h) => h.netns))].map((ns) => [ns, linkCounters(ns)])),
  }
}

export async function trace(fromName: string, toName: string, o: { port: number; udp: boolean }): Promise<Trace> {
  const state = loadState()
  const v6 = toName.includes(':')
  const from = resolve(state, fromName, v6)
  const asService = service(state, from, toName, o.port)
  const to = asService?.to ?? resolve(state, toName, v6)
  const hops = walk({ state, addrs: owners(), svc: asService?.svc }, from, to, v6)
  if (!o.udp) await startEchoServers([to.ns], o.port)
  const remove = asService ? programServices(asService.svc.node, [asService.svc]) : () => {}
  let before, after, seenAs: string | null = null, delivered
  try {
    before = snapshot(hops)
    const udpBefore = udpIn(to.ns)
    if (o.udp) sh(inNetns(from.ns, ['bash', '-c', `echo kube-cni-trace > /dev/udp/${to.ip}/${o.port}`]))
    else seenAs = (await probe(from.ns, [to.ip], o.port))[to.ip]
    delivered = o.udp ? udpIn(to.ns) > udpBefore : seenAs !== null
    // Read while the Service's rules are still there: their counters go with them.
    after = snapshot(hops)
  } finally {
    remove()
  }

  for (const [k, all] of after.rules) {
    const here = hops.filter((h) => `${familyOf(h)} ${h.netns}` === k)
    placeRules(here, moved(before.rules.get(k)!, all), [...all.values()])
  }
  let src = hops[0].src
  hops.forEach((hop, i) => {
    const prev = hops[i - 1]
    const inPort = hop.in && prev?.out && bridgePort(hop.netns, hop.in, ipj(prev.netns, 'link', 'show', 'dev', prev.out)[0]?.address)
    if (inPort) hop.inPort = inPort
    if (hop.out && hop.neighbour) {
      const n = neighbour(hop.netns, hop.out, hop.neighbour)
      hop.neighbour = n.text
      if (n.port) hop.outPort = n.port
    }
    if (hop.vxlan) {
      // The outer source is the VTEP's own; what a NAT changed before is the packet it carries.
      hop.vxlan.inner.src = src
      const [was, now] = [before.links.get(hop.netns)!, after.links.get(hop.netns)!]
      hop.packets = [hop.in, hop.out].flatMap((dev) => (dev && now.has(dev) ? [{ dev, rx: now.get(dev)!.rx - (was.get(dev)?.rx ?? 0), tx: now.get(dev)!.tx - (was.get(dev)?.tx ?? 0) }] : []))
      return
    }
    hop.src = src
    const whys: string[] = []
    // The destination as the next netns sees it: kube-proxy's DNAT to the Service's endpoint.
    const dnat = hop.rules.find((r) => r.table === 'nat' && / -j DNAT\b/.test(r.rule))
    if (dnat) whys.push(`destination ${hop.dst} DNATed to ${dnat.rule.match(/--to-destination (\S+)/)?.[1]} by ${dnat.chain}`)
    // The source as the next netns sees it: a MASQUERADE takes the out interface's address, an SNAT its own.
    const nat = hop.rules.find((r) => r.table === 'nat' && / -j (MASQUERADE|SNAT)\b/.test(r.rule))
    if (nat) {
      const to = nat.rule.match(/--to-source (\S+)/)?.[1]?.replace(/:.*/, '')
      const out = ipj(hop.netns, 'addr', 'show', 'dev', hop.out!)[0]?.addr_info?.find((a: any) => a.family === (hop.dst.includes(':') ? 'inet6' : 'inet') && a.scope === 'global')
      src = to ?? out?.local ?? src
      whys.push(`source ${hop.src} ${/SNAT/.test(nat.rule) ? 'SNATed' : 'masqueraded'} to ${src}`)
    }
    // What the walk said of a hop where the packet stopped stays first.
    if (whys.length) hop.why = [hop.why, ...whys].filter(Boolean).join('; ')
  })
  const last = hops.at(-1)!
  if (delivered) {
    if (last.action === 'delivered' && seenAs) last.why = `the server saw the connection from ${seenAs}`
    // The counters and the answer are the kernel's word; a walk that disagrees says so rather than hide it.
    else if (last.action !== 'delivered') last.why = `${last.why ?? last.action}; yet the probe arrived: the routes changed while it ran, or the lab has a path this walk does not follow`
  } else {
    const dropped = hops.find((h) => drops(h.rules).length)
    if (dropped) {
      hops.splice(hops.indexOf(dropped) + 1)
      const rule = drops(dropped.rules)[0]
      Object.assign(dropped, { action: /REJECT/.test(rule.rule) ? 'rejected' : 'dropped', why: `${rule.table} ${rule.chain}: ${rule.rule}` })
    } else if (last.action === 'delivered' && asService) {
      const { vip, endpoint, node } = asService.svc
      last.action = 'no reply'
      last.why = `no answer came back through ${vip}: the reply from ${endpoint} must pass ${node.name}'s iptables to be un-DNATed, and an endpoint reaching itself must leave by the bridge port it came in on (hairpin)`
      last.finding = await findingFor(state, node.ns, 'br-netfilter', 'hairpin')
    } else if (last.action === 'delivered') {
      // It arrived, so the answer did not come back: the reply needs a route to the source as seen here.
      const back = routeGet(last.netns, last.src)
      last.action = 'no reply'
      last.why = back.ok && back.r.gateway
        ? `the probe arrived from ${last.src} but no answer came back (reply via ${back.r.gateway})`
        : `the probe arrived from ${last.src}, which ${last.netns} has no route back to: the source was not masqueraded`
      if (last.src === hops[0].src) {
        const node = hops.find((h) => state.nodes.some((n) => n.ns === h.netns))
        if (node) last.finding = await findingFor(state, node.netns, 'masquerade')
      }
    }
    const cause: Record<string, string> = { 'no route': 'routes', 'no neighbour': 'routes', 'not forwarded': 'forwarding', 'not decapsulated': 'routes', dropped: 'masquerade', rejected: 'masquerade' }
    const stop = hops.at(-1)!
    if (!stop.finding && cause[stop.action]) stop.finding = await findingFor(state, stop.netns, cause[stop.action])
  }
  return { delivered, hops }
}

function render(from: string, to: string, t: Trace): string {
  const lines = [`trace ${from} → ${to}: ${t.delivered ? 'delivered' : 'NOT delivered'}`]
  for (const h of t.hops) {
    const via = (dev?: string, port?: string) => `${dev}${port ? ` (port ${port})` : ''}`
    lines.push(`  ${h.netns}  ${h.action}${h.in ? `  in ${via(h.in, h.inPort)}` : ''}${h.out ? `  out ${via(h.out, h.outPort)}` : ''}  (${h.src} → ${h.dst})`)
    if (h.vxlan) {
      const { vni, port, inner, fdb } = h.vxlan
      lines.push(`      vxlan      UDP ${port} VNI ${vni}, carrying ${inner.src} → ${inner.dst}${fdb ? `; fdb ${fdb}` : ''}`)
    }
    if (h.route) lines.push(`      route      ${h.route}`)
    if (h.neighbour) lines.push(`      neighbour  ${h.neighbour}`)
    if (h.packets?.length) lines.push(`      packets    ${h.packets.map((p) => `${p.dev} rx +${p.rx} tx +${p.tx}`).join(', ')}`)
    for (const r of h.rules) lines.push(`      rule       +${r.packets} ${r.table} ${r.rule}`)
    if (h.why) lines.push(`      why        ${h.why}`)
    if (h.finding) lines.push(`      doctor     ${h.finding.id}: ${h.finding.message}`, ...(h.finding.fix ? [`      fix        ${h.finding.fix}`] : []))
  }
  return lines.join('\n')
}

export async function traceCommand(argv: string[]): Promise<number> {
  try {
    return await traceLine(argv)
  } catch (e) {
    if (!(e instanceof TraceUsage)) throw e
    process.stderr.write(`kube-cni lab trace: ${e.message}\n\n${TRACE_USAGE}\n`)
    return 2
  }
}

async function traceLine(argv: string[]): Promise<number> {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        port: { type: 'string', default: String(PORT) },
        udp: { type: 'boolean', default: false },
        json: { type: 'boolean', default: false },
        svg: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    })
  } catch (e) {
    throw new TraceUsage((e as Error).message)
  }
  const { values: v, positionals } = parsed
  if (v.help) return process.stdout.write(`${TRACE_USAGE}\n`), 0
  const port = Number(v.port)
  if (positionals.length !== 2 || !(port >= 1 && port <= 65535)) throw new TraceUsage('give FROM and TO, and a port from 1 to 65535')
  if (process.getuid?.() !== 0) throw new Error('the lab lives in network namespaces: run it as root (sudo)')
  const t = await trace(positionals[0], positionals[1], { port, udp: v.udp! })
  process.stdout.write(v.json ? `${JSON.stringify(t)}\n` : `${render(positionals[0], positionals[1], t)}\n`)
  if (v.svg) {
    const { labModel, renderSvg, writeSvg } = await import('./show.ts')
    const path = t.hops.flatMap((h) => [h.in, h.inPort, h.out, h.outPort].flatMap((dev) => (dev ? [{ netns: h.netns, dev }] : [])))
    writeSvg(v.svg, renderSvg(labModel(), path))
  }
  return t.delivered ? 0 : 1
}
