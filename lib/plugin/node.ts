// The node state every pod relies on: IP forwarding, bridge-nf-call-iptables for Services, the FORWARD accept
// rules, the masquerade for traffic that leaves the cluster, and the bridge. The bash tutorial set it all up by
// hand, once.
//
// Once is not enough: a firewall reload (`iptables -t nat -F`, firewalld) or a sysctl reset breaks every later
// pod, and a changed `subnet` or `ipMasq` must take effect. So every ADD verifies, cheaply, and repairs what is
// missing, as the reference bridge plugin re-applies its rules on every ADD, but without its ten execs:
// - a marker file `<dataDir>/<name>/node-ready` holds the config the node was set up for (one read; the state dir
//   is tmpfs, so a reboot clears it with everything else);
// - the bridge and the sysctls are reads under /proc/sys/net, which reflects the netns of the reader;
// - the rules are seen with no exec at all, through canaries (see ensureNode); at least once a minute, and
//   whenever the canaries cannot tell, they are checked by one `iptables-restore --noflush` per family whose
//   every line is a `-C` check: it changes nothing and fails when a rule or chain is gone.
// The repair runs under an flock on a file we hold open (see withLock in lib/plugin/fs.ts); the kernel drops it when we exit, even
// by SIGKILL, so the lock cannot outlive its holder, and `-w` bounds the wait so it cannot deadlock.
import { accessSync, constants, existsSync, readFileSync, statSync, statfsSync, utimesSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { CniError, Code } from './cni.ts'
import { PACKAGES, explainSteps, run } from './exec.ts'
import { ioError, makeDir, withLock, writeAtomic } from './fs.ts'
import { formatCidr } from './ip.ts'
import { createBridge, linkExists } from './link.ts'
import { log } from './log.ts'
import type { NetConf, Pool } from './netconf.ts'

/**
 * The node as this config needs it. What the pod's veth needs (the bridge) is in place when this returns;
 * `rules` settles once the rules are known to be in place, or repaired. The caller awaits it before it
 * answers, and undoes the pod if it fails.
 *
 * Checking the rules with iptables costs a child process on every pod start (~4 ms here, and it grows with the
 * node's ruleset: kube-proxy's iptables mode makes thousands of rules). So each built-in chain kube-cni jumps
 * from also holds a canary: a rule that can never match (its source is multicast) and whose `recent` match
 * makes the kernel keep /proc/net/xt_recent/<its name> for as long as the rule exists. A flush, a firewall
 * reload or a restore of the table removes the canary with everything else, and the next ADD sees its file
 * gone: a stat, no exec. A rule deleted by hand, one at a time, leaves the canaries alone, so the full check
 * still runs once the last one is a minute old, and on every ADD where the canaries cannot tell (a kernel
 * without xt_recent); it runs beside the pod's own execs.
 */
export async function ensureNode(conf: NetConf): Promise<{ rules: Promise<void> }> {
  const marker = join(conf.dataDir, conf.name, 'node-ready')
  const lock = join(conf.dataDir, 'node.lock')
  const wanted = setupFor(conf)
  const statsOk = () => readText(marker) === wanted && linkExists(conf.bridge) && knobsOn(conf)
  const repair = () =>
    withLock(lock, async () => {
      if (statsOk() && (await rulesInPlace(conf))) return // another ADD repaired it while we waited
      const previous = readText(marker)
      log.info(`node setup for network ${conf.name}: ${previous === undefined ? 'first ADD' : previous === wanted ? 'repairing what changed outside kube-cni' : 'applying a changed config'}`)
      enableKnobs(conf)
      for (const pool of conf.pools) await ensureRules(conf, pool, previous)
      await createBridge(conf)
      makeDir(join(marker, '..'))
      try {
        writeAtomic(marker, wanted)
      } catch (e) {
        throw ioError('write', marker, e)
      }
    })
  if (!existsSync(BRIDGE_NF)) log.info(`warning: ${noBridgeNetfilter.msg}; ${noBridgeNetfilter.fix}`)
  if (!statsOk()) {
    await repair()
    return { rules: Promise.resolve() }
  }
  const canaries = canariesInPlace(conf)
  if (canaries && checkedWithin(marker, FULL_CHECK_EVERY_MS)) return { rules: Promise.resolve() }
  const rules = rulesInPlace(conf).then(async (inPlace) => {
    if (!inPlace) return repair()
    checked(marker)
    // Rules put back by hand (the doctor's fix) come without canaries; a kernel that has xt_recent gets them again.
    if (!canaries && existsSync(RECENT))
      await withLock(lock, async () => {
        for (const pool of conf.pools) await ensureCanaries(pool, chainsFor(conf.name, pool, conf.ipMasq))
      })
  })
  rules.catch(() => {}) // awaited by the caller; this only keeps a failure before then from crashing the process
  return { rules }
}

const FULL_CHECK_EVERY_MS = 60_000

/**
 * The marker's mtime is when the rules were last seen whole by the full check (or made). An mtime far in the
 * future (the clock was set back) counts as old, or the full check would wait for the clock to catch up.
 */
function checkedWithin(marker: string, ms: number): boolean {
  try {
    return Math.abs(Date.now() - statSync(marker).mtimeMs) < ms
  } catch {
    return false
  }
}

function checked(marker: string): void {
  try {
    const now = new Date()
    utimesSync(marker, now, now)
  } catch {
    // Only when the next full check runs: one more exec on the next ADD, never a wrong answer.
  }
}

const RECENT = '/proc/net/xt_recent' // the kernel's `recent` tables, per netns

function canariesInPlace(conf: NetConf): boolean {
  return conf.pools.every((pool) => chainsFor(conf.name, pool, conf.ipMasq).every((c) => existsSync(join(RECENT, c.canary.tag))))
}

/**
 * What the node was set up for: a change in any of it is applied by the next ADD. `rules` counts kube-cni's
 * own rule layout, so that a node set up by an older one is set up anew (the canaries came with 2).
 */
export function setupFor(conf: NetConf): string {
  const pools = conf.pools.map((p) => ({ subnet: formatCidr(p.subnet), network: formatCidr(p.network) }))
  return `${JSON.stringify({ rules: 2, bridge: conf.bridge, ipMasq: conf.ipMasq, pools })}\n`
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return undefined
  }
}

