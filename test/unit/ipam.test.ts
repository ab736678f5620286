import { spawn } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { buildSync } from 'esbuild'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { CniError } from '../../lib/plugin/cni.ts'
import { formatAddress } from '../../lib/plugin/ip.ts'
import { Store } from '../../lib/plugin/ipam.ts'
import { parseNetConf } from '../../lib/plugin/netconf.ts'

let dir = ''
test.before.each(() => {
  dir = mkdtempSync(join(tmpdir(), 'kube-cni-ipam-'))
})
test.after.each(() => rmSync(dir, { recursive: true, force: true }))

const confFor = (subnet: string, extra: Record<string, unknown> = {}) =>
  parseNetConf(JSON.stringify({ cniVersion: '1.0.0', name: 'net', network: '10.200.0.0/16', subnet, dataDir: dir, ...extra }))
const who = (containerId: string) => ({ containerId, ifname: 'eth0' })

function take(store: Store, conf: ReturnType<typeof confFor>, id: string): string {
  const a = store.open(who(id))
  try {
    return formatAddress(4, a.reserve(conf.pools[0]))
  } finally {
    a.close()
  }
}

test('one file per IP, created 0600 with "containerID\\r\\nifname", round-robin from last_reserved_ip', () => {
  const conf = confFor('10.200.1.0/24')
  const store = new Store(dir, 'net')
  assert.is(take(store, conf, 'a'), '10.200.1.2') // .1 is the gateway
  assert.is(take(store, conf, 'b'), '10.200.1.3')
  const file = join(dir, 'net', '10.200.1.2')
  assert.is(readFileSync(file, 'utf8'), 'a\r\neth0')
  assert.is(statSync(file).mode & 0o777, 0o600)
  assert.is(readFileSync(join(dir, 'net', 'last_reserved_ip.4'), 'utf8'), '10.200.1.3')
  // Freed addresses are not reused at once: round-robin goes on from the cursor.
  assert.ok(store.free('10.200.1.2', who('a')))
  assert.is(take(store, conf, 'c'), '10.200.1.4')
})

test('a /28 holds 13 pods: never the network, the gateway or the broadcast', () => {
  const conf = confFor('10.200.1.16/28')
  const store = new Store(dir, 'net')
  const got = Array.from({ length: 13 }, (_, i) => take(store, conf, `c${i}`))
  assert.is(new Set(got).size, 13)
  for (const banned of ['10.200.1.16', '10.200.1.17', '10.200.1.31']) assert.not.ok(got.includes(banned), banned)
  try {
    take(store, conf, 'c13')
    assert.unreachable()
  } catch (e) {
    assert.is((e as CniError).code, 101)
    assert.match((e as Error).message, /10\.200\.1\.16\/28/)
    assert.match((e as CniError).details, /GC/)
  }
})

test('a nearly full pool: one failed create, then the directory listing finds the free address', () => {
  const conf = confFor('10.200.1.0/24')
  const store = new Store(dir, 'net')
  const taken = Array.from({ length: 253 }, (_, i) => take(store, conf, `c${i}`)) // .2 .. .254
  assert.ok(store.free('10.200.1.77', who('c75')))
  const tried: string[] = []
  const got = store.reserve(conf.pools[0], who('late'), (ip) => tried.push(ip))
  assert.is(formatAddress(4, got), '10.200.1.77')
  assert.equal(tried, ['10.200.1.2', '10.200.1.77'], 'the record was written twice, not 75 times')
  assert.is(taken.length, 253)
})

test('a full pool fails fast after one listing', () => {
  const conf = confFor('10.200.1.0/28')
  const store = new Store(dir, 'net')
  for (let i = 0; i < 13; i++) take(store, conf, `c${i}`)
  const tried: string[] = []
  try {
    store.reserve(conf.pools[0], who('late'), (ip) => tried.push(ip))
    assert.unreachable()
  } catch (e) {
    assert.is((e as CniError).code, 101)
  }
  assert.is(tried.length, 1)
})

test('the cursor wraps around to the start of the pool', () => {
  const conf = confFor('10.200.1.0/29') // hosts .2 .. .6
  const store = new Store(dir, 'net')
  mkdirSync(store.dir)
  writeFileSync(join(store.dir, 'last_reserved_ip.4'), '10.200.1.6')
  assert.is(take(store, conf, 'a'), '10.200.1.2')
})

test('a second open for the same (containerID, ifname) is an error', () => {
  const store = new Store(dir, 'net')
  store.open(who('a')).close()
  try {
    store.open(who('a'))
    assert.unreachable()
  } catch (e) {
    assert.is((e as CniError).code, 102)
  }
})

