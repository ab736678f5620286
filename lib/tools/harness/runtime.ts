// Calling the plugin the way a container runtime does: exec'd directly (no shell: the runtime does not
// use one, the bench times the plugin alone, and a test that kills the ADD must kill the plugin itself),
// a clean environment of CNI_* variables, the netconf on stdin, the result on stdout.
import { spawn } from 'node:child_process'
import { inNetns } from './netns.ts'

const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

export interface Call {
  command: string
  containerId?: string
  netns?: string // a path, as runtimes pass it
  ifname?: string
  args?: string // CNI_ARGS
  env?: Record<string, string> // more variables, or overrides (PATH, CNI_PATH)
}

export interface PluginResult {
  code: number
  json: any // stdout parsed, when it is JSON
  stdout: string
  stderr: string
  ms: number // from exec to exit
}

export function cniEnv(call: Call): Record<string, string> {
  return {
    PATH,
    CNI_COMMAND: call.command,
    CNI_CONTAINERID: call.containerId ?? '',
    CNI_NETNS: call.netns ?? '',
    CNI_IFNAME: call.ifname ?? 'eth0',
    CNI_PATH: '/opt/cni/bin',
    ...(call.args ? { CNI_ARGS: call.args } : {}),
    ...call.env,
  }
}

/**
 * Runs plugin (an argv) with call's environment and stdin, inside the netns `from` when given (a runtime
 * execs plugins in the node's netns). nsenter enters only the network namespace, as a runtime on that node
 * would be, and execs in place, so `pid` and `kill` are the plugin's.
 */
export function callPlugin(plugin: string[], call: Call, stdin: string, from?: string): Promise<PluginResult> & { pid?: number; kill: () => void } {
  const argv = from ? inNetns(from, plugin) : plugin
  const t0 = process.hrtime.bigint()
  const child = spawn(argv[0], argv.slice(1), { env: cniEnv(call), stdio: ['pipe', 'pipe', 'pipe'] })
  const done = new Promise<PluginResult>((resolve, reject) => {
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d))
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code) => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6
      let json: any
      try {
        json = stdout.trim() ? JSON.parse(stdout) : undefined
      } catch {
        json = undefined
      }
      resolve({ code: code ?? 1, json, stdout, stderr, ms })
    })
    child.stdin.on('error', () => {}) // a plugin that exits early closes its stdin; its exit code tells the story
    child.stdin.end(stdin)
  })
  return Object.assign(done, { pid: child.pid, kill: () => child.kill('SIGKILL') })
}
