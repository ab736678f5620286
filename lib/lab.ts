// `kube-cni lab`: a virtual cluster built from network namespaces, to watch kube-cni work without a
// Kubernetes. Everything it creates lives in netns named kcl-*; the root netns is never changed.
//
//   outside 203.0.113.10 ── router ── segment A 192.0.2.0/24: node1, node2 (host-gw), ...
//                                 └─ segment B 198.51.100.0/24: the even nodes, with --backend vxlan
//   node N: podCIDR 10.200.N.0/24, bridge cni0, pods kcl-nNpM
//   --dual-stack adds IPv6 everywhere: 2001:db8:a::/64 and 2001:db8:b::/64, pods fd00:200:0:N::/64.
//
// The addresses are the documentation ranges (RFC 5737, RFC 3849): they exist only inside the lab.
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { CONFLIST_NAME, renderConflist } from './conflist.ts'
import { explain } from './exec.ts'

// A test sets its own prefix, so that it neither removes nor is removed by a lab someone else is running.
export const PREFIX = process.env.KUBE_CNI_LAB_PREFIX || 'kcl-'
export const STATE_DIR = PREFIX === 'kcl-' ? '/run/kube-cni-lab' : `/run/kube-cni-lab-${PREFIX.replace(/[^A-Za-z0-9]/g, '')}`
export const PORT = 7777
const ROUTER = `${PREFIX}router`
const OUTSIDE = `${PREFIX}outside`

/** Each family's plan: the pod ranges, the two underlay segments, and the outside host's network. */
const FAMILIES = {
  4: {
    network: '10.200.0.0/16',
    podCIDR: (i: number) => `10.200.${i}.0/24`,
    segments: { A: '192.0.2.', B: '198.51.100.' },
    host: (i: number) => String(i),
    prefix: 24,
    outside: { net: '203.0.113.', router: '203.0.113.1', host: '203.0.113.10' },
  },
  6: {
    network: 'fd00:200::/56',
    podCIDR: (i: number) => `fd00:200:0:${i.toString(16)}::/64`,
    segments: { A: '2001:db8:a::', B: '2001:db8:b::' },
    host: (i: number) => i.toString(16),
    prefix: 64,
    outside: { net: '2001:db8:f::', router: '2001:db8:f::1', host: '2001:db8:f::10' },
  },
}
type Family = keyof typeof FAMILIES
type Segment = 'A' | 'B'
const ROUTER_HOST = 254

export interface LabOptions {
  nodes: number
  pods: number
  backend: 'host-gw' | 'vxlan'
  dualStack: boolean
}

export interface LabNode {
  name: string // as Kubernetes would call it: node1
  ns: string // its netns
  segment: Segment
  ips: string[] // its InternalIPs, one per family
  subnets: string[] // its podCIDRs, one per family
  pods: { name: string; ns: string; ips: string[] }[]
}

export type LabState = Omit<LabOptions, 'nodes'> & { nodes: LabNode[] }

const familiesOf = (o: { dualStack: boolean }): Family[] => (o.dualStack ? [4, 6] : [4])
const addrOf = (f: Family, seg: Segment, host: number) => `${FAMILIES[f].segments[seg]}${FAMILIES[f].host(host)}`
const ofFamily = (ips: string[], f: Family) => ips.find((ip) => ip.includes(':') === (f === 6))!

// ---- running things ------------------------------------------------------------------------------------

async function zx() {
  const { $ } = await import('zx/core')
  return $({ quiet: true })
}

/** The plugin itself, as this process was started (the bundle under node, or kube-cni.ts under tsx). */
export function self(): string[] {
  return [process.execPath, ...process.execArgv, process.argv[1]]
}

function show(line: string): void {
  if (explain.enabled) process.stderr.write(`  ${line}\n`)
}

async function ipIn(ns: string, ...args: string[]): Promise<void> {
  const $ = await zx()
  show(`ip -n ${ns} ${args.join(' ')}`)
  await $`ip -n ${ns} ${args}`
}

/** An address with its family's prefix length; IPv6 skips duplicate address detection, as pods do. */
async function addrAdd(ns: string, dev: string, f: Family, ip: string): Promise<void> {
  await ipIn(ns, 'addr', 'add', `${ip}/${FAMILIES[f].prefix}`, 'dev', dev, ...(f === 6 ? ['nodad'] : []))
}

async function sysctl(ns: string, key: string): Promise<void> {
  const $ = await zx()
  show(`ip netns exec ${ns} sysctl -w ${key}=1`)
  await $`ip netns exec ${ns} sysctl -qw ${key}=1`
}

