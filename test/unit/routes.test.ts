// The pure half of `kube-cni routes`: which peers' podCIDRs may become routes, and why the others are skipped.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { renderConflist } from '../../lib/tools/conflist.ts'
import { type Family, formatCidr, parseAddress, parseCidr } from '../../lib/plugin/ip.ts'
import { type Current, type CurrentRoute, type LocalAddress, type Plan, batchFailures, diff, networksFromConflist, planRoutes } from '../../lib/tools/routes.ts'

const peer = (name: string, subnets: string[], ips: string[]) => ({
  metadata: { name },
  spec: { podCIDRs: subnets },
  status: { addresses: ips.map((address) => ({ type: 'InternalIP', address })) },
})
const SELF = peer('node-a', ['10.200.1.0/24', 'fd00:200:0:1::/64'], ['192.0.2.1', '2001:db8:a::1'])
const NETWORKS = ['10.200.0.0/16', 'fd00:200::/56'].map((t) => parseCidr(t)!)

function address(ifname: string, cidr: string): LocalAddress {
  const [text, prefix] = cidr.split('/')
  const a = parseAddress(text)!
  return { ifname, mtu: 1500, family: a.family as Family, value: a.value, prefix: Number(prefix) }
}
const LOCAL = [address('eth0', '192.0.2.1/24'), address('eth0', '2001:db8:a::1/64'), address('cni0', '10.200.1.1/24')]

const plan = (peers: unknown[], local = LOCAL, networks: typeof NETWORKS | null = NETWORKS, backend: 'host-gw' | 'vxlan' = 'host-gw'): Plan =>
  planRoutes({ items: [SELF, ...peers] } as any, 'node-a', backend, local, networks ?? undefined)
const dsts = (p: Plan) => p.routes.map((r) => `${r.node} ${r.dst} via ${r.via}`)
const reasons = (p: Plan) => Object.fromEntries(p.skipped.map((s) => [s.node, s.reason]))

test('a peer inside the cluster network on a connected network gets its route, per family', () => {
  const p = plan([peer('node-b', ['10.200.2.0/24', 'fd00:200:0:2::/64'], ['192.0.2.2', '2001:db8:a::2'])])
  assert.equal(dsts(p), ['node-b 10.200.2.0/24 via 192.0.2.2', 'node-b fd00:200:0:2::/64 via 2001:db8:a::2'])
  assert.equal(p.skipped, [])
})

