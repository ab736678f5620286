// The plugin against what real nodes and runtimes do to it: interface names that look like iproute2
// keywords, netns paths that are not (or no longer) network namespaces, killed ADDs, missing tools, and
// hostile text that reaches the log.
import { closeSync, constants, chmodSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, symlinkSync, writeFileSync, writeSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { Node, PLUGIN, TMP, cleanupAll, delNetns, ipj, must, nsPath, ping, sh } from '../helpers/cluster.ts'
import { sleep } from 'zx'

test.after.each(cleanupAll)

const storeDir = (node: Node) => join(String(node.conf.dataDir), 'k8s-pod-network')
const reserved = (node: Node) => (existsSync(storeDir(node)) ? readdirSync(storeDir(node)).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : [])
const veths = (node: Node) => node.ip('link', 'show', 'type', 'veth')
const attachments = (node: Node) => (existsSync(join(storeDir(node), 'attachments')) ? readdirSync(join(storeDir(node), 'attachments')) : [])

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

test('CNI_IFNAME takes names the kernel takes beyond A-Z a-z 0-9 _ . -: ADD, ping, CHECK, DEL', async () => {
  const node = new Node()
  for (const [i, name] of ['a@b', 'net+1', 'w=1', "it's", '\u00e9th0'].entries()) {
    const pod = node.pod()
    const env = { containerId: `c${i}`, netns: nsPath(pod), ifname: name }
    const add = await node.cni({ command: 'ADD', ...env })
    assert.is(add.code, 0, `${name}: ${add.stdout}${add.stderr}`)
    assert.is(add.json.interfaces[2].name, name)
    const [podIf] = ipj(pod, 'addr', 'show', 'dev', name)
    assert.is(podIf.operstate, 'UP', name)
    assert.ok(ping(pod, '10.200.1.1'), `${name}: the pod pings its gateway`)
    const check = await node.cni({ command: 'CHECK', ...env }, { ...node.conf, prevResult: add.json })
    assert.is(check.code, 0, `${name}: ${check.stdout}${check.stderr}`)
    const del = await node.cni({ command: 'DEL', ...env })
    assert.is(del.code, 0, `${name}: ${del.stdout}${del.stderr}`)
    assert.is(ipj(pod, 'link', 'show').length, 1, `${name}: only lo is left in the pod`)
  }
  assert.equal(veths(node), [])
  assert.equal(reserved(node), [])
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

/** A PATH with everything the standard one has except `tool`. */
function pathWithout(tool: string): string {
  const bin = join(TMP, `bin-without-${tool}`)
  mkdirSync(bin, { recursive: true })
  for (const dir of ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'])
    for (const name of existsSync(dir) ? readdirSync(dir) : [])
      if (name !== tool && !existsSync(join(bin, name))) symlinkSync(join(dir, name), join(bin, name))
  return bin
}

/** The plugin run with a PATH that lacks `tool`. Started by hand: the helper's nsenter would be looked up in that PATH. */
function cniWithout(tool: string, node: Node, env: Record<string, string>) {
  const vars = Object.entries({ PATH: pathWithout(tool), ...env }).map(([k, v]) => `${k}=${v}`)
  const r = sh(['nsenter', `--net=${nsPath(node.ns)}`, 'env', '-i', ...vars, PLUGIN], JSON.stringify(node.conf))
  return { ...r, json: JSON.parse(r.stdout || 'null') }
}

for (const [tool, pkg] of [['ip', 'iproute2'], ['nsenter', 'util-linux'], ['flock', 'util-linux']]) {
  test(`a missing ${tool} is a CNI error naming it and the Debian package ${pkg}, with no stack`, async () => {
    const node = new Node()
    const add = cniWithout(tool, node, { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_NETNS: nsPath(node.pod()), CNI_IFNAME: 'eth0' })
    assert.is(add.code, 1)
    assert.is(add.json.code, 100, add.stdout)
    assert.match(add.json.msg, new RegExp(`needs ${tool}\\b`))
    assert.match(add.json.details, pkg)
    assert.not.match(add.stdout, /ENOENT|\n\s+at /)
    assert.equal(reserved(node), [])
    assert.equal(veths(node), [])
  })
}

test('a CNI_NETNS that is not a network namespace is refused with a message that says so', async () => {
  const node = new Node()
  const file = join(TMP, 'not-a-netns')
  writeFileSync(file, 'hello')
  const empty = join(TMP, 'stale-mountpoint')
  writeFileSync(empty, '')
  const dir = join(TMP, 'a-directory')
  mkdirSync(dir, { recursive: true })
  for (const [netns, why] of [
    [file, /is not a network namespace/],
    [empty, /is an empty file, not a network namespace/],
    [dir, /is a directory, not a network namespace/],
    ['/proc/self/ns/uts', /is a uts namespace, not a network namespace/],
  ] as const) {
    const add = await node.cni({ command: 'ADD', containerId: 'c1', netns })
    assert.is(add.json?.code, 4, `${netns}: ${add.stdout}`)
    assert.match(add.json.msg, `CNI_NETNS=${netns}`)
    assert.match(add.json.msg, why)
  }
  assert.equal(reserved(node), [])
  assert.equal(veths(node), [])
})

/** Paths that are not a network namespace: a stale mount point (the empty file left when its mount is gone), others. */
function notNetns(): string[] {
  const stale = join(TMP, 'stale-netns')
  writeFileSync(stale, '')
  const dir = join(TMP, 'netns-dir')
  mkdirSync(dir, { recursive: true })
  return [stale, '/proc/self/ns/uts', dir]
}

test('DEL succeeds and frees the IP when CNI_NETNS is a stale mount point or not a netns at all', async () => {
  const node = new Node()
  for (const [i, netns] of notNetns().entries()) {
    // The pod netns is destroyed (and its veth pair with it), leaving the runtime with a dead path.
    const { pod } = await node.addPod(`gone${i}`)
    delNetns(pod)
    const del = await node.cni({ command: 'DEL', containerId: `gone${i}`, netns })
    assert.is(del.code, 0, `${netns}: ${del.stdout}${del.stderr}`)
    // Nothing on record at all: a DEL the runtime repeats.
    const again = await node.cni({ command: 'DEL', containerId: `gone${i}`, netns })
    assert.is(again.code, 0, `${netns}: ${again.stdout}${again.stderr}`)

    // The netns path went stale while the pod's veth pair lives on: the host end is enough to remove it.
    const alive = await node.addPod(`alive${i}`)
    const delAlive = await node.cni({ command: 'DEL', containerId: `alive${i}`, netns })
    assert.is(delAlive.code, 0, `${netns}: ${delAlive.stdout}${delAlive.stderr}`)
    assert.is(ipj(alive.pod, 'link', 'show').length, 1, 'only lo is left in the pod')
  }
  assert.equal(reserved(node), [])
  assert.equal(attachments(node), [])
  assert.equal(veths(node), [])
})

test('DEL frees the IP even when the kernel teardown fails, reports that error, and a retried DEL removes the veth', async () => {
  const node = new Node()
  const { pod } = await node.addPod('c1')
  const del = cniWithout('ip', node, { CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'c1', CNI_NETNS: nsPath(pod), CNI_IFNAME: 'eth0' })
  assert.is(del.code, 1)
  assert.match(del.json.msg, /needs ip\b/)
  assert.equal(reserved(node), [], 'the IP is free')
  assert.is(veths(node).length, 1, 'the veth is still there')
  const retry = await node.cni({ command: 'DEL', containerId: 'c1', netns: '' })
  assert.is(retry.code, 0, retry.stdout + retry.stderr)
  assert.equal(veths(node), [])
  assert.equal(attachments(node), [])
})

test('a successful ADD leaves no pids in its record: a recycled pid can never hold up its DEL', async () => {
  const node = new Node()
  await node.addPod('c1')
  const [key] = attachments(node)
  const record = JSON.parse(readFileSync(join(storeDir(node), 'attachments', key), 'utf8'))
  assert.is(record.pids, undefined, JSON.stringify(record))
  assert.ok(record.hostVeth)
})

test('the routes agent without ip stops with the package to install, instead of retrying forever', () => {
  const node = new Node()
  const nodes = join(TMP, 'nodes.json')
  const self = { metadata: { name: 'n1' }, spec: { podCIDR: '10.200.1.0/24' }, status: { addresses: [{ type: 'InternalIP', address: '192.0.2.1' }] } }
  writeFileSync(nodes, JSON.stringify({ items: [self] }))
  const argv = ['routes', '--node', 'n1', '--network', '10.200.0.0/16', '--nodes-json', nodes, '--watch', '1']
  const r = spawnSync('nsenter', [`--net=${nsPath(node.ns)}`, 'env', `PATH=${pathWithout('ip')}`, PLUGIN, ...argv], { encoding: 'utf8', timeout: 30_000 })
  assert.is(r.signal, null, `still running after 30 s: ${r.stderr}`)
  assert.is(r.status, 1)
  assert.match(r.stderr, /kube-cni needs ip, and it is not in PATH=.*apt-get install iproute2/)
})

test('an ADD killed while its `ip` is stuck leaves no veth once DEL has returned, even when that `ip` resumes', async () => {
  const node = new Node()
  await node.addPod('warm-up') // the bridge and the node rules, so the next ADD's first `ip` is the veth batch
  // An `ip` that, the first time only, waits at a gate the test holds, then becomes the real ip.
  const dir = join(TMP, 'slow-ip')
  mkdirSync(dir, { recursive: true })
  const gate = join(dir, 'gate')
  must(['mkfifo', gate])
  const realIp = must(['sh', '-c', 'command -v ip']).trim()
  const bin = pathWithout('ip')
  writeFileSync(join(bin, 'ip'), `#!/bin/sh\nif mkdir ${dir}/taken 2>/dev/null; then echo $$ > ${dir}/pid; read line < ${gate}; fi\nexec ${realIp} "$@"\n`)
  chmodSync(join(bin, 'ip'), 0o755)
  const pod = node.pod()
  const add = node.cni({ command: 'ADD', containerId: 'slow', netns: nsPath(pod), env: { PATH: bin } })
  const record = join(storeDir(node), 'attachments', 'slow:eth0')
  const stuck = () => existsSync(join(dir, 'pid')) && existsSync(record) && readFileSync(record, 'utf8').includes('"pids"')
  for (let i = 0; i < 1000 && !stuck(); i++) await sleep(10)
  assert.ok(stuck(), 'the ADD reached its `ip` and recorded it')
  const ipPid = readFileSync(join(dir, 'pid'), 'utf8').trim()
  add.kill()
  assert.is.not((await add).code, 0)

  const del = await node.cni({ command: 'DEL', containerId: 'slow', netns: nsPath(pod) })
  assert.is(del.code, 0, del.stdout + del.stderr)
  // Open the gate: a stuck `ip` still alive now would create the veth after DEL returned.
  let fd: number | undefined
  try {
    fd = openSync(gate, constants.O_WRONLY | constants.O_NONBLOCK)
  } catch (e) {
    assert.is((e as NodeJS.ErrnoException).code, 'ENXIO', 'nobody waits at the gate any more')
  }
  if (fd !== undefined) {
    writeSync(fd, 'go\n')
    closeSync(fd)
    const running = () => existsSync(`/proc/${ipPid}`) && !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${ipPid}/stat`, 'utf8'))
    while (running()) await sleep(10)
  }
  assert.is(veths(node).length, 1, 'only the warm-up pod has a veth')
  assert.is(ipj(pod, 'link', 'show').length, 1, 'only lo in the killed pod')
  assert.equal(attachments(node), ['warm-up:eth0'])
  assert.is(reserved(node).length, 1)
})

test.run()
