// Node setup that heals: every ADD verifies forwarding, the bridge and this config's rules, and repairs what
// a firewall reload, a sysctl reset or a config change left wrong. Proved by what a server outside the cluster
// sees: the node's IP when the masquerade works, nothing when forwarding or NAT is broken.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { chmodSync, mkdirSync, readFileSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Node, PLUGIN, TMP, cleanupAll, ipj, must, nsPath, ping, probe, sh, startEchoServers } from '../helpers/cluster.ts'
import { type Member, podIP, twoNodes } from '../helpers/topology.ts'

test.after.each(cleanupAll)

const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

/** Node b's InternalIP is outside the cluster `network`: a pod on a reaches it only through a's masquerade. */
const OUTSIDE = '192.0.2.2'
const seenBy = async (pod: string) => (await probe(pod, [OUTSIDE]))[OUTSIDE]
const nsExec = (ns: string, ...argv: string[]) => must(['ip', 'netns', 'exec', ns, ...argv])

test('a firewall reload and a sysctl reset are repaired by the next ADD', async () => {
  const { a, b } = twoNodes()
  await startEchoServers([b.node.ns])
  const first = await a.node.addPod('p1')
  assert.is(await seenBy(first.pod), '192.0.2.1', 'masqueraded to node a')

  nsExec(a.node.ns, 'iptables', '-t', 'nat', '-F')
  nsExec(a.node.ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=0')
  assert.is(await seenBy(first.pod), null, 'broken, as after a firewall reload')

  const second = await a.node.addPod('p2')
  assert.is(nsExec(a.node.ns, 'sysctl', '-n', 'net.ipv4.ip_forward').trim(), '1')
  assert.is(await seenBy(first.pod), '192.0.2.1', 'the pod from before the reload works again')
  assert.is(await seenBy(second.pod), '192.0.2.1')
})

const marker = (node: Node) => join(node.conf.dataDir as string, node.conf.name as string, 'node-ready')

/** A PATH whose iptables-restore counts its runs, then runs the real one. */
function countingPath(): { env: { PATH: string }; runs: () => number } {
  const bin = join(TMP, `bin-counting-${Math.random().toString(36).slice(2)}`)
  const log = join(bin, 'runs')
  mkdirSync(bin, { recursive: true })
  writeFileSync(log, '')
  const real = must(['sh', '-c', 'command -v iptables-restore']).trim()
  writeFileSync(join(bin, 'iptables-restore'), `#!/bin/sh\necho run >> ${log}\nexec ${real} "$@"\n`)
  chmodSync(join(bin, 'iptables-restore'), 0o755)
  return { env: { PATH: `${bin}:${PATH}` }, runs: () => readFileSync(log, 'utf8').split('\n').filter(Boolean).length }
}

test('while the canaries are in place ADD runs no iptables; a flush of FORWARD alone is seen and repaired', async () => {
  const node = new Node()
  const { env, runs } = countingPath()
  await node.addPod('p1', { env })
  const canaries = () => nsExec(node.ns, 'ls', '/proc/net/xt_recent').split('\n').filter((f) => f.startsWith('kube-cni-canary-'))
  assert.equal(canaries().map((f) => f.replace(/-[0-9a-f]{8}-/, '-ID-')).sort(), ['kube-cni-canary-ID-filter4', 'kube-cni-canary-ID-nat4'])
  const before = runs()
  await node.addPod('p2', { env })
  await node.addPod('p3', { env })
  assert.is(runs(), before, 'no iptables-restore: the canaries said the rules are there')

  nsExec(node.ns, 'iptables', '-F', 'FORWARD')
  const p4 = await node.addPod('p4', { env })
  assert.ok(runs() > before, 'the missing canary sent ADD to check and repair')
  assert.match(nsExec(node.ns, 'iptables', '-S', 'FORWARD'), /-A FORWARD -j KUBE-CNI-FORWARD-/)
  assert.is(canaries().length, 2)
  assert.ok(ping(p4.pod, '10.200.1.1'), 'the pod after the repair reaches its gateway')

  // The rules whole but a canary gone, as after the doctor's fix (it puts back rules, not canaries).
  const filter = canaries().find((c) => c.endsWith('-filter4'))!
  nsExec(node.ns, 'iptables', '-D', 'FORWARD', '-s', '224.0.0.0/4', '-m', 'recent', '--rcheck', '--name', filter)
  await node.addPod('p5', { env })
  assert.is(canaries().length, 2, 'the next ADD put the canary back')
  const after = runs()
  await node.addPod('p6', { env })
  assert.is(runs(), after, 'and the ADD after it runs no iptables again')
})

test('a deleted FORWARD jump comes back, once, by the full check a minute after the last', async () => {
  const { a } = twoNodes()
  await a.node.addPod('p1')
  const jumps = () => nsExec(a.node.ns, 'iptables', '-S', 'FORWARD').split('\n').filter((l) => / -j KUBE-CNI-FORWARD/.test(l))
  const [jump] = jumps()
  nsExec(a.node.ns, 'iptables', ...jump.replace('-A', '-D').split(' '))
  assert.equal(jumps(), [])
  // One rule deleted by hand leaves the canaries alone: the full check finds it once the last one is old.
  const aMinuteAgo = new Date(Date.now() - 61_000)
  utimesSync(marker(a.node), aMinuteAgo, aMinuteAgo)
  await a.node.addPod('p2')
  await a.node.addPod('p3')
  assert.equal(jumps(), [jump])

  // The same with the clock set back by an hour since the last full check: that check is not an hour away.
  nsExec(a.node.ns, 'iptables', ...jump.replace('-A', '-D').split(' '))
  const anHourAhead = new Date(Date.now() + 3_600_000)
  utimesSync(marker(a.node), anHourAhead, anHourAhead)
  await a.node.addPod('p4')
  assert.equal(jumps(), [jump])
})

test('a changed subnet is applied by the next ADD', async () => {
  const { a, b } = twoNodes()
  await startEchoServers([b.node.ns])
  await a.node.addPod('p1')
  a.node.conf = { ...a.node.conf, subnet: '10.200.3.0/24' }
  const moved = await a.node.addPod('p2')
  assert.ok(podIP(moved.result).startsWith('10.200.3.'), podIP(moved.result))
  assert.is(await seenBy(moved.pod), '192.0.2.1', 'the new subnet is masqueraded too')
  const jumps = nsExec(a.node.ns, 'iptables', '-t', 'nat', '-S', 'POSTROUTING').split('\n').filter((l) => l.includes('KUBE-CNI'))
  assert.is(jumps.length, 1, jumps.join('\n'))
  assert.match(jumps[0], '-s 10.200.3.0/24 ')
})

test('"ipMasq" turned on is applied by the next ADD', async () => {
  const { a, b } = twoNodes({ conf: { ipMasq: false } })
  await startEchoServers([b.node.ns])
  const before = await a.node.addPod('p1')
  assert.is(await seenBy(before.pod), null, 'no masquerade, and node b has no route back to the pods')
  a.node.conf = { ...a.node.conf, ipMasq: true }
  const after = await a.node.addPod('p2')
  assert.is(await seenBy(after.pod), '192.0.2.1')
  assert.is(await seenBy(before.pod), '192.0.2.1')
})

test('"ipMasq" turned off removes the masquerade a previous config made', async () => {
  const { a, b } = twoNodes()
  must(['ip', '-n', b.node.ns, 'route', 'add', '10.200.1.0/24', 'via', a.ips[0]])
  await startEchoServers([b.node.ns])
  const before = await a.node.addPod('p1')
  assert.is(await seenBy(before.pod), '192.0.2.1')
  a.node.conf = { ...a.node.conf, ipMasq: false }
  const after = await a.node.addPod('p2')
  assert.is(await seenBy(after.pod), podIP(after.result), 'node b sees the pod itself')
  assert.is(await seenBy(before.pod), podIP(before.result))
  assert.not.match(nsExec(a.node.ns, 'iptables-save', '-t', 'nat'), 'KUBE-CNI')
  assert.not.match(nsExec(a.node.ns, 'iptables-save', '-t', 'nat'), 'kube-cni-canary', 'nor its canary')
})

test('"ipMasq": false leaves the nat table alone', async () => {
  const { a } = twoNodes({ conf: { ipMasq: false } })
  await a.node.addPod('p1')
  assert.not.match(nsExec(a.node.ns, 'iptables-save', '-t', 'nat'), 'KUBE-CNI')
  assert.match(nsExec(a.node.ns, 'iptables-save', '-t', 'filter'), '-A FORWARD -j KUBE-CNI-FORWARD-')
})

test('without iptables, ADD says what to install, and why, for the config in use', async () => {
  const bin = join(TMP, 'bin-without-iptables')
  mkdirSync(bin, { recursive: true })
  for (const tool of ['ip', 'nsenter', 'flock', 'cat']) symlinkSync(must(['sh', '-c', `command -v ${tool}`]).trim(), join(bin, tool))
  symlinkSync(process.execPath, join(bin, 'node'))
  for (const ipMasq of [true, false]) {
    const node = new Node({ ipMasq })
    const r = await node.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(node.pod()), env: { PATH: bin } })
    assert.is(r.json?.code, 100, r.stdout + r.stderr)
    assert.match(r.json.msg, 'iptables-restore')
    assert.match(r.json.details, 'install the iptables package')
    assert.not.match(r.json.details, 'ipMasq', 'setting ipMasq to false would not help: the FORWARD accepts need iptables')
    assert.is(r.json.details.includes('masquerade'), ipMasq, r.json.details)
  }
})

