import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { CniError } from '../../lib/plugin/cni.ts'
import { renderConflist } from '../../lib/tools/conflist.ts'

const ONE = { subnets: ['10.200.1.0/24'], networks: ['10.200.0.0/16'] }
// What Debian's portmap 1.1.1 answers to VERSION.
const PORTMAP_1_1_1 = ['0.1.0', '0.2.0', '0.3.0', '0.3.1', '0.4.0', '1.0.0']
const render = (o: Parameters<typeof renderConflist>[0]) => JSON.parse(renderConflist(o))

test('kube-cni alone speaks 1.1.0: cniVersion stays 1.0.0 for old libcni, cniVersions offers 1.1.0', () => {
  const list = render(ONE)
  assert.is(list.cniVersion, '1.0.0')
  assert.equal(list.cniVersions, ['1.0.0', '1.1.0'])
  assert.equal(list.plugins, [{ type: 'kube-cni', network: '10.200.0.0/16', subnet: '10.200.1.0/24' }])
})

test('a chained portmap that speaks 1.1.0 keeps the offer', () => {
  const list = render({ ...ONE, portmap: { supportedVersions: [...PORTMAP_1_1_1, '1.1.0'] } })
  assert.equal(list.cniVersions, ['1.0.0', '1.1.0'])
  assert.equal(list.plugins.map((p: { type: string }) => p.type), ['kube-cni', 'portmap'])
})

test('a chained portmap without 1.1.0 (Debian 1.1.1), or one that did not answer, leaves the list at 1.0.0 only', () => {
  for (const supportedVersions of [PORTMAP_1_1_1, []]) {
    const list = render({ ...ONE, portmap: { supportedVersions } })
    assert.is(list.cniVersion, '1.0.0')
    assert.not.ok('cniVersions' in list, JSON.stringify(list))
    assert.equal(list.plugins[1], { type: 'portmap', capabilities: { portMappings: true }, snat: true })
  }
})

test('dual-stack uses the list form; extra fields go to the kube-cni plugin', () => {
  const list = render({ subnets: ['10.200.1.0/24', 'fd00:200:0:1::/64'], networks: ['10.200.0.0/16', 'fd00:200::/56'], extra: { mtu: 1450 } })
  assert.equal(list.plugins[0], { type: 'kube-cni', networks: ['10.200.0.0/16', 'fd00:200::/56'], subnets: ['10.200.1.0/24', 'fd00:200:0:1::/64'], mtu: 1450 })
})

test('a subnet outside the network is refused as the plugin would refuse it (error 7)', () => {
  try {
    renderConflist({ subnets: ['10.9.0.0/24'], networks: ['10.200.0.0/16'] })
  } catch (e) {
    assert.instance(e, CniError)
    assert.is((e as CniError).code, 7)
    assert.match((e as Error).message, /must lie inside the cluster range/)
    return
  }
  assert.unreachable('accepted a subnet outside the network')
})

test.run()
