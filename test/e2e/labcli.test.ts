// The lab's command line: usage errors, --help on every verb, and a demo that is interrupted.
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { sleep } from 'zx'
import { addNetns, ipj, must, netnsWithPrefix } from '../../lib/tools/harness/netns.ts'
import { PLUGIN, PREFIX } from '../helpers/cluster.ts'

// A lab of this test's own: its netns and state dir are named apart from any other lab on the machine.
const LAB_PREFIX = `${PREFIX}lab-`
const env = { ...process.env, KUBE_CNI_LAB_PREFIX: LAB_PREFIX }
test.after.each(() => {
  spawnSync('node', [PLUGIN, 'lab', 'down'], { env })
})

const lab = (...args: string[]) => spawnSync('node', [PLUGIN, 'lab', ...args], { encoding: 'utf8' })

const OPTIONS = ['--nodes', '--pods', '--backend', '--dual-stack', '--keep', '--explain', '--node', '--help']

for (const verb of ['', 'demo', 'up', 'down', 'status', 'add', 'check', 'scenarios', 'break']) {
  test(`lab ${verb} --help prints the usage with every option and exits 0`, () => {
    const r = lab(...(verb ? [verb] : []), '--help')
    assert.is(r.status, 0, r.stderr)
    for (const option of OPTIONS) assert.ok(r.stdout.includes(option), `${option} in\n${r.stdout}`)
    assert.is(r.stderr, '')
  })
}

for (const args of [['--nodse', '3'], ['add'], ['demo', 'extra'], ['status', 'now'], ['dmeo'], ['--nodes', 'three'], ['--pods', '0'], ['--backend', 'flannel'], ['--explain=loud'], ['--keep=yes']]) {
  test(`lab ${args.join(' ')}: a usage error (exit 2, what is wrong and the usage), never ignored`, () => {
    const r = lab(...args)
    assert.is(r.status, 2, r.stdout + r.stderr)
    assert.match(r.stderr, /^kube-cni lab: /)
    assert.match(r.stderr, /Options:/)
    assert.not.match(r.stderr, /\n\s+at /, 'no stack trace')
    assert.is(r.stdout, '')
  })
}

test('kube-cni --help names every lab option', () => {
  const r = spawnSync('node', [PLUGIN, '--help'], { encoding: 'utf8' })
  for (const option of ['--nodes', '--pods', '--backend', '--dual-stack', '--keep', '--explain']) assert.ok(r.stdout.includes(option), option)
})

async function until(ok: () => boolean, what: string): Promise<void> {
  for (let i = 0; !ok(); i++) {
    if (i > 1200) throw new Error(`waited a minute for ${what}`)
    await sleep(50)
  }
}

/** A demo of this test's lab, its stderr collected as it comes. */
function startDemo() {
  const child = spawn('node', [PLUGIN, 'lab', 'demo', '--explain', '--pods', '1'], { env })
  const out = { stderr: '', child }
  child.stderr.setEncoding('utf8').on('data', (d) => (out.stderr += d))
  return out
}

test('SIGTERM in the middle of the demo: it removes every netns it made and says so', async () => {
  const demo = startDemo()
  demo.child.stdout.resume()
  await until(() => demo.stderr.includes('# ADD'), 'the first ADD')
  demo.child.kill('SIGTERM')
  const [code] = await once(demo.child, 'exit')
  assert.is(code, 143, demo.stderr.slice(-2000))
  assert.equal(netnsWithPrefix(LAB_PREFIX), [])
  assert.match(demo.stderr, /kube-cni lab: interrupted \(SIGTERM\): removed the lab/)
})

test('the reader of its stdout goes away: the demo removes every netns it made', async () => {
  const demo = startDemo()
  demo.child.stdout.once('data', () => demo.child.stdout.destroy())
  const [code] = await once(demo.child, 'exit')
  assert.is.not(code, 0)
  assert.equal(netnsWithPrefix(LAB_PREFIX), [], demo.stderr.slice(-2000))
  assert.match(demo.stderr, /stdout was closed \(EPIPE\): removed the lab/)
})

test('lab status names the netns an interrupted lab left, and how to remove them', () => {
  addNetns(`${LAB_PREFIX}node1`)
  const r = spawnSync('node', [PLUGIN, 'lab', 'status'], { env, encoding: 'utf8' })
  assert.is(r.status, 1)
  assert.match(r.stdout, new RegExp(`left 1 network namespaces: ${LAB_PREFIX}node1\n`))
  assert.match(r.stdout, /Remove them with: sudo .* lab down/)
})

