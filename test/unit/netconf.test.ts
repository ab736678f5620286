import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { CniError } from '../../lib/plugin/cni.ts'
import { formatAddress, formatCidr } from '../../lib/plugin/ip.ts'
import { askedVersion, parseNetConf } from '../../lib/plugin/netconf.ts'

const SEED = { cniVersion: '0.3.0', name: 'k8s-pod-network', type: 'kube-cni', network: '10.200.0.0/16', subnet: '10.200.1.0/24' }
const parse = (extra: Record<string, unknown>) => parseNetConf(JSON.stringify({ ...SEED, ...extra }))

function rejects(extra: Record<string, unknown>, code: number, mentions: string[]) {
  try {
    parse(extra)
  } catch (e) {
    assert.instance(e, CniError)
    assert.is((e as CniError).code, code)
    for (const m of mentions) assert.ok((e as Error).message.includes(m), `"${(e as Error).message}" should mention ${m}`)
    return
  }
  assert.unreachable(`accepted ${JSON.stringify(extra)}`)
}

test('the seed config works as it is, with the documented defaults', () => {
  const c = parseNetConf(JSON.stringify(SEED))
  assert.is(c.bridge, 'cni0')
  assert.is(c.dataDir, '/run/kube-cni/ipam')
  assert.is(c.logFile, '/var/log/kube-cni.log')
  assert.is(c.hairpinMode, true)
  assert.is(c.ipMasq, true)
  assert.is(c.mtu, undefined)
  assert.is(c.pools.length, 1)
  const [p] = c.pools
  assert.is(formatCidr(p.subnet), '10.200.1.0/24')
  assert.is(formatAddress(4, p.gateway), '10.200.1.1')
  assert.is(formatAddress(4, p.firstHost), '10.200.1.1')
  assert.is(formatAddress(4, p.lastHost), '10.200.1.254') // the broadcast is never a pod's
})

test('runtime keys are accepted and unknown keys ignored', () => {
  const c = parse({ prevResult: { ips: [] }, runtimeConfig: { portMappings: [] }, args: {}, 'cni.dev/valid-attachments': [], whatever: 1 })
  assert.equal(c.prevResult, { interfaces: [], ips: [] })
})

test('GC\'s valid attachments: either key; an absent, null or malformed one fails only when GC reads it (code 7)', () => {
  assert.equal([...parse({ 'cni.dev/valid-attachments': [{ containerID: 'a', ifname: 'eth0' }] }).validAttachments()], ['a:eth0'])
  assert.equal([...parse({ 'cni.dev/attachments': [{ containerID: 'b', ifname: 'net1' }] }).validAttachments()], ['b:net1'])
  assert.equal([...parse({ 'cni.dev/valid-attachments': [] }).validAttachments()], [])
  for (const bad of [undefined, null, {}, [{ containerID: 'a' }], [null], [{ containerID: '', ifname: 'eth0' }]]) {
    const c = parse({ 'cni.dev/valid-attachments': bad })
    try {
      c.validAttachments()
      assert.unreachable(JSON.stringify(bad))
    } catch (e) {
      assert.is((e as CniError).code, 7, (e as Error).message)
    }
  }
})

test('prevResult: addresses as ip prints them, interfaces with name and, where given, mac and sandbox', () => {
  const prevResult = {
    cniVersion: '1.0.0',
    interfaces: [{ name: 'cni0', mac: '0a:58:0a:c8:01:01' }, { name: 'eth0', sandbox: '/var/run/netns/x' }],
    ips: [{ address: 'fd00:0::5/64', gateway: 'fd00::1', interface: 1 }],
  }
  assert.equal(parse({ prevResult }).prevResult, {
    interfaces: [
      { name: 'cni0', mac: '0a:58:0a:c8:01:01', sandbox: undefined },
      { name: 'eth0', mac: undefined, sandbox: '/var/run/netns/x' },
    ],
    ips: [{ address: 'fd00::5/64' }],
  })
})

