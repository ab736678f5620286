// The lab's command line: usage errors, --help on every verb, and a demo that is interrupted.
import { spawnSync } from 'node:child_process'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { PLUGIN } from '../helpers/cluster.ts'

const lab = (...args: string[]) => spawnSync('node', [PLUGIN, 'lab', ...args], { encoding: 'utf8' })

const OPTIONS = ['--nodes', '--pods', '--backend', '--dual-stack', '--keep', '--explain', '--node', '--help']

for (const verb of ['', 'demo', 'up', 'down', 'status', 'check', 'scenarios', 'break']) {
  test(`lab ${verb} --help prints the usage with every option and exits 0`, () => {
    const r = lab(...(verb ? [verb] : []), '--help')
    assert.is(r.status, 0, r.stderr)
    for (const option of OPTIONS) assert.ok(r.stdout.includes(option), `${option} in\n${r.stdout}`)
    assert.is(r.stderr, '')
  })
}

for (const args of [['--nodse', '3'], ['demo', 'extra'], ['status', 'now'], ['dmeo'], ['--nodes', 'three'], ['--pods', '0'], ['--backend', 'flannel'], ['--explain=loud'], ['--keep=yes']]) {
  test(`lab ${args.join(' ')}: a usage error (exit 2, what is wrong and the usage), never ignored`, () => {
    const r = lab(...args)
    assert.is(r.status, 2, r.stdout + r.stderr)
    assert.match(r.stderr, /^kube-cni lab: /)
    assert.match(r.stderr, /Options:/)
    assert.not.match(r.stderr, /\n\s+at /, 'no stack trace')
    assert.is(r.stdout, '')
  })
}

test('kube-cni --help names every lab option', () => {
  const r = spawnSync('node', [PLUGIN, '--help'], { encoding: 'utf8' })
  for (const option of ['--nodes', '--pods', '--backend', '--dual-stack', '--keep', '--explain']) assert.ok(r.stdout.includes(option), option)
})

test.run()
