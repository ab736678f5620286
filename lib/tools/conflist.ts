// The file a node gets in /etc/cni/net.d: one renderer for install.sh, the DaemonSet's init container and
// the lab, so all three write the same shape. `kube-cni conflist` is its command-line face.
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { SUPPORTED_VERSIONS } from '../plugin/cni.ts'
import { writeAtomic } from '../plugin/fs.ts'
import { parseNetConf } from '../plugin/netconf.ts'

export const CONFLIST_NAME = '10-kube-cni.conflist'

export interface ConflistOptions {
  subnets: string[] // this node's podCIDRs: one, or one per family
  networks: string[] // the cluster's pod ranges, likewise
  /** Chain the reference portmap plugin (hostPort support), with the supportedVersions its VERSION answered. */
  portmap?: { supportedVersions: string[] }
  extra?: Record<string, unknown> // more kube-cni fields: mtu, dataDir, logFile, ...
}

// libcni sends STATUS and GC only to a list at 1.1.0, but containerd 1.6/1.7 (libcni 1.1) rejects a 1.1.0
// result. So "cniVersion" stays at 1.0.0, which every libcni reads, and "cniVersions" offers 1.1.0 to a
// libcni new enough to read it (it picks the highest it knows), when every plugin in the chain speaks it.
const BASE_VERSION = '1.0.0'
const STATUS_VERSION = '1.1.0'

/** A conflist, so runtimes that prefer .conflist find it first, and portmap can follow kube-cni. */
export function renderConflist(o: ConflistOptions): string {
  const ranges =
    o.subnets.length > 1 ? { networks: o.networks, subnets: o.subnets } : { network: o.networks[0], subnet: o.subnets[0] }
  const chain = [SUPPORTED_VERSIONS, ...(o.portmap ? [o.portmap.supportedVersions] : [])]
  const list = {
    cniVersion: BASE_VERSION,
    ...(chain.every((v) => v.includes(STATUS_VERSION)) ? { cniVersions: [BASE_VERSION, STATUS_VERSION] } : {}),
    name: 'k8s-pod-network',
    plugins: [
      { type: 'kube-cni', ...ranges, ...o.extra },
      ...(o.portmap ? [{ type: 'portmap', capabilities: { portMappings: true }, snat: true }] : []),
    ],
  }
  // Validate exactly as the plugin will, so a bad podCIDR fails here and not at the first pod.
  parseNetConf(JSON.stringify({ cniVersion: list.cniVersion, name: list.name, ...list.plugins[0] }))
  return `${JSON.stringify(list, null, 2)}\n`
}

const CIDRS = (s: string | undefined) => (s ? s.split(',').map((x) => x.trim()).filter(Boolean) : [])

export async function conflistCommand(argv: string[]): Promise<number> {
  const { values: o } = parseArgs({
    args: argv,
    options: {
      subnet: { type: 'string' },
      network: { type: 'string' },
      node: { type: 'string' },
      kubectl: { type: 'string' },
      'cni-bin-dir': { type: 'string', default: '/opt/cni/bin' },
      mtu: { type: 'string' },
      out: { type: 'string' },
    },
  })
  let subnets = CIDRS(o.subnet)
  if (!subnets.length) {
    if (!o.node) throw new Error('give --subnet CIDR[,CIDR], or --node NAME to read its spec.podCIDRs from the cluster')
    const { readNode, podCIDRs } = await import('./kube.ts')
    subnets = podCIDRs(await readNode(o.node, { kubectl: o.kubectl }))
    if (!subnets.length) throw new Error(`node ${o.node} has no spec.podCIDR: start the cluster with a pod network (kubeadm init --pod-network-cidr=10.200.0.0/16)`)
  }
  const networks = CIDRS(o.network)
  if (!networks.length) throw new Error('give --network CIDR[,CIDR]: the cluster pod range (kubeadm: networking.podSubnet)')
  const portmap = join(o['cni-bin-dir'], 'portmap')
  const text = renderConflist({
    subnets,
    networks,
    portmap: existsSync(portmap) ? { supportedVersions: supportedVersions(portmap) } : undefined,
    extra: o.mtu ? { mtu: Number(o.mtu) } : undefined,
  })
  if (o.out) writeAtomic(o.out, text, 0o644)
  else process.stdout.write(text)
  return 0
}

/** What a plugin binary answers to VERSION; a plugin that cannot answer speaks nothing we may rely on. */
function supportedVersions(plugin: string): string[] {
  const answer = pluginVersions(plugin)
  if ('versions' in answer) {
    if (!answer.versions.includes(STATUS_VERSION))
      process.stderr.write(`kube-cni conflist: ${plugin} speaks up to ${answer.versions.at(-1)}, so the list offers ${BASE_VERSION} only (no STATUS or GC)\n`)
    return answer.versions
  }
  process.stderr.write(`kube-cni conflist: ${plugin} did not answer VERSION (${answer.error}), so the list offers ${BASE_VERSION} only\n`)
  return []
}

/** A plugin's VERSION answer: its supportedVersions, or why there is none. */
export function pluginVersions(plugin: string): { versions: string[] } | { error: string } {
  // spawnSync, because a plugin that exits without reading stdin must not crash us with EPIPE.
  const r = spawnSync(plugin, [], {
    input: JSON.stringify({ cniVersion: BASE_VERSION }),
    env: { ...process.env, CNI_COMMAND: 'VERSION' },
    encoding: 'utf8',
    timeout: 10_000,
  })
  let versions: unknown
  try {
    versions = JSON.parse(r.stdout).supportedVersions
  } catch {}
  if (r.status === 0 && Array.isArray(versions) && versions.every((v) => typeof v === 'string')) return { versions }
  return { error: r.error ? r.error.message : `exit ${r.status ?? r.signal}: ${(r.stderr ?? '').trim().slice(0, 200)}` }
}
