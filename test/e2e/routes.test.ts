// Between nodes: `kube-cni routes` with both backends, the reconcile, and the masquerade rule, proved by
// the source address a TCP server sees. Topologies are built from this test's own netns.
import { spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { PLUGIN, cleanupAll, ipj, kubeCni, must, newNetns, nsPath, probe, startEchoServers } from '../helpers/cluster.ts'
import { outsideHost } from '../../lib/tools/harness/topology.ts'
import { nodeList, podIP, routes, tryRoutes, twoNodes } from '../helpers/topology.ts'
import { sleep } from 'zx'

test.after.each(cleanupAll)

const kubeRoutes = (ns: string) => ipj(ns, 'route', 'show', 'proto', '211')
/** Every route of the main table that kube-cni did not make. */
const otherRoutes = (ns: string) => ipj(ns, 'route', 'show').filter((r: any) => r.protocol !== '211')

test('host-gw: pods on two nodes of one L2 segment reach each other with their own IPs', async () => {
  const { a, b, nodesJson } = twoNodes()
  const pa = await a.node.addPod('pa')
  const pb = await b.node.addPod('pb')
  routes(a, nodesJson)
  routes(b, nodesJson)
  assert.equal(kubeRoutes(a.node.ns), [{ dst: '10.200.2.0/24', gateway: '192.0.2.2', dev: 'eth0', flags: [] }])
  await startEchoServers([pa.pod, pb.pod])
  assert.is((await probe(pa.pod, [podIP(pb.result)]))[podIP(pb.result)], podIP(pa.result), 'b saw a\'s pod IP: no NAT')
  assert.is((await probe(pb.pod, [podIP(pa.result)]))[podIP(pa.result)], podIP(pb.result), 'a saw b\'s pod IP: no NAT')
})

test('host-gw skips a peer behind a router and says it needs vxlan', async () => {
  const { a, nodesJson } = twoNodes({ routed: true })
  const r = routes(a, nodesJson)
  assert.match(r.stderr, /node-b: 198\.51\.100\.2 is not on a directly connected network.*vxlan/)
  assert.equal(kubeRoutes(a.node.ns), [])
})

test('vxlan: pods on nodes in different subnets behind a router reach each other with their own IPs', async () => {
  const { a, b, nodesJson } = twoNodes({ routed: true, conf: { mtu: 1450 } })
  const pa = await a.node.addPod('pa')
  const pb = await b.node.addPod('pb')
  routes(a, nodesJson, '--backend', 'vxlan')
  routes(b, nodesJson, '--backend', 'vxlan')
  const [dev] = ipj(a.node.ns, '-d', 'link', 'show', 'dev', 'kube-cni.1')
  assert.is(dev.linkinfo.info_data.id, 1)
  assert.is(dev.linkinfo.info_data.port, 4789)
  assert.is(dev.linkinfo.info_data.local, '192.0.2.1')
  assert.is(dev.mtu, 1450, 'underlay MTU 1500 minus 50')
  assert.equal(kubeRoutes(a.node.ns), [{ dst: '10.200.2.0/24', gateway: '10.200.2.0', dev: 'kube-cni.1', flags: ['onlink'] }])
  const fdb = JSON.parse(must(['bridge', '-n', a.node.ns, '-j', 'fdb', 'show', 'dev', 'kube-cni.1']))
  assert.ok(fdb.some((f: any) => f.mac === '0a:58:0a:c8:02:00' && f.dst === '198.51.100.2'), JSON.stringify(fdb))
  await startEchoServers([pa.pod, pb.pod])
  assert.is((await probe(pa.pod, [podIP(pb.result)]))[podIP(pb.result)], podIP(pa.result))
  assert.is((await probe(pb.pod, [podIP(pa.result)]))[podIP(pa.result)], podIP(pb.result))
  // A full-size packet fits the pod MTU of 1450 without fragmentation.
  must(['ip', 'netns', 'exec', pa.pod, 'ping', '-c', '1', '-W', '2', '-M', 'do', '-s', '1422', podIP(pb.result)])
})

test('vxlan: an existing kube-cni.1 with learning, a ttl and a bound dev is made again as kube-cni makes it', async () => {
  const { a, b, nodesJson } = twoNodes({ routed: true, conf: { mtu: 1450 } })
  must(['ip', '-n', a.node.ns, 'link', 'add', 'kube-cni.1', 'type', 'vxlan', 'id', '1', 'local', '192.0.2.1', 'dstport', '4789', 'learning', 'ttl', '5', 'dev', 'eth0'])
  const pa = await a.node.addPod('pa')
  const pb = await b.node.addPod('pb')
  routes(a, nodesJson, '--backend', 'vxlan')
  routes(b, nodesJson, '--backend', 'vxlan')
  const [dev] = ipj(a.node.ns, '-d', 'link', 'show', 'dev', 'kube-cni.1')
  const { id, local, port, learning, ttl, link } = dev.linkinfo.info_data
  assert.equal({ id, local, port, learning, ttl, link }, { id: 1, local: '192.0.2.1', port: 4789, learning: false, ttl: 0, link: undefined })
  await startEchoServers([pa.pod, pb.pod])
  assert.is((await probe(pa.pod, [podIP(pb.result)]))[podIP(pb.result)], podIP(pa.result))
  assert.ok(routes(a, nodesJson, '--backend', 'vxlan').stderr.includes('no changes'), 'a second run leaves the new device alone')
})

test('switching backends removes the other backend\'s routes and device', async () => {
  const { a, nodesJson } = twoNodes()
  routes(a, nodesJson, '--backend', 'vxlan')
  assert.is(kubeRoutes(a.node.ns)[0].dev, 'kube-cni.1')
  routes(a, nodesJson, '--backend', 'host-gw')
  assert.equal(kubeRoutes(a.node.ns), [{ dst: '10.200.2.0/24', gateway: '192.0.2.2', dev: 'eth0', flags: [] }])
  assert.equal(ipj(a.node.ns, 'link', 'show', 'type', 'vxlan'), [])
})

test('reconcile: a wrong gateway is fixed, a stale route removed, a foreign route kept; a second run changes nothing', async () => {
  const { a, nodesJson } = twoNodes()
  must(['ip', '-n', a.node.ns, 'route', 'add', '10.200.2.0/24', 'via', '192.0.2.77', 'proto', '211'])
  must(['ip', '-n', a.node.ns, 'route', 'add', '10.200.9.0/24', 'via', '192.0.2.9', 'proto', '211'])
  must(['ip', '-n', a.node.ns, 'route', 'add', '10.200.8.0/24', 'via', '192.0.2.8'])
  const first = routes(a, nodesJson)
  assert.ok(first.stderr.includes('2 changes'), first.stderr)
  assert.equal(kubeRoutes(a.node.ns), [{ dst: '10.200.2.0/24', gateway: '192.0.2.2', dev: 'eth0', flags: [] }])
  assert.equal(ipj(a.node.ns, 'route', 'show', '10.200.8.0/24').length, 1, 'a route kube-cni did not make is kept')
  for (const backend of ['host-gw', 'vxlan', 'vxlan']) routes(a, nodesJson, '--backend', backend)
  // What kube-cni manages, and nothing the kernel changes by itself (IPv6 DAD adds local routes meanwhile).
  const managed = () =>
    ['-4', '-6'].map((f) => must(['ip', '-n', a.node.ns, f, '-d', 'route', 'show', 'proto', '211'])).join('') +
    must(['ip', '-n', a.node.ns, '-d', 'link', 'show', 'dev', 'kube-cni.1']).replace(/\n.*link\/ether/, '') +
    must(['ip', '-n', a.node.ns, 'neigh', 'show', 'dev', 'kube-cni.1', 'nud', 'permanent']) +
    must(['bridge', '-n', a.node.ns, 'fdb', 'show', 'dev', 'kube-cni.1'])
  const before = managed()
  const again = routes(a, nodesJson, '--backend', 'vxlan')
  assert.ok(again.stderr.includes('no changes'), `a second run changed something: ${routes(a, nodesJson, '--backend', 'vxlan', '--dry-run').stdout}`)
  assert.is(managed(), before)
  assert.is(routes(a, nodesJson, '--backend', 'vxlan', '--dry-run').stdout, '', 'nothing left to do')
})

test('a podCIDR of 0.0.0.0/0, this node\'s own, or outside the cluster network is skipped: the default and cni0 routes stay', async () => {
  const { a, b, nodesJson } = twoNodes()
  await a.node.addPod('pa')
  must(['ip', '-n', a.node.ns, 'route', 'add', 'default', 'via', '192.0.2.254'])
  const before = otherRoutes(a.node.ns)
  assert.ok(before.some((r: any) => r.dst === 'default' && r.gateway === '192.0.2.254'), JSON.stringify(before))
  assert.ok(before.some((r: any) => r.dst === '10.200.1.0/24' && r.dev === 'cni0'), JSON.stringify(before))
  const hostile = [
    { name: 'node-evil', ips: ['192.0.2.3'], subnets: ['0.0.0.0/0'] },
    { name: 'node-twin', ips: ['192.0.2.4'], subnets: ['10.200.1.0/24'] },
    { name: 'node-far', ips: ['192.0.2.5'], subnets: ['10.99.0.0/24'] },
  ]
  writeFileSync(nodesJson, JSON.stringify(nodeList([a, b, ...hostile])))
  const r = routes(a, nodesJson)
  assert.equal(otherRoutes(a.node.ns), before)
  assert.equal(kubeRoutes(a.node.ns), [{ dst: '10.200.2.0/24', gateway: '192.0.2.2', dev: 'eth0', flags: [] }])
  assert.match(r.stderr, /skipped node-evil: podCIDR 0\.0\.0\.0\/0 is a default route\n/)
  assert.match(r.stderr, /skipped node-twin: podCIDR 10\.200\.1\.0\/24 is this node's own podCIDR/)
  assert.match(r.stderr, /skipped node-far: podCIDR 10\.99\.0\.0\/24 is outside the cluster network 10\.200\.0\.0\/16/)
  // The hostile Nodes go away: nothing of the node's own routing goes with them.
  writeFileSync(nodesJson, JSON.stringify(nodeList([a, b])))
  routes(a, nodesJson)
  assert.equal(otherRoutes(a.node.ns), before)
})

test('a route to a peer\'s podCIDR that kube-cni did not make is left alone and reported', async () => {
  const { a, nodesJson } = twoNodes()
  must(['ip', '-n', a.node.ns, 'route', 'add', '10.200.2.0/24', 'via', '192.0.2.77', 'proto', 'static'])
  const r = routes(a, nodesJson)
  assert.equal(ipj(a.node.ns, 'route', 'show', '10.200.2.0/24'), [{ dst: '10.200.2.0/24', gateway: '192.0.2.77', dev: 'eth0', protocol: 'static', flags: [] }])
  assert.match(r.stderr, /skipped node-b: a route to 10\.200\.2\.0\/24 that kube-cni did not make is there \(via 192\.0\.2\.77 dev eth0 proto static\): left alone/)
  // The admin removes theirs: the next run makes kube-cni's.
  must(['ip', '-n', a.node.ns, 'route', 'del', '10.200.2.0/24', 'proto', 'static'])
  routes(a, nodesJson)
  assert.equal(kubeRoutes(a.node.ns), [{ dst: '10.200.2.0/24', gateway: '192.0.2.2', dev: 'eth0', flags: [] }])
})

test('one peer with an unusable gateway does not block the others; the run exits non-zero after making the rest', async () => {
  const { a, b, nodesJson } = twoNodes()
  // 192.0.2.255 is on a connected network, but it is the broadcast address: the kernel refuses it as a gateway.
  const bad = { name: 'node-bad', ips: ['192.0.2.255'], subnets: ['10.200.3.0/24'] }
  const c = { name: 'node-c', ips: ['192.0.2.3'], subnets: ['10.200.4.0/24'] }
  writeFileSync(nodesJson, JSON.stringify(nodeList([a, bad, b, c])))
  const r = tryRoutes(a, nodesJson)
  assert.equal(kubeRoutes(a.node.ns).map((x: any) => `${x.dst} via ${x.gateway}`), ['10.200.2.0/24 via 192.0.2.2', '10.200.4.0/24 via 192.0.2.3'])
  assert.is.not(r.code, 0, 'the failure is reported in the exit status')
  assert.match(r.stderr, /failed for node-bad: ip route replace 10\.200\.3\.0\/24 via 192\.0\.2\.255 proto 211: .*invalid gateway/i)
  assert.match(r.stderr, /3 changes, 1 of them failed/)
  // It stays refused on every run, and never undoes the others.
  assert.is.not(tryRoutes(a, nodesJson).code, 0)
  assert.is(kubeRoutes(a.node.ns).length, 2)
})

test('a null item in the NodeList is skipped and reported; the other peers get their routes', async () => {
  const { a, b, nodesJson } = twoNodes()
  const list = nodeList([a, b]) as { items: unknown[] }
  list.items.unshift(null, { metadata: {} })
  writeFileSync(nodesJson, JSON.stringify(list))
  const r = routes(a, nodesJson)
  assert.equal(kubeRoutes(a.node.ns), [{ dst: '10.200.2.0/24', gateway: '192.0.2.2', dev: 'eth0', flags: [] }])
  assert.match(r.stderr, /skipped NodeList item 0: it is not a Node object\n/)
  assert.match(r.stderr, /skipped NodeList item 1: its metadata.name undefined is not a Node name\n/)
})

test('a node that left the NodeList loses its route', async () => {
  const { a, nodesJson } = twoNodes()
  routes(a, nodesJson)
  assert.is(kubeRoutes(a.node.ns).length, 1)
  writeFileSync(nodesJson, JSON.stringify(nodeList([a])))
  routes(a, nodesJson)
  assert.equal(kubeRoutes(a.node.ns), [])
})

test('--watch reconciles again every N seconds: a route deleted by hand comes back', async () => {
  const { a, nodesJson } = twoNodes()
  const watcher = spawn('nsenter', [`--net=${nsPath(a.node.ns)}`, PLUGIN, 'routes', '--node', 'node-a', '--nodes-json', nodesJson, '--watch', '1'], { stdio: 'ignore' })
  try {
    const until = async (cond: () => boolean) => {
      for (let i = 0; i < 40 && !cond(); i++) await sleep(100)
      return cond()
    }
    assert.ok(await until(() => kubeRoutes(a.node.ns).length === 1), 'the first pass made the route')
    must(['ip', '-n', a.node.ns, 'route', 'del', '10.200.2.0/24'])
    assert.ok(await until(() => kubeRoutes(a.node.ns).length === 1), 'a later pass put it back')
  } finally {
    watcher.kill('SIGKILL')
  }
})

test('--dry-run prints the ip commands and changes nothing', async () => {
  const { a, nodesJson } = twoNodes()
  const r = routes(a, nodesJson, '--dry-run')
  assert.is(r.stdout.trim(), 'ip route replace 10.200.2.0/24 via 192.0.2.2 proto 211')
  assert.equal(kubeRoutes(a.node.ns), [])
})

test('NodeList from stdin with -', async () => {
  const { a } = twoNodes()
  const r = kubeCni(a.node.ns, ['routes', '--node', 'node-a', '--nodes-json', '-'], JSON.stringify(nodeList([
    { name: 'node-a', ips: ['192.0.2.1'], subnets: ['10.200.1.0/24'] },
    { name: 'node-b', ips: ['192.0.2.2'], subnets: ['10.200.2.0/24'] },
  ])))
  assert.is(r.code, 0, r.stderr)
  assert.is(kubeRoutes(a.node.ns).length, 1)
})

for (const backend of ['host-gw', 'vxlan']) {
  test(`masquerade (${backend}): NAT to the outside, never between pods`, async () => {
    const { a, b, router, nodesJson } = twoNodes({ routed: true, conf: { mtu: 1450 } })
    const outside = newNetns('outside')
    outsideHost(router!, outside, [{ router: '203.0.113.1', host: '203.0.113.10' }], ['192.0.2.0/24', '198.51.100.0/24'])
    const pa = await a.node.addPod('pa')
    const pb = await b.node.addPod('pb')
    if (backend === 'vxlan') {
      routes(a, nodesJson, '--backend', 'vxlan')
      routes(b, nodesJson, '--backend', 'vxlan')
    } else {
      // host-gw cannot cross the router by itself: the router learns the pod routes, as a cloud VPC would.
      must(['ip', '-n', router!, 'route', 'add', a.subnets[0], 'via', a.ips[0]])
      must(['ip', '-n', router!, 'route', 'add', b.subnets[0], 'via', b.ips[0]])
      must(['ip', '-n', a.node.ns, 'route', 'add', b.subnets[0], 'via', '192.0.2.254', 'proto', '211'])
      must(['ip', '-n', b.node.ns, 'route', 'add', a.subnets[0], 'via', '198.51.100.254', 'proto', '211'])
    }
    await startEchoServers([pa.pod, pb.pod, outside])
    const fromA = await probe(pa.pod, [podIP(pb.result), '203.0.113.10'])
    assert.is(fromA[podIP(pb.result)], podIP(pa.result), 'pod to pod keeps the pod IP')
    assert.is(fromA['203.0.113.10'], a.ips[0], 'pod to outside leaves with the node IP')
    const fromB = await probe(pb.pod, [podIP(pa.result), '203.0.113.10'])
    assert.is(fromB[podIP(pa.result)], podIP(pb.result))
    assert.is(fromB['203.0.113.10'], b.ips[0])
  })
}

test.run()
