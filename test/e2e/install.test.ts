// install.sh, staged under --root so nothing on this machine changes, and the kind/Kubernetes manifest.
import { spawn } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { YAML } from 'zx'
import { INIT_SCRIPT, MANIFEST, ROUTES_SCRIPT } from '../../deploy/manifests.ts'
import { readNodeList } from '../../lib/kube.ts'
import { startApiServer } from '../helpers/apiserver.ts'
import { PLUGIN, ROOT, TMP, sh } from '../helpers/cluster.ts'

const INSTALL = join(ROOT, 'install.sh')
const newRoot = () => mkdtempSync(join(TMP, 'root-'))
const files = (dir: string): string[] =>
  existsSync(dir) ? readdirSync(dir, { recursive: true, withFileTypes: true }).filter((d) => d.isFile()).map((d) => join(d.path, d.name).slice(dir.length)) : []

/** Runs a command with a PATH whose first entry can hold stand-ins (kubectl). */
function runWith(argv: string[], opts: { pathDir?: string; env?: Record<string, string> } = {}) {
  const PATH = `${opts.pathDir ? `${opts.pathDir}:` : ''}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`
  const r = require('node:child_process').spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', env: { PATH, HOME: TMP, ...opts.env }, cwd: TMP })
  return { code: r.status as number, stdout: r.stdout as string, stderr: r.stderr as string }
}

/** A kubectl on PATH that answers the given `case "$*"` arms like kubectl would, and fails anything else. */
function kubectlStandIn(arms: string): string {
  const bin = mkdtempSync(join(TMP, 'kubectl-'))
  writeFileSync(join(bin, 'kubectl'), `#!/bin/sh\ncase "$*" in${arms}\n  *) exit 1 ;;\nesac\n`)
  chmodSync(join(bin, 'kubectl'), 0o755)
  return bin
}

const STAGED = ['/etc/cni/net.d/10-kube-cni.conflist', '/opt/cni/bin/kube-cni']

test('install.sh --root stages the plugin and the conflist, and the plugin answers VERSION with no node_modules', () => {
  const root = newRoot()
  const r = runWith([INSTALL, '--root', root, '--subnet', '10.200.3.0/24', '--network', '10.200.0.0/16'])
  assert.is(r.code, 0, r.stderr)
  assert.equal(files(root).sort(), STAGED)
  const conf = JSON.parse(readFileSync(join(root, STAGED[0]), 'utf8'))
  assert.equal(conf, { cniVersion: '1.0.0', name: 'k8s-pod-network', plugins: [{ type: 'kube-cni', network: '10.200.0.0/16', subnet: '10.200.3.0/24' }] })
  const bin = join(root, STAGED[1])
  assert.is(statSync(bin).mode & 0o777, 0o755)
  assert.is(readFileSync(bin, 'utf8'), readFileSync(PLUGIN, 'utf8'))
  // Run it from a directory with no node_modules anywhere above it, as /opt/cni/bin is.
  const v = require('node:child_process').spawnSync(bin, [], { cwd: root, env: { PATH: '/usr/bin:/bin', CNI_COMMAND: 'VERSION' }, input: '{"cniVersion":"1.0.0"}', encoding: 'utf8' })
  assert.is(v.status, 0, v.stderr)
  assert.is(JSON.parse(v.stdout).cniVersion, '1.0.0')
})

test('a second install.sh run leaves both files byte for byte and untouched', () => {
  const root = newRoot()
  const args = [INSTALL, '--root', root, '--subnet', '10.200.3.0/24', '--network', '10.200.0.0/16']
  assert.is(runWith(args).code, 0)
  const before = STAGED.map((f) => [readFileSync(join(root, f)), statSync(join(root, f)).mtimeMs])
  const again = runWith(args)
  assert.is(again.code, 0)
  assert.match(again.stderr, /up to date/)
  STAGED.forEach((f, i) => {
    assert.ok(readFileSync(join(root, f)).equals(before[i][0] as Buffer), f)
    assert.is(statSync(join(root, f)).mtimeMs, before[i][1], `${f} was not rewritten`)
  })
})

test('install.sh without a podCIDR refuses, says what to run, and writes nothing', () => {
  const root = newRoot()
  const r = runWith([INSTALL, '--root', root, '--network', '10.200.0.0/16', '--kubectl', join(TMP, 'no-kubectl-here')])
  assert.is.not(r.code, 0)
  assert.match(r.stderr, /kubeadm init --pod-network-cidr=10\.200\.0\.0\/16/)
  assert.match(r.stderr, /--subnet/)
  assert.equal(files(root), [])
})

test('install.sh refuses a subnet outside the network and writes nothing', () => {
  const root = newRoot()
  const r = runWith([INSTALL, '--root', root, '--subnet', '10.9.0.0/24', '--network', '10.200.0.0/16'])
  assert.is.not(r.code, 0)
  assert.match(r.stderr, /must lie inside the cluster range/)
  assert.equal(files(root), [])
})

