// `kube-cni lab show`: the picture of a running lab, as a terminal diagram and as an SVG, drawn from what the
// kernel has (a route deleted behind the lab's back disappears from the picture).
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { PLUGIN, TMP, must } from '../helpers/cluster.ts'

// A lab of this test's own (kcw<pid>-*), which no other lab's `down` removes and which removes no other lab.
const PREFIX = `kcw${process.pid}-`
const LAB = { ...process.env, KUBE_CNI_LAB_PREFIX: PREFIX }
const STATE = `/run/kube-cni-lab-kcw${process.pid}/state.json`

function lab(...args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync('node', [PLUGIN, 'lab', ...args], { encoding: 'utf8', env: LAB })
  return { code: r.status ?? 1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' }
}

process.on('exit', () => lab('down'))

/** The root element's name, when xml is well-formed: every tag closed in order, attributes quoted, entities known. */
function xmlRoot(xml: string): string {
  const body = xml.replace(/^<\?xml[^?]*\?>\s*/, '').replace(/<!\[CDATA\[[^]*?\]\]>/g, '')
  const stack: string[] = []
  let root = ''
  let rest = body
  while (rest.length) {
    const lt = rest.indexOf('<')
    const chars = lt < 0 ? rest : rest.slice(0, lt)
    if (/&(?!(amp|lt|gt|quot|apos|#\d+);)/.test(chars) || chars.includes(']]>')) throw new Error(`bad character data: ${chars.slice(0, 60)}`)
    if (chars.trim() && stack.length === 0) throw new Error(`text outside the root: ${chars.slice(0, 60)}`)
    if (lt < 0) break
    const tag = /^<(\/?)([A-Za-z][\w:.-]*)((?:\s+[\w:.-]+="[^"<]*")*)\s*(\/?)>/.exec(rest.slice(lt))
    if (!tag) throw new Error(`bad tag at: ${rest.slice(lt, lt + 60)}`)
    const [whole, close, name, , selfClose] = tag
    if (close) {
      if (stack.pop() !== name) throw new Error(`</${name}> closes nothing open`)
    } else {
      if (stack.length === 0 && root) throw new Error(`a second root <${name}>`)
      if (!root) root = name
      if (!selfClose) stack.push(name)
    }
    rest = rest.slice(lt + whole.length)
  }
  if (stack.length) throw new Error(`<${stack.pop()}> is never closed`)
  return root
}

const columns = (text: string) => Math.max(...text.split('\n').map((l) => [...l].length))

test('host-gw: show fits 100 columns and names every pod with its IP, each bridge address and the routes; --svg is an SVG with every pod', () => {
  assert.is(lab('up', '--pods', '2').code, 0)
  const svg = join(TMP, `show-${process.pid}.svg`)
  const r = lab('show', '--svg', svg)
  assert.is(r.code, 0, r.stderr)
  assert.ok(columns(r.stdout) <= 100, r.stdout)
  const state = JSON.parse(readFileSync(STATE, 'utf8'))
  for (const node of state.nodes) {
    for (const pod of node.pods) assert.match(r.stdout, new RegExp(`${pod.ips[0].replaceAll('.', '\\.')}\\s.*\\b${pod.name}\\b`))
    const [cni0] = JSON.parse(must(['ip', '-n', node.ns, '-j', 'addr', 'show', 'dev', 'cni0']))
    const bridge = cni0.addr_info.find((a: any) => a.family === 'inet')
    assert.ok(r.stdout.includes(`cni0 ${bridge.local}/${bridge.prefixlen}`), r.stdout)
    for (const route of JSON.parse(must(['ip', '-n', node.ns, '-j', 'route', 'show', 'proto', '211']))) {
      assert.ok(r.stdout.includes(`${route.dst} via ${route.gateway} dev eth0`), r.stdout)
    }
  }
  const picture = readFileSync(svg, 'utf8')
  assert.is(xmlRoot(picture), 'svg')
  for (const pod of state.nodes.flatMap((n: any) => n.pods)) {
    assert.ok(picture.includes(`>${pod.name}<`), pod.name)
    assert.ok(picture.includes(pod.ips[0]), pod.ips[0])
  }

  // Drawn from the kernel, not the state file: a route lost behind the lab's back is gone from the picture.
  must(['ip', '-n', `${PREFIX}node1`, 'route', 'del', '10.200.2.0/24', 'proto', '211'])
  const after = lab('show').stdout
  assert.not.ok(after.includes('10.200.2.0/24 via'), after)
  assert.match(after, /no routes to the other nodes/)
  assert.ok(after.includes('10.200.1.0/24 via 192.0.2.11 dev eth0 → node1'), after)
})

test('vxlan: show names kube-cni.1 with its fdb entry and its routes; the SVG holds kube-cni.1 and parses', () => {
  assert.is(lab('up', '--pods', '1', '--backend', 'vxlan').code, 0)
  const svg = join(TMP, `show-vx-${process.pid}.svg`)
  const r = lab('show', '--svg', svg)
  assert.is(r.code, 0, r.stderr)
  assert.ok(columns(r.stdout) <= 100, r.stdout)
  assert.match(r.stdout, /backend vxlan/)
  assert.match(r.stdout, /kube-cni\.1 vxlan id 1 local 192\.0\.2\.11/)
  assert.match(r.stdout, /fdb \S+ dst 198\.51\.100\.12 → node2/)
  assert.match(r.stdout, /10\.200\.2\.0\/24 via 10\.200\.2\.0 dev kube-cni\.1 → node2/)
  const picture = readFileSync(svg, 'utf8')
  assert.is(xmlRoot(picture), 'svg')
  assert.ok(picture.includes('kube-cni.1'))
  for (const pod of ['n1-p1', 'n2-p1']) assert.ok(picture.includes(`>${pod}<`), pod)
})

test('no lab running: show says so and how to start one, without a stack trace; a wrong argument prints the usage', () => {
  lab('down')
  const r = lab('show')
  assert.is(r.code, 1)
  assert.match(r.stderr, /no lab is running .*kube-cni lab up/)
  assert.not.match(r.stderr, /at .*\.ts:\d+/)
  const wrong = lab('show', '--svgg', 'x')
  assert.is(wrong.code, 1)
  assert.match(wrong.stderr, /--svgg[^]*usage: kube-cni lab show \[--svg FILE\]/)
  assert.match(lab('show', '--help').stdout, /^usage: kube-cni lab show/)
})

test.run()
