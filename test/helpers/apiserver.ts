// A stand-in for the Kubernetes API server: HTTPS on loopback with a throwaway self-signed certificate, and
// only with the right token or a kubelet's client certificate. It serves the Nodes the way the real one does for what kube-cni asks:
//   GET /api/v1/nodes                       a NodeList with metadata.resourceVersion
//   GET /api/v1/nodes/NAME                  one Node
//   GET /api/v1/nodes?watch=1&resourceVersion=RV[&allowWatchBookmarks=true][&timeoutSeconds=T]
//                                           every change after RV as one JSON line, then live; BOOKMARKs;
//                                           an ERROR 410 event when RV is older than the last expire()
// It lets the in-cluster client, the DaemonSet's init script, install.sh on a kubeadm worker (the kubelet's
// kubeconfig) and the routes agent be tested (and the agent
// benchmarked, bench/agent.ts) without a cluster. startApiServer runs it in this process;
// startApiServerIn runs it in a child process inside a netns, where the agent under test can reach it.
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import type { ServerResponse } from 'node:http'
import { type Server, createServer } from 'node:https'
import type { TLSSocket } from 'node:tls'
import { join } from 'node:path'
import { ROOT, must, nsPath } from './cluster.ts'

export interface Stats {
  requests: string[] // METHOD URL, in order
  lists: number
  watches: number
  bytes: number // body bytes sent, all requests
}

/** What a test or the bench does to the cluster while an agent watches. */
export interface Control {
  add: (node: any) => Promise<void> // or replace: ADDED or MODIFIED
  remove: (name: string) => Promise<void>
  /** Compacts the history: every open watch gets a 410 ERROR event, and so does a watch from an older version. */
  expire: () => Promise<void>
  stats: () => Promise<Stats>
  close: () => void
}

export interface StandIn extends Control {
  env: Record<string, string> // what a pod would have: KUBERNETES_SERVICE_HOST/PORT, and KUBE_CNI_SA_DIR
  kubeconfig: string // a kubeconfig file for the same server, CA and token
  kubeletConf: string // a kubeconfig as kubeadm writes /etc/kubernetes/kubelet.conf on a worker
  requests: string[]
}

const TOKEN = 'stand-in-token'

interface Watcher {
  res: ServerResponse
  bookmarks: boolean
}

