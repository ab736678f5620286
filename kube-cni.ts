#!/usr/bin/env -S npx tsx
// kube-cni: a Kubernetes bridge CNI plugin. It is the bash "write your own CNI plugin" script, step for step,
// made correct: the container runtime execs it with CNI_* variables and the network config (the netconf) on
// stdin; it answers with one JSON document on stdout. Logs go to the log file and stderr.
//
//   ADD    read the netconf -> ensure the bridge cni0 -> allocate an IP (IPAM) -> create the veth with its pod
//          end inside the sandbox as CNI_IFNAME -> attach the host end to cni0 -> address and default route
//          inside the pod -> print the result
//   DEL    the same, backwards, and tolerant of every piece that is already gone
//   CHECK  compare prevResult with what the kernel and the IPAM store really hold
//   GC, STATUS, VERSION: see below.
import { readSync } from 'node:fs'
import {
  CniError,
  Code,
  type Invocation,
  LATEST_VERSION,
  SUPPORTED_VERSIONS,
  encodeError,
  encodeResult,
  printJSON,
  readInvocation,
  versionAtLeast,
} from './lib/plugin/cni.ts'
import { killLeftovers } from './lib/plugin/exec.ts'
import { defaultRoute, formatAddress, formatCidr, normalizeCidr } from './lib/plugin/ip.ts'
import { type Attachment, LEAK_HINT, type Listed, type Owner, storeFor } from './lib/plugin/ipam.ts'
import { type PodPlan, netnsProblem, newHostVethName, readLink, readPod, setupPod, teardownPod } from './lib/plugin/link.ts'
import { configureLog, log } from './lib/plugin/log.ts'
import { MAX_STDIN, type NetConf, askedVersion, attachmentKey, decodeJSON, parseNetConf } from './lib/plugin/netconf.ts'
import { ensureNode, nodeProblems, observeNode } from './lib/plugin/node.ts'
import { version } from './package.json'

// ---- ADD -------------------------------------------------------------------------------------------------

async function cmdAdd(inv: Invocation, conf: NetConf): Promise<object> {
  requireSandbox(inv, Code.InvalidEnv)

  // The bridge, created on first use (the bash original needed `brctl addbr cni0` by hand), and with it
  // the once-per-node setup: ip_forward, FORWARD accept and the masquerade of traffic leaving the cluster,
  // checked on every ADD (a firewall reload removes them) while the pod's own steps run.
  const node = await ensureNode(conf)

  // IPAM: the record of this attachment first, then one address per family from this node's podCIDR.
  const store = storeFor(conf)
  const attachment = store.open(owner(inv))
  let made: string | undefined // the host veth, once the pod has its network
  try {
    const ips = conf.pools.map((pool) => ({ pool, ip: attachment.reserve(pool) }))

    // The veth pair into the sandbox, attached to the bridge, with the pod's address and default route.
    const { hostVeth, links } = await createVeth(inv, conf, ips, attachment)
    made = hostVeth
    // Its children are done: a pid recycled by then must not look like one to a later DEL.
    attachment.clearPids()
    await node.rules

    // The result, in the version the runtime asked for.
    return encodeResult(
      {
        interfaces: [
          { name: conf.bridge, mac: links.bridgeMac },
          { name: hostVeth, mac: links.hostVethMac, mtu: conf.mtu },
          { name: inv.ifname, mac: links.podMac, sandbox: inv.netns, mtu: conf.mtu },
        ],
        ips: ips.map(({ pool, ip }) => ({
          address: `${formatAddress(pool.family, ip)}/${pool.subnet.prefix}`,
          gateway: formatAddress(pool.family, pool.gateway),
          interface: 2,
        })),
        routes: conf.pools.map((pool) => ({ dst: defaultRoute(pool.family), gw: formatAddress(pool.family, pool.gateway) })),
        dns: {},
      },
      conf.cniVersion,
    )
  } catch (e) {
    // A failed ADD leaves no veth and no reserved IP behind (setupPod removes a veth it could not finish).
    if (made) await teardownPod(inv.netns, inv.ifname, made).catch((err) => log.error(`cannot remove ${made}: ${(err as Error).message}`))
    store.release(owner(inv))
    throw e
  } finally {
    attachment.close()
  }
}

/**
 * The host end `veth<8 hex>` is drawn at random and written to the record before it exists, so a DEL after a
 * kill finds it. A name another ADD took in between is drawn again.
 */
async function createVeth(inv: Invocation, conf: NetConf, ips: PodPlan['ips'], attachment: Attachment) {
  for (let attempt = 1; ; attempt++) {
    const hostVeth = newHostVethName()
    attachment.setHostVeth(hostVeth)
    const setup = await setupPod({ conf, netns: inv.netns, ifname: inv.ifname, hostVeth, ips }, (pid) => attachment.addPid(pid))
    if ('links' in setup) return { hostVeth, links: setup.links }
    if (attempt >= 3) throw setup.nameTaken
  }
}

