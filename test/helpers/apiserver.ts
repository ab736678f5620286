// A stand-in for the Kubernetes API server: HTTPS on loopback with a throwaway self-signed certificate,
// answering GET /api/v1/nodes and /api/v1/nodes/NAME from a NodeList, and only with the right token or a
// kubelet's client certificate. It lets the in-cluster client, the DaemonSet's init script and install.sh on
// a kubeadm worker (the kubelet's kubeconfig) be tested without a cluster.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { type Server, createServer } from 'node:https'
import type { TLSSocket } from 'node:tls'
import { join } from 'node:path'
import { must } from './cluster.ts'

export interface StandIn {
  env: Record<string, string> // what a pod would have: KUBERNETES_SERVICE_HOST/PORT, and KUBE_CNI_SA_DIR
  kubeletConf: string // a kubeconfig as kubeadm writes /etc/kubernetes/kubelet.conf on a worker
  requests: string[]
  close: () => void
}

export async function startApiServer(dir: string, nodes: { items: any[] }): Promise<StandIn> {
  const sa = join(dir, 'serviceaccount')
  mkdirSync(sa, { recursive: true })
  must(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=kubernetes',
    '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(dir, 'key.pem'), '-out', join(sa, 'ca.crt')])
  writeFileSync(join(sa, 'token'), 'stand-in-token\n')
  // The kubelet's client certificate and key in one file, as kubeadm's kubelet-client-current.pem.
  const pem = join(dir, 'kubelet-client-current.pem')
  must(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/O=system:nodes/CN=system:node:worker-1',
    '-keyout', join(dir, 'client-key.pem'), '-out', join(dir, 'client.pem')])
  writeFileSync(pem, readFileSync(join(dir, 'client.pem'), 'utf8') + readFileSync(join(dir, 'client-key.pem'), 'utf8'))
  const requests: string[] = []
  const tls = { key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(sa, 'ca.crt')) }
  const server: Server = createServer({ ...tls, requestCert: true, rejectUnauthorized: false, ca: readFileSync(join(dir, 'client.pem')) }, (req, res) => {
    requests.push(`${req.method} ${req.url}`)
    const kubelet = (req.socket as TLSSocket).authorized
    if (req.headers.authorization !== 'Bearer stand-in-token' && !kubelet) return res.writeHead(401).end('{"kind":"Status","code":401}')
    const one = /^\/api\/v1\/nodes\/([^/?]+)$/.exec(req.url ?? '')
    const body = req.url === '/api/v1/nodes' ? nodes : one ? nodes.items.find((n) => n.metadata.name === decodeURIComponent(one[1])) : undefined
    if (req.method !== 'GET' || !body) return res.writeHead(404).end('{"kind":"Status","code":404}')
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body))
  })
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
  return {
    kubeletConf,
    env: { KUBERNETES_SERVICE_HOST: '127.0.0.1', KUBERNETES_SERVICE_PORT: String(port), KUBE_CNI_SA_DIR: sa },
    requests,
    close: () => server.close(),
  }
}
