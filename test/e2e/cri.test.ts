// The CRI path, as a kubelet drives it: gRPC RuntimeService calls (test/helpers/cri.ts) to containerd 1.6's CRI
// plugin, which runs go-cni → libcni → kube-cni chained with the reference portmap. containerd runs in a node
// netns of the test's own (test/helpers/containerd.ts); everything is checked in the kernel (addresses, veths,
// ping, HTTP) and in kube-cni's IPAM store.
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { Node, cleanupAll, nsPath, sh } from '../helpers/cluster.ts'
import { Containerd, kubeCniConflist, missingTools } from '../helpers/containerd.ts'
import { CriError, type PodSandboxConfig } from '../helpers/cri.ts'
import { writeConflist } from '../helpers/libcni.ts'
import { clientOf } from '../helpers/topology.ts'
import { sleep } from 'zx'

const missing = missingTools()
if (missing.length) {
  console.error(`\n!!! SKIPPING the CRI tests: packages ${missing.join(', ')} not installed (apt-get install ${missing.join(' ')})\n`)
  if (process.env.CI) throw new Error(`CRI tests cannot run in CI: packages ${missing.join(', ')} missing`)
}

const started: Containerd[] = []
async function containerd(node: Node, opts: Parameters<typeof Containerd.start>[1] = {}): Promise<Containerd> {
  const c = await Containerd.start(node, opts)
  started.push(c)
  return c
}

test.after.each(async () => {
  try {
    for (const c of started.splice(0)) await c.stop()
  } finally {
    cleanupAll()
  }
})

/** The IPs kube-cni has reserved on the node (the IPAM store's files). */
function reserved(node: Node): string[] {
  const dir = join(String(node.conf.dataDir), String(node.conf.name))
  return existsSync(dir) ? readdirSync(dir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)).sort() : []
}

/** The pods' host-side veths (the node's eth0 to a client is a veth too). */
const veths = (node: Node): string[] => node.ip('link', 'show', 'type', 'veth').map((l: any) => l.ifname).filter((n: string) => n.startsWith('veth')).sort()

/** The IPv4 addresses on eth0 inside a sandbox's netns (a path). */
function addrsIn(netns: string): string[] {
  const links = JSON.parse(sh(['nsenter', `--net=${netns}`, 'ip', '-j', '-4', 'addr', 'show', 'dev', 'eth0']).stdout || '[]')
  return links.flatMap((l: any) => l.addr_info.map((a: any) => `${a.local}/${a.prefixlen}`))
}

const pingFrom = (netns: string, ip: string) => sh(['nsenter', `--net=${netns}`, 'ping', '-c', '1', '-W', '2', ip]).code === 0

async function podIP(c: Containerd, id: string): Promise<string> {
  const { status } = await c.cri.podSandboxStatus(id)
  assert.is(status.state, 'SANDBOX_READY')
  return status.network?.ip ?? ''
}

const kubeCniLog = (node: Node) => (existsSync(String(node.conf.logFile)) ? readFileSync(String(node.conf.logFile), 'utf8') : '')

async function waitFor(what: string, ok: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(250)
  }
}

test('Status: NetworkReady is false while conf_dir is empty, true once kube-cni\'s conflist is there', async () => {
  if (missing.length) return
  const node = new Node()
  const c = await containerd(node, { conflist: null })
  const before = await c.cri.status()
  assert.ok(before.RuntimeReady.status)
  assert.not.ok(before.NetworkReady.status, 'no conflist yet')
  assert.is(before.NetworkReady.reason, 'NetworkPluginNotReady')
  writeConflist(c.confDir, kubeCniConflist(node))
  // containerd watches conf_dir, as it does when a DaemonSet's init container installs the conflist.
  await waitFor('NetworkReady', async () => (await c.cri.status()).NetworkReady.status)
  const v = await c.cri.version()
  assert.is(v.runtime_name, 'containerd')
  assert.is(v.runtime_api_version, 'v1')
})

