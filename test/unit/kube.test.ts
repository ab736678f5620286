// Reading Nodes: a NodeList from any source, and a Node's name, podCIDRs and InternalIPs from an object of
// any shape (the API, a file or kubectl are all untrusted).
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { internalIPs, nodeName, parseNodeList, podCIDRs } from '../../lib/tools/kube.ts'

test('parseNodeList: a NodeList as `kubectl get nodes -o json` prints it, and what is not one, naming the source', () => {
  const list = parseNodeList('{"kind":"NodeList","items":[{"metadata":{"name":"node-a"}}]}', 'nodes.json')
  assert.is(list.items.length, 1)
  assert.equal(parseNodeList('{"items":[]}', 'x').items, [])
  assert.throws(() => parseNodeList('{"items":', 'stdin'), /^stdin is not JSON: /)
  for (const text of ['null', '[]', '{}', '{"items":{}}', '{"kind":"Node","metadata":{"name":"a"}}'])
    assert.throws(() => parseNodeList(text, 'kubectl get nodes'), /^kubectl get nodes is not a NodeList: it has no "items" array$/, text)
})

test('podCIDRs: spec.podCIDRs when it has any, else the single spec.podCIDR; strings only, each once', () => {
  assert.equal(podCIDRs({ spec: { podCIDR: '10.200.1.0/24', podCIDRs: ['10.200.1.0/24', 'fd00:200:0:1::/64'] } }), ['10.200.1.0/24', 'fd00:200:0:1::/64'])
  assert.equal(podCIDRs({ spec: { podCIDR: '10.200.1.0/24' } }), ['10.200.1.0/24'])
  assert.equal(podCIDRs({ spec: { podCIDR: '10.200.1.0/24', podCIDRs: [] } }), ['10.200.1.0/24'])
  assert.equal(podCIDRs({ spec: { podCIDRs: ['10.200.1.0/24', '10.200.1.0/24', 7, null, { a: 1 }] } }), ['10.200.1.0/24'])
  // Not a CIDR is kept as text: which texts are CIDRs is the caller's check, with its own message.
  assert.equal(podCIDRs({ spec: { podCIDRs: ['x\ny'] } }), ['x\ny'])
})

test('podCIDRs: no pod range yet, or no Node at all, is an empty list, never a throw', () => {
  for (const node of [undefined, null, 42, 'node-a', [], {}, { spec: null }, { spec: 'x' }, { spec: {} }, { spec: { podCIDR: 5, podCIDRs: 'x' } }])
    assert.equal(podCIDRs(node), [], JSON.stringify(node))
})

test('internalIPs: the InternalIP addresses in order; other types and malformed entries are left out', () => {
  const node = {
    status: {
      addresses: [
        { type: 'Hostname', address: 'node-a' },
        { type: 'InternalIP', address: '192.0.2.1' },
        { type: 'ExternalIP', address: '203.0.113.1' },
        null,
        { type: 'InternalIP', address: 5 },
        { type: 'InternalIP' },
        { type: 'InternalIP', address: '2001:db8:a::1' },
      ],
    },
  }
  assert.equal(internalIPs(node), ['192.0.2.1', '2001:db8:a::1'])
  for (const bad of [null, {}, { status: null }, { status: { addresses: 'x' } }, { status: { addresses: {} } }]) assert.equal(internalIPs(bad), [], JSON.stringify(bad))
})

test('nodeName: a DNS subdomain of at most 253 characters, so it is safe in a log line and a route report', () => {
  for (const good of ['node-a', 'a', 'ip-10-0-0-1.ec2.internal', '0', 'n'.repeat(253)]) assert.is(nodeName({ metadata: { name: good } }), good)
  for (const bad of ['', 'Node-A', '-a', 'a-', 'a.', 'a b', 'a\nb', 'a_b', 'n'.repeat(254), 'ünïcode', 5, null, ['a']])
    assert.is(nodeName({ metadata: { name: bad } }), undefined, JSON.stringify(bad))
  for (const shape of [undefined, null, 'node-a', {}, { metadata: null }, { metadata: 'node-a' }]) assert.is(nodeName(shape), undefined, JSON.stringify(shape))
})

test.run()