test('a link named like the bridge that is not a bridge: ADD says so, and the pod gets nothing', async () => {
  const node = new Node()
  must(['ip', '-n', node.ns, 'link', 'add', 'cni0', 'type', 'veth', 'peer', 'name', 'cni0peer'])
  const pod = node.pod()
  const r = await node.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(pod) })
  assert.is(r.json?.code, 103, r.stdout + r.stderr)
  assert.is(r.json.msg, 'cni0 already exists but is not a bridge (it is a veth)')
  assert.match(r.json.details, 'ip link del dev cni0')
  assert.equal(ipj(pod, 'link', 'show').map((l: any) => l.ifname), ['lo'])
})

/** STATUS as a runtime calls it, with `before` run first in the same shell (in a private mount namespace). */
function status(node: Node, { before = '', path = PATH, runAs = [] as string[] } = {}) {
  const script = `${before}\nexec env -i PATH="$0" CNI_COMMAND=STATUS nsenter --net=${nsPath(node.ns)} ${runAs.join(' ')} ${PLUGIN}`
  const r = sh(['unshare', '-m', 'sh', '-ec', script, path], JSON.stringify({ ...node.conf, cniVersion: '1.1.0' }))
  return { ...r, json: r.stdout.trim() ? JSON.parse(r.stdout) : undefined }
}

