// The plugin as a runtime drives it, against the real kernel: a node netns, pod netns, CNI_* variables and
// the netconf on stdin; then `ip -j`, ping and the IPAM files say what really happened.
import { existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { Node, cleanupAll, delNetns, ipj, must, nsPath, ping } from '../helpers/cluster.ts'
import { sleep } from 'zx'

test.after.each(cleanupAll)

const reserved = (node: Node) => {
  const dir = join(String(node.conf.dataDir), 'k8s-pod-network')
  return existsSync(dir) ? readdirSync(dir).filter((f) => /^[0-9a-f.:]+$/.test(f) && f.includes('.')) : []
}
const attachments = (node: Node) => {
  const dir = join(String(node.conf.dataDir), 'k8s-pod-network', 'attachments')
  return existsSync(dir) ? readdirSync(dir) : []
}
const veths = (node: Node) => node.ip('link', 'show', 'type', 'veth')

for (const version of ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']) {
  test(`ADD, CHECK and DEL at ${version}: the result matches what the kernel has`, async () => {
    const node = new Node({ cniVersion: version, mtu: 1400 })
    const pod = node.pod()
    const add = await node.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(pod) })
    assert.is(add.code, 0, add.stdout + add.stderr)
    const r = add.json
    assert.is(r.cniVersion, version)
    assert.is(r.interfaces.length, 3)
    const [bridge, hostVeth, podIf] = r.interfaces
    assert.is(bridge.name, 'cni0')
    assert.match(hostVeth.name, /^veth[0-9a-f]{8}$/)
    assert.is(podIf.name, 'eth0')
    assert.is(podIf.sandbox, nsPath(pod))
    assert.is(podIf.mtu, version === '1.1.0' ? 1400 : undefined)
    assert.is(r.ips.length, 1)
    assert.is(r.ips[0].version, version.startsWith('0.') ? '4' : undefined)
    assert.is(r.ips[0].gateway, '10.200.1.1')
    assert.is(r.ips[0].interface, 2)
    assert.equal(r.routes, [{ dst: '0.0.0.0/0', gw: '10.200.1.1' }])

    // The kernel agrees with every field.
    const [br] = node.ip('addr', 'show', 'dev', 'cni0')
    assert.is(br.address, bridge.mac)
    assert.ok(br.addr_info.some((a: any) => a.local === '10.200.1.1' && a.prefixlen === 24))
    const [host] = node.ip('link', 'show', 'dev', hostVeth.name)
    assert.is(host.address, hostVeth.mac)
    assert.is(host.master, 'cni0')
    assert.is(host.mtu, 1400)
    const [eth0] = ipj(pod, 'addr', 'show', 'dev', 'eth0')
    assert.is(eth0.address, podIf.mac)
    assert.is(eth0.mtu, 1400)
    assert.is(eth0.operstate, 'UP')
    const [addr, prefix] = r.ips[0].address.split('/')
    assert.ok(eth0.addr_info.some((a: any) => a.local === addr && String(a.prefixlen) === prefix))
    const [def] = ipj(pod, 'route', 'show', 'default')
    assert.is(def.gateway, '10.200.1.1')
    assert.is(def.dev, 'eth0')
    const [slave] = ipj(node.ns, '-d', 'link', 'show', 'dev', hostVeth.name)
    assert.is(slave.linkinfo.info_slave_data.hairpin, true)

    if (version !== '0.3.0' && version !== '0.3.1') {
      const check = await node.cni({ command: 'CHECK', containerId: 'c1', netns: nsPath(pod) }, { ...node.conf, prevResult: r })
      assert.is(check.code, 0, check.stdout + check.stderr)
      assert.is(check.stdout, '', 'CHECK prints nothing on success')
    }
    const del = await node.cni({ command: 'DEL', containerId: 'c1', netns: nsPath(pod) }, { ...node.conf, prevResult: r })
    assert.is(del.code, 0, del.stdout + del.stderr)
    assert.is(del.stdout, '')
    assert.equal(ipj(pod, 'link', 'show', 'dev', 'lo').length, 1)
    assert.is(ipj(pod, 'link', 'show').length, 1, 'only lo is left in the pod')
    assert.equal(veths(node), [])
    assert.equal(reserved(node), [])
    assert.equal(attachments(node), [])
  })
}

