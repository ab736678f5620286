// `sudo npm run bench`: kube-cni's cost per pod, side by side with the Go reference plugins and with the
// floor a Node.js plugin cannot go below, measured in the same run, alternating, inside network namespaces
// of its own. Not a test: nothing here asserts a time; it prints a table and writes bench/results/<date>.md.
//
//   sudo npm run bench [-- --n 50 --m 100]
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { $ } from 'zx/core'
import { addNetns, delNetns, inNetns, ipj, must, netnsWithPrefix, nsPath, sh } from '../lib/tools/harness/netns.ts'
import { type Call, callPlugin } from '../lib/tools/harness/runtime.ts'

const ROOT = join(__dirname, '..')
const BUNDLE = join(ROOT, 'dist', 'kube-cni')
const FLOOR = join(__dirname, 'floor.cjs')
const TSX = join(ROOT, 'node_modules', '.bin', 'tsx')
const REF_DIR = '/usr/lib/cni'
const PREFIX = `kcb${process.pid}-`
// ADD+DEL cycles per point of the scaling table: enough for a stable median on a noisy machine.
const SCALE_SAMPLES = 25

// ---- the outer process: namespaces, then itself again inside the node netns --------------------------------

function cleanup(): void {
  for (const ns of netnsWithPrefix(PREFIX)) delNetns(ns)
}

function outer(argv: string[]): void {
  if (process.getuid?.() !== 0) {
    console.error('The bench creates network namespaces and runs CNI plugins in them: run it as root (sudo npm run bench).')
    process.exit(1)
  }
  if (!existsSync(BUNDLE)) must(['npm', '--prefix', ROOT, 'run', 'build', '--silent'])
  const node = `${PREFIX}node`
  process.on('exit', cleanup)
  process.on('SIGINT', () => process.exit(130))
  addNetns(node)
  // The measuring process itself runs in the node netns, so every plugin is spawned directly, exactly as a
  // runtime spawns it: a clean environment, no wrapper process that would blur the ratios.
  const r = $({ sync: true, nothrow: true, stdio: 'inherit', env: { ...process.env, BENCH_PREFIX: PREFIX } })`${inNetns(node, [process.execPath, ...process.execArgv, __filename, '--inside', ...argv])}`
  process.exitCode = r.exitCode ?? 1
}

// ---- the inner process -------------------------------------------------------------------------------------

interface Variant {
  name: string
  argv: string[]
  conf: object
  env?: (i: number) => Record<string, string>
}

let podCount = 0
function newPod(): string {
  const ns = `${process.env.BENCH_PREFIX}p${++podCount}`
  addNetns(ns)
  return ns
}

const containerId = (v: Variant, i: number) => `${v.name.replace(/[^a-z0-9]+/gi, '-')}-${i}`
const call = (v: Variant, command: string, i: number, ns: string): Call => ({
  command,
  containerId: containerId(v, i),
  netns: nsPath(ns),
  env: { CNI_PATH: REF_DIR, ...v.env?.(i) },
})
/** One plugin call, timed, with the first address of its result. */
async function exec(v: Variant, c: Call, wrapper: string[] = []) {
  const r = await callPlugin([...wrapper, ...v.argv], c, JSON.stringify(v.conf))
  return { ...r, ok: r.code === 0, ip: r.json?.ips?.[0]?.address?.split('/')[0] as string | undefined, out: r.stdout }
}
const add = (v: Variant, i: number, ns: string) => exec(v, call(v, 'ADD', i, ns))
const del = (v: Variant, i: number, ns: string) => exec(v, call(v, 'DEL', i, ns))

function stats(xs: number[]): { p50: number; p90: number; max: number } {
  const s = [...xs].sort((a, b) => a - b)
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))]
  return { p50: at(0.5), p90: at(0.9), max: s[s.length - 1] }
}

const fmt = (ms: number) => `${ms.toFixed(1)} ms`

