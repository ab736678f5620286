// A whole `lab demo --explain` run is a script: every line it prints, pasted as it is into a root shell,
// builds the same lab (nodes, pods, bridges, routes, the DEL at the end), and its teardown removes it again.
import { spawnSync } from 'node:child_process'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { ipj, netnsWithPrefix, sh } from '../../lib/tools/harness/netns.ts'
import { PLUGIN, PREFIX } from '../helpers/cluster.ts'

const LAB_PREFIX = `${PREFIX}rp-`
const env = { ...process.env, KUBE_CNI_LAB_PREFIX: LAB_PREFIX }
const lab = (...args: string[]) => spawnSync('node', [PLUGIN, 'lab', ...args], { env, encoding: 'utf8' })
test.after.each(() => {
  lab('down')
})

const sorted = (xs: string[]) => [...xs].sort()

/** What the kernel has in every netns of the lab: what a learner's replay must make again, MACs aside (veths get random ones). */
function kernel(): Record<string, unknown> {
  const all: Record<string, unknown> = {}
  for (const ns of sorted(netnsWithPrefix(LAB_PREFIX))) {
    const links = ipj(ns, '-d', 'link', 'show')
    const ifname = new Map(links.map((l: any) => [l.ifindex, l.ifname]))
    const routes = (...family: string[]) =>
      ipj(ns, ...family, 'route', 'show', 'table', 'all').map((r: any) => `${r.type ?? ''} ${r.dst} ${r.gateway ?? ''} ${r.dev ?? ''} ${r.protocol ?? ''} ${r.table ?? ''} ${(r.flags ?? []).join(',')}`)
    const inNs = (...argv: string[]) => sh(['ip', 'netns', 'exec', ns, ...argv]).stdout
    all[ns] = {
      links: sorted(
        links.map((l: any) => {
          const kind = l.linkinfo?.info_kind ?? ''
          // Only the MACs the plugin and the routes agent choose; the kernel makes up the others.
          const mac = l.ifname === 'cni0' || kind === 'vxlan' ? l.address : ''
          const vxlan = kind === 'vxlan' ? JSON.stringify(l.linkinfo.info_data) : ''
          return `${l.ifname} ${kind} ${mac} mtu ${l.mtu} master ${l.master ?? ''} ${l.flags.includes('UP') ? 'up' : 'down'} ${vxlan}`
        }),
      ),
      ports: sorted(links.filter((l: any) => l.linkinfo?.info_slave_kind === 'bridge').map((l: any) => `${l.ifname} hairpin ${l.linkinfo.info_slave_data.hairpin}`)),
      addrs: sorted(links.flatMap((l: any) => ipj(ns, 'addr', 'show', 'dev', l.ifname)[0].addr_info.filter((a: any) => a.scope !== 'link').map((a: any) => `${l.ifname} ${a.local}/${a.prefixlen}`))),
      routes: sorted([...routes('-4'), ...routes('-6').filter((r: string) => !r.includes(' fe80::'))]),
      neigh: sorted(ipj(ns, 'neigh', 'show', 'nud', 'permanent').map((n: any) => `${n.dst} ${n.lladdr} ${n.dev}`)),
      fdb: sorted(JSON.parse(inNs('bridge', '-j', 'fdb', 'show') || '[]').filter((f: any) => f.dst).map((f: any) => `${f.mac} ${f.ifname ?? ifname.get(f.ifindex)} ${f.dst}`)),
      iptables: inNs('iptables-save').replace(/^[#:].*\n/gm, '').replace(/\[\d+:\d+\]/g, ''),
      sysctl: inNs('sysctl', 'net.ipv4.ip_forward', 'net.ipv6.conf.all.forwarding'),
    }
  }
  return all
}

/** What the replay made otherwise than the lab, one line per difference (the whole state is too long to read). */
function differences(want: Record<string, any>, got: Record<string, any>): string[] {
  const out: string[] = []
  for (const ns of sorted([...new Set([...Object.keys(want), ...Object.keys(got)])]))
    for (const what of Object.keys(want[ns] ?? got[ns])) {
      const [w, g] = [want[ns]?.[what], got[ns]?.[what]]
      if (JSON.stringify(w) === JSON.stringify(g)) continue
      const lines = (x: unknown) => (Array.isArray(x) ? x : String(x ?? '').split('\n'))
      const [ws, gs] = [lines(w), lines(g)]
      out.push(...ws.filter((l) => !gs.includes(l)).map((l) => `${ns} ${what}: only in the lab: ${l}`))
      out.push(...gs.filter((l) => !ws.includes(l)).map((l) => `${ns} ${what}: only in the replay: ${l}`))
    }
  return out
}

/** Whether one pod reaches another (or the outside host), by the netns names the lab gives them. */
const ping = (from: string, to: string) => sh(['ip', 'netns', 'exec', `${LAB_PREFIX}${from}`, 'ping', '-c', '1', '-W', '2', to]).code === 0

/** Pipes script into `bash -e`, in a throwaway netns: a line missing its netns prefix changes that, and the comparison sees it. */
function replay(script: string): void {
  const r = spawnSync('unshare', ['--net', 'bash', '-e'], { input: script, encoding: 'utf8' })
  const at = r.stderr.match(/line (\d+)/)?.[1]
  assert.is(r.status, 0, `${r.stderr}${at ? `line ${at}: ${script.split('\n')[Number(at) - 1]}` : script}`)
}

for (const backend of ['host-gw', 'vxlan']) {
  test(`${backend}: every line of lab demo --explain, pasted into bash -e for the same names, builds the same lab; its teardown removes it`, () => {
    // --keep: the lab stays up for the comparison; the lines are those of a demo, up to its teardown.
    const demo = lab('demo', '--explain', '--keep', '--backend', backend)
    // 1: the report's probes timed out (a loaded machine, issue 14 §4); the lab was built all the same, and the
    // pings below check the network this test cares about.
    assert.ok(demo.status === 0 || demo.status === 1, demo.stdout + demo.stderr.slice(-3000))
    // The script holds the routes agent's lines and the demo's DEL, and so does the comparison below.
    assert.match(demo.stderr, /^ {2}ip netns exec \S+node1 ip route replace 10\.200\.2\.0\/24 via .* proto 211/m)
    assert.match(demo.stderr, /^ {2}ip netns exec \S+node2 ip link del dev veth/m)
    const want = kernel()
    assert.ok(Object.keys(want).length >= 7, Object.keys(want).join(' '))
    // The teardown a demo without --keep ends with: the same lines, from the same code.
    const down = lab('down', '--explain')
    assert.is(down.status, 0, down.stderr)
    assert.equal(netnsWithPrefix(LAB_PREFIX), [])

    // The script is stderr as it is, as a learner copies it from the terminal. It creates every netns it
    // uses (ip netns add) and nothing outside the netns is needed (the lab's state dir only holds what the
    // plugin remembers: IPAM leases and its log), so the replay starts from nothing: fresh netns, same names.
    replay(demo.stderr)
    assert.equal(differences(want, kernel()), [])
    // The replayed lab works: pods reach each other on one node and across nodes, and the outside host.
    const ip = { n1p1: '10.200.1.2', n1p2: '10.200.1.3', n2p1: '10.200.2.2', outside: '203.0.113.10' }
    assert.ok(ping('n1p1', ip.n1p2), 'n1-p1 → n1-p2')
    assert.ok(ping('n1p1', ip.n2p1), 'n1-p1 → n2-p1 (across nodes)')
    assert.ok(ping('n2p1', ip.n1p1), 'n2-p1 → n1-p1 (across nodes)')
    assert.ok(ping('n2p1', ip.outside), 'n2-p1 → outside')

    replay(down.stderr)
    assert.equal(netnsWithPrefix(LAB_PREFIX), [])
  })
}

test('lab demo --explain=summary: one comment line per step, the same steps as --explain', () => {
  // Each run names its veths anew (a random suffix).
  const command = (line: string) => line.replace(/^ {2}(ip netns exec \S+ |nsenter --net=\S+ )/, '').replace(/\t# .*$/, '').replace(/veth[0-9a-f]{8}/g, 'veth')
  const full = lab('demo', '--explain')
  assert.ok(full.status === 0 || full.status === 1, full.stderr.slice(-3000))
  // The steps the plugin and the routes agent take: the lines carrying a node's or a pod's netns.
  const steps = full.stderr
    .split('\n')
    .filter((l) => /^ {2}(ip netns exec |nsenter --net=\S+(node|n\d+p\d+) )/.test(l))
    .map(command)
  const summary = lab('demo', '--explain=summary')
  assert.ok(summary.status === 0 || summary.status === 1, summary.stderr.slice(-3000))
  const lines = summary.stderr.split('\n').filter(Boolean)
  for (const l of lines) assert.match(l, /^ *# /)
  replay(summary.stderr)
  const said = lines.filter((l) => /^ {2}# [a-z]/.test(l) && !/^ {2}# kube-cni routes on/.test(l)).map((l) => command(l.slice(4).replace(/ \(.*\)$/, '')))
  assert.equal(said, steps.map((s) => s.replace(/ <<'EOF'$/, '')))
})

test.run()
