// Real containers: podman 4.3 with its CNI backend runs busybox containers on kube-cni, chained with the
// reference portmap, inside a node netns of this test's own. Private containers.conf and storage.conf under
// a temp dir; the image is built here (test/helpers/oci.ts), so no registry is involved.
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { Node, TMP, cleanupAll, nsPath, sh } from '../helpers/cluster.ts'
import { clientOf } from '../helpers/topology.ts'
import { binDir, writeConflist } from '../helpers/libcni.ts'
import { BUSYBOX, IMAGE, buildImage } from '../helpers/oci.ts'

const missing = ['podman', 'runc'].filter((t) => sh(['which', t]).code !== 0).concat(existsSync(BUSYBOX) ? [] : ['busybox-static'])
if (missing.length) {
  console.error(`\n!!! SKIPPING the podman tests: ${missing.join(', ')} not installed (apt-get install podman runc busybox-static)\n`)
  if (process.env.CI) throw new Error(`podman tests cannot run in CI: ${missing.join(', ')} missing`)
}

test.after.each(cleanupAll)

test('podman: A serves HTTP with a hostPort, B pings and fetches it, the node port reaches A, rm -f frees the IP', async () => {
  if (missing.length) return
  const node = new Node()
  const dir = join(TMP, 'podman')
  mkdirSync(join(dir, 'store'), { recursive: true })
  const { cniVersion: _v, name: _n, type: _t, ...kube } = node.conf
  const confDir = writeConflist(join(dir, 'net.d'), {
    cniVersion: '1.0.0',
    name: 'kubecni',
    plugins: [{ type: 'kube-cni', ...kube }, { type: 'portmap', capabilities: { portMappings: true }, snat: true }],
  })
  writeFileSync(join(dir, 'containers.conf'), `[containers]
# runc fails with "error setting rlimit" here without explicit limits.
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[network]
network_backend = "cni"
cni_plugin_dirs = ["${binDir()}"]
network_config_dir = "${confDir}"

[engine]
# No systemd on this machine.
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "${join(dir, 'events.log')}"
runtime = "runc"
tmp_dir = "${join(dir, 'libpod')}"
`)
  writeFileSync(join(dir, 'storage.conf'), `[storage]
driver = "vfs"
runroot = "${join(dir, 'store', 'run')}"
graphroot = "${join(dir, 'store', 'root')}"
`)
  const env = { ...process.env, CONTAINERS_CONF: join(dir, 'containers.conf'), CONTAINERS_STORAGE_CONF: join(dir, 'storage.conf') }
  // podman runs in the node netns, as a kubelet's runtime would; not in a private mount namespace, because
  // later podman calls must see the netns mounts that earlier ones made.
  const podman = (...args: string[]) => {
    const r = spawnSync('nsenter', [`--net=${nsPath(node.ns)}`, 'podman', ...args], { env, encoding: 'utf8', timeout: 120_000 })
    return { code: r.status ?? 1, out: `${r.stdout ?? ''}${r.stderr ?? ''}`, stdout: (r.stdout ?? '').trim() }
  }
  const reserved = () => readdirSync(join(String(node.conf.dataDir), 'kubecni')).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f))
  try {
    const load = podman('load', '-i', buildImage(join(dir, 'image')))
    assert.is(load.code, 0, load.out)

    const run = podman('run', '-d', '--name', 'A', '--network', 'kubecni', '-p', '8080:80', IMAGE, 'httpd', '-f', '-p', '80', '-h', '/www')
    assert.is(run.code, 0, run.out)
    const ipA = podman('inspect', 'A', '--format', '{{.NetworkSettings.Networks.kubecni.IPAddress}}').stdout
    assert.match(ipA, /^10\.200\.1\.\d+$/, 'A got an address from the node\'s subnet')
    assert.equal(reserved(), [ipA])
    // The netns podman made for A, by its own path: the machine's other netns come and go as they will.
    const sandboxA = podman('inspect', 'A', '--format', '{{.NetworkSettings.SandboxKey}}').stdout
    assert.match(sandboxA, /^\/(var\/)?run\/netns\/\S+$/)
    const idA = podman('inspect', 'A', '--format', '{{.Id}}').stdout
    const runcIds = () => sh(['runc', 'list', '-q']).stdout.split('\n')
    assert.ok(runcIds().includes(idA), 'runc lists A while it runs')

    const b = podman('run', '--rm', '--network', 'kubecni', IMAGE, 'sh', '-c', `ping -c 1 -W 2 ${ipA} && wget -qO- http://${ipA}/`)
    assert.is(b.code, 0, b.out)
    assert.match(b.out, /1 packets received/)
    assert.match(b.out, /hello from kube-cni/)
    assert.equal(reserved(), [ipA], 'B\'s address was released when it exited')

    // The node's port 8080, from a client on the node's network, reaches A through portmap.
    const client = clientOf(node)
    const get = `require('http').get('http://192.0.2.1:8080/', (r) => r.pipe(process.stdout)).on('error', (e) => { console.error(e.message); process.exit(1) })`
    const page = sh(['nsenter', `--net=${nsPath(client)}`, process.execPath, '-e', get])
    assert.is(page.stdout, 'hello from kube-cni\n', page.stderr)

    const rm = podman('rm', '-f', 'A')
    assert.is(rm.code, 0, rm.out)
    assert.equal(reserved(), [], 'rm -f A released its IP')
    assert.equal(node.ip('link', 'show', 'type', 'veth').filter((l: any) => l.ifname.startsWith('veth')), [])
    assert.not.ok(existsSync(sandboxA), `podman removed A's netns ${sandboxA}`)
    assert.is(podman('ps', '-aq').stdout, '', 'no container left')
    assert.not.ok(runcIds().includes(idA), 'no runc state left for A')
  } finally {
    podman('rm', '-af')
  }
})

test.run()
