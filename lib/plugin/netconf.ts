// The network configuration a runtime passes on stdin: parsed, defaulted and validated before anything
// touches the kernel, so that every mistake is reported as error 6 or 7 naming the field and its value.
import { CniError, Code, assertSupportedVersion, isValidBridgeName } from './cni.ts'
import { type Cidr, type Family, contains, formatCidr, normalizeCidr, parseAddress, parseCidr, specialRangeOverlapped } from './ip.ts'
import { LOG_LEVELS, type LogLevel } from './log.ts'

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
  prevResult?: PrevResult
  /**
   * GC's `cni.dev/valid-attachments`, as `containerID:ifname` keys. Read when GC asks, after its version check:
   * no other command looks at the field, so a malformed one fails GC alone.
   */
  validAttachments: () => Set<string>
}

/** The parts of a previous result that CHECK compares with the kernel; addresses as `ip` prints them. */
export interface PrevResult {
  interfaces: { name: string; mac?: string; sandbox?: string }[]
  ips: { address: string }[]
}

const DEFAULTS = {
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

/**
 * The config's own top-level `cniVersion`, for an error's answer even when the config is unusable otherwise;
 * a `cniVersion` nested anywhere else (a prevResult's) does not count.
 */
export function askedVersion(stdin: string): string | undefined {
  try {
    const version = decodeJSON(stdin).cniVersion
    return typeof version === 'string' ? version : undefined
  } catch {
    return undefined
  }
}

export function parseNetConf(stdin: string): NetConf {
  const raw = decodeJSON(stdin)
  const cniVersion = assertSupportedVersion(raw.cniVersion)
  const name = raw.name
  if (typeof name !== 'string' || !NETWORK_NAME.test(name))
    throw invalid('name', name, 'it must be 1-63 characters of A-Z a-z 0-9 _ . - and start with a letter or digit')
  const bridge = optional(raw, 'bridge', 'string', DEFAULTS.bridge)
  if (!isValidBridgeName(bridge)) throw invalid('bridge', bridge, 'it must be 1-15 characters of A-Z a-z 0-9 _ . -')
  const mtu = raw.mtu
  if (mtu !== undefined && (!Number.isInteger(mtu) || (mtu as number) < 68 || (mtu as number) > 65535))
    throw invalid('mtu', mtu, 'it must be an integer from 68 to 65535')
  const logLevel = optional(raw, 'logLevel', 'string', DEFAULTS.logLevel) as LogLevel
  if (!LOG_LEVELS.includes(logLevel)) throw invalid('logLevel', logLevel, `it must be one of ${LOG_LEVELS.join(', ')}`)
  const dataDir = optional(raw, 'dataDir', 'string', DEFAULTS.dataDir)
  if (!dataDir.startsWith('/')) throw invalid('dataDir', dataDir, 'it must be an absolute path')
  const pools = parsePools(raw)
  if (mtu !== undefined && (mtu as number) < 1280 && pools.some((p) => p.family === 6))
    throw invalid('mtu', mtu, 'IPv6 needs an MTU of at least 1280')
  return {
    cniVersion,
    name,
    bridge,
    pools,
    mtu: mtu as number | undefined,
    hairpinMode: optional(raw, 'hairpinMode', 'boolean', true),
    ipMasq: optional(raw, 'ipMasq', 'boolean', true),
    dataDir,
    logFile: optional(raw, 'logFile', 'string', DEFAULTS.logFile),
    logLevel,
    prevResult: parsePrevResult(raw.prevResult),
    // The key is `cni.dev/valid-attachments`; the 1.1.0 tag of the spec called it `cni.dev/attachments`.
    validAttachments: () => parseValidAttachments(raw['cni.dev/valid-attachments'] ?? raw['cni.dev/attachments']),
  }
}

function parseValidAttachments(listed: unknown): Set<string> {
  // An absent list is refused too: GC without one would free every attachment.
  if (listed !== null && !Array.isArray(listed))
    throw new CniError(Code.InvalidConfig, 'GC needs "cni.dev/valid-attachments": a list of {containerID, ifname}')
  // A malformed entry is refused whole: guessing what it meant could tear down a live pod.
  return new Set(
    ((listed ?? []) as unknown[]).map((a, i) => {
      const entry = a as { containerID?: unknown; ifname?: unknown } | null
      if (typeof entry?.containerID !== 'string' || typeof entry.ifname !== 'string' || !entry.containerID || !entry.ifname)
        throw new CniError(
          Code.InvalidConfig,
          `GC: "cni.dev/valid-attachments" entry ${i} ${JSON.stringify(a)} is not an object with a string "containerID" and "ifname"`,
          'the runtime must list every attachment it keeps with both fields; nothing was freed',
        )
      return attachmentKey(entry.containerID, entry.ifname)
    }),
  )
}

/** How GC matches an attachment the runtime keeps with one the store holds. */
export function attachmentKey(containerId: string, ifname: string): string {
  return `${containerId}:${ifname}`
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
  const gateways = parseGateways(raw.gateway, subnets.map((s) => s.cidr.family))
  const pools = subnets.map(({ cidr, text }) => {
    const network = networks.find((n) => n.cidr.family === cidr.family)
    if (!network) throw invalid(networkField, raw[networkField], `it has no IPv${cidr.family} range for ${text}`)
    if (!contains(network.cidr, cidr))
      throw invalid(subnetField, text, `it must lie inside the cluster range ${formatCidr(network.cidr)}`)
    return makePool(cidr, network.cidr, gateways.get(cidr.family))
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
    if (cidr.prefix === 0) throw invalid(field, text, 'a /0 is every address: pods need a range of their own')
    const special = specialRangeOverlapped(cidr)
    if (special) throw invalid(field, text, `it overlaps ${special}; pods need unicast addresses that are routed`)
    return { cidr, text }
  })
  if (parsed.length === 2 && parsed[0].cidr.family === parsed[1].cidr.family)
    throw invalid(field, value, 'it may hold at most one range per address family')
  return parsed
}

/** `gateway`: one address, or a list of at most one per family, each of a family that has a subnet. */
function parseGateways(value: unknown, families: Family[]): Map<Family, { text: string; value: bigint }> {
  const gateways = new Map<Family, { text: string; value: bigint }>()
  for (const text of value === undefined ? [] : Array.isArray(value) ? value : [value]) {
    const addr = parseAddress(text)
    if (!addr) throw invalid('gateway', text, 'it is not an IP address')
    if (!families.includes(addr.family)) throw invalid('gateway', text, `it is IPv${addr.family}, and the config has no IPv${addr.family} subnet`)
    if (gateways.has(addr.family)) throw invalid('gateway', value, `it may hold at most one address per family`)
    gateways.set(addr.family, { text, value: addr.value })
  }
  return gateways
}

function makePool(subnet: Cidr, network: Cidr, wanted?: { text: string; value: bigint }): Pool {
  const text = formatCidr(subnet)
  if (subnet.family === 4 && subnet.prefix > 30)
    throw invalid('subnet', text, 'an IPv4 pod subnet needs room for a gateway and a pod: /30 or larger')
  if (subnet.family === 6 && (subnet.prefix < 64 || subnet.prefix > 120))
    throw invalid('subnet', text, 'an IPv6 pod subnet must be between /64 and /120')
  // IPv4 keeps its broadcast address out of the pool; IPv6 has none.
  const lastHost = subnet.family === 4 ? subnet.last - 1n : subnet.last
  if (wanted && (wanted.value <= subnet.network || wanted.value > lastHost))
    throw invalid('gateway', wanted.text, `it must be a host address inside the subnet ${text}`)
  const gateway = wanted?.value ?? subnet.network + 1n
  return { family: subnet.family, subnet, network, gateway, firstHost: subnet.network + 1n, lastHost }
}

/**
 * A previous result as CHECK reads it: an object whose `ips` are objects with an `address` in CIDR notation
 * and whose `interfaces` are objects with a `name`, and a `mac` and `sandbox` where given.
 */
function parsePrevResult(value: unknown): PrevResult | undefined {
  if (value === undefined) return undefined
  if (!isObject(value)) throw invalid('prevResult', value, 'it must be an object: the result of the ADD')
  const ips = objectList(value, 'ips').map(({ item, at }) => {
    const address = normalizeCidr(stringField(item, at, 'address', true)!)
    if (!address) throw invalid(`${at}.address`, item.address, 'it must be an address with its prefix length, such as 10.200.1.5/24')
    return { address }
  })
  const interfaces = objectList(value, 'interfaces').map(({ item, at }) => ({
    name: stringField(item, at, 'name', true)!,
    mac: stringField(item, at, 'mac', false),
    sandbox: stringField(item, at, 'sandbox', false),
  }))
  return { interfaces, ips }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** `prevResult.<field>`: absent, or a list of objects, each returned with its place for error messages. */
function objectList(prev: Record<string, unknown>, field: string): { item: Record<string, unknown>; at: string }[] {
  const items = prev[field] ?? []
  if (!Array.isArray(items)) throw invalid(`prevResult.${field}`, items, 'it must be a list')
  return items.map((item, i) => {
    const at = `prevResult.${field}[${i}]`
    if (!isObject(item)) throw invalid(at, item, 'it must be an object')
    return { item, at }
  })
}

function stringField(item: Record<string, unknown>, at: string, field: string, required: boolean): string | undefined {
  if (item[field] === undefined && !required) return undefined
  if (typeof item[field] !== 'string') throw invalid(`${at}.${field}`, item[field], 'it must be a string')
  return item[field] as string
}