test('dual-stack: one gateway per family, as a list', () => {
  const c = parse({ subnets: ['10.200.1.0/24', 'fd00:200:0:1::/64'], networks: ['10.200.0.0/16', 'fd00:200::/56'], gateway: ['fd00:200:0:1::fe', '10.200.1.254'] })
  assert.equal(c.pools.map((p) => formatAddress(p.family, p.gateway)), ['10.200.1.254', 'fd00:200:0:1::fe'])
})

test('dual-stack with mtu 1280 is accepted', () => {
  assert.is(parse({ subnets: ['10.200.1.0/24', 'fd00:200:0:1::/64'], networks: ['10.200.0.0/16', 'fd00:200::/56'], mtu: 1280 }).mtu, 1280)
})

test('a gateway can be chosen inside the subnet', () => {
  assert.is(formatAddress(4, parse({ gateway: '10.200.1.254' }).pools[0].gateway), '10.200.1.254')
})

test('host bits in the subnet are cleared', () => {
  assert.is(formatCidr(parse({ subnet: '10.200.1.77/24' }).pools[0].subnet), '10.200.1.0/24')
})

test('dual-stack: subnets and networks, one per family, in either order', () => {
  const c = parse({ subnet: undefined, network: undefined, subnets: ['fd00:200:0:1::/64', '10.200.1.0/24'], networks: ['10.200.0.0/16', 'fd00:200::/56'] })
  assert.equal(c.pools.map((p) => p.family), [4, 6])
  assert.is(formatAddress(6, c.pools[1].gateway), 'fd00:200:0:1::1')
})

test('rejected: an unsupported cniVersion (code 1)', () => rejects({ cniVersion: '0.2.0' }, 1, ['0.2.0']))
test('rejected: a missing cniVersion (code 1)', () => rejects({ cniVersion: undefined }, 1, ['undefined']))
test('rejected: a name that climbs out of dataDir (code 7)', () => rejects({ name: '../../etc' }, 7, ['"name"', '../../etc']))
test('rejected: a missing name (code 7)', () => rejects({ name: undefined }, 7, ['"name"']))
test('rejected: a bridge name of 16 characters (code 7)', () => rejects({ bridge: 'b123456789012345' }, 7, ['"bridge"', 'b123456789012345']))
test('rejected: a bridge name with a shell metacharacter (code 7)', () => rejects({ bridge: 'br;reboot' }, 7, ['"bridge"']))
test('rejected: mtu below 68 (code 7)', () => rejects({ mtu: 67 }, 7, ['"mtu"', '67']))
test('rejected: mtu above 65535 (code 7)', () => rejects({ mtu: 65536 }, 7, ['"mtu"', '65536']))
test('rejected: mtu that is not an integer (code 7)', () => rejects({ mtu: '1500' }, 7, ['"mtu"']))
test('rejected: a subnet that is not a CIDR (code 7)', () => rejects({ subnet: '10.200.1.0' }, 7, ['"subnet"', '10.200.1.0']))
test('rejected: a subnet with a bad octet (code 7)', () => rejects({ subnet: '10.300.1.0/24' }, 7, ['"subnet"', '10.300.1.0/24']))
test('rejected: a missing subnet (code 7)', () => rejects({ subnet: undefined }, 7, ['"subnet"']))
test('rejected: a network that is not a CIDR (code 7)', () => rejects({ network: 'cluster' }, 7, ['"network"', 'cluster']))
test('rejected: a subnet outside the network (code 7)', () => rejects({ subnet: '10.201.1.0/24' }, 7, ['"subnet"', '10.201.1.0/24', '10.200.0.0/16']))
test('rejected: an IPv4 subnet too small for a pod (code 7)', () => rejects({ subnet: '10.200.1.0/31' }, 7, ['"subnet"', '/31']))
test('rejected: an IPv6 subnet larger than /64 (code 7)', () =>
  rejects({ subnet: 'fd00:200::/60', network: 'fd00:200::/56' }, 7, ['"subnet"', 'fd00:200::/60']))
