import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { parseNetConf } from '../../lib/plugin/netconf.ts'
import { chainNames, chainsFor, nodeProblems, restoreInput, setupFor } from '../../lib/plugin/node.ts'

const HEALTHY = { path: '/usr/sbin:/usr/bin', found: () => true, bridgeNetfilter: true }
const conf = (extra: Record<string, unknown> = {}) =>
  parseNetConf(JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'kube-cni', network: '10.200.0.0/16', subnet: '10.200.1.0/24', ...extra }))

test('each network has its own chains, within the 28 characters iptables allows', () => {
  const long = 'n'.repeat(63)
  const names = ['k8s-pod-network', 'second', long].map(chainNames)
  for (const n of names) for (const chain of [n.forward, n.masq]) assert.ok(chain.length <= 28, chain)
  assert.is(new Set(names.map((n) => n.masq)).size, 3)
  assert.equal(chainNames('second'), chainNames('second'), 'stable from run to run')
})

test('the check input has only -C lines, the jumps included, and changes nothing', () => {
  const c = conf()
  const check = restoreInput(chainsFor(c.name, c.pools[0], true), 'check')
  const { masq } = chainNames(c.name)
  assert.ok(check.includes(`-C POSTROUTING -s 10.200.1.0/24 -j ${masq}\n`), check)
  for (const line of check.split('\n').filter(Boolean)) assert.ok(/^(\*filter|\*nat|COMMIT|-C )/.test(line), line)
})

test('each chain has a canary beside its jump: from a multicast source, so no packet matches it, and named per network, table and family', () => {
  const dual = conf({ subnet: undefined, network: undefined, subnets: ['10.200.1.0/24', 'fd00::/64'], networks: ['10.200.0.0/16', 'fd00::/56'] })
  const chains = [...dual.pools.flatMap((p) => chainsFor(dual.name, p, true)), ...chainsFor('second', dual.pools[0], true)]
  const tags = chains.map((c) => c.canary.tag)
  assert.is(new Set(tags).size, 6, tags.join(' '))
  for (const { jump, canary } of chains) {
    assert.ok(canary.rule.startsWith(`${jump.split(' ')[0]} -s `), canary.rule)
    assert.match(canary.rule, / -s (224\.0\.0\.0\/4|ff00::\/8) -m recent --rcheck --name kube-cni-canary-[0-9a-f]{8}-(filter|nat)[46]$/)
    assert.not.match(canary.rule, / -j /, 'no target: it could not do anything even if it matched')
  }
})

test('without br_netfilter, STATUS has a problem naming the module and how to load it for good', () => {
  const [problem, ...more] = nodeProblems(conf(), { ...HEALTHY, bridgeNetfilter: false })
  assert.equal(more, [])
  assert.match(problem.msg, 'br_netfilter')
  assert.match(problem.fix, 'modprobe br_netfilter')
  assert.match(problem.fix, '/etc/modules-load.d/')
  assert.equal(nodeProblems(conf(), HEALTHY), [])
})

test('STATUS needs ip6tables only with an IPv6 pool, and its hint fits "ipMasq"', () => {
  const without = (...missing: string[]) => ({ ...HEALTHY, found: (t: string) => !missing.includes(t) })
  assert.equal(nodeProblems(conf(), without('ip6tables', 'ip6tables-restore')), [])
  const dual = conf({ subnet: undefined, network: undefined, subnets: ['10.200.1.0/24', 'fd00::/64'], networks: ['10.200.0.0/16', 'fd00::/56'] })
  assert.equal(nodeProblems(dual, without('ip6tables')).map((p) => p.msg.split(',')[0]), ['kube-cni needs ip6tables'])
  const [masq] = nodeProblems(conf(), without('iptables-restore'))
  assert.match(masq.fix, 'masquerade')
  const [noMasq] = nodeProblems(conf({ ipMasq: false }), without('iptables-restore'))
  assert.not.match(noMasq.fix, 'masquerade')
  assert.match(nodeProblems(conf(), without('ip'))[0].fix, 'iproute2')
})

test('the rewrite input declares each chain (flushing it) and fills it: one copy after any number of runs', () => {
  const c = conf()
  const { forward, masq } = chainNames(c.name)
  assert.is(restoreInput(chainsFor(c.name, c.pools[0], true), 'rewrite'), [
    '*filter',
    `:${forward} - [0:0]`,
    `-A ${forward} -s 10.200.0.0/16 -j ACCEPT`,
    `-A ${forward} -d 10.200.0.0/16 -j ACCEPT`,
    'COMMIT',
    '*nat',
    `:${masq} - [0:0]`,
    `-A ${masq} -d 10.200.0.0/16 -j RETURN`,
    `-A ${masq} -d 224.0.0.0/4 -j RETURN`,
    `-A ${masq} -j MASQUERADE`,
    'COMMIT',
    '',
  ].join('\n'))
})

test('chains per family: IPv6 returns for its own network and ff00::/8; the jump masquerades only this node\'s subnet', () => {
  const c = conf({ network: undefined, subnet: undefined, networks: ['10.200.0.0/16', 'fd00:200::/56'], subnets: ['10.200.1.0/24', 'fd00:200:0:1::/64'] })
  const [, v6] = c.pools
  const [forward, masq] = chainsFor(c.name, v6, true)
  assert.equal(forward.rules, ['-s fd00:200::/56 -j ACCEPT', '-d fd00:200::/56 -j ACCEPT'])
  assert.is(forward.jump, `FORWARD -j ${chainNames(c.name).forward}`)
  assert.equal(masq.rules, ['-d fd00:200::/56 -j RETURN', '-d ff00::/8 -j RETURN', '-j MASQUERADE'])
  assert.is(masq.jump, `POSTROUTING -s fd00:200:0:1::/64 -j ${chainNames(c.name).masq}`)
})

test('"ipMasq": false: the FORWARD accepts only, no nat table at all', () => {
  const c = conf({ ipMasq: false })
  const chains = chainsFor(c.name, c.pools[0], false)
  assert.equal(chains.map((x) => x.table), ['filter'])
  for (const mode of ['rewrite', 'check'] as const) assert.not.match(restoreInput(chains, mode), /\*nat|MASQUERADE/)
})

test('setupFor: the marker changes with the bridge, ipMasq, a pool or the rule layout, and only with them', () => {
  const base = setupFor(conf())
  // `rules` is kube-cni's own rule layout: a node set up without canaries (layout 1) is set up once more.
  assert.equal(JSON.parse(base), { rules: 2, bridge: 'cni0', ipMasq: true, pools: [{ subnet: '10.200.1.0/24', network: '10.200.0.0/16' }] })
  assert.ok(base.endsWith('\n'))
  for (const change of [{ bridge: 'br1' }, { ipMasq: false }, { subnet: '10.200.2.0/24' }, { network: '10.0.0.0/8' }])
    assert.is.not(setupFor(conf(change)), base, JSON.stringify(change))
  // What every pod has its own of, or what ensureNode does not set up, leaves the node as it is.
  for (const same of [{ mtu: 1450 }, { hairpinMode: false }, { logLevel: 'debug' }]) assert.is(setupFor(conf(same)), base, JSON.stringify(same))
})

test.run()
