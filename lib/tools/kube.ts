// Where kube-cni learns the nodes: a Kubernetes NodeList, exactly as `kubectl get nodes -o json` prints
// it, read from a file, from stdin, by running kubectl, or from the API server: in a pod with its service
// account, else with a kubeconfig (--kubeconfig, or $KUBECONFIG: on a node, the kubelet's own). A small client
// on node's https: GET and watch, nodes only.
import type { IncomingMessage } from 'node:http'
import { readFileSync } from 'node:fs'
import { request } from 'node:https'
import { dirname, join, resolve } from 'node:path'
import { run } from '../plugin/exec.ts'

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

export interface NodeSource {
  'nodes-json'?: string
  kubectl?: string
  kubeconfig?: string
}

/**
 * The NodeList source a command line names, for `routes` and `doctor` alike: the reader, and the flags that
 * name the same source again (doctor's fix lines run `kube-cni routes` with them). At most one may be given.
 */
export function nodeSource(o: NodeSource): { read: () => Promise<NodeList>; flags: string[] } {
  const given = (['nodes-json', 'kubectl', 'kubeconfig'] as const).filter((k) => o[k] !== undefined)
  if (given.length > 1) throw new Error('give one source of nodes: --nodes-json, --kubectl or --kubeconfig')
  const flags = given.flatMap((k) => [`--${k}`, o[k]!])
  if (o['nodes-json'] !== undefined) return { read: async () => readNodeListFile(o['nodes-json']!), flags }
  return { read: () => readNodeList({ kubectl: o.kubectl, kubeconfig: o.kubeconfig }), flags }
}

/** From kubectl when asked for, else from the API (a kubeconfig, or in a pod), else from kubectl on PATH. */
export async function readNodeList(opts: { kubectl?: string; kubeconfig?: string }): Promise<NodeList> {
  const api = apiServerFor(opts)
  if (api) return parseNodeList(await apiGet(api, '/api/v1/nodes'), 'the API server')
  return readNodeListKubectl(opts.kubectl ?? 'kubectl')
}

export async function readNode(name: string, opts: { kubectl?: string }): Promise<KubeNode> {
  const api = apiServerFor(opts)
  if (api) return JSON.parse(await apiGet(api, `/api/v1/nodes/${encodeURIComponent(name)}`))
  const r = await run([opts.kubectl ?? 'kubectl', 'get', 'node', name, '-o', 'json'])
  if (r.code !== 0) throw new Error(`kubectl get node ${name} failed: ${r.stderr.trim()}`)
  return JSON.parse(r.stdout)
}

// ---- the API client ----------------------------------------------------------------------------------

/** Where the API server is and how to prove who we are: what a kubeconfig or a service account gives. */
export interface ApiServer {
  host: string
  port: number
  ca?: Buffer
  // Both read on every request: a service account's bound token, and a kubelet's client certificate
  // (/var/lib/kubelet/pki/kubelet-client-current.pem), are rotated under a long-running agent.
  clientCert?: () => { cert: Buffer; key: Buffer }
  token?: () => string
  insecure?: boolean
}

/**
 * --kubeconfig when given; else, unless kubectl was asked for, the service account in a pod, or $KUBECONFIG
 * (one file) on a node. A $KUBECONFIG that needs what only kubectl does (an exec or auth-provider login) is
 * left to kubectl, which reads it too.
 */
export function apiServerFor(opts: { kubectl?: string; kubeconfig?: string }): ApiServer | undefined {
  if (opts.kubeconfig) return loadKubeconfig(opts.kubeconfig)
  if (opts.kubectl) return undefined
  if (process.env.KUBERNETES_SERVICE_HOST) return inClusterServer()
  const file = process.env.KUBECONFIG
  if (!file || file.includes(':')) return undefined
  try {
    return loadKubeconfig(file)
  } catch (e) {
    if (e instanceof NeedsKubectl) return undefined
    throw e
  }
}

/** The service account's files; KUBE_CNI_SA_DIR moves them, for the test's stand-in API server only. */
const SA_DIR = () => process.env.KUBE_CNI_SA_DIR ?? '/var/run/secrets/kubernetes.io/serviceaccount'

/** The way every in-cluster client finds the API server: its service's variables, the token and the CA. */
export function inClusterServer(): ApiServer {
  const dir = SA_DIR()
  return {
    host: process.env.KUBERNETES_SERVICE_HOST!,
    port: Number(process.env.KUBERNETES_SERVICE_PORT ?? '443'),
    ca: readFileSync(join(dir, 'ca.crt')),
    token: () => readFileSync(join(dir, 'token'), 'utf8').trim(),
  }
}

