/**
 * The embedded file depot store: the default when no services are configured.
 *
 * Layout under the data folder:
 *   depots/LOCK                      the owning process id: one process per folder
 *   depots/<depot>/<partition>.log   one append-only log per partition
 *
 * A log starts with a 128-byte header (little-endian):
 *   0 "BEDS_LOG" · 8 u16 format (1) · 10 u16 header size (128) · 12 u32 partition
 *   16 u32 partition count · 20 u8 depot name length · 21 depot name (≤ 100 bytes)
 *   124 u32 CRC-32 of bytes 0-123
 * so that a log copied from another depot, or kept across a change of the
 * partition count, is refused instead of being read as this one.
 *
 * Then one record per event (little-endian, F = 60 fixed bytes):
 *   0 u32 CRC-32 of bytes 4 .. 8+L   · 4 u32 L (record size - 8)
 *   8 u32 records in its batch       · 12 u32 index in its batch
 *   16 f64 offset · 24 f64 version · 32 f64 time · 40 u16 flags (1: id stored)
 *   42 u16 id · 44 u16 type · 46 u16 parent · 48 u32 key · 52 u32 message_id
 *   56 u32 metadata (byte lengths) · 60 id, type, parent, key, message_id as
 *   UTF-8, metadata as JSON (empty: none), payload as JSON (empty: undefined).
 * A root event's ID is its position, so it is not stored.
 *
 * Durability: an append is one write of the whole batch, then fdatasync, and
 * only then are the outcomes returned; appends to one partition are
 * serialized. A batch is the unit of crash recovery: every record says which
 * batch index it is, so a write cut short anywhere (a prefix after SIGKILL,
 * or lost pages after a power cut) leaves a batch that is incomplete or fails
 * its checksums. At open such a batch at the very end was never acknowledged
 * and is cut off, with a warning. Damage followed by the start of a later
 * valid batch cannot be a torn write (that batch was written only after the
 * damaged one had been synced), so the store refuses to open rather than drop
 * acknowledged events.
 *
 * A refused log is never changed; the error (code CORRUPT, or SCHEMA_DRIFT
 * for a changed partition count) names the file and byte, and its `cause`
 * holds `{ file, position, truncateAt?, firstLostOffset? }` for tools.
 *
 * Memory: events stay on disk and are read back by position (the OS page
 * cache keeps hot ones in RAM). In memory are only the indexes: each event's
 * byte position, message_id → position (as hashes, confirmed against the log
 * on a match), key → version, and the IDs of events that are not roots (a
 * root's ID is its own position, so it needs no entry).
 */
import type { FileHandle } from "node:fs/promises"
import * as fsp from "node:fs/promises"
import * as path from "node:path"
import * as zlib from "node:zlib"
import { Effect, Layer, type Scope } from "effect"
import { StoreError } from "../errors.ts"
import * as Lineage from "../lineage/lineage-id.ts"
import type { Depot } from "./depot.ts"
import type { AppendOutcome, AppendRequest, Event } from "./event.ts"
import { planAppend } from "./memory.ts"
import { DepotStore, type DepotStoreShape } from "./store.ts"

const MAGIC = Buffer.from("BEDS_LOG", "latin1")
const FORMAT = 1
const HEADER_SIZE = 128
const MAX_NAME_BYTES = 100
/** Fixed bytes at the start of every record. */
const FIXED = 60
const FLAG_ID = 1
/** Scan buffer; a larger record grows it. */
const CHUNK = 8 << 20
/** Reads of many events go out in pieces of about this size. */
const READ_PIECE = 4 << 20

const NO_METADATA: Readonly<Record<string, string>> = Object.freeze({})
const SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$/

/** The two 32-bit halves of the last hash computed (module-level, so hashing allocates nothing). */
let hashA = 0
let hashB = 0

/** Hashes bytes [start, end) into `hashA`/`hashB`: FNV-1a and a multiply-xorshift lane, each finished by murmur3's mix. */
const hashBytes = (b: Uint8Array, start: number, end: number): void => {
  let a = 0x811c9dc5
  let c = 0x9747b28c
  for (let i = start; i < end; i++) {
    const x = b[i] as number
    a = Math.imul(a ^ x, 0x01000193)
    c = Math.imul(c ^ x, 0x5bd1e995)
    c ^= c >>> 15
  }
  a ^= a >>> 16
  a = Math.imul(a, 0x85ebca6b)
  a ^= a >>> 13
  a = Math.imul(a, 0xc2b2ae35)
  hashA = (a ^ (a >>> 16)) >>> 0
  c ^= c >>> 16
  c = Math.imul(c, 0x85ebca6b)
  c ^= c >>> 13
  c = Math.imul(c, 0xc2b2ae35)
  hashB = (c ^ (c >>> 16)) >>> 0
}

let scratch = Buffer.allocUnsafe(1024)
const hashString = (s: string): void => {
  if (s.length * 3 > scratch.length) scratch = Buffer.allocUnsafe(s.length * 3)
  hashBytes(scratch, 0, scratch.write(s, 0, "utf8"))
}

const EMPTY = -1
const REMOVED = -2

/**
 * message_id → ref as 64-bit hashes of its UTF-8 bytes, open addressing in
 * typed arrays: no string and no Map entry per event, which is most of what
 * rebuilding a large depot would otherwise cost in time and memory. A hash
 * match is only a candidate; callers confirm it against the stored event.
 */
class MessageIndex {
  private a = new Uint32Array(1024)
  private b = new Uint32Array(1024)
  private refs = new Float64Array(1024).fill(EMPTY)
  private used = 0

  /** Adds `ref` under the hash in `hashA`/`hashB`. */
  add(ref: number): void {
    if ((this.used + 1) * 2 > this.refs.length) this.grow()
    this.put(hashA, hashB, ref)
    this.used++
  }

  /** Refs stored under the hash in `hashA`/`hashB`, oldest first. */
  candidates(): Array<number> {
    const out: Array<number> = []
    const mask = this.refs.length - 1
    for (let i = hashA & mask; ; i = (i + 1) & mask) {
      const r = this.refs[i] as number
      if (r === EMPTY) return out
      if (r !== REMOVED && this.a[i] === hashA && this.b[i] === hashB) out.push(r)
    }
  }

  /** Takes back `ref` (stored under `hashA`/`hashB`), leaving a marker so later entries stay reachable. */
  remove(ref: number): void {
    const mask = this.refs.length - 1
    for (let i = hashA & mask; ; i = (i + 1) & mask) {
      const r = this.refs[i] as number
      if (r === EMPTY) return
      if (r === ref && this.a[i] === hashA && this.b[i] === hashB) {
        this.refs[i] = REMOVED
        return
      }
    }
  }

  private put(x: number, y: number, ref: number): void {
    const mask = this.refs.length - 1
    let i = x & mask
    while (this.refs[i] !== EMPTY) i = (i + 1) & mask
    this.a[i] = x
    this.b[i] = y
    this.refs[i] = ref
  }

