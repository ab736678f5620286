// Network-namespace fixtures for the end-to-end tests: a "node" netns per test, "pod" netns inside it, and
// the plugin called exactly as a container runtime calls it (exec'd in the node netns, CNI_* variables,
// the netconf on stdin). Every netns has this process's unique prefix and is deleted at exit, even when a
// test fails or the process is interrupted; nothing is ever created in the root netns.
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export const ROOT = join(__dirname, '..', '..')
export const PLUGIN = process.env.KUBE_CNI_PLUGIN ?? join(ROOT, 'dist', 'kube-cni')
export const PREFIX = `kct${process.pid}-`
export const TMP = mkdtempSync(join(tmpdir(), PREFIX))
const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

const created = new Set<string>()
let counter = 0

export function sh(argv: string[], input = ''): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(argv[0], argv.slice(1), { input, encoding: 'utf8' })
  return { code: r.status ?? 1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' }
}

/** Like sh, but the test fails when the command does. */
export function must(argv: string[], input = ''): string {
  const r = sh(argv, input)
  if (r.code !== 0) throw new Error(`${argv.join(' ')} failed: ${r.stderr}`)
  return r.stdout
}

export function newNetns(role: string): string {
  const name = `${PREFIX}${role}${++counter}`
  must(['ip', 'netns', 'add', name])
  created.add(name)
  must(['ip', '-n', name, 'link', 'set', 'lo', 'up'])
  return name
}

export function delNetns(name: string): void {
  // Processes inside (echo servers) would outlive the netns's name; end them first.
  for (const pid of sh(['ip', 'netns', 'pids', name]).stdout.split('\n').filter(Boolean)) sh(['kill', '-KILL', pid])
  sh(['ip', 'netns', 'del', name])
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

export const nsPath = (name: string) => `/var/run/netns/${name}`

export interface PluginResult {
  code: number
  json: any
  stdout: string
  stderr: string
}

export interface Call {
  command: string
  containerId?: string
  netns?: string // a path, as runtimes pass it
  ifname?: string
  args?: string
  env?: Record<string, string>
  input?: string // raw stdin, instead of the node's conf
}

/** Runs `kube-cni <args>` (not as a CNI plugin) inside a netns. */
export function kubeCni(ns: string, args: string[], input = ''): { code: number; stdout: string; stderr: string } {
  return sh(['nsenter', `--net=${nsPath(ns)}`, PLUGIN, ...args], input)
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
  cni(call: Call, conf: Record<string, unknown> = this.conf): Promise<PluginResult> & { pid?: number; kill: () => void } {
    let child: ReturnType<typeof spawn> | undefined
    const done = new Promise<PluginResult>((resolve) => {
      const env: Record<string, string> = {
        PATH,
        CNI_COMMAND: call.command,
        CNI_CONTAINERID: call.containerId ?? '',
        CNI_NETNS: call.netns ?? '',
        CNI_IFNAME: call.ifname ?? 'eth0',
        CNI_PATH: '/opt/cni/bin',
        ...(call.args ? { CNI_ARGS: call.args } : {}),
        ...call.env,
      }
      // nsenter execs the plugin in place, so the child's pid is the plugin's.
      child = spawn('nsenter', [`--net=${nsPath(this.ns)}`, PLUGIN], { env, stdio: ['pipe', 'pipe', 'pipe'] })
      let stdout = ''
      let stderr = ''
      child.stdout!.on('data', (d) => (stdout += d))
      child.stderr!.on('data', (d) => (stderr += d))
      child.stdin!.on('error', () => {})
      child.stdin!.end(call.input ?? JSON.stringify(conf))
      child.on('close', (code) => {
        let json: any
        try {
          json = stdout.trim() ? JSON.parse(stdout) : undefined
        } catch {
          json = undefined
        }
        resolve({ code: code ?? 1, json, stdout, stderr })
      })
    })
    return Object.assign(done, { pid: child?.pid, kill: () => child?.kill('SIGKILL') })
  }

  /** ADD for a fresh pod netns; fails the test if the plugin fails. */
  async addPod(containerId: string, extra: Partial<Call> = {}): Promise<{ pod: string; result: any }> {
    const pod = this.pod()
    const r = await this.cni({ command: 'ADD', containerId, netns: nsPath(pod), ...extra })
    if (r.code !== 0) throw new Error(`ADD ${containerId} failed: ${r.stdout} ${r.stderr}`)
    return { pod, result: r.json }
  }

  ip(...args: string[]): any {
    return JSON.parse(must(['ip', '-n', this.ns, '-j', ...args]) || '[]')
  }
}

/** `ip -j` inside any netns by name. */
export function ipj(ns: string, ...args: string[]): any {
  return JSON.parse(must(['ip', '-n', ns, '-j', ...args]) || '[]')
}

export function ping(fromNs: string, to: string): boolean {
  return sh(['ip', 'netns', 'exec', fromNs, 'ping', '-c', '1', '-W', '2', to]).code === 0
}
