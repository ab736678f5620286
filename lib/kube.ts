// Where kube-cni learns the nodes: a Kubernetes NodeList, exactly as `kubectl get nodes -o json` prints
// it, read from a file, from stdin, by running kubectl, or from the API server: in a pod with its service
// account, on a node with $KUBECONFIG, the kubelet's own (a small client on node's https: GET only, nodes only).
import { readFileSync } from 'node:fs'
import { request } from 'node:https'
import { dirname, join, resolve } from 'node:path'
import { run } from './exec.ts'

/** A Node as the API sends it. A NodeList is untrusted, so routes reads items through the accessors below,
 * which take any shape (null, a string, a Node missing fields) and return only well-formed values. */
export interface KubeNode {
  metadata: { name: string }
  spec?: { podCIDR?: string; podCIDRs?: string[] }
  status?: { addresses?: { type: string; address: string }[] }
}

interface AnyShape {
  metadata?: { name?: unknown }
  spec?: { podCIDR?: unknown; podCIDRs?: unknown }
  status?: { addresses?: unknown }
}

export interface NodeList {
  items: KubeNode[]
}

export function parseNodeList(text: string, source: string): NodeList {
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch (e) {
    throw new Error(`${source} is not JSON: ${(e as Error).message}`)
  }
  if (!doc || !Array.isArray((doc as NodeList).items)) throw new Error(`${source} is not a NodeList: it has no "items" array`)
  return doc as NodeList
}

export function readNodeListFile(path: string): NodeList {
  return parseNodeList(readFileSync(path === '-' ? 0 : path, 'utf8'), path === '-' ? 'stdin' : path)
}

/** From kubectl when asked for, else from the API (in a pod, or with $KUBECONFIG), else from kubectl on PATH. */
export async function readNodeList(opts: { kubectl?: string }): Promise<NodeList> {
  const api = opts.kubectl ? undefined : apiAccess()
  if (api) return parseNodeList(await apiGet('/api/v1/nodes', api), `the API server ${api.server}`)
  return readNodeListKubectl(opts.kubectl ?? 'kubectl')
}

export async function readNode(name: string, opts: { kubectl?: string }): Promise<KubeNode> {
  const api = opts.kubectl ? undefined : apiAccess()
  if (api) return JSON.parse(await apiGet(`/api/v1/nodes/${encodeURIComponent(name)}`, api))
  const r = await run([opts.kubectl ?? 'kubectl', 'get', 'node', name, '-o', 'json'])
  if (r.code !== 0) throw new Error(`kubectl get node ${name} failed: ${r.stderr.trim()}`)
  return JSON.parse(r.stdout)
}

/** Where the API server is, and how this client proves who it is. */
export interface ApiAccess {
  server: URL
  ca?: Buffer
  cert?: Buffer
  key?: Buffer
  token?: string
}

/** The service account's files; KUBE_CNI_SA_DIR moves them, for the test's stand-in API server only. */
const SA_DIR = () => process.env.KUBE_CNI_SA_DIR ?? '/var/run/secrets/kubernetes.io/serviceaccount'

/** In a pod: its service account. On a node: $KUBECONFIG (the routes agent gets the kubelet's own). */
function apiAccess(): ApiAccess | undefined {
  const host = process.env.KUBERNETES_SERVICE_HOST
  if (host) {
    return {
      server: new URL(`https://${host.includes(':') ? `[${host}]` : host}:${process.env.KUBERNETES_SERVICE_PORT ?? '443'}`),
      token: readFileSync(join(SA_DIR(), 'token'), 'utf8').trim(),
      ca: readFileSync(join(SA_DIR(), 'ca.crt')),
    }
  }
  const file = process.env.KUBECONFIG
  // A merged list of kubeconfigs is kubectl's business.
  return file && !file.includes(':') ? kubeconfigAccess(file) : undefined
}

