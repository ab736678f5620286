// `sudo npx tsx bench/doctor.ts [--pods 100] [--peers 50] [--runs 5]`: how long `kube-cni doctor` takes on a
// node with that many pods (real ADDs) and peers (routes from a NodeList), in namespaces of its own. Not a test:
// it prints the times; the target is under 2 s at 100 pods and 50 peers.
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'

const ROOT = join(__dirname, '..')
const BUNDLE = join(ROOT, 'dist', 'kube-cni')
const PREFIX = `kcbd${process.pid}-`
const NODE = `${PREFIX}node`

const { values: o } = parseArgs({ options: { pods: { type: 'string', default: '100' }, peers: { type: 'string', default: '50' }, runs: { type: 'string', default: '5' } } })
const [pods, peers, runs] = [Number(o.pods), Number(o.peers), Number(o.runs)]

function must(argv: string[], input = '', env?: Record<string, string>): string {
  const r = spawnSync(argv[0], argv.slice(1), { input, encoding: 'utf8', env: env ? { PATH: process.env.PATH!, ...env } : process.env, maxBuffer: 1 << 26 })
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: ${r.stdout}${r.stderr}`)
  return r.stdout
}

const made: string[] = []
function netns(name: string): void {
  must(['ip', 'netns', 'add', name])
  made.push(name)
}
const dir = mkdtempSync(join(tmpdir(), PREFIX))
process.on('exit', () => {
  for (const ns of made) spawnSync('ip', ['netns', 'del', ns])
  rmSync(dir, { recursive: true, force: true })
})
process.on('SIGINT', () => process.exit(130))

if (process.getuid?.() !== 0) throw new Error('the bench creates network namespaces: run it as root')
if (!existsSync(BUNDLE)) must(['npm', '--prefix', ROOT, 'run', 'build', '--silent'])

// The node: an uplink on 192.0.2.0/24 where every peer lives, the conflist, a bin dir with kube-cni.
netns(NODE)
const inNode = ['nsenter', `--net=/var/run/netns/${NODE}`]
must(['ip', '-n', NODE, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'wire'])
must(['ip', '-n', NODE, 'link', 'set', 'wire', 'up'])
must(['ip', '-n', NODE, 'addr', 'add', '192.0.2.1/24', 'dev', 'eth0'])
must(['ip', '-n', NODE, 'link', 'set', 'eth0', 'up'])
must(['ip', '-n', NODE, 'route', 'add', 'default', 'via', '192.0.2.254'])
const kube = { type: 'kube-cni', network: '10.200.0.0/16', subnet: '10.200.1.0/24', dataDir: join(dir, 'ipam'), logFile: join(dir, 'log') }
const conf = join(dir, 'conflist')
writeFileSync(conf, JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', plugins: [kube] }))
const netconf = JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', ...kube })
mkdirSync(join(dir, 'bin'))
symlinkSync(BUNDLE, join(dir, 'bin', 'kube-cni'))

const items = Array.from({ length: peers + 1 }, (_, i) => ({
  metadata: { name: `node${i + 1}` },
  spec: { podCIDR: `10.200.${i + 1}.0/24` },
  status: { addresses: [{ type: 'InternalIP', address: `192.0.2.${i + 1}` }] },
}))
const nodesJson = join(dir, 'nodes.json')
writeFileSync(nodesJson, JSON.stringify({ kind: 'NodeList', items }))
must([...inNode, BUNDLE, 'routes', '--node', 'node1', '--network', '10.200.0.0/16', '--nodes-json', nodesJson])

process.stderr.write(`bench/doctor: ${pods} pods (ADD each)...\n`)
for (let i = 1; i <= pods; i++) {
  const pod = `${PREFIX}p${i}`
  netns(pod)
  must([...inNode, BUNDLE], netconf, { CNI_COMMAND: 'ADD', CNI_CONTAINERID: `bench-${i}`, CNI_NETNS: `/var/run/netns/${pod}`, CNI_IFNAME: 'eth0', CNI_PATH: join(dir, 'bin') })
}

const args = [...inNode, process.execPath, BUNDLE, 'doctor', '--conf', conf, '--cni-bin-dir', join(dir, 'bin'), '--node', 'node1', '--nodes-json', nodesJson, '--json']
const times: number[] = []
for (let i = 0; i < runs; i++) {
  const started = process.hrtime.bigint()
  const r = spawnSync(args[0], args.slice(1), { encoding: 'utf8' })
  times.push(Number(process.hrtime.bigint() - started) / 1e6)
  const report = JSON.parse(r.stdout)
  if (!report.ok) throw new Error(`doctor found a problem on the bench node: ${r.stdout}`)
}
times.sort((a, b) => a - b)
const load = require('node:os').loadavg()[0].toFixed(1)
console.log(`kube-cni doctor, ${pods} pods, ${peers} peers: median ${times[times.length >> 1].toFixed(0)} ms, best ${times[0].toFixed(0)} ms, worst ${times.at(-1)!.toFixed(0)} ms over ${runs} runs (load average ${load})`)