// ---- DEL -------------------------------------------------------------------------------------------------

async function cmdDel(inv: Invocation, conf: NetConf): Promise<void> {
  // DEL follows the IPAM record, never the netns: the netns may be gone, and CNI_NETNS may be empty.
  const store = storeFor(conf)
  const record = store.readRecord(owner(inv))
  // An ADD killed mid-way leaves its `ip` children running: stop them before undoing their work, or one that
  // finishes later brings the veth back.
  await killLeftovers(record?.pids ?? [])
  try {
    await teardownPod(inv.netns, inv.ifname, record?.hostVeth)
  } catch (e) {
    // A pod that is gone must get its IPs back even when the kernel will not let go of its veth. The record
    // stays, so a retried DEL still knows the veth; free() only ever removes what is still this owner's.
    for (const ip of record?.ips ?? []) store.free(ip, owner(inv))
    throw e
  }
  store.release(owner(inv), record)
}

// ---- CHECK -----------------------------------------------------------------------------------------------

async function cmdCheck(inv: Invocation, conf: NetConf): Promise<void> {
  requireVersion(conf, 'CHECK', '0.4.0')
  requireSandbox(inv, Code.UnknownContainer)
  const prev = conf.prevResult
  if (!prev) throw new CniError(Code.InvalidConfig, 'CHECK needs the prevResult of the ADD in the network config')
  const fail = (msg: string) => new CniError(Code.CheckFailed, `CHECK ${inv.containerId}/${inv.ifname}: ${msg}`)

  const store = storeFor(conf)
  const record = store.readRecord(owner(inv))
  if (!record) throw fail(`no IPAM record in ${store.dir}`)
  const pod = await readPod(inv.netns, inv.ifname, conf.pools.map((p) => p.family))
  if (!pod) throw fail(`no interface ${inv.ifname} in ${inv.netns}`)
  const inKernel = new Set(pod.addresses.map(normalizeCidr))
  for (const { address: wanted } of prev.ips) {
    const ip = wanted.slice(0, wanted.indexOf('/'))
    const holder = store.ownerOf(ip)
    if (holder?.containerId !== inv.containerId || holder?.ifname !== inv.ifname) throw fail(`${ip} is not reserved for it in ${store.dir}`)
    if (!inKernel.has(wanted)) throw fail(`${wanted} is not on ${inv.ifname} (it has ${pod.addresses.join(', ') || 'none'})`)
  }
  // An empty or partial prevResult must not pass for an attachment that holds addresses.
  const listed = new Set(prev.ips.map(({ address }) => address.slice(0, address.indexOf('/'))))
  const unlisted = record.ips.filter((ip) => !listed.has(ip))
  if (unlisted.length) throw fail(`it holds ${unlisted.join(', ')}, which prevResult does not list`)
  for (const iface of prev.interfaces) {
    const where = iface.sandbox ? inv.netns : 'the host netns'
    const link = await readLink(iface.name, iface.sandbox ? inv.netns : undefined)
    if (!link) throw fail(`prevResult lists interface ${iface.name}, which is not in ${where}`)
    const mac = link.address ?? ''
    if (iface.mac && iface.mac.toLowerCase() !== mac.toLowerCase()) throw fail(`${iface.name} in ${where} has MAC ${mac}, prevResult says ${iface.mac}`)
  }
  for (const pool of conf.pools) {
    const gw = formatAddress(pool.family, pool.gateway)
    if (!pod.gateways.includes(gw)) throw fail(`no default route via ${gw} in the pod`)
  }
  const master = record.hostVeth && (await readLink(record.hostVeth))?.master
  if (master !== conf.bridge) throw fail(`host veth ${record.hostVeth} is not attached to ${conf.bridge}`)
}

// ---- GC and STATUS (CNI 1.1.0) ---------------------------------------------------------------------------