async function addNetns(ns: string): Promise<void> {
  const $ = await zx()
  show(`ip netns add ${ns}`)
  await $`ip netns add ${ns}`
  await ipIn(ns, 'link', 'set', 'lo', 'up')
}

/** A veth from the router's segment bridge into the node as eth0, with its addresses and default routes. */
async function plugIn(node: LabNode, families: Family[]): Promise<void> {
  await ipIn(ROUTER, 'link', 'add', node.name, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', node.ns)
  await ipIn(ROUTER, 'link', 'set', node.name, 'master', `seg${node.segment}`, 'up')
  await ipIn(node.ns, 'link', 'set', 'eth0', 'up')
  for (const f of families) {
    await addrAdd(node.ns, 'eth0', f, ofFamily(node.ips, f))
    await ipIn(node.ns, `-${f}`, 'route', 'add', 'default', 'via', addrOf(f, node.segment, ROUTER_HOST))
  }
}

// ---- up ------------------------------------------------------------------------------------------------

export function planLab(o: LabOptions): LabState {
  const nodes = Array.from({ length: o.nodes }, (_, k): LabNode => {
    const i = k + 1
    const segment: Segment = o.backend === 'vxlan' && i % 2 === 0 ? 'B' : 'A'
    return {
      name: `node${i}`,
      ns: `${PREFIX}node${i}`,
      segment,
      ips: familiesOf(o).map((f) => addrOf(f, segment, 10 + i)),
      subnets: familiesOf(o).map((f) => FAMILIES[f].podCIDR(i)),
      pods: [],
    }
  })
  return { ...o, nodes }
}

export function nodeList(state: LabState): object {
  return {
    apiVersion: 'v1',
    kind: 'NodeList',
    items: state.nodes.map((n) => ({
      metadata: { name: n.name },
      spec: { podCIDR: n.subnets[0], podCIDRs: n.subnets },
      status: { addresses: [...n.ips.map((address) => ({ type: 'InternalIP', address })), { type: 'Hostname', address: n.name }] },
    })),
  }
}

async function up(o: LabOptions): Promise<LabState> {
  await down(true)
  const state = planLab(o)
  mkdirSync(STATE_DIR, { recursive: true, mode: 0o700 })

  const families = familiesOf(o)

  // The underlay: a router netns holding both segments' switches and the link to the outside host.
  await addNetns(ROUTER)
  await addNetns(OUTSIDE)
  await sysctl(ROUTER, 'net.ipv4.ip_forward')
  if (o.dualStack) await sysctl(ROUTER, 'net.ipv6.conf.all.forwarding')
  for (const seg of ['A', 'B'] as Segment[]) {
    await ipIn(ROUTER, 'link', 'add', `seg${seg}`, 'type', 'bridge')
    await ipIn(ROUTER, 'link', 'set', `seg${seg}`, 'up')
    for (const f of families) await addrAdd(ROUTER, `seg${seg}`, f, addrOf(f, seg, ROUTER_HOST))
  }
  await ipIn(ROUTER, 'link', 'add', 'out', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', OUTSIDE)
  await ipIn(ROUTER, 'link', 'set', 'out', 'up')
  await ipIn(OUTSIDE, 'link', 'set', 'eth0', 'up')
  for (const f of families) {
    const out = FAMILIES[f].outside
    await addrAdd(ROUTER, 'out', f, out.router)
    await addrAdd(OUTSIDE, 'eth0', f, out.host)
    // The outside host knows the nodes' networks but not the pods': pods reach it only when masqueraded.
    for (const seg of ['A', 'B'] as Segment[]) await ipIn(OUTSIDE, 'route', 'add', `${addrOf(f, seg, 0)}/${FAMILIES[f].prefix}`, 'via', out.router)
  }

  for (const node of state.nodes) {
    await addNetns(node.ns)
    await plugIn(node, families)
  }

  // What install.sh does on each node, then every pod's ADD exactly as a runtime sends it.
  const vxlanMtu = o.backend === 'vxlan' ? 1450 : undefined
  // The bin dir the break-it labs and doctor look at, as /opt/cni/bin on a node.
  const { portmap } = (await import('./scenarios.ts')).installBinDir()
  for (const node of state.nodes) {
    const dir = join(STATE_DIR, node.name)
    mkdirSync(join(dir, 'net.d'), { recursive: true })
    const extra = { dataDir: join(dir, 'ipam'), logFile: join(dir, 'kube-cni.log'), ...(vxlanMtu ? { mtu: vxlanMtu } : {}) }
    const networks = families.map((f) => FAMILIES[f].network)
    writeFileSync(join(dir, 'net.d', CONFLIST_NAME), renderConflist({ subnets: node.subnets, networks, portmap, extra }))
  }
  for (const node of state.nodes) {
    for (let j = 1; j <= o.pods; j++) {
      const short = `${node.name.replace('node', 'n')}`
      const pod = { name: `${short}-p${j}`, ns: `${PREFIX}${short}p${j}`, ips: [] as string[] }
      await addNetns(pod.ns)
      const result = await cniAdd(node, pod)
      pod.ips = result.ips.map((i: { address: string }) => i.address.split('/')[0])
      node.pods.push(pod)
    }
  }

  writeFileSync(join(STATE_DIR, 'nodes.json'), JSON.stringify(nodeList(state), null, 2))
  for (const node of state.nodes) await runRoutes(node, o.backend)
  writeFileSync(join(STATE_DIR, 'state.json'), JSON.stringify(state, null, 2))
  return state
}

export function netconfOf(node: LabNode): string {
  const list = JSON.parse(readFileSync(join(STATE_DIR, node.name, 'net.d', CONFLIST_NAME), 'utf8'))
  // What libcni does with a conflist: each plugin gets cniVersion and name from the list.
  return JSON.stringify({ cniVersion: list.cniVersion, name: list.name, ...list.plugins[0] })
}

export function runIn(ns: string, argv: string[], env: Record<string, string>, input: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('nsenter', [`--net=/var/run/netns/${ns}`, ...argv], { env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...env } })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => {
      stderr += d
      if (explain.enabled) process.stderr.write(d)
    })
    child.on('error', reject)
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }))
    child.stdin.on('error', () => {}) // a command that reads no stdin may exit before we close it
    child.stdin.end(input)
  })
}

