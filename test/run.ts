// `npm test`: the type check, then every suite, each in its own uvu process, then one closing line
// "N passed, N failed" that covers them all (CI reads it). Named suites (`tsx test/run.ts e2e`) run without
// the type check: `npm run test:unit` is the unit suite alone, in seconds, as any user. Only the end-to-end
// suites need root, for network namespaces.
//
// Each suite's output is passed through as it comes, so a long e2e suite shows its progress, and counted at
// the end. Colour codes only go to a terminal: uvu forces them on unless told --no-color.
import { spawn } from 'node:child_process'
import { join } from 'node:path'

const ROOT = join(__dirname, '..')
const SUITES = ['unit', 'e2e']
const BIN = join(ROOT, 'node_modules', '.bin')

const named = process.argv.slice(2)
const suites = named.length ? named : SUITES
if (suites.some((s) => s !== 'unit') && process.getuid?.() !== 0) {
  console.error('kube-cni end-to-end tests create network namespaces: run them as root (sudo npm test), or run `npm run test:unit` as any user')
  process.exit(1)
}

const tty = Boolean(process.stdout.isTTY)
const env = tty ? process.env : { ...process.env, FORCE_COLOR: '0', NO_COLOR: '1' }

/** Runs a command with its stdout shown as it comes and also kept, for the counts; stderr goes straight through. */
function stream(cmd: string, args: string[]): Promise<{ code: number | null; stdout: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'inherit'] })
    let stdout = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d
      process.stdout.write(d)
    })
    child.on('error', (e) => {
      console.error(`cannot run ${cmd}: ${e.message}`)
      resolve({ code: null, stdout })
    })
    child.on('close', (code) => resolve({ code, stdout }))
  })
}

async function main(): Promise<void> {
  let passed = 0
  let failed = 0

  if (!named.length) {
    console.log('=== typecheck (tsc --noEmit)')
    const tsc = await stream(join(BIN, 'tsc'), ['-p', join(ROOT, 'tsconfig.json'), ...(tty ? ['--pretty'] : [])])
    if (!tsc.stdout) console.log('no type errors')
    if (tsc.code === 0) passed++
    else failed++
  }

  for (const suite of suites) {
    console.log(`\n=== ${suite}`)
    const r = await stream(join(BIN, 'uvu'), ['-r', 'tsx/cjs', ...(tty ? [] : ['--no-color']), join('test', suite), '\\.test\\.ts$'])
    // On a terminal the counts are wrapped in colour codes.
    const text = r.stdout.replace(/\x1b\[[0-9;]*m/g, '')
    const total = Number(/Total:\s+(\d+)/.exec(text)?.[1] ?? 0)
    const ok = Number(/Passed:\s+(\d+)/.exec(text)?.[1] ?? 0)
    // A suite that crashed before uvu could count still counts as a failure.
    const bad = total - ok || (r.code !== 0 ? 1 : 0)
    passed += ok
    failed += bad
  }
  console.log(`\n${passed} passed, ${failed} failed`)
  process.exitCode = failed ? 1 : 0
}

main()
