// The rest of the spec through the real binary: VERSION, GC, STATUS, CNI_ARGS, and hostile input.
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { Node, TMP, cleanupAll, must, nsPath, sh } from '../helpers/cluster.ts'
import { sleep } from 'zx'

test.after.each(cleanupAll)

const reserved = (node: Node) => readdirSync(join(String(node.conf.dataDir), 'k8s-pod-network')).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f))

test('VERSION answers with kube-cni\'s newest version whatever the config asks, and lists every supported one', async () => {
  const node = new Node()
  for (const asked of ['0.3.1', '1.0.0', '1.1.0', '0.2.0']) {
    const r = await node.cni({ command: 'VERSION', input: JSON.stringify({ cniVersion: asked }) })
    assert.is(r.code, 0)
    assert.equal(r.json, { cniVersion: '1.1.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] })
  }
})

test('an error answers in the config\'s own cniVersion, not in that of a prevResult placed first', async () => {
  const node = new Node({ cniVersion: '1.0.0', mtu: 1 })
  const { mtu, ...conf } = node.conf
  const input = JSON.stringify({ prevResult: { cniVersion: '0.3.0', ips: [] }, ...conf, mtu })
  const r = await node.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(node.pod()), input })
  assert.is(r.json?.code, 7, r.stdout)
  assert.match(r.json.msg, /"mtu"/)
  assert.is(r.json.cniVersion, '1.0.0')
})

test('VERSION with the dummies podman sends still answers', async () => {
  const node = new Node()
  const r = await node.cni({ command: 'VERSION', netns: 'dummy', ifname: 'dummy', env: { CNI_PATH: 'dummy' }, input: '{"cniVersion":"1.0.0"}' })
  assert.is(r.code, 0)
  assert.is(r.json.cniVersion, '1.1.0')
})

test('containerd\'s inputs: CNI_NETNS=/proc/<pid>/ns/net on ADD, then an empty CNI_NETNS on DEL after the task exits', async () => {
  const node = new Node()
  // The task: a process in a netns of its own that has no name, only /proc/<pid>/ns/net.
  const task = require('node:child_process').spawn('unshare', ['--net', '--', 'sleep', '60'], { stdio: 'ignore' })
  try {
    await sleep(100)
    const netns = `/proc/${task.pid}/ns/net`
    const add = await node.cni({ command: 'ADD', containerId: 'task1', netns })
    assert.is(add.code, 0, add.stdout + add.stderr)
    const addrs = JSON.parse(sh(['nsenter', `--net=${netns}`, 'ip', '-j', 'addr', 'show', 'dev', 'eth0']).stdout)
    assert.ok(addrs[0].addr_info.some((a: any) => `${a.local}/${a.prefixlen}` === add.json.ips[0].address))
  } finally {
    task.kill('SIGKILL')
  }
  await new Promise((r) => task.on('exit', r))
  const del = await node.cni({ command: 'DEL', containerId: 'task1', netns: '' })
  assert.is(del.code, 0, del.stdout)
  assert.equal(reserved(node), [])
  assert.equal(node.ip('link', 'show', 'type', 'veth'), [])
})

test('podman\'s inputs: VERSION first with dummies, then ADD and DEL with IgnoreUnknown in CNI_ARGS', async () => {
  const node = new Node({ cniVersion: '1.0.0' })
  const version = await node.cni({ command: 'VERSION', containerId: 'dummy', netns: 'dummy', ifname: 'dummy', env: { CNI_PATH: 'dummy' }, input: '{"cniVersion":"1.0.0"}' })
  assert.is(version.code, 0)
  const pod = node.pod()
  const args = 'IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u1'
  const add = await node.cni({ command: 'ADD', containerId: 'podman1', netns: nsPath(pod), args })
  assert.is(add.code, 0, add.stdout)
  const del = await node.cni({ command: 'DEL', containerId: 'podman1', netns: nsPath(pod), args })
  assert.is(del.code, 0, del.stdout)
  assert.equal(reserved(node), [])
})

test('an unsupported cniVersion gets error code 1', async () => {
  const node = new Node({ cniVersion: '0.2.0' })
  const r = await node.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(node.pod()) })
  assert.is(r.code, 1)
  assert.is(r.json.code, 1)
  assert.match(r.json.msg, /0\.2\.0/)
})