test('podCIDRs that would hijack the node\'s own traffic are skipped, each with its reason', () => {
  const cases: [string, string, RegExp][] = [
    ['0.0.0.0/0', '192.0.2.3', /podCIDR 0\.0\.0\.0\/0 is a default route/],
    ['::/0', '2001:db8:a::3', /podCIDR ::\/0 is a default route/],
    ['127.0.0.0/8', '192.0.2.3', /overlaps the loopback range 127\.0\.0\.0\/8/],
    ['::1/128', '2001:db8:a::3', /overlaps the loopback range ::1\/128/],
    ['224.0.0.0/24', '192.0.2.3', /overlaps the multicast range 224\.0\.0\.0\/4/],
    ['ff02::/16', '2001:db8:a::3', /overlaps the multicast range ff00::\/8/],
    ['169.254.0.0/16', '192.0.2.3', /overlaps the link-local range 169\.254\.0\.0\/16/],
    ['fe80::/64', '2001:db8:a::3', /overlaps the link-local range fe80::\/10/],
    ['10.99.0.0/24', '192.0.2.3', /podCIDR 10\.99\.0\.0\/24 is outside the cluster network 10\.200\.0\.0\/16, fd00:200::\/56/],
    ['10.200.1.0/24', '192.0.2.3', /podCIDR 10\.200\.1\.0\/24 is this node's own podCIDR 10\.200\.1\.0\/24/],
    ['10.200.0.0/23', '192.0.2.3', /podCIDR 10\.200\.0\.0\/23 overlaps this node's own podCIDR 10\.200\.1\.0\/24/],
    ['fd00:200:0:1::/64', '2001:db8:a::3', /is this node's own podCIDR fd00:200:0:1::\/64/],
  ]
  for (const [cidr, ip, why] of cases) {
    const p = plan([peer('node-x', [cidr], [ip])])
    assert.equal(p.routes, [], cidr)
    assert.is(p.skipped.length, 1, cidr)
    assert.is(p.skipped[0].node, 'node-x')
    assert.match(p.skipped[0].reason, why)
  }
})

test('a podCIDR overlapping a network connected to this node is skipped, naming the interface', () => {
  const p = plan([peer('node-x', ['10.200.50.0/24'], ['192.0.2.3'])], [...LOCAL, address('eth1', '10.200.50.7/24')])
  assert.equal(p.routes, [])
  assert.match(reasons(p)['node-x'], /podCIDR 10\.200\.50\.0\/24 overlaps 10\.200\.50\.0\/24, a network connected on eth1/)
})

test('the same checks hold under vxlan: no route, no neighbour, no fdb entry for a bad podCIDR', () => {
  const p = plan([peer('node-x', ['0.0.0.0/0'], ['192.0.2.3']), peer('node-b', ['10.200.2.0/24'], ['192.0.2.2'])], LOCAL, NETWORKS, 'vxlan')
  assert.equal(dsts(p), ['node-b 10.200.2.0/24 via 10.200.2.0'])
  assert.equal(p.vxlan!.fdb, [{ mac: '0a:58:0a:c8:02:00', dst: '192.0.2.2', node: 'node-b' }])
  assert.match(reasons(p)['node-x'], /default route/)
})

test('one line per skipped Node, with every reason; its good podCIDR still gets its route', () => {
  const p = plan([peer('node-x', ['0.0.0.0/0', '10.200.7.0/24', '::/0'], ['192.0.2.7', '2001:db8:a::7'])])
  assert.equal(dsts(p), ['node-x 10.200.7.0/24 via 192.0.2.7'])
  assert.is(p.skipped.length, 1)
  assert.match(p.skipped[0].reason, /0\.0\.0\.0\/0 is a default route; podCIDR ::\/0 is a default route/)
})

test('without a known cluster network, only the network check is left out', () => {
  const p = plan([peer('node-b', ['10.99.0.0/24'], ['192.0.2.2']), peer('node-x', ['0.0.0.0/0'], ['192.0.2.3'])], LOCAL, null)
  assert.equal(dsts(p), ['node-b 10.99.0.0/24 via 192.0.2.2'])
  assert.match(reasons(p)['node-x'], /default route/)
})

test('the cluster network from the node\'s conflist, single- and dual-stack', () => {
  const one = renderConflist({ subnets: ['10.200.1.0/24'], networks: ['10.200.0.0/16'] })
  assert.equal(networksFromConflist(one, 'x').map(formatCidr), ['10.200.0.0/16'])
  const two = renderConflist({ subnets: ['fd00:200:0:1::/64', '10.200.1.0/24'], networks: ['fd00:200::/56', '10.200.0.0/16'] })
  assert.equal(networksFromConflist(two, 'x').map(formatCidr), ['10.200.0.0/16', 'fd00:200::/56'])
  for (const bad of ['{', '{"plugins":[{"type":"bridge"}]}', '{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"kube-cni","subnet":"10.200.1.0/24","network":"10.9.0.0/16"}]}'])
    assert.throws(() => networksFromConflist(bad, '/etc/cni/net.d/10-kube-cni.conflist'), /10-kube-cni\.conflist: .*--network CIDR/)
})

const current = (routes: Omit<CurrentRoute, 'family'>[]): Current => ({
  local: LOCAL,
  routes: routes.map((r) => ({ family: r.dst.includes(':') ? 6 : 4, ...r })),
  neighbours: [],
  fdb: [],
})

test('diff: a route to the destination that kube-cni did not make is left alone and reported, whatever its protocol', () => {
  const p = plan([peer('node-b', ['10.200.2.0/24'], ['192.0.2.2']), peer('node-c', ['10.200.3.0/24'], ['192.0.2.3'])])
  const d = diff(p, current([
    { dst: '10.200.2.0/24', gateway: '192.0.2.77', dev: 'eth0', proto: '4' },
    { dst: '10.200.3.0/24', proto: '3', type: '6' },
  ]))
  assert.equal(d.ip, [])
  assert.equal(d.skipped, [
    { node: 'node-b', reason: 'a route to 10.200.2.0/24 that kube-cni did not make is there (via 192.0.2.77 dev eth0 proto static): left alone' },
    { node: 'node-c', reason: 'a route to 10.200.3.0/24 that kube-cni did not make is there (blackhole proto boot): left alone' },
  ])
})

test('diff: kube-cni\'s own route next to a foreign one for the same destination is removed, never the foreign one', () => {
  const p = plan([peer('node-b', ['10.200.2.0/24'], ['192.0.2.2'])])
  const d = diff(p, current([
    { dst: '10.200.2.0/24', gateway: '192.0.2.2', dev: 'eth0', proto: '211' },
    { dst: '10.200.2.0/24', gateway: '192.0.2.77', dev: 'eth0', proto: '4' },
    { dst: '10.200.9.0/24', gateway: '192.0.2.9', dev: 'eth0', proto: '4' },
  ]))
  assert.equal(d.ip.map((s) => s.line), ['route del 10.200.2.0/24 proto 211'])
})

test('NodeList items of any shape are skipped with a reason, never a crash; well-formed peers still get routes', () => {
  const p = plan([
    null,
    'node-z',
    42,
    [],
    {},
    { metadata: { name: 'evil\nkube-cni routes: forged' } },
    { metadata: { name: 'node-c' }, spec: { podCIDRs: [null, 7, '10.200.3.0/33', 'x\ny'] }, status: { addresses: 'nope' } },
    { metadata: { name: 'node-d' }, spec: { podCIDR: '10.200.4.0/24' }, status: { addresses: [null, { type: 'InternalIP', address: 5 }, { type: 'InternalIP', address: '192.0.2.4' }] } },
    { metadata: { name: 'node-e' }, spec: 'nope', status: null },
  ])
  assert.equal(dsts(p), ['node-d 10.200.4.0/24 via 192.0.2.4'])
  assert.equal(reasons(p), {
    'NodeList item 1': 'it is not a Node object',
    'NodeList item 2': 'it is not a Node object',
    'NodeList item 3': 'it is not a Node object',
    'NodeList item 4': 'its metadata.name undefined is not a Node name',
    'NodeList item 5': 'its metadata.name undefined is not a Node name',
    'NodeList item 6': 'its metadata.name "evil\\nkube-cni routes: forged" is not a Node name',
    'node-c': 'podCIDR "10.200.3.0/33" is not a CIDR; podCIDR "x\\ny" is not a CIDR',
    'node-e': 'no podCIDR yet',
  })
  for (const s of p.skipped) assert.not.match(`${s.node}: ${s.reason}`, /\n/)
})

test('two Nodes claiming one podCIDR: the first by name keeps it, whatever the NodeList order, and the other is reported', () => {
  const b = peer('node-b', ['10.200.2.0/24'], ['192.0.2.2'])
  const c = peer('node-c', ['10.200.2.0/24'], ['192.0.2.3'])
  const d = peer('node-d', ['10.200.2.0/23', 'fd00:200:0:4::/64'], ['192.0.2.4', '2001:db8:a::4'])
  for (const order of [[b, c, d], [d, c, b], [c, d, b]]) {
    const p = plan(order)
    assert.equal(dsts(p), ['node-b 10.200.2.0/24 via 192.0.2.2'])
    assert.equal(reasons(p), {
      'node-c': 'podCIDR 10.200.2.0/24 is also claimed by node-b (10.200.2.0/24), which keeps it: the first by name',
      'node-d': 'podCIDR 10.200.2.0/23 is also claimed by node-b (10.200.2.0/24), which keeps it: the first by name',
    })
  }
  // A loser of one clash claims nothing, so it takes no other range from anyone.
  const e = peer('node-e', ['10.200.5.0/24'], ['192.0.2.5'])
  const p = plan([peer('node-d', ['10.200.2.0/24', '10.200.5.0/24'], ['192.0.2.4']), b, e])
  assert.equal(dsts(p), ['node-b 10.200.2.0/24 via 192.0.2.2', 'node-e 10.200.5.0/24 via 192.0.2.5'])
})

test('a peer whose InternalIP is this node\'s own (or any address of this netns) is skipped', () => {
  const p = plan([peer('node-x', ['10.200.8.0/24'], ['192.0.2.1']), peer('node-y', ['10.200.9.0/24'], ['10.200.1.1'])])
  assert.equal(p.routes, [])
  assert.equal(reasons(p), { 'node-x': "its InternalIP 192.0.2.1 is this node's own", 'node-y': "its InternalIP 10.200.1.1 is this node's own" })
  const v = plan([peer('node-x', ['10.200.8.0/24'], ['192.0.2.1'])], LOCAL, NETWORKS, 'vxlan')
  assert.equal([v.routes, v.vxlan!.fdb, v.vxlan!.neighbours], [[], [], []])
})

const VXLAN_OK = { kind: 'vxlan', id: 1, local: '192.0.2.1', port: 4789, learning: false, ttl: 0, mtu: 1450, mac: '0a:58:0a:c8:01:00', up: true, addresses: ['10.200.1.0'] }

test('diff: an existing kube-cni.1 whose VNI, local, port, learning, ttl, dev or type differs is made again', () => {
  const p = plan([peer('node-b', ['10.200.2.0/24'], ['192.0.2.2'])], LOCAL, NETWORKS, 'vxlan')
  const withDevice = (vxlan: object) => ({ ...current([]), vxlan: { ...VXLAN_OK, ...vxlan } })
  const first = (d: ReturnType<typeof diff>) => d.ip[0]?.line ?? ''
  assert.is.not(first(diff(p, withDevice({}))), 'link del dev kube-cni.1', 'the right device is kept')
  for (const wrong of [{ id: 2 }, { local: '192.0.2.9' }, { port: 8472 }, { learning: true }, { ttl: 5 }, { link: 'eth0' }, { kind: 'dummy' }]) {
    const d = diff(p, withDevice(wrong))
    assert.is(first(d), 'link del dev kube-cni.1', JSON.stringify(wrong))
    assert.match(d.ip[1].line, /^link add name kube-cni\.1 .* nolearning$/)
    assert.ok(d.ip.some((s) => s.line.startsWith('route replace 10.200.2.0/24 via 10.200.2.0 dev kube-cni.1 onlink')), JSON.stringify(wrong))
  }
})

test('batchFailures: each failed line of `ip -force -batch` is reported with its Node and its error', () => {
  const steps = [
    { line: 'route replace 10.200.3.0/24 via 192.0.2.255 proto 211', node: 'node-bad' },
    { line: 'route replace 10.200.2.0/24 via 192.0.2.2 proto 211', node: 'node-b' },
    { line: 'link set dev kube-cni.1 up' },
  ]
  const stderr = 'Error: Nexthop has invalid gateway.\nCommand failed -:1\nCannot find device "kube-cni.1"\nCommand failed -:3\n'
  assert.equal(batchFailures('ip', steps, stderr), [
    { node: 'node-bad', line: 'ip route replace 10.200.3.0/24 via 192.0.2.255 proto 211', error: 'Error: Nexthop has invalid gateway.' },
    { node: undefined, line: 'ip link set dev kube-cni.1 up', error: 'Cannot find device "kube-cni.1"' },
  ])
  assert.equal(batchFailures('bridge', steps, 'Segmentation fault\n'), [{ line: 'bridge -force -batch', error: 'Segmentation fault' }])
})

test('vxlan: IPv6-only nodes get VTEP MACs of their own, from the podCIDR bits above the prefix', () => {
  const self6 = peer('node-a', ['fd00:200:0:1::/64'], ['2001:db8:a::1'])
  const peers = [peer('node-b', ['fd00:200:0:2::/64'], ['2001:db8:a::2']), peer('node-c', ['fd00:200:0:3::/64'], ['2001:db8:a::3'])]
  const p = planRoutes({ items: [self6, ...peers] } as any, 'node-a', 'vxlan', LOCAL, NETWORKS)
  const macs = [p.vxlan!.mac, ...p.vxlan!.fdb.map((f) => f.mac)]
  assert.equal(macs, ['0a:58:00:00:00:01', '0a:58:00:00:00:02', '0a:58:00:00:00:03'])
})

// ---- the diff, backend by backend ------------------------------------------------------------------------

const B = peer('node-b', ['10.200.2.0/24', 'fd00:200:0:2::/64'], ['192.0.2.2', '2001:db8:a::2'])
const C = peer('node-c', ['10.200.3.0/24', 'fd00:200:0:3::/64'], ['192.0.2.3', '2001:db8:a::3'])
const ours = (dst: string, gateway: string, dev = 'eth0') => ({ dst, gateway, dev, proto: '211' })
const lines = (d: ReturnType<typeof diff>) => [...d.ip.map((s) => `ip ${s.line}`), ...d.bridge.map((s) => `bridge ${s.line}`)]

test('host-gw diff from nothing: one route per peer and family, proto 211, each tied to its Node', () => {
  const d = diff(plan([B, C]), current([]))
  assert.equal(lines(d), [
    'ip route replace 10.200.2.0/24 via 192.0.2.2 proto 211',
    'ip route replace fd00:200:0:2::/64 via 2001:db8:a::2 proto 211',
    'ip route replace 10.200.3.0/24 via 192.0.2.3 proto 211',
    'ip route replace fd00:200:0:3::/64 via 2001:db8:a::3 proto 211',
  ])
  assert.equal(d.ip.map((s) => s.node), ['node-b', 'node-b', 'node-c', 'node-c'])
  assert.equal(d.skipped, [])
})

test('host-gw diff: nothing to do when the kernel already matches; only the wrong gateway is replaced', () => {
  const right = [ours('10.200.2.0/24', '192.0.2.2'), ours('fd00:200:0:2::/64', '2001:db8:a::2')]
  assert.equal(lines(diff(plan([B]), current(right))), [])
  const moved = [ours('10.200.2.0/24', '192.0.2.99'), ours('fd00:200:0:2::/64', '2001:db8:a::2')]
  assert.equal(lines(diff(plan([B]), current(moved))), ['ip route replace 10.200.2.0/24 via 192.0.2.2 proto 211'])
})

test('diff: kube-cni\'s routes that no peer needs any more are removed, in both families; foreign ones are not', () => {
  const have = [
    ours('10.200.2.0/24', '192.0.2.2'),
    ours('fd00:200:0:2::/64', '2001:db8:a::2'),
    ours('10.200.9.0/24', '192.0.2.9'), // node-i left the cluster
    ours('fd00:200:0:9::/64', '2001:db8:a::9'),
    { dst: '10.200.8.0/24', gateway: '192.0.2.8', dev: 'eth0', proto: '4' }, // the admin's
  ]
  const d = diff(plan([B]), current(have))
  assert.equal(lines(d), ['ip route del 10.200.9.0/24 proto 211', 'ip route del fd00:200:0:9::/64 proto 211'])
  assert.ok(d.ip.every((s) => s.node === undefined && s.why === 'no peer needs it any more'))
})

test('diff: an IPv6 route moving to another device is deleted first (the kernel refuses to replace it); IPv4 is replaced in place', () => {
  // Was vxlan, now host-gw, with kube-cni.1 already gone: its routes are still in the table until removed.
  const have = [ours('10.200.2.0/24', '10.200.2.0', 'kube-cni.1'), ours('fd00:200:0:2::/64', 'fd00:200:0:2::', 'kube-cni.1')]
  assert.equal(lines(diff(plan([B]), current(have))), [
    'ip route replace 10.200.2.0/24 via 192.0.2.2 proto 211',
    'ip route del fd00:200:0:2::/64 proto 211',
    'ip route replace fd00:200:0:2::/64 via 2001:db8:a::2 proto 211',
  ])
})

test('host-gw: a peer on no connected network is skipped, pointing to vxlan; a family without an InternalIP gets no route', () => {
  const far = peer('node-far', ['10.200.4.0/24'], ['198.51.100.4'])
  const v4only = peer('node-d', ['10.200.5.0/24', 'fd00:200:0:5::/64'], ['192.0.2.5'])
  const p = plan([far, v4only])
  assert.equal(dsts(p), ['node-d 10.200.5.0/24 via 192.0.2.5'])
  assert.equal(reasons(p), {
    'node-far': '198.51.100.4 is not on a directly connected network; host-gw cannot reach it, use --backend vxlan',
    'node-d': 'no IPv6 InternalIP for fd00:200:0:5::/64',
  })
})

const vxlanPlan = (peers: unknown[]) => plan(peers, LOCAL, NETWORKS, 'vxlan')

test('vxlan from nothing: the device, its VTEPs (IPv6 nodad), a neighbour, an fdb entry and an onlink route per peer', () => {
  const d = diff(vxlanPlan([B]), current([]))
  assert.equal(lines(d), [
    'ip link add name kube-cni.1 address 0a:58:0a:c8:01:00 mtu 1450 type vxlan id 1 local 192.0.2.1 dstport 4789 nolearning',
    'ip link set dev kube-cni.1 up',
    'ip addr replace 10.200.1.0/32 dev kube-cni.1',
    'ip addr replace fd00:200:0:1::/128 dev kube-cni.1 nodad',
    'ip neigh replace 10.200.2.0 lladdr 0a:58:0a:c8:02:00 dev kube-cni.1 nud permanent',
    'ip neigh replace fd00:200:0:2:: lladdr 0a:58:0a:c8:02:00 dev kube-cni.1 nud permanent',
    'ip route replace 10.200.2.0/24 via 10.200.2.0 dev kube-cni.1 onlink proto 211',
    'ip route replace fd00:200:0:2::/64 via fd00:200:0:2:: dev kube-cni.1 onlink proto 211',
    'bridge fdb replace 0a:58:0a:c8:02:00 dev kube-cni.1 dst 192.0.2.2 self permanent',
  ])
})

test('vxlan: the tunnel MTU is the underlay\'s less the headers, 50 bytes over IPv4 and 70 over IPv6', () => {
  const jumbo = LOCAL.map((l) => ({ ...l, mtu: 9000 }))
  assert.is(plan([B], jumbo, NETWORKS, 'vxlan').vxlan!.mtu, 8950)
  const v6 = peer('node-a', ['fd00:200:0:1::/64'], ['2001:db8:a::1'])
  const p = planRoutes({ items: [v6, peer('node-b', ['fd00:200:0:2::/64'], ['2001:db8:a::2'])] } as any, 'node-a', 'vxlan', LOCAL, NETWORKS)
  assert.equal([p.vxlan!.local, p.vxlan!.mtu], ['2001:db8:a::1', 1430])
  assert.equal(p.vxlan!.fdb.map((f) => f.dst), ['2001:db8:a::2'])
  assert.equal(dsts(p), ['node-b fd00:200:0:2::/64 via fd00:200:0:2::'])
})

test('vxlan: nothing to do when the device, neighbours, fdb and routes match; stale neighbours and fdb entries go', () => {
  const p = vxlanPlan([B])
  const routes = [ours('10.200.2.0/24', '10.200.2.0', 'kube-cni.1'), ours('fd00:200:0:2::/64', 'fd00:200:0:2::', 'kube-cni.1')]
  const device = { ...VXLAN_OK, addresses: ['10.200.1.0', 'fd00:200:0:1::'] }
  const neighbours = [{ address: '10.200.2.0', mac: '0a:58:0a:c8:02:00' }, { address: 'fd00:200:0:2::', mac: '0a:58:0a:c8:02:00' }]
  const fdb = [{ mac: '0a:58:0a:c8:02:00', dst: '192.0.2.2' }]
  const now = { ...current(routes), vxlan: device, neighbours, fdb }
  assert.equal(lines(diff(p, now)), [])
  const stale = { ...now, neighbours: [...neighbours, { address: '10.200.9.0', mac: '0a:58:0a:c8:09:00' }], fdb: [...fdb, { mac: '0a:58:0a:c8:09:00', dst: '192.0.2.9' }] }
  assert.equal(lines(diff(p, stale)), ['ip neigh del 10.200.9.0 dev kube-cni.1', 'bridge fdb del 0a:58:0a:c8:09:00 dev kube-cni.1 dst 192.0.2.9 self'])
  const changed = { ...now, vxlan: { ...device, mtu: 1400, mac: '0a:58:0a:c8:01:99', up: false } }
  assert.equal(lines(diff(p, changed)), ['ip link set dev kube-cni.1 mtu 1450', 'ip link set dev kube-cni.1 address 0a:58:0a:c8:01:00', 'ip link set dev kube-cni.1 up'])
})

test('vxlan to host-gw: the device goes, and with it its routes, which are then not deleted one by one', () => {
  const have = { ...current([ours('10.200.2.0/24', '10.200.2.0', 'kube-cni.1')]), vxlan: VXLAN_OK }
  const d = diff(plan([peer('node-b', ['10.200.2.0/24'], ['192.0.2.2'])]), have)
  assert.equal(lines(d), ['ip link del dev kube-cni.1', 'ip route replace 10.200.2.0/24 via 192.0.2.2 proto 211'])
  assert.is(d.ip[0].why, 'switching to host-gw')
})

test('vxlan: this node without an InternalIP, a podCIDR, or its InternalIP in this netns is an error that says which', () => {
  const run = (self: unknown) => () => planRoutes({ items: [self, B] } as any, 'node-a', 'vxlan', LOCAL, NETWORKS)
  assert.throws(run(peer('node-a', ['10.200.1.0/24'], [])), /node node-a has no InternalIP: vxlan needs one/)
  assert.throws(run(peer('node-a', [], ['192.0.2.1'])), /node node-a has no podCIDR/)
  assert.throws(run(peer('node-a', ['10.200.1.0/24'], ['192.0.2.200'])), /InternalIP 192\.0\.2\.200 of node-a is not an address of this netns/)
  assert.throws(() => planRoutes({ items: [B] } as any, 'node-a', 'host-gw', LOCAL), /node node-a is not in the NodeList: pass the name Kubernetes knows it by with --node/)
})

test.run()