  private grow(): void {
    const { a, b, refs } = this
    this.a = new Uint32Array(refs.length * 2)
    this.b = new Uint32Array(refs.length * 2)
    this.refs = new Float64Array(refs.length * 2).fill(EMPTY)
    this.used = 0
    for (let i = 0; i < refs.length; i++) {
      const r = refs[i] as number
      if (r < 0) continue
      this.put(a[i] as number, b[i] as number, r)
      this.used++
    }
  }
}

/** A growable column of numbers, one per offset of a partition: 8 bytes an event, no object per entry. */
class Column {
  private data = new Float64Array(256)
  length = 0
  push(x: number): void {
    if (this.length === this.data.length) {
      const bigger = new Float64Array(this.data.length * 2)
      bigger.set(this.data)
      this.data = bigger
    }
    this.data[this.length++] = x
  }
  at(i: number): number {
    return this.data[i] as number
  }
  truncate(n: number): void {
    this.length = n
  }
}

interface Partition {
  readonly number: number
  readonly file: string
  readonly handle: FileHandle
  /** Byte position of each offset's record. */
  readonly positions: Column
  /** Each offset's version of its key. */
  readonly versionAt: Column
  /** Each offset's previous event of the same key, or -1: a key's history without an index per key. */
  readonly previous: Column
  /** Bytes of durable records, i.e. where the next batch goes. */
  size: number
  /** Key → offset of its latest event; its version is `versionAt` there. */
  readonly latest: Map<string, number>
  /** Appends queue here: one at a time per partition. */
  tail: Promise<unknown>
  /** Set when a failed write could not be undone; appends refuse until a reopen re-checks the file. */
  broken: StoreError | undefined
}

interface DepotState {
  readonly name: string
  readonly partitions: number
  readonly dir: string
  readonly parts: Array<Partition>
  /** message_id → ref, where ref = offset * partitions + partition. */
  readonly messageIds: MessageIndex
  /** IDs that are not the event's own position (derived, adopted) → ref. */
  readonly lineage: Map<string, number>
  /** Those IDs sorted, for descendant range scans; `unsorted` holds newer ones until the next scan. */
  sorted: Array<string>
  unsorted: Array<string>
  /** message_ids being written by an append in flight, resolved when it ends either way. */
  readonly inflight: Map<string, Promise<void>>
}

/** Stores of this process holding each LOCK file: the file names a process, not a store. */
const heldLocks = new Map<string, number>()
/**
 * The store of this process that may append to each depot folder: the one
 * that opened it last. An older one is fenced, so that two stores of one
 * process cannot interleave writes to a log.
 */
const owners = new Map<string, FileStore>()

const fail = (code: StoreError["code"], message: string, retryable = false, cause?: unknown): StoreError =>
  new StoreError(cause === undefined ? { code, message, retryable } : { code, message, retryable, cause })

const errnoOf = (cause: unknown): string | undefined => (cause as { code?: unknown })?.code as string | undefined

const describe = (cause: unknown): string => {
  const code = errnoOf(cause)
  const message = cause instanceof Error ? cause.message : String(cause)
  return code !== undefined && !message.startsWith(code) ? `${code}: ${message}` : message
}

/** Errors that may pass: a full disk can be freed, descriptors released. */
const TRANSIENT = new Set(["ENOSPC", "EDQUOT", "EAGAIN", "EBUSY", "EINTR", "EMFILE", "ENFILE", "ENOMEM"])

const unwritable = (dataDir: string, cause: unknown): StoreError => {
  const code = errnoOf(cause)
  const why =
    code === "ENOTDIR" || code === "EEXIST"
      ? "a part of that path is a file, not a folder"
      : code === "EACCES" || code === "EPERM"
        ? "permission denied"
        : code === "EROFS"
          ? "it is on a read-only file system"
          : code === "ENOSPC"
            ? "the disk is full"
            : describe(cause)
  return fail(
    "STORE_UNAVAILABLE",
    `The data folder "${dataDir}" is not writable (${why}). The embedded file depot keeps its logs there: ` +
      `point engine.data_dir at a folder this process can create files in, or fix that folder's type and permissions.`,
    false,
    cause,
  )
}

const noop = () => undefined

// ---------------------------------------------------------------------------------------------------------------------
// Encoding

const encodeHeader = (depot: string, partition: number, partitions: number): Buffer => {
  const h = Buffer.alloc(HEADER_SIZE)
  MAGIC.copy(h, 0)
  h.writeUInt16LE(FORMAT, 8)
  h.writeUInt16LE(HEADER_SIZE, 10)
  h.writeUInt32LE(partition, 12)
  h.writeUInt32LE(partitions, 16)
  const n = h.write(depot, 21, MAX_NAME_BYTES, "utf8")
  h.writeUInt8(n, 20)
  h.writeUInt32LE(zlib.crc32(h.subarray(0, 124)), 124)
  return h
}

interface Encoded {
  readonly buffer: Buffer
  /** Byte size of each record. */
  readonly sizes: ReadonlyArray<number>
  /** Whether each record stores its ID (not a root at its own position). */
  readonly explicit: ReadonlyArray<boolean>
}

const tooLong = (what: string, bytes: number, max: number, e: Event): StoreError =>
  fail(
    "STORE_FAILED",
    `Cannot append message ${JSON.stringify(e.messageId)}: its ${what} is ${bytes} bytes, more than the ${max} a depot log record holds.`,
  )

