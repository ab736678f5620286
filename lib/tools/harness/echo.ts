// The TCP echo the lab and the e2e tests check connectivity with: the server answers each connection with
// the address it saw the connection come from, so a probe tells both "reached" and "NAT or not". Both ends
// run as `kube-cni lab echo-server|echo-probe` inside a netns, so the shipped file carries them too.
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { connect, createServer } from 'node:net'
import { availableParallelism } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import { $ } from 'zx/core'
import { inNetns } from './netns.ts'

export const ECHO_PORT = 7777

/**
 * Listens on port (all addresses, both families) and says so on stdout once it does. A port already taken
 * is the server an earlier `lab up` or `lab check` left in this netns (they live as long as it does): that
 * one answers, so this one says so and leaves, and a lab can be checked again and again.
 */
export async function serve(port: number): Promise<void> {
  const server = createServer((s) => s.end(`${s.remoteAddress?.replace(/^::ffff:/, '')}\n`))
  try {
    await once(server.listen(port, '::'), 'listening')
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw e
    process.stdout.write('listening\n')
    return
  }
  process.stdout.write('listening\n')
  await once(server, 'close')
}

/** How one connection ended: the address the server saw us as, or the error code it failed with. */
export type Outcome = { seen: string } | { failed: string }

/**
 * A failure no second try changes: a reset (nothing listens there) or no route at all. A timeout or a host
 * unreachable is not one: a big lab's matrix fills the kernel's neighbour table (one table for every network
 * namespace, gc_thresh3 = 1024 entries by default, an entry reclaimable only once it has gone stale, 15 to 45 s
 * after its last confirmed use), and until entries can be reclaimed the kernel drops SYNs to new neighbours
 * and leaves ARP requests unanswered.
 */
export const settled = (o: Outcome | undefined): boolean => !!o && ('seen' in o || o.failed === 'ECONNREFUSED' || o.failed === 'ENETUNREACH')

/** The outcomes after a confirming pass: its outcome wherever the earlier one had not settled. */
export function confirmed(first: Record<string, Outcome>, again: Record<string, Outcome>): Record<string, Outcome> {
  return Object.fromEntries(Object.entries(first).map(([host, o]) => [host, settled(o) ? o : (again[host] ?? o)]))
}

/** What a probe reports: the address the server saw, or null. */
export const seenOf = (outcomes: Record<string, Outcome>): Record<string, string | null> =>
  Object.fromEntries(Object.entries(outcomes).map(([host, o]) => [host, 'seen' in o ? o.seen : null]))

/**
 * How often the kernel has found a neighbour table full, so far (the tables and this count are one for the
 * whole machine). A pass during which it grew proves nothing about the targets that failed in it.
 */
function neighbourTableFulls(): number {
  let n = 0
  for (const table of ['arp_cache', 'ndisc_cache']) {
    let lines: string[]
    try {
      lines = readFileSync(`/proc/net/stat/${table}`, 'utf8').trim().split('\n')
    } catch {
      continue // no such statistics here: then every pass counts as uncrowded
    }
    const col = lines[0].trim().split(/\s+/).indexOf('table_fulls')
    if (col >= 0) for (const l of lines.slice(1)) n += parseInt(l.trim().split(/\s+/)[col], 16)
  }
  return n
}

function seenBy(host: string, port: number, timeout: number): Promise<Outcome> {
  return new Promise((done) => {
    const s = connect({ host, port, timeout })
    let seen = ''
    s.setEncoding('utf8').on('data', (d) => (seen += d))
    s.on('end', () => done(seen.trim() ? { seen: seen.trim() } : { failed: 'no answer' }))
    s.on('timeout', () => (s.destroy(), done({ failed: 'ETIMEDOUT' })))
    s.on('error', (e: NodeJS.ErrnoException) => done({ failed: e.code ?? e.message }))
  })
}

/** items through f, at most n at a time, the results in items' order. */
async function inTurn<T, R>(items: T[], n: number, f: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = []
  let next = 0
  const worker = async () => {
    for (let i = next++; i < items.length; i = next++) out[i] = await f(items[i], i)
  }
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker))
  return out
}

/**
 * How a prober tries. The first pass takes three short tries: the first packet to a new neighbour can be lost
 * while IPv6 neighbour discovery settles. A confirming try waits out two SYN retransmits (1 s, 3 s) and a
 * whole ARP resolution.
 */
const PACE = {
  first: { tries: 3, timeout: 1500, pause: 300 },
  confirm: { tries: 1, timeout: 5000, pause: 0 },
}
// Targets one prober connects to at once, and probers (processes) a pass runs at once.
const CONNECTS = 8
const PROBERS = 2 * availableParallelism()
// A pause while the neighbour tables are full, for entries to go stale and be reclaimed. Confirming passes go
// on while the tables were full during the last one, a few at most.
const RECLAIM_MS = 5000
const CONFIRMING_PASSES = 4