export async function startApiServer(dir: string, nodes: { items: any[] }, opts: { bookmarkEveryMs?: number } = {}): Promise<StandIn> {
  const sa = join(dir, 'serviceaccount')
  mkdirSync(sa, { recursive: true })
  must(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=kubernetes',
    '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(dir, 'key.pem'), '-out', join(sa, 'ca.crt')])
  writeFileSync(join(sa, 'token'), `${TOKEN}\n`)
  // The kubelet's client certificate and key in one file, as kubeadm's kubelet-client-current.pem.
  const pem = join(dir, 'kubelet-client-current.pem')
  must(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/O=system:nodes/CN=system:node:worker-1',
    '-keyout', join(dir, 'client-key.pem'), '-out', join(dir, 'client.pem')])
  writeFileSync(pem, readFileSync(join(dir, 'client.pem'), 'utf8') + readFileSync(join(dir, 'client-key.pem'), 'utf8'))

  let rv = 1000
  let compacted = 0
  const store = new Map<string, any>()
  const history: { rv: number; line: string }[] = []
  const watchers = new Set<Watcher>()
  const stats: Stats = { requests: [], lists: 0, watches: 0, bytes: 0 }
  const send = (res: ServerResponse, text: string) => {
    stats.bytes += Buffer.byteLength(text)
    res.write(text)
  }
  const stamp = (node: any) => ({ ...node, metadata: { ...node.metadata, resourceVersion: String(++rv) } })
  for (const n of nodes.items) store.set(n.metadata.name, stamp(n))
  const event = (type: string, object: any) => {
    const line = `${JSON.stringify({ type, object })}\n`
    history.push({ rv, line })
    for (const w of watchers) send(w.res, line)
  }
  const gone = (res: ServerResponse) => {
    send(res, `${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'Expired', code: 410, message: 'too old resource version' } })}\n`)
    res.end()
  }

  const tls = { key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(sa, 'ca.crt')) }
  const server: Server = createServer({ ...tls, requestCert: true, rejectUnauthorized: false, ca: readFileSync(join(dir, 'client.pem')) }, (req, res) => {
    stats.requests.push(`${req.method} ${req.url}`)
    const kubelet = (req.socket as TLSSocket).authorized
    if (req.headers.authorization !== `Bearer ${TOKEN}` && !kubelet) return res.writeHead(401).end('{"kind":"Status","code":401}')
    const url = new URL(req.url ?? '/', 'https://stand-in')
    const one = /^\/api\/v1\/nodes\/([^/]+)$/.exec(url.pathname)
    const reply = (body: unknown) => {
      res.writeHead(200, { 'content-type': 'application/json' })
      send(res, JSON.stringify(body))
      res.end()
    }
    if (req.method !== 'GET' || (url.pathname !== '/api/v1/nodes' && !one)) return res.writeHead(404).end('{"kind":"Status","code":404}')
    if (one) {
      const node = store.get(decodeURIComponent(one[1]))
      return node ? reply(node) : res.writeHead(404).end('{"kind":"Status","code":404}')
    }
    if (!['1', 'true'].includes(url.searchParams.get('watch') ?? '')) {
      stats.lists++
      return reply({ kind: 'NodeList', apiVersion: 'v1', metadata: { resourceVersion: String(rv) }, items: [...store.values()] })
    }
    stats.watches++
    res.writeHead(200, { 'content-type': 'application/json' })
    const from = Number(url.searchParams.get('resourceVersion') || rv)
    if (from < compacted) return gone(res)
    for (const h of history) if (h.rv > from) send(res, h.line)
    const w = { res, bookmarks: url.searchParams.get('allowWatchBookmarks') === 'true' }
    watchers.add(w)
    const timeout = Number(url.searchParams.get('timeoutSeconds') || 0)
    const timer = timeout > 0 ? setTimeout(() => res.end(), timeout * 1000) : undefined
    res.on('close', () => {
      watchers.delete(w)
      clearTimeout(timer)
    })
  })
  const bookmarks = setInterval(() => {
    for (const w of watchers)
      if (w.bookmarks) send(w.res, `${JSON.stringify({ type: 'BOOKMARK', object: { kind: 'Node', apiVersion: 'v1', metadata: { resourceVersion: String(rv) } } })}\n`)
  }, opts.bookmarkEveryMs ?? 5000)
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as { port: number }).port
  const kubeletConf = join(dir, 'kubelet.conf')
  writeFileSync(kubeletConf, `apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: ${tls.cert.toString('base64')}
    server: https://127.0.0.1:${port}
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: system:node:worker-1
  name: system:node:worker-1@kubernetes
current-context: system:node:worker-1@kubernetes
kind: Config
preferences: {}
users:
- name: system:node:worker-1
  user:
    client-certificate: ${pem}
    client-key: ${pem}
`)
  const kubeconfig = join(dir, 'kubeconfig')
  writeFileSync(kubeconfig, `apiVersion: v1
kind: Config
current-context: stand-in
contexts:
- context:
    cluster: stand-in
    user: kube-cni
  name: stand-in
clusters:
- cluster:
    server: "https://127.0.0.1:${port}"
    certificate-authority: serviceaccount/ca.crt # relative to this file, as kubectl reads it
  name: stand-in
users:
  - name: kube-cni
    user:
      token: '${TOKEN}'
`)
  return {
    env: { KUBERNETES_SERVICE_HOST: '127.0.0.1', KUBERNETES_SERVICE_PORT: String(port), KUBE_CNI_SA_DIR: sa },
    kubeconfig,
    kubeletConf,
    requests: stats.requests,
    add: async (node) => {
      const type = store.has(node.metadata.name) ? 'MODIFIED' : 'ADDED'
      const stamped = stamp(node)
      store.set(node.metadata.name, stamped)
      event(type, stamped)
    },
    remove: async (name) => {
      const node = store.get(name)
      if (!node) return
      store.delete(name)
      rv++
      event('DELETED', { ...node, metadata: { ...node.metadata, resourceVersion: String(rv) } })
    },
    expire: async () => {
      compacted = rv
      history.length = 0
      for (const w of watchers) gone(w.res)
    },
    stats: async () => structuredClone(stats),
    close: () => {
      clearInterval(bookmarks)
      for (const w of watchers) w.res.destroy()
      server.close()
    },
  }
}

/**
 * The stand-in in a child process inside a netns (the agent under test runs there, and loopback is per
 * netns). The child is this file run by itself; the test drives it over the IPC channel.
 */