test('rejected: an IPv6 subnet smaller than /120 (code 7)', () =>
  rejects({ subnet: 'fd00:200::/124', network: 'fd00:200::/56' }, 7, ['"subnet"', 'fd00:200::/124']))
test('rejected: two subnets of one family (code 7)', () =>
  rejects({ subnet: undefined, subnets: ['10.200.1.0/24', '10.200.2.0/24'], networks: ['10.200.0.0/16'] }, 7, ['"subnets"', 'one range per address family']))
test('rejected: a dual-stack subnet without a network of its family (code 7)', () =>
  rejects({ subnets: ['10.200.1.0/24', 'fd00:200:0:1::/64'], networks: ['10.200.0.0/16'] }, 7, ['"networks"', 'IPv6']))
test('rejected: a gateway outside the subnet (code 7)', () => rejects({ gateway: '10.200.2.1' }, 7, ['"gateway"', '10.200.2.1']))
test('rejected: the broadcast address as gateway (code 7)', () => rejects({ gateway: '10.200.1.255' }, 7, ['"gateway"', '10.200.1.255']))
test('rejected: a gateway that is not an address (code 7)', () => rejects({ gateway: 'router' }, 7, ['"gateway"', 'router']))
const DUAL = { subnets: ['10.200.1.0/24', 'fd00:200:0:1::/64'], networks: ['10.200.0.0/16', 'fd00:200::/56'] }
test('rejected: a network of /0 (code 7)', () => rejects({ network: '0.0.0.0/0' }, 7, ['"network"', '0.0.0.0/0', 'every address']))
test('rejected: an IPv6 network of /0 (code 7)', () => rejects({ ...DUAL, networks: ['10.200.0.0/16', '::/0'] }, 7, ['"networks"', '::/0']))
test('rejected: a subnet of /0 (code 7)', () => rejects({ subnet: '0.0.0.0/0' }, 7, ['"subnet"', '0.0.0.0/0', 'every address']))
test('rejected: a multicast subnet (code 7)', () => rejects({ subnet: '224.0.1.0/24', network: '224.0.0.0/16' }, 7, ['"subnet"', '224.0.1.0/24', 'multicast']))
test('rejected: a multicast network (code 7)', () => rejects({ network: '192.0.0.0/2', subnet: '192.168.1.0/24' }, 7, ['"network"', '192.0.0.0/2', 'multicast']))
test('rejected: a network that holds link-local and multicast in its middle (code 7)', () => rejects({ network: '128.0.0.0/1', subnet: '128.0.1.0/24' }, 7, ['"network"', '128.0.0.0/1', 'multicast']))
test('rejected: a loopback subnet (code 7)', () => rejects({ subnet: '127.0.1.0/24', network: '127.0.0.0/16' }, 7, ['"subnet"', 'loopback']))
test('rejected: a link-local subnet (code 7)', () => rejects({ subnet: '169.254.1.0/24', network: '169.254.0.0/16' }, 7, ['"subnet"', 'link-local']))
test('rejected: an IPv6 link-local subnet (code 7)', () => rejects({ subnet: 'fe80::/64', network: 'fe80::/56' }, 7, ['"subnet"', 'fe80::/64', 'link-local']))
test('rejected: an IPv6 multicast network (code 7)', () => rejects({ ...DUAL, networks: ['10.200.0.0/16', 'ff00::/8'] }, 7, ['"networks"', 'ff00::/8', 'multicast']))
test('rejected: an IPv6 network that holds ::1 (code 7)', () => rejects({ ...DUAL, networks: ['10.200.0.0/16', '::/64'] }, 7, ['"networks"', 'loopback']))
test('rejected: dual-stack with mtu below 1280 (code 7)', () => rejects({ ...DUAL, mtu: 1279 }, 7, ['"mtu"', '1279', '1280']))
test('rejected: IPv6-only with mtu below 1280 (code 7)', () => rejects({ subnet: 'fd00:200:0:1::/64', network: 'fd00:200::/56', mtu: 1000 }, 7, ['"mtu"', '1280']))
test('rejected: an IPv6 gateway for an IPv4 subnet (code 7)', () => rejects({ gateway: 'fd00::1' }, 7, ['"gateway"', 'fd00::1', 'IPv6']))
test('rejected: two IPv4 gateways (code 7)', () => rejects({ gateway: ['10.200.1.1', '10.200.1.2'] }, 7, ['"gateway"', '10.200.1.2', 'one address per family']))
test('rejected: two IPv6 gateways in dual-stack (code 7)', () =>
  rejects({ ...DUAL, gateway: ['fd00:200:0:1::1', 'fd00:200:0:1::2'] }, 7, ['"gateway"', 'one address per family']))
