// The TCP echo the lab and the e2e tests check connectivity with: the server answers each connection with
// the address it saw the connection come from, so a probe tells both "reached" and "NAT or not". Both ends
// run as `kube-cni lab echo-server|echo-probe` inside a netns, so the shipped file carries them too.
import { once } from 'node:events'
import { connect, createServer } from 'node:net'
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

/** The address the server at host saw us as, or null when it cannot be reached within 1.5 s. */
function seenBy(host: string, port: number): Promise<string | null> {
  return new Promise((done) => {
    const s = connect({ host, port, timeout: 1500 })
    let seen = ''
    s.setEncoding('utf8').on('data', (d) => (seen += d))
    s.on('end', () => done(seen.trim() || null))
    s.on('timeout', () => (s.destroy(), done(null)))
    s.on('error', () => done(null))
  })
}

/**
 * Each target's answer, in turn. A target gets three tries: the first packet to a new neighbour can be lost
 * while IPv6 neighbour discovery settles, and the question is which address the server sees, not how fast
 * the first SYN gets through.
 */
export async function reach(port: number, targets: string[]): Promise<Record<string, string | null>> {
  const out: Record<string, string | null> = {}
  for (const host of targets) {
    out[host] = null
    for (let i = 0; i < 3 && out[host] === null; i++) {
      if (i) await sleep(300)
      out[host] = await seenBy(host, port)
    }
  }
  return out
}

/** `kube-cni lab echo-server PORT` and `kube-cni lab echo-probe PORT TARGET...`. */
export async function echoCommand(verb: string, [port, ...targets]: string[]): Promise<number> {
  if (verb === 'echo-server') await serve(Number(port))
  else process.stdout.write(JSON.stringify(await reach(Number(port), targets)))
  return 0
}

/** The echo, run by program (kube-cni's argv: the bundle, or kube-cni.ts under tsx) inside netns. */
export function echoWith(program: string[]) {
  return {
    /** Starts a server in each netns and returns once all listen; they live until their netns is deleted. */
    async startEchoServers(namespaces: string[], port = ECHO_PORT): Promise<void> {
      await Promise.all(
        namespaces.map(async (ns) => {
          const p = $({ quiet: true, nothrow: true })`${inNetns(ns, [...program, 'lab', 'echo-server', String(port)])}`.stdio('ignore', 'pipe', 'pipe')
          const failed = p.then((o) => Promise.reject(new Error(`the echo server in ${ns} did not start: ${o.stderr}`)))
          await Promise.race([once(p.stdout, 'data'), failed])
          failed.catch(() => {}) // it exits when its netns is deleted, long after this
          p.stdout.destroy()
          p.stderr.destroy()
          p.child?.unref()
        }),
      )
    },
    async probe(ns: string, targets: string[], port = ECHO_PORT): Promise<Record<string, string | null>> {
      const out = await $({ quiet: true })`${inNetns(ns, [...program, 'lab', 'echo-probe', String(port), ...targets])}`
      return JSON.parse(out.stdout)
    },
  }
}
