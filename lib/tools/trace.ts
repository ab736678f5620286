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
import { doctorLine } from './scenarios.ts'
import { containsAddress, parseAddress, parseCidr } from '../plugin/ip.ts'
import { inNetns, ipj, netnsWithPrefix, sh } from './harness/netns.ts'

export const TRACE_USAGE = `kube-cni lab trace FROM TO [--port N] [--udp] [--json] [--svg FILE]
  Sends one probe (a TCP connect to the lab's echo port, or one UDP datagram with --udp) from FROM to TO in a
  running lab and shows the path the kernel took: per netns the interfaces, the route, the neighbour (bridge
  port or VXLAN remote), every iptables rule whose counter the probe moved, the addresses as seen there, and
  where and why it stopped, with the doctor finding that names the cause.
  FROM and TO: a pod (n1-p1), a node (node1), outside, or an address one of them has.
  --svg FILE also draws the path on the picture of the lab (\`kube-cni lab show --svg\`), its interfaces in red.`

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
  route?: string
  neighbour?: string
  src: string
  dst: string
  rules: Rule[]
  why?: string
  finding?: { id: string; message: string; fix: string }
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
  throw new Error(`${JSON.stringify(name)} is not in the lab: give a pod (n1-p1), a pod IP, a node (node1) or outside`)
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

