// Two nodes for the tests that cross nodes: on one L2 segment (a veth between them), or on two subnets
// behind a router netns; IPv4, or dual-stack. Built from the calling test's own namespaces.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import * as assert from 'uvu/assert'
import { addAddr, link, nodeList, plugIn, router as makeRouter } from '../../lib/tools/harness/topology.ts'
import { Node, TMP, kubeCni, newNetns } from './cluster.ts'

export { nodeList }

export interface Member {
  node: Node
  name: string
  ips: string[] // InternalIPs, IPv4 first
  subnets: string[] // podCIDRs, IPv4 first
}

export interface TwoNodes {
  a: Member
  b: Member
  router?: string
  nodesJson: string
}

const V4 = { same: ['192.0.2.1', '192.0.2.2'], routed: ['192.0.2.1', '198.51.100.2'], gw: ['192.0.2.254', '198.51.100.254'] }
const V6 = { same: ['2001:db8:a::1', '2001:db8:a::2'], routed: ['2001:db8:a::1', '2001:db8:b::2'], gw: ['2001:db8:a::fe', '2001:db8:b::fe'] }

export function twoNodes(opts: { routed?: boolean; dualStack?: boolean; conf?: Record<string, unknown> } = {}): TwoNodes {
  const families = opts.dualStack ? [V4, V6] : [V4]
  const member = (k: number, name: string): Member => {
    const subnets = [`10.200.${k + 1}.0/24`, ...(opts.dualStack ? [`fd00:200:0:${k + 1}::/64`] : [])]
    const conf = opts.dualStack
      ? { ...opts.conf, subnets, networks: ['10.200.0.0/16', 'fd00:200::/56'] }
      : { ...opts.conf, subnet: subnets[0] }
    return { node: new Node(conf), name, ips: families.map((f) => (opts.routed ? f.routed : f.same)[k]), subnets }
  }
  const a = member(0, 'node-a')
  const b = member(1, 'node-b')
  let router: string | undefined
  if (!opts.routed) {
    link(a.node.ns, 'eth0', b.node.ns, 'eth0')
    for (const m of [a, b]) for (const ip of m.ips) addAddr(m.node.ns, 'eth0', ip)
  } else {
    router = newNetns('router')
    const gateways = [0, 1].map((k) => families.map((f) => f.gw[k]))
    makeRouter(router, { A: gateways[0], B: gateways[1] })
    plugIn(router, 'A', { name: a.name, ns: a.node.ns, ips: a.ips }, gateways[0])
    plugIn(router, 'B', { name: b.name, ns: b.node.ns, ips: b.ips }, gateways[1])
  }
  const nodesJson = join(TMP, `nodes-${a.node.ns}.json`)
  writeFileSync(nodesJson, JSON.stringify(nodeList([a, b])))
  return { a, b, router, nodesJson }
}

/** `kube-cni routes` on a member's node, told the cluster network as the DaemonSet does. */
export function tryRoutes(m: Member, nodesJson: string, ...extra: string[]) {
  const network = (m.node.conf.networks as string[] | undefined)?.join(',') ?? String(m.node.conf.network)
  return kubeCni(m.node.ns, ['routes', '--node', m.name, '--network', network, '--nodes-json', nodesJson, ...extra])
}

/** tryRoutes, and the test fails if it does. */
export function routes(m: Member, nodesJson: string, ...extra: string[]) {
  const r = tryRoutes(m, nodesJson, ...extra)
  assert.is(r.code, 0, r.stderr)
  return r
}

/** The pod's address of a family from an ADD result. */
export const podIP = (result: any, family: 4 | 6 = 4) =>
  result.ips.map((i: any) => i.address.split('/')[0]).find((a: string) => a.includes(':') === (family === 6))

/** A host outside the node on the node's network (node 192.0.2.1, client 192.0.2.2): where hostPort traffic comes from. */
export function clientOf(node: Node): string {
  const client = newNetns('client')
  link(node.ns, 'eth0', client, 'eth0')
  addAddr(node.ns, 'eth0', '192.0.2.1')
  addAddr(client, 'eth0', '192.0.2.2')
  return client
}