test('STATUS answers 50 when the IPAM store is read-only or not writable, and 0 when it is fine', async () => {
  const node = new Node()
  const store = join(node.conf.dataDir as string, node.conf.name as string)
  mkdirSync(store, { recursive: true })
  assert.is(status(node).code, 0)
  const ro = status(node, { before: `mount --bind ${store} ${store}; mount -o remount,bind,ro ${store}` })
  assert.is(ro.json.code, 50, ro.stdout + ro.stderr)
  assert.match(ro.json.msg, `${store} is on a read-only filesystem`)
  assert.match(ro.json.details, '"dataDir"')
  const nobody = status(node, { runAs: ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] })
  assert.is(nobody.json.code, 50, nobody.stdout + nobody.stderr)
  assert.match(nobody.json.msg, 'not writable (EACCES)')
})

test('STATUS answers 50 naming the package when ip or iptables is missing, and ignores ip6tables without an IPv6 pool', async () => {
  const node = new Node()
  const bin = join(TMP, 'status-bin')
  mkdirSync(bin, { recursive: true })
  for (const tool of ['nsenter', 'flock', 'cat', 'iptables', 'iptables-restore', 'env', 'setpriv'])
    symlinkSync(must(['sh', '-c', `command -v ${tool}`]).trim(), join(bin, tool))
  symlinkSync(process.execPath, join(bin, 'node'))
  const noIp = status(node, { path: bin })
  assert.is(noIp.json.code, 50, noIp.stdout + noIp.stderr)
  assert.match(noIp.json.msg, 'kube-cni needs ip,')
  assert.match(noIp.json.details, 'iproute2')
  symlinkSync(must(['sh', '-c', 'command -v ip']).trim(), join(bin, 'ip'))
  assert.is(status(node, { path: bin }).code, 0, 'no ip6tables, and none needed')
  rmSync(join(bin, 'iptables-restore'))
  const noIptables = status(node, { path: bin })
  assert.is(noIptables.json.code, 50)
  assert.match(noIptables.json.msg, 'kube-cni needs iptables-restore')
  assert.match(noIptables.json.details, 'install the iptables package')
})

