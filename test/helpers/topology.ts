// Two nodes for the tests that cross nodes: on one L2 segment (a veth between them), or on two subnets
// behind a router netns; IPv4, or dual-stack. Built from the calling test's own namespaces.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import * as assert from 'uvu/assert'
import { Node, TMP, kubeCni, must, newNetns } from './cluster.ts'

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
  const addr = (ns: string, ip: string) => {
    const v6 = ip.includes(':')
    must(['ip', '-n', ns, 'addr', 'add', `${ip}/${v6 ? 64 : 24}`, 'dev', 'eth0', ...(v6 ? ['nodad'] : [])])
  }
  let router: string | undefined
  if (!opts.routed) {
    must(['ip', '-n', a.node.ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', b.node.ns])
    for (const m of [a, b]) {
      for (const ip of m.ips) addr(m.node.ns, ip)
      must(['ip', '-n', m.node.ns, 'link', 'set', 'eth0', 'up'])
    }
  } else {
    router = newNetns('router')
    must(['ip', 'netns', 'exec', router, 'sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1'])
    for (const [k, m] of [a, b].entries()) {
      must(['ip', '-n', router, 'link', 'add', m.name, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', m.node.ns])
      must(['ip', '-n', router, 'link', 'set', m.name, 'up'])
      must(['ip', '-n', m.node.ns, 'link', 'set', 'eth0', 'up'])
      for (const [f, fam] of families.entries()) {
        const gw = fam.gw[k]
        const v6 = f === 1
        must(['ip', '-n', router, 'addr', 'add', `${gw}/${v6 ? 64 : 24}`, 'dev', m.name, ...(v6 ? ['nodad'] : [])])
        addr(m.node.ns, m.ips[f])
        must(['ip', '-n', m.node.ns, ...(v6 ? ['-6'] : []), 'route', 'add', 'default', 'via', gw])
      }
    }
  }
  const nodesJson = join(TMP, `nodes-${a.node.ns}.json`)
  writeFileSync(nodesJson, JSON.stringify(nodeList([a, b])))
  return { a, b, router, nodesJson }
}

export function nodeList(members: { name: string; ips: string[]; subnets: string[] }[]) {
  return {
    kind: 'NodeList',
    items: members.map((m) => ({
      metadata: { name: m.name },
      spec: { podCIDR: m.subnets[0], podCIDRs: m.subnets },
      status: { addresses: m.ips.map((address) => ({ type: 'InternalIP', address })) },
    })),
  }
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
  must(['ip', '-n', node.ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', client])
  must(['ip', '-n', node.ns, 'addr', 'add', '192.0.2.1/24', 'dev', 'eth0'])
  must(['ip', '-n', client, 'addr', 'add', '192.0.2.2/24', 'dev', 'eth0'])
  must(['ip', '-n', node.ns, 'link', 'set', 'eth0', 'up'])
  must(['ip', '-n', client, 'link', 'set', 'eth0', 'up'])
  return client
}