const encodeBatch = (depot: string, partition: number, events: ReadonlyArray<Event>): Encoded => {
  const n = events.length
  const explicit: Array<boolean> = new Array(n)
  const sizes: Array<number> = new Array(n)
  const metas: Array<string> = new Array(n)
  const payloads: Array<string> = new Array(n)
  const lens = new Array<number>(n * 6)
  let total = 0
  for (let i = 0; i < n; i++) {
    const e = events[i] as Event
    const x = e.parent !== null || e.id !== Lineage.root(depot, partition, e.offset)
    explicit[i] = x
    const keys = Object.keys(e.metadata)
    let meta: string
    let payload: string
    try {
      meta = keys.length === 0 ? "" : JSON.stringify(e.metadata)
      payload = e.payload === undefined ? "" : (JSON.stringify(e.payload) ?? "null")
    } catch (cause) {
      throw fail(
        "STORE_FAILED",
        `Cannot append message ${JSON.stringify(e.messageId)}: its payload or metadata is not JSON-serializable (${describe(cause)}).`,
        false,
        cause,
      )
    }
    metas[i] = meta
    payloads[i] = payload
    const idLen = x ? Buffer.byteLength(e.id) : 0
    const typeLen = Buffer.byteLength(e.type)
    const parentLen = e.parent === null ? 0 : Buffer.byteLength(e.parent)
    const keyLen = Buffer.byteLength(e.key)
    const midLen = Buffer.byteLength(e.messageId)
    const metaLen = Buffer.byteLength(meta)
    if (idLen > 0xffff) throw tooLong("lineage ID", idLen, 0xffff, e)
    if (typeLen > 0xffff) throw tooLong("type", typeLen, 0xffff, e)
    if (parentLen > 0xffff) throw tooLong("parent ID", parentLen, 0xffff, e)
    const size = FIXED + idLen + typeLen + parentLen + keyLen + midLen + metaLen + Buffer.byteLength(payload)
    if (size - 8 > 0xffffffff) throw tooLong("record", size, 0xffffffff, e)
    lens[i * 6] = idLen
    lens[i * 6 + 1] = typeLen
    lens[i * 6 + 2] = parentLen
    lens[i * 6 + 3] = keyLen
    lens[i * 6 + 4] = midLen
    lens[i * 6 + 5] = metaLen
    sizes[i] = size
    total += size
  }
  const b = Buffer.allocUnsafe(total)
  let at = 0
  for (let i = 0; i < n; i++) {
    const e = events[i] as Event
    const size = sizes[i] as number
    b.writeUInt32LE(size - 8, at + 4)
    b.writeUInt32LE(n, at + 8)
    b.writeUInt32LE(i, at + 12)
    b.writeDoubleLE(e.offset, at + 16)
    b.writeDoubleLE(e.version, at + 24)
    b.writeDoubleLE(e.time, at + 32)
    b.writeUInt16LE(explicit[i] ? FLAG_ID : 0, at + 40)
    b.writeUInt16LE(lens[i * 6] as number, at + 42)
    b.writeUInt16LE(lens[i * 6 + 1] as number, at + 44)
    b.writeUInt16LE(lens[i * 6 + 2] as number, at + 46)
    b.writeUInt32LE(lens[i * 6 + 3] as number, at + 48)
    b.writeUInt32LE(lens[i * 6 + 4] as number, at + 52)
    b.writeUInt32LE(lens[i * 6 + 5] as number, at + 56)
    let s = at + FIXED
    if (explicit[i]) s += b.write(e.id, s, "utf8")
    s += b.write(e.type, s, "utf8")
    if (e.parent !== null) s += b.write(e.parent, s, "utf8")
    s += b.write(e.key, s, "utf8")
    s += b.write(e.messageId, s, "utf8")
    s += b.write(metas[i] as string, s, "utf8")
    b.write(payloads[i] as string, s, "utf8")
    b.writeUInt32LE(zlib.crc32(b.subarray(at + 4, at + size)), at)
    at += size
  }
  return { buffer: b, sizes, explicit }
}

const checksumOk = (b: Buffer, at: number, size: number): boolean =>
  b.readUInt32LE(at) === zlib.crc32(b.subarray(at + 4, at + size))