export async function startApiServerIn(ns: string, dir: string, nodes: { items: any[] }): Promise<Control & { kubeconfig: string }> {
  const child: ChildProcess = spawn('nsenter', [`--net=${nsPath(ns)}`, process.execPath, '-r', 'tsx/cjs', __filename, dir], {
    cwd: ROOT,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  })
  let next = 0
  const waiting = new Map<number, { resolve: (v: any) => void; reject: (e: Error) => void }>()
  child.on('message', (m: any) => {
    waiting.get(m.id)?.resolve(m.value)
    waiting.delete(m.id)
  })
  child.on('exit', (code) => {
    for (const w of waiting.values()) w.reject(new Error(`the stand-in API server exited (${code})`))
  })
  const call = (op: string, arg?: unknown) =>
    new Promise<any>((resolve, reject) => {
      const id = ++next
      waiting.set(id, { resolve, reject })
      child.send({ id, op, arg })
    })
  const kubeconfig: string = await call('start', nodes)
  return {
    kubeconfig,
    add: (node) => call('add', node),
    remove: (name) => call('remove', name),
    expire: () => call('expire'),
    stats: () => call('stats'),
    close: () => child.kill('SIGKILL'),
  }
}

if (require.main === module) {
  let api: StandIn | undefined
  process.on('message', async (m: any) => {
    const ops: Record<string, (arg: any) => Promise<unknown>> = {
      start: async (nodes) => (api = await startApiServer(process.argv[2], nodes)).kubeconfig,
      add: (node) => api!.add(node),
      remove: (name) => api!.remove(name),
      expire: () => api!.expire(),
      stats: () => api!.stats(),
    }
    process.send!({ id: m.id, value: await ops[m.op](m.arg) })
  })
  process.on('disconnect', () => process.exit(0))
}

/**
 * Node i of a simulated cluster: `node-i`, InternalIP 172.16.0.0/16 + i + 1, podCIDR the i-th /24 of
 * 10.0.0.0/8. With bulk, it carries what a real Node does besides (labels, conditions, images): about 5 KB.
 */
export function simNode(i: number, bulk = false): any {
  const ip = `172.16.${(i + 1) >> 8}.${(i + 1) & 255}`
  const cidr = `10.${i >> 8}.${i & 255}.0/24`
  const node: any = {
    kind: 'Node',
    apiVersion: 'v1',
    metadata: { name: `node-${i}` },
    spec: { podCIDR: cidr, podCIDRs: [cidr] },
    status: { addresses: [{ type: 'InternalIP', address: ip }, { type: 'Hostname', address: `node-${i}` }] },
  }
  if (!bulk) return node
  const time = '2026-12-01T00:00:00Z'
  node.metadata.uid = `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`
  node.metadata.labels = Object.fromEntries(
    ['arch', 'os', 'hostname', 'instance-type', 'zone', 'region', 'pool', 'role'].map((k) => [`node.kubernetes.io/${k}`, `value-${k}-${i}`]),
  )
  node.metadata.annotations = {
    'kubeadm.alpha.kubernetes.io/cri-socket': 'unix:///run/containerd/containerd.sock',
    'node.alpha.kubernetes.io/ttl': '0',
    'volumes.kubernetes.io/controller-managed-attach-detach': 'true',
  }
  node.status.capacity = { cpu: '8', memory: '32781128Ki', pods: '110', 'ephemeral-storage': '101430960Ki' }
  node.status.allocatable = node.status.capacity
  node.status.conditions = ['MemoryPressure', 'DiskPressure', 'PIDPressure', 'Ready'].map((type) => ({
    type,
    status: type === 'Ready' ? 'True' : 'False',
    lastHeartbeatTime: time,
    lastTransitionTime: time,
    reason: `Kubelet${type === 'Ready' ? 'Ready' : `HasNo${type}`}`,
    message: `kubelet is posting ready status, has sufficient memory, disk and PIDs (${type})`,
  }))
  node.status.nodeInfo = {
    machineID: 'f'.repeat(32), systemUUID: node.metadata.uid, bootID: node.metadata.uid, kernelVersion: '6.1.0-28-amd64',
    osImage: 'Debian GNU/Linux 12 (bookworm)', containerRuntimeVersion: 'containerd://1.7.24', kubeletVersion: 'v1.31.4',
    kubeProxyVersion: 'v1.31.4', operatingSystem: 'linux', architecture: 'amd64',
  }
  node.status.images = Array.from({ length: 14 }, (_, k) => ({
    names: [`registry.k8s.io/image-${k}@sha256:${'0123456789abcdef'.repeat(4)}`, `registry.k8s.io/image-${k}:v1.31.${k}`],
    sizeBytes: 10_000_000 + k,
  }))
  return node
}
