// Services on a bridge: the rules kube-proxy writes in iptables mode, in a node netns whose
// bridge-nf-call-iptables starts at 0. kube-cni sets it during node setup, so the reply of a pod behind a
// ClusterIP to a client pod on the same bridge passes conntrack and is un-NATed.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { Node, cleanupAll, must, probe, sh, startEchoServers } from '../helpers/cluster.ts'
import { podIP, routes, twoNodes } from '../helpers/topology.ts'

test.after.each(cleanupAll)

const TCP_PORT = 7777 // the echo servers' port in the pods
const UDP_PORT = 5353
const nsExec = (ns: string, ...argv: string[]) => must(['ip', 'netns', 'exec', ns, ...argv])
const knob = (ns: string, name: string) => nsExec(ns, 'cat', `/proc/sys/net/bridge/${name}`).trim()

/** What kube-proxy writes for ClusterIP Services (TCP 80 and UDP 53), each with one endpoint, hairpin included. */
function kubeProxy(ns: string, services: { name: string; clusterIP: string; endpoint: string }[]): void {
  const lines = [
    '*nat',
    ':KUBE-SERVICES - [0:0]',
    ':KUBE-POSTROUTING - [0:0]',
    ':KUBE-MARK-MASQ - [0:0]',
    '-A PREROUTING -j KUBE-SERVICES',
    '-A OUTPUT -j KUBE-SERVICES',
    '-A POSTROUTING -j KUBE-POSTROUTING',
    '-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000',
    '-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN',
    '-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0',
    '-A KUBE-POSTROUTING -j MASQUERADE',
  ]
  for (const { name, clusterIP, endpoint } of services) {
    for (const [proto, port, target] of [['tcp', 80, TCP_PORT], ['udp', 53, UDP_PORT]] as const) {
      const svc = `KUBE-SVC-${name}-${proto}`.toUpperCase()
      const sep = `KUBE-SEP-${name}-${proto}`.toUpperCase()
      lines.push(
        `:${svc} - [0:0]`,
        `:${sep} - [0:0]`,
        `-A KUBE-SERVICES -d ${clusterIP}/32 -p ${proto} --dport ${port} -j ${svc}`,
        `-A ${svc} -j ${sep}`,
        `-A ${sep} -s ${endpoint}/32 -j KUBE-MARK-MASQ`,
        `-A ${sep} -p ${proto} -j DNAT --to-destination ${endpoint}:${target}`,
      )
    }
  }
  must(['ip', 'netns', 'exec', ns, 'iptables-restore', '--noflush'], `${lines.join('\n')}\nCOMMIT\n`)
}

const UDP_SERVER = `const s = require('dgram').createSocket('udp4'); s.on('message', (m, r) => s.send(r.address, r.port, r.address)); s.bind(Number(process.argv[1]))`
// Prints {seen: the source the server saw, from: the address the reply came from}, or null.
const UDP_CLIENT = `
const [port, host] = [Number(process.argv[1]), process.argv[2]]
const s = require('dgram').createSocket('udp4')
let tries = 0
const done = (out) => { process.stdout.write(JSON.stringify(out)); process.exit(0) }
s.on('message', (m, r) => done({ seen: String(m), from: r.address }))
const send = () => (tries++ < 3 ? (s.send('?', port, host), setTimeout(send, 1000)) : done(null))
send()`

function startUdpServers(namespaces: string[]): void {
  for (const ns of namespaces) {
    const r = sh(['sh', '-c', `ip netns exec ${ns} ${process.execPath} -e "$0" ${UDP_PORT} >/dev/null 2>&1 &`, UDP_SERVER])
    assert.is(r.code, 0, r.stderr)
  }
  for (const ns of namespaces) {
    for (let i = 0; i < 50 && !nsExec(ns, 'ss', '-Hlun', `sport = :${UDP_PORT}`).trim(); i++) must(['sleep', '0.1'])
  }
}

const udp = (ns: string, host: string) => JSON.parse(nsExec(ns, process.execPath, '-e', UDP_CLIENT, '53', host))

test('pod -> ClusterIP -> pod, on the same node and across nodes, TCP and UDP, with the knob starting at 0', async () => {
  const { a, b, nodesJson } = twoNodes()
  for (const m of [a, b]) nsExec(m.node.ns, 'sysctl', '-qw', 'net.bridge.bridge-nf-call-iptables=0', 'net.bridge.bridge-nf-call-ip6tables=0')
  const client = await a.node.addPod('client')
  const local = await a.node.addPod('local')
  const remote = await b.node.addPod('remote')
  routes(a, nodesJson)
  routes(b, nodesJson)
  assert.is(knob(a.node.ns, 'bridge-nf-call-iptables'), '1', 'node setup set it')
  assert.is(knob(a.node.ns, 'bridge-nf-call-ip6tables'), '0', 'no IPv6 pool: left alone')
  kubeProxy(a.node.ns, [
    { name: 'local', clusterIP: '10.96.0.10', endpoint: podIP(local.result) },
    { name: 'remote', clusterIP: '10.96.0.20', endpoint: podIP(remote.result) },
  ])
  await startEchoServers([local.pod, remote.pod])
  startUdpServers([local.pod, remote.pod])
  const me = podIP(client.result)

  const tcp = await probe(client.pod, ['10.96.0.10', '10.96.0.20'], 80)
  assert.is(tcp['10.96.0.10'], me, 'same node: reached, and the server saw the client pod')
  assert.is(tcp['10.96.0.20'], me, 'other node: reached, and the server saw the client pod')
  assert.equal(udp(client.pod, '10.96.0.10'), { seen: me, from: '10.96.0.10' }, 'UDP, same node: the reply comes from the ClusterIP')
  assert.equal(udp(client.pod, '10.96.0.20'), { seen: me, from: '10.96.0.20' }, 'UDP, other node')

  // Hairpin: the endpoint reaches itself through its own Service, masqueraded by KUBE-MARK-MASQ.
  assert.is((await probe(local.pod, ['10.96.0.10'], 80))['10.96.0.10'], '10.200.1.1')
  assert.equal(udp(local.pod, '10.96.0.10'), { seen: '10.200.1.1', from: '10.96.0.10' })
})

test('bridge-nf-call-iptables reset to 0 is set again by the next ADD; an IPv6 pool sets bridge-nf-call-ip6tables too', async () => {
  const node = new Node({ subnets: ['10.200.1.0/24', 'fd00:200:0:1::/64'], networks: ['10.200.0.0/16', 'fd00:200::/56'] })
  for (const family of ['iptables', 'ip6tables']) nsExec(node.ns, 'sysctl', '-qw', `net.bridge.bridge-nf-call-${family}=0`)
  await node.addPod('p1')
  assert.is(knob(node.ns, 'bridge-nf-call-iptables'), '1')
  assert.is(knob(node.ns, 'bridge-nf-call-ip6tables'), '1')
  nsExec(node.ns, 'sysctl', '-qw', 'net.bridge.bridge-nf-call-iptables=0')
  await node.addPod('p2')
  assert.is(knob(node.ns, 'bridge-nf-call-iptables'), '1')
})

test.run()
