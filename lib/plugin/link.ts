// The kernel work of one pod, through iproute2: the bridge, the veth pair, addresses and routes. Each side
// (host and pod) is one `ip -batch` exec, and the same execs read back the MACs with `-j`, so an ADD costs
// two child processes. Every line is also a line a learner can type; explain mode prints them.
import { closeSync, existsSync, openSync, readSync, readlinkSync, statSync } from 'node:fs'
import { CniError, Code } from './cni.ts'
import { type Proc, type Step, explain, explainSteps, run } from './exec.ts'
import { log } from './log.ts'
import { formatAddress, macFromAddress, nodad } from './ip.ts'
import type { NetConf, Pool } from './netconf.ts'

/**
 * Does the current netns have an interface with this name? /proc/sys/net reflects the netns of the
 * process that reads it (unlike /sys/class/net, which reflects the netns sysfs was mounted in), and a
 * stat is microseconds against milliseconds for an exec.
 */
export function linkExists(name: string): boolean {
  return existsSync(`/proc/sys/net/ipv4/conf/${name}`)
}

/**
 * Why `path` is not a network namespace, or undefined when it is one. A netns is a file of nsfs (the one
 * filesystem /proc/self/ns/* live on): /proc/PID/ns/net, or a bind mount of it as `ip netns add` and runtimes
 * make. A stale mount point is the empty file left behind when that bind mount is gone.
 */
