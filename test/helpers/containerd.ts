// containerd 1.6's CRI plugin, run as a node's runtime for a test: started with `nsenter --net=<node netns>`
// (not `ip netns exec`, whose private mount namespace would hide the sandbox netns mounts), with its own root,
// state, socket, opt and runc dirs under the test's temp dir, so a system containerd is never touched; the
// sandboxes' netns are pinned in its state dir, not /run/netns; shims still put their sockets in
// /run/containerd/s (removed with them). No registry: the busybox image (test/helpers/oci.ts) is the
// sandbox image, imported with ctr. Pods go in a cgroup_parent of this instance's own, removed at stop.
import { spawn, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, rmdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Node, PREFIX, TMP, nsPath, sh } from './cluster.ts'
import { Cri, type ContainerConfig, type ContainerStatus, type PodSandboxConfig } from './cri.ts'
import { binDir, writeConflist } from './libcni.ts'
import { BUSYBOX, IMAGE, buildImage } from './oci.ts'
import { sleep } from 'zx'

export { IMAGE }
export const NAMESPACE = 'k8s.io' // the CRI plugin's containerd namespace
const CGROUPS = '/sys/fs/cgroup'
const SHIM_SOCKETS = '/run/containerd/s'
const CNI_CACHE = '/var/lib/cni/results'

/** The Debian packages this machine lacks to run containerd's CRI (empty when none). */
export function missingTools(): string[] {
  const tools = [['containerd', 'containerd'], ['ctr', 'containerd'], ['containerd-shim-runc-v2', 'containerd'], ['runc', 'runc'], ['nsenter', 'util-linux']]
  const files = [[BUSYBOX, 'busybox-static'], ['/usr/lib/cni/loopback', 'containernetworking-plugins'], ['/usr/lib/cni/portmap', 'containernetworking-plugins']]
  const lacking = [...tools.filter(([t]) => sh(['which', t]).code !== 0), ...files.filter(([f]) => !existsSync(f))]
  return [...new Set(lacking.map(([, pkg]) => pkg))]
}

/** kube-cni with the node's conf, chained with the reference portmap, as install.sh and the DaemonSet write it. */
export function kubeCniConflist(node: Node): object {
  const { cniVersion, name, type: _t, ...kube } = node.conf
  return { cniVersion, name, plugins: [{ type: 'kube-cni', ...kube }, { type: 'portmap', capabilities: { portMappings: true }, snat: true }] }
}

export interface ContainerdOptions {
  /** Written as conf_dir's only file. Default: kubeCniConflist(node); null leaves conf_dir empty, for a test
   *  whose own containers install the conflist (NetworkReady stays false until then). */
  conflist?: object | null
  /** conf_dir and bin_dir; default: a fresh conf dir, and libcni.ts's bin dir (kube-cni, loopback, portmap). */
  confDir?: string
  binDir?: string
  /** More oci-archives to import (oci.ts ociArchive), each under the name in its index. */
  images?: string[]
}

let instances = 0
const running = new Set<Containerd>()
let exitHook = false

export class Containerd {
  readonly dir: string
  readonly socket: string
  readonly confDir: string
  readonly binDir: string
  readonly cgroupParent: string // cgroupfs path, the same in every hierarchy
  readonly logFile: string
  cri: Cri
  private proc?: ChildProcess
  private pods = 0

  private constructor(readonly node: Node, opts: ContainerdOptions) {
    const n = ++instances
    this.dir = join(TMP, `containerd${n}`)
    this.socket = join(this.dir, 'containerd.sock')
    this.confDir = opts.confDir ?? join(this.dir, 'net.d')
    this.binDir = opts.binDir ?? binDir()
    this.cgroupParent = `/${PREFIX}cri${n}`
    this.logFile = join(this.dir, 'containerd.log')
    mkdirSync(join(this.dir, 'logs'), { recursive: true })
    mkdirSync(this.confDir, { recursive: true })
    if (opts.conflist !== null) writeConflist(this.confDir, opts.conflist ?? kubeCniConflist(node))
    writeFileSync(join(this.dir, 'config.toml'), this.config())
    this.cri = new Cri(this.socket)
  }

  /** Starts containerd in the node's netns and imports the sandbox image (and `opts.images`). */
  static async start(node: Node, opts: ContainerdOptions = {}): Promise<Containerd> {
    const missing = missingTools()
    if (missing.length) throw new Error(`containerd's CRI cannot run here: apt-get install ${missing.join(' ')}`)
    if (!exitHook) {
      exitHook = true
      // Last resort when a test dies without stop(): nothing of ours may outlive the process. Before
      // cluster.ts's own exit hook, which deletes the node netns and the temp dir under containerd's mounts.
      process.prependListener('exit', () => running.forEach((c) => c.kill()))
    }
    const c = new Containerd(node, opts)
    running.add(c)
    try {
      await c.launch()
      const image = join(TMP, 'containerd-image')
      const archive = existsSync(join(image, 'image.tar')) ? join(image, 'image.tar') : buildImage(image, { cmd: ['sleep', '999999999'] })
      for (const a of [archive, ...(opts.images ?? [])]) c.ctr('images', 'import', '--snapshotter', 'native', a)
    } catch (e) {
      c.kill()
      throw e
    }
    return c
  }