test('GC frees every attachment not listed as valid, with its veth, and accepts both key names', async () => {
  for (const key of ['cni.dev/valid-attachments', 'cni.dev/attachments']) {
    const node = new Node({ cniVersion: '1.1.0' })
    const keep = await node.addPod('keep')
    await node.addPod('gone1')
    await node.addPod('gone2')
    const r = await node.cni({ command: 'GC' }, { ...node.conf, [key]: [{ containerID: 'keep', ifname: 'eth0' }] })
    assert.is(r.code, 0, r.stdout + r.stderr)
    assert.is(r.stdout, '', 'GC prints nothing on success')
    assert.equal(reserved(node), [keep.result.ips[0].address.split('/')[0]])
    assert.equal(node.ip('link', 'show', 'type', 'veth').map((l: any) => l.ifname), [keep.result.interfaces[1].name])
    cleanupAll()
  }
})

test('GC and STATUS are refused below 1.1.0 with code 1', async () => {
  const node = new Node({ cniVersion: '1.0.0' })
  for (const command of ['GC', 'STATUS']) {
    const r = await node.cni({ command }, { ...node.conf, 'cni.dev/valid-attachments': [] })
    assert.is(r.json.code, 1, command)
  }
})

test('STATUS is ok while addresses are free, and code 50 once the pool is exhausted', async () => {
  const node = new Node({ cniVersion: '1.1.0', subnet: '10.200.1.0/29' })
  assert.is((await node.cni({ command: 'STATUS' })).code, 0)
  for (let i = 0; i < 5; i++) await node.addPod(`c${i}`)
  const r = await node.cni({ command: 'STATUS' })
  assert.is(r.code, 1)
  assert.is(r.json.code, 50)
  assert.match(r.json.msg, /10\.200\.1\.0\/29/)
})

test('the log names the pod from CNI_ARGS, with the container, the result and the duration', async () => {
  const node = new Node()
  const args = 'IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=0c9d'
  const r = await node.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(node.pod()), args })
  assert.is(r.code, 0)
  const line = readFileSync(String(node.conf.logFile), 'utf8').trim().split('\n').pop()!
  assert.match(line, /ADD c1\/eth0 pod=shop\/web-0: ok 10\.200\.1\.\d+\/24 \(\d+\.\dms\)/)
  assert.ok(r.stderr.includes('pod=shop/web-0'), 'logs go to stderr too')
  assert.not.ok(r.stdout.includes('pod=shop'), 'never to stdout')
})

test('logLevel: debug adds the kernel batches and the IPAM choice; error keeps only failures', async () => {
  const debug = new Node({ logLevel: 'debug' })
  assert.is((await debug.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(debug.pod()) })).code, 0)
  const lines = readFileSync(String(debug.conf.logFile), 'utf8')
  assert.match(lines, /DEBUG .*ip -batch in the host netns: \d+ lines, exit 0/)
  assert.match(lines, /DEBUG .*IPAM: 10\.200\.1\.2 for c1\/eth0, first try from the cursor/)
  const quiet = new Node({ logLevel: 'error' })
  assert.is((await quiet.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(quiet.pod()) })).code, 0)
  assert.is((await quiet.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(quiet.pod()) })).code, 1)
  const only = readFileSync(String(quiet.conf.logFile), 'utf8').trim().split('\n')
  assert.is(only.length, 1)
  assert.match(only[0], /ERROR .*error 102/)
})

test('hostile input is refused and nothing runs: a container ID with a command in it', async () => {
  const node = new Node()
  const marker = join(TMP, 'F')
  const r = await node.cni({ command: 'ADD', containerId: `x;touch ${marker}`, netns: nsPath(node.pod()) })
  assert.is(r.json.code, 4)
  assert.match(r.json.msg, /CNI_CONTAINERID/)
  assert.not.ok(existsSync(marker))
  assert.not.ok(existsSync('F'))
})

test('hostile input: a network name that climbs out of dataDir', async () => {
  const node = new Node({ name: '../../etc' })
  const r = await node.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(node.pod()) })
  assert.is(r.json.code, 7)
  assert.match(r.json.msg, /"name"/)
  assert.not.ok(existsSync(String(node.conf.dataDir)), 'no directory was created')
})

test('hostile input: a 16-character ifname', async () => {
  const node = new Node()
  const r = await node.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(node.pod()), ifname: 'eth0123456789012' })
  assert.is(r.json.code, 4)
  assert.match(r.json.msg, /CNI_IFNAME/)
})

