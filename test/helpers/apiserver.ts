// A stand-in for the Kubernetes API server: HTTPS on loopback with a throwaway self-signed certificate,
// answering GET /api/v1/nodes and /api/v1/nodes/NAME from a NodeList, and only with the right token.
// It lets the in-cluster client and the DaemonSet's init script be tested without a cluster.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { type Server, createServer } from 'node:https'
import { join } from 'node:path'
import { must } from './cluster.ts'

export interface StandIn {
  env: Record<string, string> // what a pod would have: KUBERNETES_SERVICE_HOST/PORT, and KUBE_CNI_SA_DIR
  requests: string[]
  close: () => void
}

export async function startApiServer(dir: string, nodes: { items: any[] }): Promise<StandIn> {
  const sa = join(dir, 'serviceaccount')
  mkdirSync(sa, { recursive: true })
  must(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=kubernetes',
    '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(dir, 'key.pem'), '-out', join(sa, 'ca.crt')])
  writeFileSync(join(sa, 'token'), 'stand-in-token\n')
  const requests: string[] = []
  const server: Server = createServer({ key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(sa, 'ca.crt')) }, (req, res) => {
    requests.push(`${req.method} ${req.url}`)
    if (req.headers.authorization !== 'Bearer stand-in-token') return res.writeHead(401).end('{"kind":"Status","code":401}')
    const one = /^\/api\/v1\/nodes\/([^/?]+)$/.exec(req.url ?? '')
    const body = req.url === '/api/v1/nodes' ? nodes : one ? nodes.items.find((n) => n.metadata.name === decodeURIComponent(one[1])) : undefined
    if (req.method !== 'GET' || !body) return res.writeHead(404).end('{"kind":"Status","code":404}')
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body))
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as { port: number }).port
  return {
    env: { KUBERNETES_SERVICE_HOST: '127.0.0.1', KUBERNETES_SERVICE_PORT: String(port), KUBE_CNI_SA_DIR: sa },
    requests,
    close: () => server.close(),
  }
}
