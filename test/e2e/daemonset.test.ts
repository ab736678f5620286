// The DaemonSet of deploy/kube-cni.yaml, run the way a kubelet runs it: its init and main containers, with
// the command, env, volumes and hostNetwork read from the manifest that deploy/manifests.ts renders, under
// containerd 1.6's CRI in a node netns, on a stand-in for node:20-bookworm-slim (minbase + node: no ip, no
// iptables) imported under the manifest's own image name, so nothing is pulled. The node's root is a temp
// dir (minbase + iproute2, like a kind node) that every hostPath maps into; the API server is a stand-in in
// the node netns, reached with the pod's service-account token at its usual path.
import { type ChildProcess, spawn } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { YAML, sleep } from 'zx'
import { renderManifest } from '../../deploy/manifests.ts'
import { Containerd, missingTools } from '../helpers/containerd.ts'
import { PLUGIN, ROOT, TMP, cleanupAll, ipj, nsPath, sh } from '../helpers/cluster.ts'
import type { ContainerConfig, Mount, PodSandboxConfig } from '../helpers/cri.ts'
import { nodeRoot, nodeSlimImage } from '../helpers/image.ts'
import { type Member, nodeList, twoNodes } from '../helpers/topology.ts'

const missing = [...missingTools(), ...(sh(['which', 'mmdebstrap']).code ? ['mmdebstrap'] : []), ...(existsSync(PLUGIN) ? [] : ['dist/kube-cni (npm run build)'])]
if (missing.length) {
  console.error(`\n!!! SKIPPING the DaemonSet test: ${missing.join(', ')} missing (apt-get install containerd runc busybox-static containernetworking-plugins mmdebstrap)\n`)
  if (process.env.CI) throw new Error(`the DaemonSet test cannot run in CI: ${missing.join(', ')} missing`)
}

test.after.each(cleanupAll)

const SA_PATH = '/var/run/secrets/kubernetes.io/serviceaccount'

/** The manifest's documents, from the current bundle: exactly what `npm run manifests` writes. */
function manifest() {
  const docs = YAML.parseAllDocuments(renderManifest(readFileSync(PLUGIN, 'utf8'))).map((d: any) => d.toJS())
  const configMap = docs.find((d: any) => d.kind === 'ConfigMap')
  const podSpec = docs.find((d: any) => d.kind === 'DaemonSet').spec.template.spec
  return { configMap, podSpec }
}

/** The kubelet's `$(VAR)` expansion in command and args: a defined name is replaced, `$$` is `$`. */
const expand = (s: string, env: Record<string, string>) =>
  s.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name?: string) => (m === '$$' ? '$' : name !== undefined && name in env ? env[name] : m))

/**
 * A manifest container as the kubelet hands it to the CRI: env resolved (fieldRef spec.nodeName, ConfigMap
 * keys) plus the service's KUBERNETES_SERVICE_* variables, hostPath volumes under `root`, ConfigMap volumes
 * written to files, the service-account token at its usual path, capabilities added.
 */
function criContainer(c: any, ctx: { podSpec: any; configMap: any; nodeName: string; root: string; dir: string; saDir: string; service: Record<string, string> }): Omit<ContainerConfig, 'image'> & { image: { image: string } } {
  const env: Record<string, string> = { ...ctx.service }
  for (const e of c.env ?? []) {
    const from = e.valueFrom
    if (from?.fieldRef) {
      assert.is(from.fieldRef.fieldPath, 'spec.nodeName', `env ${e.name}: only spec.nodeName is resolved here`)
      env[e.name] = ctx.nodeName
    } else if (from?.configMapKeyRef) {
      assert.is(from.configMapKeyRef.name, ctx.configMap.metadata.name)
      env[e.name] = ctx.configMap.data[from.configMapKeyRef.key]
    } else env[e.name] = expand(e.value ?? '', env)
  }
  const mounts: Mount[] = (c.volumeMounts ?? []).map((m: any) => {
    const v = ctx.podSpec.volumes.find((x: any) => x.name === m.name)
    if (v.hostPath) return { container_path: m.mountPath, host_path: join(ctx.root, v.hostPath.path), readonly: !!m.readOnly }
    assert.is(v.configMap?.name, ctx.configMap.metadata.name, `volume ${v.name}: only the kube-cni ConfigMap is mapped here`)
    const dir = join(ctx.dir, 'volumes', v.name)
    mkdirSync(dir, { recursive: true })
    for (const item of v.configMap.items) writeFileSync(join(dir, item.path), ctx.configMap.data[item.key])
    return { container_path: m.mountPath, host_path: dir, readonly: true }
  })
  mounts.push({ container_path: SA_PATH, host_path: ctx.saDir, readonly: true })
  const add = c.securityContext?.capabilities?.add
  return {
    metadata: { name: c.name, attempt: 0 },
    image: { image: c.image },
    command: (c.command ?? []).map((s: string) => expand(s, env)),
    args: (c.args ?? []).map((s: string) => expand(s, env)),
    envs: Object.entries(env).map(([key, value]) => ({ key, value })),
    mounts,
    log_path: `${c.name}.log`,
    ...(add ? { linux: { security_context: { capabilities: { add_capabilities: add } } } } : {}),
  }
}

