// The lab's confirm-before-report rule: a probe that timed out under load is asked again before it becomes a ✗.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { confirmed, seenOf, settled } from '../../lib/tools/harness/echo.ts'

test('an answer, a reset and no route settle a target; a timeout, a host unreachable or nothing yet do not', () => {
  assert.ok(settled({ seen: '10.200.1.2' }))
  assert.ok(settled({ failed: 'ECONNREFUSED' }))
  assert.ok(settled({ failed: 'ENETUNREACH' }))
  for (const failed of ['ETIMEDOUT', 'EHOSTUNREACH', 'ECONNRESET', 'no answer']) assert.not.ok(settled({ failed }), failed)
  assert.not.ok(settled(undefined))
})

test('a target that timed out in the first pass is reported as the confirming pass found it', () => {
  const first = { a: { failed: 'ETIMEDOUT' }, b: { failed: 'EHOSTUNREACH' }, c: { failed: 'ETIMEDOUT' } }
  const again = { a: { seen: '10.200.1.2' }, b: { seen: '192.0.2.11' }, c: { failed: 'ETIMEDOUT' } }
  assert.equal(seenOf(confirmed(first, again)), { a: '10.200.1.2', b: '192.0.2.11', c: null })
})

test('a settled first outcome stands, and a target the confirming pass did not ask about stays unreachable', () => {
  const first = { a: { seen: '10.200.1.2' }, b: { failed: 'ECONNREFUSED' }, c: { failed: 'ETIMEDOUT' } }
  assert.equal(seenOf(confirmed(first, { b: { seen: 'never asked' } })), { a: '10.200.1.2', b: null, c: null })
})

test.run()
