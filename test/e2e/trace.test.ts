// `kube-cni lab trace`: one probe through a lab of this test's own (kctr<pid>-*), healthy and broken.
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { PLUGIN, must } from '../helpers/cluster.ts'

const PREFIX = `kctr${process.pid}-`
const LAB = { ...process.env, KUBE_CNI_LAB_PREFIX: PREFIX }
const NODE1 = `${PREFIX}node1`
const NODE2 = `${PREFIX}node2`

function lab(...args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync('node', [PLUGIN, 'lab', ...args], { encoding: 'utf8', env: LAB })
  return { code: r.status ?? 1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' }
}

interface Trace {
  delivered: boolean
  hops: {
    netns: string
    dev: string
    action: string
    in?: string
    inPort?: string
    outPort?: string
    src: string
    dst: string
    why?: string
    rules: { table: string; rule: string; packets: number }[]
    finding?: { id: string }
    vxlan?: { vni: number; port: number; inner: { src: string; dst: string }; fdb?: string }
    packets?: { dev: string; rx: number; tx: number }[]
  }[]
}

const natRules = (ns: string) => must(['ip', 'netns', 'exec', ns, 'iptables-save', '-t', 'nat'])

function trace(...args: string[]): Trace {
  const r = lab('trace', ...args, '--json')
  try {
    return JSON.parse(r.stdout)
  } catch {
    throw new Error(`lab trace did not print one JSON document: ${r.stdout}${r.stderr}`)
  }
}

process.on('exit', () => lab('down'))
test.before(() => {
  const r = lab('up', '--pods', '2')
  assert.is(r.code, 0, r.stderr)
})

test('n1-p1 → n2-p1: delivered, through both nodes, ending in the pod with its own source address', () => {
  const t = trace('n1-p1', 'n2-p1')
  assert.ok(t.delivered, JSON.stringify(t))
  assert.equal(t.hops.map((h) => h.netns), [`${PREFIX}n1p1`, NODE1, NODE2, `${PREFIX}n2p1`])
  assert.equal(t.hops.map((h) => h.action), ['sent', 'forwarded', 'forwarded', 'delivered'])
  assert.is(t.hops[1].dev, 'eth0')
  assert.ok(t.hops.every((h) => h.src === t.hops[0].src), 'kept, not masqueraded')
  assert.ok(t.hops[1].rules.some((r) => r.table === 'filter' && /-j ACCEPT/.test(r.rule) && r.packets > 0))
  assert.ok(trace('n1-p1', 'n2-p1', '--udp').delivered)
  const human = lab('trace', 'n1-p1', 'n2-p1')
  assert.is(human.code, 0)
  assert.match(human.stdout, /delivered/)
})

test('--svg draws the traced path on the lab picture: the interfaces the probe crossed, and only they, in red', () => {
  const dir = mkdtempSync(join(tmpdir(), PREFIX))
  const r = lab('trace', 'n1-p1', 'n2-p1', '--json', '--svg', join(dir, 'trace.svg'))
  const svg = readFileSync(join(dir, 'trace.svg'), 'utf8')
  rmSync(dir, { recursive: true, force: true })
  assert.is(r.code, 0, r.stderr)
  const t: Trace = JSON.parse(r.stdout) // still one JSON document on stdout
  assert.match(svg, /^<svg[\s>]|<svg[\s>]/)
  const hot = [...svg.matchAll(/<g class="port hot" data-netns="([^"]+)" data-dev="([^"]+)"/g)].map((m) => `${m[1]} ${m[2]}`)
  assert.ok(hot.length >= 4, hot.join(', '))
  for (const port of hot) assert.ok(t.hops.some((h) => port.startsWith(`${h.netns} `)), `${port} is on the path`)
  assert.ok(hot.includes(`${PREFIX}n1p1 eth0`) && hot.includes(`${PREFIX}n2p1 eth0`), hot.join(', '))
})

test('to outside: the masquerade rule counts the probe, and the hops after node1 see node1\'s address', () => {
  const t = trace('n1-p1', 'outside')
  assert.ok(t.delivered, JSON.stringify(t))
  const node1 = t.hops.find((h) => h.netns === NODE1)!
  assert.ok(node1.rules.some((r) => r.table === 'nat' && /-j MASQUERADE/.test(r.rule) && r.packets > 0), JSON.stringify(node1.rules))
  assert.equal(t.hops.slice(-2).map((h) => [h.netns, h.src]), [[`${PREFIX}router`, '192.0.2.11'], [`${PREFIX}outside`, '192.0.2.11']])
})

test('to svc/n2-p1: the DNAT rule kube-proxy would make counts the probe, the hops after see the endpoint, and the rules go', () => {
  const t = trace('n1-p1', 'svc/n2-p1')
  assert.ok(t.delivered, JSON.stringify(t))
  assert.equal(t.hops.map((h) => [h.netns, h.action]), [[`${PREFIX}n1p1`, 'sent'], [NODE1, 'forwarded'], [NODE2, 'forwarded'], [`${PREFIX}n2p1`, 'delivered']])
  assert.equal(t.hops.map((h) => h.dst), ['10.96.2.2', '10.96.2.2', '10.200.2.2', '10.200.2.2'], 'the VIP until node1, the endpoint after')
  const dnat = t.hops[1].rules.filter((r) => r.table === 'nat' && /-d 10\.96\.2\.2\/32 .*-j DNAT --to-destination 10\.200\.2\.2:7777/.test(r.rule))
  assert.ok(dnat.length === 1 && dnat[0].packets > 0, JSON.stringify(t.hops[1].rules))
  assert.match(t.hops[1].why!, /10\.96\.2\.2 DNATed to 10\.200\.2\.2:7777/)
  assert.not.match(natRules(NODE1), /KCL-SVC/)

  const byVip = trace('n1-p1', '10.96.2.2')
  assert.ok(byVip.delivered, JSON.stringify(byVip))
  assert.is(byVip.hops.at(-1)!.netns, `${PREFIX}n2p1`)
  const hairpin = trace('n1-p1', 'svc/n1-p1')
  assert.ok(hairpin.delivered, JSON.stringify(hairpin))
  assert.equal(hairpin.hops.map((h) => h.netns), [`${PREFIX}n1p1`, NODE1, `${PREFIX}n1p1`])
  assert.is(hairpin.hops.at(-1)!.src, '10.200.1.1', 'the hairpin SNAT to the bridge')
  assert.not.match(natRules(NODE1), /KCL-SVC/)
})

test('a Service trace through no-br-netfilter: no reply, and doctor names br-netfilter', () => {
  assert.is(lab('break', 'no-br-netfilter', '--node', 'node1').code, 0)
  try {
    const t = trace('n1-p1', 'svc/n1-p2')
    assert.not.ok(t.delivered, JSON.stringify(t))
    assert.equal([t.hops.at(-1)!.netns, t.hops.at(-1)!.action, t.hops.at(-1)!.finding?.id], [`${PREFIX}n1p2`, 'no reply', 'br-netfilter'])
  } finally {
    must(['ip', 'netns', 'exec', NODE1, 'sysctl', '-qw', 'net.bridge.bridge-nf-call-iptables=1'])
  }
})

test('wrong Service input is a usage error naming the mistake; --help lists the Service forms', () => {
  const none = lab('trace', 'n1-p1', 'svc/')
  assert.is(none.code, 2)
  assert.match(none.stderr, /svc\/ needs a pod name/)
  const unknown = lab('trace', 'n1-p1', 'svc/n9-p9')
  assert.is(unknown.code, 2)
  assert.match(unknown.stderr, /no pod "n9-p9"/)
  assert.match(unknown.stderr, /svc\/POD/, 'with the usage')
  const vip = lab('trace', 'n1-p1', '10.96.9.9')
  assert.is(vip.code, 2)
  assert.match(vip.stderr, /10\.96\.9\.9 is no lab Service's VIP/)
  assert.match(lab('trace', '--help').stdout, /svc\/POD .*\n(.*\n)*.*VIP itself/)
})

test('interrupted while its Service is programmed, the trace removes the Service\'s rules', async () => {
  // The endpoint's packets dropped, the probe waits for its timeout: time enough to see the rules and interrupt.
  const drop = ['FORWARD', '-d', '10.200.2.2/32', '-j', 'DROP']
  must(['ip', 'netns', 'exec', NODE2, 'iptables', '-w', '-I', ...drop])
  try {
    const child = spawn('node', [PLUGIN, 'lab', 'trace', 'n1-p1', 'svc/n2-p1', '--json'], { env: LAB, stdio: 'ignore' })
    const exited = new Promise<string | null>((done) => child.on('exit', (_code, signal) => done(signal)))
    let programmed = false
    for (let i = 0; i < 600 && !programmed && child.exitCode === null; i++) {
      programmed = /KCL-SVC/.test(natRules(NODE1))
      if (!programmed) await new Promise((r) => setTimeout(r, 20))
    }
    assert.ok(programmed, 'the trace programmed its Service in node1')
    child.kill('SIGINT')
    assert.is(await exited, 'SIGINT', 'it ends as the signal would')
    assert.not.match(natRules(NODE1), /KCL-SVC/)
  } finally {
    must(['ip', 'netns', 'exec', NODE2, 'iptables', '-w', '-D', ...drop])
  }
})

test('node1\'s route to node2\'s podCIDR deleted: not delivered, stopped in node1, naming the missing route', () => {
  must(['ip', '-n', NODE1, 'route', 'del', '10.200.2.0/24', 'proto', '211'])
  try {
    const t = trace('n1-p1', 'n2-p1')
    assert.not.ok(t.delivered)
    const last = t.hops.at(-1)!
    assert.is(last.netns, NODE1)
    assert.is(last.action, 'no route')
    assert.match(last.why!, /no route to 10\.200\.2\.0\/24/, JSON.stringify(t))
    assert.is(last.finding?.id, 'routes')
  } finally {
    must(['ip', '-n', NODE1, 'route', 'replace', '10.200.2.0/24', 'via', '192.0.2.12', 'proto', '211'])
  }
})

test('a DROP rule in node2: dropped there, the rule named with its counter', () => {
  const rule = ['FORWARD', '-d', '10.200.2.2/32', '-p', 'tcp', '--dport', '7777', '-j', 'DROP']
  must(['ip', 'netns', 'exec', NODE2, 'iptables', '-w', '-I', ...rule])
  try {
    const t = trace('n1-p1', 'n2-p1')
    assert.not.ok(t.delivered)
    const last = t.hops.at(-1)!
    assert.equal([last.netns, last.action], [NODE2, 'dropped'])
    assert.match(last.why!, /-A FORWARD -d 10\.200\.2\.2\/32 .*-j DROP/)
  } finally {
    must(['ip', 'netns', 'exec', NODE2, 'iptables', '-w', '-D', ...rule])
  }
})

test('doctor scenarios: no-forwarding and firewall-flush are named by their finding where the probe stops', () => {
  assert.is(lab('break', 'no-forwarding', '--node', 'node1').code, 0)
  const off = trace('n1-p1', 'n2-p1')
  must(['ip', 'netns', 'exec', NODE1, 'sysctl', '-qw', 'net.ipv4.ip_forward=1'])
  assert.not.ok(off.delivered)
  assert.equal([off.hops.at(-1)!.netns, off.hops.at(-1)!.action, off.hops.at(-1)!.finding?.id], [NODE1, 'not forwarded', 'forwarding'])

  assert.is(lab('break', 'firewall-flush', '--node', 'node1').code, 0)
  const flushed = trace('n1-p1', 'outside')
  assert.not.ok(flushed.delivered)
  const last = flushed.hops.at(-1)!
  assert.equal([last.netns, last.action, last.src, last.finding?.id], [`${PREFIX}outside`, 'no reply', flushed.hops[0].src, 'masquerade'])
})

test('--backend vxlan: the underlay between the nodes, encapsulated in node1, through the router, decapsulated in node2', () => {
  // The lab is built when up prints its report; whether every cell of its matrix passed is the lab tests' business.
  const up = lab('up', '--pods', '2', '--backend', 'vxlan')
  assert.match(up.stdout, /backend vxlan/, up.stderr)
  const t = trace('n1-p1', 'n2-p1')
  assert.ok(t.delivered, JSON.stringify(t))
  assert.equal(t.hops.map((h) => [h.netns, h.action, h.dev]), [
    [`${PREFIX}n1p1`, 'sent', 'eth0'],
    [NODE1, 'forwarded', 'kube-cni.1'],
    [NODE1, 'encapsulated', 'eth0'],
    [`${PREFIX}router`, 'forwarded', 'segB'],
    [NODE2, 'decapsulated', 'kube-cni.1'],
    [NODE2, 'forwarded', 'cni0'],
    [`${PREFIX}n2p1`, 'delivered', 'eth0'],
  ])
  const [encap, router, decap] = t.hops.slice(2, 5)
  for (const h of [encap, router, decap]) {
    assert.equal([h.src, h.dst], ['192.0.2.11', '198.51.100.12'], 'the outer addresses: node1\'s and node2\'s InternalIPs')
    assert.equal([h.vxlan?.vni, h.vxlan?.port, h.vxlan?.inner], [1, 4789, { src: '10.200.1.2', dst: '10.200.2.2' }])
  }
  assert.match(encap.vxlan!.fdb!, /^0a:58:0a:c8:02:00 dst 198\.51\.100\.12 /)
  assert.equal([router.inPort, router.outPort], ['node1', 'node2'], 'the router\'s switch ports, from the MACs they learned')
  assert.ok(encap.packets!.find((p) => p.dev === 'eth0')!.tx > 0 && decap.packets!.find((p) => p.dev === 'eth0')!.rx > 0, JSON.stringify([encap, decap]))

  const svc = trace('n1-p1', 'svc/n2-p1')
  assert.ok(svc.delivered, JSON.stringify(svc))
  assert.ok(svc.hops[1].rules.some((r) => /-j DNAT --to-destination 10\.200\.2\.2:7777/.test(r.rule) && r.packets > 0))
  assert.equal(svc.hops[2].vxlan?.inner.dst, '10.200.2.2', 'the endpoint, inside the tunnel')
})

test.run()
