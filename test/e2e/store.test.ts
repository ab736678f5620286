// The IPAM store against what real nodes and runtimes do to it: GC lists it gets wrong, records that do not
// parse, container IDs longer than a file name, full and read-only disks, and files an attacker planted.
import { spawnSync } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { Node, PLUGIN, PREFIX, TMP, cleanupAll, ipj, nsPath } from '../helpers/cluster.ts'

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

test('GCs with an empty valid list during 12 ADDs free no attachment whose ADD runs: no duplicate IP, pods and store agree', async () => {
  const node = new Node({ cniVersion: '1.1.0' })
  await node.addPod('warm') // the node is set up: the ADDs race in the store, not on the setup lock
  // Started among the ADDs, a GC lists the store while they are midway: each plugin takes about as long to start.
  const gc = () => node.cni({ command: 'GC' }, { ...node.conf, 'cni.dev/valid-attachments': [] })
  const pods = Array.from({ length: 12 }, () => node.pod())
  const adds = []
  const gcs = []
  for (const [i, pod] of pods.entries()) {
    adds.push(node.cni({ command: 'ADD', containerId: `c${i}`, netns: nsPath(pod) }))
    if (i % 3 === 2) gcs.push(gc())
  }
  await Promise.race(adds)
  gcs.push(gc())
  const results = await Promise.all(adds)
  for (const r of await Promise.all(gcs)) assert.is(r.code, 0, r.stdout + r.stderr)
  const held = new Map(reserved(node).map((ip) => [ip, readFileSync(join(storeDir(node), ip), 'utf8').split('\r\n')[0]]))
  const live: string[] = []
  results.forEach((r, i) => {
    assert.is(r.code, 0, `ADD c${i}: ${r.stdout}`)
    const ip = r.json.ips[0].address.split('/')[0]
    const inPod = eth0(pods[i]).includes(ip)
    // Freed by a GC after it finished is fine; a pod with an address the store gave back is not.
    assert.is(held.get(ip) === `c${i}`, inPod, `c${i} ${ip}: in the pod ${inPod}, in the store ${held.get(ip)}`)
    if (inPod) live.push(ip)
  })
  assert.is(held.size, live.length, 'the store holds exactly the addresses pods have')
  for (let i = 0; i < 4; i++) live.push(...eth0((await node.addPod(`late${i}`)).pod))
  assert.is(new Set(live).size, live.length, `no address twice: ${live.join(' ')}`)
})

/**
 * ADD in a private mount namespace (never the machine's) where `setup`, a shell snippet, has made dataDir ($D)
 * full or read-only; `as` runs the plugin as another user. Returns the answer and every file left in $D.
 */
function addInMountNs(node: Node, containerId: string, setup: string, as: string[] = []) {
  const listing = join(TMP, `${node.ns}-listing`)
  const script = `set -e; D="$1"; ${setup}
    set +e; nsenter --net=/var/run/netns/${node.ns} ${as.join(' ')} ${PLUGIN}; echo $? > ${listing}.rc
    { cd "$D" && find . -mindepth 1 ! -type d | sort; } > ${listing} 2>/dev/null; exit 0`
  const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script, 'sh', String(node.conf.dataDir)], {
    input: JSON.stringify(node.conf),
    encoding: 'utf8',
    env: { PATH: process.env.PATH, CNI_COMMAND: 'ADD', CNI_CONTAINERID: containerId, CNI_NETNS: nsPath(node.pod()), CNI_IFNAME: 'eth0' },
  })
  assert.is(r.status, 0, r.stderr)
  return { json: JSON.parse(r.stdout), stdout: r.stdout, files: readFileSync(listing, 'utf8').trim().split('\n').filter(Boolean) }
}

const FULL = `mount -t tmpfs -o size=32k,mode=0700 ${PREFIX}full "$D"; cp -a "$D.copy/." "$D"; head -c 1M /dev/zero > "$D/fill" 2>/dev/null || true`

test('a full disk is error 5 naming the path, and leaves no empty record, marker or temp file', async () => {
  for (const setUp of [false, true]) {
    const node = new Node()
    if (setUp) await node.addPod('a') // the node is set up: the IPAM store is what fails
    mkdirSync(String(node.conf.dataDir), { recursive: true, mode: 0o700 })
    spawnSync('cp', ['-a', String(node.conf.dataDir), `${node.conf.dataDir}.copy`])
    const before = spawnSync('sh', ['-c', `cd "$1" && find . -mindepth 1 ! -type d | sort`, 'sh', String(node.conf.dataDir)], { encoding: 'utf8' })
    const r = addInMountNs(node, 'b', FULL)
    assert.is(r.json.code, 5, r.stdout)
    assert.match(r.json.msg, new RegExp(`cannot \\w+( the lock file)? ${String(node.conf.dataDir)}\\S*: the filesystem is full`))
    assert.match(r.json.details, /free space/)
    const files = (list: string[]) => list.filter((f) => f !== './node.lock') // the lock file is meant to stay
    assert.equal(files(r.files), files([...before.stdout.trim().split('\n'), './fill']).filter(Boolean).sort(), `setUp=${setUp}`)
    cleanupAll()
  }
})

test('a read-only dataDir is error 5, never 11 for the setup lock', async () => {
  for (const setUp of [false, true]) {
    const node = new Node()
    if (setUp) await node.addPod('a')
    mkdirSync(String(node.conf.dataDir), { recursive: true, mode: 0o700 })
    const r = addInMountNs(node, 'b', 'mount --bind "$D" "$D"; mount -o remount,bind,ro "$D"')
    assert.is(r.json.code, 5, r.stdout)
    assert.match(r.json.msg, /the filesystem is read-only/)
    assert.match(r.json.details, /writable directory/)
    cleanupAll()
  }
})

test('no permission (not root) is error 5 saying kube-cni must run as root', async () => {
  const node = new Node()
  const r = addInMountNs(node, 'b', '', ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'])
  assert.is(r.json.code, 5, r.stdout)
  assert.match(r.json.msg, new RegExp(`${String(node.conf.dataDir)}: permission denied`))
  assert.match(r.json.details, /must run as root/)
  assert.not.ok('stack' in r.json || /\n\s+at /.test(r.json.details))
})

test.run()