const BRIDGE_NF = '/proc/sys/net/bridge' // present while br_netfilter is loaded

/**
 * The sysctls ADD needs at 1, all per netns: forwarding, and bridge-nf-call-ip(6)tables, without which the reply
 * of a pod behind a Service to a client pod on the same bridge is bridged past iptables, never un-NATed, and the
 * connection dies (DNS through the kube-dns ClusterIP breaks this way).
 */
function knobs(conf: NetConf): string[] {
  const forwarding = conf.pools.map((p) => (p.family === 4 ? '/proc/sys/net/ipv4/ip_forward' : '/proc/sys/net/ipv6/conf/all/forwarding'))
  const v6 = conf.pools.some((p) => p.family === 6)
  const bridged = existsSync(BRIDGE_NF) ? [`${BRIDGE_NF}/bridge-nf-call-iptables`, ...(v6 ? [`${BRIDGE_NF}/bridge-nf-call-ip6tables`] : [])] : []
  return [...forwarding, ...bridged]
}

function knobsOn(conf: NetConf): boolean {
  return knobs(conf).every((knob) => readText(knob)?.trim() === '1')
}

function enableKnobs(conf: NetConf): void {
  // Enabling IPv6 forwarding makes the kernel ignore router advertisements on interfaces with accept_ra=1: a
  // node whose uplink is configured by RA needs accept_ra=2.
  for (const knob of knobs(conf)) {
    explainSteps([{ line: `sysctl -w ${knob.slice(10).replaceAll('/', '.')}=1`, why: 'bash: done by hand on each node' }])
    writeFileSync(knob, '1')
  }
}

export interface Problem {
  msg: string
  fix: string
}

const noBridgeNetfilter: Problem = {
  msg: 'br_netfilter is not loaded (no /proc/sys/net/bridge): Services do not work for pods on the bridge',
  fix: 'load it with `modprobe br_netfilter`, and keep it across reboots with `echo br_netfilter > /etc/modules-load.d/kube-cni.conf`',
}

// The tools every ADD runs; iptables and ip6tables are needed by what the config asks for.
const ALWAYS_RUN = ['ip', 'nsenter', 'flock']

/** What the node offers, as STATUS observes it. */
export interface NodeFacts {
  path: string // where the tools are looked for
  found: (tool: string) => boolean // on that path, executable
  bridgeNetfilter: boolean
  dataDir?: string // why the IPAM store cannot be written, if it cannot
}

/**
 * Why an ADD on this node would fail or give pods broken Services, for STATUS. Pure, so each case is testable
 * without breaking a node.
 */
export function nodeProblems(conf: NetConf, facts: NodeFacts): Problem[] {
  const problems: Problem[] = []
  if (facts.dataDir)
    problems.push({ msg: `the IPAM store cannot be written: ${facts.dataDir}`, fix: 'make it writable for root, or set "dataDir" to a directory on a writable tmpfs (the default is /run/kube-cni/ipam)' })
  const tools = [...ALWAYS_RUN, ...conf.pools.flatMap((p) => [iptablesOf(p), `${iptablesOf(p)}-restore`])]
  for (const tool of tools.filter((t) => !facts.found(t)))
    problems.push({
      msg: `kube-cni needs ${tool}, and it is not in PATH=${facts.path}`,
      fix: ALWAYS_RUN.includes(tool) ? `install the ${PACKAGES[tool]} package on the node` : iptablesHint(conf, tool),
    })
  if (!facts.bridgeNetfilter) problems.push(noBridgeNetfilter)
  return problems
}

