// install.sh, staged under --root so nothing on this machine changes, and the kind/Kubernetes manifest.
import { spawn } from 'node:child_process'
import { chmodSync, copyFileSync, existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { YAML } from 'zx'
import { INIT_SCRIPT, MANIFEST, ROUTES_SCRIPT } from '../../deploy/manifests.ts'
import { readNodeList } from '../../lib/tools/kube.ts'
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

/** Like runWith, but the test process keeps running: a stand-in API server in it must keep answering. */
function runAsync(argv: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(argv[0], argv.slice(1), { env, cwd: TMP })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }))
  })
}

/** A kubectl on PATH that answers the given `case "$*"` arms like kubectl would, and fails anything else. */
function kubectlStandIn(arms: string): string {
  const bin = mkdtempSync(join(TMP, 'kubectl-'))
  writeFileSync(join(bin, 'kubectl'), `#!/bin/sh\ncase "$*" in${arms}\n  *) exit 1 ;;\nesac\n`)
  chmodSync(join(bin, 'kubectl'), 0o755)
  return bin
}

const afterShebang = (file: string) => readFileSync(file, 'utf8').split('\n').slice(1).join('\n')

const STAGED = ['/etc/cni/net.d/10-kube-cni.conflist', '/opt/cni/bin/kube-cni']

