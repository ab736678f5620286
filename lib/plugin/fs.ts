// The files kube-cni keeps (the IPAM store, the node marker, the node lock, a written conflist): written whole or
// not at all, never through a symlink someone planted, in directories only root can write, and every disk or
// permission problem reported as error 5 naming the path and the fix.
import { spawn } from 'node:child_process'
import { closeSync, constants, lstatSync, mkdirSync, openSync, renameSync, unlinkSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { CniError, Code } from './cni.ts'
import { spawnError } from './exec.ts'

export const errno = (e: unknown) => (e as NodeJS.ErrnoException).code

const LOCK_WAIT_SECONDS = 30

/** Readers see the old content or the new one, never half of either. */
export function writeAtomic(path: string, content: string, mode = 0o600): void {
  const tmp = `${path}.${process.pid}.tmp`
  try {
    const fd = createExclusive(tmp, mode)
    try {
      writeFileSync(fd, content)
    } finally {
      closeSync(fd)
    }
    renameSync(tmp, path)
  } catch (e) {
    discard(tmp)
    throw e
  }
}

/**
 * A new file that is really new: O_EXCL|O_NOFOLLOW never writes through a planted symlink. A leftover of a dead
 * process with our pid (or a planted file) is removed, never followed, and the create tried once more.
 */
function createExclusive(path: string, mode: number): number {
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW
  try {
    return openSync(path, flags, mode)
  } catch (e) {
    if (errno(e) !== 'EEXIST') throw e
    unlinkSync(path)
    return openSync(path, flags, mode)
  }
}

/** Removes what a failed step of ours created, if it did; the step's own error is the one to report. */
export function discard(path: string): void {
  try {
    unlinkSync(path)
  } catch {
    // never created, or already gone
  }
}

/** Creates a store directory (and the parents), root's alone. */
export function makeDir(path: string): void {
  try {
    mkdirSync(path, { recursive: true, mode: 0o700 })
  } catch (e) {
    throw ioError('create the directory', path, e)
  }
}

/**
 * The store's directories: real directories (not symlinks), owned by root (or whoever runs us), and writable by
 * no one else, who could otherwise plant records and symlinks. Missing ones are fine: nothing to read there.
 */
export function assertPrivateDir(path: string): void {
  let st
  try {
    st = lstatSync(path)
  } catch (e) {
    if (errno(e) === 'ENOENT') return
    throw ioError('inspect', path, e)
  }
  const why = st.isSymbolicLink()
    ? 'a symlink'
    : !st.isDirectory()
      ? 'not a directory'
      : st.uid !== 0 && st.uid !== process.getuid?.()
        ? `owned by uid ${st.uid}, not root`
        : st.mode & 0o022
          ? `writable by ${st.mode & 0o020 ? 'its group' : 'others'} (mode ${(st.mode & 0o7777).toString(8)})`
          : ''
  if (why)
    throw new CniError(
      Code.IOFailure,
      `IPAM store: ${path} is ${why}; kube-cni keeps its state only where no one else can plant files`,
      `make it a directory owned by root and writable only by root (chown root: ${path}; chmod go-w ${path}), or set dataDir to such a directory`,
    )
}

/** Error 5 for a disk or permission problem, saying which file and what would fix it. */
export function ioError(action: string, path: string, e: unknown): CniError {
  const code = errno(e)
  const [why, todo] =
    code === 'ENOSPC' || code === 'EDQUOT'
      ? ['the filesystem is full', `free space on the filesystem that holds ${path} (the default dataDir /run/kube-cni/ipam is on the /run tmpfs)`]
      : code === 'EROFS'
        ? ['the filesystem is read-only', `set dataDir in the network config to a writable directory, or remount the filesystem that holds ${path} read-write`]
        : code === 'EACCES' || code === 'EPERM'
          ? ['permission denied', `kube-cni must run as root (the container runtime runs it so), and ${path} must be writable by it`]
          : [(e as Error).message, 'check dataDir in the network config: it must be a writable directory']
  return new CniError(Code.IOFailure, `IPAM store: cannot ${action} ${path}: ${why}`, todo)
}

/**
 * Runs fn while holding an exclusive flock on `path`. We open the file ourselves, so a disk or permission
 * problem is error 5 naming it (never a lock timeout); `flock(1)` takes the lock on our open file description
 * passed as its fd 3 and exits. The lock belongs to that description, which our fd keeps open: it ends when we
 * close it or exit, even by SIGKILL.
 */
export async function withLock<T>(path: string, fn: () => Promise<T>): Promise<T> {
  makeDir(dirname(path))
  assertPrivateDir(dirname(path))
  let fd: number
  try {
    // O_RDONLY is enough for flock, and opens an existing lock file on a read-only filesystem too.
    fd = openSync(path, constants.O_RDONLY | constants.O_CREAT | constants.O_NOFOLLOW, 0o600)
  } catch (e) {
    throw ioError('open the lock file', path, e)
  }
  try {
    const code = await new Promise<number | null>((resolve, reject) => {
      const flock = spawn('flock', ['-x', '-w', String(LOCK_WAIT_SECONDS), '3'], { stdio: ['ignore', 'ignore', 'inherit', fd] })
      flock.on('error', (e) => reject(spawnError('flock', e)))
      flock.on('exit', resolve)
    })
    if (code !== 0) throw new CniError(Code.TryAgainLater, `could not lock ${path} within ${LOCK_WAIT_SECONDS}s`, 'another kube-cni is setting up this node; retry')
    return await fn()
  } finally {
    closeSync(fd)
  }
}
