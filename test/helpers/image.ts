// Stand-ins for stock images and a node's root, built here from Debian's packages so that containerd needs
// no registry. `mmdebstrap --variant=minbase` is what debian:bookworm-slim is made of: bash, coreutils,
// util-linux, chroot, libstdc++ (apt needs it), and no iproute2, no iptables. With this machine's `node`
// added it stands in for node:20-bookworm-slim; with iproute2 added, for a kind node's root.
//
// mmdebstrap needs the Debian mirror and about a minute, so every tarball is cached under /var/cache (one
// build per machine and input, not per test run); a build goes to a temp name and is renamed, so a run that
// is killed, or two running at once, never leave a half tarball under the cached name.
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, renameSync, rmSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { must } from './cluster.ts'
import { ociArchive } from './oci.ts'

export const CACHE = process.env.KUBE_CNI_IMAGE_CACHE ?? '/var/cache/kube-cni-test'
/** The manifest's image as containerd names it after a pull: imported under this name, it is never pulled. */
export const NODE_SLIM = 'docker.io/library/node:20-bookworm-slim'
const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

/** Builds `out` with `make(tmp)` unless it is already there; returns out. The temp name keeps out's ending:
 *  mmdebstrap picks its output format from it (a name without `.tar` becomes a directory). */
function cached(out: string, make: (tmp: string) => void): string {
  if (existsSync(out)) return out
  mkdirSync(dirname(out), { recursive: true })
  const tmp = join(dirname(out), `.${process.pid}.${basename(out)}`)
  try {
    make(tmp)
    renameSync(tmp, out)
  } finally {
    rmSync(tmp, { force: true })
  }
  return out
}

/** A Debian bookworm minbase root filesystem as a tarball, with these extra packages. */
export function debianRootfs(include: string[] = []): string {
  const name = ['bookworm-minbase', ...include].join('+')
  return cached(join(CACHE, `${name}.tar`), (tmp) =>
    must(['mmdebstrap', '--quiet', '--variant=minbase', '--mode=root', ...(include.length ? [`--include=${include.join(',')}`] : []), 'bookworm', tmp]),
  )
}

/** The shared libraries a binary loads, by their resolved paths (ldd's `name => /path` lines and the loader). */
function sharedLibraries(binary: string): string[] {
  return must(['ldd', binary])
    .split('\n')
    .flatMap((l) => /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(l)?.[1] ?? [])
}

/**
 * The node:20-bookworm-slim stand-in as an OCI archive: minbase plus this machine's `node` at
 * /usr/local/bin/node (where the official image has it), and any library of node's that minbase lacks.
 * Named NODE_SLIM. The cache key is node's own bytes, so a new node makes a new image.
 */
export function nodeSlimImage(): string {
  const node = realpathSync(process.execPath)
  const key = createHash('sha256').update(readFileSync(node)).digest('hex').slice(0, 16)
  return cached(join(CACHE, `node-slim-${process.versions.node}-${key}.oci.tar`), (tmp) => {
    const base = debianRootfs()
    const inBase = new Set(must(['tar', '-tf', base]).split('\n').map((p) => p.replace(/^\.\//, '/')))
    const stage = mkdtempSync(`${tmp}-stage-`)
    try {
      const added = ['./usr/local/bin/node']
      mkdirSync(join(stage, 'usr/local/bin'), { recursive: true })
      must(['cp', node, join(stage, 'usr/local/bin/node')])
      for (const lib of sharedLibraries(node)) {
        // The base has merged /usr: /lib/x86_64-linux-gnu/x is /usr/lib/x86_64-linux-gnu/x there.
        if (inBase.has(lib) || inBase.has(`/usr${lib}`)) continue
        mkdirSync(join(stage, dirname(lib)), { recursive: true })
        must(['cp', '-L', lib, join(stage, lib)])
        added.push(`.${lib}`)
      }
      const layer = join(stage, 'layer.tar')
      must(['cp', base, layer])
      must(['tar', '-C', stage, '--owner=0', '--group=0', '--numeric-owner', '-rf', layer, ...added])
      renameSync(ociArchive(join(stage, 'oci'), layer, { name: NODE_SLIM, cmd: ['node'], env: [`PATH=${PATH}`] }), tmp)
    } finally {
      rmSync(stage, { recursive: true, force: true })
    }
  })
}

/** A node's root, unpacked into `dir`: by default minbase with iproute2, as kind's node image has. */
export function nodeRoot(dir: string, include = ['iproute2']): string {
  mkdirSync(dir, { recursive: true })
  must(['tar', '-C', dir, '--numeric-owner', '-xf', debianRootfs(include)])
  return dir
}
