// Network-namespace fixtures for the end-to-end tests: a "node" netns per test, "pod" netns inside it, and
// the plugin called exactly as a container runtime calls it (exec'd in the node netns, CNI_* variables,
// the netconf on stdin). Every netns has this process's unique prefix and is deleted at exit, even when a
// test fails or the process is interrupted; nothing is ever created in the root netns.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { echoWith } from '../../lib/tools/harness/echo.ts'
import { addNetns, delNetns as removeNetns, inNetns, ipj, must, nsPath, sh } from '../../lib/tools/harness/netns.ts'
import { type PluginResult, type Call as RuntimeCall, callPlugin } from '../../lib/tools/harness/runtime.ts'

export { ipj, must, nsPath, sh }
export type { PluginResult }

export interface Call extends RuntimeCall {
  input?: string // raw stdin, instead of the node's conf
}

export const ROOT = join(__dirname, '..', '..')
export const PLUGIN = process.env.KUBE_CNI_PLUGIN ?? join(ROOT, 'dist', 'kube-cni')
export const PREFIX = `kct${process.pid}-`
export const TMP = mkdtempSync(join(tmpdir(), PREFIX))

export const { startEchoServers, probe } = echoWith([PLUGIN])

const created = new Set<string>()
let counter = 0

export function newNetns(role: string): string {
  const name = `${PREFIX}${role}${++counter}`
  addNetns(name)
  created.add(name)
  return name
}

export function delNetns(name: string): void {
  removeNetns(name)
  created.delete(name)
}

export function cleanupAll(): void {
  for (const name of [...created]) delNetns(name)
}

let cleanupRegistered = false
function registerCleanup(): void {
  if (cleanupRegistered) return
  cleanupRegistered = true
  process.on('exit', () => {
    cleanupAll()
    rmSync(TMP, { recursive: true, force: true })
  })
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => process.exit(130))
}

/** Runs `kube-cni <args>` (not as a CNI plugin) inside a netns. */
export function kubeCni(ns: string, args: string[], input = ''): { code: number; stdout: string; stderr: string } {
  return sh(inNetns(ns, [PLUGIN, ...args]), input)
}

/** A node: its own netns, data dir and log file, and a conf like install.sh writes. */
export class Node {
  readonly ns: string
  readonly dir: string
  conf: Record<string, unknown>

  constructor(extra: Record<string, unknown> = {}, role = 'node') {
    registerCleanup()
    this.ns = newNetns(role)
    this.dir = join(TMP, this.ns)
    this.conf = {
      cniVersion: '1.0.0',
      name: 'k8s-pod-network',
      type: 'kube-cni',
      network: '10.200.0.0/16',
      subnet: '10.200.1.0/24',
      dataDir: join(this.dir, 'ipam'),
      logFile: join(this.dir, 'kube-cni.log'),
      ...extra,
    }
  }

  pod(): string {
    return newNetns('pod')
  }

  /** Runs the plugin in this node's netns, as a runtime does: a clean environment and the conf on stdin. */
  cni(call: Call, conf: Record<string, unknown> = this.conf) {
    return callPlugin([PLUGIN], call, call.input ?? JSON.stringify(conf), this.ns)
  }

  /** ADD for a fresh pod netns; fails the test if the plugin fails. */
  async addPod(containerId: string, extra: Partial<Call> = {}): Promise<{ pod: string; result: any }> {
    const pod = this.pod()
    const r = await this.cni({ command: 'ADD', containerId, netns: nsPath(pod), ...extra })
    if (r.code !== 0) throw new Error(`ADD ${containerId} failed: ${r.stdout} ${r.stderr}`)
    return { pod, result: r.json }
  }

  ip(...args: string[]): any {
    return ipj(this.ns, ...args)
  }
}

export function ping(fromNs: string, to: string): boolean {
  return sh(inNetns(fromNs, ['ping', '-c', '1', '-W', '2', to])).code === 0
}
