// The IPAM store against what real nodes and runtimes do to it: GC lists it gets wrong, records that do not
// parse, container IDs longer than a file name, full and read-only disks, and files an attacker planted.
import { chmodSync, existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { Node, cleanupAll, ipj, nsPath } from '../helpers/cluster.ts'

test.after.each(() => cleanupAll())

const storeDir = (node: Node) => join(String(node.conf.dataDir), String(node.conf.name))
const reserved = (node: Node) => readdirSync(storeDir(node)).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f))
const eth0 = (pod: string, ifname = 'eth0') =>
  ipj(pod, 'addr', 'show').find((l: any) => l.ifname === ifname)?.addr_info.filter((a: any) => a.family === 'inet').map((a: any) => a.local) ?? []

test('GC refuses a valid-attachments entry without ifname, or null, with error 7 naming it, and frees nothing', async () => {
  const node = new Node({ cniVersion: '1.1.0' })
  const a = await node.addPod('a')
  const b = await node.addPod('b')
  for (const bad of [[{ containerID: 'a', ifname: 'eth0' }, { containerID: 'b' }], [null, { containerID: 'a', ifname: 'eth0' }]]) {
    const r = await node.cni({ command: 'GC' }, { ...node.conf, 'cni.dev/valid-attachments': bad })
    assert.is(r.json?.code, 7, r.stdout + r.stderr)
    assert.match(r.json.msg, bad[0] === null ? /entry 0 null/ : /entry 1 \{"containerID":"b"\}/)
  }
  assert.equal(eth0(a.pod), [a.result.ips[0].address.split('/')[0]])
  assert.equal(eth0(b.pod), [b.result.ips[0].address.split('/')[0]])
  assert.is(reserved(node).length, 2)
})

test('DEL of an attachment whose record does not parse frees the IP files its container and ifname own', async () => {
  const node = new Node()
  const a = await node.addPod('a')
  const b = await node.addPod('b')
  writeFileSync(join(storeDir(node), 'attachments', 'a:eth0'), '{"ips":["10.200.1.')
  const r = await node.cni({ command: 'DEL', containerId: 'a', netns: nsPath(a.pod) })
  assert.is(r.code, 0, r.stdout + r.stderr)
  assert.equal(reserved(node), [b.result.ips[0].address.split('/')[0]])
  assert.equal(eth0(a.pod), [], 'the pod end went with the netns lookup')
  assert.equal(readdirSync(join(storeDir(node), 'attachments')), ['b:eth0'])
})

test('a container ID longer than a file name allows works for ADD and DEL', async () => {
  const node = new Node()
  const id = 'c'.repeat(400)
  const { pod, result } = await node.addPod(id)
  assert.equal(eth0(pod), [result.ips[0].address.split('/')[0]])
  const r = await node.cni({ command: 'DEL', containerId: id, netns: nsPath(pod) })
  assert.is(r.code, 0, r.stdout + r.stderr)
  assert.equal(reserved(node), [])
  assert.equal(eth0(pod), [])
})

test('a planted record naming the bridge, or a path, deletes neither', async () => {
  const node = new Node()
  const a = await node.addPod('a')
  const victim = join(String(node.conf.dataDir), '..', 'victim')
  writeFileSync(victim, '') // an empty IP file is "reserved by a killed ADD": free would remove it
  writeFileSync(join(storeDir(node), 'attachments', 'a:eth0'), JSON.stringify({ ips: ['../../victim'], hostVeth: 'cni0' }))
  const r = await node.cni({ command: 'DEL', containerId: 'a', netns: nsPath(a.pod) })
  assert.is(r.code, 0, r.stdout + r.stderr)
  assert.ok(existsSync(victim), 'nothing outside the store is deleted')
  assert.is(node.ip('link', 'show', 'dev', 'cni0').length, 1, 'the bridge is still there')
  assert.equal(reserved(node), [], 'the IP file its container owns is freed all the same')
})

test('a dataDir writable by others is refused with error 5 before anything is set up', async () => {
  const node = new Node()
  mkdirSync(String(node.conf.dataDir), { recursive: true })
  chmodSync(String(node.conf.dataDir), 0o777)
  const r = await node.cni({ command: 'ADD', containerId: 'a', netns: nsPath(node.pod()) })
  assert.is(r.json?.code, 5, r.stdout + r.stderr)
  assert.match(r.json.msg, /ipam is writable by its group \(mode 777\)/)
  assert.equal(node.ip('link', 'show', 'type', 'bridge'), [])
})

test.run()
