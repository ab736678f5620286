// The shipped file's loader (deploy/build.ts withCodeCache): V8's code cache next to the bundle, used only when
// it is this bundle's and only we could have written it; without a usable cache the plugin runs all the same.
import { spawnSync } from 'node:child_process'
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { withCodeCache } from '../../deploy/build.ts'

let dir = ''
test.before.each(() => {
  dir = mkdtempSync(join(tmpdir(), 'kube-cni-codecache-'))
})
test.after.each(() => rmSync(dir, { recursive: true, force: true }))

// Two bundles of the same length: V8 checks a cache against little more than the source's length. Their code
// has the characters the string that carries it must escape.
function bundle(name: string, word: 'good' | 'evil'): string {
  const path = join(dir, name)
  writeFileSync(path, withCodeCache(`"use strict";\nprocess.stdout.write(${JSON.stringify(word)} + '\\n\\r'.trim());`), { mode: 0o755 })
  return path
}

function run(path: string, command = 'ADD'): string {
  const r = spawnSync(process.execPath, [path], { env: { PATH: process.env.PATH, CNI_COMMAND: command }, encoding: 'utf8' })
  assert.is(r.status, 0, r.stderr)
  return r.stdout
}

const payload = (cache: string) => {
  const data = readFileSync(cache)
  return data.subarray(data.indexOf('\n') + 1)
}
const keyOf = (cache: string) => readFileSync(cache, 'latin1').split('\n')[0]

test('the first ADD writes the cache, readable by root alone; later runs use it as it is', () => {
  const good = bundle('kube-cni', 'good')
  assert.is(run(good, 'VERSION'), 'good')
  assert.equal(readdirSync(dir), ['kube-cni'], 'only an ADD writes the cache')
  assert.is(run(good), 'good')
  const st = statSync(`${good}.cache`)
  assert.is(st.mode & 0o777, 0o600)
  assert.match(keyOf(`${good}.cache`), /^kube-cni code cache [0-9a-f]{64}$/)
  assert.is(run(good), 'good')
  assert.is(statSync(`${good}.cache`).ino, st.ino, 'an accepted cache is not written again')
  assert.equal(readdirSync(dir).sort(), ['kube-cni', 'kube-cni.cache'])
})

test('a cache of another bundle is not used, and the next ADD replaces it', () => {
  const good = bundle('kube-cni', 'good')
  const evil = bundle('other', 'evil')
  run(evil)
  writeFileSync(`${good}.cache`, readFileSync(`${evil}.cache`), { mode: 0o600 })
  assert.is(run(good), 'good')
  assert.is.not(keyOf(`${good}.cache`), keyOf(`${evil}.cache`))
})

test('a cache someone else could have written is never used, even under the right name', () => {
  const good = bundle('kube-cni', 'good')
  const evil = bundle('other', 'evil')
  run(good)
  run(evil)
  const planted = Buffer.concat([Buffer.from(`${keyOf(`${good}.cache`)}\n`), payload(`${evil}.cache`)])
  writeFileSync(`${good}.cache`, planted)
  chmodSync(`${good}.cache`, 0o666)
  assert.is(run(good), 'good')
  assert.is(statSync(`${good}.cache`).mode & 0o777, 0o600, 'replaced by our own')
  assert.not.equal(readFileSync(`${good}.cache`), planted)
})

test('when the cache cannot be written the plugin runs all the same and leaves nothing behind', () => {
  const good = bundle('kube-cni', 'good')
  mkdirSync(`${good}.cache`)
  assert.is(run(good), 'good')
  assert.is(run(good), 'good')
  assert.equal(readdirSync(dir).sort(), ['kube-cni', 'kube-cni.cache'])
  assert.ok(statSync(`${good}.cache`).isDirectory())
})

test.run()
