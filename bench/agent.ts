// `sudo npx tsx bench/agent.ts`: the routes agent at cluster scale, by simulation. One agent (this node,
// node-0) runs against the stand-in API server (test/helpers/apiserver.ts) holding 1,000 or 5,000 Nodes of
// about 5 KB each, first as today's agent polls (`--watch 10`), then list-then-watch (`--watch`). Over a
// fixed window the bench adds, deletes and re-addresses Nodes one at a time and measures, per agent:
//   requests and bytes the API server sent it, and what that is for a whole cluster of N such agents;
//   the time from each event to the route being in the node's kernel (median and worst);
//   the agent's CPU time in the window (reconciles, JSON parsing), and its memory (RSS, peak).
// Meanwhile every Node's kubelet updates its status every 5 minutes, as in a real cluster.
// Not a test: nothing asserts a time; it prints a table and writes bench/results/agent-<date>.md.
//
//   sudo npx tsx bench/agent.ts [--nodes 1000,5000] [--window 60]
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { simNode, startApiServer } from '../test/helpers/apiserver.ts'
import { TMP } from '../test/helpers/cluster.ts'
import { sleep } from 'zx'

const ROOT = join(__dirname, '..')
const BUNDLE = join(ROOT, 'dist', 'kube-cni')
const PREFIX = `kcba${process.pid}-`
const POLL_SECONDS = 10 // what the DaemonSet and the README passed before #15
const CLK_TCK = 100

function must(argv: string[]): string {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: ${r.stderr}`)
  return r.stdout
}


// ---- the outer process: two namespaces, then itself again inside the node's -----------------------------

function outer(argv: string[]): void {
  if (process.getuid?.() !== 0) {
    console.error('The bench creates network namespaces and routes in them: run it as root.')
    process.exit(1)
  }
  if (!existsSync(BUNDLE)) must(['npm', '--prefix', ROOT, 'run', 'build', '--silent'])
  const [node, lan] = [`${PREFIX}node`, `${PREFIX}lan`]
  process.on('exit', () => {
    for (const ns of [node, lan]) spawnSync('ip', ['netns', 'del', ns])
    rmSync(TMP, { recursive: true, force: true })
  })
  process.on('SIGINT', () => process.exit(130))
  for (const ns of [node, lan]) must(['ip', 'netns', 'add', ns])
  // The peers' network: 172.16.0.0/16 on a veth whose other end is in a netns of its own.
  must(['ip', '-n', node, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', lan])
  must(['ip', '-n', node, 'addr', 'add', '172.16.0.1/16', 'dev', 'eth0'])
  for (const ns of [node, lan]) must(['ip', '-n', ns, 'link', 'set', 'eth0', 'up'])
  must(['ip', '-n', node, 'link', 'set', 'lo', 'up'])
  const r = spawnSync('nsenter', [`--net=/var/run/netns/${node}`, process.execPath, ...process.execArgv, __filename, '--inside', ...argv], {
    stdio: 'inherit',
  })
  process.exitCode = r.status ?? 1
}

// ---- inside the node netns ------------------------------------------------------------------------------

interface Result {
  nodes: number
  mode: 'polling' | 'watching'
  syncMs: number // from the agent's start to all routes in the kernel
  requests: number
  lists: number
  bytes: number
  latencies: number[]
  cpuMs: number
  rssMB: number
  peakMB: number
}

/** utime + stime of a process, in ms. */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK
}

function memoryMB(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? 0)
  return { rss: kb('VmRSS') / 1024, peak: kb('VmHWM') / 1024 }
}

const routeCount = () => JSON.parse(must(['ip', '-j', 'route', 'show', 'proto', '211']) || '[]').length
const hasRoute = (dst: string, via: string) =>
  JSON.parse(must(['ip', '-j', 'route', 'show', 'exact', dst, 'proto', '211']) || '[]').some((r: any) => r.gateway === via)

async function waitFor(cond: () => boolean, deadlineMs: number): Promise<number | undefined> {
  const start = performance.now()
  while (performance.now() - start < deadlineMs) {
    if (cond()) return performance.now() - start
    await sleep(20)
  }
  return undefined
}

async function measure(nodes: number, mode: Result['mode'], windowMs: number, dir: string): Promise<Result> {
  spawnSync('ip', ['route', 'flush', 'proto', '211'])
  const api = await startApiServer(join(dir, `${nodes}-${mode}`), { items: Array.from({ length: nodes }, (_, i) => simNode(i, true)) }, { bookmarkEveryMs: 60_000 })
  const args = ['routes', '--node', 'node-0', '--network', '10.0.0.0/8', '--kubeconfig', api.kubeconfig, '--watch', ...(mode === 'polling' ? [String(POLL_SECONDS)] : [])]
  const agent: ChildProcess = spawn(process.execPath, [BUNDLE, ...args], { stdio: ['ignore', 'ignore', 'ignore'] })
  try {
    const started = performance.now()
    if ((await waitFor(() => routeCount() === nodes - 1, 120_000)) === undefined) throw new Error(`${mode} ${nodes}: the first sync did not finish in 120 s`)
    const syncMs = performance.now() - started
    // Every kubelet posts its Node's status every 5 minutes (nodeStatusReportFrequency): N/300 MODIFIED events a
    // second that change nothing routes depend on. They go to the upper half of the Nodes; the events below
    // touch the lower half.
    const heartbeats = setInterval(() => {
      const n = simNode(Math.floor(nodes / 2 + (Math.random() * nodes) / 2), true)
      n.status.conditions[3].lastHeartbeatTime = new Date().toISOString()
      api.add(n)
    }, 300_000 / nodes)
    const before = { ...(await api.stats()), cpu: cpuMs(agent.pid!) }
    const latencies: number[] = []
    const end = performance.now() + windowMs
    // Each event waits for its route before the next: add a Node, delete one, give one a new podCIDR.
    for (let k = 0, fresh = nodes; performance.now() < end; k++) {
      let dst: string
      let via: string
      let cond: () => boolean
      if (k % 3 === 0) {
        const n = simNode(fresh++, true)
        ;[dst, via] = [n.spec.podCIDR, n.status.addresses[0].address]
        await api.add(n)
        cond = () => hasRoute(dst, via)
      } else if (k % 3 === 1) {
        const n = simNode(1 + k, true)
        ;[dst, via] = [n.spec.podCIDR, n.status.addresses[0].address]
        await api.remove(n.metadata.name)
        cond = () => !hasRoute(dst, via)
      } else {
        const n = simNode(2 + k, true)
        const moved = simNode(fresh++, true).spec.podCIDR // a /24 no Node has
        n.spec = { podCIDR: moved, podCIDRs: [moved] }
        ;[dst, via] = [moved, n.status.addresses[0].address]
        await api.add(n)
        cond = () => hasRoute(dst, via)
      }
      const t = await waitFor(cond, POLL_SECONDS * 1000 + 10_000)
      if (t === undefined) throw new Error(`${mode} ${nodes}: event ${k} (${dst}) not in the kernel within ${POLL_SECONDS + 10} s`)
      latencies.push(t)
      await sleep(200 + Math.random() * 800)
    }
    clearInterval(heartbeats)
    const after = await api.stats()
    const mem = memoryMB(agent.pid!)
    return {
      nodes,
      mode,
      syncMs,
      requests: after.requests.length - before.requests.length,
      lists: after.lists - before.lists,
      bytes: after.bytes - before.bytes,
      latencies,
      cpuMs: cpuMs(agent.pid!) - before.cpu,
      rssMB: mem.rss,
      peakMB: mem.peak,
    }
  } finally {
    agent.kill('SIGKILL')
    api.close()
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const human = (bytes: number) => (bytes >= 1e9 ? `${(bytes / 1e9).toFixed(1)} GB` : bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${(bytes / 1e3).toFixed(1)} KB`)

