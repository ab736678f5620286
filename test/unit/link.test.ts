// The two `ip -batch` scripts of an ADD, as lines: what each side of the veth gets, and that every name from
// outside (CNI_IFNAME, the bridge, the host veth) reaches `ip` behind its keyword.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { type PodPlan, attachSteps, bridgeSteps, hostSteps, podAddressSteps, podRouteSteps, podSteps, vethSteps } from '../../lib/plugin/link.ts'
import { parseNetConf } from '../../lib/plugin/netconf.ts'

const conf = (extra: Record<string, unknown> = {}) =>
  parseNetConf(JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'kube-cni', network: '10.200.0.0/16', subnet: '10.200.1.0/24', ...extra }))
const DUAL = { network: undefined, subnet: undefined, networks: ['10.200.0.0/16', 'fd00:200::/56'], subnets: ['10.200.1.0/24', 'fd00:200:0:1::/64'] }

function plan(extra: Record<string, unknown> = {}, ifname = 'eth0'): PodPlan {
  const c = conf(extra)
  // The pod takes the host after the gateway in each family.
  return { conf: c, netns: '/var/run/netns/pod1', ifname, hostVeth: 'veth0a1b2c3d', ips: c.pools.map((pool) => ({ pool, ip: pool.gateway + 1n })) }
}
const lines = (steps: { line: string }[]) => steps.map((s) => s.line)

test('host side: the pair with its pod end made in the netns, attached to the bridge, the gateway re-asserted, then the MACs read back', () => {
  assert.equal(lines(hostSteps(plan())), [
    'link add name veth0a1b2c3d type veth peer name eth0 netns /var/run/netns/pod1',
    'link set dev veth0a1b2c3d master cni0 up',
    'link set dev veth0a1b2c3d type bridge_slave hairpin on',
    'addr replace 10.200.1.1/24 dev cni0',
    'link set dev cni0 up',
    'link show dev cni0',
    'link show dev veth0a1b2c3d',
  ])
})

test('pod side: address, link up, default route via the gateway, then its MAC', () => {
  assert.equal(lines(podSteps(plan())), [
    'addr add 10.200.1.2/24 dev eth0',
    'link set dev eth0 up',
    'route add default via 10.200.1.1 dev eth0',
    'link show dev eth0',
  ])
})

test('the batches are the bash steps in order: veth into the sandbox, attach, bridge; pod address, pod route', () => {
  const p = plan()
  assert.equal(lines(vethSteps(p)), ['link add name veth0a1b2c3d type veth peer name eth0 netns /var/run/netns/pod1'])
  assert.equal(lines(attachSteps(p)), ['link set dev veth0a1b2c3d master cni0 up', 'link set dev veth0a1b2c3d type bridge_slave hairpin on'])
  assert.equal(lines(bridgeSteps(p.conf)), ['addr replace 10.200.1.1/24 dev cni0', 'link set dev cni0 up'])
  assert.equal(lines(podAddressSteps(p)), ['addr add 10.200.1.2/24 dev eth0', 'link set dev eth0 up'])
  assert.equal(lines(podRouteSteps(p)), ['route add default via 10.200.1.1 dev eth0'])
  assert.equal(lines(hostSteps(p)).slice(0, 5), lines([...vethSteps(p), ...attachSteps(p), ...bridgeSteps(p.conf)]))
  assert.equal(lines(podSteps(p)).slice(0, 3), lines([...podAddressSteps(p), ...podRouteSteps(p)]))
})

test('"hairpinMode": false leaves hairpin off', () => {
  assert.not.ok(lines(hostSteps(plan({ hairpinMode: false }))).some((l) => l.includes('hairpin')))
})

test('"mtu" goes on both ends of the pair, and nowhere without it', () => {
  assert.is(hostSteps(plan({ mtu: 1450 }))[0].line, 'link add name veth0a1b2c3d mtu 1450 type veth peer name eth0 mtu 1450 netns /var/run/netns/pod1')
  assert.not.ok([...lines(hostSteps(plan())), ...lines(podSteps(plan()))].some((l) => l.includes('mtu')))
})

test('dual-stack: both gateways on the bridge and both pod addresses, IPv6 with nodad; a default route per family', () => {
  const host = lines(hostSteps(plan(DUAL)))
  assert.ok(host.includes('addr replace 10.200.1.1/24 dev cni0'), host.join('\n'))
  assert.ok(host.includes('addr replace fd00:200:0:1::1/64 dev cni0 nodad'), host.join('\n'))
  assert.equal(lines(podSteps(plan(DUAL))), [
    'addr add 10.200.1.2/24 dev eth0',
    'addr add fd00:200:0:1::2/64 dev eth0 nodad',
    'link set dev eth0 up',
    'route add default via 10.200.1.1 dev eth0',
    'route add ::/0 via fd00:200:0:1::1 dev eth0',
    'link show dev eth0',
  ])
})

test('every interface name goes behind its keyword (dev, name or master), even one that reads like an option', () => {
  for (const ifname of ['eth0', 'help', '-f', 'all']) {
    const p = plan({ bridge: 'br-x', ...DUAL }, ifname)
    const all = [...lines(hostSteps(p)), ...lines(podSteps(p))]
    for (const name of [ifname, 'br-x', p.hostVeth]) {
      const before = all.flatMap((l) => l.split(' ').flatMap((word, i, words) => (word === name ? [words[i - 1]] : [])))
      assert.ok(before.length > 0, name)
      for (const keyword of before) assert.ok(['dev', 'name', 'master'].includes(keyword), `${name} after ${keyword} in:\n${all.join('\n')}`)
    }
  }
})

test.run()