async function inner(argv: string[]): Promise<void> {
  const { values: o } = parseArgs({ args: argv, options: { inside: { type: 'boolean' }, n: { type: 'string', default: '50' }, m: { type: 'string', default: '100' } } })
  const N = Number(o.n)
  const M = Number(o.m)
  const tmp = mkdtempSync(join(tmpdir(), 'kube-cni-bench-'))
  const kube = (name: string, bridge: string, network: string, subnet: string): object => ({
    cniVersion: '1.0.0', name, type: 'kube-cni', bridge, network, subnet, dataDir: join(tmp, 'ipam'), logFile: join(tmp, `${name}.log`),
  })
  const kubeCni: Variant = { name: 'kube-cni', argv: [BUNDLE], conf: kube('kc', 'cni0', '10.200.0.0/16', '10.200.1.0/24') }
  const tsxVariant: Variant = { name: 'kube-cni (tsx)', argv: [TSX, join(ROOT, 'kube-cni.ts')], conf: kube('kctsx', 'cni3', '10.204.0.0/16', '10.204.1.0/24') }
  const hasRef = existsSync(join(REF_DIR, 'bridge')) && existsSync(join(REF_DIR, 'host-local'))
  const ref: Variant = {
    name: 'reference (Go)',
    argv: [join(REF_DIR, 'bridge')],
    conf: {
      cniVersion: '1.0.0', name: 'ref', type: 'bridge', bridge: 'cni1', isGateway: true, ipMasq: true, hairpinMode: true,
      ipam: { type: 'host-local', subnet: '10.201.1.0/24', dataDir: join(tmp, 'ref-ipam'), routes: [{ dst: '0.0.0.0/0' }] },
    },
  }
  // The floor needs its bridge made beforehand: it does nothing but the per-pod kernel work.
  must(['ip', 'link', 'add', 'cni2', 'type', 'bridge'])
  must(['ip', 'addr', 'add', '10.203.1.1/24', 'dev', 'cni2'])
  must(['ip', 'link', 'set', 'cni2', 'up'])
  const floor: Variant = {
    name: 'floor (node + 2 ip -batch)',
    argv: [process.execPath, FLOOR],
    conf: {},
    env: (i) => ({ FLOOR_IP: `10.203.1.${(i % 250) + 2}`, FLOOR_VETH: `vflr${i}`, FLOOR_BRIDGE: 'cni2' }),
  }
  const variants = [kubeCni, ...(hasRef ? [ref] : []), floor, tsxVariant]
  const lines: string[] = []
  const say = (l = '') => {
    lines.push(l)
    console.log(l)
  }

  say(`# kube-cni bench, ${new Date().toISOString()}`)
  say('')
  say(`Machine: ${cpus().length} × ${cpus()[0]?.model ?? '?'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, kernel ${must(['uname', '-r']).trim()}, node ${process.version}`)
  if (!hasRef) say(`The Go reference plugins are not in ${REF_DIR} (apt-get install containernetworking-plugins): ratios against them are left out.`)

  // Warm the page cache and do each variant's once-per-node work before anything is timed.
  for (const v of variants) {
    const ns = newPod()
    const w = await add(v, 9999, ns)
    if (!w.ok) throw new Error(`${v.name} failed its warm-up ADD: ${w.out}`)
    await del(v, 9999, ns)
  }

  // 1. Sequential ADD and DEL, alternating the variants within every round.
  const times = new Map(variants.map((v) => [v.name, { add: [] as number[], del: [] as number[] }]))
  const podNs = new Map(variants.map((v) => [v.name, Array.from({ length: N }, () => newPod())]))
  for (let i = 0; i < N; i++) {
    const order = i % 2 ? [...variants].reverse() : variants
    for (const v of order) {
      const a = await add(v, i, podNs.get(v.name)![i])
      if (!a.ok) throw new Error(`${v.name} ADD ${i} failed: ${a.out}`)
      times.get(v.name)!.add.push(a.ms)
    }
    for (const v of order) {
      const d = await del(v, i, podNs.get(v.name)![i])
      if (!d.ok) throw new Error(`${v.name} DEL ${i} failed: ${d.out}`)
      times.get(v.name)!.del.push(d.ms)
    }
  }
  const s = (name: string, k: 'add' | 'del') => stats(times.get(name)![k])
  say('')
  say(`## Sequential ADD and DEL, ${N} pods each, variants alternating`)
  say('')
  say('| variant | ADD p50 | ADD p90 | ADD max | DEL p50 | DEL p90 | DEL max |')
  say('|---|---|---|---|---|---|---|')
  for (const v of variants) {
    const a = s(v.name, 'add')
    const d = s(v.name, 'del')
    say(`| ${v.name} | ${fmt(a.p50)} | ${fmt(a.p90)} | ${fmt(a.max)} | ${fmt(d.p50)} | ${fmt(d.p90)} | ${fmt(d.max)} |`)
  }

  // 2. M concurrent ADDs, then M concurrent DELs.
  say('')
  say(`## ${M} concurrent ADDs`)
  say('')
  say('| variant | wall | failures | distinct IPs in results | distinct IPs on interfaces |')
  say('|---|---|---|---|---|')
  const concurrent = new Map<string, number>()
  for (const v of [kubeCni, ...(hasRef ? [ref] : [])]) {
    const nss = Array.from({ length: M }, () => newPod())
    const t0 = process.hrtime.bigint()
    const runs = await Promise.all(nss.map((ns, i) => add(v, 1000 + i, ns)))
    const wall = Number(process.hrtime.bigint() - t0) / 1e6
    concurrent.set(v.name, wall)
    const onIf = nss.map((ns) => ipj(ns, 'addr', 'show', 'dev', 'eth0')[0]?.addr_info?.find((a: any) => a.family === 'inet')?.local)
    say(`| ${v.name} | ${fmt(wall)} | ${runs.filter((r) => !r.ok).length} | ${new Set(runs.map((r) => r.ip).filter(Boolean)).size} | ${new Set(onIf.filter(Boolean)).size} |`)
    await Promise.all(nss.map((ns, i) => del(v, 1000 + i, ns)))
    for (const ns of nss) delNetns(ns)
  }

  // 3. Child processes and peak memory of one ADD.
  say('')
  say('## One ADD: child processes and peak RSS')
  say('')
  say('| variant | child processes | peak RSS |')
  say('|---|---|---|')
  const children = new Map<string, number>()
  const rss = new Map<string, number>()
  for (const v of variants) {
    const ns = newPod()
    const trace = join(tmp, 'strace.out')
    const hasStrace = sh(['which', 'strace']).code === 0
    if (hasStrace) {
      await exec(v, call(v, 'ADD', 7777, ns), ['strace', '-f', '-qq', '-e', 'trace=execve', '-o', trace])
      const pids = new Set(readFileSync(trace, 'utf8').split('\n').filter((l) => l.includes('execve(') && !l.includes('ENOENT')).map((l) => l.split(' ')[0]))
      children.set(v.name, pids.size - 1)
    }
    await del(v, 7777, ns)
    const timed = await exec(v, call(v, 'ADD', 7778, ns), ['/usr/bin/time', '-f', '%M'])
    const kb = Number(timed.stderr.trim().split('\n').pop())
    if (kb) rss.set(v.name, kb / 1024)
    await del(v, 7778, ns)
    say(`| ${v.name} | ${children.get(v.name) ?? 'no strace'} | ${rss.has(v.name) ? `${rss.get(v.name)!.toFixed(1)} MB` : 'no /usr/bin/time'} |`)
  }

  // 4. How ADD cost grows with the pods on the node and the reservations in the store.
  say('')
  say('## kube-cni ADD p50 as the node fills')
  say('')
  say('| state | ADD p50 | vs. empty |')
  say('|---|---|---|')
  const cycle = async (v: Variant, tag: string, count: number): Promise<number> => {
    const ms: number[] = []
    const ns = newPod()
    for (let i = 0; i < count; i++) {
      const a = await add(v, 50_000 + i, ns)
      if (!a.ok) throw new Error(`${tag}: ${a.out}`)
      ms.push(a.ms)
      await del(v, 50_000 + i, ns)
    }
    delNetns(ns)
    return stats(ms).p50
  }
  const fill: Variant = { name: 'fill', argv: [BUNDLE], conf: kube('fill', 'cni4', '10.205.0.0/16', '10.205.1.0/24') }
  const scale: { state: string; p50: number }[] = []
  let filled = 0
  for (const target of [0, 100, 250]) {
    while (filled < target) {
      const batch = Math.min(50, target - filled)
      const nss = Array.from({ length: batch }, () => newPod())
      const runs = await Promise.all(nss.map((ns, i) => add(fill, filled + i, ns)))
      if (runs.some((r) => !r.ok)) throw new Error(`filling the node failed: ${runs.find((r) => !r.ok)!.out}`)
      filled += batch
    }
    scale.push({ state: `${target} pods on the /24`, p50: await cycle(fill, `${target} pods`, SCALE_SAMPLES) })
  }
  const empty16: Variant = { name: 'e16', argv: [BUNDLE], conf: kube('e16', 'cni5', '10.206.0.0/16', '10.206.0.0/16') }
  const full16: Variant = { name: 'f16', argv: [BUNDLE], conf: kube('f16', 'cni6', '10.207.0.0/16', '10.207.0.0/16') }
  const store = join(tmp, 'ipam', 'f16')
  mkdirSync(store, { recursive: true })
  for (let k = 0; k < 10_000; k++) writeFileSync(join(store, `10.207.${Math.floor((k + 2) / 256)}.${(k + 2) % 256}`), `prefill-${k}\r\neth0`)
  writeFileSync(join(store, 'last_reserved_ip.4'), `10.207.${Math.floor(10_001 / 256)}.${10_001 % 256}`)
  scale.push({ state: 'empty /16', p50: await cycle(empty16, 'empty /16', SCALE_SAMPLES) })
  scale.push({ state: '10,000 reservations in the /16', p50: await cycle(full16, '10k /16', SCALE_SAMPLES) })
  const base24 = scale[0].p50
  const base16 = scale[3].p50
  for (const [i, r] of scale.entries()) say(`| ${r.state} | ${fmt(r.p50)} | ${(r.p50 / (i < 3 ? base24 : base16)).toFixed(2)}× |`)

  // 5. The goals.
  const kAdd = s(kubeCni.name, 'add').p50
  const goals: [string, string, boolean][] = []
  if (hasRef) goals.push(['ADD p50 vs. the Go reference ≤ 3.0×', `${(kAdd / s(ref.name, 'add').p50).toFixed(2)}×`, kAdd / s(ref.name, 'add').p50 <= 3])
  goals.push(['ADD p50 vs. the floor ≤ 1.25×', `${(kAdd / s(floor.name, 'add').p50).toFixed(2)}×`, kAdd / s(floor.name, 'add').p50 <= 1.25])
  if (hasRef) {
    const ratio = concurrent.get(kubeCni.name)! / concurrent.get(ref.name)!
    goals.push([`${M} concurrent ADDs: wall ≤ 2.5× the reference's`, `${ratio.toFixed(2)}×`, ratio <= 2.5])
  }
  if (children.has(kubeCni.name)) goals.push(['child processes per ADD ≤ 3', String(children.get(kubeCni.name)), children.get(kubeCni.name)! <= 3])
  const dRatio = s(kubeCni.name, 'del').p50 / s(floor.name, 'del').p50
  goals.push(['DEL p50 vs. the floor\'s DEL ≤ 1.25×', `${dRatio.toFixed(2)}×`, dRatio <= 1.25])
  goals.push(['ADD p50 with 250 pods vs. empty ≤ 1.2×', `${(scale[2].p50 / base24).toFixed(2)}×`, scale[2].p50 / base24 <= 1.2])
  goals.push(['ADD p50 with 10,000 reservations vs. empty ≤ 1.5×', `${(scale[4].p50 / base16).toFixed(2)}×`, scale[4].p50 / base16 <= 1.5])
  if (rss.has(kubeCni.name)) goals.push(['peak RSS of one invocation ≤ 60 MB', `${rss.get(kubeCni.name)!.toFixed(1)} MB`, rss.get(kubeCni.name)! <= 60])
  say('')
  say('## Goals')
  say('')
  say('| goal | measured | |')
  say('|---|---|---|')
  for (const [g, m, ok] of goals) say(`| ${g} | ${m} | ${ok ? 'met' : 'MISSED'} |`)

  const out = join(__dirname, 'results', `${new Date().toISOString().slice(0, 10)}.md`)
  mkdirSync(join(__dirname, 'results'), { recursive: true })
  writeFileSync(out, `${lines.join('\n')}\n`)
  console.log(`\nwritten to ${out}`)
  rmSync(tmp, { recursive: true, force: true })
}

if (process.argv.includes('--inside')) inner(process.argv.slice(2)).catch((e) => {
  console.error(e)
  process.exit(1)
})
else outer(process.argv.slice(2))
