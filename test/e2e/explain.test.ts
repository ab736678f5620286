// Explain mode's lines are a learner's to replay: pasted into a root shell they build the same pod network.
import { spawnSync } from 'node:child_process'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { addNetns, delNetns } from '../../lib/tools/harness/netns.ts'
import { Node, cleanupAll, ipj, nsPath, sh } from '../helpers/cluster.ts'

test.after.each(cleanupAll)

/** What a pod's network is, as the kernel has it: the pod's addresses and routes, the bridge and its ports. */
function network(node: string, pod: string): unknown {
  const addrs = (ns: string, dev: string) => ipj(ns, 'addr', 'show', 'dev', dev)[0].addr_info.filter((a: any) => a.scope !== 'link').map((a: any) => `${a.local}/${a.prefixlen}`)
  return {
    pod: addrs(pod, 'eth0'),
    podRoutes: ipj(pod, 'route', 'show').map((r: any) => `${r.dst} ${r.gateway ?? ''} ${r.dev}`),
    bridge: addrs(node, 'cni0'),
    ports: ipj(node, 'link', 'show', 'master', 'cni0').map((l: any) => l.ifname),
    rules: sh(['nsenter', `--net=${nsPath(node)}`, 'iptables-save']).stdout.replace(/^[#:].*$/gm, '').replace(/\[\d+:\d+\]/g, ''),
    forwarding: sh(['nsenter', `--net=${nsPath(node)}`, 'sysctl', '-n', 'net.ipv4.ip_forward']).stdout,
  }
}

test("one ADD's explain lines, piped into bash for a fresh node and pod netns, build the same pod network", async () => {
  const node = new Node()
  const pod = node.pod()
  const r = await node.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(pod), env: { KUBE_CNI_EXPLAIN: '1' } })
  assert.is(r.code, 0, r.stderr)
  const want = network(node.ns, pod)
  // The same names, empty again: as fresh as a new lab node.
  for (const ns of [pod, node.ns]) {
    delNetns(ns)
    addNetns(ns)
  }
  const script = r.stderr
    .split('\n')
    .filter((l) => !/^\d{4}-\d\d-\d\dT/.test(l)) // the log lines, on stderr as always
    .join('\n')
  // In a netns of its own, so that a line missing its netns prefix changes a throwaway netns, not this machine's.
  const replay = spawnSync('unshare', ['--net', 'bash', '-e'], { input: script, encoding: 'utf8' })
  assert.is(replay.status, 0, `${replay.stderr}\n${script}`)
  assert.equal(network(node.ns, pod), want)
})

test('KUBE_CNI_EXPLAIN=summary: one comment line per step, what and why', async () => {
  const steps = async (mode: string) => {
    const node = new Node()
    const r = await node.cni({ command: 'ADD', containerId: 'c1', netns: nsPath(node.pod()), env: { KUBE_CNI_EXPLAIN: mode } })
    assert.is(r.code, 0, r.stderr)
    return r.stderr.split('\n').filter((l) => l && !/^\d{4}-\d\d-\d\dT/.test(l))
  }
  const full = await steps('1')
  const summary = await steps('summary')
  assert.is(summary.length, full.filter((l) => l.startsWith('  ')).length)
  for (const line of summary) assert.match(line, /^  # \S/)
  assert.ok(summary.some((l) => l.startsWith('  # iptables-restore -w --noflush (bash: iptables -A FORWARD')), summary.join('\n'))
})

test.run()