/** The facts nodeProblems needs, cheap enough for a runtime that calls STATUS every 5 s: stats, no exec. */
export function observeNode(conf: NetConf): NodeFacts {
  const path = process.env.PATH ?? ''
  const dirs = path.split(':').filter((d) => d.startsWith('/'))
  return {
    path,
    found: (tool) =>
      dirs.some((d) => {
        try {
          accessSync(join(d, tool), constants.X_OK)
          return true
        } catch {
          return false
        }
      }),
    bridgeNetfilter: existsSync(BRIDGE_NF),
    dataDir: storeProblem(join(conf.dataDir, conf.name)),
  }
}

/** The store's directory, or the nearest existing one above it (ADD creates the rest): writable, not full. */
function storeProblem(store: string): string | undefined {
  let dir = store
  while (!existsSync(dir) && dirname(dir) !== dir) dir = dirname(dir)
  try {
    accessSync(dir, constants.W_OK)
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    return `${dir} is ${code === 'EROFS' ? 'on a read-only filesystem' : `not writable (${code})`}`
  }
  const fs = statfsSync(dir)
  if (fs.bfree === 0 || (fs.files > 0 && fs.ffree === 0)) return `the filesystem of ${dir} is full`
  return undefined
}

interface Chain {
  table: 'filter' | 'nat'
  name: string
  rules: string[]
  jump: string // the rule in a built-in chain that sends traffic to this one
  canary: { rule: string; tag: string } // beside the jump: see ensureNode
}

/**
 * Each network has its own chains, so that one network's setup never rewrites another's: a second network
 * would otherwise masquerade the first one's pod-to-pod traffic. They are named by an FNV-1a hash of the
 * network's name, because iptables allows 28 characters and a name may have 63.
 */
export function chainNames(network: string): { id: string; forward: string; masq: string } {
  let hash = 0x811c9dc5
  for (const byte of Buffer.from(network)) hash = Math.imul(hash ^ byte, 0x01000193) >>> 0
  const id = hash.toString(16).padStart(8, '0')
  return { id, forward: `KUBE-CNI-FORWARD-${id}`, masq: `KUBE-CNI-MASQ-${id}` }
}

/** The chains of one network, for one family. */
export function chainsFor(name: string, pool: Pool, ipMasq: boolean): Chain[] {
  const chain = chainNames(name)
  const network = formatCidr(pool.network)
  const multicast = pool.family === 4 ? '224.0.0.0/4' : 'ff00::/8'
  // The stack drops a packet from a multicast source as it arrives, so no forwarded packet matches the canary's
  // source: its `recent` match never runs, and it costs traffic nothing.
  const canary = (builtin: string, table: string) => {
    const tag = `kube-cni-canary-${chain.id}-${table}${pool.family}`
    return { rule: `${builtin} -s ${multicast} -m recent --rcheck --name ${tag}`, tag }
  }
  const forward: Chain = {
    table: 'filter',
    name: chain.forward,
    rules: [`-s ${network} -j ACCEPT`, `-d ${network} -j ACCEPT`],
    jump: `FORWARD -j ${chain.forward}`,
    canary: canary('FORWARD', 'filter'),
  }
  const masq: Chain = {
    table: 'nat',
    name: chain.masq,
    rules: [`-d ${network} -j RETURN`, `-d ${multicast} -j RETURN`, '-j MASQUERADE'],
    jump: masqJump(name, pool),
    canary: canary('POSTROUTING', 'nat'),
  }
  return ipMasq ? [forward, masq] : [forward]
}

const masqJump = (name: string, pool: Pool) => `POSTROUTING -s ${formatCidr(pool.subnet)} -j ${chainNames(name).masq}`

/**
 * iptables-restore input: `rewrite` declares each chain (which flushes it) and fills it, so a rerun leaves
 * exactly one copy; `check` has only `-C` lines, for the jumps too, and changes nothing.
 */
export function restoreInput(chains: Chain[], mode: 'rewrite' | 'check'): string {
  const lines = chains.flatMap((c) => [
    `*${c.table}`,
    ...(mode === 'rewrite' ? [`:${c.name} - [0:0]`, ...c.rules.map((r) => `-A ${c.name} ${r}`)] : [`-C ${c.jump}`, ...c.rules.map((r) => `-C ${c.name} ${r}`)]),
    'COMMIT',
  ])
  return `${lines.join('\n')}\n`
}

const iptablesOf = (pool: Pool) => (pool.family === 4 ? 'iptables' : 'ip6tables')

