// `npm test`: the type check, then every suite, each in its own uvu process, then one closing line
// "N passed, N failed" that covers them all (CI reads it). The end-to-end suites need root, for network
// namespaces.
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'

const ROOT = join(__dirname, '..')
const SUITES = ['unit', 'e2e']

if (process.getuid?.() !== 0) {
  console.error('kube-cni tests create network namespaces: run them as root (sudo npm test)')
  process.exit(1)
}

let passed = 0
let failed = 0

console.log('=== typecheck (tsc --noEmit)')
const tsc = spawnSync(join(ROOT, 'node_modules', '.bin', 'tsc'), ['-p', join(ROOT, 'tsconfig.json')], { encoding: 'utf8' })
process.stdout.write(tsc.stdout || 'no type errors\n')
if (tsc.status === 0) passed++
else failed++

for (const suite of process.argv.slice(2).length ? process.argv.slice(2) : SUITES) {
  console.log(`\n=== ${suite}`)
  const r = spawnSync(join(ROOT, 'node_modules', '.bin', 'uvu'), ['-r', 'tsx/cjs', join('test', suite), '\\.test\\.ts$'], {
    cwd: ROOT,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  process.stdout.write(r.stdout)
  const total = Number(/Total:\s+(\d+)/.exec(r.stdout)?.[1] ?? 0)
  const ok = Number(/Passed:\s+(\d+)/.exec(r.stdout)?.[1] ?? 0)
  // A suite that crashed before uvu could count still counts as a failure.
  const bad = total - ok || (r.status !== 0 ? 1 : 0)
  passed += ok
  failed += bad
}
console.log(`\n${passed} passed, ${failed} failed`)
process.exitCode = failed ? 1 : 0