/**
 * The stand-in API server inside the node netns (the pod shares it and reaches it at 127.0.0.1), in a
 * child process: this process cannot listen in another netns.
 */
async function apiInNetns(m: Member, dir: string, nodes: object): Promise<{ env: Record<string, string>; saDir: string; proc: ChildProcess }> {
  const code = `require('./test/helpers/apiserver.ts').startApiServer(process.argv[1], JSON.parse(process.argv[2])).then((a) => console.log(JSON.stringify(a.env)))`
  const proc = spawn('nsenter', [`--net=${nsPath(m.node.ns)}`, process.execPath, '-r', 'tsx/cjs', '-e', code, dir, JSON.stringify(nodes)], {
    cwd: ROOT,
    env: { ...process.env, TMPDIR: dir }, // its own cluster.ts temp dir lands in ours
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const line = await new Promise<string>((resolve, reject) => {
    let out = ''
    proc.stdout!.on('data', (d) => {
      out += d
      if (out.includes('\n')) resolve(out.split('\n')[0])
    })
    proc.on('exit', (code) => reject(new Error(`the stand-in API server exited (${code})`)))
  })
  const { KUBE_CNI_SA_DIR, ...env } = JSON.parse(line)
  return { env, saDir: KUBE_CNI_SA_DIR, proc }
}

/**
 * containerd sees the node's root as a node's runtime does: the plugin's shebang names
 * /opt/cni/bin/kube-cni.d/node, and the plugin's defaults write /run/kube-cni and /var/log/kube-cni.log.
 * The harness starts `containerd` from PATH; this one, first on PATH, runs it in a mount namespace of its own
 * where /opt and /var/log are the temp root's and /run is empty, so nothing of this machine's is used or
 * changed (`--propagation private`: no mount made in there propagates out).
 */
function nodeMountNamespace(root: string, dir: string): string {
  const bin = join(dir, 'bin')
  mkdirSync(bin, { recursive: true })
  const containerd = sh(['which', 'containerd']).stdout.trim()
  writeFileSync(join(bin, 'containerd'), `#!/bin/sh
exec unshare --mount --propagation private /bin/sh -c 'mount --bind "$0/opt" /opt && mount --bind "$0/var/log" /var/log && mount -t tmpfs tmpfs /run && exec ${containerd} "$@"' ${root} "$@"
`, { mode: 0o755 })
  return bin
}

async function until<T>(what: string, f: () => Promise<T | undefined> | T | undefined, fail: () => string, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await f()
    if (v !== undefined) return v
    if (Date.now() > deadline) throw new Error(`${what}: not after ${timeoutMs / 1000} s\n${fail()}`)
    await sleep(250)
  }
}

interface DaemonSetNode {
  cd: Containerd
  a: Member
  b: Member
  root: string
  pod: PodSandboxConfig
  sandbox: string
  /** Runs one of the manifest's containers in the DaemonSet pod, as the kubelet would; returns its id. */
  run: (c: any) => Promise<string>
  log: (c: any) => string
}

/**
 * Node a of two (one L2 segment), its root unpacked by `makeRoot` with the reference loopback and portmap
 * in /opt/cni/bin as on a kind node (containerd needs loopback), the stand-in API server serving both
 * nodes, containerd in a's netns with no conflist yet, and the DaemonSet's pod sandbox (hostNetwork as the
 * manifest says). `body` runs the manifest's containers in it; everything is torn down after.
 */
async function daemonSetNode(makeRoot: (dir: string) => string, body: (n: DaemonSetNode) => Promise<void>): Promise<void> {
  const { a, b } = twoNodes()
  const dir = join(TMP, `daemonset-${a.node.ns}`)
  const root = makeRoot(join(dir, 'node-root'))
  mkdirSync(join(root, 'opt/cni/bin'), { recursive: true })
  mkdirSync(join(root, 'etc/cni/net.d'), { recursive: true })
  for (const p of ['loopback', 'portmap']) copyFileSync(`/usr/lib/cni/${p}`, join(root, 'opt/cni/bin', p))
  const { configMap, podSpec } = manifest()
  const api = await apiInNetns(a, join(dir, 'api'), nodeList([a, b]))
  const savedPath = process.env.PATH
  process.env.PATH = `${nodeMountNamespace(root, dir)}:${savedPath}`
  let cd: Containerd | undefined
  try {
    cd = await Containerd.start(a.node, { conflist: null, confDir: join(root, 'etc/cni/net.d'), binDir: '/opt/cni/bin', images: [nodeSlimImage()] })
    const ctx = { podSpec, configMap, nodeName: a.name, root, dir, saDir: api.saDir, service: api.env }
    const pod = cd.podConfig('kube-cni', { hostNetwork: podSpec.hostNetwork, namespace: 'kube-cni' })
    const sandbox = await cd.runPod(pod)
    const node = cd
    await body({
      cd, a, b, root, pod, sandbox,
      run: (c) => node.runContainer(sandbox, pod, criContainer(c, ctx)),
      log: (c) => node.containerLog(pod, c.name),
    })
  } finally {
    process.env.PATH = savedPath
    api.proc.kill()
    await cd?.stop()
  }
}

test('the DaemonSet under containerd: the init container installs kube-cni, a pod gets its IP from it, the routes container adds the route to the other node', async () => {
  if (missing.length) return
  const { podSpec } = manifest()
  assert.is(podSpec.hostNetwork, true)
  const [init] = podSpec.initContainers
  const [routes] = podSpec.containers
  await daemonSetNode(nodeRoot, async ({ cd, a, b, root, run, log }) => {
    // The init container, then the pod network.
    const st = await cd.waitExited(await run(init))
    assert.is(st.exit_code, 0, log(init))
    assert.match(log(init), `kube-cni installed on ${a.name}`)
    assert.ok(readFileSync(join(root, 'opt/cni/bin/kube-cni'), 'utf8').startsWith('#!/opt/cni/bin/kube-cni.d/node\n'))
    const conf = JSON.parse(readFileSync(join(root, 'etc/cni/net.d/10-kube-cni.conflist'), 'utf8'))
    assert.equal(conf.plugins.map((p: any) => [p.type, p.subnet]), [['kube-cni', a.subnets[0]], ['portmap', undefined]])
    await until('NetworkReady', async () => ((await cd.cri.status()).NetworkReady?.status ? true : undefined), () => cd.logTail())
    const webId = await cd.runPod(cd.podConfig('web'))
    const { status, info } = await cd.cri.podSandboxStatus(webId)
    assert.match(status.network?.ip ?? '', /^10\.200\.1\.\d+$/, 'the pod IP is from the node\'s podCIDR')
    const [eth0] = JSON.parse(sh(['nsenter', '-t', String(info.pid), '-n', 'ip', '-j', '-4', 'addr', 'show', 'dev', 'eth0']).stdout || '[]')
    assert.equal(eth0?.addr_info.map((x: any) => x.local), [status.network!.ip], 'the sandbox netns has that IP on eth0')
    assert.match(readFileSync(join(root, 'var/log/kube-cni.log'), 'utf8'), /ADD/, 'kube-cni logged the ADD on the node')

    // The routes container's first reconcile.
    const routesId = await run(routes)
    const route = await until(
      `the route to ${b.name}'s podCIDR`,
      async () => {
        const found = ipj(a.node.ns, 'route', 'show', 'proto', '211').find((r: any) => r.dst === b.subnets[0])
        if (found) return found
        const c = await cd.cri.containerStatus(routesId)
        if (c.state === 'CONTAINER_EXITED') throw new Error(`the routes container exited (${c.exit_code}):\n${log(routes)}`)
      },
      () => log(routes),
    )
    assert.is(route.gateway, b.ips[0])
    assert.is((await cd.cri.containerStatus(routesId)).state, 'CONTAINER_RUNNING', log(routes))
  })
})

test('on a node without iproute2 or libstdc++ both containers stop at once, saying what to install', async () => {
  if (missing.length) return
  const { podSpec } = manifest()
  const bare = (dir: string) => {
    nodeRoot(dir, [])
    const libs = join(dir, 'usr/lib/x86_64-linux-gnu')
    for (const lib of readdirSync(libs).filter((f) => f.startsWith('libstdc++.so'))) rmSync(join(libs, lib))
    return dir
  }
  await daemonSetNode(bare, async ({ cd, root, run, log }) => {
    const [init] = podSpec.initContainers
    const st = await cd.waitExited(await run(init))
    assert.is(st.exit_code, 1, log(init))
    assert.match(log(init), /the node cannot run the node binary copied to \/opt\/cni\/bin\/kube-cni\.d\/node: it needs glibc >= 2\.28, libstdc\+\+\.so\.6/)
    assert.not.ok(existsSync(join(root, 'opt/cni/bin/kube-cni')), 'no plugin that would fail at every pod start')
    const [routes] = podSpec.containers
    const rt = await cd.waitExited(await run(routes))
    assert.is(rt.exit_code, 1, log(routes))
    assert.match(log(routes), /this node has no 'ip' .*install iproute2 on the node/)
  })
})

test.run()