async function rulesInPlace(conf: NetConf): Promise<boolean> {
  for (const pool of conf.pools) {
    const r = await run([`${iptablesOf(pool)}-restore`, '-w', '--noflush'], restoreInput(chainsFor(conf.name, pool, conf.ipMasq), 'check')).catch(() => undefined)
    if (r?.code !== 0) return false
  }
  return true
}

/** `previous` is the marker of the last setup: with "ipMasq": false, the nat table is touched only to undo its masquerade. */
async function ensureRules(conf: NetConf, pool: Pool, previous: string | undefined): Promise<void> {
  const tool = iptablesOf(pool)
  const chains = chainsFor(conf.name, pool, conf.ipMasq)
  const restore = restoreInput(chains, 'rewrite')
  explainSteps([{ line: `${tool}-restore -w --noflush <<'EOF'\n${restore}EOF`, why: "bash: iptables -A FORWARD ...; the bash masquerade '! -o cni0' NATed pod-to-pod traffic too" }])
  await iptables(conf, [`${tool}-restore`, '-w', '--noflush'], restore)
  if (conf.ipMasq || hadMasquerade(previous)) await dropOldMasquerade(conf, pool)
  for (const { table, jump } of chains) {
    const rule = jump.split(' ')
    if ((await run([tool, '-w', '-t', table, '-C', ...rule])).code !== 0) {
      explainSteps([{ line: `${tool} -w -t ${table} -A ${jump}` }])
      await iptables(conf, [tool, '-w', '-t', table, '-A', ...rule])
    }
  }
  await ensureCanaries(pool, chains)
}

/** Only a speed-up: without them (a kernel without xt_recent) every ADD runs the full check instead. */
async function ensureCanaries(pool: Pool, chains: Chain[]): Promise<void> {
  const tool = iptablesOf(pool)
  for (const { table, canary } of chains) {
    const rule = canary.rule.split(' ')
    if ((await run([tool, '-w', '-t', table, '-C', ...rule])).code === 0) continue
    explainSteps([{ line: `${tool} -w -t ${table} -A ${canary.rule}`, why: 'new: lets the next ADD see a flush or a firewall reload without running iptables' }])
    const added = await run([tool, '-w', '-t', table, '-A', ...rule])
    if (added.code !== 0) log.info(`no canary rule in ${table} ${rule[0]} (${added.stderr.trim()}): every ADD checks the rules with ${tool}-restore`)
  }
}

function hadMasquerade(marker: string | undefined): boolean {
  try {
    return JSON.parse(marker ?? '').ipMasq === true
  } catch {
    return false
  }
}

/** Removes this network's POSTROUTING jumps that the config no longer asks for (an old subnet, or "ipMasq": false), and with "ipMasq": false its nat canary. */
async function dropOldMasquerade(conf: NetConf, pool: Pool): Promise<void> {
  const tool = iptablesOf(pool)
  const { masq } = chainNames(conf.name)
  const wanted = conf.ipMasq ? `-A ${masqJump(conf.name, pool)}` : undefined
  const listed = await run([tool, '-w', '-t', 'nat', '-S', 'POSTROUTING'])
  for (const line of listed.stdout.split('\n').filter((l) => l.endsWith(` -j ${masq}`) && l !== wanted)) {
    explainSteps([{ line: `${tool} -w -t nat ${line.replace('-A', '-D')}`, why: 'new: the config changed' }])
    await iptables(conf, [tool, '-w', '-t', 'nat', '-D', ...line.split(' ').slice(1)])
  }
  if (conf.ipMasq) return
  // The canary and the chain go too, once nothing jumps to it; they may already be gone, after a firewall reload.
  const nat = chainsFor(conf.name, pool, true).find((c) => c.table === 'nat')!
  await run([tool, '-w', '-t', 'nat', '-D', ...nat.canary.rule.split(' ')])
  await run([tool, '-w', '-t', 'nat', '-F', masq])
  await run([tool, '-w', '-t', 'nat', '-X', masq])
}

// Not "or set ipMasq to false": the FORWARD accepts need iptables either way.
const iptablesHint = (conf: NetConf, tool: string) =>
  `install the iptables package on the node: kube-cni needs ${tool} for ${conf.ipMasq ? 'its FORWARD accept and masquerade rules' : 'its FORWARD accept rules'}`

async function iptables(conf: NetConf, argv: string[], input = ''): Promise<void> {
  const hint = iptablesHint(conf, argv[0])
  const r = await run(argv, input).catch((e) => {
    throw new CniError(Code.Internal, `cannot run ${argv[0]}: ${(e as Error).message}`, hint)
  })
  // The kernel refused a rule, as it refuses an `ip` step: the same code. A missing tool stays an internal error.
  if (r.code !== 0) throw new CniError(Code.Kernel, `${argv.join(' ')} failed: ${r.stderr.trim()}`, hint)
}