/** Decodes the record at `at` (its checksum already verified). */
const decodeRecord = (b: Buffer, at: number, depot: string, partition: number): Event => {
  const size = b.readUInt32LE(at + 4) + 8
  const offset = b.readDoubleLE(at + 16)
  const version = b.readDoubleLE(at + 24)
  const time = b.readDoubleLE(at + 32)
  const flags = b.readUInt16LE(at + 40)
  const idLen = b.readUInt16LE(at + 42)
  const typeLen = b.readUInt16LE(at + 44)
  const parentLen = b.readUInt16LE(at + 46)
  const keyLen = b.readUInt32LE(at + 48)
  const midLen = b.readUInt32LE(at + 52)
  const metaLen = b.readUInt32LE(at + 56)
  const idAt = at + FIXED
  const typeAt = idAt + idLen
  const parentAt = typeAt + typeLen
  const keyAt = parentAt + parentLen
  const midAt = keyAt + keyLen
  const metaAt = midAt + midLen
  const payloadAt = metaAt + metaLen
  const explicit = (flags & FLAG_ID) !== 0
  const id = explicit ? b.toString("utf8", idAt, typeAt) : Lineage.root(depot, partition, offset)
  const type = b.toString("utf8", typeAt, parentAt)
  const parent = parentLen === 0 ? null : b.toString("utf8", parentAt, keyAt)
  const key = b.toString("utf8", keyAt, midAt)
  const messageId = b.toString("utf8", midAt, metaAt)
  const metadata = metaLen === 0 ? NO_METADATA : JSON.parse(b.toString("utf8", metaAt, payloadAt))
  const payload = payloadAt === at + size ? undefined : JSON.parse(b.toString("utf8", payloadAt, at + size))
  return {
    id,
    depot,
    partition,
    offset,
    type,
    key,
    version,
    payload,
    time,
    parent,
    root: explicit ? Lineage.rootOf(id) : id,
    messageId,
    metadata,
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// File helpers

const readFully = async (h: FileHandle, b: Buffer, bOffset: number, length: number, position: number) => {
  let done = 0
  while (done < length) {
    const { bytesRead } = await h.read(b, bOffset + done, length - done, position + done)
    if (bytesRead === 0) throw new Error(`unexpected end of file at byte ${position + done}`)
    done += bytesRead
  }
}

const writeFully = async (h: FileHandle, b: Buffer, position: number) => {
  let done = 0
  while (done < b.length) {
    const { bytesWritten } = await h.write(b, done, b.length - done, position + done)
    done += bytesWritten
  }
}

/** Makes a directory entry (a created or renamed file) durable; not every platform can sync a directory. */
const syncDir = async (dir: string) => {
  let h: FileHandle | undefined
  try {
    h = await fsp.open(dir, "r")
    await h.sync()
  } catch (cause) {
    const code = errnoOf(cause)
    if (code !== "EISDIR" && code !== "EINVAL" && code !== "EPERM" && code !== "EBADF") throw cause
  } finally {
    await h?.close().catch(noop)
  }
}

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (cause) {
    return errnoOf(cause) === "EPERM"
  }
}

/** Sequential reads over a file, keeping the current record whole in one buffer. */
class Chunks {
  buf: Buffer
  base = 0
  len = 0
  readonly handle: FileHandle
  readonly fileSize: number
  constructor(handle: FileHandle, fileSize: number) {
    this.handle = handle
    this.fileSize = fileSize
    this.buf = Buffer.allocUnsafe(Math.min(CHUNK, Math.max(fileSize, FIXED)))
  }
  has(pos: number, n: number): boolean {
    return pos >= this.base && pos + n <= this.base + this.len
  }
  /** Loads at least [pos, pos + n); the caller checked that the file holds it. */
  async load(pos: number, n: number): Promise<void> {
    const from = pos - this.base
    const keep = from >= 0 && from < this.len ? this.len - from : 0
    if (n > this.buf.length) {
      const bigger = Buffer.allocUnsafe(Math.max(n, this.buf.length * 2))
      if (keep > 0) this.buf.copy(bigger, 0, from, this.len)
      this.buf = bigger
    } else if (keep > 0 && from > 0) this.buf.copy(this.buf, 0, from, this.len)
    this.base = pos
    this.len = keep
    const want = Math.min(this.buf.length, this.fileSize - pos)
    if (want > this.len) {
      await readFully(this.handle, this.buf, this.len, want - this.len, pos + this.len)
      this.len = want
    }
  }
}

/**
 * Looks after `from` for the first record of a valid batch holding offsets
 * above `minOffset`: proof that the damage before it is not a torn last write.
 */
const findLaterBatch = async (
  h: FileHandle,
  from: number,
  fileSize: number,
  minOffset: number,
): Promise<number | undefined> => {
  const window = 1 << 20
  const b = Buffer.allocUnsafe(window + FIXED)
  for (let base = from; base + FIXED <= fileSize; base += window) {
    const n = Math.min(window + FIXED, fileSize - base)
    await readFully(h, b, 0, n, base)
    for (let i = 0; i + FIXED <= n && i < window; i++) {
      if (b.readUInt32LE(i + 12) !== 0 || b.readUInt32LE(i + 8) === 0) continue
      const size = b.readUInt32LE(i + 4) + 8
      if (size < FIXED || base + i + size > fileSize) continue
      const offset = b.readDoubleLE(i + 16)
      if (!Number.isInteger(offset) || offset <= minOffset) continue
      let ok: boolean
      if (i + size <= n) ok = checksumOk(b, i, size)
      else {
        const r = Buffer.allocUnsafe(size)
        await readFully(h, r, 0, size, base + i)
        ok = checksumOk(r, 0, size)
      }
      if (ok) return base + i
    }
  }
  return undefined
}

// ---------------------------------------------------------------------------------------------------------------------
// The store

/** What a damaged spot found while scanning looks like. */
interface Damage {
  readonly at: number
  readonly what: string
  /** Whether an interrupted write can produce it (else the bytes are well-formed but wrong). */
  readonly tearable: boolean
}

const versionOf = (p: Partition, key: string): number => {
  const last = p.latest.get(key)
  return last === undefined ? 0 : p.versionAt.at(last)
}

class FileStore {
  private readonly depots = new Map<string, DepotState>()
  /** Non-root lineage IDs being written by appends in flight, for the uniqueness check. */
  private readonly pendingIds = new Set<string>()
  private opening: Promise<unknown> = Promise.resolve()
  private closed = false

  readonly dataDir: string
  readonly root: string
  private readonly lockFile: string
  private constructor(dataDir: string, root: string, lockFile: string) {
    this.dataDir = dataDir
    this.root = root
    this.lockFile = lockFile
  }

  /** Makes the folder, proves it writable and takes its lock. */
  static async create(dataDir: string): Promise<FileStore> {
    const abs = path.resolve(dataDir)
    const root = path.join(abs, "depots")
    try {
      await fsp.mkdir(root, { recursive: true })
    } catch (cause) {
      throw unwritable(abs, cause)
    }
    await syncDir(abs).catch(noop)
    const lockFile = path.join(root, "LOCK")
    const held = heldLocks.get(lockFile) ?? 0
    for (let attempt = 0; held === 0; attempt++) {
      try {
        const h = await fsp.open(lockFile, "wx")
        try {
          await h.writeFile(`${process.pid}\n`)
          await h.sync()
        } finally {
          await h.close()
        }
        break
      } catch (cause) {
        if (errnoOf(cause) !== "EEXIST" || attempt >= 2) throw unwritable(abs, cause)
        const pid = Number.parseInt(await fsp.readFile(lockFile, "utf8").catch(() => ""), 10)
        if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && isAlive(pid))
          throw fail(
            "FENCED",
            `The data folder "${abs}" is in use by process ${pid}: only one BEDS process may write its depot logs. ` +
              `Stop that process, or use another engine.data_dir. If no BEDS process is running there, delete ${lockFile}.`,
          )
        // Left behind by a process that died: its logs are re-checked on open anyway.
        await fsp.rm(lockFile, { force: true })
      }
    }
    heldLocks.set(lockFile, held + 1)
    await syncDir(root).catch(noop)
    return new FileStore(abs, root, lockFile)
  }

  /** Waits for appends in flight, closes every log and releases the lock. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.opening.catch(noop)
    for (const d of this.depots.values()) {
      for (const p of d.parts) {
        await p.tail.catch(noop)
        await p.handle.close().catch(noop)
      }
      if (owners.get(d.dir) === this) owners.delete(d.dir)
    }
    this.depots.clear()
    const held = (heldLocks.get(this.lockFile) ?? 1) - 1
    if (held > 0) heldLocks.set(this.lockFile, held)
    else {
      heldLocks.delete(this.lockFile)
      await fsp.rm(this.lockFile, { force: true }).catch(noop)
    }
  }

  /** Waits until appends of this store to the depot in `dir` have finished. */
  private async quiesce(dir: string): Promise<void> {
    for (const d of this.depots.values()) if (d.dir === dir) for (const p of d.parts) await p.tail.catch(noop)
  }

  private checkOwner(d: DepotState): void {
    if (owners.get(d.dir) !== this)
      throw fail(
        "FENCED",
        `Depot "${d.name}" was opened again by another store of this process, so this one may no longer append to it; use the newer store.`,
      )
  }

  /** Opens (creating if needed) every partition log of these depots; returns warnings to log. */
  open(depots: ReadonlyArray<Depot>): Promise<Array<string>> {
    const run = this.opening.then(() => this.openAll(depots))
    this.opening = run.catch(noop)
    return run
  }

  private async openAll(depots: ReadonlyArray<Depot>): Promise<Array<string>> {
    this.ensureOpen()
    const warnings: Array<string> = []
    for (const depot of depots) {
      const known = this.depots.get(depot.name)
      if (known !== undefined) {
        if (known.partitions !== depot.partitions)
          throw fail(
            "SCHEMA_DRIFT",
            `Depot "${depot.name}" is already open with ${known.partitions} partitions; it cannot be opened again with ${depot.partitions}.`,
          )
        continue
      }
      if (!SAFE_NAME.test(depot.name) || depot.name === "." || depot.name === "..")
        throw fail(
          "STORE_FAILED",
          `Depot name "${depot.name}" cannot name a folder: use letters, digits and _ (see Depot.make).`,
        )
      if (!Number.isInteger(depot.partitions) || depot.partitions < 1 || depot.partitions > 1024)
        throw fail("STORE_FAILED", `Depot "${depot.name}" declares ${depot.partitions} partitions: use 1 to 1024.`)
      const state = await this.openDepot(depot, warnings)
      if (this.closed) {
        for (const p of state.parts) await p.handle.close().catch(noop)
        this.ensureOpen()
      }
      this.depots.set(depot.name, state)
    }
    return warnings
  }

  private async openDepot(depot: Depot, warnings: Array<string>): Promise<DepotState> {
    const dir = path.join(this.root, depot.name)
    try {
      await fsp.mkdir(dir, { recursive: true })
      await syncDir(this.root)
    } catch (cause) {
      throw unwritable(this.dataDir, cause)
    }
    // A missing log while another holds events was lost, not never created: logs are created together, before any append.
    let holdsEvents = false
    for (const name of await fsp.readdir(dir)) {
      const m = /^([0-9]+)\.log(\.tmp)?$/.exec(name)
      if (m === null) continue
      if (m[2] !== undefined) {
        // A log whose creation was interrupted: it never held an event.
        await fsp.rm(path.join(dir, name), { force: true })
        continue
      }
      const n = Number(m[1])
      if (n >= depot.partitions)
        throw fail(
          "SCHEMA_DRIFT",
          `Depot "${depot.name}" declares ${depot.partitions} partitions, but ${path.join(dir, name)} holds partition ${n}: ` +
            `the partition count changed. Declare the depot with its former partition count; changing it means replaying into a new depot.`,
        )
      holdsEvents ||= (await fsp.stat(path.join(dir, name))).size > HEADER_SIZE
    }
    // Take the depot over first and let the previous owner finish, so that no write of it is mistaken for a torn one.
    const previous = owners.get(dir)
    owners.set(dir, this)
    if (previous !== undefined && previous !== this) await previous.quiesce(dir)
    const state: DepotState = {
      name: depot.name,
      partitions: depot.partitions,
      dir,
      parts: [],
      messageIds: new MessageIndex(),
      lineage: new Map(),
      sorted: [],
      unsorted: [],
      inflight: new Map(),
    }
    try {
      for (let p = 0; p < depot.partitions; p++)
        state.parts.push(await this.openPartition(state, p, holdsEvents, warnings))
    } catch (cause) {
      for (const p of state.parts) await p.handle.close().catch(noop)
      if (owners.get(dir) === this) {
        if (previous === undefined) owners.delete(dir)
        else owners.set(dir, previous)
      }
      throw cause
    }
    return state
  }

  private async openPartition(
    d: DepotState,
    number: number,
    othersHoldEvents: boolean,
    warnings: Array<string>,
  ): Promise<Partition> {
    const file = path.join(d.dir, `${number}.log`)
    let handle: FileHandle
    try {
      handle = await fsp.open(file, "r+")
    } catch (cause) {
      if (errnoOf(cause) !== "ENOENT") throw this.ioError(`Opening ${file}`, cause)
      if (othersHoldEvents)
        throw fail(
          "CORRUPT",
          `Depot log ${file} is missing, while other partitions of depot "${d.name}" hold events. Restore it from a backup: ` +
            `BEDS does not create it afresh, since an empty log would silently stand in for lost events.`,
          false,
          { file, position: 0 },
        )
      // Header first into a temporary file, so a crash never leaves a log without one.
      const tmp = `${file}.tmp`
      try {
        const h = await fsp.open(tmp, "w")
        try {
          await writeFully(h, encodeHeader(d.name, number, d.partitions), 0)
          await h.sync()
        } finally {
          await h.close()
        }
        await fsp.rename(tmp, file)
        await syncDir(d.dir)
        handle = await fsp.open(file, "r+")
      } catch (cause2) {
        throw unwritable(this.dataDir, cause2)
      }
    }
    const p: Partition = {
      number,
      file,
      handle,
      positions: new Column(),
      versionAt: new Column(),
      previous: new Column(),
      size: HEADER_SIZE,
      latest: new Map(),
      tail: Promise.resolve(),
      broken: undefined,
    }
    try {
      await this.checkHeader(d, p)
      await this.scan(d, p, warnings)
    } catch (cause) {
      await handle.close().catch(noop)
      throw cause instanceof StoreError ? cause : this.ioError(`Reading ${file}`, cause)
    }
    return p
  }

  private async checkHeader(d: DepotState, p: Partition): Promise<void> {
    const { size } = await p.handle.stat()
    const h = Buffer.alloc(HEADER_SIZE)
    if (size >= HEADER_SIZE) await readFully(p.handle, h, 0, HEADER_SIZE, 0)
    const refuse = (what: string, code: StoreError["code"] = "CORRUPT") =>
      fail(code, `Depot log ${p.file} ${what}`, false, { file: p.file, position: 0 })
    if (size < HEADER_SIZE || !h.subarray(0, 8).equals(MAGIC))
      throw refuse(
        `is not a BEDS depot log (no valid header). Move it out of ${d.dir}, or restore the file from a backup.`,
      )
    if (h.readUInt32LE(124) !== zlib.crc32(h.subarray(0, 124)))
      throw refuse(`has a damaged header (checksum mismatch at byte 124). Restore the file from a backup.`)
    const format = h.readUInt16LE(8)
    if (format !== FORMAT || h.readUInt16LE(10) !== HEADER_SIZE)
      throw refuse(
        `is in format ${format}, which this version of BEDS cannot read (it reads format ${FORMAT}). ` +
          `Run the BEDS version that wrote it, or a newer one.`,
      )
    const name = h.toString("utf8", 21, 21 + h.readUInt8(20))
    const partition = h.readUInt32LE(12)
    const partitions = h.readUInt32LE(16)
    if (name !== d.name || partition !== p.number)
      throw refuse(
        `belongs to depot "${name}" partition ${partition}, not to depot "${d.name}" partition ${p.number}: ` +
          `it was copied or renamed into the wrong place. Put it back where it belongs, or restore this partition's log from a backup.`,
      )
    if (partitions !== d.partitions)
      throw refuse(
        `was written for ${partitions} partitions, but depot "${d.name}" now declares ${d.partitions}. ` +
          `Keys would land in other partitions and lose their order: declare the depot with ${partitions} partitions again; ` +
          `changing the count means replaying into a new depot.`,
        "SCHEMA_DRIFT",
      )
  }

  /**
   * Rebuilds the partition's indexes from its log, cutting a torn last batch
   * and refusing damage anywhere else.
   */
  private async scan(d: DepotState, p: Partition, warnings: Array<string>): Promise<void> {
    const fileSize = (await p.handle.stat()).size
    const c = new Chunks(p.handle, fileSize)
    const P = d.partitions
    const { positions, versionAt, previous, latest } = p
    // What the batch being read has added, to take back if it turns out torn.
    const batchKeys: Array<string> = []
    const batchHashes: Array<number> = []
    const batchIds: Array<string> = []
    let pos = HEADER_SIZE
    let batchStart = pos
    let batchSize = 0
    let batchNext = 0
    let damage: Damage | undefined
    while (pos < fileSize) {
      if (batchNext === 0) batchStart = pos
      if (fileSize - pos < 8) {
        damage = { at: pos, what: `${fileSize - pos} stray bytes, too few for a record`, tearable: true }
        break
      }
      if (!c.has(pos, 8)) await c.load(pos, 8)
      const size = c.buf.readUInt32LE(pos - c.base + 4) + 8
      if (size < FIXED) {
        damage = { at: pos, what: `a record length of ${size} bytes, below the minimum of ${FIXED}`, tearable: true }
        break
      }
      if (pos + size > fileSize) {
        damage = {
          at: pos,
          what: `a record of ${size} bytes that runs past the end of the file (${fileSize - pos} bytes left)`,
          tearable: true,
        }
        break
      }
      if (!c.has(pos, size)) await c.load(pos, size)
      const b = c.buf
      const at = pos - c.base
      if (!checksumOk(b, at, size)) {
        damage = { at: pos, what: "a record whose checksum does not match its contents", tearable: true }
        break
      }
      const inBatch = b.readUInt32LE(at + 8)
      const index = b.readUInt32LE(at + 12)
      if (batchNext === 0 ? index !== 0 || inBatch === 0 : index !== batchNext || inBatch !== batchSize) {
        damage = {
          at: pos,
          what:
            batchNext === 0
              ? `a record that says it is number ${index + 1} of ${inBatch} in its batch, where a batch should start`
              : `a record that says it is number ${index + 1} of ${inBatch} in its batch, where number ${batchNext + 1} of ${batchSize} should follow`,
          tearable: false,
        }
        break
      }
      if (batchNext === 0) batchSize = inBatch
      const offset = b.readDoubleLE(at + 16)
      if (offset !== positions.length) {
        damage = { at: pos, what: `offset ${offset} where offset ${positions.length} should follow`, tearable: false }
        break
      }
      const idLen = b.readUInt16LE(at + 42)
      const typeLen = b.readUInt16LE(at + 44)
      const parentLen = b.readUInt16LE(at + 46)
      const keyLen = b.readUInt32LE(at + 48)
      const midLen = b.readUInt32LE(at + 52)
      const metaLen = b.readUInt32LE(at + 56)
      const explicit = (b.readUInt16LE(at + 40) & FLAG_ID) !== 0
      if (FIXED + idLen + typeLen + parentLen + keyLen + midLen + metaLen > size || explicit !== idLen > 0) {
        damage = { at: pos, what: "a record whose field lengths do not fit its size", tearable: false }
        break
      }
      const keyAt = at + FIXED + idLen + typeLen + parentLen
      const id = explicit ? b.toString("utf8", at + FIXED, at + FIXED + idLen) : undefined
      const key = b.toString("utf8", keyAt, keyAt + keyLen)
      const version = b.readDoubleLE(at + 24)
      const last = latest.get(key)
      const expected = last === undefined ? 1 : versionAt.at(last) + 1
      if (version !== expected) {
        damage = {
          at: pos,
          what: `version ${version} for key ${JSON.stringify(key)}, whose events so far make it version ${expected}`,
          tearable: false,
        }
        break
      }
      const ref = offset * P + p.number
      positions.push(pos)
      versionAt.push(version)
      previous.push(last ?? -1)
      latest.set(key, offset)
      batchKeys.push(key)
      hashBytes(b, keyAt + keyLen, keyAt + keyLen + midLen)
      d.messageIds.add(ref)
      batchHashes.push(hashA, hashB, ref)
      if (id !== undefined && !d.lineage.has(id)) {
        d.lineage.set(id, ref)
        d.unsorted.push(id)
        batchIds.push(id)
      }
      pos += size
      if (++batchNext === batchSize) {
        batchNext = 0
        batchKeys.length = 0
        batchHashes.length = 0
        batchIds.length = 0
      }
    }
    if (damage === undefined && batchNext !== 0)
      damage = {
        at: pos,
        what: `a batch that ends after ${batchNext} of its ${batchSize} records`,
        tearable: true,
      }
    if (damage !== undefined) {
      const firstLost = positions.length - batchNext
      const later =
        damage.tearable && damage.at < fileSize
          ? await findLaterBatch(p.handle, damage.at + 1, fileSize, firstLost)
          : undefined
      if (!damage.tearable || later !== undefined)
        throw fail(
          "CORRUPT",
          `Depot log ${p.file} is damaged at byte ${damage.at} (in the batch of offset ${firstLost} onwards): ${damage.what}. ` +
            (later !== undefined
              ? `Valid events follow at byte ${later}, so this is not an append cut short by a crash but damage to acknowledged events. `
              : "This is not what an interrupted append leaves behind. ") +
            `BEDS refuses to open the depot rather than drop acknowledged events. Restore ${p.file} from a backup; or, accepting the loss of ` +
            `offset ${firstLost} and every later event of partition ${p.number}, truncate the log at byte ${batchStart} explicitly.`,
          false,
          { file: p.file, position: damage.at, truncateAt: batchStart, firstLostOffset: firstLost },
        )
      // Take back what the torn batch added.
      for (let i = batchKeys.length - 1; i >= 0; i--) {
        const before = previous.at(firstLost + i)
        if (before < 0) latest.delete(batchKeys[i] as string)
        else latest.set(batchKeys[i] as string, before)
      }
      positions.truncate(firstLost)
      versionAt.truncate(firstLost)
      previous.truncate(firstLost)
      for (let i = 0; i < batchHashes.length; i += 3) {
        hashA = batchHashes[i] as number
        hashB = batchHashes[i + 1] as number
        d.messageIds.remove(batchHashes[i + 2] as number)
      }
      for (const id of batchIds) d.lineage.delete(id)
      d.unsorted.length -= batchIds.length
      await p.handle.truncate(batchStart)
      await p.handle.sync()
      warnings.push(
        `Depot log ${p.file}: cut ${fileSize - batchStart} bytes off its end (from byte ${batchStart}; found ${damage.what} at byte ${damage.at}). ` +
          `An append was cut short by a crash; it was never acknowledged, so no acknowledged event is lost.`,
      )
      p.size = batchStart
    } else p.size = pos
  }

  // -------------------------------------------------------------------------------------------------------------------

  private ensureOpen(): void {
    if (this.closed) throw fail("STORE_UNAVAILABLE", `The file depot store at ${this.dataDir} is closed.`, false)
  }

  private depot(name: string): DepotState {
    this.ensureOpen()
    const d = this.depots.get(name)
    if (d === undefined)
      throw fail(
        "STORE_FAILED",
        `Depot "${name}" is not open in the file depot store at ${this.dataDir}: open it first (the engine opens every configured depot at start).`,
      )
    return d
  }

  private partition(d: DepotState, n: number): Partition {
    const p = Number.isInteger(n) ? d.parts[n] : undefined
    if (p === undefined)
      throw fail(
        "STORE_FAILED",
        `Depot "${d.name}" has partitions 0 to ${d.partitions - 1}; there is no partition ${n}.`,
      )
    return p
  }

  private ioError(what: string, cause: unknown): StoreError {
    return fail("STORE_FAILED", `${what} failed: ${describe(cause)}.`, TRANSIENT.has(errnoOf(cause) ?? ""), cause)
  }

  /** Events of offsets [from, to), all durable. */
  private async readRange(d: DepotState, p: Partition, from: number, to: number): Promise<Array<Event>> {
    const out: Array<Event> = []
    const end = (o: number) => (o + 1 < p.positions.length ? p.positions.at(o + 1) : p.size)
    let o = from
    while (o < to) {
      const start = p.positions.at(o)
      let last = o + 1
      while (last < to && end(last) - start <= READ_PIECE) last++
      const stop = end(last - 1)
      const b = Buffer.allocUnsafe(stop - start)
      try {
        await readFully(p.handle, b, 0, b.length, start)
      } catch (cause) {
        throw this.ioError(`Reading ${p.file}`, cause)
      }
      // Every indexed record had its checksum verified when this process opened the log, or was written
      // by it; checking again on each read would double the cost of a rebuild for damage the next open
      // catches anyway. What is checked here is only that the record is where the index says.
      for (; o < last; o++) {
        const at = p.positions.at(o) - start
        const size = end(o) - p.positions.at(o)
        if (b.readUInt32LE(at + 4) + 8 !== size || b.readDoubleLE(at + 16) !== o)
          throw fail(
            "CORRUPT",
            `Depot log ${p.file} changed under this process at byte ${p.positions.at(o)} (offset ${o}): the record there is not the one indexed when the log was opened. ` +
              `Stop BEDS; opening the depot again checks every record and says what is damaged.`,
            false,
            { file: p.file, position: p.positions.at(o) },
          )
        out.push(decodeRecord(b, at, d.name, p.number))
      }
    }
    return out
  }

  private async readRef(d: DepotState, ref: number): Promise<Event> {
    const p = d.parts[ref % d.partitions] as Partition
    const offset = Math.floor(ref / d.partitions)
    return (await this.readRange(d, p, offset, offset + 1))[0] as Event
  }

  append(depot: string, partition: number, requests: ReadonlyArray<AppendRequest>): Promise<Array<AppendOutcome>> {
    try {
      const d = this.depot(depot)
      const p = this.partition(d, partition)
      const run = p.tail.then(() => this.appendNow(d, p, requests))
      p.tail = run.catch(noop)
      return run
    } catch (e) {
      return Promise.reject(e)
    }
  }

  private async appendNow(
    d: DepotState,
    p: Partition,
    requests: ReadonlyArray<AppendRequest>,
  ): Promise<Array<AppendOutcome>> {
    this.ensureOpen()
    this.checkOwner(d)
    if (p.broken !== undefined) throw p.broken
    if (requests.length === 0) return []
    // Originals of repeated message_ids come from disk; an append elsewhere writing one of ours is waited for.
    // Only a pass that reads nothing ends the loop, so nothing changes between the last look and the plan.
    const originals = new Map<string, Event>()
    const read = new Set<number>()
    for (;;) {
      const waits: Array<Promise<void>> = []
      const unread: Array<number> = []
      for (const r of requests) {
        const w = d.inflight.get(r.messageId)
        if (w !== undefined) waits.push(w)
        else if (!originals.has(r.messageId)) {
          hashString(r.messageId)
          for (const ref of d.messageIds.candidates()) if (!read.has(ref)) unread.push(ref)
        }
      }
      if (waits.length > 0) await Promise.all(waits)
      else if (unread.length > 0)
        for (const ref of unread) {
          read.add(ref)
          const e = await this.readRef(d, ref)
          if (!originals.has(e.messageId)) originals.set(e.messageId, e)
        }
      else break
    }
    this.checkOwner(d)
    const plan = planAppend(
      d.name,
      p.number,
      p.positions.length,
      requests,
      (m) => originals.get(m),
      (k) => versionOf(p, k),
    )
    const events = plan.events
    if (events.length === 0) return [...plan.outcomes]
    const encoded = encodeBatch(d.name, p.number, events)
    const ids = new Set<string>()
    for (let i = 0; i < events.length; i++) {
      if (!encoded.explicit[i]) continue
      const id = (events[i] as Event).id
      let taken = this.pendingIds.has(id) || ids.has(id)
      for (const other of this.depots.values()) taken ||= other.lineage.has(id)
      if (taken)
        throw fail(
          "STORE_FAILED",
          `Appending to ${d.name}/${p.number}: an event with lineage ID "${id}" already exists; a derived event's ID must be unique.`,
        )
      ids.add(id)
    }
    let release: () => void = noop
    const done = new Promise<void>((resolve) => {
      release = resolve
    })
    for (const e of events) d.inflight.set(e.messageId, done)
    for (const id of ids) this.pendingIds.add(id)
    const finish = () => {
      for (const e of events) d.inflight.delete(e.messageId)
      for (const id of ids) this.pendingIds.delete(id)
      release()
    }
    try {
      await writeFully(p.handle, encoded.buffer, p.size)
      await p.handle.datasync()
    } catch (cause) {
      const error = await this.undoWrite(p, cause)
      finish()
      throw error
    }
    let at = p.size
    for (let i = 0; i < events.length; i++) {
      const e = events[i] as Event
      const ref = e.offset * d.partitions + p.number
      p.positions.push(at)
      const last = p.latest.get(e.key)
      p.versionAt.push(e.version)
      p.previous.push(last ?? -1)
      p.latest.set(e.key, e.offset)
      at += encoded.sizes[i] as number
      hashString(e.messageId)
      d.messageIds.add(ref)
      if (encoded.explicit[i]) {
        d.lineage.set(e.id, ref)
        d.unsorted.push(e.id)
      }
    }
    p.size = at
    finish()
    return [...plan.outcomes]
  }

  /** Cuts a failed write back off, so the log holds only durable records. */
  private async undoWrite(p: Partition, cause: unknown): Promise<StoreError> {
    const what = `Appending to ${p.file} failed (${describe(cause)})`
    try {
      await p.handle.truncate(p.size)
      await p.handle.sync()
      return fail("STORE_FAILED", `${what}; nothing was appended.`, TRANSIENT.has(errnoOf(cause) ?? ""), cause)
    } catch (cause2) {
      p.broken = fail(
        "STORE_FAILED",
        `${what}, and cutting the partial write back off failed too (${describe(cause2)}). ` +
          `Appends to this partition are refused until BEDS restarts: opening the depot re-checks the log and cuts any unacknowledged tail.`,
        false,
        cause,
      )
      return p.broken
    }
  }

  /** An opened depot, or undefined for one this store has never opened (it holds no events here). */
  private known(name: string): DepotState | undefined {
    this.ensureOpen()
    return this.depots.get(name)
  }

  async read(depot: string, partition: number, from: number, limit: number): Promise<Array<Event>> {
    const d = this.known(depot)
    if (d === undefined) return []
    const p = this.partition(d, partition)
    const start = Math.max(0, Math.floor(from))
    const stop = Math.min(p.positions.length, start + Math.max(0, Math.floor(limit)))
    return start >= stop ? [] : this.readRange(d, p, start, stop)
  }

  head(depot: string, partition: number): number {
    const d = this.known(depot)
    return d === undefined ? 0 : this.partition(d, partition).positions.length
  }

  version(depot: string, partition: number, key: string): number {
    const d = this.known(depot)
    return d === undefined ? 0 : versionOf(this.partition(d, partition), key)
  }

  async byMessageId(depot: string, messageId: string): Promise<Event | undefined> {
    const d = this.known(depot)
    if (d === undefined) return undefined
    hashString(messageId)
    for (const ref of d.messageIds.candidates()) {
      const e = await this.readRef(d, ref)
      if (e.messageId === messageId) return e
    }
    return undefined
  }

  async byId(id: string): Promise<Event | undefined> {
    this.ensureOpen()
    for (const d of this.depots.values()) {
      const ref = d.lineage.get(id)
      if (ref !== undefined) return this.readRef(d, ref)
    }
    if (id.includes("/")) return undefined
    const at = Lineage.positionOfSegment(id)
    const d = at === undefined ? undefined : this.depots.get(at.depot)
    if (at === undefined || d === undefined) return undefined
    const p = d.parts[at.partition]
    if (p === undefined || at.offset >= p.positions.length) return undefined
    const [e] = await this.readRange(d, p, at.offset, at.offset + 1)
    // An event at that position whose ID is not its position is not this one.
    return e?.id === id ? e : undefined
  }

  /** A key's events from version `from`, walking its chain of previous offsets back from the latest. */
  async byKey(depot: string, key: string, from: number, limit: number): Promise<Array<Event>> {
    const d = this.known(depot)
    const max = Math.max(0, Math.floor(limit))
    const p = d?.parts.find((q) => q.latest.has(key))
    if (d === undefined || p === undefined || max === 0) return []
    const offsets: Array<number> = []
    for (let o = p.latest.get(key) as number; o >= 0 && p.versionAt.at(o) >= from; o = p.previous.at(o)) offsets.push(o)
    const out: Array<Event> = []
    for (let i = offsets.length - 1; i >= 0 && out.length < max; i--) {
      const o = offsets[i] as number
      out.push(...(await this.readRange(d, p, o, o + 1)))
    }
    return out
  }

  async descendants(id: string, limit: number): Promise<Array<Event>> {
    this.ensureOpen()
    const max = Math.max(0, Math.floor(limit))
    if (max === 0) return []
    const { lower, upper } = Lineage.descendantRange(id)
    const found: Array<{ readonly id: string; readonly d: DepotState; readonly ref: number }> = []
    for (const d of this.depots.values()) {
      const sorted = sortedIds(d)
      let lo = 0
      let hi = sorted.length
      while (lo < hi) {
        const mid = (lo + hi) >>> 1
        if ((sorted[mid] as string) < lower) lo = mid + 1
        else hi = mid
      }
      for (let i = lo, n = 0; i < sorted.length && n < max; i++, n++) {
        const x = sorted[i] as string
        if (x >= upper) break
        found.push({ id: x, d, ref: d.lineage.get(x) as number })
      }
    }
    found.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    const out: Array<Event> = []
    for (const f of found.slice(0, max)) out.push(await this.readRef(f.d, f.ref))
    return out
  }
}

