// Running the kernel tools. Arguments always go as argv, never through a shell, so no input can become a
// command. zx's `$` is not used here because it starts a bash for every call (about 5 ms each); the lab,
// tests and scripts use zx where that cost does not matter.
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
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

export const explain = { enabled: process.env.KUBE_CNI_EXPLAIN === '1' }

export function explainSteps(steps: Step[]): void {
  if (!explain.enabled) return
  for (const s of steps) process.stderr.write(`  ${s.line}${s.why ? `\t# ${s.why}` : ''}\n`)
}

/** Runs argv[0] with argv[1..], feeding input on stdin. Never throws for a non-zero exit: callers decide. */
export function run(argv: string[], input = '', onSpawn?: (pid: number) => void): Promise<Output> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] })
    if (child.pid !== undefined) onSpawn?.(child.pid)
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
const PACKAGES: Record<string, string> = {
  ip: 'iproute2',
  nsenter: 'util-linux',
  flock: 'util-linux',
  iptables: 'iptables',
  'iptables-restore': 'iptables',
  ip6tables: 'iptables',
  'ip6tables-restore': 'iptables',
}

/** A tool that cannot be started: a CNI error naming it and its package, not `spawn ip ENOENT` with a stack. */
export function spawnError(tool: string, e: Error): CniError {
  const pkg = PACKAGES[tool]
  if ((e as NodeJS.ErrnoException).code === 'ENOENT')
    return new CniError(
      Code.Internal,
      `kube-cni needs ${tool}, and it is not in PATH=${process.env.PATH ?? ''}`,
      pkg ? `install the Debian package ${pkg} on the node (apt-get install ${pkg})` : `install ${tool} on the node`,
    )
  return new CniError(Code.Internal, `cannot run ${tool}: ${e.message}`)
}

/**
 * Waits until none of these pids is still an `ip` or `nsenter` we started (a plugin killed by SIGKILL
 * leaves its children running). The name check keeps a recycled pid from holding us up.
 */
export async function waitForExit(pids: number[], timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (const pid of pids) {
    while (Date.now() < deadline && isOurTool(pid)) await new Promise((r) => setTimeout(r, 5))
  }
}

function isOurTool(pid: number): boolean {
  try {
    const comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim()
    return comm === 'ip' || comm === 'nsenter'
  } catch {
    return false
  }
}
