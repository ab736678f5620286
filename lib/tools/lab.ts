// `kube-cni lab`: a virtual cluster built from network namespaces, to watch kube-cni work without a
// Kubernetes. Everything it creates lives in netns named kcl-*; the root netns is never changed.
//
//   outside 203.0.113.10 ── router ── segment A 192.0.2.0/24: node1, node2 (host-gw), ...
//                                 └─ segment B 198.51.100.0/24: the even nodes, with --backend vxlan
//   node N: podCIDR 10.200.N.0/24, bridge cni0, pods kcl-nNpM
//   --dual-stack adds IPv6 everywhere: 2001:db8:a::/64 and 2001:db8:b::/64, pods fd00:200:0:N::/64.
//
// The addresses are the documentation ranges (RFC 5737, RFC 3849): they exist only inside the lab.
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { $ } from 'zx/core'
import { CONFLIST_NAME, renderConflist } from './conflist.ts'
import { explain } from '../plugin/exec.ts'
import { echoCommand, echoWith } from './harness/echo.ts'
import { addNetns, delNetns, inNetns, ipj, netnsWithPrefix, nsPath } from './harness/netns.ts'
import { type Call, type PluginResult, callPlugin, cniEnv } from './harness/runtime.ts'
import { nodeList, outsideHost, plugIn, router } from './harness/topology.ts'

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

/** The plugin itself, as this process was started (the bundle under node, or kube-cni.ts under tsx). */
export function self(): string[] {
  return [process.execPath, ...process.execArgv, process.argv[1]]
}

// For the lab's own commands: a test process is not kube-cni, so tests take theirs from test/helpers.
export const { startEchoServers, probe, probeAll } = echoWith(self())

function show(line: string): void {
  if (explain.enabled) process.stderr.write(`  ${line}\n`)
}

/** A child's explain lines as they are, its log lines and messages (`kube-cni routes: 1 changes`) as comments: what explain mode prints stays a shell script. */
function showChild(stderr: string): void {
  if (explain.enabled) process.stderr.write(stderr.replace(/^(?=\d{4}-\d\d-\d\dT|kube-cni )/gm, '# '))
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

async function up(o: LabOptions): Promise<LabState> {
  await down(true)
  const state = planLab(o)
  mkdirSync(STATE_DIR, { recursive: true, mode: 0o700 })

  const families = familiesOf(o)

  // The underlay: a router netns holding both segments' switches and the link to the outside host.
  const gateways = (seg: Segment) => families.map((f) => addrOf(f, seg, ROUTER_HOST))
  addNetns(ROUTER)
  addNetns(OUTSIDE)
  router(ROUTER, { A: gateways('A'), B: gateways('B') })
  // The outside host knows the nodes' networks but not the pods': pods reach it only when masqueraded.
  const segmentNets = families.flatMap((f) => (['A', 'B'] as Segment[]).map((seg) => `${addrOf(f, seg, 0)}/${FAMILIES[f].prefix}`))
  outsideHost(ROUTER, OUTSIDE, families.map((f) => FAMILIES[f].outside), segmentNets)

  for (const node of state.nodes) {
    addNetns(node.ns)
    plugIn(ROUTER, node.segment, node, gateways(node.segment))
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
      addNetns(pod.ns)
      const result = await cniAdd(node, pod)
      pod.ips = result.ips.map((i: { address: string }) => i.address.split('/')[0])
      node.pods.push(pod)
    }
  }

  writeFileSync(join(STATE_DIR, 'nodes.json'), JSON.stringify(nodeList(state.nodes), null, 2))
  for (const node of state.nodes) await runRoutes(node, o.backend)
  writeFileSync(join(STATE_DIR, 'state.json'), JSON.stringify(state, null, 2))
  return state
}

export function netconfOf(node: LabNode): string {
  const list = JSON.parse(readFileSync(join(STATE_DIR, node.name, 'net.d', CONFLIST_NAME), 'utf8'))
  // What libcni does with a conflist: each plugin gets cniVersion and name from the list.
  return JSON.stringify({ cniVersion: list.cniVersion, name: list.name, ...list.plugins[0] })
}

type LabPod = LabNode['pods'][number]

/** The call a runtime makes for pod on node: the CNI_* variables; the config goes on stdin. */
function callFor(command: 'ADD' | 'DEL', pod: { name: string; ns: string }): Call {
  return {
    command,
    containerId: `lab-${pod.name}`,
    netns: nsPath(pod.ns),
    args: `IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME=${pod.name}`,
    env: explain.enabled ? { KUBE_CNI_EXPLAIN: process.env.KUBE_CNI_EXPLAIN! } : {},
  }
}

