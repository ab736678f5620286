// The routes agent against the stand-in API server with 2,000 Nodes: `kube-cni routes --watch` lists once,
// then follows watch events into the node netns's kernel, relists once after a 410, and answers /healthz,
// /readyz and /metrics. The stand-in runs inside the node netns, where the agent reaches it on loopback.
import { type ChildProcess, spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { suite } from 'uvu'
import * as assert from 'uvu/assert'
import { type Control, simNode, startApiServerIn } from '../helpers/apiserver.ts'
import { Node, PLUGIN, TMP, cleanupAll, ipj, must, newNetns, nsPath } from '../helpers/cluster.ts'
import { sleep } from 'zx'

const PEERS = 2000
const METRICS = '127.0.0.1:9101'

const ctx: { node?: Node; api?: Control; agent?: ChildProcess; log: string } = { log: '' }
const test = suite('routes agent')

/** GET from the agent's metrics address, which is on the node netns's loopback. */
function get(ns: string, path: string, addr = METRICS): { status: number; body: string } {
  const script = `fetch('http://${addr}${path}').then(async (r) => process.stdout.write(JSON.stringify({ status: r.status, body: await r.text() })), (e) => process.stdout.write(JSON.stringify({ status: 0, body: String(e) })))`
  return JSON.parse(must(['nsenter', `--net=${nsPath(ns)}`, process.execPath, '-e', script]))
}

/** The value of one sample of /metrics, e.g. metric(text, 'kube_cni_routes{backend="host-gw"}'). */
function metric(text: string, sample: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${sample} `))
  return line === undefined ? undefined : Number(line.slice(sample.length + 1))
}

async function until(what: string, cond: () => boolean | Promise<boolean>, deadlineMs = 120_000): Promise<void> {
  const end = Date.now() + deadlineMs
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`${what}: not within ${deadlineMs / 1000}s; the agent said:\n${ctx.log.slice(-2000)}`)
    await sleep(100)
  }
}

const kubeRoutes = () => ipj(ctx.node!.ns, 'route', 'show', 'proto', '211') as { dst: string; gateway: string }[]
const hasRoute = (i: number) => kubeRoutes().some((r) => r.dst === simNode(i).spec.podCIDR && r.gateway === simNode(i).status.addresses[0].address)
const lists = async () => (await ctx.api!.stats()).requests.filter((r) => r === 'GET /api/v1/nodes').length

test.before(async () => {
  // node-0 is this node: 172.16.0.1 on a /16 with all its peers, podCIDR 10.0.0.0/24.
  const node = (ctx.node = new Node({ network: '10.0.0.0/8', subnet: '10.0.0.0/24' }))
  const lan = newNetns('lan') // the other end of the node's link: the peers' network, with no peers on it
  must(['ip', '-n', node.ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', lan])
  must(['ip', '-n', lan, 'link', 'set', 'eth0', 'up'])
  must(['ip', '-n', node.ns, 'addr', 'add', '172.16.0.1/16', 'dev', 'eth0'])
  must(['ip', '-n', node.ns, 'link', 'set', 'eth0', 'up'])
  const hostile = { metadata: { name: 'node-evil' }, spec: { podCIDR: '0.0.0.0/0' }, status: { addresses: [{ type: 'InternalIP', address: '172.16.255.1' }] } }
  const items = [...Array.from({ length: PEERS }, (_, i) => simNode(i)), hostile]
  ctx.api = await startApiServerIn(node.ns, join(TMP, `${node.ns}-api`), { items })
  const conflist = join(TMP, `${node.ns}.conflist`)
  const { type, ...conf } = node.conf
  writeFileSync(conflist, JSON.stringify({ cniVersion: '1.0.0', name: node.conf.name, plugins: [{ type, ...conf }] }))
  await node.addPod('p1') // one address of the pool in use, for the IPAM metrics
  const args = ['routes', '--node', 'node-0', '--kubeconfig', join(TMP, `${node.ns}-api`, 'kubeconfig'), '--conflist', conflist, '--watch', '--metrics-addr', METRICS]
  ctx.agent = spawn('nsenter', [`--net=${nsPath(node.ns)}`, PLUGIN, ...args], { stdio: ['ignore', 'ignore', 'pipe'] })
  ctx.agent.stderr!.on('data', (d) => (ctx.log += d))
})

test.after(() => {
  ctx.agent?.kill('SIGKILL')
  ctx.api?.close()
  cleanupAll()
})

test('lists once, routes every peer, skips the hostile Node, and is ready', async () => {
  await until('a route for each of the 1,999 peers', () => kubeRoutes().length === PEERS - 1)
  assert.ok(hasRoute(1) && hasRoute(PEERS - 1))
  await until('/readyz answers 200', () => get(ctx.node!.ns, '/readyz').status === 200)
  assert.match(ctx.log, /skipped node-evil: podCIDR 0\.0\.0\.0\/0 is a default route/)
  assert.is(await lists(), 1)
})

test('a node added by a watch event gets its route; a deleted node loses it', async () => {
  await ctx.api!.add(simNode(PEERS))
  await until('the new node\'s route', () => hasRoute(PEERS))
  await ctx.api!.remove('node-7')
  await until('the deleted node\'s route gone', () => !hasRoute(7))
  assert.is(kubeRoutes().length, PEERS - 1)
  assert.is(await lists(), 1, 'events, not lists')
})

test('a Node update that changes nothing routes depend on (a kubelet\'s status) causes no reconcile', async () => {
  const reconciles = () => metric(get(ctx.node!.ns, '/metrics').body, 'kube_cni_reconciles_total') ?? -1
  const before = reconciles()
  const heartbeat = simNode(5)
  heartbeat.status.conditions = [{ type: 'Ready', status: 'True', lastHeartbeatTime: new Date().toISOString() }]
  await ctx.api!.add(heartbeat)
  await sleep(1000) // ten times the debounce: a reconcile would have started
  await ctx.api!.add(simNode(PEERS + 1))
  await until('the next real change routed', () => hasRoute(PEERS + 1))
  await ctx.api!.remove(`node-${PEERS + 1}`)
  await until('and its route gone again', () => !hasRoute(PEERS + 1))
  assert.is(reconciles(), before + 2, 'one reconcile for each real change, none for the status update')
})

test('a 410 leads to one relist, and the table is correct after it', async () => {
  // A route lost meanwhile (by hand here): only the reconcile after the relist can bring it back.
  must(['ip', '-n', ctx.node!.ns, 'route', 'del', simNode(3).spec.podCIDR, 'proto', '211'])
  const before = (await ctx.api!.stats()).watches
  await ctx.api!.expire()
  await until('the route back after the relist', () => hasRoute(3))
  const want = [...Array.from({ length: PEERS + 1 }, (_, i) => i).filter((i) => i !== 0 && i !== 7)].map((i) => simNode(i).spec.podCIDR).sort()
  assert.equal(kubeRoutes().map((r) => r.dst).sort(), want)
  assert.is(await lists(), 2, 'one list, one relist')
  await until('a new watch after the relist', async () => (await ctx.api!.stats()).watches > before)
  assert.match(ctx.log, /410/)
})

test('/healthz, /readyz and /metrics', async () => {
  const ns = ctx.node!.ns
  assert.equal(get(ns, '/healthz'), { status: 200, body: 'ok\n' })
  assert.equal(get(ns, '/readyz'), { status: 200, body: 'ok\n' })
  const { status, body } = get(ns, '/metrics')
  assert.is(status, 200)
  assert.ok((metric(body, 'kube_cni_reconciles_total') ?? 0) >= 3, body)
  assert.is(metric(body, 'kube_cni_reconcile_errors_total'), 0)
  assert.ok((metric(body, 'kube_cni_last_success_timestamp_seconds') ?? 0) > Date.now() / 1000 - 600)
  assert.is(metric(body, 'kube_cni_routes{backend="host-gw"}'), PEERS - 1)
  assert.is(metric(body, 'kube_cni_skipped_nodes{reason="default_route"}'), 1)
  assert.is(metric(body, 'kube_cni_watch_lists_total'), 2)
  assert.is(metric(body, 'kube_cni_watch_relists_total'), 1)
  assert.ok((metric(body, 'kube_cni_watch_restarts_total') ?? 0) >= 1)
  assert.is(metric(body, 'kube_cni_ipam_pool_size{subnet="10.0.0.0/24"}'), 253)
  assert.is(metric(body, 'kube_cni_ipam_used_addresses{subnet="10.0.0.0/24"}'), 1)
  assert.match(body, /# TYPE kube_cni_reconciles_total counter\n/)
  assert.is(get(ns, '/nothing').status, 404)
})

test('/readyz is 503 until a reconcile succeeds', async () => {
  // An agent told a name the cluster does not know never reconciles; it shares the netns, so another port.
  const ns = ctx.node!.ns
  const other = spawn('nsenter', [`--net=${nsPath(ns)}`, PLUGIN, 'routes', '--node', 'nobody', '--network', '10.0.0.0/8', '--kubeconfig',
    join(TMP, `${ns}-api`, 'kubeconfig'), '--watch', '--metrics-addr', '127.0.0.1:9102'], { stdio: 'ignore' })
  try {
    const ask = (path: string) => get(ns, path, '127.0.0.1:9102')
    await until('the second agent answers', () => ask('/healthz').status === 200)
    await until('its first reconcile failed', () => /kube_cni_reconcile_errors_total [1-9]/.test(ask('/metrics').body ?? ''))
    const ready = ask('/readyz')
    assert.is(ready.status, 503)
    assert.match(ready.body, /no reconcile has succeeded yet/)
  } finally {
    other.kill('SIGKILL')
  }
})

test('polling: a NodeList that cannot be read is a failed reconcile, and /readyz says so', async () => {
  const ns = ctx.node!.ns
  const missing = join(TMP, `${ns}-no-such-nodes.json`)
  const poller = spawn('nsenter', [`--net=${nsPath(ns)}`, PLUGIN, 'routes', '--node', 'node-0', '--network', '10.0.0.0/8', '--nodes-json', missing,
    '--watch', '1', '--metrics-addr', '127.0.0.1:9103'], { stdio: 'ignore' })
  try {
    const ask = (path: string) => get(ns, path, '127.0.0.1:9103')
    await until('a failed poll counted', () => (metric(ask('/metrics').body ?? '', 'kube_cni_reconcile_errors_total') ?? 0) >= 1)
    assert.equal(ask('/readyz').status, 503)
    assert.match(ask('/readyz').body, /no reconcile has succeeded yet \(\d+ failed\)/)
  } finally {
    poller.kill('SIGKILL')
  }
})

test.run()