test('RunPodSandbox: three pods, one with a hostPort through portmap; IPs in PodSandboxStatus and each netns; pod to pod, node to pod, a container serving another', async () => {
  if (missing.length) return
  const node = new Node()
  const client = clientOf(node)
  const c = await containerd(node)
  const web = c.podConfig('web', { portMappings: [{ protocol: 'TCP', container_port: 80, host_port: 8080 }] })
  const pods: [PodSandboxConfig, string][] = []
  for (const cfg of [web, c.podConfig('client'), c.podConfig('third')]) pods.push([cfg, await c.runPod(cfg)])
  const ips: string[] = []
  for (const [cfg, id] of pods) {
    const ip = await podIP(c, id)
    assert.match(ip, /^10\.200\.1\.\d+$/, `${cfg.metadata.name} has an address from the node's podCIDR`)
    const netns = await c.netnsOf(id)
    assert.equal(addrsIn(netns), [`${ip}/24`], `${cfg.metadata.name}'s eth0 has the IP the CRI reports`)
    ips.push(ip)
  }
  assert.is(new Set(ips).size, 3)
  assert.equal(reserved(node), [...ips].sort())
  assert.is(veths(node).length, 3)

  const nsA = await c.netnsOf(pods[0][1])
  for (const ip of ips.slice(1)) assert.ok(pingFrom(nsA, ip), `pod to pod: web → ${ip}`)
  for (const ip of ips) assert.ok(pingFrom(nsPath(node.ns), ip), `node to pod: ${ip}`)

  await c.runContainer(pods[0][1], web, { metadata: { name: 'httpd' }, command: ['httpd', '-f', '-p', '80', '-h', '/www'] })
  const [clientCfg, clientId] = pods[1]
  const wget = await c.runContainer(clientId, clientCfg, { metadata: { name: 'wget' }, command: ['wget', '-qO-', `http://${ips[0]}/`] })
  const st = await c.waitExited(wget)
  assert.is(st.exit_code, 0, c.containerLog(clientCfg, 'wget'))
  assert.match(c.containerLog(clientCfg, 'wget'), /stdout F hello from kube-cni/, 'the client container got the page from the web container')

  // The hostPort, from a host outside the node: the CRI passed portMappings to portmap, which DNATs to web.
  const get = `require('http').get('http://192.0.2.1:8080/', (r) => r.pipe(process.stdout)).on('error', (e) => { console.error(e.message); process.exit(1) })`
  const page = sh(['nsenter', `--net=${nsPath(client)}`, process.execPath, '-e', get])
  assert.is(page.stdout, 'hello from kube-cni\n', page.stderr)
})

test('StopPodSandbox then RemovePodSandbox: a DEL for each (the second without a netns), every IP and veth freed', async () => {
  if (missing.length) return
  const node = new Node()
  const c = await containerd(node)
  const a = await c.runPod(c.podConfig('a'))
  const b = await c.runPod(c.podConfig('b'))
  const ipB = await podIP(c, b)
  const nsA = await c.netnsOf(a)
  assert.is(reserved(node).length, 2)

  await c.cri.stopPodSandbox(a)
  assert.equal(reserved(node), [ipB], 'Stop freed a\'s IP')
  assert.is(veths(node).length, 1, 'Stop removed a\'s veth')
  assert.not.ok(existsSync(nsA), 'containerd removed a\'s netns at Stop, so the next DEL has no CNI_NETNS')
  const dels = () => kubeCniLog(node).split('\n').filter((l) => l.includes(`DEL ${a}/eth0`))
  assert.is(dels().length, 1)
  assert.match(dels()[0], /: ok/)

  await c.cri.removePodSandbox(a)
  assert.is(dels().length, 2, 'Remove sent a second DEL')
  assert.match(dels()[1], /: ok/, 'the DEL without a netns succeeded')
  assert.equal(reserved(node), [ipB])

  await c.cri.stopPodSandbox(b)
  await c.cri.removePodSandbox(b)
  assert.equal(reserved(node), [], 'every IP is free')
  assert.equal(veths(node), [], 'every veth is gone')
  assert.equal(await c.cri.listPodSandbox(), [])
  assert.not.match(kubeCniLog(node), / ERROR /)
})