test("the default demo fits 80 columns and ends with one pod's DEL, its steps explained", () => {
  const r = spawnSync('node', [PLUGIN, 'lab', 'demo', '--explain'], { env, encoding: 'utf8' })
  assert.is(r.status, 0, r.stdout + r.stderr.slice(-2000))
  for (const line of r.stdout.split('\n')) assert.ok([...line].length <= 80, `wider than 80 columns: ${JSON.stringify(line)}`)
  assert.match(r.stdout, /DEL n2-p2 on node2: eth0 and its veth are gone, 10\.200\.2\.3 is free again/)
  assert.match(r.stderr, new RegExp(`# DEL n2-p2 on node2.*\n  ip netns exec ${LAB_PREFIX}node2 ip link del dev veth[0-9a-f]{8}\t#`))
  assert.equal(netnsWithPrefix(LAB_PREFIX), [])
})

test('lab add NODE: one more pod, as a runtime adds it, with the CNI_* variables, the config and the result shown', () => {
  const up = spawnSync('node', [PLUGIN, 'lab', 'up', '--pods', '1'], { env, encoding: 'utf8' })
  assert.is(up.status, 0, up.stderr)
  const r = spawnSync('node', [PLUGIN, 'lab', 'add', 'node1'], { env, encoding: 'utf8' })
  assert.is(r.status, 0, r.stdout + r.stderr)
  for (const line of ['CNI_COMMAND=ADD', 'CNI_CONTAINERID=lab-n1-p2', `CNI_NETNS=/var/run/netns/${LAB_PREFIX}n1p2`, 'CNI_IFNAME=eth0', 'CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME=n1-p2'])
    assert.ok(r.stdout.includes(`\n${line}\n`), line)
  assert.match(r.stdout, /"subnet": "10\.200\.1\.0\/24"/)
  assert.match(r.stdout, /# kube-cni exits 0 and prints the result on stdout:\n\{\n  "cniVersion": "1\.0\.0"/)
  assert.match(r.stdout, /"address": "10\.200\.1\.3\/24"/)
  const eth0 = ipj(`${LAB_PREFIX}n1p2`, 'addr', 'show', 'dev', 'eth0')[0]
  assert.ok(eth0.addr_info.some((a: any) => a.local === '10.200.1.3'))
  const status = spawnSync('node', [PLUGIN, 'lab', 'status'], { env, encoding: 'utf8' })
  assert.match(status.stdout, /n1-p2=10\.200\.1\.3/)
})

test('a probe that times out in the first pass is asked again before the matrix reports it: lab check shows ✗ only for what cannot connect', async () => {
  const up = spawnSync('node', [PLUGIN, 'lab', 'up', '--pods', '1'], { env, encoding: 'utf8' })
  assert.is(up.status, 0, up.stdout + up.stderr)
  // n2-p1 drops n1-p1's SYNs until the first pass has spent all its tries (3 tries, a SYN and its retransmit
  // each), as a full neighbour table does under a big lab's load; then it answers again.
  const drop = ['INPUT', '-s', '10.200.1.2', '-p', 'tcp', '--syn', '--dport', '7777', '-j', 'DROP']
  const inPod = (...argv: string[]) => ['ip', 'netns', 'exec', `${LAB_PREFIX}n2p1`, 'iptables', '-w', ...argv]
  must(inPod('-I', ...drop))
  const check = spawn('node', [PLUGIN, 'lab', 'check'], { env })
  let stdout = ''
  check.stdout.setEncoding('utf8').on('data', (d) => (stdout += d))
  const dropped = () => Number(must(inPod('-L', 'INPUT', '-n', '-v', '-x')).match(/^\s*(\d+)\s+\d+\s+DROP/m)?.[1] ?? 0)
  await until(() => dropped() >= 6, 'the first pass to spend its tries')
  must(inPod('-D', ...drop))
  const [code] = await once(check, 'exit')
  assert.match(stdout, /\n  n1-p1 +✓ kept +✓ kept\n/)
  assert.match(stdout, /All pods reach each other with their own IPs/)
  assert.is(code, 0, stdout)
})

test.run()