test('CHECK is refused below 0.4.0 with code 1, as libcni does', async () => {
  const node = new Node({ cniVersion: '0.3.1' })
  const { pod, result } = await node.addPod('c1')
  const r = await node.cni({ command: 'CHECK', containerId: 'c1', netns: nsPath(pod) }, { ...node.conf, prevResult: result })
  assert.is(r.code, 1)
  assert.is(r.json.code, 1)
  assert.is(r.json.cniVersion, '0.3.1')
})

test('a bridge made by hand before kube-cni (the bash tutorial\'s cni0) still gets the node rules, once', async () => {
  const node = new Node()
  must(['ip', '-n', node.ns, 'link', 'add', 'cni0', 'type', 'bridge'])
  await node.addPod('a')
  await node.addPod('b')
  const nat = must(['ip', 'netns', 'exec', node.ns, 'iptables-save', '-t', 'nat'])
  assert.is(nat.split('\n').filter((l: string) => l.startsWith('-A POSTROUTING -s 10.200.1.0/24 -j KUBE-CNI-MASQ')).length, 1)
  assert.is(must(['ip', 'netns', 'exec', node.ns, 'sysctl', '-n', 'net.ipv4.ip_forward']).trim(), '1')
  const [br] = node.ip('addr', 'show', 'dev', 'cni0')
  assert.ok(br.addr_info.some((a: any) => a.local === '10.200.1.1'), 'the hand-made bridge got the gateway address')
})

test('two pods on one node ping each other', async () => {
  const node = new Node()
  const a = await node.addPod('a')
  const b = await node.addPod('b')
  const ipOf = (r: any) => r.ips[0].address.split('/')[0]
  assert.ok(ping(a.pod, ipOf(b.result)), 'a -> b')
  assert.ok(ping(b.pod, ipOf(a.result)), 'b -> a')
  assert.ok(ping(a.pod, '10.200.1.1'), 'a -> gateway')
})

test('DEL succeeds after the netns is deleted, and frees the IP', async () => {
  const node = new Node()
  const { pod } = await node.addPod('c1')
  delNetns(pod)
  const r = await node.cni({ command: 'DEL', containerId: 'c1', netns: nsPath(pod) })
  assert.is(r.code, 0, r.stdout)
  assert.equal(reserved(node), [])
  assert.equal(veths(node), [])
})

test('DEL succeeds with an empty CNI_NETNS (containerd after the task exits), and removes the veth', async () => {
  const node = new Node()
  const { pod } = await node.addPod('c1')
  const r = await node.cni({ command: 'DEL', containerId: 'c1', netns: '' })
  assert.is(r.code, 0, r.stdout)
  assert.equal(reserved(node), [])
  assert.equal(veths(node), [])
  assert.is(ipj(pod, 'link', 'show').length, 1, 'the pod end went with the host end')
})

test('DEL of something that never existed succeeds, and so does a repeated DEL', async () => {
  const node = new Node()
  for (let i = 0; i < 2; i++) {
    const r = await node.cni({ command: 'DEL', containerId: 'ghost', netns: '/var/run/netns/does-not-exist' })
    assert.is(r.code, 0, r.stdout)
  }
})

test('a second ADD for the same container and ifname is an error and leaves the first intact', async () => {
  const node = new Node()
  const { pod, result } = await node.addPod('c1')
  const again = await node.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(pod) })
  assert.is(again.code, 1)
  assert.is(again.json.code, 102)
  assert.match(again.json.msg, /c1/)
  assert.equal(reserved(node), [result.ips[0].address.split('/')[0]])
  assert.is(veths(node).length, 1)
})

test('ADD into a netns where CNI_IFNAME already exists fails and rolls back its IP', async () => {
  const node = new Node()
  const { pod } = await node.addPod('c1')
  const r = await node.cni({ command: 'ADD', containerId: 'c2', netns: nsPath(pod) })
  assert.is(r.code, 1)
  assert.is(r.json.code, 102)
  assert.match(r.json.msg, /eth0 already exists/)
  assert.is(reserved(node).length, 1, 'only c1 keeps an address')
  assert.equal(attachments(node), ['c1:eth0'])
  assert.is(veths(node).length, 1)
})

test('CHECK fails after the pod address is removed', async () => {
  const node = new Node({ cniVersion: '0.4.0' })
  const { pod, result } = await node.addPod('c1')
  must(['ip', '-n', pod, 'addr', 'flush', 'dev', 'eth0'])
  const r = await node.cni({ command: 'CHECK', containerId: 'c1', netns: nsPath(pod) }, { ...node.conf, prevResult: result })
  assert.is(r.code, 1)
  assert.is(r.json.code, 104)
  assert.match(r.json.msg, /is not on eth0/)
})