test('free releases only what the owner holds', () => {
  const conf = confFor('10.200.1.0/24')
  const store = new Store(dir, 'net')
  const ip = take(store, conf, 'a')
  assert.not.ok(store.free(ip, who('b')))
  assert.not.ok(store.free(ip, { containerId: 'a', ifname: 'net1' }))
  assert.ok(store.free(ip, who('a')))
  assert.not.ok(store.free(ip, who('a'))) // idempotent
})

test('the record is written ahead: it names each candidate before that IP file exists', () => {
  const conf = confFor('10.200.1.0/24')
  const store = new Store(dir, 'net')
  take(store, conf, 'z') // .2 is taken, so 'a' tries .3
  const a = store.open(who('a'))
  const tried: string[] = []
  store.reserve(conf.pools[0], who('probe'), (ip) => {
    tried.push(ip)
    assert.not.ok(existsSync(join(dir, 'net', ip)), `${ip} must not exist before it is tried`)
  })
  a.reserve(conf.pools[0])
  a.setHostVeth('veth00000000')
  a.close()
  assert.equal(tried, ['10.200.1.3'])
  const { adding, ...record } = store.readRecord(who('a'))!
  assert.equal(record, { containerId: 'a', ifname: 'eth0', ips: ['10.200.1.4'], hostVeth: 'veth00000000', pids: undefined })
  assert.is(adding?.pid, process.pid, 'the ADD names itself, for GC')
})

test('an empty IP file (creator killed between create and write) can be freed by the record holder', () => {
  const store = new Store(dir, 'net')
  store.open(who('a')).close()
  writeFileSync(join(dir, 'net', '10.200.1.9'), '')
  assert.is(store.ownerOf('10.200.1.9'), null)
  assert.ok(store.free('10.200.1.9', who('a')))
})

test('a record that does not parse stands for the IP files its owner holds, and only those', () => {
  const conf = confFor('10.200.1.0/24')
  const store = new Store(dir, 'net')
  const mine = take(store, conf, 'a')
  take(store, conf, 'b')
  const other = store.open({ containerId: 'a', ifname: 'net1' })
  other.reserve(conf.pools[0])
  other.close()
  const garbled = join(dir, 'net', 'attachments', 'a:eth0')
  writeFileSync(garbled, '{"ips":["10.200.1.2"')
  assert.equal(store.readRecord(who('a')), { containerId: 'a', ifname: 'eth0', ips: [mine] })
  assert.equal(store.attachment(who('a'))?.busy, true, 'GC leaves it to the next run: an ADD may be writing it')
  utimesSync(garbled, 1, 1)
  assert.equal(store.listAttachments().map((a) => `${a.owner.containerId}/${a.owner.ifname} ${a.record.ips}`).sort(), [
    `a/eth0 ${mine}`,
    'a/net1 10.200.1.4',
    'b/eth0 10.200.1.3',
  ])
})

test('a container ID longer than a file name allows gets a record, and GC learns its owner from it', () => {
  const conf = confFor('10.200.1.0/24')
  const store = new Store(dir, 'net')
  const long = 'f'.repeat(300)
  const longer = `${long}0`
  const ip = take(store, conf, long)
  assert.is(take(store, conf, longer), '10.200.1.3', 'the cut names of two long IDs differ')
  assert.equal(store.readRecord(who(long))?.ips, [ip])
  for (const name of readdirSync(join(dir, 'net', 'attachments'))) assert.ok(name.length <= 255, name)
  assert.equal(store.listAttachments().map((a) => a.owner.containerId.length).sort(), [300, 301])
  store.release(who(long))
  assert.is(store.readRecord(who(long)), undefined)
  assert.is(store.ownerOf(ip), undefined, 'release frees the IPs the record names')
})

test('a planted record: its IPs never become paths, a host veth kube-cni did not name is dropped', () => {
  const conf = confFor('10.200.1.0/24')
  const store = new Store(dir, 'net')
  const mine = take(store, conf, 'a')
  writeFileSync(join(dir, 'victim'), '') // an empty file reads as "reserved by a killed ADD"
  const attachments = join(dir, 'net', 'attachments')
  writeFileSync(join(attachments, 'a:eth0'), JSON.stringify({ ips: ['../../victim', mine], hostVeth: 'cni0' }))
  const record = store.readRecord(who('a'))
  assert.equal(record, { containerId: 'a', ifname: 'eth0', ips: [mine] }, 'the IP files stand in for a record that is not ours')
  assert.not.ok(store.free('../../victim', who('a')))
  assert.not.ok(store.free('10.200.1.02', who('a')), 'only the canonical spelling is a file name')
  assert.ok(existsSync(join(dir, 'victim')))
  writeFileSync(join(attachments, 'b:eth0'), JSON.stringify({ ips: [], hostVeth: 'eth0' }))
  assert.is(store.readRecord(who('b'))?.hostVeth, undefined)
  // A pid list of the wrong shape costs the pids, never the host veth the record names.
  const pids = [7, { pid: 8, start: 99 }, '../x', { pid: 9 }, -1]
  writeFileSync(join(attachments, 'c:eth0'), JSON.stringify({ ips: [], hostVeth: 'veth0000abcd', pids }))
  assert.equal(store.readRecord(who('c')), { containerId: undefined, ifname: undefined, ips: [], hostVeth: 'veth0000abcd', pids: [7, { pid: 8, start: 99 }], adding: undefined })
})

