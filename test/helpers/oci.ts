// A tiny OCI image of Debian's busybox-static, built here so that podman and containerd need no registry: one
// layer with /bin/busybox, its applet links, and a page for httpd, packed as an oci-archive that `podman load`
// and `ctr images import` read. ociArchive wraps any root filesystem tar the same way.
import { createHash } from 'node:crypto'
import { mkdirSync, readFileSync, symlinkSync, writeFileSync, copyFileSync } from 'node:fs'
import { join } from 'node:path'
import { must } from './cluster.ts'

export const BUSYBOX = '/bin/busybox'
export const IMAGE = 'localhost/kube-cni-test/busybox:latest'
const APPLETS = ['sh', 'httpd', 'ping', 'wget', 'sleep', 'ip', 'cat', 'hostname']

function blob(dir: string, content: Buffer): { digest: string; size: number } {
  const hex = createHash('sha256').update(content).digest('hex')
  writeFileSync(join(dir, 'blobs', 'sha256', hex), content)
  return { digest: `sha256:${hex}`, size: content.length }
}

/** Writes the image to `<dir>/image.tar` and returns its path; `cmd` is what a container runs by default. */
export function buildImage(dir: string, opts: { cmd?: string[] } = {}): string {
  const rootfs = join(dir, 'rootfs')
  mkdirSync(join(rootfs, 'bin'), { recursive: true })
  mkdirSync(join(rootfs, 'www'), { recursive: true })
  mkdirSync(join(rootfs, 'etc'), { recursive: true })
  copyFileSync(BUSYBOX, join(rootfs, 'bin', 'busybox'))
  must(['chmod', '755', join(rootfs, 'bin', 'busybox')])
  for (const a of APPLETS) symlinkSync('busybox', join(rootfs, 'bin', a))
  writeFileSync(join(rootfs, 'www', 'index.html'), 'hello from kube-cni\n')
  writeFileSync(join(rootfs, 'etc', 'passwd'), 'root:x:0:0:root:/:/bin/sh\n')
  // Fixed owner and mtime, so the same inputs give the same layer digest.
  const layerTar = join(dir, 'layer.tar')
  must(['tar', '--owner=0', '--group=0', '--numeric-owner', '--mtime=@0', '--sort=name', '-C', rootfs, '-cf', layerTar, '.'])
  return ociArchive(dir, layerTar, { name: IMAGE, cmd: opts.cmd ?? ['/bin/sh'], env: ['PATH=/bin'] })
}

/** Packs one uncompressed layer tar as a single-image oci-archive named `name`, at `<dir>/image.tar`. */
export function ociArchive(dir: string, layerTar: string, image: { name: string; cmd: string[]; env: string[] }): string {
  const layout = join(dir, 'layout')
  mkdirSync(join(layout, 'blobs', 'sha256'), { recursive: true })
  const layer = blob(layout, readFileSync(layerTar))
  const config = blob(layout, Buffer.from(JSON.stringify({
    architecture: 'amd64',
    os: 'linux',
    config: { Cmd: image.cmd, Env: image.env },
    rootfs: { type: 'layers', diff_ids: [layer.digest] },
  })))
  const manifest = blob(layout, Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }],
  })))
  writeFileSync(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }))
  writeFileSync(join(layout, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': image.name } }],
  }))
  const archive = join(dir, 'image.tar')
  must(['tar', '-C', layout, '-cf', archive, '.'])
  return archive
}