test('CHECK fails when the IPAM reservation is gone', async () => {
  const node = new Node({ cniVersion: '1.0.0' })
  const { pod, result } = await node.addPod('c1')
  require('node:fs').unlinkSync(join(String(node.conf.dataDir), 'k8s-pod-network', result.ips[0].address.split('/')[0]))
  const r = await node.cni({ command: 'CHECK', containerId: 'c1', netns: nsPath(pod) }, { ...node.conf, prevResult: result })
  assert.is(r.json.code, 104)
  assert.match(r.json.msg, /not reserved/)
})

test('100 concurrent ADDs get 100 distinct IPs, then 100 concurrent DELs leave nothing', async () => {
  const node = new Node({ subnet: '10.200.1.0/24' })
  const pods = Array.from({ length: 100 }, () => node.pod())
  const adds = await Promise.all(pods.map((pod, i) => node.cni({ command: 'ADD', containerId: `c${i}`, netns: nsPath(pod) })))
  const failures = adds.filter((r) => r.code !== 0)
  assert.is(failures.length, 0, failures.map((f) => f.stdout).join('\n'))
  const ips = adds.map((r) => r.json.ips[0].address)
  assert.is(new Set(ips).size, 100)
  const onInterfaces = pods.map((pod) => {
    const [eth0] = ipj(pod, 'addr', 'show', 'dev', 'eth0')
    return eth0.addr_info.find((a: any) => a.family === 'inet').local
  })
  assert.is(new Set(onInterfaces).size, 100)
  assert.is(veths(node).length, 100)
  assert.is(node.ip('link', 'show', 'type', 'bridge').length, 1, 'one bridge, however many raced to create it')
  const rules = must(['ip', 'netns', 'exec', node.ns, 'iptables-save', '-t', 'nat'])
  assert.is(rules.split('\n').filter((l: string) => l.startsWith('-A POSTROUTING') && l.includes(' -j KUBE-CNI-MASQ-')).length, 1, 'the masquerade jump exists once')
  assert.is(rules.split('\n').filter((l: string) => l.includes(' --name kube-cni-canary-')).length, 1, 'and its canary')

  const dels = await Promise.all(pods.map((pod, i) => node.cni({ command: 'DEL', containerId: `c${i}`, netns: nsPath(pod) })))
  assert.ok(dels.every((r) => r.code === 0))
  assert.equal(veths(node), [])
  assert.equal(reserved(node), [])
  assert.equal(attachments(node), [])
})

test('a /28 gives exactly 13 pods, then error JSON naming the subnet', async () => {
  const node = new Node({ subnet: '10.200.1.16/28' })
  for (let i = 0; i < 13; i++) await node.addPod(`c${i}`)
  const r = await node.cni({ command: 'ADD', containerId: 'c13', netns: nsPath(node.pod()) })
  assert.is(r.code, 1)
  assert.is(r.json.code, 101)
  assert.match(r.json.msg, /10\.200\.1\.16\/28/)
  assert.is(reserved(node).length, 13)
  assert.is(veths(node).length, 13, 'the failed ADD left no veth')
})

test('20 ADDs killed with SIGKILL at random moments, each followed by DEL, leave no reservation and no veth', async () => {
  const node = new Node()
  // Time one whole ADD on a node already set up, then kill each of the 20 somewhere inside that span.
  await node.addPod('warm-up')
  const t0 = Date.now()
  await node.addPod('timed')
  const span = (Date.now() - t0) * 0.9
  let killed = 0
  for (let i = 0; i < 20; i++) {
    const pod = node.pod()
    const add = node.cni({ command: 'ADD', containerId: `k${i}`, netns: nsPath(pod) })
    await sleep(Math.random() * span)
    add.kill()
    if ((await add).code !== 0) killed++
    const del = await node.cni({ command: 'DEL', containerId: `k${i}`, netns: nsPath(pod) })
    assert.is(del.code, 0, del.stdout + del.stderr)
  }
  assert.ok(killed >= 10, `only ${killed} of 20 ADDs were killed before they finished`)
  for (const id of ['warm-up', 'timed']) await node.cni({ command: 'DEL', containerId: id, netns: '' })
  assert.equal(veths(node), [])
  assert.equal(reserved(node), [])
  assert.equal(attachments(node), [])
})

test.run()