test('install.sh learns podCIDR and podSubnet through kubectl (a stand-in script on PATH)', () => {
  const root = newRoot()
  const bin = kubectlStandIn(`
  "get node worker-7 -o jsonpath={.spec.podCIDRs}") echo '["10.200.7.0/24"]' ;;
  *"configmap kubeadm-config"*) printf 'apiVersion: kubeadm.k8s.io/v1beta3\\nnetworking:\\n  podSubnet: 10.200.0.0/16\\n  serviceSubnet: 10.96.0.0/12\\n' ;;`)
  const r = runWith([INSTALL, '--root', root, '--node', 'worker-7'], { pathDir: bin })
  assert.is(r.code, 0, r.stderr)
  const conf = JSON.parse(readFileSync(join(root, STAGED[0]), 'utf8'))
  assert.is(conf.plugins[0].subnet, '10.200.7.0/24')
  assert.is(conf.plugins[0].network, '10.200.0.0/16')
})

test('install.sh writes the dual-stack form when the node has two podCIDRs', () => {
  const root = newRoot()
  const bin = kubectlStandIn(`
  "get node ds-1 -o jsonpath={.spec.podCIDRs}") echo '["10.200.5.0/24","fd00:200:0:5::/64"]' ;;`)
  const r = runWith([INSTALL, '--root', root, '--node', 'ds-1', '--network', '10.200.0.0/16,fd00:200::/56'], { pathDir: bin })
  assert.is(r.code, 0, r.stderr)
  const [plugin] = JSON.parse(readFileSync(join(root, STAGED[0]), 'utf8')).plugins
  assert.equal(plugin, { type: 'kube-cni', networks: ['10.200.0.0/16', 'fd00:200::/56'], subnets: ['10.200.5.0/24', 'fd00:200:0:5::/64'] })
})

test('install.sh adds portmap to the conflist when the bin dir has it', () => {
  const root = newRoot()
  mkdirSync(join(root, 'opt/cni/bin'), { recursive: true })
  writeFileSync(join(root, 'opt/cni/bin/portmap'), '')
  assert.is(runWith([INSTALL, '--root', root, '--subnet', '10.200.3.0/24', '--network', '10.200.0.0/16']).code, 0)
  const conf = JSON.parse(readFileSync(join(root, STAGED[0]), 'utf8'))
  assert.equal(conf.plugins.map((p: any) => p.type), ['kube-cni', 'portmap'])
})

test('install.sh without Node.js, or with one older than 18, says what to install and writes nothing', () => {
  const root = newRoot()
  const args = ['--root', root, '--subnet', '10.200.3.0/24', '--network', '10.200.0.0/16']
  // A PATH with the few tools install.sh needs before its Node.js check, and no node.
  const bare = mkdtempSync(join(TMP, 'bare-'))
  for (const tool of ['dirname']) symlinkSync(`/usr/bin/${tool}`, join(bare, tool))
  const none = require('node:child_process').spawnSync('/bin/bash', [INSTALL, ...args], { encoding: 'utf8', env: { PATH: bare } })
  assert.is.not(none.status, 0)
  assert.match(none.stderr, /needs Node\.js >= 18 .* no 'node' on PATH.*apt-get install -y nodejs/)
  const old = mkdtempSync(join(TMP, 'node16-'))
  writeFileSync(join(old, 'node'), '#!/bin/sh\ncase "$1" in --version) echo v16.20.2 ;; *) echo 16 ;; esac\n')
  chmodSync(join(old, 'node'), 0o755)
  const r = runWith([INSTALL, ...args], { pathDir: old })
  assert.is.not(r.code, 0)
  assert.match(r.stderr, /needs Node\.js >= 18, this node has v16\.20\.2/)
  assert.equal(files(root), [])
})

test('install.sh --uninstall removes what it installed and nothing else', () => {
  const root = newRoot()
  assert.is(runWith([INSTALL, '--root', root, '--subnet', '10.200.3.0/24', '--network', '10.200.0.0/16']).code, 0)
  writeFileSync(join(root, 'opt/cni/bin/loopback'), 'another plugin')
  const r = runWith([INSTALL, '--root', root, '--uninstall'])
  assert.is(r.code, 0, r.stderr)
  assert.equal(files(root), ['/opt/cni/bin/loopback'])
})

test('install.sh --dry-run prints the plan and writes nothing', () => {
  const root = newRoot()
  const r = runWith([INSTALL, '--root', root, '--subnet', '10.200.3.0/24', '--network', '10.200.0.0/16', '--dry-run'])
  assert.is(r.code, 0, r.stderr)
  assert.match(r.stdout, /would run: mv -f .*10-kube-cni\.conflist/)
  assert.equal(files(root), [])
})

// ---- the manifest ---------------------------------------------------------------------------------------

const docs = () => YAML.parseAllDocuments(readFileSync(MANIFEST, 'utf8')).map((d: any) => d.toJS())
const kind = (k: string) => docs().find((d: any) => d.kind === k)

