import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { configureLog, escapeControl, log } from '../../lib/plugin/log.ts'

test('escapeControl: newlines, CR, tab, ESC, DEL, C1 and U+2028/2029 become visible escapes', () => {
  assert.is(escapeControl('a\nb\rc\td'), 'a\\nb\\rc\\td')
  assert.is(escapeControl('\x1b[2J\x00\x7f\x85'), '\\x1b[2J\\x00\\x7f\\x85')
  assert.is(escapeControl('x\u2028y\u2029z'), 'x\\u2028y\\u2029z')
  assert.is(escapeControl('pod=default/web-0 10.200.1.5/24 fd00::5 ümlaut'), 'pod=default/web-0 10.200.1.5/24 fd00::5 ümlaut')
})

test('a message with a forged line in it stays one line of the log file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kube-cni-log-'))
  const file = join(dir, 'kube-cni.log')
  const stderrWrite = process.stderr.write
  process.stderr.write = () => true
  try {
    configureLog({ file, level: 'info' })
    log.info('ADD c1/eth0 pod=default/x\n2020-01-01T00:00:00.000Z INFO [1] ADD forged/eth0: ok')
    log.error('second\r\nline')
  } finally {
    process.stderr.write = stderrWrite
    configureLog({ file: '' })
  }
  const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean)
  rmSync(dir, { recursive: true, force: true })
  assert.is(lines.length, 2)
  assert.ok(lines[0].endsWith('pod=default/x\\n2020-01-01T00:00:00.000Z INFO [1] ADD forged/eth0: ok'), lines[0])
  assert.ok(lines[1].endsWith('second\\r\\nline'), lines[1])
})

test.run()