  private config(): string {
    const d = this.dir
    const cri = 'plugins."io.containerd.grpc.v1.cri"'
    return `version = 2
root = "${d}/root"
state = "${d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "${this.socket}"

[ttrpc]
  address = "${this.socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "${d}/opt"

[${cri}]
  sandbox_image = "${IMAGE}"
  # This VM forbids lowering oom_score_adj; without this runc fails every sandbox.
  restrict_oom_score_adj = true
  # Sandbox netns in this instance's state dir, not /run/netns: a killed test leaves none behind.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

[${cri}.cni]
  bin_dir = "${this.binDir}"
  conf_dir = "${this.confDir}"
  max_conf_num = 1

[${cri}.containerd]
  snapshotter = "native"
  default_runtime_name = "runc"

[${cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[${cri}.containerd.runtimes.runc.options]
  Root = "${d}/runc"
  SystemdCgroup = false
`
  }

  private async launch(): Promise<void> {
    const log = openSync(this.logFile, 'a')
    // nsenter execs containerd in place: the child's pid is containerd's.
    const proc = spawn('nsenter', [`--net=${nsPath(this.node.ns)}`, 'containerd', '--config', join(this.dir, 'config.toml')], { stdio: ['ignore', log, log] })
    closeSync(log)
    this.proc = proc
    let exited = false
    const exit = new Promise<never>((_, reject) => proc.once('exit', (code, signal) => {
      exited = true
      reject(new Error(`containerd exited (${code ?? signal})`))
    }))
    exit.catch(() => {})
    // A fresh channel: after a restart the old one may sit in its reconnect backoff.
    this.cri.close()
    this.cri = new Cri(this.socket)
    const deadline = Date.now() + 30_000
    for (;;) {
      try {
        // The CRI plugin answers "server is not initialized yet" for a moment after the socket is up.
        if ((await Promise.race([this.cri.status(), exit])).RuntimeReady?.status) return
      } catch (e) {
        if (exited || Date.now() > deadline) throw new Error(`containerd did not become ready: ${(e as Error).message}\n${this.logTail()}`)
      }
      await sleep(200)
    }
  }

  logTail(lines = 30): string {
    return existsSync(this.logFile) ? readFileSync(this.logFile, 'utf8').split('\n').slice(-lines).join('\n') : ''
  }

  /** `ctr` on this instance's socket and namespace; throws with its output on failure. */
  ctr(...args: string[]): string {
    const r = sh(['ctr', '--address', this.socket, '--namespace', NAMESPACE, ...args])
    if (r.code !== 0) throw new Error(`ctr ${args.join(' ')} failed: ${r.stderr}`)
    return r.stdout
  }

  /** A pod's sandbox config as the kubelet builds it: metadata, hostname, log dir, this instance's cgroup parent.
   *  `hostNetwork` gives the sandbox the node's netns (no CNI call) and, as runc needs then, no hostname;
   *  `privileged` is what the kubelet sets when any container of the pod is privileged (containerd refuses a
   *  privileged container in a sandbox without it). */
  podConfig(name: string, opts: { hostNetwork?: boolean; privileged?: boolean; portMappings?: PodSandboxConfig['port_mappings']; namespace?: string } = {}): PodSandboxConfig {
    const uid = `${PREFIX}${name}-${++this.pods}`
    return {
      metadata: { name, uid, namespace: opts.namespace ?? 'default', attempt: 0 },
      ...(opts.hostNetwork ? {} : { hostname: name }),
      log_directory: join(this.dir, 'logs', uid),
      port_mappings: opts.portMappings ?? [],
      labels: { 'kube-cni-test': PREFIX },
      linux: {
        cgroup_parent: this.cgroupParent,
        security_context: {
          namespace_options: { network: opts.hostNetwork ? 'NODE' : 'POD', pid: 'CONTAINER', ipc: 'POD' },
          privileged: opts.privileged ?? false,
        },
      },
    }
  }

  /** RunPodSandbox: the sandbox's id. */
  runPod(config: PodSandboxConfig): Promise<string> {
    return this.cri.runPodSandbox(config)
  }

  /** The path of the sandbox's netns (pinned under this instance's state dir), or '' for a hostNetwork pod. */
  async netnsOf(id: string): Promise<string> {
    const { info } = await this.cri.podSandboxStatus(id)
    const ns = (info.runtimeSpec?.linux?.namespaces ?? []).find((n: { type: string }) => n.type === 'network')
    return ns?.path ?? ''
  }

