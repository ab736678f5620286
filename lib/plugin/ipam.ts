// The IPAM store: the bash original's /tmp/reserved_ips, made safe for concurrent and killed plugins.
//
// <dataDir>/<network name>/
//   10.200.1.5                one file per reserved IP, created exclusively (O_EXCL) and holding
//                             "containerID\r\nifname", like the reference host-local plugin
//   last_reserved_ip.4        where the round-robin search starts next time (written by rename)
//   attachments/<cid>:<if>    the attachment's record, created exclusively BEFORE any IP is taken; a
//                             container ID too long for a file name is cut, with a hash of the whole ID
//
// Nothing in the store is trusted: its directories must be root's and closed to others (anyone else could plant
// a symlink or a record), no file is read through a symlink, and a record's IPs and host veth name must look like
// what kube-cni writes before they become a file name or an `ip` argument.
//
// No lock is needed: the kernel lets exactly one O_EXCL create win. The record is written ahead of every
// attempt (the candidate IP and the host veth name), so a plugin SIGKILLed at any point leaves a record
// that DEL can follow to free exactly what was taken. DEL never has to ask the netns.
import { closeSync, constants, fstatSync, ftruncateSync, lstatSync, openSync, readFileSync, readdirSync, unlinkSync, writeFileSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { CniError, Code } from './cni.ts'
import { type Proc, isAlive, isProc, startTime } from './exec.ts'
import { assertPrivateDir, discard, errno, ioError, makeDir, writeAtomic } from './fs.ts'
import { type Family, containsAddress, formatAddress, formatCidr, parseAddress } from './ip.ts'
import { log } from './log.ts'
import type { NetConf, Pool } from './netconf.ts'

export interface Owner {
  containerId: string
  ifname: string
}

/** What an attachment holds: written ahead of every step of ADD, read by DEL, CHECK and GC. */
export interface AttachmentRecord {
  containerId?: string // the owner, for GC: a long container ID is not whole in the record's file name
  ifname?: string
  ips: string[] // reserved or being reserved, one per family
  hostVeth?: string
  pids?: Proc[] // `ip` processes a running ADD started; a DEL kills any that outlived a killed ADD
  /**
   * GC must never free an attachment whose ADD is still running. The ADD "locks" its record by naming itself in
   * it: its pid and the process's start time, which tell a live ADD from a recycled pid. This costs the hot path
   * one read of /proc/self/stat and nothing else: the record is written anyway, and the lock ends when the
   * process does, however it ends, like an flock, but with no flock(1) child to start (Node has no flock call,
   * and a child per ADD costs a fork and an exec). An in-progress marker file would cost a create and an
   * unlink, and still need the same liveness check for a killed ADD.
   */
  adding?: Proc // the ADD that wrote it: while that process lives, GC leaves the attachment alone
}

/** containerd 1.x never sends GC: the doctor finds the leaks on any runtime, and prints what frees just them. */
export const LEAK_HINT = 'run `kube-cni doctor` on the node: its ipam-leaks check names the leaked addresses and the command that frees exactly them (or a runtime that sends CNI GC frees them); or give the node a larger podCIDR'

/** A record file written in the last moments may be half-written by an ADD: GC leaves it for the next run. */
const FRESH_MS = 10_000

export class Store {
  readonly dir: string
  private readonly attachments: string

  private checked = false

  constructor(
    private readonly dataDir: string,
    network: string,
  ) {
    this.dir = join(dataDir, network)
    this.attachments = join(this.dir, 'attachments')
  }

  /** Once per process, before the store's files are read or written: three lstats. */
  private guard(): void {
    if (this.checked) return
    for (const dir of [this.dataDir, this.dir, this.attachments]) assertPrivateDir(dir)
    this.checked = true
  }

  recordPath(o: Owner): string {
    return join(this.attachments, recordName(o))
  }

  /**
   * Opens a new attachment for (containerID, ifname). A second ADD for the same pair is an error, as the
   * spec asks. The returned handle keeps the record file open so every step can rewrite it cheaply.
   */
  open(owner: Owner): Attachment {
    makeDir(this.attachments)
    this.guard()
    const path = this.recordPath(owner)
    let fd: number
    try {
      fd = openSync(path, 'wx', 0o600)
    } catch (e) {
      if (errno(e) !== 'EEXIST') throw ioError('create', path, e)
      throw new CniError(
        Code.AlreadyExists,
        `container ${owner.containerId} already has an attachment on ${owner.ifname}`,
        'the runtime must DEL it before adding it again',
      )
    }
    try {
      return new Attachment(this, owner, fd)
    } catch (e) {
      // A full disk lets the create succeed and the first write fail: leave no empty record behind.
      closeSync(fd)
      discard(path)
      throw e
    }
  }

  /**
   * Takes the next free address of the pool, round-robin, never the network, gateway or broadcast. The
   * address after the cursor is nearly always free and costs one create. When it is not (the pool wrapped
   * around and is filling up), one directory listing tells which addresses are taken, so the search does
   * not pay a failed create and a record write for each of them.
   */
  reserve(pool: Pool, owner: Owner, beforeTry: (ip: string) => void): bigint {
    this.guard()
    const size = pool.lastHost - pool.firstHost + 1n
    const cursor = join(this.dir, `last_reserved_ip.${pool.family}`)
    const last = readLast(cursor, pool)
    let candidate = last === undefined ? pool.firstHost : last + 1n
    let taken: Set<string> | undefined
    let attempts = 0
    for (let seen = 0n; seen < size; seen++, candidate++) {
      if (candidate > pool.lastHost) candidate = pool.firstHost
      if (candidate === pool.gateway) continue
      const ip = formatAddress(pool.family, candidate)
      if (taken?.has(ip)) continue
      attempts++
      beforeTry(ip)
      const path = join(this.dir, ip)
      try {
        writeFileSync(path, `${owner.containerId}\r\n${owner.ifname}`, { flag: 'wx', mode: 0o600 })
      } catch (e) {
        if (errno(e) !== 'EEXIST') {
          discard(path) // a full disk: created, then the write failed; not EEXIST, so the file is no one else's
          throw ioError('reserve', path, e)
        }
        taken ??= new Set(listDir(this.dir))
        continue
      }
      try {
        writeAtomic(cursor, ip)
      } catch (e) {
        // Only where the next search starts: a stale cursor costs a failed create, never an address.
        log.error(`IPAM: cannot update ${cursor}: ${(e as Error).message}`)
      }
      log.debug(`IPAM: ${ip} for ${owner.containerId}/${owner.ifname}, ${attempts === 1 ? 'first try' : `${attempts} tries`} from the cursor`)
      return candidate
    }
    throw new CniError(
      Code.PoolExhausted,
      `no free IP address in ${formatCidr(pool.subnet)}: all ${this.countReserved(pool)} are reserved`,
      LEAK_HINT,
    )
  }

  /** Frees the IP if `owner` holds it. An empty file is a reservation whose creator died mid-write. */
  free(ip: string, owner: Owner): boolean {
    if (!isAddressName(ip)) return false
    const path = join(this.dir, ip)
    const holder = readOwner(path)
    if (holder === undefined) return false
    if (holder !== null && (holder.containerId !== owner.containerId || holder.ifname !== owner.ifname)) return false
    return unlinkQuiet(path)
  }

  ownerOf(ip: string): Owner | null | undefined {
    if (!isAddressName(ip)) return undefined
    this.guard()
    return readOwner(join(this.dir, ip))
  }

  /**
   * A record that does not parse (a disk error, a hand edit) cannot say what was taken, so the IP files this
   * owner holds stand in for its list, as host-local finds them by scanning its store.
   */
  readRecord(owner: Owner): AttachmentRecord | undefined {
    this.guard()
    const text = readPlain(this.recordPath(owner))
    if (text === undefined) return undefined
    const record = text === null ? undefined : parseRecord(text)
    if (record) return record
    const ips = this.listReserved()
      .filter((r) => r.owner?.containerId === owner.containerId && r.owner.ifname === owner.ifname)
      .map((r) => r.ip)
    log.info(`IPAM: ${this.recordPath(owner)} does not parse; the store holds ${ips.join(', ') || 'no IP'} for it`)
    return { ...owner, ips }
  }

  /** Frees what the attachment holds, then its record: the end of a DEL, a failed ADD or a GC. */
  release(owner: Owner, record = this.readRecord(owner)): void {
    for (const ip of record?.ips ?? []) this.free(ip, owner)
    this.guard()
    unlinkQuiet(this.recordPath(owner))
  }

  /** Every attachment on record, for GC; `busy` while its ADD may still be running. */
  listAttachments(): Listed[] {
    this.guard()
    return listDir(this.attachments).flatMap((key) => {
      const colon = key.lastIndexOf(':')
      if (colon < 0) return []
      const named = { containerId: key.slice(0, colon), ifname: key.slice(colon + 1) }
      const found = this.inspect(join(this.attachments, key), named)
      // A cut name with a damaged record names no owner: its IP files still do, and GC frees them by those.
      return found && !found.owner.containerId.includes(HASHED) ? [found] : []
    })
  }

  /** The attachment of this owner, for GC, as listAttachments sees it. */
  attachment(owner: Owner): Listed | undefined {
    this.guard()
    return this.inspect(this.recordPath(owner), owner)
  }

  private inspect(path: string, named: Owner): Listed | undefined {
    const text = readPlain(path)
    if (text === undefined) return undefined
    const record = text === null ? undefined : parseRecord(text)
    if (record) {
      const owner = record.containerId && record.ifname ? { containerId: record.containerId, ifname: record.ifname } : named
      return { owner, record, busy: record.adding !== undefined && isAlive(record.adding) }
    }
    if (text !== null && isFresh(path)) return { owner: named, record: { ips: [] }, busy: true }
    return { owner: named, record: this.readRecord(named) ?? { ips: [] }, busy: false }
  }

  /** Every reserved IP with its owner (null when the file is empty), for GC and STATUS. */
  listReserved(): { ip: string; family: Family; value: bigint; owner: Owner | null }[] {
    this.guard()
    return listDir(this.dir).flatMap((name) => {
      const addr = parseAddress(name)
      if (!addr) return []
      const owner = readOwner(join(this.dir, name))
      return owner === undefined ? [] : [{ ip: name, ...addr, owner }]
    })
  }

  /** An IP file with no owner yet that an ADD may have just created and not yet written. */
  isBeingReserved(ip: string): boolean {
    return isAddressName(ip) && isFresh(join(this.dir, ip))
  }

  countReserved(pool: Pool): number {
    return this.listReserved().filter((r) => containsAddress(pool.subnet, r.family, r.value)).length
  }

  capacity(pool: Pool): number {
    const gatewayInRange = pool.gateway >= pool.firstHost && pool.gateway <= pool.lastHost ? 1n : 0n
    return Number(pool.lastHost - pool.firstHost + 1n - gatewayInRange)
  }
}

/** The store of the network a config names. */
export function storeFor(conf: NetConf): Store {
  return new Store(conf.dataDir, conf.name)
}

export interface Listed {
  owner: Owner
  record: AttachmentRecord
  busy: boolean
}

/** One ADD's record, kept open and rewritten before each step, so a kill at any point is recoverable. */
export class Attachment {
  private record: AttachmentRecord

  constructor(
    private readonly store: Store,
    readonly owner: Owner,
    private readonly fd: number,
  ) {
    this.record = { ...owner, ips: [], adding: { pid: process.pid, start: startTime('self') ?? 0 } }
    this.save()
  }

  reserve(pool: Pool): bigint {
    const done = this.record.ips.slice()
    return this.store.reserve(pool, this.owner, (candidate) => {
      this.record.ips = [...done, candidate]
      this.save()
    })
  }

  setHostVeth(name: string): void {
    this.record.hostVeth = name
    this.save()
  }

  addPid(proc: Proc): void {
    this.record.pids = [...(this.record.pids ?? []), proc]
    this.save()
  }

  /** Once ADD has succeeded its children are done; a DEL must not even look for them. */
  clearPids(): void {
    delete this.record.pids
    this.save()
  }

  close(): void {
    closeSync(this.fd)
  }

  private save(): void {
    const text = JSON.stringify(this.record)
    try {
      writeSync(this.fd, text, 0)
      ftruncateSync(this.fd, Buffer.byteLength(text))
    } catch (e) {
      throw ioError('write', this.store.recordPath(this.owner), e)
    }
  }
}

// NAME_MAX on Linux; ':' and '~' cannot occur in a container ID, so neither kind of name is ambiguous.
const NAME_MAX = 255
const HASHED = '~'

function recordName(o: Owner): string {
  const name = `${o.containerId}:${o.ifname}`
  if (Buffer.byteLength(name) <= NAME_MAX) return name
  // Loaded only for such IDs: the hash module costs about a millisecond of start-up.
  const { createHash } = require('node:crypto') as typeof import('node:crypto')
  const hash = createHash('sha256').update(o.containerId).digest('hex')
  return `${o.containerId.slice(0, 128)}${HASHED}${hash}:${o.ifname}`
}

// What newHostVethName (lib/plugin/link.ts) makes. A record naming anything else (the bridge, the uplink) is not ours.
const HOST_VETH = /^veth[0-9a-f]{8}$/

/** An IP as kube-cni names its files: nothing else may become a path in the store. */
function isAddressName(ip: unknown): ip is string {
  const addr = typeof ip === 'string' ? parseAddress(ip) : undefined
  return addr !== undefined && formatAddress(addr.family, addr.value) === ip
}

/** undefined when the text is not a record kube-cni could have written. */
function parseRecord(text: string): AttachmentRecord | undefined {
  let r
  try {
    r = JSON.parse(text)
  } catch {
    return undefined
  }
  if (typeof r !== 'object' || r === null || !Array.isArray(r.ips) || !r.ips.every(isAddressName)) return undefined
  if (r.hostVeth !== undefined && !(typeof r.hostVeth === 'string' && HOST_VETH.test(r.hostVeth))) return undefined
  const str = (v: unknown) => (typeof v === 'string' ? v : undefined)
  // A pid list of the wrong shape is dropped, not the record: the IPs and the host veth still count.
  const pids = Array.isArray(r.pids) ? r.pids.filter(isPidEntry) : undefined
  const adding = isProc(r.adding) ? { pid: r.adding.pid, start: r.adding.start } : undefined
  return { containerId: str(r.containerId), ifname: str(r.ifname), ips: r.ips, hostVeth: r.hostVeth, pids, adding }
}

/** A pid, or a {pid, start} pair: the shapes an ADD records for its children. */
function isPidEntry(p: unknown): boolean {
  return (Number.isSafeInteger(p) && (p as number) > 1) || isProc(p)
}

/** Written in the last moments: an ADD may be between creating the file and writing it. */
function isFresh(path: string): boolean {
  try {
    return Date.now() - lstatSync(path).mtimeMs < FRESH_MS
  } catch {
    return false
  }
}

/**
 * The text of a regular file, never through a symlink (and never blocking on a planted FIFO); undefined when
 * there is no such file, null when it is something kube-cni never makes (logged).
 */
function readPlain(path: string): string | null | undefined {
  let fd: number
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
  } catch (e) {
    if (errno(e) === 'ENOENT') return undefined
    if (errno(e) === 'ELOOP') return strange(path, 'a symlink')
    throw ioError('read', path, e)
  }
  try {
    if (!fstatSync(fd).isFile()) return strange(path, 'not a regular file')
    return readFileSync(fd, 'utf8')
  } catch (e) {
    throw ioError('read', path, e)
  } finally {
    closeSync(fd)
  }
}

function strange(path: string, what: string): null {
  log.error(`IPAM: ${path} is ${what}, which kube-cni never makes: not reading it`)
  return null
}

/** undefined: no such file; null: a file with no owner written yet. */
function readOwner(path: string): Owner | null | undefined {
  const text = readPlain(path)
  if (text == null) return undefined // a symlink is no reservation of ours, and is never followed to free it
  const [containerId, ifname = ''] = text.split(/\r?\n/)
  return containerId ? { containerId: containerId.trim(), ifname: ifname.trim() } : null
}

function readLast(cursor: string, pool: Pool): bigint | undefined {
  try {
    const addr = parseAddress(readFileSync(cursor, 'utf8').trim())
    if (addr && addr.value >= pool.firstHost && addr.value <= pool.lastHost && addr.family === pool.family)
      return addr.value
  } catch {
    // no cursor yet: start at the beginning of the pool
  }
  return undefined
}

function unlinkQuiet(path: string): boolean {
  try {
    unlinkSync(path)
    return true
  } catch (e) {
    if (errno(e) === 'ENOENT') return false
    throw ioError('remove', path, e)
  }
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir)
  } catch (e) {
    if (errno(e) === 'ENOENT') return []
    throw ioError('list', dir, e)
  }
}
