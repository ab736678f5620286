// Builds the libcni driver (test/clients/libcni) offline with Debian's golang-go and
// golang-github-appc-cni-dev, and runs it the way a runtime's network code runs: inside the node's netns.
import { existsSync, mkdirSync, symlinkSync, copyFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { PLUGIN, ROOT, TMP, nsPath, sh } from './cluster.ts'

export const REF_PLUGINS = '/usr/lib/cni'
const GOCODE = '/usr/share/gocode'

/** The driver's path, or why it cannot be built here. Never silent: CI must have Go. */
export function buildDriver(): { driver?: string; why?: string } {
  if (sh(['which', 'go']).code !== 0) return { why: 'go is not installed (apt-get install golang-go golang-github-appc-cni-dev)' }
  if (!existsSync(join(GOCODE, 'src/github.com/containernetworking/cni/libcni'))) return { why: `libcni is not in ${GOCODE} (apt-get install golang-github-appc-cni-dev)` }
  const out = join(TMP, 'libcni-driver')
  const gopath = join(TMP, 'gopath')
  mkdirSync(gopath, { recursive: true })
  const r = sh(['env', 'GO111MODULE=off', `GOPATH=${gopath}:${GOCODE}`, `GOCACHE=${join(gopath, 'cache')}`, 'go', 'build', '-o', out, join(ROOT, 'test/clients/libcni/main.go')])
  if (r.code !== 0) throw new Error(`building the libcni driver failed: ${r.stderr}`)
  return { driver: out }
}

/** A CNI bin dir as a node has it: kube-cni (the bundle) beside the reference plugins. */
export function binDir(): string {
  const dir = join(TMP, 'cni-bin')
  if (existsSync(dir)) return dir
  mkdirSync(dir)
  copyFileSync(PLUGIN, join(dir, 'kube-cni'))
  sh(['chmod', '755', join(dir, 'kube-cni')])
  for (const p of ['portmap', 'tuning', 'loopback']) if (existsSync(join(REF_PLUGINS, p))) symlinkSync(join(REF_PLUGINS, p), join(dir, p))
  return dir
}

export function writeConflist(dir: string, list: object): string {
  mkdirSync(dir, { recursive: true })
  writeFileSync(join(dir, '10-kube-cni.conflist'), JSON.stringify(list, null, 2))
  return dir
}

export interface DriverCall {
  op: 'add' | 'check' | 'del'
  confDir: string
  name: string
  netns: string // a netns name, or '' for DEL without one
  id: string
  capArgs?: object
  args?: string
}

export function driverRun(driver: string, nodeNs: string, c: DriverCall): { code: number; json: any; raw: string } {
  const argv = [
    'nsenter', `--net=${nsPath(nodeNs)}`, driver, '-op', c.op, '-confdir', c.confDir, '-name', c.name,
    '-netns', c.netns ? nsPath(c.netns) : '', '-id', c.id, '-binpath', binDir(), '-cachedir', join(TMP, 'libcni-cache'),
    ...(c.capArgs ? ['-capargs', JSON.stringify(c.capArgs)] : []), ...(c.args ? ['-args', c.args] : []),
  ]
  const r = sh(argv)
  let json: any
  try {
    json = JSON.parse(r.stdout)
  } catch {
    json = undefined
  }
  return { code: r.code, json, raw: r.stdout + r.stderr }
}