  /** CreateContainer + StartContainer, as the kubelet does for each container of a pod; logs go to
   *  `<log_directory>/<name>.log` (see containerLog). */
  async runContainer(sandboxId: string, pod: PodSandboxConfig, config: Omit<ContainerConfig, 'image'> & { image?: ContainerConfig['image'] }): Promise<string> {
    const full: ContainerConfig = { image: { image: IMAGE }, log_path: `${config.metadata.name}.log`, ...config }
    const id = await this.cri.createContainer(sandboxId, full, pod)
    await this.cri.startContainer(id)
    return id
  }

  /** Waits until a container has exited (an init container, a one-shot client); returns its status. */
  async waitExited(id: string, timeoutMs = 60_000): Promise<ContainerStatus> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const st = await this.cri.containerStatus(id)
      if (st.state === 'CONTAINER_EXITED') return st
      if (Date.now() > deadline) throw new Error(`container ${st.metadata?.name ?? id} still ${st.state} after ${timeoutMs} ms`)
      await sleep(200)
    }
  }

  /** A container's log as the CRI writes it: "<time> stdout|stderr F <line>" per line. */
  containerLog(pod: PodSandboxConfig, name: string): string {
    const file = join(pod.log_directory!, `${name}.log`)
    return existsSync(file) ? readFileSync(file, 'utf8') : ''
  }

  /** Stops containerd (pods and their shims stay up) and starts it again on the same state. */
  async restart(): Promise<void> {
    await this.terminate()
    await this.launch()
  }

  private async terminate(): Promise<void> {
    const p = this.proc
    if (!p || p.exitCode !== null || p.signalCode !== null) return
    const gone = new Promise((r) => p.once('exit', r))
    p.kill('SIGTERM')
    const timer = setTimeout(() => p.kill('SIGKILL'), 10_000)
    await gone
    clearTimeout(timer)
  }

  /** Stops and removes every pod through the CRI (so the CNI DELs run), then containerd, then its files and
   *  cgroups. Throws when a pod could not be removed, after cleaning up anyway. */
  async stop(): Promise<void> {
    const errors: string[] = []
    if (this.proc?.exitCode === null) {
      try {
        for (const pod of await this.cri.listPodSandbox()) {
          await this.cri.stopPodSandbox(pod.id).catch((e) => errors.push(e.message))
          await this.cri.removePodSandbox(pod.id).catch((e) => errors.push(e.message))
        }
      } catch (e) {
        errors.push((e as Error).message)
      }
    }
    await this.terminate()
    this.kill()
    if (errors.length) throw new Error(`containerd stop: ${errors.join('; ')}`)
  }

  /** Synchronous teardown: containerd, its shims and containers, its mounts (the netns among them), cgroups, files. */
  private kill(): void {
    running.delete(this)
    this.cri.close()
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL')
    const runcRoot = join(this.dir, 'runc', NAMESPACE)
    const ids = existsSync(runcRoot) ? readdirSync(runcRoot) : []
    for (const id of ids) sh(['runc', '--root', runcRoot, 'delete', '--force', id])
    // The shims name this instance's socket on their command line; nothing else does.
    for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
      let cmd = ''
      try {
        cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8')
      } catch {
        continue
      }
      if (cmd.split('\0')[0].includes('containerd-shim') && cmd.split('\0').includes(this.socket)) sh(['kill', '-KILL', pid])
    }
    // A killed shim leaves its socket, named as containerd 1.6 names it: sha256 of <address>/<namespace>/<id>.
    for (const id of ids) rmSync(join(SHIM_SOCKETS, createHash('sha256').update(join(this.socket, NAMESPACE, id)).digest('hex')), { force: true })
    // libcni's cached results of pods that never got their DEL, named <network>-<sandbox id>-<ifname>.
    const cached = existsSync(CNI_CACHE) ? readdirSync(CNI_CACHE) : []
    for (const f of cached.filter((f) => ids.some((id) => f.includes(`-${id}-`)))) rmSync(join(CNI_CACHE, f), { force: true })
    // The sandboxes' netns are pinned under the state dir too (netns_mounts_under_state_dir).
    for (const mnt of readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m) => m?.startsWith(this.dir)).reverse()) sh(['umount', '-l', mnt])
    this.removeCgroups()
    rmSync(this.dir, { recursive: true, force: true })
  }

  private removeCgroups(): void {
    for (const hierarchy of existsSync(CGROUPS) ? readdirSync(CGROUPS) : []) {
      const dir = join(CGROUPS, hierarchy, this.cgroupParent)
      if (!existsSync(dir)) continue
      // Leftover per-container cgroups first (each is empty once its processes are gone).
      for (const child of readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory())) {
        try {
          rmdirSync(join(dir, child.name))
        } catch {}
      }
      try {
        rmdirSync(dir)
      } catch {}
    }
  }
}