/**
 * What kubeadm writes (kubelet.conf, admin.conf): one cluster, one user, one context, with a client certificate
 * or a token. Those keys are read directly; a kubeconfig with more (several contexts, an exec or auth-provider
 * login, JSON) is left to kubectl, which reads $KUBECONFIG too.
 */
export function kubeconfigAccess(file: string): ApiAccess | undefined {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (e) {
    throw new Error(`cannot read the kubeconfig ${file} (from $KUBECONFIG): ${(e as Error).message}`)
  }
  const values = (key: string) =>
    [...text.matchAll(new RegExp(`^[ \\t]*(?:- )?${key}:[ \\t]*(.*?)[ \\t]*$`, 'gm'))].map((m) => m[1].replace(/^(["'])(.*)\1$/, '$2'))
  const one = (key: string) => values(key)[0] || undefined
  if (values('context').length !== 1 || values('server').length !== 1 || values('exec').length || values('auth-provider').length) return undefined
  // Relative paths in a kubeconfig are relative to the file itself.
  const read = (data?: string, path?: string) => (data ? Buffer.from(data, 'base64') : path ? readFileSync(resolve(dirname(file), path)) : undefined)
  const tokenFile = one('tokenFile')
  return {
    server: new URL(one('server')!),
    ca: read(one('certificate-authority-data'), one('certificate-authority')),
    cert: read(one('client-certificate-data'), one('client-certificate')),
    key: read(one('client-key-data'), one('client-key')),
    token: one('token') ?? (tokenFile ? readFileSync(resolve(dirname(file), tokenFile), 'utf8').trim() : undefined),
  }
}

/** GET a path from the API server the way every client does: its address, its CA, and a token or a certificate. */
export async function apiGet(path: string, api: ApiAccess): Promise<string> {
  const where = `GET ${new URL(path, api.server)}`
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: api.server.hostname.replace(/^\[|\]$/g, ''),
        port: api.server.port || 443,
        path: api.server.pathname.replace(/\/$/, '') + path,
        ca: api.ca,
        cert: api.cert,
        key: api.key,
        headers: { ...(api.token ? { Authorization: `Bearer ${api.token}` } : {}), Accept: 'application/json' },
        timeout: 10_000,
      },
      (res) => {
        let body = ''
        res.setEncoding('utf8').on('data', (d) => (body += d))
        res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`${where}: HTTP ${res.statusCode}: ${body.slice(0, 200)}`))))
      },
    )
    req.on('timeout', () => req.destroy(new Error(`${where}: timed out`)))
    req.on('error', (e) => reject(new Error(`${where}: ${e.message}`)))
    req.end()
  })
}

export async function readNodeListKubectl(kubectl: string): Promise<NodeList> {
  const r = await run([kubectl, 'get', 'nodes', '-o', 'json'])
  if (r.code !== 0) throw new Error(`${kubectl} get nodes -o json failed: ${r.stderr.trim()}`)
  return parseNodeList(r.stdout, `${kubectl} get nodes`)
}

/** metadata.name when it is a name Kubernetes allows (a DNS subdomain), so it is safe in a log line. */
export function nodeName(node: unknown): string | undefined {
  const name = (node as AnyShape | null)?.metadata?.name
  return typeof name === 'string' && name.length <= 253 && /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(name) ? name : undefined
}

/** A node's pod ranges: spec.podCIDRs (dual-stack), falling back to the older single spec.podCIDR. */
export function podCIDRs(node: unknown): string[] {
  const spec = (node as AnyShape | null)?.spec
  const list: unknown[] = Array.isArray(spec?.podCIDRs) && spec.podCIDRs.length ? spec.podCIDRs : [spec?.podCIDR]
  return [...new Set(list.filter((c): c is string => typeof c === 'string'))]
}

export function internalIPs(node: unknown): string[] {
  const addresses = (node as AnyShape | null)?.status?.addresses
  return (Array.isArray(addresses) ? addresses : [])
    .filter((a) => a?.type === 'InternalIP' && typeof a.address === 'string')
    .map((a) => a.address)
}
