// Address arithmetic for both families. Everything else in kube-cni handles addresses as bigint values plus a
// family, and turns them into text only here. IPv6 text, with its rules (`::`, embedded IPv4, the canonical
// compressed form), is ip-num's; IPv4 text and all range arithmetic are plain bigint work, because ip-num
// builds every address through strings of binary digits (~50 µs an IPv4, ~0.3 ms a range end), and a
// reconcile of 2,000 Nodes parses and formats thousands of them.
import { IPv6, collapseIPv6Number } from 'ip-num'

export type Family = 4 | 6

export interface Cidr {
  family: Family
  network: bigint // the first address, host bits cleared
  last: bigint
  prefix: number
}

function familyOf(text: string): Family {
  return text.includes(':') ? 6 : 4
}

const BITS: Record<Family, number> = { 4: 32, 6: 128 }

/** Parses `a.b.c.d/n` or `x::y/n`; returns undefined for anything else. Host bits are cleared. */
export function parseCidr(text: string): Cidr | undefined {
  const [, address, prefix] = (typeof text === 'string' && /^([0-9a-fA-F.:]+)\/(\d{1,3})$/.exec(text)) || []
  const parsed = address === undefined ? undefined : parseAddress(address)
  if (!parsed || Number(prefix) > BITS[parsed.family]) return undefined
  return networkOf(parsed.family, parsed.value, Number(prefix))
}

/**
 * The network an address with this prefix length is on: 192.0.2.10 and 24 -> 192.0.2.0/24. Plain bigint
 * masks, not ip-num's ranges: those compute their ends through strings of binary digits, ~0.3 ms per IPv4 and
 * ~1 ms per IPv6 range, and every config and every route plan checks several.
 */
export function networkOf(family: Family, value: bigint, prefix: number): Cidr {
  const hostBits = BigInt(BITS[family] - prefix)
  const network = (value >> hostBits) << hostBits
  return { family, network, last: network | ((1n << hostBits) - 1n), prefix }
}

// Dotted decimal, each octet 0-255 without leading zeros (ip-num's rule: `010` could be read as octal).
const OCTET = '(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)'
const IPV4 = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`)

/** Parses a plain address; returns undefined when it is not one. */
export function parseAddress(text: string): { family: Family; value: bigint } | undefined {
  if (typeof text !== 'string' || !/^[0-9a-fA-F.:]+$/.test(text)) return undefined
  if (familyOf(text) === 4) {
    const octets = IPV4.exec(text)
    return octets ? { family: 4, value: BigInt(octets.slice(1).reduce((n, o) => n * 256 + Number(o), 0)) } : undefined
  }
  try {
    return { family: 6, value: IPv6.fromString(text).getValue() }
  } catch {
    return undefined
  }
}

/** `fd00:0::5/64` -> `fd00::5/64`: an address with its prefix as `ip` prints it. Undefined if invalid. */
export function normalizeCidr(text: string): string | undefined {
  const [address, prefix, extra] = typeof text === 'string' ? text.split('/') : []
  const parsed = parseAddress(address)
  if (!parsed || extra !== undefined || !/^\d{1,3}$/.test(prefix ?? '') || Number(prefix) > BITS[parsed.family]) return undefined
  return `${formatAddress(parsed.family, parsed.value)}/${Number(prefix)}`
}

/** The destination of a default route, as a result's `routes` and `ip -j route` spell it. */
export function defaultRoute(family: Family): string {
  return family === 4 ? '0.0.0.0/0' : '::/0'
}

/** IPv6 addresses skip duplicate address detection so they work the moment they are added: the `ip addr` flag. */
export function nodad(family: Family): string {
  return family === 6 ? ' nodad' : ''
}

/** The canonical text of an address, the way `ip` prints it (IPv6 compressed). */
export function formatAddress(family: Family, value: bigint): string {
  if (family === 6) return collapseIPv6Number(new IPv6(value).toString())
  const n = Number(value)
  return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`
}

export function formatCidr(c: Cidr): string {
  return `${formatAddress(c.family, c.network)}/${c.prefix}`
}

export function contains(outer: Cidr, inner: Cidr): boolean {
  return outer.family === inner.family && inner.network >= outer.network && inner.last <= outer.last
}

export function containsAddress(c: Cidr, family: Family, value: bigint): boolean {
  return c.family === family && value >= c.network && value <= c.last
}

/** A MAC from an address's last four bytes behind 0a:58 (locally administered), as kubenet and OVN do. */
export function macFromAddress(value: bigint): string {
  const bytes = [0x0a, 0x58, ...[24n, 16n, 8n, 0n].map((s) => Number((value >> s) & 0xffn))]
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':')
}

// ip-num keeps its range constants private and classifies single addresses only, which cannot tell that
// 128.0.0.0/1 holds multicast and link-local in its middle: hence the ranges themselves (RFC 6890, RFC 4291).
const SPECIAL: Record<Family, [string, string][]> = {
  4: [['multicast', '224.0.0.0/4'], ['loopback', '127.0.0.0/8'], ['link-local', '169.254.0.0/16']],
  6: [['multicast', 'ff00::/8'], ['loopback', '::1/128'], ['link-local', 'fe80::/10']],
}

// Parsed on first use, per family: an IPv4-only ADD never pays for ip-num's IPv6 parser (~5 ms to warm up).
const specialRanges: Partial<Record<Family, [string, string, Cidr][]>> = {}

/** The multicast, loopback or link-local range `c` overlaps, as `the multicast range 224.0.0.0/4`. */
export function specialRangeOverlapped(c: Cidr): string | undefined {
  const ranges = (specialRanges[c.family] ??= SPECIAL[c.family].map(([what, text]) => [what, text, parseCidr(text)!]))
  for (const [what, text, range] of ranges) if (c.network <= range.last && range.network <= c.last) return `the ${what} range ${text}`
  return undefined
}
