// `kube-cni doctor`: on nodes made by plain ADDs, and in the lab, where each break-it scenario is caused, seen,
// diagnosed, repaired with the fix doctor prints, and checked again.
import { existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { PLUGIN, TMP, cleanupAll, delNetns, must, sh } from '../helpers/cluster.ts'
import { routes, twoNodes } from '../helpers/topology.ts'

test.after.each(cleanupAll)

const IDS = ['bridge', 'forwarding', 'br-netfilter', 'masquerade', 'ipam-leaks', 'ipam-pool', 'routes', 'mtu', 'hairpin', 'chain', 'plugin']
const PORTMAP = '/usr/lib/cni/portmap'

interface Report {
  ok: boolean
  findings: { id: string; status: 'ok' | 'warn' | 'fail'; message: string; fix: string }[]
}

function doctorIn(ns: string, args: string[]): { code: number; report: Report; stderr: string } {
  const r = sh(['ip', 'netns', 'exec', ns, 'node', PLUGIN, 'doctor', ...args, '--json'])
  let report: Report
  try {
    report = JSON.parse(r.stdout)
  } catch {
    throw new Error(`doctor did not print one JSON document: ${r.stdout}${r.stderr}`)
  }
  return { code: r.code, report, stderr: r.stderr }
}

const failing = (r: Report) => r.findings.filter((f) => f.status === 'fail')
const byId = (r: Report, id: string) => r.findings.find((f) => f.id === id)!

/** Runs a fix as the user would: as root, in the same netns, through a shell. */
function runFix(ns: string, fix: string): void {
  const r = sh(['ip', 'netns', 'exec', ns, 'sh', '-c', fix])
  assert.is(r.code, 0, `${fix}\n${r.stdout}${r.stderr}`)
}

test('plain ADDs, with --conf and --nodes-json: healthy is ok with every id; leaks, forwarding and a lost route are named and their fixes work', async () => {
  const { a, b, nodesJson } = twoNodes()
  const bin = join(TMP, `bin-${a.node.ns}`)
  mkdirSync(bin)
  symlinkSync(PLUGIN, join(bin, 'kube-cni'))
  const chain = existsSync(PORTMAP) ? [{ type: 'portmap', capabilities: { portMappings: true }, snat: true }] : []
  if (chain.length) symlinkSync(PORTMAP, join(bin, 'portmap'))
  const { cniVersion, name, ...kube } = a.node.conf
  const conf = join(TMP, `conflist-${a.node.ns}`)
  writeFileSync(conf, JSON.stringify({ cniVersion, name, plugins: [kube, ...chain] }))
  const { pod: gone } = await a.node.addPod('c1')
  await a.node.addPod('c2')
  await b.node.addPod('c3')
  routes(a, nodesJson)
  routes(b, nodesJson)
  const args = ['--conf', conf, '--cni-bin-dir', bin, '--node', a.name, '--nodes-json', nodesJson]

  const healthy = doctorIn(a.node.ns, args)
  assert.is(healthy.code, 0, JSON.stringify(healthy.report, null, 1))
  assert.ok(healthy.report.ok)
  assert.equal(healthy.report.findings.map((f) => f.id), IDS)
  assert.equal(healthy.report.findings.filter((f) => f.status !== 'ok'), [])

  // A pod's netns vanished without a DEL (a crash); forwarding was reset; node-b's route was lost.
  delNetns(gone)
  must(['ip', 'netns', 'exec', a.node.ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=0'])
  must(['ip', '-n', a.node.ns, 'route', 'del', b.subnets[0], 'proto', '211'])
  const broken = doctorIn(a.node.ns, args)
  assert.is(broken.code, 1)
  assert.not.ok(broken.report.ok)
  assert.equal(failing(broken.report).map((f) => f.id), ['forwarding', 'ipam-leaks', 'routes'])
  assert.match(byId(broken.report, 'ipam-leaks').message, /10\.200\.1\.2\b/)
  assert.not.match(byId(broken.report, 'ipam-leaks').fix, /10\.200\.1\.3/) // c2 is alive: its IP is not touched
  for (const f of failing(broken.report)) runFix(a.node.ns, f.fix)

  const fixed = doctorIn(a.node.ns, args)
  assert.ok(fixed.report.ok, JSON.stringify(failing(fixed.report)))
  assert.equal(fixed.report.findings.map((f) => f.id), IDS)
  assert.equal(a.node.ip('route', 'show', b.subnets[0]).length, 1)
  assert.ok(existsSync(join(String(a.node.conf.dataDir), 'k8s-pod-network', '10.200.1.3')))
})

test('doctor changes nothing: links, routes, rules, sysctls and the store are the same after it ran on a broken node', async () => {
  const { a, nodesJson } = twoNodes()
  const { pod } = await a.node.addPod('c1')
  delNetns(pod)
  must(['ip', 'netns', 'exec', a.node.ns, 'iptables', '-w', '-t', 'nat', '-F'])
  const snapshot = () =>
    [
      sh(['ip', '-n', a.node.ns, 'addr', 'show']).stdout,
      sh(['ip', '-n', a.node.ns, 'route', 'show', 'table', 'all']).stdout,
      sh(['ip', 'netns', 'exec', a.node.ns, 'iptables-save']).stdout.replace(/^#.*$/gm, ''),
      sh(['ip', 'netns', 'exec', a.node.ns, 'sysctl', 'net.ipv4.ip_forward', 'net.bridge.bridge-nf-call-iptables']).stdout,
      sh(['find', String(a.node.conf.dataDir), '-printf', '%p %s\n']).stdout,
    ].join('\n')
  // The kernel settles on its own after the pod's veth vanished (carrier, IPv6 DAD): wait for it first.
  let before = ''
  for (let i = 0; i < 20 && (before.includes('tentative') || before !== snapshot()); i++) {
    before = snapshot()
    await new Promise((r) => setTimeout(r, 500))
  }
  const conf = join(TMP, `conf-${a.node.ns}.json`)
  writeFileSync(conf, JSON.stringify(a.node.conf))
  const r = doctorIn(a.node.ns, ['--conf', conf, '--cni-bin-dir', TMP, '--node', a.name, '--nodes-json', nodesJson])
  assert.equal(failing(r.report).map((f) => f.id), ['masquerade', 'ipam-leaks', 'routes', 'plugin'])
  assert.is(snapshot(), before)
})

test('human output: one line per check with ✓ ! ✗, the fix under a failed one; a missing config is a message, not a stack', async () => {
  const { a } = twoNodes()
  await a.node.addPod('c1')
  must(['ip', 'netns', 'exec', a.node.ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=0'])
  const conf = join(TMP, `conf-h-${a.node.ns}.json`)
  writeFileSync(conf, JSON.stringify(a.node.conf))
  const r = sh(['ip', 'netns', 'exec', a.node.ns, 'node', PLUGIN, 'doctor', '--conf', conf, '--cni-bin-dir', TMP])
  assert.is(r.code, 1)
  assert.match(r.stdout, /^✓ bridge /m)
  assert.match(r.stdout, /^✗ forwarding +net\.ipv4\.ip_forward = 0: pods cannot reach/m)
  assert.match(r.stdout, /^ {2}fix: sysctl -w net\.ipv4\.ip_forward=1$/m)
  assert.match(r.stdout, /^! routes +not checked/m)
  const missing = sh(['ip', 'netns', 'exec', a.node.ns, 'node', PLUGIN, 'doctor', '--conf', join(TMP, 'nope')])
  assert.is(missing.code, 1)
  assert.match(missing.stderr, /cannot read the network config .*nope.*--conf FILE/)
  assert.not.match(missing.stderr, /at .*\.ts:\d+/)
})

test.run()
