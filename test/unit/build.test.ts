// The build's one source transform: ip-num's eager constants become lazy getters, and ip-num still works.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { build } from 'esbuild'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { lazyConstants, lazyIpNum } from '../../deploy/build.ts'

const IPNUMBER = require.resolve('ip-num/dist/src/IPNumber.js')

test('every eager ip-num constant becomes a getter', () => {
  const { code, count } = lazyConstants(readFileSync(IPNUMBER, 'utf8'))
  assert.ok(count >= 10, `only ${count} constants found`)
  assert.not.match(code, /^IPv[46]\.[A-Z_]+ = /m)
})

test('with lazy constants ip-num gives the same answers, and builds each constant once', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kube-cni-build-'))
  try {
    const out = join(dir, 'ipnum.cjs')
    await build({
      stdin: { contents: 'module.exports = require("ip-num")', resolveDir: join(__dirname, '..', '..'), loader: 'js' },
      bundle: true,
      platform: 'node',
      format: 'cjs',
      outfile: out,
      logLevel: 'error',
      plugins: [lazyIpNum],
    })
    const lazy = require(out)
    const eager = require('ip-num')
    assert.equal(lazy.IPv4.PRIVATE_RANGES.map((r: any) => r.toCidrString()), eager.IPv4.PRIVATE_RANGES.map((r: any) => r.toCidrString()))
    assert.is(lazy.IPv4.PRIVATE_RANGES, lazy.IPv4.PRIVATE_RANGES, 'built once, then a plain value')
    assert.is(lazy.IPv6.LINK_LOCAL_RANGE.toCidrString(), eager.IPv6.LINK_LOCAL_RANGE.toCidrString())
    assert.is(lazy.IPv4CidrRange.fromCidr('10.200.1.0/24').getLast().toString(), '10.200.1.255')
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test.run()