test('hostile input: a netns path that would inject an ip -batch line', async () => {
  const node = new Node()
  const r = await node.cni({ command: 'ADD', containerId: 'c1', netns: `${nsPath(node.pod())}\nlink del cni0` })
  assert.is(r.json.code, 4)
  assert.match(r.json.msg, /CNI_NETNS/)
})

test('hostile input: a 3 MB stdin gets code 6', async () => {
  const node = new Node()
  const r = await node.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(node.pod()), input: JSON.stringify({ ...node.conf, pad: 'x'.repeat(3 << 20) }) })
  assert.is(r.code, 1)
  assert.is(r.json.code, 6)
})

test('a netns that does not exist gets code 4 naming CNI_NETNS', async () => {
  const node = new Node()
  const r = await node.cni({ command: 'ADD', containerId: 'c1', netns: '/var/run/netns/kube-cni-no-such-netns' })
  assert.is(r.json.code, 4)
  assert.match(r.json.msg, /CNI_NETNS/)
})

test('CHECK with a prevResult whose ips entries are not objects with a string address gets code 7, not 100', async () => {
  const node = new Node({ cniVersion: '1.0.0' })
  const { pod, result } = await node.addPod('c1')
  for (const ips of [[null], ['10.200.1.2/24'], [{ address: 5 }]]) {
    const r = await node.cni({ command: 'CHECK', containerId: 'c1', netns: nsPath(pod) }, { ...node.conf, prevResult: { ...result, ips } })
    assert.is(r.json?.code, 7, r.stdout)
    assert.match(r.json.msg, /"prevResult\.ips\[0\]/)
    assert.not.ok(r.json.details, 'no stack trace')
  }
})

test('CHECK fails when prevResult lists no IPs but the attachment holds some', async () => {
  const node = new Node({ cniVersion: '1.0.0' })
  const { pod, result } = await node.addPod('c1')
  const check = (prevResult: object) => node.cni({ command: 'CHECK', containerId: 'c1', netns: nsPath(pod) }, { ...node.conf, prevResult })
  assert.is((await check(result)).code, 0)
  const r = await check({ ...result, ips: [] })
  assert.is(r.json?.code, 104, r.stdout)
  assert.match(r.json.msg, new RegExp(`${result.ips[0].address.split('/')[0].replace(/\./g, '\\.')}, which prevResult does not list`))
})

test('CHECK checks the interfaces prevResult lists: each by name, and its MAC where given', async () => {
  const node = new Node({ cniVersion: '1.0.0' })
  const { pod, result } = await node.addPod('c1')
  const check = (prevResult: object) => node.cni({ command: 'CHECK', containerId: 'c1', netns: nsPath(pod) }, { ...node.conf, prevResult })
  const [bridge, veth, eth0] = result.interfaces
  assert.is(eth0.sandbox, nsPath(pod))

  const gone = await check({ ...result, interfaces: [bridge, veth, { name: 'nosuch0', sandbox: nsPath(pod) }] })
  assert.is(gone.json?.code, 104, gone.stdout)
  assert.match(gone.json.msg, /interface nosuch0, which is not in \/var\/run\/netns\//)
  const goneHost = await check({ ...result, interfaces: [{ name: 'nosuch0' }, veth, eth0] })
  assert.match(goneHost.json?.msg ?? '', /interface nosuch0, which is not in the host netns/)

  must(['ip', '-n', pod, 'link', 'set', 'dev', 'eth0', 'address', '02:00:00:00:00:99'])
  const moved = await check(result)
  assert.is(moved.json?.code, 104, moved.stdout)
  assert.match(moved.json.msg, new RegExp(`eth0 in .* has MAC 02:00:00:00:00:99, prevResult says ${eth0.mac}`))
  assert.is((await check({ ...result, interfaces: [bridge, veth, { name: 'eth0', sandbox: nsPath(pod) }] })).code, 0, 'no MAC given: the name is enough')
})

test('stdin that is not JSON gets code 6, a missing variable code 4', async () => {
  const node = new Node()
  assert.is((await node.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(node.pod()), input: 'not json' })).json.code, 6)
  const r = await node.cni({ command: 'ADD', containerId: '', netns: nsPath(node.pod()) })
  assert.is(r.json.code, 4)
  assert.match(r.json.msg, /CNI_CONTAINERID/)
})

test.run()