async function cni(command: 'ADD' | 'DEL', node: LabNode, pod: { name: string; ns: string }): Promise<PluginResult> {
  show(`# ${command} ${pod.name} on ${node.name}: the runtime execs kube-cni in the node's netns`)
  const r = await callPlugin(self(), callFor(command, pod), netconfOf(node), node.ns)
  showChild(r.stderr)
  if (r.code !== 0) throw new Error(`${command} ${pod.name} failed: ${r.stdout}${r.stderr}`)
  return r
}

const cniAdd = async (node: LabNode, pod: { name: string; ns: string }) => (await cni('ADD', node, pod)).json

/** The demo's last step: one pod's DEL, so that its steps are seen too. */
async function delOne(state: LabState): Promise<string> {
  const node = state.nodes[state.nodes.length - 1]
  const pod = node.pods[node.pods.length - 1]
  await cni('DEL', node, pod)
  const left = ipj(pod.ns, 'link', 'show').some((l: { ifname: string }) => l.ifname === 'eth0')
  node.pods.pop()
  writeFileSync(join(STATE_DIR, 'state.json'), JSON.stringify(state, null, 2))
  delNetns(pod.ns)
  return `DEL ${pod.name} on ${node.name}: ${left ? 'its eth0 is still there' : `eth0 and its veth are gone, ${pod.ips.join(', ')} is free again`}`
}

/** `lab add NODE`: one more pod on a running lab's node, with both sides of the CNI exchange shown. */
async function addPod(nodeName: string): Promise<number> {
  const file = join(STATE_DIR, 'state.json')
  if (!existsSync(file)) throw new Error('no lab is running: start one with kube-cni lab up')
  const state: LabState = JSON.parse(readFileSync(file, 'utf8'))
  const node = state.nodes.find((n) => n.name === nodeName)
  if (!node) throw new UsageError(`the lab has no node ${nodeName}: it has ${state.nodes.map((n) => n.name).join(', ')}`)
  const j = Math.max(0, ...node.pods.map((p) => Number(p.name.split('-p')[1]))) + 1
  const short = node.name.replace('node', 'n')
  const pod: LabPod = { name: `${short}-p${j}`, ns: `${PREFIX}${short}p${j}`, ips: [] }
  addNetns(pod.ns)
  const call = callFor('ADD', pod)
  const conf = netconfOf(node)
  const vars = Object.entries(cniEnv(call)).filter(([k]) => k.startsWith('CNI_'))
  process.stdout.write(
    [
      `# The runtime on ${node.name} creates ${pod.ns} for pod ${pod.name}, then execs kube-cni in ${node.ns} with:`,
      ...vars.map(([k, v]) => `${k}=${v}`),
      '# and the network config on stdin:',
      JSON.stringify(JSON.parse(conf), null, 2),
      '',
    ].join('\n'),
  )
  const r = await callPlugin(self(), call, conf, node.ns)
  showChild(r.stderr)
  process.stdout.write(`# kube-cni exits ${r.code} and prints the result on stdout:\n${r.json ? JSON.stringify(r.json, null, 2) : r.stdout}\n`)
  if (r.code !== 0) return delNetns(pod.ns), 1
  pod.ips = r.json.ips.map((i: { address: string }) => i.address.split('/')[0])
  node.pods.push(pod)
  writeFileSync(file, JSON.stringify(state, null, 2))
  return 0
}

async function runRoutes(node: LabNode, backend: string): Promise<void> {
  show(`# kube-cni routes on ${node.name}`)
  // The node's own conflist, as on a real node: only podCIDRs inside its cluster network become routes.
  const conflist = join(STATE_DIR, node.name, 'net.d', CONFLIST_NAME)
  const args = ['routes', '--node', node.name, '--nodes-json', join(STATE_DIR, 'nodes.json'), '--conflist', conflist, '--backend', backend]
  const r = await $({ quiet: true, nothrow: true })`${inNetns(node.ns, [...self(), ...args])}`
  showChild(r.stderr)
  if (r.exitCode !== 0) throw new Error(`kube-cni routes on ${node.name} failed: ${r.stderr}`)
}

// ---- the report ----------------------------------------------------------------------------------------

export interface Report {
  text: string
  podToPod: { family: Family; from: string; to: string; ok: boolean; kept: boolean }[]
  outside: { family: Family; from: string; ok: boolean; seenAs: string | null }[]
}

