// Where kube-cni learns the nodes: a Kubernetes NodeList, exactly as `kubectl get nodes -o json` prints
// it, read from a file, from stdin, by running kubectl, or, inside a pod, from the API server with the
// pod's service account (a small client on node's https: GET only, nodes only).
import { readFileSync } from 'node:fs'
import { request } from 'node:https'
import { join } from 'node:path'
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

/** From kubectl when asked for, else from the API when running in a pod, else from kubectl on PATH. */
export async function readNodeList(opts: { kubectl?: string }): Promise<NodeList> {
  if (!opts.kubectl && process.env.KUBERNETES_SERVICE_HOST) return parseNodeList(await apiGet('/api/v1/nodes'), 'the API server')
  return readNodeListKubectl(opts.kubectl ?? 'kubectl')
}

export async function readNode(name: string, opts: { kubectl?: string }): Promise<KubeNode> {
  if (!opts.kubectl && process.env.KUBERNETES_SERVICE_HOST) return JSON.parse(await apiGet(`/api/v1/nodes/${encodeURIComponent(name)}`))
  const r = await run([opts.kubectl ?? 'kubectl', 'get', 'node', name, '-o', 'json'])
  if (r.code !== 0) throw new Error(`kubectl get node ${name} failed: ${r.stderr.trim()}`)
  return JSON.parse(r.stdout)
}

/** The service account's files; KUBE_CNI_SA_DIR moves them, for the test's stand-in API server only. */
const SA_DIR = () => process.env.KUBE_CNI_SA_DIR ?? '/var/run/secrets/kubernetes.io/serviceaccount'

/** GET a path from the API server the way every in-cluster client does: its service, token and CA. */
export async function apiGet(path: string): Promise<string> {
  const host = process.env.KUBERNETES_SERVICE_HOST!
  const port = process.env.KUBERNETES_SERVICE_PORT ?? '443'
  const token = readFileSync(join(SA_DIR(), 'token'), 'utf8').trim()
  const ca = readFileSync(join(SA_DIR(), 'ca.crt'))
  return new Promise((resolve, reject) => {
    const req = request(
      { host, port, path, ca, headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' }, timeout: 10_000 },
      (res) => {
        let body = ''
        res.setEncoding('utf8').on('data', (d) => (body += d))
        res.on('end', () =>
          res.statusCode === 200 ? resolve(body) : reject(new Error(`GET https://${host}:${port}${path}: HTTP ${res.statusCode}: ${body.slice(0, 200)}`)),
        )
      },
    )
    req.on('timeout', () => req.destroy(new Error(`GET https://${host}:${port}${path}: timed out`)))
    req.on('error', reject)
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