async function cmdGc(conf: NetConf): Promise<void> {
  requireVersion(conf, 'GC', '1.1.0')
  const valid = conf.validAttachments()
  const isValid = (o: Owner | null) => o !== null && valid.has(attachmentKey(o.containerId, o.ifname))

  // An attachment whose ADD is still running is not in the list yet, and is not ours to free (lib/plugin/ipam.ts,
  // Adder): it is skipped with the IPs it names, and so is an IP file an ADD may have only just created.
  const store = storeFor(conf)
  const errors: string[] = []
  const busy = new Set<string>()
  const free = async ({ owner: who, record }: Listed) => {
    try {
      await teardownPod('', who.ifname, record.hostVeth)
      store.release(who, record)
      log.info(`gc: freed ${who.containerId}/${who.ifname} (${record.ips.join(', ')})`)
    } catch (e) {
      errors.push((e as Error).message) // go on: one stuck attachment must not keep the others leaked
    }
  }
  for (const found of store.listAttachments()) {
    if (found.busy) {
      for (const ip of found.record.ips) busy.add(ip)
      log.info(`gc: left ${found.owner.containerId}/${found.owner.ifname} alone: its ADD is still running`)
    } else if (!isValid(found.owner)) await free(found)
  }
  for (const r of store.listReserved()) {
    if (isValid(r.owner) || busy.has(r.ip)) continue
    if (r.owner === null) {
      if (!store.isBeingReserved(r.ip) && store.free(r.ip, { containerId: '', ifname: '' })) log.info(`gc: freed ${r.ip}, reserved by a killed ADD`)
      continue
    }
    // An ADD that started after the listing above: free its attachment whole if it has finished, never its IP alone.
    const found = store.attachment(r.owner)
    if (found?.busy) continue
    if (found) await free(found)
    else if (store.free(r.ip, r.owner)) log.info(`gc: freed ${r.ip}, reserved by ${r.owner.containerId}/${r.owner.ifname}`)
  }
  if (errors.length) throw new CniError(Code.IOFailure, `GC could not free everything: ${errors.join('; ')}`)
}

function cmdStatus(conf: NetConf): void {
  requireVersion(conf, 'STATUS', '1.1.0')
  // Stats and one directory listing per pool, no exec: containerd 2 calls STATUS every 5 s.
  const [problem] = nodeProblems(conf, observeNode(conf))
  if (problem) throw new CniError(Code.NotAvailable, problem.msg, problem.fix)
  const store = storeFor(conf)
  for (const pool of conf.pools) {
    const used = store.countReserved(pool)
    if (used >= store.capacity(pool))
      throw new CniError(
        Code.NotAvailable,
        `no free IP address in ${formatCidr(pool.subnet)}: all ${used} are reserved`,
        LEAK_HINT,
      )
  }
}

// ---- helpers the commands share --------------------------------------------------------------------------

function owner(inv: Invocation): Owner {
  return { containerId: inv.containerId, ifname: inv.ifname }
}

function requireSandbox(inv: Invocation, code: number): void {
  // The path goes into an `ip -batch` line, so it must be one word with no quoting or comment characters.
  if (!/^\/[A-Za-z0-9_.\/:@+=-]+$/.test(inv.netns))
    throw new CniError(Code.InvalidEnv, `invalid environment variable CNI_NETNS: ${JSON.stringify(inv.netns)} is not a plain absolute path`)
  const problem = netnsProblem(inv.netns)
  if (problem)
    throw new CniError(
      code,
      `the sandbox CNI_NETNS=${inv.netns} ${problem}`,
      'the runtime must create the network namespace before ADD or CHECK and pass its path (/proc/PID/ns/net or a bind mount of it)',
    )
}

function requireVersion(conf: NetConf, command: string, min: string): void {
  if (!versionAtLeast(conf.cniVersion, min))
    throw new CniError(Code.IncompatibleVersion, `${command} needs cniVersion ${min} or later, the config has ${conf.cniVersion}`)
}

function readStdin(): string {
  const buf = Buffer.alloc(MAX_STDIN + 1)
  let n = 0
  for (;;) {
    let got: number
    try {
      got = readSync(0, buf, n, buf.length - n, null)
    } catch (e) {
      // A non-blocking stdin with nothing yet: wait a millisecond rather than spin.
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1)
        continue
      }
      if ((e as NodeJS.ErrnoException).code === 'EOF') break
      throw e
    }
    if (got === 0) break
    n += got
    if (n > MAX_STDIN) throw new CniError(Code.DecodeFailure, `the network config on stdin is larger than ${MAX_STDIN} bytes`)
  }
  return buf.toString('utf8', 0, n)
}

// ---- the dispatcher --------------------------------------------------------------------------------------