/** The depot's non-root IDs in order, merging in those added since the last call. */
const sortedIds = (d: DepotState): ReadonlyArray<string> => {
  if (d.unsorted.length === 0) return d.sorted
  const add = d.unsorted.sort()
  const old = d.sorted
  const merged: Array<string> = new Array(old.length + add.length)
  let i = 0
  let j = 0
  let k = 0
  while (i < old.length && j < add.length)
    merged[k++] = (old[i] as string) <= (add[j] as string) ? (old[i++] as string) : (add[j++] as string)
  while (i < old.length) merged[k++] = old[i++] as string
  while (j < add.length) merged[k++] = add[j++] as string
  d.sorted = merged
  d.unsorted = []
  return merged
}

// ---------------------------------------------------------------------------------------------------------------------
// Effect surface

const toStoreError =
  (what: string) =>
  (cause: unknown): StoreError =>
    cause instanceof StoreError
      ? cause
      : fail("STORE_FAILED", `${what} failed: ${describe(cause)}`, TRANSIENT.has(errnoOf(cause) ?? ""), cause)

const attempt = <A>(what: string, f: () => Promise<A>): Effect.Effect<A, StoreError> =>
  Effect.tryPromise({ try: f, catch: toStoreError(what) })

const attemptSync = <A>(what: string, f: () => A): Effect.Effect<A, StoreError> =>
  Effect.try({ try: f, catch: toStoreError(what) })

