// Dual-stack: an IPv4 and an IPv6 address for every pod, both families between nodes, and IPv6-only.
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { Node, cleanupAll, ipj, nsPath, probe, sh, startEchoServers } from '../helpers/cluster.ts'
import { podIP, routes, twoNodes } from '../helpers/topology.ts'

test.after.each(cleanupAll)

const DUAL = { subnets: ['fd00:200:0:1::/64', '10.200.1.0/24'], networks: ['10.200.0.0/16', 'fd00:200::/56'] }
const store = (node: Node, name = 'k8s-pod-network') => join(String(node.conf.dataDir), name)
const reserved = (node: Node) => readdirSync(store(node)).filter((f) => /^[0-9a-f.:]+$/.test(f) && /[.:]/.test(f))
const ping6 = (from: string, to: string) => sh(['ip', 'netns', 'exec', from, 'ping', '-6', '-c', '1', '-W', '2', to]).code === 0

for (const version of ['0.4.0', '1.0.0']) {
  test(`dual-stack ADD, CHECK and DEL at ${version}`, async () => {
    const node = new Node({ cniVersion: version, ...DUAL })
    const pod = node.pod()
    const add = await node.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(pod) })
    assert.is(add.code, 0, add.stdout + add.stderr)
    const r = add.json
    assert.equal(r.ips.map((i: any) => i.address), ['10.200.1.2/24', 'fd00:200:0:1::2/64'])
    assert.equal(r.ips.map((i: any) => i.gateway), ['10.200.1.1', 'fd00:200:0:1::1'])
    assert.equal(r.ips.map((i: any) => i.version), version === '0.4.0' ? ['4', '6'] : [undefined, undefined])
    assert.equal(r.routes, [{ dst: '0.0.0.0/0', gw: '10.200.1.1' }, { dst: '::/0', gw: 'fd00:200:0:1::1' }])
    const [eth0] = ipj(pod, 'addr', 'show', 'dev', 'eth0')
    const v6 = eth0.addr_info.find((a: any) => a.family === 'inet6' && a.scope === 'global')
    assert.is(v6.local, 'fd00:200:0:1::2')
    assert.not.ok(v6.tentative, 'DAD is off: the address is usable the moment ADD returns')
    assert.is(ipj(pod, '-6', 'route', 'show', 'default')[0].gateway, 'fd00:200:0:1::1')
    const [br] = node.ip('addr', 'show', 'dev', 'cni0')
    assert.ok(br.addr_info.some((a: any) => a.local === 'fd00:200:0:1::1' && a.prefixlen === 64))
    assert.ok(br.addr_info.some((a: any) => a.local === '10.200.1.1'))
    assert.equal(reserved(node).sort(), ['10.200.1.2', 'fd00:200:0:1::2'])

    const check = await node.cni({ command: 'CHECK', containerId: 'c1', netns: nsPath(pod) }, { ...node.conf, prevResult: r })
    assert.is(check.code, 0, check.stdout)
    sh(['ip', '-n', pod, '-6', 'route', 'del', 'default'])
    const broken = await node.cni({ command: 'CHECK', containerId: 'c1', netns: nsPath(pod) }, { ...node.conf, prevResult: r })
    assert.is(broken.json.code, 104)
    assert.match(broken.json.msg, /fd00:200:0:1::1/)

    const del = await node.cni({ command: 'DEL', containerId: 'c1', netns: nsPath(pod) })
    assert.is(del.code, 0)
    assert.equal(reserved(node), [])
  })
}

test('ping6 between two pods on one node', async () => {
  const node = new Node(DUAL)
  const a = await node.addPod('a')
  const b = await node.addPod('b')
  assert.ok(ping6(a.pod, podIP(b.result, 6)))
  assert.ok(ping6(b.pod, podIP(a.result, 6)))
})

for (const backend of ['host-gw', 'vxlan']) {
  test(`IPv6 between pods on two nodes (${backend}), with the pods' own source addresses`, async () => {
    const { a, b, nodesJson } = twoNodes({ dualStack: true, routed: backend === 'vxlan', conf: { mtu: 1430 } })
    const pa = await a.node.addPod('pa')
    const pb = await b.node.addPod('pb')
    routes(a, nodesJson, '--backend', backend)
    routes(b, nodesJson, '--backend', backend)
    const v6routes = ipj(a.node.ns, '-6', 'route', 'show', 'proto', '211')
    assert.is(v6routes.length, 1)
    assert.is(v6routes[0].dst, 'fd00:200:0:2::/64')
    assert.is(v6routes[0].gateway, backend === 'vxlan' ? 'fd00:200:0:2::' : '2001:db8:a::2')
    await startEchoServers([pa.pod, pb.pod])
    for (const family of [4, 6] as const) {
      const seen = await probe(pa.pod, [podIP(pb.result, family)])
      assert.is(seen[podIP(pb.result, family)], podIP(pa.result, family), `IPv${family}: b saw a's own address`)
      const back = await probe(pb.pod, [podIP(pa.result, family)])
      assert.is(back[podIP(pa.result, family)], podIP(pb.result, family))
    }
  })
}

test('a failed IPv6 allocation rolls back the IPv4 reservation', async () => {
  const node = new Node({ subnets: ['10.200.1.0/24', 'fd00:200:0:1::/120'], networks: DUAL.networks })
  // Fill the IPv6 /120 by hand, as if 254 pods held it.
  mkdirSync(store(node), { recursive: true })
  for (let k = 2; k <= 255; k++) writeFileSync(join(store(node), `fd00:200:0:1::${k.toString(16)}`), `other-${k}\r\neth0`)
  const r = await node.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(node.pod()) })
  assert.is(r.json.code, 101)
  assert.match(r.json.msg, /fd00:200:0:1::\/120/)
  assert.not.ok(reserved(node).some((f) => f.startsWith('10.')), 'no IPv4 address stays reserved')
  assert.equal(readdirSync(join(store(node), 'attachments')), [])
  assert.equal(node.ip('link', 'show', 'type', 'veth'), [])
})

test('an IPv6-only config works', async () => {
  const node = new Node({ subnet: 'fd00:200:0:1::/64', network: 'fd00:200::/56' })
  const a = await node.addPod('a')
  const b = await node.addPod('b')
  assert.equal(a.result.ips, [{ address: 'fd00:200:0:1::2/64', gateway: 'fd00:200:0:1::1', interface: 2 }])
  assert.equal(a.result.routes, [{ dst: '::/0', gw: 'fd00:200:0:1::1' }])
  assert.ok(ping6(a.pod, podIP(b.result, 6)))
  assert.equal(ipj(a.pod, '-4', 'addr', 'show', 'dev', 'eth0')[0]?.addr_info ?? [], [])
  const del = await node.cni({ command: 'DEL', containerId: 'a', netns: nsPath(a.pod) })
  assert.is(del.code, 0)
})

test.run()
