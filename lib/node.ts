// Once per node, on the first ADD: IP forwarding, the FORWARD accept rules, the masquerade for traffic that
// leaves the cluster, and the bridge. The bash tutorial did all of this by hand.
//
// When it is done, a marker file goes into the state dir (tmpfs: a reboot clears it with everything else), so
// every later ADD costs two stats here: the marker, and the bridge in /proc/sys/net. A bridge that existed
// before kube-cni (the bash tutorial's, made by hand) still gets the node rules once, and a bridge deleted
// by someone is made again. Concurrent first ADDs serialise on an flock on a file we hold open (see withLock);
// the kernel drops it when we exit, even by SIGKILL, so the lock cannot outlive its holder, and `-w` bounds
// the wait so it cannot deadlock.
import { closeSync, constants, existsSync, openSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { spawn } from 'node:child_process'
import { CniError, Code } from './cni.ts'
import { explainSteps, run } from './exec.ts'
import { formatCidr } from './ip.ts'
import { assertPrivateDir, ioError, makeDir, writeAtomic } from './ipam.ts'
import { createBridge, linkExists } from './link.ts'
import type { NetConf, Pool } from './netconf.ts'

export const FORWARD_CHAIN = 'KUBE-CNI-FORWARD'
export const MASQ_CHAIN = 'KUBE-CNI-MASQ'
const LOCK_WAIT_SECONDS = 30

export async function ensureNode(conf: NetConf): Promise<void> {
  const marker = join(conf.dataDir, conf.name, `node-ready.${conf.bridge}`)
  const ready = () => existsSync(marker) && linkExists(conf.bridge)
  if (ready()) return
  await withLock(join(conf.dataDir, 'node.lock'), async () => {
    if (ready()) return // another ADD finished the setup while we waited
    enableForwarding(conf.pools)
    for (const pool of conf.pools) await ensureRules(pool, conf.ipMasq)
    if (!linkExists(conf.bridge)) await createBridge(conf)
    makeDir(join(marker, '..'))
    try {
      writeAtomic(marker, `${new Date().toISOString()}\n`)
    } catch (e) {
      throw ioError('write', marker, e)
    }
  })
}

function enableForwarding(pools: Pool[]): void {
  for (const pool of pools) {
    // Per netns, like every /proc/sys/net knob. Enabling IPv6 forwarding makes the kernel ignore router
    // advertisements on interfaces with accept_ra=1: a node whose uplink is configured by RA needs accept_ra=2.
    const knob = pool.family === 4 ? '/proc/sys/net/ipv4/ip_forward' : '/proc/sys/net/ipv6/conf/all/forwarding'
    explainSteps([{ line: `sysctl -w ${knob.slice(10).replaceAll('/', '.')}=1`, why: 'bash: done by hand on each node' }])
    writeFileSync(knob, '1')
  }
}

/**
 * The rules, for one family. Our own chains are rewritten whole by iptables-restore (declaring a chain
 * flushes it), so a rerun leaves exactly one copy; the jumps into the built-in chains use -C before -A.
 */
export function rulesFor(pool: Pool): { restore: string; jumps: { table: string; rule: string[] }[] } {
  const network = formatCidr(pool.network)
  const multicast = pool.family === 4 ? '224.0.0.0/4' : 'ff00::/8'
  const restore = [
    '*filter',
    `:${FORWARD_CHAIN} - [0:0]`,
    `-A ${FORWARD_CHAIN} -s ${network} -j ACCEPT`,
    `-A ${FORWARD_CHAIN} -d ${network} -j ACCEPT`,
    'COMMIT',
    '*nat',
    `:${MASQ_CHAIN} - [0:0]`,
    `-A ${MASQ_CHAIN} -d ${network} -j RETURN`,
    `-A ${MASQ_CHAIN} -d ${multicast} -j RETURN`,
    `-A ${MASQ_CHAIN} -j MASQUERADE`,
    'COMMIT',
    '',
  ].join('\n')
  return {
    restore,
    jumps: [
      { table: 'filter', rule: ['FORWARD', '-j', FORWARD_CHAIN] },
      { table: 'nat', rule: ['POSTROUTING', '-s', formatCidr(pool.subnet), '-j', MASQ_CHAIN] },
    ],
  }
}

async function ensureRules(pool: Pool, ipMasq: boolean): Promise<void> {
  const tool = pool.family === 4 ? 'iptables' : 'ip6tables'
  const { restore, jumps } = rulesFor(pool)
  explainSteps([{ line: `${tool}-restore -w --noflush <<'EOF'\n${restore}EOF`, why: "bash: iptables -A FORWARD ...; the bash masquerade '! -o cni0' NATed pod-to-pod traffic too" }])
  await iptables([`${tool}-restore`, '-w', '--noflush'], restore)
  for (const { table, rule } of jumps.filter((j) => ipMasq || j.table !== 'nat')) {
    const check = await run([tool, '-w', '-t', table, '-C', ...rule])
    if (check.code === 0) continue
    explainSteps([{ line: `${tool} -w -t ${table} -A ${rule.join(' ')}` }])
    await iptables([tool, '-w', '-t', table, '-A', ...rule])
  }
}

async function iptables(argv: string[], input = ''): Promise<void> {
  const hint = `install the iptables package on the node, or set "ipMasq": false`
  const r = await run(argv, input).catch((e) => {
    throw new CniError(Code.Internal, `cannot run ${argv[0]}: ${(e as Error).message}`, hint)
  })
  if (r.code !== 0) throw new CniError(Code.Internal, `${argv.join(' ')} failed: ${r.stderr.trim()}`, hint)
}

/**
 * Runs fn while holding an exclusive flock on `path`. We open the file ourselves, so a disk or permission
 * problem is error 5 naming it (never a lock timeout); `flock(1)` takes the lock on our open file description
 * passed as its fd 3 and exits. The lock belongs to that description, which our fd keeps open: it ends when we
 * close it or exit, even by SIGKILL.
 */
export async function withLock<T>(path: string, fn: () => Promise<T>): Promise<T> {
  makeDir(join(path, '..'))
  assertPrivateDir(join(path, '..'))
  let fd: number
  try {
    // O_RDONLY is enough for flock, and opens an existing lock file on a read-only filesystem too.
    fd = openSync(path, constants.O_RDONLY | constants.O_CREAT | constants.O_NOFOLLOW, 0o600)
  } catch (e) {
    throw ioError('open the lock file', path, e)
  }
  try {
    const code = await new Promise<number | null>((resolve, reject) => {
      const flock = spawn('flock', ['-x', '-w', String(LOCK_WAIT_SECONDS), '3'], { stdio: ['ignore', 'ignore', 'inherit', fd] })
      flock.on('error', reject)
      flock.on('exit', resolve)
    })
    if (code !== 0) throw new CniError(Code.TryAgainLater, `could not lock ${path} within ${LOCK_WAIT_SECONDS}s`, 'another kube-cni is setting up this node; retry')
    return await fn()
  } finally {
    closeSync(fd)
  }
}
