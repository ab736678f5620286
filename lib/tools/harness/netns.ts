// Network namespaces for the lab, the e2e tests and the bench: made, entered and removed by name. Commands
// go through zx's `$`, synchronously: a few milliseconds of bash per call do not matter here, and an exit
// handler (the tests' cleanup) can still use them. The plugin's own ADD/DEL run their tools with
// lib/plugin/exec.ts instead, without a shell.
import { $ } from 'zx/core'
import { type Output, explain } from '../../plugin/exec.ts'

export const nsPath = (name: string) => `/var/run/netns/${name}`

/** Runs argv, feeding input on stdin. Never throws for a non-zero exit: callers decide. */
export function sh(argv: string[], input = ''): Output {
  if (explain.enabled && !explain.summary) process.stderr.write(`  ${argv.join(' ')}\n`)
  const r = $({ sync: true, quiet: true, nothrow: true, input })`${argv}`
  return { code: r.exitCode ?? 1, stdout: r.stdout, stderr: r.stderr }
}

/** Like sh, but throws when the command fails. */
export function must(argv: string[], input = ''): string {
  const r = sh(argv, input)
  if (r.code !== 0) throw new Error(`${argv.join(' ')} failed: ${r.stderr}`)
  return r.stdout
}

/** argv run inside the netns (only its network namespace is entered: files and /sys stay the caller's). */
export const inNetns = (ns: string, argv: string[]) => ['nsenter', `--net=${nsPath(ns)}`, ...argv]

/** A new netns with its loopback up, as every pod and node has. */
export function addNetns(name: string): void {
  must(['ip', 'netns', 'add', name])
  must(['ip', '-n', name, 'link', 'set', 'lo', 'up'])
}

/** Ends the processes inside (echo servers would outlive the netns's name), then removes it. */
export function delNetns(name: string): void {
  for (const pid of sh(['ip', 'netns', 'pids', name]).stdout.split('\n').filter(Boolean)) {
    try {
      process.kill(Number(pid), 'SIGKILL')
    } catch {
      // already gone
    }
  }
  sh(['ip', 'netns', 'del', name])
}

/** The netns whose names start with prefix: only ever our own, never the machine's whole list. */
export function netnsWithPrefix(prefix: string): string[] {
  return sh(['ip', 'netns', 'list'])
    .stdout.split('\n')
    .map((l) => l.split(' ')[0])
    .filter((n) => n.startsWith(prefix))
}

/** `ip -j ...` inside a netns, parsed. */
export function ipj(ns: string, ...args: string[]): any {
  return JSON.parse(must(['ip', '-n', ns, '-j', ...args]) || '[]')
}
