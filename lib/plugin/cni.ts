// The CNI spec's side of the contract: which versions we speak, the error codes, the environment a runtime
// sets, and the result encoded in the version that was asked for.
import { writeSync } from 'node:fs'

export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']
export const LATEST_VERSION = '1.1.0'

// The spec's well-known codes (1-99) and kube-cni's own (100 and up).
export const Code = {
  IncompatibleVersion: 1,
  UnsupportedField: 2,
  UnknownContainer: 3,
  InvalidEnv: 4,
  IOFailure: 5,
  DecodeFailure: 6,
  InvalidConfig: 7,
  TryAgainLater: 11,
  NotAvailable: 50,
  NotAvailableLimited: 51,
  Internal: 100,
  PoolExhausted: 101,
  AlreadyExists: 102,
  Kernel: 103,
  CheckFailed: 104,
} as const

export class CniError extends Error {
  constructor(
    readonly code: number,
    msg: string,
    readonly details = '',
  ) {
    super(msg)
  }
}

/** Compares dotted versions numerically: '0.10.0' > '0.4.0'. */
export function versionAtLeast(version: string, min: string): boolean {
  const a = version.split('.').map(Number)
  const b = min.split('.').map(Number)
  for (let i = 0; i < 3; i++) if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) > (b[i] ?? 0)
  return true
}

export function assertSupportedVersion(version: unknown): string {
  if (typeof version !== 'string' || !SUPPORTED_VERSIONS.includes(version))
    throw new CniError(
      Code.IncompatibleVersion,
      `cniVersion ${JSON.stringify(version)} is not supported`,
      `kube-cni speaks ${SUPPORTED_VERSIONS.join(', ')}; set "cniVersion" in the network config to one of them`,
    )
  return version
}

// ---- the environment -------------------------------------------------------------------------------------

export type Command = 'ADD' | 'DEL' | 'CHECK' | 'GC' | 'STATUS' | 'VERSION'
const COMMANDS: Command[] = ['ADD', 'DEL', 'CHECK', 'GC', 'STATUS', 'VERSION']

export interface Invocation {
  command: Command
  containerId: string
  netns: string
  ifname: string
  args: Record<string, string>
}

const CONTAINER_ID = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/
// The bridge's name also goes into iptables rules, where a trailing '+' is a wildcard: keep it plain.
const BRIDGE_NAME = /^[A-Za-z0-9_.-]{1,15}$/

export function isValidBridgeName(name: string): boolean {
  return BRIDGE_NAME.test(name) && name !== '.' && name !== '..'
}

/**
 * Why a CNI_IFNAME cannot be used, or undefined when it can. The kernel's own rule (dev_valid_name): 1-15
 * bytes, not "." or "..", no '/', ':' or white space, where its isspace() also counts the byte 0xA0 (so some
 * UTF-8 letters are refused, as the kernel would). Three more refusals are ours: '%' makes the kernel pick a
 * name from a template, '#' starts a comment in an `ip -batch` line, and a leading quote mark opens a quoted
 * word there. Anything else, '@' and non-ASCII included, goes through.
 */
function ifnameProblem(name: string): string | undefined {
  const bytes = Buffer.from(name, 'utf8')
  if (bytes.length < 1 || bytes.length > 15) return `it must be 1 to 15 bytes long (it is ${bytes.length})`
  if (name === '.' || name === '..') return 'the kernel refuses "." and ".."'
  if (bytes.some((b) => b <= 0x20 || b === 0x7f || b === 0xa0)) return 'the kernel refuses white space and control characters'
  if (/[/:]/.test(name)) return `the kernel refuses '/' and ':'`
  if (name.includes('%')) return `'%' would make the kernel choose the name from a template`
  if (name.includes('#')) return `'#' starts a comment in the \`ip -batch\` lines kube-cni runs`
  if (/^["']/.test(name)) return 'a leading quote mark opens a quoted word in `ip -batch` lines'
}

const REQUIRED: Record<Command, string[]> = {
  ADD: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME'],
  CHECK: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME'],
  DEL: ['CNI_CONTAINERID', 'CNI_IFNAME'],
  GC: [],
  STATUS: [],
  VERSION: [],
}

function invalidEnv(name: string, why: string): CniError {
  return new CniError(Code.InvalidEnv, `invalid environment variable ${name}: ${why}`)
}

export function readInvocation(env: NodeJS.ProcessEnv): Invocation {
  const command = env.CNI_COMMAND as Command
  if (!COMMANDS.includes(command))
    throw invalidEnv('CNI_COMMAND', `${JSON.stringify(env.CNI_COMMAND)} is not one of ${COMMANDS.join(', ')}`)
  for (const name of REQUIRED[command]) if (!env[name]) throw invalidEnv(name, `it is required for ${command}`)
  const inv: Invocation = {
    command,
    containerId: env.CNI_CONTAINERID ?? '',
    netns: env.CNI_NETNS ?? '',
    ifname: env.CNI_IFNAME ?? '',
    args: parseCniArgs(env.CNI_ARGS ?? ''),
  }
  // VERSION, GC and STATUS ignore these; podman even sends CNI_IFNAME=dummy with VERSION.
  if (REQUIRED[command].length) {
    if (!CONTAINER_ID.test(inv.containerId))
      throw invalidEnv('CNI_CONTAINERID', `${JSON.stringify(inv.containerId)} must match ${CONTAINER_ID.source}`)
    const problem = ifnameProblem(inv.ifname)
    if (problem) throw invalidEnv('CNI_IFNAME', `${JSON.stringify(inv.ifname)}: ${problem}`)
  }
  return inv
}

/** CNI_ARGS is `K=V;K=V`. Kubernetes runtimes send K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID. */
export function parseCniArgs(raw: string): Record<string, string> {
  const args: Record<string, string> = {}
  for (const pair of raw.split(';')) {
    const eq = pair.indexOf('=')
    if (eq > 0) args[pair.slice(0, eq)] = pair.slice(eq + 1)
  }
  return args
}

// ---- results ---------------------------------------------------------------------------------------------

export interface Interface {
  name: string
  mac: string
  sandbox?: string
  mtu?: number
}
export interface IPConfig {
  address: string // CIDR notation: the pod's address and its subnet's prefix length
  gateway: string
  interface: number
}
export interface Route {
  dst: string
  gw?: string
}
export interface Result {
  interfaces: Interface[]
  ips: IPConfig[]
  routes: Route[]
  dns: Record<string, unknown>
}

/** Encodes a result in the asked version: 0.x carries ips[].version, 1.1.0 alone may carry mtu. */
export function encodeResult(result: Result, cniVersion: string): object {
  const legacy = !versionAtLeast(cniVersion, '1.0.0')
  const withMtu = versionAtLeast(cniVersion, '1.1.0')
  return {
    cniVersion,
    interfaces: result.interfaces.map(({ mtu, ...iface }) => (withMtu && mtu ? { ...iface, mtu } : iface)),
    ips: result.ips.map((ip) => (legacy ? { version: ip.address.includes(':') ? '6' : '4', ...ip } : ip)),
    routes: result.routes,
    dns: result.dns,
  }
}

export function encodeError(err: CniError, cniVersion: string): object {
  return { cniVersion, code: err.code, msg: err.message, ...(err.details ? { details: err.details } : {}) }
}

/** stdout belongs to the runtime: exactly one JSON document, written synchronously before we exit. */
export function printJSON(doc: object): void {
  writeSync(1, JSON.stringify(doc) + '\n')
}