test('install.sh --root stages the plugin and the conflist, and the plugin answers VERSION with no node_modules', () => {
  const root = newRoot()
  const r = runWith([INSTALL, '--root', root, '--subnet', '10.200.3.0/24', '--network', '10.200.0.0/16'])
  assert.is(r.code, 0, r.stderr)
  assert.equal(files(root).sort(), STAGED)
  const conf = JSON.parse(readFileSync(join(root, STAGED[0]), 'utf8'))
  assert.equal(conf, {
    cniVersion: '1.0.0',
    cniVersions: ['1.0.0', '1.1.0'],
    name: 'k8s-pod-network',
    plugins: [{ type: 'kube-cni', network: '10.200.0.0/16', subnet: '10.200.3.0/24' }],
  })
  const bin = join(root, STAGED[1])
  assert.is(statSync(bin).mode & 0o777, 0o755)
  const [shebang, ...rest] = readFileSync(bin, 'utf8').split('\n')
  assert.match(shebang, /^#!\/\S+\/node$/)
  assert.ok(rest.join('\n') === afterShebang(PLUGIN), 'the installed plugin is the bundle under a new shebang')
  // Run it from a directory with no node_modules anywhere above it, as /opt/cni/bin is.
  const v = require('node:child_process').spawnSync(bin, [], { cwd: root, env: { PATH: '/usr/bin:/bin', CNI_COMMAND: 'VERSION' }, input: '{"cniVersion":"1.0.0"}', encoding: 'utf8' })
  assert.is(v.status, 0, v.stderr)
  assert.is(JSON.parse(v.stdout).cniVersion, '1.1.0')
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

test('install.sh chains portmap when the bin dir has it; Debian\'s 1.1.1, or one that does not answer VERSION, keeps the list at 1.0.0', () => {
  const debian = '/usr/lib/cni/portmap'
  for (const portmap of [...(existsSync(debian) ? [debian] : []), '']) {
    const root = newRoot()
    mkdirSync(join(root, 'opt/cni/bin'), { recursive: true })
    // An empty, non-executable file: a portmap that exits at once without reading its stdin.
    if (portmap) symlinkSync(portmap, join(root, 'opt/cni/bin/portmap'))
    else writeFileSync(join(root, 'opt/cni/bin/portmap'), '')
    const r = runWith([INSTALL, '--root', root, '--subnet', '10.200.3.0/24', '--network', '10.200.0.0/16'])
    assert.is(r.code, 0, r.stderr)
    assert.match(r.stderr, portmap ? /portmap speaks up to 1\.0\.0, so the list offers 1\.0\.0 only/ : /portmap did not answer VERSION/)
    const conf = JSON.parse(readFileSync(join(root, STAGED[0]), 'utf8'))
    assert.equal(conf.plugins.map((p: any) => p.type), ['kube-cni', 'portmap'])
    assert.is(conf.cniVersion, '1.0.0')
    assert.not.ok('cniVersions' in conf)
  }
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
  writeFileSync(join(root, 'opt/cni/bin/kube-cni.cache'), 'the code cache the first ADD writes')
  const r = runWith([INSTALL, '--root', root, '--uninstall'])
  assert.is(r.code, 0, r.stderr)
  assert.equal(files(root), ['/opt/cni/bin/loopback'])
})

test('install.sh --dry-run says what it would do and writes nothing, installing or uninstalling', () => {
  const root = newRoot()
  const args = [INSTALL, '--root', root, '--subnet', '10.200.3.0/24', '--network', '10.200.0.0/16']
  const r = runWith([...args, '--dry-run'])
  assert.is(r.code, 0, r.stderr)
  assert.match(r.stdout, /would run: mv -f .*10-kube-cni\.conflist/)
  assert.match(r.stderr, /would install .*\/opt\/cni\/bin\/kube-cni\n/)
  assert.match(r.stderr, /dry run: nothing was written/)
  assert.not.match(r.stderr, /\binstalled\b|Pods started from now on/)
  assert.equal(files(root), [])
  assert.is(runWith(args).code, 0)
  const u = runWith([INSTALL, '--root', root, '--uninstall', '--dry-run'])
  assert.is(u.code, 0, u.stderr)
  assert.match(u.stderr, /would remove .*10-kube-cni\.conflist/)
  assert.equal(files(root).sort(), STAGED)
})

test('install.sh names another CNI\'s config that sorts before 10-kube-cni.conflist, and does not claim pods use kube-cni', () => {
  for (const other of ['05-flannel.conflist', '10-calico.conflist', '00-bridge.conf']) {
    const root = newRoot()
    mkdirSync(join(root, 'etc/cni/net.d'), { recursive: true })
    writeFileSync(join(root, 'etc/cni/net.d', other), '{}')
    writeFileSync(join(root, 'etc/cni/net.d', '99-loopback.conf'), '{}')
    const r = runWith([INSTALL, '--root', root, '--subnet', '10.200.3.0/24', '--network', '10.200.0.0/16'])
    assert.is(r.code, 0, r.stderr)
    assert.match(r.stderr, `WARNING: ${join(root, 'etc/cni/net.d', other)} sorts before 10-kube-cni.conflist`)
    assert.match(r.stderr, `pods will keep using ${other}, not kube-cni`)
    assert.match(r.stderr, /installed but NOT in use/)
    assert.not.match(r.stderr, /Pods started from now on use kube-cni/)
  }
  // A config that sorts after ours is not in the way.
  const root = newRoot()
  mkdirSync(join(root, 'etc/cni/net.d'), { recursive: true })
  writeFileSync(join(root, 'etc/cni/net.d/99-loopback.conf'), '{}')
  const r = runWith([INSTALL, '--root', root, '--subnet', '10.200.3.0/24', '--network', '10.200.0.0/16'])
  assert.not.match(r.stderr, /WARNING/)
  assert.match(r.stderr, /Pods started from now on use kube-cni/)
})

/** The options install.sh parses: every name in its `case` arms. */
const OPTIONS = [...new Set([...readFileSync(INSTALL, 'utf8').matchAll(/^ +((?:-[-a-z]+\|?)+)\)/gm)].flatMap((m) => m[1].split('|')))].filter((o) => o !== '--*=*')

test('install.sh: an option without its value is a usage error naming it, whatever follows', () => {
  const valued = ['--subnet', '--network', '--node', '--kubectl', '--root', '--cni-bin-dir', '--cni-conf-dir']
  for (const opt of valued) {
    assert.ok(OPTIONS.includes(opt), opt)
    for (const rest of [[], ['--dry-run']]) {
      const r = runWith([INSTALL, opt, ...rest])
      assert.is(r.code, 2, `${opt} ${rest}: ${r.stderr}`)
      assert.match(r.stderr, `install.sh: ${opt} needs a value`)
      assert.not.match(r.stderr, /unbound variable/)
    }
  }
  const r = runWith([INSTALL, '--frobnicate'])
  assert.is(r.code, 2)
  assert.match(r.stderr, /unknown option --frobnicate\nRun \.\/install\.sh --help/)
})

test('install.sh --help lists every option it parses; --opt=value works like --opt value', () => {
  const r = runWith([INSTALL, '--help'])
  assert.is(r.code, 0)
  assert.ok(OPTIONS.length >= 11, OPTIONS.join(' '))
  for (const opt of OPTIONS) assert.match(r.stdout, new RegExp(`^  (-h, )?${opt}\\b`, 'm'), `--help does not list ${opt}`)
  const root = newRoot()
  assert.is(runWith([INSTALL, `--root=${root}`, '--subnet=10.200.3.0/24', '--network=10.200.0.0/16']).code, 0)
  assert.equal(files(root).sort(), STAGED)
})

const UNIT = '/etc/systemd/system/kube-cni-routes.service'
/** A root where systemd runs: install.sh looks for ROOT/run/systemd/system, as systemd's own sd_booted() does. */
function systemdRoot(): string {
  const root = newRoot()
  mkdirSync(join(root, 'run/systemd/system'), { recursive: true })
  return root
}

test('install.sh on a systemd node installs the routes agent\'s unit (kubelet.conf, --network, restart on failure); --uninstall removes it', () => {
  const root = systemdRoot()
  const args = [INSTALL, '--root', root, '--subnet', '10.200.3.0/24', '--network', '10.200.0.0/16', '--node', 'worker-1']
  const r = runWith(args)
  assert.is(r.code, 0, r.stderr)
  assert.equal(files(root).sort(), [...STAGED, UNIT].sort())
  const unit = readFileSync(join(root, UNIT), 'utf8')
  const lines = unit.split('\n')
  for (const line of [
    'Environment=KUBECONFIG=/etc/kubernetes/kubelet.conf',
    'ExecStart=/opt/cni/bin/kube-cni routes --node worker-1 --network 10.200.0.0/16 --backend host-gw --watch --metrics-addr 127.0.0.1:9101',
    'Restart=on-failure',
    'WantedBy=multi-user.target',
  ])
    assert.ok(lines.includes(line), `the unit has no line ${line}:\n${unit}`)
  assert.is(statSync(join(root, UNIT)).mode & 0o777, 0o644)
  // Under --root, systemctl is never run: install.sh says what to run on the node instead.
  assert.match(r.stderr, 'on the node: systemctl daemon-reload && systemctl enable --now kube-cni-routes.service')
  assert.match(runWith(args).stderr, `${join(root, UNIT)} is up to date`)
  const vx = runWith([...args, '--backend', 'vxlan', '--kubeconfig', '/etc/kubernetes/other.conf'])
  assert.is(vx.code, 0, vx.stderr)
  assert.match(readFileSync(join(root, UNIT), 'utf8'), /^Environment=KUBECONFIG=\/etc\/kubernetes\/other\.conf\n[^]*--backend vxlan --watch --metrics-addr 127\.0\.0\.1:9101$/m)
  const u = runWith([INSTALL, '--root', root, '--uninstall'])
  assert.is(u.code, 0, u.stderr)
  assert.equal(files(root), [])
  // A path the unit cannot hold is refused before anything is written.
  const bad = runWith([...args, '--kubeconfig', '/etc/kube config'])
  assert.is(bad.code, 2)
  assert.match(bad.stderr, /give paths without spaces/)
  assert.equal(files(root), [])
})

test('install.sh --no-routes, or a node without systemd: no unit, and it says how to run the agent', () => {
  for (const [root, extra, why] of [[systemdRoot(), ['--no-routes'], /--no-routes: no routes agent/], [newRoot(), [], /systemd is not running here/]] as const) {
    const r = runWith([INSTALL, '--root', root, '--subnet', '10.200.3.0/24', '--network', '10.200.0.0/16', '--node', 'w2', ...extra])
    assert.is(r.code, 0, r.stderr)
    assert.match(r.stderr, why)
    assert.match(r.stderr, 'KUBECONFIG=/etc/kubernetes/kubelet.conf /opt/cni/bin/kube-cni routes --node w2 --network 10.200.0.0/16')
    assert.equal(files(root).sort(), STAGED)
  }
})

test('the installed plugin\'s shebang names the node install.sh found on PATH, so a runtime with another PATH runs it', () => {
  // A node outside the usual places, first on PATH, as nvm or a tarball install puts it.
  const nodeDir = mkdtempSync(join(TMP, 'nodejs-'))
  try {
    linkSync(process.execPath, join(nodeDir, 'node'))
  } catch {
    copyFileSync(process.execPath, join(nodeDir, 'node'))
  }
  const root = newRoot()
  const r = runWith([INSTALL, '--root', root, '--subnet', '10.200.3.0/24', '--network', '10.200.0.0/16'], { pathDir: nodeDir })
  assert.is(r.code, 0, r.stderr)
  const bin = readFileSync(join(root, STAGED[1]), 'utf8')
  assert.is(bin.slice(0, bin.indexOf('\n')), `#!${join(nodeDir, 'node')}`)
  assert.ok(bin.slice(bin.indexOf('\n') + 1) === afterShebang(PLUGIN), 'the installed plugin is the bundle under a new shebang')
  const v = sh(['env', '-i', 'CNI_COMMAND=VERSION', join(root, STAGED[1])], '{"cniVersion":"1.0.0"}')
  assert.is(v.code, 0, v.stderr)
  assert.ok(JSON.parse(v.stdout).supportedVersions.includes('1.0.0'), v.stdout)
})

test('on a worker (no admin kubeconfig), install.sh learns the podCIDR through the kubelet\'s kubeconfig and puts it in the unit', async () => {
  const root = systemdRoot()
  const api = await startApiServer(join(root, 'api'), { items: [{ metadata: { name: 'worker-1' }, spec: { podCIDR: '10.200.9.0/24', podCIDRs: ['10.200.9.0/24'] } }] })
  try {
    // HOME has no .kube/config: a kubectl on PATH, if any, reaches no cluster, as on a kubeadm worker.
    const env = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: newRoot() }
    const r = await runAsync([INSTALL, '--root', root, '--network', '10.200.0.0/16', '--node', 'worker-1', '--kubeconfig', api.kubeletConf], env)
    assert.is(r.code, 0, r.stderr)
    assert.equal(api.requests, ['GET /api/v1/nodes/worker-1'])
    assert.is(JSON.parse(readFileSync(join(root, STAGED[0]), 'utf8')).plugins[0].subnet, '10.200.9.0/24')
    assert.match(r.stderr, /done: node worker-1, podCIDR 10\.200\.9\.0\/24, cluster range 10\.200\.0\.0\/16/)
    assert.match(readFileSync(join(root, UNIT), 'utf8'), `Environment=KUBECONFIG=${api.kubeletConf}\n`)
    const unknown = await runAsync([INSTALL, '--root', newRoot(), '--network', '10.200.0.0/16', '--node', 'worker-9', '--kubeconfig', api.kubeletConf], env)
    assert.is(unknown.code, 1)
    assert.match(unknown.stderr, /HTTP 404[^]*cannot learn the podCIDR of node 'worker-9' through .*kubelet\.conf/)
  } finally {
    api.close()
  }
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
    const r = await runAsync(['/bin/sh', '-c', INIT_SCRIPT], env)
    assert.is(r.code, 0, r.stdout + r.stderr)
    assert.equal(api.requests, ['GET /api/v1/nodes/kind-worker'])
    const installed = join(env.HOST_BIN, 'kube-cni')
    assert.ok(readFileSync(installed, 'utf8').startsWith(`#!${env.NODE_ON_HOST}\n`))
    const v = sh(['env', '-i', 'CNI_COMMAND=VERSION', installed], '{"cniVersion":"0.4.0"}')
    assert.is(v.code, 0, v.stderr)
    assert.is(JSON.parse(v.stdout).cniVersion, '1.1.0')
    const conf = JSON.parse(readFileSync(join(env.HOST_CONF, '10-kube-cni.conflist'), 'utf8'))
    assert.is(conf.plugins[0].subnet, '10.200.4.0/24')
    assert.equal(readdirSync(env.HOST_CONF), ['10-kube-cni.conflist'], 'no temp file left behind')
  } finally {
    api.close()
  }
})

test('the API client reads the NodeList in a pod (service account token and CA) and on a node ($KUBECONFIG: the kubelet\'s client certificate)', async () => {
  for (const where of ['pod', 'node']) {
    const api = await startApiServer(join(newRoot(), 'api'), { items: [{ metadata: { name: 'n1' } }, { metadata: { name: 'n2' } }] })
    const saved = { ...process.env }
    try {
      delete process.env.KUBERNETES_SERVICE_HOST
      if (where === 'pod') Object.assign(process.env, api.env)
      else process.env.KUBECONFIG = api.kubeletConf
      const list = await readNodeList({})
      assert.equal(list.items.map((n) => n.metadata.name), ['n1', 'n2'])
      assert.equal(api.requests, ['GET /api/v1/nodes'])
    } finally {
      process.env = saved
      api.close()
    }
  }
})

test.run()
