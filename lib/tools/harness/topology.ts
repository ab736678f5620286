// Building blocks of a virtual cluster's underlay, for the lab and the cross-node tests: veths between
// netns, a router netns with one switch (a bridge) per segment, hosts plugged into a segment, and the
// NodeList a kube-apiserver would hand `kube-cni routes` for them. Every step runs inside netns the
// caller made; nothing here touches the root netns.
import { inNetns, must } from './netns.ts'

/** An address with its family's prefix length (/24 or /64); IPv6 skips duplicate address detection, as pods do. */
export function addAddr(ns: string, dev: string, ip: string): void {
  const v6 = ip.includes(':')
  must(['ip', '-n', ns, 'addr', 'add', `${ip}/${v6 ? 64 : 24}`, 'dev', dev, ...(v6 ? ['nodad'] : [])])
}

/** A veth from netns a (named aDev there) to netns b (bDev), both ends up. */
export function link(a: string, aDev: string, b: string, bDev: string): void {
  must(['ip', '-n', a, 'link', 'add', aDev, 'type', 'veth', 'peer', 'name', bDev, 'netns', b])
  must(['ip', '-n', a, 'link', 'set', aDev, 'up'])
  must(['ip', '-n', b, 'link', 'set', bDev, 'up'])
}

export function defaultVia(ns: string, gw: string): void {
  must(['ip', '-n', ns, ...(gw.includes(':') ? ['-6'] : []), 'route', 'add', 'default', 'via', gw])
}

/** Makes netns ns a router: forwarding on, and a bridge seg<NAME> per segment holding its gateway addresses. */
export function router(ns: string, segments: Record<string, string[]>): void {
  must(inNetns(ns, ['sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']))
  for (const [seg, gateways] of Object.entries(segments)) {
    must(['ip', '-n', ns, 'link', 'add', `seg${seg}`, 'type', 'bridge'])
    must(['ip', '-n', ns, 'link', 'set', `seg${seg}`, 'up'])
    for (const gw of gateways) addAddr(ns, `seg${seg}`, gw)
  }
}

/** A host on a router's segment: eth0 in its netns, the veth's other end (named after it) on seg<NAME>. */
export function plugIn(routerNs: string, segment: string, host: { name: string; ns: string; ips: string[] }, gateways: string[]): void {
  link(routerNs, host.name, host.ns, 'eth0')
  must(['ip', '-n', routerNs, 'link', 'set', host.name, 'master', `seg${segment}`])
  for (const ip of host.ips) addAddr(host.ns, 'eth0', ip)
  for (const gw of gateways) defaultVia(host.ns, gw)
}

/** A host outside the cluster behind the router's `out` link: it knows the nodes' networks but not the pods'. */
export function outsideHost(routerNs: string, ns: string, addrs: { router: string; host: string }[], networks: string[]): void {
  link(routerNs, 'out', ns, 'eth0')
  for (const { router: gw, host } of addrs) {
    addAddr(routerNs, 'out', gw)
    addAddr(ns, 'eth0', host)
    for (const net of networks.filter((n) => n.includes(':') === gw.includes(':'))) must(['ip', '-n', ns, 'route', 'add', net, 'via', gw])
  }
}

/** What `kubectl get nodes -o json` would say about these nodes. */
export function nodeList(nodes: { name: string; ips: string[]; subnets: string[] }[]) {
  return {
    apiVersion: 'v1',
    kind: 'NodeList',
    items: nodes.map((n) => ({
      metadata: { name: n.name },
      spec: { podCIDR: n.subnets[0], podCIDRs: n.subnets },
      status: { addresses: [...n.ips.map((address) => ({ type: 'InternalIP', address })), { type: 'Hostname', address: n.name }] },
    })),
  }
}