/**
 * The file depot store over `dataDir`, open for the enclosing scope: the
 * folder is created if missing and locked against other processes; each
 * depot's logs are opened (and checked) by `open`.
 */
export const make = (dataDir: string): Effect.Effect<DepotStoreShape, StoreError, Scope.Scope> =>
  Effect.gen(function* () {
    const store = yield* Effect.acquireRelease(
      attempt(`Opening the data folder ${dataDir}`, () => FileStore.create(dataDir)),
      (s) => Effect.promise(() => s.close()),
    )
    const shape: DepotStoreShape = {
      open: (depots) =>
        attempt("Opening depots", () => store.open(depots)).pipe(
          Effect.flatMap((warnings) => Effect.forEach(warnings, (w) => Effect.logWarning(w), { discard: true })),
        ),
      append: (depot, partition, requests) =>
        attempt(`Appending to ${depot}/${partition}`, () => store.append(depot, partition, requests)),
      read: (depot, partition, from, limit) =>
        attempt(`Reading ${depot}/${partition}`, () => store.read(depot, partition, from, limit)),
      head: (depot, partition) => attemptSync(`Head of ${depot}/${partition}`, () => store.head(depot, partition)),
      version: (depot, partition, key) =>
        attemptSync(`Version in ${depot}/${partition}`, () => store.version(depot, partition, key)),
      byMessageId: (depot, messageId) =>
        attempt(`Looking up a message_id in ${depot}`, () => store.byMessageId(depot, messageId)),
      byId: (id) => attempt(`Looking up ${id}`, () => store.byId(id)),
      descendants: (id, limit) => attempt(`Descendants of ${id}`, () => store.descendants(id, limit)),
      byKey: (depot, key, from, limit) =>
        attempt(`History of key ${JSON.stringify(key)} in ${depot}`, () => store.byKey(depot, key, from, limit)),
    }
    return shape
  })

/** The file depot store as a Layer; its files are closed and its lock released when the Layer's scope ends. */
export const layer = (dataDir: string): Layer.Layer<DepotStore, StoreError> => Layer.effect(DepotStore, make(dataDir))

/** Where a depot partition's log lives, for tools and tests. */
export const logPath = (dataDir: string, depot: string, partition: number): string =>
  path.join(path.resolve(dataDir), "depots", depot, `${partition}.log`)

/** Byte size of a log's header: records start here. */
export const LOG_HEADER_BYTES = HEADER_SIZE