/** Where the routes say the packet goes, before it is sent; the walk ends where the kernel would not pass it on. */
function walk(state: LabState, from: Endpoint, to: Endpoint, v6: boolean): Hop[] {
  const addrs = owners()
  const hops: Hop[] = []
  let at = from.ns
  let inDev: string | undefined
  let src = from.ip
  const byNs = (ns: string) => state.nodes.find((n) => n.ns === ns)
  for (let ttl = 0; ttl < 16; ttl++) {
    const hop: Hop = { netns: at, dev: inDev ?? '', action: '', in: inDev, src, dst: to.ip, rules: [] }
    hops.push(hop)
    const node = byNs(at)
    // With forwarding off, `ip route get ... iif` says only "No route to host": name the real cause first.
    const forwarding = sh(inNetns(at, ['sysctl', '-n', v6 ? 'net.ipv6.conf.all.forwarding' : 'net.ipv4.ip_forward'])).stdout.trim() === '1'
    if (inDev && node && at !== to.ns && !forwarding) {
      Object.assign(hop, { action: 'not forwarded', why: `${node.name} has IP forwarding off: it drops packets that are not for itself` })
      return hops
    }
    const got = routeGet(at, to.ip, inDev ? { src, dev: inDev } : undefined)
    if (!got.ok) {
      Object.assign(hop, { action: 'no route', why: `ip route get ${to.ip}${inDev ? ` from ${src} iif ${inDev}` : ''}: ${got.error}` })
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
    const peer = state.nodes.find((n) => n !== node && n.subnets.some((s) => inSubnet(to.ip, s)))
    const podCIDR = peer?.subnets.find((s) => inSubnet(to.ip, s))
    if (node && peer && podCIDR && r.dev !== 'cni0' && !exactRoute(at, podCIDR)) {
      Object.assign(hop, {
        action: 'no route',
        why: `${node.name} has no route to ${podCIDR} (${peer.name}'s podCIDR): the kernel would send it to the default gateway${r.gateway ? ` ${r.gateway}` : ''}, which knows no pod network`,
      })
      return hops
    }
    const next = r.gateway ?? to.ip
    const owner = addrs.get(next)
    hop.action = 'forwarded'
    if (hops.length === 1) hop.action = 'sent'
    if (!owner) {
      Object.assign(hop, { action: 'no neighbour', why: `no host in the lab has ${next}, the next hop on ${r.dev}` })
      return hops
    }
    hop.neighbour = next
    at = owner.ns
    inDev = owner.dev
  }
  hops.at(-1)!.action = 'TTL exceeded'
  return hops
}

function inSubnet(ip: string, cidr: string): boolean {
  const [c, a] = [parseCidr(cidr), parseAddress(ip)]
  return !!c && !!a && containsAddress(c, a.family, a.value)
}

const exactRoute = (ns: string, cidr: string) => ipj(ns, ...(cidr.includes(':') ? ['-6'] : []), 'route', 'show', 'exact', cidr).length > 0

/** The neighbour entry a hop used after the probe, with its bridge port or VXLAN remote. */
function neighbour(ns: string, dev: string, ip: string): string {
  const [n] = ipj(ns, 'neigh', 'show', 'to', ip, 'dev', dev)
  if (!n) return `${ip}: no neighbour entry on ${dev}`
  const state = (n.state ?? []).join(',')
  let where = ''
  if (n.lladdr) {
    const entries: any[] = JSON.parse(sh(['bridge', '-n', ns, '-j', 'fdb', 'show']).stdout || '[]')
    const port = entries.find((e) => e.mac === n.lladdr && e.master === dev)
    const remote = entries.find((e) => e.mac === n.lladdr && e.ifname === dev && e.dst)
    if (port) where = `, bridge port ${port.ifname}`
    if (remote) where = `, VXLAN remote ${remote.dst}`
  }
  return `${ip} lladdr ${n.lladdr ?? '-'} ${state}${where}`
}

/** UDP datagrams that reached the netns's UDP layer (to a socket or not), from its /proc/net/snmp. */
function udpIn(ns: string): number {
  const lines = sh(inNetns(ns, ['cat', '/proc/net/snmp'])).stdout.split('\n').filter((l) => l.startsWith('Udp:'))
  const [names, values] = lines.map((l) => l.split(/\s+/))
  return ['InDatagrams', 'NoPorts'].reduce((s, k) => s + Number(values[names.indexOf(k)]), 0)
}

async function findingFor(state: LabState, ns: string, id: string): Promise<Hop['finding'] | undefined> {
  const node = state.nodes.find((n) => n.ns === ns)
  if (!node) return undefined
  const r = await $({ quiet: true, nothrow: true })`${inNetns(node.ns, doctorLine(node, true))}`
  try {
    const f = JSON.parse(r.stdout).findings.find((x: any) => x.status === 'fail' && x.id === id)
    return f && { id: f.id, message: f.message, fix: f.fix }
  } catch {
    return undefined
  }
}

export async function trace(fromName: string, toName: string, o: { port: number; udp: boolean }): Promise<Trace> {
  const state = loadState()
  const v6 = toName.includes(':')
  const from = resolve(state, fromName, v6)
  const to = resolve(state, toName, v6)
  const hops = walk(state, from, to, v6)
  const path = [...new Set([...hops.map((h) => h.netns), to.ns])]
  if (!o.udp) await startEchoServers([to.ns], o.port)
  const before = path.map((ns) => counters(ns, v6))
  const udpBefore = udpIn(to.ns)
  let seenAs: string | null = null
  if (o.udp) sh(inNetns(from.ns, ['bash', '-c', `echo kube-cni-trace > /dev/udp/${to.ip}/${o.port}`]))
  else seenAs = (await probe(from.ns, [to.ip], o.port))[to.ip]
  const delivered = o.udp ? udpIn(to.ns) > udpBefore : seenAs !== null

  let src = hops[0].src
  hops.forEach((hop) => {
    const i = path.indexOf(hop.netns)
    hop.rules = moved(before[i], counters(hop.netns, v6))
    hop.src = src
    if (hop.out && hop.neighbour) hop.neighbour = neighbour(hop.netns, hop.out, hop.neighbour)
    // The source as the next netns sees it: a MASQUERADE takes the out interface's address, an SNAT its own.
    const nat = hop.rules.find((r) => r.table === 'nat' && / -j (MASQUERADE|SNAT)\b/.test(r.rule))
    if (nat) {
      const to = nat.rule.match(/--to-source (\S+)/)?.[1]?.replace(/:.*/, '')
      const out = ipj(hop.netns, 'addr', 'show', 'dev', hop.out!)[0]?.addr_info?.find((a: any) => a.family === (hop.dst.includes(':') ? 'inet6' : 'inet') && a.scope === 'global')
      src = to ?? out?.local ?? src
      hop.why = `source ${hop.src} masqueraded to ${src}`
    }
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
    const cause: Record<string, string> = { 'no route': 'routes', 'no neighbour': 'routes', 'not forwarded': 'forwarding', dropped: 'masquerade', rejected: 'masquerade' }
    const stop = hops.at(-1)!
    if (!stop.finding && cause[stop.action]) stop.finding = await findingFor(state, stop.netns, cause[stop.action])
  }
  return { delivered, hops }
}

function render(from: string, to: string, t: Trace): string {
  const lines = [`trace ${from} → ${to}: ${t.delivered ? 'delivered' : 'NOT delivered'}`]
  for (const h of t.hops) {
    lines.push(`  ${h.netns}  ${h.action}${h.in ? `  in ${h.in}` : ''}${h.out ? `  out ${h.out}` : ''}  (${h.src} → ${h.dst})`)
    if (h.route) lines.push(`      route      ${h.route}`)
    if (h.neighbour) lines.push(`      neighbour  ${h.neighbour}`)
    for (const r of h.rules) lines.push(`      rule       +${r.packets} ${r.table} ${r.rule}`)
    if (h.why) lines.push(`      why        ${h.why}`)
    if (h.finding) lines.push(`      doctor     ${h.finding.id}: ${h.finding.message}`, ...(h.finding.fix ? [`      fix        ${h.finding.fix}`] : []))
  }
  return lines.join('\n')
}

export async function traceCommand(argv: string[]): Promise<number> {
  const { values: v, positionals } = parseArgs({
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
  if (v.help) return process.stdout.write(`${TRACE_USAGE}\n`), 0
  const port = Number(v.port)
  if (positionals.length !== 2 || !(port >= 1 && port <= 65535)) throw new Error(`give FROM and TO, and a port from 1 to 65535\n${TRACE_USAGE}`)
  if (process.getuid?.() !== 0) throw new Error('the lab lives in network namespaces: run it as root (sudo)')
  const t = await trace(positionals[0], positionals[1], { port, udp: v.udp! })
  process.stdout.write(v.json ? `${JSON.stringify(t)}\n` : `${render(positionals[0], positionals[1], t)}\n`)
  if (v.svg) {
    const { labModel, renderSvg, writeSvg } = await import('./show.ts')
    const path = t.hops.flatMap((h) => [h.in, h.out].flatMap((dev) => (dev ? [{ netns: h.netns, dev }] : [])))
    writeSvg(v.svg, renderSvg(labModel(), path))
  }
  return t.delivered ? 0 : 1
}