test('concurrent ADDs after a firewall reload leave one copy of each rule', async () => {
  const { a } = twoNodes()
  await a.node.addPod('p0')
  nsExec(a.node.ns, 'iptables', '-F')
  nsExec(a.node.ns, 'iptables', '-t', 'nat', '-F')
  await Promise.all([1, 2, 3, 4, 5, 6].map((i) => a.node.addPod(`p${i}`)))
  const rules = sh(['ip', 'netns', 'exec', a.node.ns, 'iptables-save']).stdout.split('\n').filter((l) => l.startsWith('-A'))
  assert.is(new Set(rules).size, rules.length, rules.join('\n'))
  assert.is(rules.filter((l) => l.startsWith('-A FORWARD -j KUBE-CNI-')).length, 1, rules.join('\n'))
  assert.is(rules.filter((l) => l.startsWith('-A POSTROUTING') && l.includes('-j KUBE-CNI-')).length, 1, rules.join('\n'))
  assert.is(rules.filter((l) => l.includes('--name kube-cni-canary-')).length, 2, rules.join('\n'))
})

test('two networks side by side: each keeps its pod IPs between its pods and masquerades only off-cluster traffic', async () => {
  const { a, b } = twoNodes()
  for (const [m, peer, k] of [[a, b, 2], [b, a, 1]] as const) {
    // A firewall that drops forwarded traffic it was not told to accept, as Docker's does.
    nsExec(m.node.ns, 'iptables', '-P', 'FORWARD', 'DROP')
    for (const net of ['10.200', '10.201']) must(['ip', '-n', m.node.ns, 'route', 'add', `${net}.${k}.0/24`, 'via', peer.ips[0]])
  }
  const second = (m: Member, subnet: string) => ({ ...m.node.conf, name: 'second', bridge: 'cni1', network: '10.201.0.0/16', subnet })
  const add = async (m: Member, id: string, conf = m.node.conf) => {
    const pod = m.node.pod()
    const r = await m.node.cni({ command: 'ADD', containerId: id, netns: nsPath(pod) }, conf)
    assert.is(r.code, 0, r.stdout + r.stderr)
    return { pod, ip: podIP(r.json) as string }
  }
  // The first network's pods first: the second network's setup must leave the first one's rules alone.
  const a1 = await add(a, 'a1')
  const b1 = await add(b, 'b1')
  const a2 = await add(a, 'a2', second(a, '10.201.1.0/24'))
  const b2 = await add(b, 'b2', second(b, '10.201.2.0/24'))
  await startEchoServers([a1.pod, b1.pod, a2.pod, b2.pod, b.node.ns])
  for (const [from, to] of [[a1, b1], [b1, a1], [a2, b2], [b2, a2]]) assert.is((await probe(from.pod, [to.ip]))[to.ip], from.ip, `${from.ip} -> ${to.ip} keeps its IP`)
  // Node b routes back to both networks' pods, so only the masquerade makes it see node a's address.
  assert.is(await seenBy(a1.pod), '192.0.2.1', 'the first network masquerades off-cluster traffic')
  assert.is(await seenBy(a2.pod), '192.0.2.1', 'the second network masquerades off-cluster traffic')
})

test.run()
