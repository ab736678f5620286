// The plugin against what real nodes and runtimes do to it: interface names that look like iproute2
// keywords, netns paths that are not (or no longer) network namespaces, killed ADDs, missing tools, and
// hostile text that reaches the log.
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { Node, cleanupAll, ipj, nsPath, ping } from '../helpers/cluster.ts'

test.after.each(cleanupAll)

const storeDir = (node: Node) => join(String(node.conf.dataDir), 'k8s-pod-network')
const reserved = (node: Node) => (existsSync(storeDir(node)) ? readdirSync(storeDir(node)).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : [])
const veths = (node: Node) => node.ip('link', 'show', 'type', 'veth')

// Each is a prefix of an iproute2 keyword, so `ip link set NAME up` without `dev` parses it as that keyword.
const KEYWORD_NAMES = ['a', 'br', 'vf', 'up', 'dev', 'mtu', 'link', 'master', 'nomaster', 'netns', 'promisc', 'carrier', 'name', 'type', 'help', 'down', 'arp', 'group', 'alias', 'address', 'txqlen']

test('interface names that are iproute2 keywords work as CNI_IFNAME and bridge: ADD, ping, DEL', async () => {
  for (const name of KEYWORD_NAMES) {
    const node = new Node({ bridge: name })
    const pod = node.pod()
    const add = await node.cni({ command: 'ADD', containerId: `c-${name}`, netns: nsPath(pod), ifname: name })
    assert.is(add.code, 0, `${name}: ${add.stdout}${add.stderr}`)
    const [podIf] = ipj(pod, 'addr', 'show', 'dev', name)
    assert.is(podIf.operstate, 'UP', name)
    assert.ok(podIf.addr_info.some((a: any) => a.local === add.json.ips[0].address.split('/')[0]), name)
    const [host] = node.ip('link', 'show', 'dev', add.json.interfaces[1].name)
    assert.is(host.master, name)
    assert.ok(ping(pod, '10.200.1.1'), `${name}: the pod pings its gateway`)

    const del = await node.cni({ command: 'DEL', containerId: `c-${name}`, netns: nsPath(pod), ifname: name })
    assert.is(del.code, 0, `${name}: ${del.stdout}${del.stderr}`)
    assert.is(ipj(pod, 'link', 'show').length, 1, `${name}: only lo is left in the pod`)
    assert.equal(veths(node), [], name)
    assert.equal(reserved(node), [], name)
    cleanupAll()
  }
})

test('CNI_ARGS with a newline cannot forge a line of the log file', async () => {
  const node = new Node()
  const forged = '2020-01-01T00:00:00.000Z INFO [1] ADD forged/eth0: ok'
  const args = `K8S_POD_NAMESPACE=default;K8S_POD_NAME=web\n${forged}\x1b[2J`
  const { pod } = await node.addPod('c1', { args })
  const del = await node.cni({ command: 'DEL', containerId: 'c1', netns: nsPath(pod), args })
  assert.is(del.code, 0, del.stdout + del.stderr)
  const lines = readFileSync(String(node.conf.logFile), 'utf8').split('\n').filter(Boolean)
  assert.ok(lines.length >= 2)
  for (const line of lines) assert.match(line, /^\d{4}-\d\d-\d\dT[\d:.]+Z (INFO|ERROR|DEBUG) \[\d+\] [^\x00-\x1f]*$/)
  assert.not.ok(lines.some((l) => l.startsWith(forged)))
  assert.ok(lines.some((l) => l.includes(`pod=default/web\\n${forged}\\x1b[2J`)), lines.join('\n'))
})

test.run()