export function loadKubeconfig(path: string): ApiServer {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (e) {
    throw new Error(`cannot read the kubeconfig ${path}: ${(e as Error).message}`)
  }
  let doc: unknown
  try {
    doc = text.trimStart().startsWith('{') ? JSON.parse(text) : parseKubeconfigYaml(text)
  } catch (e) {
    throw new Error(`${path} is not a kubeconfig kube-cni can read: ${(e as Error).message}`)
  }
  return kubeconfigServer(doc, path)
}

/**
 * The YAML that kubectl and kubeadm write for a kubeconfig: block mappings and sequences, plain or quoted
 * scalars, comments. A YAML library would triple the bundle for this one file; anything beyond that subset
 * is refused, naming the line, with the way out.
 */
export function parseKubeconfigYaml(text: string): unknown {
  const lines = text
    .split('\n')
    .map((raw, k) => ({ raw: raw.replace(/\r$/, ''), n: k + 1 }))
    .filter((l) => !/^\s*(#.*)?$/.test(l.raw) && !/^(---|\.\.\.)\s*$/.test(l.raw))
  const indentOf = (k: number) => /^ */.exec(lines[k].raw)![0].length
  const bad = (k: number, why: string) =>
    new Error(`line ${lines[k].n}: ${why}; write it as \`kubectl config view --raw --flatten -o json\` does (JSON is read as well)`)
  const dash = (k: number, indent: number) => indentOf(k) === indent && /^-( |$)/.test(lines[k].raw.slice(indent))
  let i = 0
  const scalar = (text: string, k: number): unknown => {
    if (/^["]/.test(text)) {
      try {
        return JSON.parse(text)
      } catch {
        throw bad(k, 'a double-quoted string kube-cni cannot read')
      }
    }
    if (text.startsWith("'")) {
      if (!/^'(?:[^']|'')*'$/.test(text)) throw bad(k, 'an unterminated single-quoted string')
      return text.slice(1, -1).replace(/''/g, "'")
    }
    if (/^(\{\}|\[\])(\s+#.*)?$/.test(text)) return text.startsWith('{') ? {} : [] // kubectl writes `preferences: {}`
    if (/^[[{&*!|>%@`]/.test(text)) throw bad(k, `"${text[0]}" (flow collections, anchors, tags and block scalars are not read)`)
    const plain = text.replace(/\s+#.*$/, '')
    return plain === 'true' ? true : plain === 'false' ? false : plain === 'null' || plain === '~' ? null : plain
  }
  const block = (indent: number): unknown => (dash(i, indent) ? list(indent) : map(indent))
  const map = (indent: number): Record<string, unknown> => {
    const obj: Record<string, unknown> = {}
    while (i < lines.length && indentOf(i) >= indent) {
      if (indentOf(i) > indent) throw bad(i, 'unexpected indentation')
      const m = /^("[^"]*"|'[^']*'|[^\s'"#][^:]*?):(?:\s+(.*))?$/.exec(lines[i].raw.slice(indent))
      if (!m) throw bad(i, 'not a "key: value" line')
      const key = String(scalar(m[1], i))
      const k = i++
      const value = m[2]?.trim()
      if (value && !value.startsWith('#')) obj[key] = scalar(value, k)
      else if (i < lines.length && (indentOf(i) > indent || dash(i, indent))) obj[key] = block(indentOf(i))
      else obj[key] = null
    }
    return obj
  }
  const list = (indent: number): unknown[] => {
    const arr: unknown[] = []
    while (i < lines.length && dash(i, indent)) {
      const rest = lines[i].raw.slice(indent + 1)
      const item = rest.trim()
      if (!item) {
        i++
        arr.push(i < lines.length && indentOf(i) > indent ? block(indentOf(i)) : null)
      } else if (/^("[^"]*"|'[^']*'|[^\s'"#][^:]*?):(\s|$)/.test(item)) {
        // "- key: value" opens a mapping whose keys line up with "key": read the line as if the dash were a space.
        const column = indent + 1 + /^ */.exec(rest)![0].length
        lines[i] = { ...lines[i], raw: ' '.repeat(column) + item }
        arr.push(map(column))
      } else arr.push(scalar(item, i++))
    }
    return arr
  }
  if (!lines.length) throw new Error('it is empty')
  const doc = block(indentOf(0))
  if (i < lines.length) throw bad(i, 'unexpected indentation')
  return doc
}

/**
 * The current context's cluster and user of a parsed kubeconfig. Files it names are relative to the
 * kubeconfig's own directory, as kubectl reads them; `*-data` fields hold the same PEM in base64.
 */
export function kubeconfigServer(doc: any, path: string): ApiServer {
  const bad = (why: string) => new Error(`kubeconfig ${path}: ${why}`)
  const named = (list: string, name: unknown) => {
    const entry = (Array.isArray(doc?.[list]) ? doc[list] : []).find((e: any) => e?.name === name)
    if (!entry) throw bad(`no ${list.replace(/s$/, '')} named ${JSON.stringify(name)} in "${list}"`)
    return entry
  }
  if (typeof doc?.['current-context'] !== 'string' || !doc['current-context']) throw bad('no "current-context"')
  const context = named('contexts', doc['current-context']).context ?? {}
  const cluster = named('clusters', context.cluster).cluster ?? {}
  const user = context.user === undefined ? {} : named('users', context.user).user ?? {}
  let url: URL
  try {
    url = new URL(cluster.server)
  } catch {
    throw bad(`the cluster's "server" ${JSON.stringify(cluster.server)} is not a URL`)
  }
  if (url.protocol !== 'https:') throw bad(`the cluster's "server" ${url.href} is not https: kube-cni talks to the API server over TLS only`)
  if (user.exec || user['auth-provider'])
    throw new NeedsKubectl(`kubeconfig ${path}: the user authenticates with an exec or auth-provider plugin, which kube-cni does not run: use a token or a client certificate`)
  const base = dirname(resolve(path))
  /** A PEM from its `-data` field or its file; a file is read again on each call. */
  const pem = (field: string, from: any): (() => Buffer) | undefined => {
    if (typeof from[`${field}-data`] === 'string') {
      const data = Buffer.from(from[`${field}-data`], 'base64')
      return () => data
    }
    if (typeof from[field] !== 'string') return undefined
    const file = resolve(base, from[field])
    const read = () => {
      try {
        return readFileSync(file)
      } catch (e) {
        throw bad(`cannot read its ${field} ${from[field]}: ${(e as Error).message}`)
      }
    }
    read()
    return read
  }
  const cert = pem('client-certificate', user)
  const key = pem('client-key', user)
  if (!cert !== !key) throw bad('a client certificate needs both client-certificate and client-key')
  const server: ApiServer = {
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: Number(url.port || 443),
    ca: pem('certificate-authority', cluster)?.(),
    clientCert: cert && key ? () => ({ cert: cert(), key: key() }) : undefined,
    insecure: cluster['insecure-skip-tls-verify'] === true,
  }
  if (typeof user.token === 'string') server.token = () => user.token
  else if (typeof user.tokenFile === 'string') {
    const file = resolve(base, user.tokenFile)
    server.token = () => readFileSync(file, 'utf8').trim()
  }
  return server
}

export const serverURL = (s: ApiServer) => `https://${s.host.includes(':') ? `[${s.host}]` : s.host}:${s.port}`

/** Sends a GET; resolves with the response once its status line is in, so a watch can be streamed. */
export function apiRequest(s: ApiServer, path: string, timeoutMs: number): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { Accept: 'application/json', 'User-Agent': 'kube-cni' }
    const token = s.token?.()
    if (token) headers.Authorization = `Bearer ${token}`
    const req = request(
      { host: s.host, port: s.port, path, ca: s.ca, ...s.clientCert?.(), rejectUnauthorized: !s.insecure, headers, timeout: timeoutMs },
      resolve,
    )
    // The timeout is for silence on the socket: a watch that hears nothing, not even a bookmark, is dead.
    req.on('timeout', () => req.destroy(new Error(`GET ${serverURL(s)}${path}: no answer in ${timeoutMs / 1000}s`)))
    req.on('error', reject)
    req.end()
  })
}

/** GET a path and return its body; anything but 200 is an error quoting the API server's answer. */
export async function apiGet(s: ApiServer, path: string, timeoutMs = 30_000): Promise<string> {
  const res = await apiRequest(s, path, timeoutMs)
  let body = ''
  res.setEncoding('utf8')
  for await (const d of res) body += d
  if (res.statusCode !== 200) throw new ApiError(res.statusCode ?? 0, `GET ${serverURL(s)}${path}: HTTP ${res.statusCode}: ${body.slice(0, 200)}`)
  return body
}

/** A kubeconfig kube-cni cannot use itself, but kubectl can. */
class NeedsKubectl extends Error {}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message)
  }
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