export function netnsProblem(path: string): string | undefined {
  let st
  try {
    st = statSync(path)
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : `cannot be read: ${(e as Error).message}`
  }
  if (st.isDirectory()) return 'is a directory, not a network namespace'
  if (st.dev !== statSync('/proc/self/ns/net').dev)
    return st.isFile() && st.size === 0
      ? 'is an empty file, not a network namespace (a netns mount point whose namespace is gone?)'
      : 'is not a network namespace'
  // /proc/PID/ns/* are links that name their kind; a bind mount does not, and `ip` refuses a wrong one.
  let target = ''
  try {
    target = readlinkSync(path)
  } catch {
    // not a link: a bind mount
  }
  const kind = /^(\w+):\[/.exec(target)?.[1]
  return kind && kind !== 'net' ? `is a ${kind} namespace, not a network namespace` : undefined
}

/**
 * `veth` plus 8 random hex digits, the reference bridge plugin's scheme: 32 bits, not the bash 16. The bytes
 * come straight from /dev/urandom: loading node:crypto for four bytes would cost every ADD ~15 modules.
 */
export function newHostVethName(): string {
  const bytes = Buffer.alloc(4)
  const fd = openSync('/dev/urandom', 'r')
  try {
    for (;;) {
      readSync(fd, bytes, 0, 4, null)
      const name = `veth${bytes.toString('hex')}`
      if (!linkExists(name)) return name
    }
  } finally {
    closeSync(fd)
  }
}

interface BatchResult {
  code: number
  failedLine?: number // 1-based line of the batch that failed
  error: string
  json: any[][] // one array per `show` line, in order
}

/** Runs `ip -j -batch -` in the host netns, or inside `netns` (any path) through nsenter. */
async function ipBatch(steps: Step[], netns?: string, onSpawn?: (proc: Proc) => void): Promise<BatchResult> {
  const prefix = netns ? ['nsenter', `--net=${netns}`, 'ip'] : ['ip']
  if (explain.enabled) explainSteps(steps.map((s) => ({ ...s, line: `ip ${s.line}` })), netns)
  const started = Date.now()
  const out = await run([...prefix, '-j', '-batch', '-'], steps.map((s) => s.line).join('\n') + '\n', onSpawn)
  log.debug(`ip -batch in ${netns ?? 'the host netns'}: ${steps.length} lines, exit ${out.code}, ${Date.now() - started} ms${out.code ? `: ${out.stderr.trim()}` : ''}`)
  const failed = /Command failed -:(\d+)/.exec(out.stderr)
  const json = out.stdout
    .split('\n')
    .filter((l) => l.startsWith('['))
    .map((l) => JSON.parse(l))
  return { code: out.code, failedLine: failed ? Number(failed[1]) : undefined, error: out.stderr.trim(), json }
}

function kernelError(what: string, r: { error: string }, hint = ''): CniError {
  return new CniError(Code.Kernel, `${what}: ${r.error.split('\n')[0] || 'ip failed'}`, hint)
}

// ---- the bridge (once per node) --------------------------------------------------------------------------

/**
 * Creates the bridge with a fixed MAC derived from the gateway: a bridge without one takes the lowest MAC of
 * its ports, which changes as pods come and go and leaves stale ARP entries in every pod. A bridge that is
 * already there (another ADD's, or made by hand) is used; another kind of link by that name is an error that
 * says so, as the reference plugin's does, instead of a failing `master` later.
 */
export async function createBridge(conf: NetConf): Promise<void> {
  const mac = macFromAddress(conf.pools[0].gateway)
  if (!linkExists(conf.bridge)) {
    const r = await ipBatch([
      { line: `link add name ${conf.bridge} address ${mac} type bridge`, why: 'bash: brctl addbr cni0 (done by hand)' },
    ])
    if (r.code === 0) return
    if (!/File exists/.test(r.error)) throw kernelError(`cannot create bridge ${conf.bridge}`, r)
  }
  const shown = await run(['ip', '-d', '-j', 'link', 'show', 'dev', conf.bridge])
  const kind = shown.code === 0 ? JSON.parse(shown.stdout)[0]?.linkinfo?.info_kind : undefined
  if (kind !== 'bridge')
    throw new CniError(
      Code.Kernel,
      `${conf.bridge} already exists but is not a bridge${kind ? ` (it is a ${kind})` : ''}`,
      `delete it (ip link del dev ${conf.bridge}) or set "bridge" in the network config to another name`,
    )
}

/** Re-asserted on every ADD (cheap and idempotent): heals a bridge whose address or state was lost. */
export function bridgeSteps(conf: NetConf): Step[] {
  return [
    ...conf.pools.map((pool) => ({
      line: `addr replace ${cidrOf(pool, pool.gateway)} dev ${conf.bridge}${nodad(pool.family)}`,
      why: 'bash: ip addr add <gateway> dev cni0 (done by hand)',
    })),
    { line: `link set dev ${conf.bridge} up`, why: 'bash: ip link set cni0 up (done by hand)' },
  ]
}

function cidrOf(pool: Pool, value: bigint): string {
  return `${formatAddress(pool.family, value)}/${pool.subnet.prefix}`
}

// ---- one pod ---------------------------------------------------------------------------------------------

export interface PodLinks {
  bridgeMac: string
  hostVethMac: string
  podMac: string
}

export interface PodPlan {
  conf: NetConf
  netns: string
  ifname: string
  hostVeth: string
  ips: { pool: Pool; ip: bigint }[]
}

/** The veth pair, its pod end born inside the sandbox as CNI_IFNAME (in the host netns it would clash with eth0). */
export function vethSteps(p: PodPlan): Step[] {
  const mtu = p.conf.mtu ? ` mtu ${p.conf.mtu}` : ''
  return [
    {
      line: `link add name ${p.hostVeth}${mtu} type veth peer name ${p.ifname}${mtu} netns ${p.netns}`,
      why: 'bash: ip link add $CNI_IFNAME type veth peer name $host_ifname; ip link set $CNI_IFNAME netns $CNI_CONTAINERID',
    },
  ]
}

/** The host end joins the bridge. */
export function attachSteps(p: PodPlan): Step[] {
  return [
    { line: `link set dev ${p.hostVeth} master ${p.conf.bridge} up`, why: 'bash: ip link set $host_ifname up; ip link set $host_ifname master cni0' },
    ...(p.conf.hairpinMode ? [{ line: `link set dev ${p.hostVeth} type bridge_slave hairpin on`, why: 'new: a pod can reach itself through a Service VIP' }] : []),
  ]
}

/** The pod's addresses, and its link up. */
export function podAddressSteps(p: PodPlan): Step[] {
  return [
    ...p.ips.map(({ pool, ip }) => ({
      line: `addr add ${cidrOf(pool, ip)} dev ${p.ifname}${nodad(pool.family)}`,
      why: 'bash: ip netns exec $CNI_CONTAINERID ip addr add $ip/$mask dev $CNI_IFNAME',
    })),
    { line: `link set dev ${p.ifname} up`, why: 'bash: ip netns exec $CNI_CONTAINERID ip link set $CNI_IFNAME up' },
  ]
}

/** The pod's default route via the bridge, one per family. */
export function podRouteSteps(p: PodPlan): Step[] {
  return p.ips.map(({ pool }) => ({
    line: `route add ${pool.family === 4 ? 'default' : '::/0'} via ${formatAddress(pool.family, pool.gateway)} dev ${p.ifname}`,
    why: 'bash: ip netns exec $CNI_CONTAINERID ip route add default via $gw dev $CNI_IFNAME',
  }))
}

/** The host side's batch: the pair, attached, the bridge re-asserted, then the MACs for the result. */
export function hostSteps(p: PodPlan): Step[] {
  return [...vethSteps(p), ...attachSteps(p), ...bridgeSteps(p.conf), { line: `link show dev ${p.conf.bridge}` }, { line: `link show dev ${p.hostVeth}` }]
}

/** The pod side's batch: address, link up and the default route, then the MAC for the result. */
export function podSteps(p: PodPlan): Step[] {
  return [
    ...podAddressSteps(p),
    ...podRouteSteps(p),
    { line: `link show dev ${p.ifname}`, why: 'bash: ip netns exec ... ip link show eth0 | awk (the MAC for the result)' },
  ]
}

/** A pod set up, or the host end's random name taken by another ADD between our check and our create: draw again. */
export type PodSetup = { links: PodLinks } | { nameTaken: CniError }

/**
 * The two batches, one on each side. Whatever fails once the pair exists, the pair is deleted before the error
 * goes on, so a failed ADD leaves no veth behind.
 */
export async function setupPod(p: PodPlan, onSpawn: (proc: Proc) => void): Promise<PodSetup> {
  const host = await ipBatch(hostSteps(p), undefined, onSpawn)
  if (host.code !== 0) {
    const error = kernelError('cannot create the veth pair', host)
    if (host.failedLine !== 1) {
      await rollback(p)
      throw error
    }
    // The first line made nothing.
    if (linkExists(p.hostVeth)) return { nameTaken: error }
    if (/File exists/.test(host.error))
      throw new CniError(Code.AlreadyExists, `interface ${p.ifname} already exists in ${p.netns}`, 'DEL the old attachment or choose another CNI_IFNAME')
    throw error
  }
  // The host end exists from here on: whatever fails, even starting nsenter, it goes.
  try {
    const pod = await ipBatch(podSteps(p), p.netns, onSpawn)
    if (pod.code !== 0) throw kernelError(`cannot configure ${p.ifname} in ${p.netns}`, pod)
    return { links: { bridgeMac: macOf(host, p.conf.bridge), hostVethMac: macOf(host, p.hostVeth), podMac: macOf(pod, p.ifname) } }
  } catch (e) {
    await rollback(p)
    throw e
  }
}

async function rollback(p: PodPlan): Promise<void> {
  await teardownPod('', p.ifname, p.hostVeth).catch((e) => log.error(`rollback: ${e.message}`))
}

/** The MAC a batch's `link show dev NAME` printed, found by the name rather than the line's place in the batch. */
function macOf(r: BatchResult, name: string): string {
  const link = r.json.flat().find((l) => l?.ifname === name)
  if (typeof link?.address !== 'string') throw new CniError(Code.Kernel, `ip did not show the MAC of ${name}`)
  return link.address
}

/**
 * Deleting either end of a veth deletes both, so when the record names the host end, the host alone decides:
 * if that end is gone, so is the pair, and the netns (a stale mount point by now, perhaps) is not entered.
 * Only without it is the pod end looked for by name. Missing links and netns are not errors: DEL must be
 * idempotent.
 */
export async function teardownPod(netns: string, ifname: string, hostVeth?: string): Promise<void> {
  if (hostVeth) {
    if (!linkExists(hostVeth)) return
    const r = await ipBatch([{ line: `link del dev ${hostVeth}`, why: 'new: the bash DEL never removed the veth' }])
    if (r.code !== 0 && linkExists(hostVeth)) throw kernelError(`cannot delete ${hostVeth}`, r)
    return
  }
  if (!netns || netnsProblem(netns)) return
  const r = await ipBatch([{ line: `link del dev ${ifname}`, why: 'new: the bash DEL never removed the veth' }], netns)
  // `reassociate ... failed`: a bind mount of another kind of namespace, which holds no interface at all.
  if (r.code !== 0 && !/Cannot find device|does not exist|reassociate to namespace/.test(r.error))
    throw kernelError(`cannot delete ${ifname} in ${netns}`, r)
}

// ---- reading back, for CHECK ---------------------------------------------------------------------------------

export interface PodState {
  addresses: string[] // CIDR notation
  gateways: string[] // of the default routes
}

export async function readPod(netns: string, ifname: string, families: (4 | 6)[]): Promise<PodState | undefined> {
  const addr = await run(['nsenter', `--net=${netns}`, 'ip', '-j', 'addr', 'show', 'dev', ifname])
  if (addr.code !== 0) return undefined
  const info = JSON.parse(addr.stdout)[0]?.addr_info ?? []
  const gateways: string[] = []
  for (const f of families) {
    const r = await run(['nsenter', `--net=${netns}`, 'ip', '-j', `-${f}`, 'route', 'show', 'default', 'dev', ifname])
    if (r.code === 0) for (const route of JSON.parse(r.stdout)) if (route.gateway) gateways.push(route.gateway)
  }
  return {
    addresses: info.filter((a: any) => a.scope === 'global').map((a: any) => `${a.local}/${a.prefixlen}`),
    gateways,
  }
}

/** A link as `ip -j link show` has it (its `address`, `master`...), in the host netns or in `netns`; undefined when there is none. */
export async function readLink(name: string, netns?: string): Promise<{ address?: string; master?: string } | undefined> {
  const r = await run([...(netns ? ['nsenter', `--net=${netns}`] : []), 'ip', '-j', 'link', 'show', 'dev', name])
  return r.code === 0 ? (JSON.parse(r.stdout)[0] ?? {}) : undefined
}
