import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { CniError, type Result, encodeError, encodeResult, parseCniArgs, readInvocation, versionAtLeast } from '../../lib/plugin/cni.ts'

const RESULT: Result = {
  interfaces: [
    { name: 'cni0', mac: '0a:58:0a:c8:01:01' },
    { name: 'veth1a2b3c4d', mac: '02:00:00:00:00:01', mtu: 1450 },
    { name: 'eth0', mac: '02:00:00:00:00:02', sandbox: '/var/run/netns/x', mtu: 1450 },
  ],
  ips: [
    { address: '10.200.1.5/24', gateway: '10.200.1.1', interface: 2 },
    { address: 'fd00:200:0:1::5/64', gateway: 'fd00:200:0:1::1', interface: 2 },
  ],
  routes: [{ dst: '0.0.0.0/0', gw: '10.200.1.1' }],
  dns: {},
}

for (const v of ['0.3.0', '0.3.1', '0.4.0']) {
  test(`result ${v}: ips carry "version", interfaces no mtu`, () => {
    const r = encodeResult(RESULT, v) as any
    assert.is(r.cniVersion, v)
    assert.equal(r.ips.map((i: any) => i.version), ['4', '6'])
    assert.is(r.ips[0].address, '10.200.1.5/24')
    assert.is(r.ips[0].interface, 2)
    assert.ok(r.interfaces.every((i: any) => i.mtu === undefined))
    assert.is(r.interfaces[2].sandbox, '/var/run/netns/x')
  })
}

test('result 1.0.0: no ips[].version and no mtu', () => {
  const r = encodeResult(RESULT, '1.0.0') as any
  assert.ok(r.ips.every((i: any) => !('version' in i)))
  assert.ok(r.interfaces.every((i: any) => !('mtu' in i)))
  assert.equal(r.routes, [{ dst: '0.0.0.0/0', gw: '10.200.1.1' }])
  assert.equal(r.dns, {})
})

test('result 1.1.0: no ips[].version, interfaces carry mtu', () => {
  const r = encodeResult(RESULT, '1.1.0') as any
  assert.ok(r.ips.every((i: any) => !('version' in i)))
  assert.is(r.interfaces[2].mtu, 1450)
  assert.is(r.interfaces[0].mtu, undefined)
})

test('error JSON: cniVersion, code, msg, and details only when there are some', () => {
  assert.equal(encodeError(new CniError(7, 'bad "mtu"', 'use 68-65535'), '0.4.0'), { cniVersion: '0.4.0', code: 7, msg: 'bad "mtu"', details: 'use 68-65535' })
  assert.equal(encodeError(new CniError(4, 'bad env'), '1.0.0'), { cniVersion: '1.0.0', code: 4, msg: 'bad env' })
})

test('versions compare numerically', () => {
  assert.ok(versionAtLeast('1.1.0', '1.0.0'))
  assert.ok(versionAtLeast('0.4.0', '0.4.0'))
  assert.not.ok(versionAtLeast('0.3.1', '0.4.0'))
  assert.ok(versionAtLeast('0.10.0', '0.4.0'))
})

const ENV = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'abc', CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0' }
function envError(env: Record<string, string | undefined>, variable: string) {
  try {
    readInvocation({ ...ENV, ...env })
    assert.unreachable()
  } catch (e) {
    assert.is((e as CniError).code, 4)
    assert.ok((e as Error).message.includes(variable), (e as Error).message)
  }
}

test('env: ADD needs CNI_NETNS, DEL does not', () => {
  envError({ CNI_NETNS: undefined }, 'CNI_NETNS')
  assert.is(readInvocation({ ...ENV, CNI_COMMAND: 'DEL', CNI_NETNS: '' }).netns, '')
})
test('env: an unknown command names CNI_COMMAND', () => envError({ CNI_COMMAND: 'GET' }, 'CNI_COMMAND'))
test('env: a container ID with a shell metacharacter', () => envError({ CNI_CONTAINERID: 'x;touch F' }, 'CNI_CONTAINERID'))
test('env: an ifname of 16 characters', () => envError({ CNI_IFNAME: 'eth0123456789012' }, 'CNI_IFNAME'))
test('env: an ifname with a slash', () => envError({ CNI_IFNAME: 'a/b' }, 'CNI_IFNAME'))
test('env: the ifname ".."', () => envError({ CNI_IFNAME: '..' }, 'CNI_IFNAME'))
for (const [name, why] of [
  ['a:b', "':'"],
  ['a b', 'white space'],
  ['a\tb', 'white space'],
  ['eth%d', 'template'],
  ['a#b', 'comment'],
  ['"a', 'quote'],
  ["'a", 'quote'],
  ['\u00e0bcdefg', 'white space'], // the UTF-8 of à holds the byte 0xA0, which the kernel counts as space
  ['\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9', '15 bytes'], // 8 characters, 16 bytes
]) test(`env: the ifname ${JSON.stringify(name)} is refused (${why})`, () => envError({ CNI_IFNAME: name }, why))
test('env: ifnames the kernel takes and the old A-Z a-z 0-9 _ . - rule refused are accepted', () => {
  for (const name of ['a@b', 'net+1', 'w=1', "it's", '\u00e9th0', 'v\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9'])
    assert.is(readInvocation({ ...ENV, CNI_IFNAME: name }).ifname, name)
})
test('env: VERSION ignores the dummies podman sends', () => {
  assert.is(readInvocation({ CNI_COMMAND: 'VERSION', CNI_NETNS: 'dummy', CNI_IFNAME: 'dummy', CNI_PATH: 'dummy' }).command, 'VERSION')
})

test('CNI_ARGS: K=V;K=V, as Kubernetes runtimes send it', () => {
  assert.equal(parseCniArgs('IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u-1'), {
    IgnoreUnknown: '1',
    K8S_POD_NAMESPACE: 'default',
    K8S_POD_NAME: 'web-0',
    K8S_POD_UID: 'u-1',
  })
})

test.run()