test('the store writes through no symlink and reads through none', () => {
  const conf = confFor('10.200.1.0/24')
  const store = new Store(dir, 'net')
  take(store, conf, 'a')
  writeFileSync(join(dir, 'victim'), 'precious')
  symlinkSync(join(dir, 'victim'), join(dir, 'net', `last_reserved_ip.4.${process.pid}.tmp`))
  take(store, conf, 'b')
  assert.is(readFileSync(join(dir, 'victim'), 'utf8'), 'precious')
  assert.is(readFileSync(join(dir, 'net', 'last_reserved_ip.4'), 'utf8'), '10.200.1.3')
  assert.equal(readdirSync(join(dir, 'net')).filter((f) => f.endsWith('.tmp')), [])
  writeFileSync(join(dir, 'other'), JSON.stringify({ ips: ['10.200.1.2'] }))
  symlinkSync(join(dir, 'other'), join(dir, 'net', 'attachments', 'c:eth0'))
  assert.equal(store.readRecord(who('c'))?.ips, [], 'a symlinked record is not read')
})

test('a store directory that is a symlink, or writable by group or others, is refused with error 5', () => {
  for (const plant of [
    () => chmodSync(dir, 0o770),
    () => chmodSync(dir, 0o1777),
    () => {
      mkdirSync(join(dir, 'elsewhere'), { mode: 0o700 })
      symlinkSync(join(dir, 'elsewhere'), join(dir, 'net'))
    },
  ]) {
    rmSync(dir, { recursive: true, force: true })
    mkdirSync(dir, { mode: 0o700 })
    plant()
    try {
      new Store(dir, 'net').open(who('a'))
      assert.unreachable()
    } catch (e) {
      assert.is((e as CniError).code, 5, (e as Error).message)
      assert.match((e as Error).message, /symlink|writable by/)
      assert.match((e as CniError).details, /chmod go-w/)
    }
  }
})

test('the round-robin cursor is best-effort: failing to write it fails no ADD and leaves no temp file', () => {
  const conf = confFor('10.200.1.0/24')
  const store = new Store(dir, 'net')
  mkdirSync(join(dir, 'net', 'last_reserved_ip.4', 'x'), { recursive: true }) // rename onto it fails
  assert.is(take(store, conf, 'a'), '10.200.1.2')
  assert.equal(readdirSync(join(dir, 'net')).filter((f) => f.endsWith('.tmp')), [])
})

test('GC sees an attachment as busy while the ADD that wrote it runs, and a half-written record as busy', () => {
  const conf = confFor('10.200.1.0/24')
  const store = new Store(dir, 'net')
  const a = store.open(who('a'))
  a.reserve(conf.pools[0])
  take(store, conf, 'done')
  const attachments = join(dir, 'net', 'attachments')
  writeFileSync(join(attachments, 'dead:eth0'), JSON.stringify({ ips: [], adding: { pid: process.pid, start: 1 } }))
  writeFileSync(join(attachments, 'torn:eth0'), '{"ips":["10.2')
  const busy = Object.fromEntries(store.listAttachments().map((l) => [l.owner.containerId, l.busy]))
  assert.equal(busy, { a: true, done: true, dead: false, torn: true }, 'this process is still the ADD of "done" too')
  a.close()
  assert.is(store.attachment(who('a'))?.busy, true)
  assert.is(store.attachment(who('nobody')), undefined)
})

test('50 processes allocating at once get 50 distinct IPs', async () => {
  const worker = join(dir, 'worker.cjs')
  buildSync({ entryPoints: [join(__dirname, '..', 'helpers', 'ipam-worker.ts')], bundle: true, platform: 'node', format: 'cjs', outfile: worker, logLevel: 'error' })
  const data = join(dir, 'data')
  const run = (id: string) =>
    new Promise<string>((resolve, reject) => {
      const child = spawn(process.execPath, [worker, data, id])
      let out = ''
      child.stdout.on('data', (d) => (out += d))
      child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`worker ${id} exited ${code}`))))
    })
  const values = await Promise.all(Array.from({ length: 50 }, (_, i) => run(`c${i}`)))
  assert.is(new Set(values).size, 50)
  const files = readdirSync(join(data, 'net')).filter((f) => f.startsWith('10.'))
  assert.is(files.length, 50)
  const owners = new Set(files.map((f) => readFileSync(join(data, 'net', f), 'utf8')))
  assert.is(owners.size, 50)
})

test.run()
