// The demo and explain mode: what a learner runs first.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { Node, PLUGIN, cleanupAll, nsPath, sh } from '../helpers/cluster.ts'

test.after.each(cleanupAll)

/** The root netns as the kernel has it: links, routes, rules, sysctls and the netns list. */
function rootSnapshot(): string {
  return [
    sh(['ip', '-d', 'link', 'show']).stdout,
    sh(['ip', 'route', 'show', 'table', 'all']).stdout,
    sh(['ip', '-6', 'route', 'show', 'table', 'all']).stdout,
    sh(['iptables-save']).stdout.replace(/\[\d+:\d+\]/g, '').replace(/^#.*$/gm, ''),
    sh(['ip6tables-save']).stdout.replace(/\[\d+:\d+\]/g, '').replace(/^#.*$/gm, ''),
    sh(['sysctl', 'net.ipv4.ip_forward', 'net.ipv6.conf.all.forwarding']).stdout,
    sh(['ip', 'netns', 'list']).stdout,
  ].join('\n')
}

for (const backend of ['host-gw', 'vxlan']) {
  test(`npm run demo (${backend}): every pod reaches every pod with its own IP, the outside through NAT, and the root netns is unchanged`, () => {
    sh(['node', PLUGIN, 'lab', 'down']) // start from no lab, whatever an earlier run left behind
    const before = rootSnapshot()
    const r = sh(['node', PLUGIN, 'lab', 'demo', '--backend', backend, '--nodes', '2', '--pods', '2'])
    assert.is(r.code, 0, r.stdout + r.stderr)
    assert.match(r.stdout, /All pods reach each other with their own IPs, and the outside through NAT/)
    assert.is((r.stdout.match(/✓ kept/g) ?? []).length, 16)
    assert.is((r.stdout.match(/masqueraded to node/g) ?? []).length, 4)
    if (backend === 'vxlan') assert.match(r.stdout, /node2 .*198\.51\.100\.12.*behind the router/)
    assert.is(rootSnapshot(), before)
  })
}

test('npm run demo --dual-stack (vxlan): both families, each pod keeps its own IPv4 and IPv6 address, root netns unchanged', () => {
  sh(['node', PLUGIN, 'lab', 'down'])
  const before = rootSnapshot()
  // `npm run demo --dual-stack` hands the flag over as npm config in the environment.
  const r = require('node:child_process').spawnSync('node', [PLUGIN, 'lab', 'demo', '--backend', 'vxlan'], {
    encoding: 'utf8',
    env: { ...process.env, npm_config_dual_stack: 'true' },
  })
  assert.is(r.status, 0, r.stdout + r.stderr)
  assert.match(r.stdout, /dual-stack/)
  assert.is((r.stdout.match(/✓ kept/g) ?? []).length, 32)
  assert.match(r.stdout, /✓ seen as 2001:db8:b::c \(masqueraded to node2\)/)
  assert.is(rootSnapshot(), before)
})

test('lab down cleans up after a lab that was left running', () => {
  assert.is(sh(['node', PLUGIN, 'lab', 'up', '--pods', '1']).code, 0)
  assert.ok(sh(['ip', 'netns', 'list']).stdout.includes('kcl-node1'))
  assert.is(sh(['node', PLUGIN, 'lab', 'status']).code, 0)
  assert.is(sh(['node', PLUGIN, 'lab', 'down']).code, 0)
  assert.not.ok(sh(['ip', 'netns', 'list']).stdout.includes('kcl-'))
  assert.is(sh(['node', PLUGIN, 'lab', 'status']).code, 1)
})

test('KUBE_CNI_EXPLAIN=1 prints each step as a shell line, annotated with the bash step it replaces', async () => {
  const node = new Node()
  const pod = node.pod()
  const r = await node.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(pod), env: { KUBE_CNI_EXPLAIN: '1' } })
  assert.is(r.code, 0)
  assert.ok(r.json.ips, 'stdout still holds exactly the result')
  assert.match(r.stderr, /ip link add name cni0 address 0a:58:0a:c8:01:01 type bridge\t# bash: brctl addbr cni0/)
  assert.match(r.stderr, /iptables-restore -w --noflush/)
  assert.match(r.stderr, /ip link add veth[0-9a-f]{8} type veth peer name eth0 netns \/var\/run\/netns\/\S+\t# bash: ip link add \$CNI_IFNAME/)
  assert.match(r.stderr, new RegExp(`nsenter --net=${nsPath(pod)} ip addr add 10\\.200\\.1\\.2/24 dev eth0\\t# bash: ip netns exec`))
  assert.match(r.stderr, /ip route add default via 10\.200\.1\.1 dev eth0\t# bash:/)
})

test.run()