async function cniAdd(node: LabNode, pod: { name: string; ns: string }): Promise<any> {
  show(`# ADD ${pod.name} on ${node.name}: the runtime execs kube-cni in the node's netns`)
  const env = {
    CNI_COMMAND: 'ADD',
    CNI_CONTAINERID: `lab-${pod.name}`,
    CNI_NETNS: `/var/run/netns/${pod.ns}`,
    CNI_IFNAME: 'eth0',
    CNI_PATH: '/opt/cni/bin',
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME=${pod.name}`,
    ...(explain.enabled ? { KUBE_CNI_EXPLAIN: '1' } : {}),
  }
  const r = await runIn(node.ns, self(), env, netconfOf(node))
  if (r.code !== 0) throw new Error(`ADD ${pod.name} failed: ${r.stdout}${r.stderr}`)
  return JSON.parse(r.stdout)
}

async function runRoutes(node: LabNode, backend: string): Promise<void> {
  show(`# kube-cni routes on ${node.name}`)
  const args = ['routes', '--node', node.name, '--nodes-json', join(STATE_DIR, 'nodes.json'), '--backend', backend, ...(explain.enabled ? ['--explain'] : [])]
  const r = await runIn(node.ns, [...self(), ...args], {}, '')
  if (r.code !== 0) throw new Error(`kube-cni routes on ${node.name} failed: ${r.stderr}`)
}

// ---- the report ----------------------------------------------------------------------------------------

// A TCP echo that answers each connection with the address it saw the connection come from.
const ECHO_SERVER = `require('net').createServer((s) => s.end(s.remoteAddress.replace(/^::ffff:/, '') + '\\n')).listen(Number(process.argv[1]), '::')`
// Connects to each target in turn and prints {target: seen source, or null when unreachable}. A target gets
// three tries: the first packet to a new neighbour can be lost while IPv6 neighbour discovery settles, and
// the question asked here is which address the server sees, not how fast the first SYN gets through.
const ECHO_CLIENT = `
const net = require('net')
const once = (host) => new Promise((done) => {
  const s = net.connect({ host, port: Number(process.argv[1]), timeout: 1500 })
  let seen = ''
  s.on('data', (d) => (seen += d))
  s.on('end', () => done(seen.trim() || null))
  s.on('timeout', () => { s.destroy(); done(null) })
  s.on('error', () => done(null))
})
const one = async (host) => {
  for (let i = 0; i < 3; i++) {
    const seen = await once(host)
    if (seen !== null) return seen
    await new Promise((r) => setTimeout(r, 300))
  }
  return null
}
;(async () => {
  const out = {}
  for (const host of process.argv.slice(2)) out[host] = await one(host)
  process.stdout.write(JSON.stringify(out))
})()`

export async function startEchoServers(namespaces: string[], port = PORT): Promise<void> {
  for (const ns of namespaces) {
    const child = spawn('nsenter', [`--net=/var/run/netns/${ns}`, process.execPath, '-e', ECHO_SERVER, String(port)], { detached: true, stdio: 'ignore' })
    child.unref()
  }
  // Wait until every server listens: the first probe of each may race its start-up.
  for (let i = 0; i < 50; i++) {
    const listening = await Promise.all(namespaces.map((ns) => runIn(ns, ['ss', '-Hltn', `sport = :${port}`], {}, '')))
    if (listening.every((r) => r.stdout.trim())) return
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error('the echo servers did not start')
}

export async function probe(ns: string, targets: string[], port = PORT): Promise<Record<string, string | null>> {
  const r = await runIn(ns, [process.execPath, '-e', ECHO_CLIENT, String(port), ...targets], {}, '')
  return JSON.parse(r.stdout)
}

export interface Report {
  text: string
  podToPod: { family: Family; from: string; to: string; ok: boolean; kept: boolean }[]
  outside: { family: Family; from: string; ok: boolean; seenAs: string | null }[]
}

export async function report(state: LabState): Promise<Report> {
  const pods = state.nodes.flatMap((n) => n.pods.map((p) => ({ ...p, node: n })))
  await startEchoServers([...pods.map((p) => p.ns), OUTSIDE])
  const lines: string[] = []
  lines.push(`kube-cni lab: ${state.nodes.length} nodes, ${pods.length} pods, backend ${state.backend}${state.dualStack ? ', dual-stack' : ''}`, '')
  lines.push('Topology')
  for (const n of state.nodes) {
    lines.push(`  ${n.name}  InternalIP ${n.ips.join(', ')}  podCIDR ${n.subnets.join(', ')}${n.segment === 'B' ? '  (behind the router)' : ''}`)
    for (const p of n.pods) lines.push(`    ${p.name.padEnd(8)} ${p.ips.join(', ')}`)
  }

  const podToPod: Report['podToPod'] = []
  const outside: Report['outside'] = []
  const w = Math.max(10, ...pods.map((p) => p.name.length)) + 2
  for (const f of familiesOf(state)) {
    const target = FAMILIES[f].outside.host
    const seen = await Promise.all(pods.map((p) => probe(p.ns, [...pods.map((q) => ofFamily(q.ips, f)), target])))
    lines.push('', `IPv${f}: pod to pod over TCP (✓ reached, ✗ not; "kept" = the server saw the client pod's own IP)`)
    lines.push(`  ${'from \\ to'.padEnd(w)}${pods.map((p) => p.name.padEnd(16)).join('')}`)
    pods.forEach((from, i) => {
      const mine = ofFamily(from.ips, f)
      const cells = pods.map((to) => {
        const got = seen[i][ofFamily(to.ips, f)]
        podToPod.push({ family: f, from: from.name, to: to.name, ok: got !== null, kept: got === mine })
        return (got === null ? '✗' : got === mine ? '✓ kept' : `✓ NAT ${got}`).padEnd(16)
      })
      lines.push(`  ${from.name.padEnd(w)}${cells.join('')}`)
    })
    lines.push('', `IPv${f}: pod to the outside host ${target} (not in the cluster: it should see the node's IP)`)
    pods.forEach((from, i) => {
      const got = seen[i][target]
      outside.push({ family: f, from: from.name, ok: got !== null, seenAs: got })
      const masq = got === ofFamily(from.node.ips, f) ? ` (masqueraded to ${from.node.name})` : ''
      lines.push(`  ${from.name.padEnd(w)}${got === null ? '✗ unreachable' : `✓ seen as ${got}${masq}`}`)
    })
  }
  const bad = podToPod.filter((p) => !p.ok || !p.kept).length + outside.filter((o) => !o.ok).length
  lines.push('', bad ? `${bad} checks FAILED` : 'All pods reach each other with their own IPs, and the outside through NAT.')
  return { text: lines.join('\n'), podToPod, outside }
}

// ---- down and status -----------------------------------------------------------------------------------

async function labNamespaces(): Promise<string[]> {
  const $ = await zx()
  const out = await $`ip netns list`
  return out.stdout
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter((n) => n.startsWith(PREFIX))
}

/** Removes every kcl-* netns (a crashed lab's too) and the processes inside them. */
export async function down(quiet = false): Promise<number> {
  const $ = await zx()
  const namespaces = await labNamespaces()
  for (const ns of namespaces) {
    const pids = (await $`ip netns pids ${ns}`.nothrow()).stdout.split('\n').filter(Boolean)
    for (const pid of pids) {
      try {
        process.kill(Number(pid), 'SIGKILL')
      } catch {
        // already gone
      }
    }
    show(`ip netns del ${ns}`)
    await $`ip netns del ${ns}`.nothrow()
  }
  rmSync(STATE_DIR, { recursive: true, force: true })
  if (!quiet) process.stderr.write(`kube-cni lab: removed ${namespaces.length} network namespaces\n`)
  return namespaces.length
}

function status(): number {
  const file = join(STATE_DIR, 'state.json')
  if (!existsSync(file)) {
    process.stdout.write('kube-cni lab: not running (start it with: kube-cni lab up)\n')
    return 1
  }
  const state: LabState = JSON.parse(readFileSync(file, 'utf8'))
  process.stdout.write(`kube-cni lab: ${state.nodes.length} nodes, backend ${state.backend}\n`)
  for (const n of state.nodes) process.stdout.write(`  ${n.name} ${n.ips.join(',')} ${n.subnets.join(',')}: ${n.pods.map((p) => `${p.name}=${p.ips.join(',')}`).join(' ')}\n`)
  return 0
}

function explore(state: LabState): string {
  const [a, b] = [state.nodes[0], state.nodes[state.nodes.length - 1]]
  const [p, q] = [a.pods[0], b.pods[b.pods.length - 1]]
  return [
    '',
    'The lab is still up. Look around:',
    `  sudo ip netns exec ${a.ns} ip route                 # ${a.name}'s routes, with proto 211 for the other nodes`,
    `  sudo ip netns exec ${a.ns} iptables -t nat -S       # the masquerade chain`,
    `  sudo ip netns exec ${p.ns} ping -c 2 ${q.ips[0]}         # ${p.name} to ${q.name}`,
    `  sudo cat ${join(STATE_DIR, a.name, 'kube-cni.log')}`,
    'Remove it with: sudo node dist/kube-cni lab down',
  ].join('\n')
}

// ---- the command ---------------------------------------------------------------------------------------

export async function labCommand(argv: string[]): Promise<number> {
  const { values: o, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      nodes: { type: 'string', default: '2' },
      pods: { type: 'string', default: '2' },
      backend: { type: 'string', default: 'host-gw' },
      keep: { type: 'boolean', default: false },
      explain: { type: 'boolean', default: false },
      'dual-stack': { type: 'boolean', default: false },
      node: { type: 'string', default: 'node1' },
    },
  })
  const verb = positionals[0] ?? 'demo'
  if (verb === 'scenarios' || verb === 'break' || verb === 'check') return (await import('./scenarios.ts')).scenarioCommand(verb, positionals[1], o.node)
  if (process.getuid?.() !== 0) throw new Error('the lab creates network namespaces: run it as root (sudo)')
  if (o.explain) explain.enabled = true
  const opts: LabOptions = {
    nodes: Number(o.nodes),
    pods: Number(o.pods),
    backend: o.backend as LabOptions['backend'],
    // `npm run demo --dual-stack` reaches us as npm's config, not as an argument.
    dualStack: o['dual-stack'] || process.env.npm_config_dual_stack === 'true',
  }
  if (!(opts.nodes >= 1 && opts.nodes <= 50 && opts.pods >= 1 && opts.pods <= 50)) throw new Error('--nodes and --pods take 1 to 50')
  if (opts.backend !== 'host-gw' && opts.backend !== 'vxlan') throw new Error('--backend is host-gw or vxlan')
  if (verb === 'down') return (await down()), 0
  if (verb === 'status') return status()
  if (verb !== 'up' && verb !== 'demo') throw new Error(`unknown lab command ${verb}: use up, down, status, check, break, scenarios or demo`)
  const started = Date.now()
  try {
    const state = await up(opts)
    const r = await report(state)
    process.stdout.write(`${r.text}\n`)
    const keep = verb === 'up' || o.keep
    if (keep) process.stdout.write(`${explore(state)}\n`)
    process.stdout.write(`\n(${((Date.now() - started) / 1000).toFixed(1)} s)\n`)
    return r.podToPod.every((p) => p.ok && p.kept) && r.outside.every((x) => x.ok) ? 0 : 1
  } finally {
    if (verb === 'demo' && !o.keep) await down(true)
  }
}
