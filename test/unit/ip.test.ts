// Address arithmetic on ip-num: the network a local address is on, as the routes planner asks for it.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { formatAddress, formatCidr, networkOf, parseAddress, parseCidr } from '../../lib/plugin/ip.ts'

const on = (address: string, prefix: number) => {
  const a = parseAddress(address)!
  return networkOf(a.family, a.value, prefix)
}

test('networkOf clears the host bits and spans the whole network, in both families and at the edges', () => {
  assert.is(formatCidr(on('192.0.2.10', 24)), '192.0.2.0/24')
  assert.is(on('192.0.2.10', 24).last, parseAddress('192.0.2.255')!.value)
  assert.is(formatCidr(on('192.0.2.10', 32)), '192.0.2.10/32')
  assert.is(on('192.0.2.10', 0).last, parseAddress('255.255.255.255')!.value)
  assert.is(formatCidr(on('2001:db8:a::3', 64)), '2001:db8:a::/64')
  assert.is(on('2001:db8:a::3', 64).last, parseAddress('2001:db8:a:0:ffff:ffff:ffff:ffff')!.value)
  assert.is(formatCidr(on('2001:db8:a::3', 128)), '2001:db8:a::3/128')
})

test('parseCidr takes CIDRs of both families, clears host bits, and refuses everything else', () => {
  assert.equal(parseCidr('10.200.1.7/24'), { family: 4, network: parseAddress('10.200.1.0')!.value, last: parseAddress('10.200.1.255')!.value, prefix: 24 })
  assert.is(formatCidr(parseCidr('0.0.0.0/0')!), '0.0.0.0/0')
  assert.is(parseCidr('fd00:10:200:1::/64')!.last, parseAddress('fd00:10:200:1:ffff:ffff:ffff:ffff')!.value)
  assert.is(formatCidr(parseCidr('::1/128')!), '::1/128')
  for (const bad of ['10.0.0.0/33', '::/129', '10.0.0.0', '10.0.0/8', '10.0.0.256/8', '10.0.0.0/8/8', 'fd00::1::2/64', ' 10.0.0.0/8', '10.0.0.0/-1', 'x/8', ''])
    assert.is(parseCidr(bad), undefined, bad)
  assert.is(parseCidr(24 as unknown as string), undefined)
})

test('addresses round-trip in both families, in the form ip prints; leading zeros and octets over 255 are refused', () => {
  for (const text of ['0.0.0.0', '255.255.255.255', '10.200.1.7', '::', '::1', 'fd00:10:200:1::7', '2001:db8::ffff:0:1'])
    assert.is(formatAddress(parseAddress(text)!.family, parseAddress(text)!.value), text)
  assert.is(parseAddress('1.2.3.4')!.value, 0x01020304n)
  assert.is(formatAddress(6, parseAddress('fd00:0:0:0:0:0:0:5')!.value), 'fd00::5')
  for (const bad of ['010.0.0.1', '1.2.3.256', '1.2.3', '1.2.3.4.5', '1.2.3.4 ', '-1.2.3.4', 'fd00::1::2', '12345::1', ''])
    assert.is(parseAddress(bad), undefined, bad)
})

test.run()
