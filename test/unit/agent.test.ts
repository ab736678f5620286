// The pure parts of the routes agent: the kubeconfig it reads, the backoff, the metrics text, skip kinds.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { skipKinds } from '../../lib/tools/agent.ts'
import { kubeconfigServer, parseKubeconfigYaml } from '../../lib/tools/kube.ts'
import { Registry, parseListenAddress } from '../../lib/tools/metrics.ts'
import { backoffMs } from '../../lib/tools/watch.ts'

// As `kind get kubeconfig` prints it (shortened base64).
const KIND = `apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: Q0E=
    server: https://127.0.0.1:40123
  name: kind-kind
contexts:
- context:
    cluster: kind-kind
    user: kind-kind
  name: kind-kind
current-context: kind-kind
kind: Config
preferences: {}
users:
- name: kind-kind
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
`

test('a kubeconfig as kubectl writes it: the current context\'s server, CA and client certificate', () => {
  const s = kubeconfigServer(parseKubeconfigYaml(KIND), 'kind.yaml')
  assert.is(s.host, '127.0.0.1')
  assert.is(s.port, 40123)
  const client = s.clientCert?.()
  assert.equal([s.ca?.toString(), client?.cert.toString(), client?.key.toString()], ['CA', 'CERT', 'KEY'])
  assert.is(s.token, undefined)
})

test('a client certificate file is read again on each request: the kubelet rotates its own', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kube-cni-unit-'))
  try {
    writeFileSync(join(dir, 'client.pem'), 'OLD')
    const doc = {
      'current-context': 'c',
      contexts: [{ name: 'c', context: { cluster: 'k', user: 'u' } }],
      clusters: [{ name: 'k', cluster: { server: 'https://h:1' } }],
      users: [{ name: 'u', user: { 'client-certificate': 'client.pem', 'client-key': 'client.pem' } }],
    }
    const s = kubeconfigServer(doc, join(dir, 'kubeconfig'))
    assert.is(s.clientCert?.().cert.toString(), 'OLD')
    writeFileSync(join(dir, 'client.pem'), 'NEW')
    assert.is(s.clientCert?.().key.toString(), 'NEW')
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('kubeconfig YAML: indented lists, quotes, comments, booleans, an IPv6 server and a token', () => {
  const doc = parseKubeconfigYaml(`# a comment
current-context: "c"
contexts:
  - name: c
    context:
      cluster: k  # trailing comment
      user: 'u'
clusters:
  - name: k
    cluster:
      server: https://[fd00::1]:6443
      insecure-skip-tls-verify: true
users:
  - name: u
    user:
      token: abc
`)
  const s = kubeconfigServer(doc, 'x')
  assert.equal([s.host, s.port, s.insecure, s.token?.()], ['fd00::1', 6443, true, 'abc'])
})

test('kubeconfig: what kube-cni cannot use is refused, saying why', () => {
  assert.throws(() => parseKubeconfigYaml('a: &anchor b\n'), /line 1: "&".*kubectl config view --raw --flatten -o json/)
  assert.throws(() => parseKubeconfigYaml('a: b\n   c: d\n'), /line 2: unexpected indentation/)
  const doc = (user: unknown) => ({
    'current-context': 'c',
    contexts: [{ name: 'c', context: { cluster: 'k', user: 'u' } }],
    clusters: [{ name: 'k', cluster: { server: 'https://h:1' } }],
    users: [{ name: 'u', user }],
  })
  assert.throws(() => kubeconfigServer(doc({ exec: { command: 'aws' } }), 'x'), /exec or auth-provider plugin/)
  assert.throws(() => kubeconfigServer({ ...doc({}), clusters: [{ name: 'k', cluster: { server: 'http://h' } }] }, 'x'), /not https/)
  assert.throws(() => kubeconfigServer({ ...doc({}), 'current-context': 'nope' }, 'x'), /no context named "nope"/)
})

test('backoff doubles from 0.5 s up to the 30 s cap, with jitter in the upper half', () => {
  for (let i = 0; i < 50; i++) {
    const first = backoffMs(1)
    assert.ok(first >= 250 && first <= 500, String(first))
    const late = backoffMs(40)
    assert.ok(late >= 15_000 && late <= 30_000, String(late))
  }
})

test('metrics in the Prometheus text format: HELP, TYPE, labels escaped, counters from 0', async () => {
  const r = new Registry()
  const c = r.counter('x_total', 'Xs.')
  const g = r.gauge('y', 'Ys by kind.')
  c.inc()
  g.replace([[{ kind: 'a"b\\c\nd' }, 2]])
  assert.is(await r.render(), '# HELP x_total Xs.\n# TYPE x_total counter\nx_total 1\n# HELP y Ys by kind.\n# TYPE y gauge\ny{kind="a\\"b\\\\c\\nd"} 2\n')
})

test('--metrics-addr: HOST:PORT, IPv6 in brackets', () => {
  assert.equal(parseListenAddress('127.0.0.1:9101'), { host: '127.0.0.1', port: 9101 })
  assert.equal(parseListenAddress('[::1]:9101'), { host: '::1', port: 9101 })
  for (const bad of ['9101', '::1:9101', 'localhost:0', 'h:70000']) assert.throws(() => parseListenAddress(bad), /HOST:PORT/)
})

test('a skip reason becomes one label value per problem', () => {
  assert.equal(skipKinds({ node: 'n', reason: 'podCIDR 0.0.0.0/0 is a default route; no IPv6 InternalIP for fd00::/64' }), ['default_route', 'no_internal_ip'])
  assert.equal(skipKinds({ node: 'n', reason: 'no podCIDR yet' }), ['no_podcidr'])
  assert.equal(skipKinds({ node: 'n', reason: 'something new' }), ['other'])
})

test.run()