test('deploy/kube-cni.yaml parses as the documents a CNI DaemonSet needs', () => {
  assert.equal(docs().map((d: any) => d.kind), ['Namespace', 'ServiceAccount', 'ClusterRole', 'ClusterRoleBinding', 'ConfigMap', 'DaemonSet'])
})

test('the ConfigMap holds the current build (run `npm run manifests` after changing the code), under 1 MiB', () => {
  const cm = kind('ConfigMap')
  assert.ok(cm.data['kube-cni'] === readFileSync(PLUGIN, 'utf8'), 'deploy/kube-cni.yaml is stale: run npm run manifests')
  assert.ok(Buffer.byteLength(JSON.stringify(cm.data)) < 1 << 20)
})

test('the RBAC is minimal: get, list and watch on nodes, nothing else', () => {
  assert.equal(kind('ClusterRole').rules, [{ apiGroups: [''], resources: ['nodes'], verbs: ['get', 'list', 'watch'] }])
})

test('the DaemonSet: stock image, host network, tolerates all, node-critical, NET_ADMIN, the host paths', () => {
  const spec = kind('DaemonSet').spec.template.spec
  assert.is(spec.hostNetwork, true)
  assert.equal(spec.tolerations, [{ operator: 'Exists' }])
  assert.is(spec.priorityClassName, 'system-node-critical')
  for (const c of [...spec.initContainers, ...spec.containers]) assert.is(c.image, 'node:20-bookworm-slim')
  assert.equal(spec.containers[0].securityContext.capabilities.add, ['NET_ADMIN', 'NET_RAW', 'SYS_CHROOT'])
  assert.equal(spec.initContainers[0].securityContext.capabilities.add, ['SYS_CHROOT'])
  assert.equal(spec.volumes.filter((v: any) => v.hostPath).map((v: any) => v.hostPath.path).sort(), ['/', '/etc/cni/net.d', '/opt/cni/bin'])
  assert.is(spec.containers[0].command[2], ROUTES_SCRIPT)
  assert.is(spec.initContainers[0].command[2], INIT_SCRIPT)
})

test('the DaemonSet\'s init script, under a temp root and a stand-in API server, installs a working kube-cni', async () => {
  const root = newRoot()
  const api = await startApiServer(join(root, 'api'), {
    items: [{ metadata: { name: 'kind-worker' }, spec: { podCIDR: '10.200.4.0/24', podCIDRs: ['10.200.4.0/24'] } }],
  })
  try {
    const env = {
      ...api.env,
      PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', // node:20-bookworm-slim's
      HOST_BIN: join(root, 'host/opt/cni/bin'),
      HOST_CONF: join(root, 'host/etc/cni/net.d'),
      NODE_ON_HOST: join(root, 'host/opt/cni/bin/kube-cni.d/node'),
      HOST_ROOT: '/',
      BUNDLE: PLUGIN,
      NODE_NAME: 'kind-worker',
      NETWORK: '10.200.0.0/16',
    }
    // spawn, not spawnSync: the stand-in server runs in this process and must keep answering.
    const r = await new Promise<{ code: number; out: string }>((resolve) => {
      const child = spawn('/bin/sh', ['-c', INIT_SCRIPT], { env })
      let out = ''
      child.stdout.on('data', (d) => (out += d))
      child.stderr.on('data', (d) => (out += d))
      child.on('close', (code) => resolve({ code: code ?? 1, out }))
    })
    assert.is(r.code, 0, r.out)
    assert.equal(api.requests, ['GET /api/v1/nodes/kind-worker'])
    const installed = join(env.HOST_BIN, 'kube-cni')
    assert.ok(readFileSync(installed, 'utf8').startsWith(`#!${env.NODE_ON_HOST}\n`))
    const v = sh(['env', '-i', 'CNI_COMMAND=VERSION', installed], '{"cniVersion":"0.4.0"}')
    assert.is(v.code, 0, v.stderr)
    assert.is(JSON.parse(v.stdout).cniVersion, '0.4.0')
    const conf = JSON.parse(readFileSync(join(env.HOST_CONF, '10-kube-cni.conflist'), 'utf8'))
    assert.is(conf.plugins[0].subnet, '10.200.4.0/24')
    assert.equal(readdirSync(env.HOST_CONF), ['10-kube-cni.conflist'], 'no temp file left behind')
  } finally {
    api.close()
  }
})

test('the in-cluster client reads the NodeList with the service account token and CA (stand-in API server)', async () => {
  const api = await startApiServer(join(newRoot(), 'api'), { items: [{ metadata: { name: 'n1' } }, { metadata: { name: 'n2' } }] })
  const saved = { ...process.env }
  try {
    Object.assign(process.env, api.env)
    const list = await readNodeList({})
    assert.equal(list.items.map((n) => n.metadata.name), ['n1', 'n2'])
    assert.equal(api.requests, ['GET /api/v1/nodes'])
  } finally {
    process.env = saved
    api.close()
  }
})

test.run()