async function cni(): Promise<number> {
  const started = process.hrtime.bigint()
  let cniVersion = LATEST_VERSION
  let what = process.env.CNI_COMMAND ?? '?'
  try {
    const stdin = readStdin()
    // Errors answer in the version the config asked for, whenever it can be read at all.
    cniVersion = askedVersion(stdin) ?? cniVersion
    const inv = readInvocation(process.env)
    if (inv.command === 'VERSION') {
      if (stdin.trim()) decodeJSON(stdin)
      // Whatever the config asked, as the reference plugins' skel does: the answer is about the plugin.
      printJSON({ cniVersion: LATEST_VERSION, supportedVersions: SUPPORTED_VERSIONS })
      return 0
    }
    const conf = parseNetConf(stdin)
    const { K8S_POD_NAMESPACE: podNs, K8S_POD_NAME: podName } = inv.args
    const pod = podName ? ` pod=${podNs ? `${podNs}/` : ''}${podName}` : ''
    what = `${inv.command}${inv.containerId ? ` ${inv.containerId}/${inv.ifname}` : ''}${pod}`
    configureLog({ file: conf.logFile, level: conf.logLevel })
    let result: object | undefined
    if (inv.command === 'ADD') result = await cmdAdd(inv, conf)
    else if (inv.command === 'DEL') await cmdDel(inv, conf)
    else if (inv.command === 'CHECK') await cmdCheck(inv, conf)
    else if (inv.command === 'GC') await cmdGc(conf)
    else cmdStatus(conf)
    if (result) printJSON(result)
    const ips = result ? ` ${(result as { ips: { address: string }[] }).ips.map((i) => i.address).join(' ')}` : ''
    log.info(`${what}: ok${ips} (${elapsed(started)})`)
    return 0
  } catch (e) {
    const err = e instanceof CniError ? e : new CniError(Code.Internal, `internal error: ${(e as Error).message}`, (e as Error).stack ?? '')
    log.error(`${what}: error ${err.code}: ${err.message}${err.details ? ` (${err.details})` : ''} (${elapsed(started)})`)
    printJSON(encodeError(err, cniVersion))
    return 1
  }
}

function elapsed(since: bigint): string {
  return `${(Number(process.hrtime.bigint() - since) / 1e6).toFixed(1)}ms`
}

const USAGE = `kube-cni ${version}: a Kubernetes bridge CNI plugin

As a CNI plugin (how a container runtime calls it):
  CNI_COMMAND=ADD|DEL|CHECK|GC|STATUS|VERSION CNI_CONTAINERID=... CNI_NETNS=... CNI_IFNAME=... \\
    kube-cni < netconf.json
  Set KUBE_CNI_EXPLAIN=1 to print every kernel step as the shell line that does it by hand (=summary: one line a step).

As a command:
  kube-cni routes ...   routes to the other nodes' pods (host-gw or vxlan); kube-cni routes --help
  kube-cni lab up|down|status|check|demo [--nodes N] [--pods M] [--backend host-gw|vxlan] [--dual-stack] [--keep]
                        [--explain[=summary]]
                        a virtual cluster in network namespaces; kube-cni lab --help
  kube-cni lab scenarios | lab break SCENARIO [--node N]
                        break a running lab the way real nodes break, then let doctor find it
  kube-cni lab trace FROM TO [--port N] [--udp] [--json] [--svg FILE]
                        one probe through a running lab, hop by hop: routes, neighbours, rules hit, where it stopped;
                        TO may be a Service (svc/POD, or its ClusterIP)
  kube-cni lab show [--svg FILE]
                        a picture of the running lab, read from the kernel (and an SVG for a slide)
  kube-cni conflist --network CIDR[,CIDR] (--subnet CIDR[,CIDR] | --node NAME [--kubectl PATH]) [--out FILE]
                        the node's /etc/cni/net.d/10-kube-cni.conflist (what install.sh writes)
  kube-cni doctor [--conf FILE] [--cni-bin-dir DIR] [--node NAME] [--nodes-json FILE|- | --kubectl PATH | --kubeconfig FILE] [--json]
                        what is wrong with this node's pod network, and the command that fixes it; kube-cni doctor --help
  kube-cni --help       this text
  kube-cni --version    the version

Spec versions: ${SUPPORTED_VERSIONS.join(', ')}. Config fields: see README.md.
`

async function main(): Promise<void> {
  if (process.env.CNI_COMMAND) {
    process.exitCode = await cni()
    return
  }
  const [verb, ...rest] = process.argv.slice(2)
  // Commands other than the CNI ones load their modules only when asked, keeping ADD's start-up small.
  if (verb === 'routes') process.exitCode = await (await import('./lib/tools/routes.ts')).routesCommand(rest)
  else if (verb === 'lab') process.exitCode = await (await import('./lib/tools/lab.ts')).labCommand(rest)
  else if (verb === 'conflist') process.exitCode = await (await import('./lib/tools/conflist.ts')).conflistCommand(rest)
  else if (verb === 'doctor') process.exitCode = await (await import('./lib/tools/doctor.ts')).doctorCommand(rest)
  else if (verb === '--version') process.stdout.write(`kube-cni ${version}\n`)
  else if (verb === '--help' || verb === '-h' || verb === undefined) process.stdout.write(USAGE)
  else {
    process.stderr.write(`kube-cni: unknown command ${JSON.stringify(verb)}\n\n${USAGE}`)
    process.exitCode = 2
  }
}

main().catch((e) => {
  process.stderr.write(`kube-cni: ${(e as Error).message}\n`)
  process.exitCode = 1
})
