// Running the kernel tools. Arguments always go as argv, never through a shell, so no input can become a
// command. zx's `$` is not used here because it starts a bash for every call (about 5 ms each); the lab,
// the tests and the bench run commands through zx in lib/tools/harness/, where that cost does not matter.
import { spawn } from 'node:child_process'
import { readFileSync, readdirSync, statSync } from 'node:fs'
import { CniError, Code } from './cni.ts'

export interface Output {
  code: number
  stdout: string
  stderr: string
}

/** The shell line a learner could type to do the same by hand; printed to stderr in explain mode. */
export interface Step {
  line: string // e.g. `ip link set veth1234abcd master cni0 up`
  why?: string // which step of the bash original this replaces
}

/** A child process, named so that a recycled pid cannot pass for it: the kernel's start time never repeats. */
export interface Proc {
  pid: number
  start: number // field 22 of /proc/<pid>/stat, clock ticks since boot
}

// KUBE_CNI_EXPLAIN=1 prints the commands, =summary one line per step: what and why.
export const explain = { enabled: ['1', 'summary'].includes(process.env.KUBE_CNI_EXPLAIN ?? ''), summary: process.env.KUBE_CNI_EXPLAIN === 'summary' }

/**
 * Prints steps as lines a root shell runs as they are (with summary, one comment line each: the step and why): each goes into the pod's netns (`netns`, a path) or
 * the netns the plugin runs in, and the comment goes on the first line, so a here-document still ends.
 */
export function explainSteps(steps: Step[], netns?: string): void {
  if (!explain.enabled) return
  const where = netns ? `nsenter --net=${netns} ` : ownNetns()
  for (const s of steps) {
    const [first, ...rest] = s.line.split('\n')
    if (explain.summary) {
      process.stderr.write(`  # ${first.replace(/ <<'EOF'$/, '')}${s.why ? ` (${s.why})` : ''}\n`)
      continue
    }
    process.stderr.write(`  ${where}${first}${s.why ? `\t# ${s.why}` : ''}\n${rest.map((l) => `${l}\n`).join('')}`)
  }
}

let own: string | undefined
/** `ip netns exec NAME ` when the plugin runs in a named netns (as a runtime on a lab node execs it), else '' (the root netns). */
function ownNetns(): string {
  if (own !== undefined) return own
  own = ''
  const self = statSync('/proc/self/ns/net')
  let names: string[] = []
  try {
    names = readdirSync('/run/netns')
  } catch {
    return own
  }
  const name = names.find((n) => {
    try {
      const st = statSync(`/run/netns/${n}`)
      return st.ino === self.ino && st.dev === self.dev
    } catch {
      return false
    }
  })
  own = name ? `ip netns exec ${name} ` : ''
  return own
}

/** Runs argv[0] with argv[1..], feeding input on stdin. Never throws for a non-zero exit: callers decide. */
export function run(argv: string[], input = '', onSpawn?: (proc: Proc) => void): Promise<Output> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] })
    // The child cannot have been reaped yet (that needs the event loop), so its /proc entry is there.
    const start = child.pid === undefined || !onSpawn ? undefined : startTime(child.pid)
    if (start !== undefined) onSpawn?.({ pid: child.pid!, start })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d))
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d))
    child.on('error', (e) => reject(spawnError(argv[0], e)))
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }))
    child.stdin.on('error', () => {}) // a tool that exits early closes its stdin; its exit code tells the story
    child.stdin.end(input)
  })
}

// The Debian package of each tool the plugin runs, for the message when one is missing.
export const PACKAGES: Record<string, string> = {
  ip: 'iproute2',
  nsenter: 'util-linux',
  flock: 'util-linux',
  iptables: 'iptables',
  'iptables-restore': 'iptables',
  ip6tables: 'iptables',
  'ip6tables-restore': 'iptables',
}

/** A tool that is not installed: no retry can help, so the routes agent stops on it instead of looping. */
export class MissingTool extends CniError {}

/** A tool that cannot be started: a CNI error naming it and its package, not `spawn ip ENOENT` with a stack. */
export function spawnError(tool: string, e: Error): CniError {
  const pkg = PACKAGES[tool]
  if ((e as NodeJS.ErrnoException).code === 'ENOENT')
    return new MissingTool(
      Code.Internal,
      `kube-cni needs ${tool}, and it is not in PATH=${process.env.PATH ?? ''}`,
      pkg ? `install the Debian package ${pkg} on the node (apt-get install ${pkg})` : `install ${tool} on the node`,
    )
  return new CniError(Code.Internal, `cannot run ${tool}: ${e.message}`)
}

/**
 * Kills the tools an ADD that was itself killed left running, and waits until they are dead: such an `ip`,
 * stuck or just slow, would otherwise create the veth after DEL has removed everything. Only processes that
 * are still the ones we started (same pid AND start time) and still `ip` or `nsenter` are touched; the list
 * comes from a file, so it and each entry are checked for shape too.
 */
export async function killLeftovers(procs: unknown): Promise<void> {
  const ours = (Array.isArray(procs) ? procs : []).filter((p): p is Proc => isProc(p) && isOurTool(p.pid, p.start))
  for (const { pid } of ours) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // it exited on its own in between
    }
  }
  // Not node:timers/promises: the plugin loads exactly the builtins the bench's floor loads.
  for (const p of ours) while (isAlive(p)) await new Promise((r) => setTimeout(r, 2))
}

/** The shape of a Proc, for one read from a file that may have been tampered with. */
export function isProc(p: unknown): p is Proc {
  const { pid, start } = (p ?? {}) as Partial<Proc>
  return Number.isSafeInteger(pid) && pid! > 1 && Number.isSafeInteger(start)
}

/** /proc/<pid>/stat split so that fields[n] is field n+1 of proc(5); undefined when there is no such process. */
function stat(pid: number | 'self'): string[] | undefined {
  let text: string
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return undefined
  }
  // Field 2 is the command in parentheses and may itself contain ") ": split after the last one.
  const close = text.lastIndexOf(')')
  return [String(pid), text.slice(text.indexOf('(') + 1, close), ...text.slice(close + 2).split(' ')]
}

/** Field 22 of proc(5)'s stat, clock ticks since boot: when the process started, which a recycled pid does not share. */
export function startTime(pid: number | 'self'): number | undefined {
  const fields = stat(pid)
  return fields ? Number(fields[21]) : undefined
}

function isOurTool(pid: number, start: number): boolean {
  const fields = stat(pid)
  return fields !== undefined && Number(fields[21]) === start && (fields[1] === 'ip' || fields[1] === 'nsenter')
}

/** A zombie has done all it will ever do: its new parent (init, since the ADD is dead) reaps it when it likes. */
export function isAlive(p: Proc): boolean {
  const fields = stat(p.pid)
  return fields !== undefined && Number(fields[21]) === p.start && fields[2] !== 'Z'
}