/**
 * A wait before each prober starts: RECLAIM_MS whenever the kernel found a neighbour table full since the
 * last look, so that the next probers find room instead of losing their SYNs and ARP answers.
 */
function backOff(): () => Promise<void> {
  let seen = neighbourTableFulls()
  return async () => {
    if (neighbourTableFulls() === seen) return
    await sleep(RECLAIM_MS)
    seen = neighbourTableFulls()
  }
}

/** Each target's outcome; a few targets at a time, each tried until it settles or its tries are spent. */
export async function reach(port: number, targets: string[], pace: keyof typeof PACE = 'first'): Promise<Record<string, Outcome>> {
  const { tries, timeout, pause } = PACE[pace]
  const out: Record<string, Outcome> = {}
  await inTurn(targets, CONNECTS, async (host) => {
    for (let i = 0; i < tries && !settled(out[host]); i++) {
      if (i) await sleep(pause)
      out[host] = await seenBy(host, port, timeout)
    }
  })
  return out
}

/** `kube-cni lab echo-server PORT` and `kube-cni lab echo-probe [--confirm] PORT TARGET...`. */
export async function echoCommand(verb: string, args: string[]): Promise<number> {
  const pace = args[0] === '--confirm' ? 'confirm' : 'first'
  const [port, ...targets] = pace === 'confirm' ? args.slice(1) : args
  if (verb === 'echo-server') await serve(Number(port))
  else process.stdout.write(JSON.stringify(await reach(Number(port), targets, pace)))
  return 0
}

/** The echo, run by program (kube-cni's argv: the bundle, or kube-cni.ts under tsx) inside netns. */
export function echoWith(program: string[]) {
  async function prober(ns: string, targets: string[], port: number, pace: keyof typeof PACE): Promise<Record<string, Outcome>> {
    const flag = pace === 'confirm' ? ['--confirm'] : []
    const out = await $({ quiet: true })`${inNetns(ns, [...program, 'lab', 'echo-probe', ...flag, String(port), ...targets])}`
    return JSON.parse(out.stdout)
  }
  return {
    /** Starts a server in each netns, a few at a time, and returns once all listen; they live as long as their netns. */
    async startEchoServers(namespaces: string[], port = ECHO_PORT): Promise<void> {
      await inTurn(namespaces, PROBERS, async (ns) => {
        const p = $({ quiet: true, nothrow: true })`${inNetns(ns, [...program, 'lab', 'echo-server', String(port)])}`.stdio('ignore', 'pipe', 'pipe')
        const failed = p.then((o) => Promise.reject(new Error(`the echo server in ${ns} did not start: ${o.stderr}`)))
        await Promise.race([once(p.stdout, 'data'), failed])
        failed.catch(() => {}) // it exits when its netns is deleted, long after this
        p.stdout.destroy()
        p.stderr.destroy()
        p.child?.unref()
      })
    },
    /** The address each target's server saw ns as, or null when it did not answer one short pass of tries. */
    async probe(ns: string, targets: string[], port = ECHO_PORT): Promise<Record<string, string | null>> {
      return seenOf(await prober(ns, targets, port, 'first'))
    },
    /**
     * Each job's probe, reported as the kernel answers once the load is gone: a few probers at a time (one
     * process per netns, never one per probe), then every target that did not settle is probed again, in
     * passes of their own, until a pass runs with the neighbour tables never full: only a target that fails
     * then is reported unreachable.
     */
    async probeAll(jobs: { ns: string; targets: string[] }[], port = ECHO_PORT): Promise<Record<string, string | null>[]> {
      const wait = backOff()
      const pass = (open: string[][], pace: keyof typeof PACE) =>
        inTurn(jobs, PROBERS, async (j, i): Promise<Record<string, Outcome>> => (open[i].length ? (await wait(), prober(j.ns, open[i], port, pace)) : {}))
      let outcomes = await pass(jobs.map((j) => j.targets), 'first')
      for (let n = 0; n < CONFIRMING_PASSES; n++) {
        const open = jobs.map((j, i) => j.targets.filter((t) => !settled(outcomes[i][t])))
        if (open.every((o) => o.length === 0)) break
        const fulls = neighbourTableFulls()
        const again = await pass(open, 'confirm')
        outcomes = outcomes.map((o, i) => confirmed(o, again[i]))
        if (neighbourTableFulls() === fulls) break
      }
      return outcomes.map(seenOf)
    },
  }
}