test('rejected: a prevResult that is not an object (code 7)', () => rejects({ prevResult: 'ok' }, 7, ['"prevResult"']))
test('rejected: prevResult.ips that is not a list (code 7)', () => rejects({ prevResult: { ips: {} } }, 7, ['"prevResult.ips"']))
test('rejected: a prevResult ips entry that is null (code 7)', () => rejects({ prevResult: { ips: [null] } }, 7, ['"prevResult.ips[0]"', 'null']))
test('rejected: a prevResult ips entry that is a string (code 7)', () =>
  rejects({ prevResult: { ips: [{ address: '10.200.1.5/24' }, '10.200.1.6/24'] } }, 7, ['"prevResult.ips[1]"', '10.200.1.6/24']))
test('rejected: a prevResult ips entry without an address (code 7)', () => rejects({ prevResult: { ips: [{ gateway: '10.200.1.1' }] } }, 7, ['"prevResult.ips[0].address"']))
test('rejected: a prevResult address that is a number (code 7)', () => rejects({ prevResult: { ips: [{ address: 5 }] } }, 7, ['"prevResult.ips[0].address" = 5']))
test('rejected: a prevResult address without a prefix (code 7)', () =>
  rejects({ prevResult: { ips: [{ address: '10.200.1.5' }] } }, 7, ['"prevResult.ips[0].address"', '10.200.1.5']))
test('rejected: a prevResult interface without a name (code 7)', () => rejects({ prevResult: { interfaces: [{ mac: 'x' }] } }, 7, ['"prevResult.interfaces[0].name"']))
test('rejected: hairpinMode that is not a boolean (code 7)', () => rejects({ hairpinMode: 'yes' }, 7, ['"hairpinMode"', 'yes']))
test('rejected: ipMasq that is not a boolean (code 7)', () => rejects({ ipMasq: 1 }, 7, ['"ipMasq"']))
test('rejected: a relative dataDir (code 7)', () => rejects({ dataDir: 'ipam' }, 7, ['"dataDir"', 'ipam']))
test('rejected: an unknown logLevel (code 7)', () => rejects({ logLevel: 'loud' }, 7, ['"logLevel"', 'loud']))

test('the version an error answers in is the top-level cniVersion, not a prevResult\'s placed first', () => {
  assert.is(askedVersion('{"prevResult": {"cniVersion": "0.3.0", "ips": []}, "cniVersion": "1.0.0"}'), '1.0.0')
  assert.is(askedVersion('{"prevResult": {"cniVersion": "0.3.0"}}'), undefined)
  assert.is(askedVersion('{"cniVersion": 1}'), undefined)
  assert.is(askedVersion('{"cniVersion": "0.4.0", '), undefined)
})

test('rejected: stdin that is not JSON (code 6)', () => {
  try {
    parseNetConf('{"cniVersion": ')
    assert.unreachable()
  } catch (e) {
    assert.is((e as CniError).code, 6)
  }
})

test('rejected: stdin over 1 MiB (code 6)', () => {
  try {
    parseNetConf(JSON.stringify({ ...SEED, pad: 'x'.repeat(1 << 20) }))
    assert.unreachable()
  } catch (e) {
    assert.is((e as CniError).code, 6)
    assert.match((e as Error).message, /larger than 1048576 bytes/)
  }
})

test.run()
