// The IPAM store against what real nodes and runtimes do to it: GC lists it gets wrong, records that do not
// parse, container IDs longer than a file name, full and read-only disks, and files an attacker planted.
import { readdirSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { Node, cleanupAll, ipj } from '../helpers/cluster.ts'

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

test.run()
