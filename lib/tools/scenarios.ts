// Break-it labs: `kube-cni lab break SCENARIO` breaks a running lab the way real nodes break, `lab check` shows
// the symptom, and `kube-cni doctor` in that node names the cause and the command that repairs it. Every break
// happens inside the lab's own namespaces and state directory (kcl-*, /run/kube-cni-lab): br_netfilter is never
// unloaded, only the node netns's own bridge-nf-call-iptables is set to 0.
import { existsSync, mkdirSync, readFileSync, readdirSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { CONFLIST_NAME, pluginVersions } from './conflist.ts'
import { formatAddress } from '../plugin/ip.ts'
import { parseNetConf } from '../plugin/netconf.ts'
import { type LabNode, type LabState, PORT, PREFIX, STATE_DIR, netconfOf, probeAll, self, startEchoServers } from './lab.ts'
import { callPlugin } from './harness/runtime.ts'
import { sh as attempt, inNetns, ipj, must } from './harness/netns.ts'

export interface Scenario {
  name: string
  about: string // one sentence: what breaks, as it happens on real nodes
  /** The lab check that shows the symptom. */
  symptom: 'matrix' | 'service' | 'hairpin' | 'full-size packets' | 'chain' | 'new pod'
  /** The doctor finding that names the cause. */
  finding: string
  break(state: LabState, node: LabNode): Promise<void>
}

const BIN_DIR = join(STATE_DIR, 'bin')

/** A command in a lab netns; it throws with the command's stderr when it fails. */
function sh(ns: string, ...argv: string[]): string {
  return must(inNetns(ns, argv))
}

const confOf = (node: LabNode) => parseNetConf(netconfOf(node))
const podPorts = async (node: LabNode) => (ipj(node.ns, 'link', 'show', 'master', 'cni0')).map((l: any) => l.ifname as string)

export const SCENARIOS: Scenario[] = [
  {
    name: 'reboot-leak',
    about: 'the node rebooted with its IPAM state kept but every old pod gone: the pool is full of reservations nobody holds',
    symptom: 'new pod',
    finding: 'ipam-leaks',
    async break(_state, node) {
      const conf = confOf(node)
      const pool = conf.pools[0]
      const dir = join(conf.dataDir, conf.name)
      // What the old pods left: a record naming a host veth that died with its netns, and the reserved IP.
      for (let ip = pool.firstHost; ip <= pool.lastHost; ip++) {
        const text = formatAddress(pool.family, ip)
        if (ip === pool.gateway || existsSync(join(dir, text))) continue
        const owner = { containerId: `before-reboot-${text.replaceAll('.', '-')}`, ifname: 'eth0' }
        writeFileSync(join(dir, text), `${owner.containerId}\r\n${owner.ifname}`, { mode: 0o600 })
        const hostVeth = `veth${(0xdead0000 + Number(ip & 0xffffn)).toString(16)}`
        writeFileSync(join(dir, 'attachments', `${owner.containerId}:eth0`), JSON.stringify({ ...owner, ips: [text], hostVeth }), { mode: 0o600 })
      }
    },
  },
  {
    name: 'bridge-address',
    about: 'cni0 kept the address of an old podCIDR ("cni0 already has an IP address different from ..."): pods lose their gateway',
    symptom: 'matrix',
    finding: 'bridge',
    async break(state, node) {
      const conf = confOf(node)
      const i = state.nodes.indexOf(node) + 1
      sh(node.ns, 'ip', 'addr', 'del', `${formatAddress(4, conf.pools[0].gateway)}/${conf.pools[0].subnet.prefix}`, 'dev', conf.bridge)
      sh(node.ns, 'ip', 'addr', 'add', `10.200.${100 + i}.1/24`, 'dev', conf.bridge)
    },
  },
  {
    name: 'no-forwarding',
    about: 'a sysctl reset turned IP forwarding off: pods reach only their own node',
    symptom: 'matrix',
    finding: 'forwarding',
    async break(_state, node) {
      sh(node.ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=0')
    },
  },
  {
    name: 'no-br-netfilter',
    about: 'bridge-nf-call-iptables is 0 (br_netfilter not loaded at boot): replies between pods on one bridge skip iptables, so Services break',
    symptom: 'service',
    finding: 'br-netfilter',
    async break(_state, node) {
      // Per netns: the lab node's own switch, never the module and never the host's.
      sh(node.ns, 'sysctl', '-qw', 'net.bridge.bridge-nf-call-iptables=0')
    },
  },
  {
    name: 'firewall-flush',
    about: 'a firewall reload flushed iptables: kube-cni\'s masquerade is gone, so pods cannot reach the outside',
    symptom: 'matrix',
    finding: 'masquerade',
    async break(state, node) {
      for (const tool of state.dualStack ? ['iptables', 'ip6tables'] : ['iptables'])
        for (const table of ['filter', 'nat']) for (const op of ['-F', '-X']) sh(node.ns, tool, '-w', '-t', table, op)
    },
  },
  {
    name: 'stale-route',
    about: 'routes left from before a peer was rebuilt: one points at its old address, one at a node that is gone',
    symptom: 'matrix',
    finding: 'routes',
    async break(state, node) {
      const peer = state.nodes.find((n) => n !== node)
      if (!peer) throw new Error('stale-route needs a lab of two nodes or more')
      const [route] = ipj(node.ns, 'route', 'show', peer.subnets[0], 'proto', '211')
      const onlink = route?.dev === 'kube-cni.1' ? ['dev', 'kube-cni.1', 'onlink'] : []
      const gone = onlink.length ? '10.200.99.0' : `${node.ips[0].split('.').slice(0, 3).join('.')}.99`
      sh(node.ns, 'ip', 'route', 'replace', peer.subnets[0], 'via', gone, ...onlink, 'proto', '211')
      sh(node.ns, 'ip', 'route', 'replace', '10.200.99.0/24', 'via', gone, ...onlink, 'proto', '211')
    },
  },
  {
    name: 'missing-route',
    about: 'the route to another node\'s pods is missing (the routes agent was not running when it joined)',
    symptom: 'matrix',
    finding: 'routes',
    async break(state, node) {
      const peer = state.nodes.find((n) => n !== node)
      if (!peer) throw new Error('missing-route needs a lab of two nodes or more')
      sh(node.ns, 'ip', 'route', 'del', peer.subnets[0], 'proto', '211')
    },
  },
  {
    name: 'mtu-blackhole',
    about: 'pods got MTU 1500 on a VXLAN overlay that carries 1450: full-size packets never arrive',
    symptom: 'full-size packets',
    finding: 'mtu',
    async break(state, node) {
      if (state.backend !== 'vxlan') throw new Error('mtu-blackhole needs the VXLAN overlay: kube-cni lab up --backend vxlan')
      for (const veth of await podPorts(node)) sh(node.ns, 'ip', 'link', 'set', 'dev', veth, 'mtu', '1500')
      for (const pod of node.pods) sh(pod.ns, 'ip', 'link', 'set', 'dev', 'eth0', 'mtu', '1500')
    },
  },
  {
    name: 'missing-portmap',
    about: 'portmap, which the conflist chains for hostPorts, is missing from the CNI bin dir: every new pod fails',
    symptom: 'chain',
    finding: 'chain',
    async break() {
      if (!existsSync(join(BIN_DIR, 'portmap'))) throw new Error(`${BIN_DIR}/portmap is not there: this lab chains no portmap (install containernetworking-plugins)`)
      rmSync(join(BIN_DIR, 'portmap'))
    },
  },
  {
    name: 'hairpin-off',
    about: 'hairpin mode is off on the pods\' bridge ports: a pod cannot reach itself through its own Service',
    symptom: 'hairpin',
    finding: 'hairpin',
    async break(_state, node) {
      for (const veth of await podPorts(node)) sh(node.ns, 'ip', 'link', 'set', 'dev', veth, 'type', 'bridge_slave', 'hairpin', 'off')
    },
  },
]

export function scenario(name: string | undefined): Scenario {
  const s = SCENARIOS.find((x) => x.name === name)
  if (!s) throw new Error(`unknown scenario ${JSON.stringify(name)}: kube-cni lab scenarios lists them`)
  return s
}

export function listScenarios(): string {
  const w = Math.max(...SCENARIOS.map((s) => s.name.length)) + 2
  return SCENARIOS.map((s) => `  ${s.name.padEnd(w)}${s.about}`).join('\n')
}

// ---- the checks that show the symptoms -------------------------------------------------------------------

export interface Check {
  name: Scenario['symptom']
  node: string
  ok: boolean
  detail: string
}

// The lab's Services, outside every lab range: the pod 10.200.N.M is the one endpoint of the ClusterIP 10.96.N.M,
// on the same port, so that a check's VIP can be traced (`lab trace n1-p1 10.96.1.3`) and back.
const POD_NET = '10.200.'
const SERVICE_NET = '10.96.'
export const serviceVip = (podIp: string) => (podIp.startsWith(POD_NET) ? SERVICE_NET + podIp.slice(POD_NET.length) : undefined)
export const serviceEndpoint = (vip: string) => (vip.startsWith(SERVICE_NET) ? POD_NET + vip.slice(SERVICE_NET.length) : undefined)

export interface LabService {
  vip: string
  endpoint: string // the pod IP behind it
  port: number
}

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const

/**
 * Services as kube-proxy programs them in a node: per Service a DNAT from VIP:port (TCP and UDP) to its one
 * endpoint, reached from PREROUTING (the pods) and OUTPUT (the node itself), and for an endpoint that reaches
 * itself through its VIP a SNAT to the bridge's address (hairpin: the reply must come back through the node).
 * Returns what removes them; a SIGINT, SIGTERM or SIGHUP before that removes them too, then ends the process as
 * the signal would have, unless someone else listens for it.
 */
export function programServices(node: LabNode, services: LabService[]): () => void {
  const gw = formatAddress(4, confOf(node).pools[0].gateway)
  const rules = [
    '*nat',
    ':KCL-SVC - [0:0]',
    ...services.flatMap((s) => ['tcp', 'udp'].map((p) => `-A KCL-SVC -d ${s.vip}/32 -p ${p} --dport ${s.port} -j DNAT --to-destination ${s.endpoint}:${s.port}`)),
    ':KCL-SVC-POST - [0:0]',
    ...services.map((s) => `-A KCL-SVC-POST -s ${s.endpoint}/32 -d ${s.endpoint}/32 -j SNAT --to-source ${gw}`),
    'COMMIT',
  ].join('\n')
  const jumps = [['PREROUTING', 'KCL-SVC'], ['OUTPUT', 'KCL-SVC'], ['POSTROUTING', 'KCL-SVC-POST']]
  const remove = () => {
    for (const sig of SIGNALS) process.off(sig, interrupted)
    for (const [chain, to] of jumps) attempt(inNetns(node.ns, ['iptables', '-w', '-t', 'nat', '-D', chain, '-j', to]))
    for (const chain of ['KCL-SVC', 'KCL-SVC-POST']) for (const op of ['-F', '-X']) attempt(inNetns(node.ns, ['iptables', '-w', '-t', 'nat', op, chain]))
  }
  const interrupted = (sig: NodeJS.Signals) => {
    remove()
    if (!process.listenerCount(sig)) process.kill(process.pid, sig)
  }
  // What an earlier run killed outright left behind would otherwise be jumped to twice.
  remove()
  for (const sig of SIGNALS) process.on(sig, interrupted)
  try {
    must(inNetns(node.ns, ['iptables-restore', '-w', '--noflush']), `${rules}\n`)
    for (const [chain, to] of jumps) sh(node.ns, 'iptables', '-w', '-t', 'nat', '-I', chain, '-j', to)
  } catch (e) {
    remove()
    throw e
  }
  return remove
}

/**
 * A Service for the length of one probe: node pod 1 connects to the VIP of pod 2 on the same bridge (the reply
 * must pass iptables to be un-NATed: br_netfilter), and to its own VIP (the packet must go back out of the port
 * it came in: hairpin).
 */
async function serviceChecks(node: LabNode): Promise<Check[]> {
  const [p1, p2] = node.pods
  if (!p2) return []
  const [vip, vipSelf] = [serviceVip(p2.ips[0])!, serviceVip(p1.ips[0])!]
  const remove = programServices(node, [
    { vip, endpoint: p2.ips[0], port: PORT },
    { vip: vipSelf, endpoint: p1.ips[0], port: PORT },
  ])
  try {
    const [seen] = await probeAll([{ ns: p1.ns, targets: [vip, vipSelf] }])
    return [
      { name: 'service', node: node.name, ok: seen[vip] !== null, detail: `${p1.name} → Service ${vip} (endpoint ${p2.name})` },
      { name: 'hairpin', node: node.name, ok: seen[vipSelf] !== null, detail: `${p1.name} → Service ${vipSelf} (endpoint ${p1.name} itself)` },
    ]
  } finally {
    remove()
  }
}

/** A packet as large as the pod's MTU, with DF, to a pod on another node: what TCP sends once a connection is busy. */
async function fullSizeCheck(state: LabState, node: LabNode): Promise<Check[]> {
  const peer = state.nodes.find((n) => n !== node)
  const [from] = node.pods
  if (!peer) return []
  const to = peer.pods[0]
  const [link] = ipj(from.ns, 'link', 'show', 'dev', 'eth0')
  const size = link.mtu - 28
  const r = attempt(inNetns(from.ns, ['ping', '-c', '2', '-W', '2', '-M', 'do', '-s', String(size), to.ips[0]]))
  return [{ name: 'full-size packets', node: node.name, ok: r.code === 0, detail: `${from.name} → ${to.name}, ${link.mtu} bytes with DF` }]
}

function chainCheck(node: LabNode): Check[] {
  const list = JSON.parse(readFileSync(join(STATE_DIR, node.name, 'net.d', CONFLIST_NAME), 'utf8'))
  return list.plugins.map((p: { type: string }) => {
    const answer = pluginVersions(join(BIN_DIR, p.type))
    const ok = 'versions' in answer && answer.versions.includes(list.cniVersion)
    return { name: 'chain', node: node.name, ok, detail: `${BIN_DIR}/${p.type} answers VERSION ${list.cniVersion}${ok ? '' : `: ${'error' in answer ? answer.error : 'not that version'}`}` }
  })
}

/** The checks beyond the matrix, read-only: none of them runs an ADD, which would repair the node. */
export async function labChecks(state: LabState): Promise<Check[]> {
  await startEchoServers(state.nodes.flatMap((n) => n.pods.map((p) => p.ns)))
  const checks: Check[] = []
  for (const node of state.nodes) checks.push(...(await serviceChecks(node)), ...(await fullSizeCheck(state, node)), ...chainCheck(node))
  return checks
}

/** A runtime's ADD of one more pod, then its DEL: the symptom of a full pool. It changes the node (ADD repairs). */
export async function newPodCheck(node: LabNode): Promise<Check> {
  const ns = `${PREFIX}${node.name.replace('node', 'n')}probe`
  must(['ip', 'netns', 'add', ns])
  const call = { containerId: 'lab-probe', netns: `/var/run/netns/${ns}`, ifname: 'eth0', env: { CNI_PATH: BIN_DIR } }
  try {
    const r = await callPlugin(self(), { ...call, command: 'ADD' }, netconfOf(node), node.ns)
    const error = r.code === 0 ? '' : `: ${r.json?.msg ?? r.stderr.trim()}`
    return { name: 'new pod', node: node.name, ok: r.code === 0, detail: `a new pod on ${node.name} gets an address${error}` }
  } finally {
    await callPlugin(self(), { ...call, command: 'DEL' }, netconfOf(node), node.ns)
    attempt(['ip', 'netns', 'del', ns])
  }
}

/** The command that runs doctor in a lab node, as a learner types it. */
export function doctorLine(node: LabNode, json = false): string[] {
  return [
    ...self(),
    'doctor',
    '--conf', join(STATE_DIR, node.name, 'net.d', CONFLIST_NAME),
    '--cni-bin-dir', BIN_DIR,
    '--node', node.name,
    '--nodes-json', join(STATE_DIR, 'nodes.json'),
    ...(json ? ['--json'] : []),
  ]
}

/** The lab's bin dir, as install.sh fills /opt/cni/bin: kube-cni itself, and portmap when this machine has it. */
export function installBinDir(): { portmap?: { supportedVersions: string[] } } {
  mkdirSync(BIN_DIR, { recursive: true, mode: 0o700 })
  for (const f of readdirSync(BIN_DIR)) rmSync(join(BIN_DIR, f))
  symlinkSync(realpathSync(process.argv[1]), join(BIN_DIR, 'kube-cni'))
  const portmap = ['/usr/lib/cni/portmap', '/usr/libexec/cni/portmap', '/opt/cni/bin/portmap'].find(existsSync)
  if (!portmap) return {}
  const answer = pluginVersions(portmap)
  if (!('versions' in answer)) return {}
  symlinkSync(portmap, join(BIN_DIR, 'portmap'))
  return { portmap: { supportedVersions: answer.versions } }
}

// ---- the commands ----------------------------------------------------------------------------------------

function loadState(): LabState {
  const file = join(STATE_DIR, 'state.json')
  if (!existsSync(file)) throw new Error('no lab is running: start one with kube-cni lab up (--backend vxlan for mtu-blackhole)')
  return JSON.parse(readFileSync(file, 'utf8'))
}

/** `lab scenarios`, `lab break SCENARIO [--node N]` and `lab check`. */
export async function scenarioCommand(verb: 'scenarios' | 'break' | 'check', name: string | undefined, nodeName: string): Promise<number> {
  if (verb === 'scenarios') return process.stdout.write(`Break a running lab with: kube-cni lab break SCENARIO [--node N]\n${listScenarios()}\n`), 0
  if (process.getuid?.() !== 0) throw new Error('the lab changes network namespaces: run it as root (sudo)')
  const state = loadState()
  if (verb === 'check') {
    const { report } = await import('./lab.ts')
    const r = await report(state)
    const checks = await labChecks(state)
    const lines = checks.map((c) => `  ${c.ok ? '✓' : '✗'} ${c.name.padEnd(18)}${c.node.padEnd(8)}${c.detail}`)
    process.stdout.write(`${r.text}\n\nServices, hairpin, MTU and the plugin chain\n${lines.join('\n')}\n`)
    const matrixOk = r.podToPod.every((p) => p.ok && p.kept) && r.outside.every((x) => x.ok)
    return matrixOk && checks.every((c) => c.ok) ? 0 : 1
  }
  const s = scenario(name)
  const node = state.nodes.find((n) => n.name === nodeName)
  if (!node) throw new Error(`the lab has no node ${nodeName}: it has ${state.nodes.map((n) => n.name).join(', ')}`)
  await s.break(state, node)
  if (s.symptom === 'new pod') {
    const c = await newPodCheck(node)
    process.stdout.write(`${c.ok ? '✓' : '✗'} ${c.detail}\n`)
  }
  const doctor = doctorLine(node).map((w) => (w.includes(' ') ? `'${w}'` : w)).join(' ')
  process.stdout.write(
    [
      `Broke ${node.name}: ${s.about}.`,
      `See the symptom (${s.symptom}): sudo ${self().join(' ')} lab check${s.symptom === 'new pod' ? '   (and a new pod cannot get an address)' : ''}`,
      `Find the cause (${s.finding}): sudo ip netns exec ${node.ns} ${doctor}`,
      'Then run the fix line doctor prints, in the same place (sudo ip netns exec ' + node.ns + " sh -c '<fix>'), and check again.",
    ].join('\n') + '\n',
  )
  return 0
}