async function inside(argv: string[]): Promise<void> {
  const { values: o } = parseArgs({ args: argv, options: { nodes: { type: 'string', default: '1000,5000' }, window: { type: 'string', default: '60' } } })
  const sizes = o.nodes.split(',').map(Number)
  const windowMs = Number(o.window) * 1000
  const dir = TMP // the helpers' temp dir: the stand-in's certificate and kubeconfig
  const results: Result[] = []
  try {
    for (const n of sizes)
      for (const mode of ['polling', 'watching'] as const) {
        process.stderr.write(`${n} nodes, ${mode}: `)
        const r = await measure(n, mode, windowMs, dir)
        process.stderr.write(`${r.latencies.length} events, ${human(r.bytes)}\n`)
        results.push(r)
      }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
  const secs = windowMs / 1000
  const rows = results.map((r) => [
    String(r.nodes),
    r.mode === 'polling' ? `polling (--watch ${POLL_SECONDS})` : 'list, then watch (--watch)',
    `${(r.syncMs / 1000).toFixed(1)} s`,
    `${r.requests} (${r.lists} lists)`,
    human(r.bytes),
    `${human(r.bytes / secs)}/s`,
    `${human((r.bytes / secs) * r.nodes)}/s`,
    `${r.latencies.length}: ${(median(r.latencies) / 1000).toFixed(2)} s / ${(Math.max(...r.latencies) / 1000).toFixed(2)} s`,
    `${(r.cpuMs / 1000).toFixed(1)} s`,
    `${r.rssMB.toFixed(0)} / ${r.peakMB.toFixed(0)} MB`,
  ])
  const head = ['nodes', 'agent', 'first sync', `requests in ${secs} s`, 'bytes', 'per agent', 'whole cluster', 'events: median / worst to kernel', 'agent CPU', 'RSS / peak']
  const table = [head, head.map(() => '---'), ...rows].map((r) => `| ${r.join(' | ')} |`).join('\n')
  const md = `# routes agent at scale, ${new Date().toISOString()}\n\n${cpus().length} CPUs (${cpus()[0]?.model}), Node.js ${process.version}; Nodes of ~5 KB; a ${secs} s window after the first sync.\n\n${table}\n`
  process.stdout.write(`\n${md}`)
  mkdirSync(join(__dirname, 'results'), { recursive: true })
  writeFileSync(join(__dirname, 'results', `agent-${new Date().toISOString().slice(0, 16).replace(/:/g, '')}.md`), md)
}

if (process.argv.includes('--inside')) inside(process.argv.slice(process.argv.indexOf('--inside') + 1)).then(() => process.exit(0), (e) => {
  console.error(e)
  process.exit(1)
})
else outer(process.argv.slice(2))
