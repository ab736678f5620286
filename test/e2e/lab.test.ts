// The demo and explain mode: what a learner runs first.
import { spawnSync } from 'node:child_process'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { Node, PLUGIN, cleanupAll, nsPath, sh } from '../helpers/cluster.ts'

test.after.each(cleanupAll)

/** The root netns as the kernel has it: links, routes, rules and sysctls. */
function rootSnapshot(): string {
  return [
    sh(['ip', '-d', 'link', 'show']).stdout,
    sh(['ip', 'route', 'show', 'table', 'all']).stdout,
    sh(['ip', '-6', 'route', 'show', 'table', 'all']).stdout,
    sh(['iptables-save']).stdout.replace(/\[\d+:\d+\]/g, '').replace(/^#.*$/gm, ''),
    sh(['ip6tables-save']).stdout.replace(/\[\d+:\d+\]/g, '').replace(/^#.*$/gm, ''),
    sh(['sysctl', 'net.ipv4.ip_forward', 'net.ipv6.conf.all.forwarding']).stdout,
  ].join('\n')
}

const MARK = '--- kube-cni lab test: exit'
const quote = (arg: string) => `'${arg.replaceAll("'", `'\\''`)}'`

/**
 * Runs the steps in turn in a mount and PID namespace of their own, on an empty /run. The lab's netns names
 * (/run/netns/kcl-*) and its state dir (/run/kube-cni-lab) exist only there: a lab someone left up on this
 * machine is neither seen nor removed by `lab up` or `lab down`, and anything the steps leave behind dies
 * with the PID namespace.
 */
function inOwnRun(steps: string[][], env: Record<string, string> = {}): { code: number; stdout: string }[] {
  const script = ['mount -t tmpfs kube-cni-lab-test /run || exit 1', ...steps.map((argv) => `${argv.map(quote).join(' ')}; echo "${MARK} $?"`)].join('\n')
  const r = spawnSync('unshare', ['--mount', '--propagation', 'private', '--pid', '--fork', '--mount-proc', '--kill-child', 'sh', '-c', script], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
  })
  const results = [...r.stdout.matchAll(new RegExp(`([^]*?)${MARK} (\\d+)\n`, 'g'))].map((m) => ({ code: Number(m[2]), stdout: m[1] }))
  assert.is(results.length, steps.length, `${r.stdout}${r.stderr}`)
  return results
}

const labNetns = ['ip', 'netns', 'list']
const lab = (...args: string[]) => ['node', PLUGIN, 'lab', ...args]

for (const backend of ['host-gw', 'vxlan']) {
  test(`npm run demo (${backend}): every pod reaches every pod with its own IP, the outside through NAT, and the root netns is unchanged`, () => {
    const before = rootSnapshot()
    const [r, left] = inOwnRun([lab('demo', '--backend', backend, '--nodes', '2', '--pods', '2'), labNetns])
    assert.is(r.code, 0, r.stdout)
    assert.match(r.stdout, /All pods reach each other with their own IPs, and the outside through NAT/)
    assert.is((r.stdout.match(/✓ kept/g) ?? []).length, 16)
    assert.is((r.stdout.match(/masqueraded to node/g) ?? []).length, 4)
    if (backend === 'vxlan') assert.match(r.stdout, /node2 .*198\.51\.100\.12.*behind the router/)
    assert.is(left.stdout, '', 'the demo removed its netns')
    assert.is(rootSnapshot(), before)
  })
}

test('npm run demo --dual-stack (vxlan): both families, each pod keeps its own IPv4 and IPv6 address, root netns unchanged', () => {
  const before = rootSnapshot()
  // `npm run demo --dual-stack` hands the flag over as npm config in the environment.
  const [r, left] = inOwnRun([lab('demo', '--backend', 'vxlan'), labNetns], { npm_config_dual_stack: 'true' })
  assert.is(r.code, 0, r.stdout)
  assert.match(r.stdout, /dual-stack/)
  assert.is((r.stdout.match(/✓ kept/g) ?? []).length, 32)
  assert.match(r.stdout, /✓ seen as 2001:db8:b::c \(masqueraded to node2\)/)
  assert.is(left.stdout, '', 'the demo removed its netns')
  assert.is(rootSnapshot(), before)
})

test('lab down cleans up after a lab that was left running', () => {
  const [up, listed, running, down, after, stopped] = inOwnRun([lab('up', '--pods', '1'), labNetns, lab('status'), lab('down'), labNetns, lab('status')])
  assert.is(up.code, 0, up.stdout)
  assert.match(listed.stdout, /^kcl-node1\b/m)
  assert.is(running.code, 0, running.stdout)
  assert.is(down.code, 0, down.stdout)
  assert.is(after.stdout, '')
  assert.is(stopped.code, 1, stopped.stdout)
})

test('KUBE_CNI_EXPLAIN=1 prints each step as a shell line, annotated with the bash step it replaces', async () => {
  const node = new Node()
  const pod = node.pod()
  const r = await node.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(pod), env: { KUBE_CNI_EXPLAIN: '1' } })
  assert.is(r.code, 0)
  assert.ok(r.json.ips, 'stdout still holds exactly the result')
  assert.match(r.stderr, /ip link add name cni0 address 0a:58:0a:c8:01:01 type bridge\t# bash: brctl addbr cni0/)
  assert.match(r.stderr, /iptables-restore -w --noflush/)
  assert.match(r.stderr, /ip link add name veth[0-9a-f]{8} type veth peer name eth0 netns \/var\/run\/netns\/\S+\t# bash: ip link add \$CNI_IFNAME/)
  assert.match(r.stderr, new RegExp(`nsenter --net=${nsPath(pod)} ip addr add 10\\.200\\.1\\.2/24 dev eth0\\t# bash: ip netns exec`))
  assert.match(r.stderr, /ip route add default via 10\.200\.1\.1 dev eth0\t# bash:/)
})

test.run()
