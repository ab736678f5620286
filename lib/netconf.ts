// The network configuration a runtime passes on stdin: parsed, defaulted and validated before anything
// touches the kernel, so that every mistake is reported as error 6 or 7 naming the field and its value.
import { CniError, Code, assertSupportedVersion, isValidIfname } from './cni.ts'
import { type Cidr, type Family, contains, formatCidr, parseAddress, parseCidr } from './ip.ts'

/** One address family's pod subnet: where pods get their addresses, and the cluster range around it. */
export interface Pool {
  family: Family
  subnet: Cidr // this node's podCIDR
  network: Cidr // the whole cluster's pod range: traffic to it is never masqueraded
  gateway: bigint // the bridge's address, and the pods' default route
  firstHost: bigint
  lastHost: bigint
}

export interface NetConf {
  cniVersion: string
  name: string
  bridge: string
  pools: Pool[] // one per family, IPv4 first
  mtu?: number
  hairpinMode: boolean
  ipMasq: boolean
  dataDir: string
  logFile: string
  logLevel: LogLevel
  prevResult?: unknown
  raw: Record<string, unknown>
}

export type LogLevel = 'error' | 'info' | 'debug'
const LOG_LEVELS: LogLevel[] = ['error', 'info', 'debug']

export const DEFAULTS = {
  bridge: 'cni0',
  dataDir: '/run/kube-cni/ipam',
  logFile: '/var/log/kube-cni.log',
  logLevel: 'info' as LogLevel,
}

export const MAX_STDIN = 1 << 20
// The name becomes a directory under dataDir, so it may not climb out of it.
const NETWORK_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/

function invalid(field: string, value: unknown, why: string): CniError {
  return new CniError(Code.InvalidConfig, `invalid network config: "${field}" = ${JSON.stringify(value)}: ${why}`)
}

/** Decodes stdin. Also used by VERSION, GC and STATUS, which need less than a full NetConf. */
export function decodeJSON(stdin: string): Record<string, unknown> {
  if (Buffer.byteLength(stdin) > MAX_STDIN)
    throw new CniError(Code.DecodeFailure, `the network config on stdin is larger than ${MAX_STDIN} bytes`)
  let doc: unknown
  try {
    doc = JSON.parse(stdin)
  } catch (e) {
    throw new CniError(Code.DecodeFailure, `the network config on stdin is not JSON: ${(e as Error).message}`)
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc))
    throw new CniError(Code.DecodeFailure, 'the network config on stdin must be a JSON object')
  return doc as Record<string, unknown>
}

export function parseNetConf(stdin: string): NetConf {
  const raw = decodeJSON(stdin)
  const cniVersion = assertSupportedVersion(raw.cniVersion)
  const name = raw.name
  if (typeof name !== 'string' || !NETWORK_NAME.test(name))
    throw invalid('name', name, 'it must be 1-63 characters of A-Z a-z 0-9 _ . - and start with a letter or digit')
  const bridge = optional(raw, 'bridge', 'string', DEFAULTS.bridge)
  if (!isValidIfname(bridge)) throw invalid('bridge', bridge, 'it must be a valid interface name (1-15 characters)')
  const mtu = raw.mtu
  if (mtu !== undefined && (!Number.isInteger(mtu) || (mtu as number) < 68 || (mtu as number) > 65535))
    throw invalid('mtu', mtu, 'it must be an integer from 68 to 65535')
  const logLevel = optional(raw, 'logLevel', 'string', DEFAULTS.logLevel) as LogLevel
  if (!LOG_LEVELS.includes(logLevel)) throw invalid('logLevel', logLevel, `it must be one of ${LOG_LEVELS.join(', ')}`)
  const dataDir = optional(raw, 'dataDir', 'string', DEFAULTS.dataDir)
  if (!dataDir.startsWith('/')) throw invalid('dataDir', dataDir, 'it must be an absolute path')
  return {
    cniVersion,
    name,
    bridge,
    pools: parsePools(raw),
    mtu: mtu as number | undefined,
    hairpinMode: optional(raw, 'hairpinMode', 'boolean', true),
    ipMasq: optional(raw, 'ipMasq', 'boolean', true),
    dataDir,
    logFile: optional(raw, 'logFile', 'string', DEFAULTS.logFile),
    logLevel,
    prevResult: raw.prevResult,
    raw,
  }
}

function optional<T>(raw: Record<string, unknown>, field: string, type: string, fallback: T): T {
  const value = raw[field]
  if (value === undefined) return fallback
  if (typeof value !== type) throw invalid(field, value, `it must be a ${type}`)
  return value as T
}

/** `subnet`/`network` for one family, or `subnets`/`networks` with one range per family (dual-stack). */
function parsePools(raw: Record<string, unknown>): Pool[] {
  const [subnetField, networkField] = raw.subnets !== undefined ? ['subnets', 'networks'] : ['subnet', 'network']
  const subnets = cidrList(raw, subnetField)
  const networks = cidrList(raw, networkField)
  const pools = subnets.map(({ cidr, text }) => {
    const network = networks.find((n) => n.cidr.family === cidr.family)
    if (!network) throw invalid(networkField, raw[networkField], `it has no IPv${cidr.family} range for ${text}`)
    if (!contains(network.cidr, cidr))
      throw invalid(subnetField, text, `it must lie inside the cluster range ${formatCidr(network.cidr)}`)
    return makePool(cidr, network.cidr, raw.gateway)
  })
  return pools.sort((a, b) => a.family - b.family)
}

function cidrList(raw: Record<string, unknown>, field: string): { cidr: Cidr; text: string }[] {
  const value = raw[field]
  const texts = field.endsWith('s') ? value : value === undefined ? undefined : [value]
  if (!Array.isArray(texts) || texts.length === 0 || texts.length > 2)
    throw invalid(field, value, field.endsWith('s') ? 'it must list one or two CIDRs' : 'it is required: a CIDR such as 10.200.1.0/24')
  const parsed = texts.map((text) => {
    const cidr = parseCidr(text)
    if (!cidr) throw invalid(field, text, 'it is not a CIDR such as 10.200.1.0/24')
    return { cidr, text }
  })
  if (parsed.length === 2 && parsed[0].cidr.family === parsed[1].cidr.family)
    throw invalid(field, value, 'it may hold at most one range per address family')
  return parsed
}

function makePool(subnet: Cidr, network: Cidr, gatewayField: unknown): Pool {
  const text = formatCidr(subnet)
  if (subnet.family === 4 && subnet.prefix > 30)
    throw invalid('subnet', text, 'an IPv4 pod subnet needs room for a gateway and a pod: /30 or larger')
  if (subnet.family === 6 && (subnet.prefix < 64 || subnet.prefix > 120))
    throw invalid('subnet', text, 'an IPv6 pod subnet must be between /64 and /120')
  // IPv4 keeps its broadcast address out of the pool; IPv6 has none.
  const lastHost = subnet.family === 4 ? subnet.last - 1n : subnet.last
  let gateway = subnet.network + 1n
  const wanted = gatewayField === undefined ? [] : Array.isArray(gatewayField) ? gatewayField : [gatewayField]
  for (const g of wanted) {
    const addr = parseAddress(g as string)
    if (!addr) throw invalid('gateway', g, 'it is not an IP address')
    if (addr.family !== subnet.family) continue
    if (addr.value <= subnet.network || addr.value > lastHost)
      throw invalid('gateway', g, `it must be a host address inside the subnet ${text}`)
    gateway = addr.value
  }
  return { family: subnet.family, subnet, network, gateway, firstHost: subnet.network + 1n, lastHost }
}
