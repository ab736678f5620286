// `kube-cni doctor`: what is wrong with this node's pod network, why it matters, and the one command that
// repairs it. It only reads: every check is a read of /proc/sys, the IPAM store, `ip -j`, `iptables-restore`
// with `-C` lines only, or a plugin's VERSION. The fixes are printed, never run.
//
// Each finding answers one of the complaints users lose days to: leaked IPs after a crash or reboot, a bridge
// with another address than the config, br_netfilter or forwarding off, rules lost to a firewall reload,
// missing or stale routes to other nodes, a chained plugin missing from the bin dir, an MTU too large for
// the overlay.
import { accessSync, constants, existsSync, readFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { CONFLIST_NAME, pluginVersions } from './conflist.ts'
import { run } from '../plugin/exec.ts'
import { formatAddress, formatCidr } from '../plugin/ip.ts'
import { type Owner, Store } from '../plugin/ipam.ts'
import type { NodeList } from './kube.ts'
import { type NetConf, parseNetConf } from '../plugin/netconf.ts'
import { chainNames, chainsFor, restoreInput } from '../plugin/node.ts'
import { VXLAN_DEV, diff, planRoutes, readCurrent } from './routes.ts'

export type Status = 'ok' | 'warn' | 'fail'

export interface Finding {
  id: string
  status: Status
  message: string
  fix: string // one shell line, run as root in the same netns; empty when nothing needs doing
}

export interface DoctorOptions {
  confPath: string
  binDir: string
  node: string
  /** The NodeList source, and the flags that name it again in a `kube-cni routes` fix. */
  nodes?: { read: () => Promise<NodeList>; flags: string[] }
}

/** The config as the runtime hands it to kube-cni, and what the list chains after it. */
interface Loaded {
  conf: NetConf
  chain: string[] // the other plugins' types, in order
  version: string
}

export function loadConf(path: string): Loaded {
  let doc: any
  try {
    doc = JSON.parse(readFileSync(path, 'utf8'))
  } catch (e) {
    throw new Error(`cannot read the network config ${path}: ${(e as Error).message}; pass the node's conflist with --conf FILE`)
  }
  const plugins: any[] = Array.isArray(doc?.plugins) ? doc.plugins : [doc]
  const mine = plugins.find((p) => p?.type === 'kube-cni')
  if (!mine) throw new Error(`${path} has no plugin of type kube-cni; pass kube-cni's conflist with --conf FILE`)
  const netconf = JSON.stringify(Array.isArray(doc.plugins) ? { cniVersion: doc.cniVersion, name: doc.name, ...mine } : doc)
  let conf: NetConf
  try {
    conf = parseNetConf(netconf)
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`)
  }
  const chain = plugins.filter((p) => p !== mine).map((p) => String(p?.type ?? ''))
  return { conf, chain, version: conf.cniVersion }
}

// ---- what the kernel has ---------------------------------------------------------------------------------

interface Link {
  ifname: string
  ifindex: number
  mtu: number
  flags: string[]
  master?: string
  address?: string
  link_index?: number
  link_netnsid?: number
  linkinfo?: { info_kind?: string; info_slave_kind?: string; info_slave_data?: { hairpin?: boolean } }
  addr_info?: { family: string; local: string; prefixlen: number; scope: string }[]
}

async function json(argv: string[]): Promise<any[]> {
  const r = await run(argv)
  if (r.code !== 0) throw new Error(`${argv.join(' ')}: ${r.stderr.trim()}`)
  return r.stdout.trim() ? JSON.parse(r.stdout) : []
}

const readText = (path: string) => {
  try {
    return readFileSync(path, 'utf8').trim()
  } catch {
    return undefined
  }
}

/** Arguments as the shell reads them back: plain words bare, anything else single-quoted. */
export function shq(word: string): string {
  return /^[A-Za-z0-9_.\/:=@%+,-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`
}

/** This kube-cni as it was started, for fixes that call kube-cni itself. */
function self(): string {
  return [...(process.execArgv.length ? [process.execPath, ...process.execArgv] : []), process.argv[1]].map(shq).join(' ')
}

const finding = (id: string, status: Status, message: string, fix = ''): Finding => ({ id, status, message, fix })
const ok = (id: string, message: string) => finding(id, 'ok', message)

// ---- the checks ------------------------------------------------------------------------------------------

/** Has an ADD set this node up? Before the first pod, a missing bridge or rule is only "not yet". */
function setUp(conf: NetConf): boolean {
  return existsSync(join(conf.dataDir, conf.name, 'node-ready'))
}

function checkBridge(conf: NetConf, links: Link[], ready: boolean): Finding {
  const br = links.find((l) => l.ifname === conf.bridge)
  const wanted = conf.pools.map((p) => `${formatAddress(p.family, p.gateway)}/${p.subnet.prefix}`)
  const nodad = (cidr: string) => (cidr.includes(':') ? ' nodad' : '')
  if (!br) {
    const make = [`ip link add name ${conf.bridge} type bridge`, ...wanted.map((a) => `ip addr add ${a} dev ${conf.bridge}${nodad(a)}`), `ip link set dev ${conf.bridge} up`]
    return ready
      ? finding('bridge', 'fail', `bridge ${conf.bridge} is missing: pods on this node have no gateway and new ADDs recreate it empty`, make.join(' && '))
      : finding('bridge', 'warn', `bridge ${conf.bridge} does not exist yet: the first pod's ADD creates it`)
  }
  if (br.linkinfo?.info_kind !== 'bridge')
    return finding('bridge', 'fail', `${conf.bridge} is a ${br.linkinfo?.info_kind ?? 'plain'} link, not a bridge: every ADD fails to attach a pod to it`, `ip link del dev ${conf.bridge}`)
  const have = (br.addr_info ?? []).filter((a) => a.scope === 'global').map((a) => `${a.local}/${a.prefixlen}`)
  const extra = have.filter((a) => !wanted.includes(a))
  const missing = ready ? wanted.filter((a) => !have.includes(a)) : []
  const down = ready && !br.flags.includes('UP')
  if (!extra.length && !missing.length && !down) return ok('bridge', `${conf.bridge} is a bridge, up, with ${have.join(', ') || 'no address yet'}`)
  const why = extra.length
    ? `${conf.bridge} already has an IP address different from ${wanted.join(', ')} (${extra.join(', ')}): pods lose their gateway, and the reference plugins refuse every ADD`
    : missing.length
      ? `${conf.bridge} lacks its gateway address ${missing.join(', ')}: pods cannot leave the node`
      : `${conf.bridge} is down: no pod traffic crosses it`
  const fix = [
    ...extra.map((a) => `ip addr del ${a} dev ${conf.bridge}`),
    ...missing.map((a) => `ip addr add ${a} dev ${conf.bridge}${nodad(a)}`),
    ...(down ? [`ip link set dev ${conf.bridge} up`] : []),
  ]
  return finding('bridge', 'fail', why, fix.join(' && '))
}

function checkForwarding(conf: NetConf): Finding {
  const knobs = conf.pools.map((p) => (p.family === 4 ? 'net.ipv4.ip_forward' : 'net.ipv6.conf.all.forwarding'))
  const off = knobs.filter((k) => readText(`/proc/sys/${k.replaceAll('.', '/')}`) !== '1')
  if (!off.length) return ok('forwarding', `${knobs.join(' and ')} = 1`)
  return finding('forwarding', 'fail', `${off.join(' and ')} = 0: pods cannot reach other nodes or the outside`, `sysctl -w ${off.map((k) => `${k}=1`).join(' ')}`)
}

const BRIDGE_NF = '/proc/sys/net/bridge'

function checkBrNetfilter(conf: NetConf): Finding {
  const knobs = ['net.bridge.bridge-nf-call-iptables', ...(conf.pools.some((p) => p.family === 6) ? ['net.bridge.bridge-nf-call-ip6tables'] : [])]
  const set = `sysctl -w ${knobs.map((k) => `${k}=1`).join(' ')}`
  if (!existsSync(BRIDGE_NF))
    return finding('br-netfilter', 'fail', 'br_netfilter is not loaded: replies between pods on the bridge skip iptables, so Services (and DNS) break', `modprobe br_netfilter && ${set}`)
  const off = knobs.filter((k) => readText(`/proc/sys/${k.replaceAll('.', '/')}`) !== '1')
  if (!off.length) return ok('br-netfilter', `br_netfilter loaded, ${knobs.join(' and ')} = 1`)
  return finding('br-netfilter', 'fail', `${off.join(' and ')} = 0: replies between pods on the bridge skip iptables, so Services (and DNS) break`, set)
}

async function checkMasquerade(conf: NetConf, ready: boolean): Promise<Finding> {
  const missing: string[] = []
  const unwanted: string[] = []
  for (const pool of conf.pools) {
    const tool = pool.family === 4 ? 'iptables' : 'ip6tables'
    const chains = chainsFor(conf.name, pool, conf.ipMasq)
    const r = await run([`${tool}-restore`, '-w', '--noflush'], restoreInput(chains, 'check')).catch(() => undefined)
    if (r?.code !== 0) {
      const rewrite = restoreInput(chains, 'rewrite').trimEnd().split('\n').map(shq).join(' ')
      const jumps = chains.map(({ table, jump }) => `{ ${tool} -w -t ${table} -C ${jump} 2>/dev/null || ${tool} -w -t ${table} -A ${jump}; }`)
      missing.push(`printf '%s\\n' ${rewrite} | ${tool}-restore -w --noflush && ${jumps.join(' && ')}`)
    }
    if (!conf.ipMasq) {
      const { masq } = chainNames(conf.name)
      const listed = await run([tool, '-w', '-t', 'nat', '-S', 'POSTROUTING'])
      for (const line of listed.stdout.split('\n').filter((l) => l.endsWith(` -j ${masq}`)))
        unwanted.push(`${tool} -w -t nat ${line.replace(/^-A /, '-D ')}`)
    }
  }
  const what = conf.ipMasq ? 'forward and masquerade rules' : 'forward rules'
  if (missing.length && !ready) return finding('masquerade', 'warn', `kube-cni's ${what} are not there yet: the first pod's ADD adds them`)
  if (missing.length)
    return finding(
      'masquerade',
      'fail',
      `kube-cni's ${what} are missing (a firewall reload or \`iptables -F\`?): pods ${conf.ipMasq ? 'cannot reach the outside, and ' : ''}may be dropped when forwarded`,
      missing.join(' && '),
    )
  if (unwanted.length) return finding('masquerade', 'fail', '"ipMasq" is false, but pod traffic is still masqueraded', unwanted.join(' && '))
  return ok('masquerade', `kube-cni's ${what} for ${conf.pools.map((p) => formatCidr(p.network)).join(', ')} are in place`)
}

/** Store files of a pod that is gone: its record and the IPs it still holds, or a reservation nobody records. */
interface Leak {
  ips: string[]
  files: string[]
}

/** Attachments whose host veth is gone and whose ADD is not running, and reservations no record owns. */
function findLeaks(store: Store, links: Link[]): Leak[] {
  const have = new Set(links.map((l) => l.ifname))
  const leaks: Leak[] = []
  const recorded = new Set<string>()
  const key = (o: Owner) => `${o.containerId}\n${o.ifname}`
  for (const { owner, record, busy } of store.listAttachments()) {
    recorded.add(key(owner))
    // busy: the ADD that wrote the record is still running, as GC sees it.
    if (busy || (record.hostVeth && have.has(record.hostVeth))) continue
    const path = store.recordPath(owner)
    const held = record.ips.filter((ip) => { const o = store.ownerOf(ip); return o && key(o) === key(owner) })
    leaks.push({ ips: held, files: [path, ...held.map((ip) => join(store.dir, ip))] })
  }
  for (const r of store.listReserved()) {
    if (r.owner && recorded.has(key(r.owner))) continue
    if (!store.isBeingReserved(r.ip)) leaks.push({ ips: [r.ip], files: [join(store.dir, r.ip)] })
  }
  return leaks
}

/**
 * Frees exactly the leaks. Their veths are gone with their netns, so all that is left of them is in the store:
 * a DEL would only remove these same files, one plugin start per pod.
 */
function leakFix(leaks: Leak[]): string {
  return `rm -f -- ${leaks.flatMap((l) => l.files).map(shq).join(' ')}`
}

function checkLeaks(leaks: Leak[]): Finding {
  if (!leaks.length) return ok('ipam-leaks', 'every reservation belongs to a pod whose veth is here, or to an ADD still running')
  const ips = leaks.flatMap((l) => l.ips)
  const shown = ips.slice(0, 5).join(', ') + (ips.length > 5 ? `, and ${ips.length - 5} more` : '')
  return finding(
    'ipam-leaks',
    'fail',
    `${leaks.length} reservation(s) of pods that no longer exist here (${shown}): leaked by a crash or a reboot, they end in "no IP addresses available"`,
    leakFix(leaks),
  )
}

function checkPools(conf: NetConf, store: Store, leaks: Leak[]): Finding {
  let worst: Status = 'ok'
  const parts = conf.pools.map((pool) => {
    const used = store.countReserved(pool)
    const cap = store.capacity(pool)
    const status: Status = used >= cap ? 'fail' : used * 10 > cap * 9 ? 'warn' : 'ok'
    if (status === 'fail' || (status === 'warn' && worst === 'ok')) worst = status
    return `${formatCidr(pool.subnet)} ${used}/${cap} used`
  })
  if (worst === 'ok') return ok('ipam-pool', parts.join(', '))
  const full = worst === 'fail' ? 'is full: new pods fail with "no IP addresses available"' : 'is over 90 % full'
  const fix = leaks.length ? leakFix(leaks) : ''
  const how = leaks.length ? ' (leaked reservations can be freed)' : '; give the node a larger podCIDR, or fewer pods'
  return finding('ipam-pool', worst, `the pool ${full}: ${parts.join(', ')}${how}`, fix)
}

async function checkRoutes(o: DoctorOptions, conf: NetConf): Promise<Finding> {
  if (!o.nodes) return finding('routes', 'warn', 'not checked: give a NodeList (--nodes-json, --kubectl or --kubeconfig) to check the routes to other nodes')
  const current = await readCurrent()
  const backend = current.vxlan ? 'vxlan' : 'host-gw'
  const networks = conf.pools.map((p) => p.network)
  let plan
  try {
    plan = planRoutes(await o.nodes.read(), o.node, backend, current.local, networks)
  } catch (e) {
    return finding('routes', 'fail', `cannot plan the routes: ${(e as Error).message}`)
  }
  const { ip, bridge } = diff(plan, current)
  const changes = [...ip, ...bridge]
  const peers = new Set(plan.routes.map((r) => r.node)).size
  if (!changes.length) return ok('routes', `${plan.routes.length} route(s) to ${peers} peer(s) as \`kube-cni routes\` makes them (${backend})`)
  const missing = ip.filter((c) => c.line.startsWith('route replace')).map((c) => `${c.line.split(' ')[2]} (${c.node})`)
  const stale = ip.filter((c) => c.line.startsWith('route del')).map((c) => c.line.split(' ')[2])
  const other = changes.length - missing.length - stale.length
  const what = [
    missing.length ? `missing or wrong: ${missing.join(', ')}` : '',
    stale.length ? `stale (no node has them): ${stale.join(', ')}` : '',
    other ? `${other} overlay entr${other === 1 ? 'y' : 'ies'} to repair` : '',
  ]
  const fix = `${self()} routes --node ${shq(o.node)} --network ${networks.map(formatCidr).join(',')} ${o.nodes.flags.map(shq).join(' ')} --backend ${backend}`
  return finding('routes', 'fail', `routes to other nodes' pods differ from the NodeList: ${what.filter(Boolean).join('; ')}`, fix)
}

/** The largest packet the way out allows a pod: the overlay's MTU, else the uplink's. */
async function pathMtu(links: Link[]): Promise<{ mtu: number; via: string; overlayProblem?: Finding } | undefined> {
  const vx = links.find((l) => l.ifname === VXLAN_DEV)
  if (vx) {
    const local = (await json(['ip', '-j', '-d', 'link', 'show', 'dev', VXLAN_DEV]))[0]?.linkinfo?.info_data?.local
    const under = links.find((l) => (l.addr_info ?? []).some((a) => a.local === local))
    if (under && vx.mtu > under.mtu - 50)
      return {
        mtu: under.mtu - 50,
        via: `${under.ifname} minus 50 for VXLAN`,
        overlayProblem: finding('mtu', 'fail', `${VXLAN_DEV} has MTU ${vx.mtu}, more than ${under.ifname}'s ${under.mtu} minus the 50 bytes of VXLAN: full-size packets are lost`, `ip link set dev ${VXLAN_DEV} mtu ${under.mtu - 50}`),
      }
    return { mtu: vx.mtu, via: VXLAN_DEV }
  }
  const dflt = (await json(['ip', '-j', 'route', 'show', 'default']))[0]?.dev
  const up = links.find((l) => l.ifname === dflt)
  return up ? { mtu: up.mtu, via: up.ifname } : undefined
}

async function checkMtu(conf: NetConf, confPath: string, links: Link[]): Promise<Finding> {
  const path = await pathMtu(links)
  if (!path) return ok('mtu', 'no uplink (no default route, no overlay): nothing to compare pod MTUs with')
  if (path.overlayProblem) return path.overlayProblem
  const ports = links.filter((l) => l.master === conf.bridge && l.linkinfo?.info_kind === 'veth')
  const big = ports.filter((l) => l.mtu > path.mtu)
  if (big.length) {
    const names = new Map<number, string>((await json(['ip', '-j', 'netns', 'list-id'])).map((n: any) => [n.nsid, n.name]))
    const fix = await Promise.all(
      big.map(async (l) => {
        const ns = l.link_netnsid === undefined ? undefined : names.get(l.link_netnsid)
        const peer = ns && (await json(['ip', '-n', ns, '-j', 'link', 'show'])).find((p: Link) => p.ifindex === l.link_index)?.ifname
        return [`ip link set dev ${l.ifname} mtu ${path.mtu}`, ...(peer ? [`ip -n ${shq(ns)} link set dev ${shq(peer)} mtu ${path.mtu}`] : [])]
      }),
    )
    return finding(
      'mtu',
      'fail',
      `${big.length} pod interface(s) have an MTU above ${path.mtu} (${path.via}): ${big.map((l) => `${l.ifname} ${l.mtu}`).join(', ')}; full-size packets are dropped on the way`,
      fix.flat().join(' && '),
    )
  }
  const confMtu = conf.mtu ?? 1500
  if (confMtu > path.mtu)
    return finding('mtu', 'fail', `new pods get MTU ${confMtu} ("mtu" in the config), above ${path.mtu} (${path.via}): their full-size packets will be dropped`, `sed -i 's/"type": "kube-cni",/&\\n      "mtu": ${path.mtu},/' ${shq(confPath)}`)
  return ok('mtu', `${ports.length} pod interface(s) at or below ${path.mtu} (${path.via})`)
}

function checkHairpin(conf: NetConf, links: Link[]): Finding {
  const ports = links.filter((l) => l.master === conf.bridge && /^veth[0-9a-f]{8}$/.test(l.ifname))
  if (!conf.hairpinMode) return ok('hairpin', '"hairpinMode" is false: not checked')
  const off = ports.filter((l) => l.linkinfo?.info_slave_data?.hairpin !== true)
  if (!off.length) return ok('hairpin', `hairpin on for all ${ports.length} pod port(s)`)
  return finding(
    'hairpin',
    'fail',
    `hairpin is off on ${off.map((l) => l.ifname).join(', ')}: those pods cannot reach themselves through a Service VIP`,
    off.map((l) => `ip link set dev ${l.ifname} type bridge_slave hairpin on`).join(' && '),
  )
}

/** Where a missing reference plugin can be copied from on this machine, or how to get it. */
function installFix(type: string, dest: string): string {
  const found = ['/usr/lib/cni', '/usr/libexec/cni', '/opt/cni/bin'].map((d) => join(d, type)).find((p) => p !== dest && existsSync(p))
  const install = (from: string) => `install -D -m 755 ${shq(from)} ${shq(dest)}`
  return found ? install(found) : `apt-get install -y containernetworking-plugins && ${install(join('/usr/lib/cni', type))}`
}

function checkChain(loaded: Loaded, binDir: string): Finding {
  const problems: string[] = []
  const fixes: string[] = []
  for (const type of loaded.chain) {
    const path = join(binDir, type)
    if (!/^[A-Za-z0-9_.-]+$/.test(type)) {
      problems.push(`the plugin type ${JSON.stringify(type)} is not a file name`)
      continue
    }
    if (!existsSync(path)) {
      problems.push(`${type} is not in ${binDir}: every pod's ADD fails ("failed to find plugin ${type}")`)
      fixes.push(installFix(type, path))
      continue
    }
    try {
      accessSync(path, constants.X_OK)
    } catch {
      problems.push(`${path} is not executable`)
      fixes.push(`chmod 755 ${shq(path)}`)
      continue
    }
    const answer = pluginVersions(path)
    if ('error' in answer) problems.push(`${path} does not answer VERSION (${answer.error})`)
    else if (!answer.versions.includes(loaded.version)) problems.push(`${type} does not speak cniVersion ${loaded.version} (it speaks ${answer.versions.join(', ')})`)
    else continue
    fixes.push(installFix(type, path))
  }
  if (!problems.length) return ok('chain', loaded.chain.length ? `${loaded.chain.join(', ')} present in ${binDir} and speak ${loaded.version}` : 'kube-cni chains no other plugin')
  return finding('chain', 'fail', problems.join('; '), fixes.join(' && '))
}

function checkPlugin(binDir: string): Finding {
  const path = join(binDir, 'kube-cni')
  const bundle = process.execArgv.length === 0 && process.argv[1] && !process.argv[1].endsWith('.ts') ? process.argv[1] : undefined
  const reinstall = bundle ? `install -D -m 755 ${shq(bundle)} ${shq(path)}` : ''
  if (!existsSync(path)) return finding('plugin', 'fail', `kube-cni is not in ${binDir}: the runtime cannot run it, and no pod gets a network`, reinstall)
  const answer = pluginVersions(path)
  if ('error' in answer && / ENOENT$/.test(answer.error)) {
    const shebang = readText(path)?.split('\n')[0] ?? ''
    const fix = /env node$/.test(shebang) ? `ln -s ${shq(process.execPath)} /usr/local/bin/node` : reinstall
    return finding('plugin', 'fail', `${path} cannot start: its interpreter (${shebang}) is not there`, fix)
  }
  if ('error' in answer) return finding('plugin', 'fail', `${path} does not answer VERSION: ${answer.error}`, reinstall)
  return ok('plugin', `${path} answers VERSION (${answer.versions.at(-1)})`)
}

export async function doctor(o: DoctorOptions): Promise<Finding[]> {
  const loaded = loadConf(o.confPath)
  const { conf } = loaded
  const links: Link[] = await json(['ip', '-d', '-j', 'addr', 'show'])
  const ready = setUp(conf)
  const store = new Store(conf.dataDir, conf.name)
  const leaks = findLeaks(store, links)
  // The checks that exec start first; the plugins' VERSION answers (synchronous) run while they do.
  const pending = Promise.all([checkMasquerade(conf, ready), checkRoutes(o, conf), checkMtu(conf, o.confPath, links)])
  const chain = checkChain(loaded, o.binDir)
  const plugin = checkPlugin(o.binDir)
  const [masquerade, routes, mtu] = await pending
  return [
    checkBridge(conf, links, ready),
    checkForwarding(conf),
    checkBrNetfilter(conf),
    masquerade,
    checkLeaks(leaks),
    checkPools(conf, store, leaks),
    routes,
    mtu,
    checkHairpin(conf, links),
    chain,
    plugin,
  ]
}

// ---- the command -----------------------------------------------------------------------------------------

export const DOCTOR_USAGE = `kube-cni doctor [--conf FILE] [--cni-bin-dir DIR] [--node NAME] [--nodes-json FILE|- | --kubectl PATH | --kubeconfig FILE] [--json]
  Checks this netns's pod network (on a node: the host's) and prints, for each check, what is wrong, why it
  matters and the command that fixes it. It changes nothing. Exit 0 when no check failed, 1 otherwise.
  --conf defaults to /etc/cni/net.d/${CONFLIST_NAME}, --cni-bin-dir to $CNI_PATH or /opt/cni/bin, --node to the host name.`

const MARK: Record<Status, string> = { ok: '✓', warn: '!', fail: '✗' }

export async function doctorCommand(argv: string[]): Promise<number> {
  const { values: v } = parseArgs({
    args: argv,
    options: {
      conf: { type: 'string', default: join('/etc/cni/net.d', CONFLIST_NAME) },
      'cni-bin-dir': { type: 'string', default: process.env.CNI_PATH?.split(':')[0] || '/opt/cni/bin' },
      node: { type: 'string', default: hostname() },
      'nodes-json': { type: 'string' },
      kubectl: { type: 'string' },
      kubeconfig: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  })
  if (v.help) return process.stdout.write(`${DOCTOR_USAGE}\n`), 0
  const { nodeSource } = await import('./kube.ts')
  let nodes: DoctorOptions['nodes']
  try {
    if (v['nodes-json'] !== undefined || v.kubectl !== undefined || v.kubeconfig !== undefined) nodes = nodeSource(v)
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${DOCTOR_USAGE}`)
  }
  const findings = await doctor({ confPath: v.conf!, binDir: v['cni-bin-dir']!, node: v.node!, nodes })
  const failed = findings.some((f) => f.status === 'fail')
  if (v.json) process.stdout.write(`${JSON.stringify({ ok: !failed, findings })}\n`)
  else {
    for (const f of findings) {
      process.stdout.write(`${MARK[f.status]} ${f.id.padEnd(13)}${f.message}\n`)
      if (f.fix) process.stdout.write(`  fix: ${f.fix}\n`)
    }
    process.stdout.write(failed ? 'Some checks failed: run the fix lines above, as root, in this network namespace.\n' : 'No check failed.\n')
  }
  return failed ? 1 : 0
}
