// Where `kube-cni routes` learns the nodes: a Kubernetes NodeList, exactly as `kubectl get nodes -o json`
// prints it, read from a file, from stdin, or by running kubectl.
import { readFileSync } from 'node:fs'
import { run } from './exec.ts'

export interface KubeNode {
  metadata: { name: string }
  spec?: { podCIDR?: string; podCIDRs?: string[] }
  status?: { addresses?: { type: string; address: string }[] }
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
  return readNodeListKubectl(opts.kubectl ?? 'kubectl')
}

export async function readNodeListKubectl(kubectl: string): Promise<NodeList> {
  const r = await run([kubectl, 'get', 'nodes', '-o', 'json'])
  if (r.code !== 0) throw new Error(`${kubectl} get nodes -o json failed: ${r.stderr.trim()}`)
  return parseNodeList(r.stdout, `${kubectl} get nodes`)
}

/** A node's pod ranges: spec.podCIDRs (dual-stack), falling back to the older single spec.podCIDR. */
export function podCIDRs(node: KubeNode): string[] {
  const list = node.spec?.podCIDRs?.length ? node.spec.podCIDRs : node.spec?.podCIDR ? [node.spec.podCIDR] : []
  return [...new Set(list)]
}

export function internalIPs(node: KubeNode): string[] {
  return (node.status?.addresses ?? []).filter((a) => a.type === 'InternalIP').map((a) => a.address)
}
