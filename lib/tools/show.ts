// `kube-cni lab show`: a picture of the running lab, read from the kernel (links, addresses, routes, the VXLAN
// fdb) rather than from the lab's state file, so that a broken or half-made lab is drawn as it really is. The
// same model draws a terminal diagram and an SVG; `lab trace --svg` draws its path on renderSvg's picture.
import { writeFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { PREFIX } from './lab.ts'
import { ipj, must, netnsWithPrefix } from './harness/netns.ts'

/** One interface as a netns has it: the name `ip` knows it by and its global addresses (with their prefix). */
export interface Port {
  netns: string
  dev: string
  addrs: string[]
}

export interface ShowPod {
  name: string // n1-p1
  eth0: Port
  veth?: string // its host end in the node's netns, when the kernel links them
}

export interface ShowRoute {
  dst: string
  via?: string
  dev: string
  node?: string // the node the route leads to
}

export interface ShowNode {
  name: string // node1
  netns: string
  uplink: Port // eth0, on the underlay
  segment?: string // the router's switch it is plugged into (segA)
  bridge?: Port
  pods: ShowPod[]
  routes: ShowRoute[]
  vxlan?: Port & { vni: number; local: string; fdb: { mac: string; dst: string; node?: string }[] }
}

export interface ShowModel {
  prefix: string
  backend: 'host-gw' | 'vxlan'
  router?: { netns: string; segments: Port[]; out?: Port }
  outside?: Port
  nodes: ShowNode[]
}

export type Highlight = { netns: string; dev: string }[]

const VXLAN_DEV = 'kube-cni.1'
const ROUTES_PROTO = '211'

interface Link {
  ifindex: number
  ifname: string
  link_index?: number
  master?: string
  linkinfo?: { info_kind?: string; info_data?: { id?: number; local?: string } }
  addr_info?: { local: string; prefixlen: number; scope: string }[]
}

const links = (ns: string): Link[] => ipj(ns, '-d', 'addr', 'show')
const globalAddrs = (l: Link | undefined) => (l?.addr_info ?? []).filter((a) => a.scope === 'global').map((a) => `${a.local}/${a.prefixlen}`)
const portOf = (ns: string, l: Link): Port => ({ netns: ns, dev: l.ifname, addrs: globalAddrs(l) })
const bare = (addr: string) => addr.split('/')[0]
const podName = (short: string) => short.replace(/^n(\d+)p(\d+)$/, 'n$1-p$2')

/** The running lab under PREFIX, from the kernel. Throws when there is none. */
export function labModel(prefix = PREFIX): ShowModel {
  const namespaces = netnsWithPrefix(prefix)
  const local = (ns: string) => ns.slice(prefix.length)
  const nodeNs = namespaces.filter((ns) => /^node\d+$/.test(local(ns))).sort((a, b) => Number(local(a).slice(4)) - Number(local(b).slice(4)))
  if (nodeNs.length === 0) throw new Error(`no lab is running under ${prefix}* (start one with: kube-cni lab up)`)

  const routerNs = namespaces.find((ns) => local(ns) === 'router')
  const routerLinks = routerNs ? links(routerNs) : []
  const router = routerNs
    ? {
        netns: routerNs,
        segments: routerLinks.filter((l) => l.linkinfo?.info_kind === 'bridge').map((l) => portOf(routerNs, l)),
        out: routerLinks.filter((l) => l.ifname === 'out').map((l) => portOf(routerNs, l))[0],
      }
    : undefined
  const outsideNs = namespaces.find((ns) => local(ns) === 'outside')
  const outsideEth = outsideNs ? links(outsideNs).find((l) => l.ifname === 'eth0') : undefined

  const nodes: ShowNode[] = nodeNs.map((ns) => {
    const name = local(ns)
    const own = links(ns)
    const eth0 = own.find((l) => l.ifname === 'eth0')
    const bridge = own.find((l) => l.linkinfo?.info_kind === 'bridge')
    const vx = own.find((l) => l.ifname === VXLAN_DEV)
    const short = name.replace('node', 'n')
    const pods = namespaces
      .filter((p) => new RegExp(`^${short}p\\d+$`).test(local(p)))
      .sort((a, b) => Number(local(a).split('p')[1]) - Number(local(b).split('p')[1]))
      .map((p): ShowPod => {
        const podEth = links(p).find((l) => l.ifname === 'eth0')
        // A veth's link_index is its peer's ifindex in the other netns: that is how the two ends are paired.
        const veth = own.find((l) => l.ifindex === podEth?.link_index && bridge && l.master === bridge.ifname)
        return { name: podName(local(p)), eth0: { netns: p, dev: 'eth0', addrs: globalAddrs(podEth) }, veth: veth?.ifname }
      })
    const routes = ['-4', '-6'].flatMap((f) => ipj(ns, f, 'route', 'show', 'proto', ROUTES_PROTO) as { dst: string; gateway?: string; dev: string }[])
    return {
      name,
      netns: ns,
      uplink: { netns: ns, dev: 'eth0', addrs: globalAddrs(eth0) },
      segment: routerLinks.find((l) => l.ifname === name)?.master,
      bridge: bridge && portOf(ns, bridge),
      pods,
      routes: routes.map((r) => ({ dst: r.dst, via: r.gateway, dev: r.dev })),
      vxlan: vx && {
        ...portOf(ns, vx),
        vni: vx.linkinfo?.info_data?.id ?? 0,
        local: vx.linkinfo?.info_data?.local ?? '',
        fdb: (JSON.parse(must(['bridge', '-n', ns, '-j', 'fdb', 'show', 'dev', VXLAN_DEV]) || '[]') as { mac: string; dst?: string }[])
          .filter((e) => e.dst)
          .map((e) => ({ mac: e.mac, dst: e.dst! })),
      },
    }
  })

  // Where each route and fdb entry leads: the node whose underlay address or VXLAN address it names.
  const owner = (addr?: string) =>
    addr && nodes.find((n) => [...n.uplink.addrs, ...(n.vxlan?.addrs ?? [])].some((a) => bare(a) === addr))?.name
  for (const n of nodes) {
    for (const r of n.routes) r.node = owner(r.via)
    for (const e of n.vxlan?.fdb ?? []) e.node = owner(e.dst)
  }
  return {
    prefix,
    backend: nodes.some((n) => n.vxlan) ? 'vxlan' : 'host-gw',
    router,
    outside: outsideEth && portOf(outsideNs!, outsideEth),
    nodes,
  }
}

// ---- the terminal --------------------------------------------------------------------------------------

const WIDTH = 98
const fit = (s: string, w: number) => (s.length > w ? `${s.slice(0, w - 1)}…` : s.padEnd(w))
const routeLabel = (r: ShowRoute) => `${r.dst}${r.via ? ` via ${r.via}` : ''} dev ${r.dev}${r.node ? ` → ${r.node}` : ''}`
const fdbLabel = (e: NonNullable<ShowNode['vxlan']>['fdb'][number]) => `fdb ${e.mac} dst ${e.dst}${e.node ? ` → ${e.node}` : ''}`
const addrs = (p?: Port) => (p && p.addrs.length ? p.addrs.join(', ') : 'no address')

export function renderText(m: ShowModel): string {
  const pods = m.nodes.reduce((k, n) => k + n.pods.length, 0)
  const out: string[] = [`kube-cni lab (${m.prefix}*): ${m.nodes.length} nodes, ${pods} pods, backend ${m.backend}`, '']
  if (m.outside) out.push(`outside  ${m.outside.netns}  eth0 ${addrs(m.outside)}`, '   │')
  if (m.router) {
    out.push(`router   ${m.router.netns}  ${m.router.out ? `out ${addrs(m.router.out)}` : ''}`)
    for (const s of m.router.segments) {
      const on = m.nodes.filter((n) => n.segment === s.dev)
      out.push(`   ├─ ${s.dev} ${addrs(s)} (switch)${on.length ? ` ── ${on.map((n) => `${n.name} ${n.uplink.addrs.map(bare).join(', ')}`).join(' · ')}` : ''}`)
    }
    out.push('   │')
  }
  const box = (s: string) => out.push(`│ ${fit(s, WIDTH - 4)} │`)
  for (const n of m.nodes) {
    const title = `─ ${n.name} (${n.netns}) `
    out.push(`┌${title}${'─'.repeat(Math.max(0, WIDTH - 2 - title.length))}┐`)
    box(`eth0 ${addrs(n.uplink)}${n.segment ? `  ── router ${n.segment}` : ''}`)
    box(n.bridge ? `${n.bridge.dev} ${addrs(n.bridge)} (bridge)` : 'no bridge')
    const ips = (p: ShowPod) => p.eth0.addrs.map(bare).join(', ') || 'no address'
    const w = Math.max(5, ...n.pods.map((p) => p.name.length))
    const wIps = Math.max(...n.pods.map((p) => ips(p).length))
    n.pods.forEach((p, i) => {
      const branch = i === n.pods.length - 1 ? '└─' : '├─'
      box(`  ${branch} ${fit(p.veth ?? 'veth?', 12)} ══ eth0 ${fit(ips(p), wIps)}  pod ${fit(p.name, w)}  (${p.eth0.netns})`)
    })
    if (n.vxlan) {
      box(`${n.vxlan.dev} vxlan id ${n.vxlan.vni} local ${n.vxlan.local}  ${addrs(n.vxlan)}`)
      for (const e of n.vxlan.fdb) box(`  ${fdbLabel(e)}`)
    }
    box(n.routes.length ? `routes to the other nodes' pods (${m.backend}):` : 'no routes to the other nodes (kube-cni routes has not run)')
    for (const r of n.routes) box(`  ${routeLabel(r)}`)
    out.push(`└${'─'.repeat(WIDTH - 2)}┘`)
  }
  return out.join('\n')
}

// ---- the SVG -------------------------------------------------------------------------------------------

const CHAR = 7.3 // DejaVu Sans Mono at 12px
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')
const HOT = '#d62728'

/** The lab as a standalone SVG; highlighted interfaces (and the lines between two of them) are drawn in red. */
export function renderSvg(m: ShowModel, highlight: Highlight = []): string {
  const hot = (netns: string, dev: string) => highlight.some((h) => h.netns === netns && h.dev === dev)
  const els: string[] = []
  const text = (x: number, y: number, s: string, attrs = '') => els.push(`<text x="${x}" y="${y}"${attrs}>${esc(s)}</text>`)
  const rect = (x: number, y: number, w: number, h: number, cls: string) => els.push(`<rect x="${x}" y="${y}" width="${w}" height="${h}" rx="6" class="${cls}"/>`)
  const line = (x1: number, y1: number, x2: number, y2: number, cls: string, on = false) =>
    els.push(`<line x1="${x1}" y1="${y1}" x2="${x2}" y2="${y2}" class="${cls}${on ? ' hot' : ''}"/>`)
  /** An interface: a small labelled box centred on (cx, cy); returns its half-width. */
  const port = (cx: number, cy: number, p: { netns: string; dev: string }, label: string) => {
    const w = label.length * CHAR + 12
    els.push(`<g class="port${hot(p.netns, p.dev) ? ' hot' : ''}" data-netns="${esc(p.netns)}" data-dev="${esc(p.dev)}">`)
    rect(cx - w / 2, cy - 11, w, 22, 'if')
    text(cx, cy + 4, label, ' text-anchor="middle"')
    els.push('</g>')
  }

  const podW = Math.max(150, ...m.nodes.flatMap((n) => n.pods.map((p) => Math.max(p.eth0.netns.length, ...p.eth0.addrs.map((a) => a.length)) * CHAR + 24)))
  const lines = (n: ShowNode) => n.routes.length + 1 + (n.vxlan ? n.vxlan.fdb.length + 1 : 0)
  const longest = Math.max(0, ...m.nodes.flatMap((n) => [...n.routes.map(routeLabel), ...(n.vxlan?.fdb.map(fdbLabel) ?? [])].map((s) => s.length)))
  const colW = Math.max(320, ...m.nodes.map((n) => n.pods.length * (podW + 16) + 16), longest * CHAR + 40)
  const margin = 30
  const width = margin * 2 + m.nodes.length * colW + (m.nodes.length - 1) * 30
  const colX = (i: number) => margin + i * (colW + 30)
  const center = width / 2

  text(margin, 30, `kube-cni lab: ${m.nodes.length} nodes, backend ${m.backend}`, ' class="title"')
  let y = 60
  // The outside host and the router, on top.
  if (m.outside) {
    rect(center - 120, y, 240, 56, 'ns outside')
    text(center, y + 22, `outside · ${m.outside.netns}`, ' text-anchor="middle" class="name"')
    port(center, y + 56, m.outside, `eth0 ${m.outside.addrs.map(bare).join(', ')}`)
    y += 56
  }
  const routerY = y + 50
  const routerH = 30 + (m.router?.segments.length ?? 0) * 30 + 20
  const segY = new Map<string, number>()
  const labels: (() => void)[] = []
  if (m.router) {
    if (m.outside) line(center, y + 11, center, routerY - 11, 'link', hot(m.outside.netns, 'eth0') && !!m.router.out && hot(m.router.netns, 'out'))
    rect(margin, routerY, width - 2 * margin, routerH, 'ns router')
    text(margin + 10, routerY + 20, `router · ${m.router.netns}`, ' class="name"')
    if (m.router.out) port(center, routerY, m.router.out, `out ${m.router.out.addrs.map(bare).join(', ')}`)
    m.router.segments.forEach((s, i) => {
      const sy = routerY + 40 + i * 30
      segY.set(s.dev, sy)
      line(margin + 20, sy, width - margin - 20, sy, `switch${hot(s.netns, s.dev) ? ' hot' : ''}`)
      // Written after the nodes' uplinks, over them, so that no line runs through a switch's name.
      labels.push(() => text(width - margin - 20, sy - 6, `${s.dev} ${s.addrs.join(', ')} (switch)`, ' text-anchor="end" class="small label"'))
    })
  }

  const nodeY = routerY + routerH + 60
  const nodeH = 142 + lines(m.nodes.reduce((a, b) => (lines(a) >= lines(b) ? a : b))) * 18
  const podY = nodeY + nodeH + 60
  const podH = 56 + Math.max(...m.nodes.flatMap((n) => n.pods.map((p) => p.eth0.addrs.length))) * 15
  const vxlanY = nodeY + 58
  const tunnel: { left: number; right: number }[] = []
  m.nodes.forEach((n, i) => {
    const x = colX(i)
    const cx = x + colW / 2
    // The node's uplink: a veth from the router's port (named after the node) on its segment to the node's eth0.
    if (m.router && n.segment) {
      const sy = segY.get(n.segment)!
      const rp = hot(m.router.netns, n.name)
      line(cx, sy, cx, routerY + routerH, 'link', rp)
      els.push(`<circle cx="${cx}" cy="${sy}" r="5" class="joint"/>`)
      port(cx, routerY + routerH, { netns: m.router.netns, dev: n.name }, n.name)
      line(cx, routerY + routerH + 11, cx, nodeY - 11, 'link', rp && hot(n.netns, 'eth0'))
    }
    rect(x, nodeY, colW, nodeH, 'ns node')
    text(x + 10, nodeY + 30, `${n.name} · ${n.netns}`, ' class="name"')
    port(cx, nodeY, n.uplink, `eth0 ${n.uplink.addrs.map(bare).join(', ')}`)
    let ty = nodeY + 58
    if (n.vxlan) {
      const label = `${n.vxlan.dev} vxlan ${n.vxlan.vni} ${n.vxlan.addrs.map(bare).join(', ')}`
      const w = label.length * CHAR + 12
      port(x + 16 + w / 2, vxlanY, n.vxlan, label)
      tunnel.push({ left: x + 16, right: x + 16 + w })
      ty += 30
      for (const e of n.vxlan.fdb) {
        text(x + 26, ty, fdbLabel(e), ' class="small"')
        ty += 18
      }
      ty += 6
    }
    text(x + 16, ty, n.routes.length ? "routes to the other nodes' pods:" : 'no routes to the other nodes', ' class="small"')
    for (const r of n.routes) text(x + 26, (ty += 18), routeLabel(r), ' class="small route"')
    const by = nodeY + nodeH - 66
    if (n.bridge) {
      els.push(`<g class="port bridge${hot(n.netns, n.bridge.dev) ? ' hot' : ''}" data-netns="${esc(n.netns)}" data-dev="${esc(n.bridge.dev)}">`)
      rect(x + 16, by, colW - 32, 26, 'br')
      text(x + 26, by + 17, `${n.bridge.dev} ${n.bridge.addrs.join(', ')}  (bridge)`)
      els.push('</g>')
    }

    // Each pod hangs from the bridge by its veth pair: the host end on the node's edge, eth0 on the pod's.
    const span = n.pods.length * (podW + 16) - 16
    n.pods.forEach((p, j) => {
      const px = cx - span / 2 + j * (podW + 16)
      const pcx = px + podW / 2
      const veth = { netns: n.netns, dev: p.veth ?? '' }
      if (n.bridge) line(pcx, by + 26, pcx, nodeY + nodeH - 11, 'link', hot(n.netns, n.bridge.dev) && hot(veth.netns, veth.dev))
      port(pcx, nodeY + nodeH, veth, p.veth ?? 'veth?')
      line(pcx, nodeY + nodeH + 11, pcx, podY - 11, 'veth', hot(veth.netns, veth.dev) && hot(p.eth0.netns, 'eth0'))
      rect(px, podY, podW, podH, 'ns pod')
      port(pcx, podY, p.eth0, 'eth0')
      text(pcx, podY + 30, p.name, ' text-anchor="middle" class="name"')
      p.eth0.addrs.forEach((a, k) => text(pcx, podY + 48 + k * 15, a, ' text-anchor="middle"'))
      text(pcx, podY + podH - 8, p.eth0.netns, ' text-anchor="middle" class="small muted"')
    })
  })
  for (const write of labels) write()
  // The overlay: the VXLAN devices reach each other inside UDP through the underlay, drawn as a dashed tunnel.
  for (let k = 1; k < tunnel.length; k++) {
    line(tunnel[k - 1].right, vxlanY, tunnel[k].left, vxlanY, `tunnel${highlight.some((h) => h.dev === VXLAN_DEV) ? ' hot' : ''}`)
  }
  if (tunnel.length > 1) text(margin, podY + podH + 30, `dashed: the VXLAN overlay between the ${VXLAN_DEV} devices, UDP 4789 through the underlay`, ' class="small"')
  const height = podY + podH + (tunnel.length > 1 ? 50 : 30)

  const style = `
    text { font-family: 'DejaVu Sans Mono', Menlo, Consolas, monospace; font-size: 12px; fill: #222; }
    .title { font-size: 18px; font-weight: bold; }
    .name { font-weight: bold; font-size: 13px; }
    .small { font-size: 11.5px; }
    .muted { fill: #666; }
    .label { paint-order: stroke; stroke: #f6f1fa; stroke-width: 5px; }
    .joint { fill: #7a4a9a; }
    .ns { stroke: #555; stroke-width: 1.5; }
    .node { fill: #eef4fb; } .pod { fill: #f3f9ee; } .router { fill: #f6f1fa; } .outside { fill: #fbf6ea; }
    .if { fill: #fff; stroke: #333; stroke-width: 1.2; }
    .br { fill: #dbe8f6; stroke: #3a6ea5; stroke-width: 1.5; }
    .link { stroke: #333; stroke-width: 2; }
    .veth { stroke: #2a7a2a; stroke-width: 3; }
    .switch { stroke: #7a4a9a; stroke-width: 4; }
    .tunnel { stroke: #3a6ea5; stroke-width: 2; stroke-dasharray: 8 5; }
    line.hot, .hot > .if, .hot > .br { stroke: ${HOT}; stroke-width: 3.5; }
    .hot > text { fill: ${HOT}; font-weight: bold; }`
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">`,
    // CDATA: the CSS (its `>` selectors) stays verbatim for any parser, XML or an HTML page it is pasted into.
    `<style><![CDATA[${style}\n]]></style>`,
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
    ...els,
    '</svg>',
    '',
  ].join('\n')
}

