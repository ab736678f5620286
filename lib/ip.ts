// Address arithmetic for both families, on ip-num. Everything else in kube-cni handles addresses as
// bigint values plus a family, and turns them into text only here.
import { IPv4, IPv4CidrRange, IPv6, IPv6CidrRange, collapseIPv6Number } from 'ip-num'

export type Family = 4 | 6

export interface Cidr {
  family: Family
  network: bigint // the first address, host bits cleared
  last: bigint
  prefix: number
}

export function familyOf(text: string): Family {
  return text.includes(':') ? 6 : 4
}

/** Parses `a.b.c.d/n` or `x::y/n`; returns undefined for anything else. Host bits are cleared. */
export function parseCidr(text: string): Cidr | undefined {
  if (typeof text !== 'string' || !/^[0-9a-fA-F.:]+\/\d{1,3}$/.test(text)) return undefined
  try {
    const range = familyOf(text) === 4 ? IPv4CidrRange.fromCidr(text) : IPv6CidrRange.fromCidr(text)
    return {
      family: familyOf(text),
      network: range.getFirst().getValue(),
      last: range.getLast().getValue(),
      prefix: Number(range.getPrefix().getValue()),
    }
  } catch {
    return undefined
  }
}

/** Parses a plain address; returns undefined when it is not one. */
export function parseAddress(text: string): { family: Family; value: bigint } | undefined {
  if (typeof text !== 'string' || !/^[0-9a-fA-F.:]+$/.test(text)) return undefined
  try {
    const family = familyOf(text)
    return { family, value: (family === 4 ? IPv4.fromString(text) : IPv6.fromString(text)).getValue() }
  } catch {
    return undefined
  }
}

/** The canonical text of an address, the way `ip` prints it (IPv6 compressed). */
export function formatAddress(family: Family, value: bigint): string {
  return family === 4 ? new IPv4(value).toString() : collapseIPv6Number(new IPv6(value).toString())
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
