// Address arithmetic on ip-num: the network a local address is on, as the routes planner asks for it.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { formatCidr, networkOf, parseAddress, parseCidr } from '../../lib/plugin/ip.ts'

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

test.run()