export async function report(state: LabState): Promise<Report> {
  const pods = state.nodes.flatMap((n) => n.pods.map((p) => ({ ...p, node: n })))
  await startEchoServers([...pods.map((p) => p.ns), OUTSIDE], PORT)
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
    const seen = await probeAll(pods.map((p) => ({ ns: p.ns, targets: [...pods.map((q) => ofFamily(q.ips, f)), target] })), PORT)
    lines.push('', `IPv${f}: pod to pod over TCP (✓ reached, ✗ not; kept: seen with its own IP)`)
    const rows = pods.map((from, i) => {
      const mine = ofFamily(from.ips, f)
      return pods.map((to) => {
        const got = seen[i][ofFamily(to.ips, f)]
        podToPod.push({ family: f, from: from.name, to: to.name, ok: got !== null, kept: got === mine })
        return got === null ? '✗' : got === mine ? '✓ kept' : `✓ NAT ${got}`
      })
    })
    // Each column as wide as its widest cell, and no padding after the last: the default lab fits 80 columns.
    const col = Math.max(...pods.map((p) => p.name.length), ...rows.flat().map((c) => c.length)) + 2
    const row = (head: string, cells: string[]) => `  ${head.padEnd(w)}${cells.map((c) => c.padEnd(col)).join('')}`.trimEnd()
    lines.push(row('from \\ to', pods.map((p) => p.name)))
    pods.forEach((from, i) => lines.push(row(from.name, rows[i])))
    lines.push('', `IPv${f}: pod to the outside host ${target} (it should see the node's IP)`)
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

/** Removes every kcl-* netns (a crashed lab's too) and the processes inside them. */
export async function down(quiet = false): Promise<number> {
  const namespaces = netnsWithPrefix(PREFIX)
  for (const ns of namespaces) delNetns(ns)
  rmSync(STATE_DIR, { recursive: true, force: true })
  // A comment among explain mode's lines, which stay a shell script.
  if (!quiet) process.stderr.write(`${explain.enabled ? '# ' : ''}kube-cni lab: removed ${namespaces.length} network namespaces\n`)
  return namespaces.length
}

function status(): number {
  const file = join(STATE_DIR, 'state.json')
  if (!existsSync(file)) {
    const left = netnsWithPrefix(PREFIX)
    process.stdout.write(
      left.length
        ? `kube-cni lab: not running, but an interrupted lab left ${left.length} network namespaces: ${left.join(' ')}\nRemove them with: sudo ${self().join(' ')} lab down\n`
        : 'kube-cni lab: not running (start it with: kube-cni lab up)\n',
    )
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

export const LAB_USAGE = `kube-cni lab VERB [options]: a virtual cluster in network namespaces (run as root)

  demo                 build a lab, show the pod-to-pod and outside matrix, run DEL for one pod, remove it all
  up                   the same, but leave the lab running to explore
  down                 remove the lab (every ${PREFIX}* netns and ${STATE_DIR})
  status               the running lab, or what a crashed one left
  add NODE             add one pod to NODE of the running lab as a runtime would, showing the CNI_* variables,
                       the config on stdin and the result
  check                the matrix, Services, hairpin, MTU and the plugin chain of the running lab
  scenarios            the ways \`lab break\` can break a node
  break SCENARIO       break the running lab (--node N picks the node)
  show [--svg FILE]    a picture of the running lab, read from the kernel (kube-cni lab show --help)
  trace FROM TO        one probe through the running lab, hop by hop (kube-cni lab trace --help)

Options:
  --nodes N            nodes, 1 to 50 (default 2)
  --pods M             pods per node, 1 to 50 (default 2)
  --backend B          host-gw or vxlan (default host-gw)
  --dual-stack         IPv6 too (also: npm run demo --dual-stack)
  --keep               demo: leave the lab running
  --explain[=summary]  print every step as a shell line you can replay (summary: one line per step, what and why)
  --node NAME          break: the node (default node1)
  -h, --help           this text

With npm: sudo npm run demo -- --nodes 3 --pods 4`

/** A mistake in the command line: exit 2 and the usage, not a stack trace. */
class UsageError extends Error {}

function parseLab(argv: string[]) {
  // --explain=summary is a value of a flag that is otherwise boolean: parseArgs has no such option type.
  const mode = argv.find((a) => a.startsWith('--explain='))?.slice('--explain='.length)
  if (mode !== undefined && mode !== 'summary' && mode !== 'full') throw new UsageError(`--explain takes summary or full, not ${JSON.stringify(mode)}`)
  let parsed
  try {
    parsed = parseArgs({
      args: argv.map((a) => (a.startsWith('--explain=') ? '--explain' : a)),
      allowPositionals: true,
      options: {
        nodes: { type: 'string', default: '2' },
        pods: { type: 'string', default: '2' },
        backend: { type: 'string', default: 'host-gw' },
        keep: { type: 'boolean', default: false },
        explain: { type: 'boolean', default: false },
        'dual-stack': { type: 'boolean', default: false },
        node: { type: 'string', default: 'node1' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    })
  } catch (e) {
    throw new UsageError((e as Error).message)
  }
  return { ...parsed, summary: mode === 'summary' }
}

// The positional arguments each verb takes after itself.
const ARGS: Record<string, number> = { demo: 0, up: 0, down: 0, status: 0, check: 0, scenarios: 0, break: 1, add: 1 }

export async function labCommand(argv: string[]): Promise<number> {
  if (argv[0] === 'echo-server' || argv[0] === 'echo-probe') return echoCommand(argv[0], argv.slice(1))
  // trace and show parse their own options (FROM TO, --svg FILE).
  if (argv[0] === 'trace') return (await import('./trace.ts')).traceCommand(argv.slice(1))
  if (argv[0] === 'show') return (await import('./show.ts')).showCommand(argv.slice(1))
  try {
    return await lab(argv)
  } catch (e) {
    if (!(e instanceof UsageError)) throw e
    process.stderr.write(`kube-cni lab: ${e.message}\n\n${LAB_USAGE}\n`)
    return 2
  }
}

async function lab(argv: string[]): Promise<number> {
  const { values: o, positionals, summary } = parseLab(argv)
  if (o.help) return process.stdout.write(`${LAB_USAGE}\n`), 0
  const verb = positionals[0] ?? 'demo'
  if (!(verb in ARGS)) throw new UsageError(`unknown lab command ${JSON.stringify(verb)}`)
  if (positionals.length - 1 !== ARGS[verb]) throw new UsageError(`lab ${verb} takes ${ARGS[verb] || 'no'} argument${ARGS[verb] === 1 ? '' : 's'}, not ${JSON.stringify(positionals.slice(1).join(' '))}`)
  const opts: LabOptions = {
    nodes: Number(o.nodes),
    pods: Number(o.pods),
    backend: o.backend as LabOptions['backend'],
    // `npm run demo --dual-stack` reaches us as npm's config, not as an argument.
    dualStack: o['dual-stack'] || process.env.npm_config_dual_stack === 'true',
  }
  if (!(Number.isInteger(opts.nodes) && opts.nodes >= 1 && opts.nodes <= 50 && Number.isInteger(opts.pods) && opts.pods >= 1 && opts.pods <= 50))
    throw new UsageError('--nodes and --pods take 1 to 50')
  if (opts.backend !== 'host-gw' && opts.backend !== 'vxlan') throw new UsageError('--backend is host-gw or vxlan')
  if (verb === 'scenarios' || verb === 'break' || verb === 'check') return (await import('./scenarios.ts')).scenarioCommand(verb, positionals[1], o.node)
  if (process.getuid?.() !== 0) throw new Error('the lab creates network namespaces: run it as root (sudo)')
  if (o.explain) {
    Object.assign(explain, { enabled: true, summary })
    // The plugin and `kube-cni routes` the lab runs explain in the same way.
    process.env.KUBE_CNI_EXPLAIN = summary ? 'summary' : '1'
  }
  if (verb === 'down') return (await down()), 0
  if (verb === 'status') return status()
  if (verb === 'add') return addPod(positionals[1])
  return demo(verb, opts, o.keep)
}

async function demo(verb: string, opts: LabOptions, keep: boolean): Promise<number> {
  const started = Date.now()
  // Until the lab is complete, an interruption removes it; a demo removes it whenever it ends.
  let complete = false
  const stop = (why: string, code: number) => {
    if (!(complete && (verb === 'up' || keep))) removeAfter(why)
    process.exit(code)
  }
  const signals = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 }
  for (const [sig, code] of Object.entries(signals)) process.on(sig, () => stop(`interrupted (${sig})`, code))
  process.stdout.on('error', (e: NodeJS.ErrnoException) => stop(`stdout was closed (${e.code})`, 1))
  try {
    const state = await up(opts)
    complete = true
    const r = await report(state)
    process.stdout.write(`${r.text}\n`)
    if (verb === 'demo') process.stdout.write(`\n${await delOne(state)}\n`)
    if (verb === 'up' || keep) process.stdout.write(`${explore(state)}\n`)
    process.stdout.write(`\n(${((Date.now() - started) / 1000).toFixed(1)} s)\n`)
    return r.podToPod.every((p) => p.ok && p.kept) && r.outside.every((x) => x.ok) ? 0 : 1
  } finally {
    if (verb === 'demo' && !keep) await down(true)
  }
}

/** Removes the lab, or says exactly what is left and how to remove it. */
function removeAfter(why: string): void {
  down(true)
  const left = netnsWithPrefix(PREFIX)
  const said = left.length
    ? `${why}: the lab could not remove the network namespaces ${left.join(' ')}; remove them with: sudo ${self().join(' ')} lab down (or ip netns del NAME)`
    : `${why}: removed the lab`
  try {
    process.stderr.write(`kube-cni lab: ${said}\n`)
  } catch {
    // stderr is gone too: nobody is left to tell
  }
}