// ---- the command ---------------------------------------------------------------------------------------

const SHOW_USAGE = `usage: kube-cni lab show [--svg FILE]
  draws the running lab from the kernel: nodes, the underlay and router, each bridge, each pod with its veth
  and IP, the routes between nodes (host-gw, or kube-cni.1 with its fdb); --svg FILE also writes it as an SVG`

export async function showCommand(argv: string[]): Promise<number> {
  let o: { svg?: string; help?: boolean }
  try {
    o = parseArgs({ args: argv, options: { svg: { type: 'string' }, help: { type: 'boolean' } } }).values
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${SHOW_USAGE}`)
  }
  if (o.help) return process.stdout.write(`${SHOW_USAGE}\n`), 0
  if (process.getuid?.() !== 0) throw new Error('lab show reads the lab\'s network namespaces: run it as root (sudo)')
  const model = labModel()
  process.stdout.write(`${renderText(model)}\n`)
  if (o.svg) writeSvg(o.svg, renderSvg(model))
  return 0
}

/** Writes a picture for `--svg FILE` (lab show, lab trace), with a message a learner can act on. */
export function writeSvg(file: string, svg: string): void {
  try {
    writeFileSync(file, svg)
  } catch (e) {
    throw new Error(`cannot write the picture to ${file} (${(e as NodeJS.ErrnoException).code}): give --svg a file in a directory that exists`)
  }
  process.stderr.write(`wrote ${file}\n`)
}