test('containerd restart with pods alive: sandboxes, IPs and traffic survive; new pods and removal still work', async () => {
  if (missing.length) return
  const node = new Node()
  const c = await containerd(node)
  const web = c.podConfig('web')
  const webId = await c.runPod(web)
  await c.runContainer(webId, web, { metadata: { name: 'httpd' }, command: ['httpd', '-f', '-p', '80', '-h', '/www'] })
  const cli = c.podConfig('cli')
  const cliId = await c.runPod(cli)
  const sleeper = await c.runContainer(cliId, cli, { metadata: { name: 'sleep' }, command: ['sleep', '999999'] })
  const ipWeb = await podIP(c, webId)
  const ipCli = await podIP(c, cliId)

  await c.restart()
  assert.ok((await c.cri.status()).NetworkReady.status)
  assert.is(await podIP(c, webId), ipWeb, 'web kept its IP through the restart')
  assert.is(await podIP(c, cliId), ipCli)
  const fetch = await c.cri.execSync(sleeper, ['wget', '-qO-', `http://${ipWeb}/`])
  assert.is(fetch.exit_code, 0, fetch.stderr)
  assert.is(fetch.stdout, 'hello from kube-cni\n', 'pod to pod after the restart')

  const third = await c.runPod(c.podConfig('after'))
  const ipThird = await podIP(c, third)
  assert.not.ok([ipWeb, ipCli].includes(ipThird), 'a pod made after the restart gets a fresh IP')
  assert.ok(pingFrom(nsPath(node.ns), ipThird))
  assert.equal(reserved(node), [ipWeb, ipCli, ipThird].sort())

  for (const id of [webId, cliId, third]) {
    await c.cri.stopPodSandbox(id)
    await c.cri.removePodSandbox(id)
  }
  assert.equal(reserved(node), [], 'pods made before the restart are freed by DELs after it')
  assert.equal(veths(node), [])
})

test('pool exhausted: RunPodSandbox fails with kube-cni\'s message, nothing leaks, a freed IP is used again', async () => {
  if (missing.length) return
  const node = new Node({ subnet: '10.200.1.0/29' })
  const c = await containerd(node)
  const ids: string[] = []
  let failure: unknown
  for (let i = 0; i < 10 && !failure; i++) {
    try {
      ids.push(await c.runPod(c.podConfig(`p${i}`)))
    } catch (e) {
      failure = e
    }
  }
  assert.ok(failure instanceof CriError, `a /29 never ran out: ${ids.length} pods`)
  const err = failure as CriError
  assert.match(err.details, /plugin type="kube-cni".*failed \(add\)/, err.details)
  assert.match(err.details, /no free IP address in 10\.200\.1\.0\/29: all \d+ are reserved/, err.details)
  assert.ok(ids.length >= 4, `${ids.length} pods fit in a /29`)
  const ips = (await Promise.all(ids.map((id) => podIP(c, id)))).sort()
  assert.equal(reserved(node), ips, 'the failed pod left no reservation')
  assert.is(veths(node).length, ids.length, 'the failed pod left no veth')
  assert.is((await c.cri.listPodSandbox()).length, ids.length, 'containerd dropped the failed sandbox')

  const freed = await podIP(c, ids[0])
  await c.cri.stopPodSandbox(ids[0])
  await c.cri.removePodSandbox(ids[0])
  const again = await c.runPod(c.podConfig('again'))
  assert.is(await podIP(c, again), freed, 'the one free IP went to the next pod')
})

test('20 concurrent RunPodSandbox calls: 20 distinct IPs, 20 veths, all reachable, all freed', async () => {
  if (missing.length) return
  const node = new Node()
  const c = await containerd(node)
  const ids = await Promise.all(Array.from({ length: 20 }, (_, i) => c.runPod(c.podConfig(`c${i}`))))
  const ips = await Promise.all(ids.map((id) => podIP(c, id)))
  assert.is(new Set(ips).size, 20, 'no IP was given twice')
  assert.equal(reserved(node), [...ips].sort())
  assert.is(veths(node).length, 20)
  for (const [k, id] of ids.entries()) assert.equal(addrsIn(await c.netnsOf(id)), [`${ips[k]}/24`])
  const unreachable = ips.filter((ip) => !pingFrom(nsPath(node.ns), ip))
  assert.equal(unreachable, [], 'node to every pod')

  await Promise.all(ids.map(async (id) => {
    await c.cri.stopPodSandbox(id)
    await c.cri.removePodSandbox(id)
  }))
  assert.equal(reserved(node), [])
  assert.equal(veths(node), [])
  assert.not.match(kubeCniLog(node), / ERROR /)
})

test.run()
