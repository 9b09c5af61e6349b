/**
 * The depot store on MariaDB: every depot in one InnoDB table, `beds_event`.
 *
 * Index design (each query below names the index it rides on):
 *   - PRIMARY KEY (depot, part, off): the log itself. Reads of a partition are
 *     one clustered range scan, the head is one descent to its last entry, and
 *     the key doubles as the fence: a stale writer's insert lands on an offset
 *     that is already taken and fails with a duplicate-key error instead of
 *     forking the log.
 *   - UNIQUE (id): lineage IDs are unique across depots (a root names its own
 *     position, a derived ID extends its parent's), and the descendants of X
 *     are exactly the IDs in [X + "/", X + "0"), one range scan of this index.
 *     ascii_bin orders them byte-wise, as JavaScript compares them.
 *   - UNIQUE (depot, message_id): deduplication, also across partitions of a
 *     depot; two partitions racing on one message_id cannot both win.
 *   - KEY (depot, key, version): a key's version is its highest version, read
 *     from the end of the key's index range without walking its history, one
 *     descent per key. It leaves the partition out: a key always maps to the
 *     same partition of its depot.
 *
 * `key` and `message_id` use a NO PAD collation: under the PAD SPACE
 * collations "a" and "a " compare equal, which would merge two keys and call
 * a new command a duplicate.
 *
 * Appends: one transaction per batch. The engine runs one writer per
 * partition, so each store instance caches the head of the partitions it
 * wrote and the versions of recently used keys (LRU, bounded). The cache is
 * only trusted as far as the primary key lets it: a collision on
 * (depot, part, off) means another instance wrote meanwhile, so the batch fails
 * with FENCED and the partition's cache is dropped; a later append re-reads.
 */
import { Effect, Layer } from "effect"
import type * as mariadb from "mariadb"
import { StoreError } from "../errors.ts"
import * as Lineage from "../lineage/lineage-id.ts"
import { corked, MariaDb } from "../mariadb/client.ts"
import type { AppendRequest, Event } from "./event.ts"
import { planAppend } from "./memory.ts"
import { DepotStore, type DepotStoreShape } from "./store.ts"

/** Tuning for the MariaDB depot store. */
export interface Options {
  /** Key versions cached per partition (least recently used go first). */
  readonly keyCacheSize?: number
}

/** The one table of every depot on MariaDB. */
export const TABLE = "beds_event"

/**
 * Above this many bytes the driver may send a bulk insert as several
 * statements (it splits at the server's max packet size), so the batch gets
 * a transaction; below it the insert is one atomic statement.
 */
const SINGLE_STATEMENT_BYTES = 4 * 1024 * 1024

const DDL = `CREATE TABLE IF NOT EXISTS ${TABLE} (
  depot VARCHAR(63) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  part SMALLINT UNSIGNED NOT NULL,
  off BIGINT UNSIGNED NOT NULL,
  id VARCHAR(${Lineage.MAX_LENGTH}) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  type VARCHAR(63) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  \`key\` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
  version BIGINT UNSIGNED NOT NULL,
  payload LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  time BIGINT NOT NULL,
  parent VARCHAR(${Lineage.MAX_LENGTH}) CHARACTER SET ascii COLLATE ascii_bin NULL,
  root VARCHAR(${Lineage.MAX_LENGTH}) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  message_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
  metadata TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  PRIMARY KEY (depot, part, off),
  UNIQUE KEY uq_event_id (id),
  UNIQUE KEY uq_event_message (depot, message_id),
  KEY ix_event_key (depot, \`key\`, version)
) ENGINE=InnoDB`

const COLUMNS = [
  "depot",
  "part",
  "off",
  "id",
  "type",
  "key",
  "version",
  "payload",
  "time",
  "parent",
  "root",
  "message_id",
  "metadata",
]
/** Every column of an event, in the order `toEvent` reads them. */
export const SELECT = `SELECT ${COLUMNS.map((c) => `\`${c}\``).join(", ")} FROM ${TABLE}`
const INSERT = `INSERT INTO ${TABLE} (${COLUMNS.map((c) => `\`${c}\``).join(", ")}) VALUES (${COLUMNS.map(() => "?").join(", ")})`
// Message IDs bound to `IN (?)` (the driver expands arrays) name their index:
// on a young depot the optimizer may prefer the primary key's (depot) prefix,
// which turns into a scan as the depot grows.
const BY_MESSAGE_IDS = {
  sql: `${SELECT} FORCE INDEX (uq_event_message) WHERE depot = ? AND message_id IN (?)`,
  rowsAsArray: true,
}
// One backward index descent per key, whatever the statistics say: a
// GROUP BY over the keys would let the optimizer read every version of a hot
// key whenever most keys of the table are short. The keys arrive as one JSON
// array; the collation must match the column's, or "a" would find "A ".
const VERSIONS = {
  sql: `SELECT t.k, (SELECT e.version FROM ${TABLE} e WHERE e.depot = ? AND e.\`key\` = t.k ORDER BY e.version DESC LIMIT 1)
  FROM JSON_TABLE(?, '$[*]' COLUMNS (k VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin PATH '$')) t`,
  rowsAsArray: true,
}
const HEAD = { sql: `SELECT MAX(off) FROM ${TABLE} WHERE depot = ? AND part = ?`, rowsAsArray: true }
const VERSION = { sql: `SELECT MAX(version) FROM ${TABLE} WHERE depot = ? AND \`key\` = ?`, rowsAsArray: true }
// A partition's events: depot and partition are the query's own, so they are not read back for every row.
const READ = {
  sql: `SELECT ${COLUMNS.slice(2)
    .map((c) => `\`${c}\``)
    .join(", ")} FROM ${TABLE} WHERE depot = ? AND part = ? AND off >= ? ORDER BY off LIMIT ?`,
  rowsAsArray: true,
}
const BY_MESSAGE_ID = { sql: `${SELECT} WHERE depot = ? AND message_id = ?`, rowsAsArray: true }
const BY_ID = { sql: `${SELECT} WHERE id = ?`, rowsAsArray: true }
const DESCENDANTS = { sql: `${SELECT} WHERE id >= ? AND id < ? ORDER BY id LIMIT ?`, rowsAsArray: true }

type Row = ReadonlyArray<unknown>

/** An event of a depot partition from a row whose columns from `off` on start at index `at`. */
const eventAt = (depot: string, partition: number, r: Row, at: number): Event => ({
  depot,
  partition,
  offset: r[at] as number,
  id: r[at + 1] as string,
  type: r[at + 2] as string,
  key: r[at + 3] as string,
  version: r[at + 4] as number,
  payload: JSON.parse(r[at + 5] as string),
  time: r[at + 6] as number,
  parent: r[at + 7] as string | null,
  root: r[at + 8] as string,
  messageId: r[at + 9] as string,
  metadata: r[at + 10] === "{}" ? NO_METADATA : JSON.parse(r[at + 10] as string),
})

/** An event from a row selected with `SELECT` (rowsAsArray). */
export const toEvent = (r: Row): Event => eventAt(r[0] as string, r[1] as number, r, 2)

/** An event from a row of READ, which leaves out the depot and partition it asked for. */
const toPartitionEvent = (depot: string, partition: number, r: Row): Event => eventAt(depot, partition, r, 0)

/** Most events carry no metadata: one shared, frozen empty object for all of them. */
const NO_METADATA: Readonly<Record<string, string>> = Object.freeze({})

const toRow = (e: Event): Array<unknown> => [
  e.depot,
  e.partition,
  e.offset,
  e.id,
  e.type,
  e.key,
  e.version,
  JSON.stringify(e.payload),
  e.time,
  e.parent,
  e.root,
  e.messageId,
  JSON.stringify(e.metadata),
]

/** Which unique index a duplicate-key error hit, carried out of the transaction. */
class DuplicateKey {
  readonly index: "log" | "message" | "id"
  readonly message: string
  constructor(index: "log" | "message" | "id", message: string) {
    this.index = index
    this.message = message
  }
}

const duplicateKey = (cause: unknown): DuplicateKey | undefined => {
  const e = cause as { errno?: number; sqlMessage?: string; message?: string }
  if (e?.errno !== 1062) return undefined
  const text = e.sqlMessage ?? e.message ?? ""
  const index = /for key '(?:[^']*\.)?([^'.]+)'/.exec(text)?.[1]
  if (index === "PRIMARY") return new DuplicateKey("log", text)
  if (index === "uq_event_message") return new DuplicateKey("message", text)
  if (index === "uq_event_id") return new DuplicateKey("id", text)
  return undefined
}

interface Cached {
  head: number
  /** Insertion order is recency order: the first entry is evicted first. */
  readonly versions: Map<string, number>
}

const readOne = (rows: ReadonlyArray<Row>): Event | undefined => (rows.length > 0 ? toEvent(rows[0] as Row) : undefined)

/** The MariaDB depot store over the shared pool. */
export const make = (options: Options = {}): Effect.Effect<DepotStoreShape, never, MariaDb> =>
  Effect.gen(function* () {
    const db = yield* MariaDb
    const keyCacheSize = Math.max(0, options.keyCacheSize ?? 10_000)
    const cache = new Map<string, Cached>()

    const open: DepotStoreShape["open"] = () =>
      db
        .run("Creating the depot table", async (pool) => {
          await pool.query(DDL)
          const rows: Array<Row> = await pool.query(
            {
              sql: "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ?",
              rowsAsArray: true,
            },
            [TABLE],
          )
          const have = new Set(rows.map((r) => String(r[0]).toLowerCase()))
          const missing = COLUMNS.filter((c) => !have.has(c))
          if (missing.length > 0)
            throw new StoreError({
              code: "SCHEMA_DRIFT",
              message: `Table ${TABLE} in ${db.settings.database} lacks column(s) ${missing.join(", ")}; it was not created by this version of BEDS. Move it aside or migrate it before starting.`,
              retryable: false,
            })
        })
        .pipe(Effect.catch((e) => Effect.fail(e.cause instanceof StoreError ? e.cause : e)))

    interface Written {
      readonly outcomes: ReturnType<typeof planAppend>["outcomes"]
      readonly head: number
      readonly appended: number
      readonly versions: ReadonlyMap<string, number>
    }

    /** One partition's batch, with what the cache knew when it was taken. */
    interface Prepared {
      readonly depot: string
      readonly partition: number
      readonly requests: ReadonlyArray<AppendRequest>
      readonly slot: string
      readonly before: Cached | undefined
      readonly head: number | undefined
      readonly known: Map<string, number>
      readonly missing: ReadonlyArray<string>
      readonly lookup: boolean
    }

    const prepare = (
      depot: string,
      partition: number,
      requests: ReadonlyArray<AppendRequest>,
      // Duplicates are rare: the first try inserts without asking which
      // message_ids exist and lets the unique key say so; only a collision
      // pays for the lookup, on the retry.
      lookup: boolean,
    ): Prepared => {
      const slot = `${depot}:${partition}`
      const before = cache.get(slot)
      const known = new Map<string, number>()
      const missing: Array<string> = []
      for (const r of requests) {
        if (known.has(r.key)) continue
        const v = before?.versions.get(r.key)
        if (v === undefined) missing.push(r.key)
        known.set(r.key, v ?? 0)
      }
      // The head is taken now, before any await: a cache entry that moves
      // during the write must not mix with what this batch read.
      return { depot, partition, requests, slot, before, head: before?.head, known, missing, lookup }
    }

    /**
     * Writes prepared batches of distinct partitions as one bulk insert: one
     * round trip and one log sync for all of them, all or nothing.
     *
     * No transaction around the reads: each partition has one writer, so its
     * head and versions cannot move underneath; a message_id another
     * partition appends meanwhile is caught by the unique key. The insert is
     * one statement, atomic in autocommit; only a write too large for one
     * statement gets a transaction around its statements.
     */
    const write = async (conn: mariadb.PoolConnection, batches: ReadonlyArray<Prepared>): Promise<Array<Written>> => {
      // Pipelined: the driver sends every lookup before the first answer arrives.
      const answers = await Promise.all(
        corked(conn, () =>
          batches.flatMap((b) => [
            b.lookup
              ? (conn.query(BY_MESSAGE_IDS, [b.depot, b.requests.map((r) => r.messageId)]) as Promise<Array<Row>>)
              : [],
            b.missing.length > 0
              ? (conn.query(VERSIONS, [b.depot, JSON.stringify(b.missing)]) as Promise<Array<Row>>)
              : undefined,
            b.head === undefined ? (conn.query(HEAD, [b.depot, b.partition]) as Promise<Array<Row>>) : undefined,
          ]),
        ),
      )
      const written: Array<Written> = []
      const rows: Array<Array<unknown>> = []
      // A later batch repeating a message_id that an earlier one appends gets that event, as it
      // would appending after it: the lookups ran before anything of this write was stored.
      const earlier = new Map<string, Event>()
      batches.forEach((b, i) => {
        const [dupRows, versionRows, headRows] = answers.slice(i * 3, i * 3 + 3) as [
          Array<Row>,
          Array<Row> | undefined,
          Array<Row> | undefined,
        ]
        const originals = new Map<string, Event>()
        for (const r of dupRows) originals.set(r[11] as string, toEvent(r))
        if (versionRows !== undefined)
          for (const r of versionRows) b.known.set(r[0] as string, (r[1] as number | null) ?? 0)
        const start = b.head ?? ((headRows?.[0]?.[0] as number | null) ?? -1) + 1
        const plan = planAppend(
          b.depot,
          b.partition,
          start,
          b.requests,
          (messageId) => originals.get(messageId) ?? earlier.get(`${b.depot}\u0000${messageId}`),
          (key) => b.known.get(key) ?? 0,
        )
        for (const e of plan.events) {
          rows.push(toRow(e))
          if (batches.length > 1) earlier.set(`${b.depot}\u0000${e.messageId}`, e)
        }
        written.push({ outcomes: plan.outcomes, head: start, appended: plan.events.length, versions: plan.versions })
      })
      if (rows.length > 0) {
        let bytes = 0
        for (const r of rows) bytes += (r[7] as string).length + (r[12] as string).length + 400
        const split = bytes > SINGLE_STATEMENT_BYTES
        try {
          if (split) await conn.beginTransaction()
          await conn.batch(INSERT, rows)
          if (split) await conn.commit()
        } catch (e) {
          if (split) await conn.rollback().catch(() => undefined)
          throw duplicateKey(e) ?? e
        }
      }
      return written
    }

    const attempt = (
      depot: string,
      partition: number,
      requests: ReadonlyArray<AppendRequest>,
      retries: number,
      lookup: boolean,
    ): Effect.Effect<Written["outcomes"], StoreError> => {
      const batch = prepare(depot, partition, requests, lookup)
      return db
        .withConnection(`Appending to ${depot}/${partition}`, (conn) => write(conn, [batch]))
        .pipe(
          Effect.map(([w]) => {
            remember(batch.slot, batch.before, w as Written)
            return (w as Written).outcomes
          }),
          Effect.catch((error) => {
            const dup = error.cause instanceof DuplicateKey ? error.cause : undefined
            if (dup?.index === "message") {
              // Another partition committed one of these message_ids after this batch looked:
              // a second look finds it and answers with the original.
              if (!lookup) return attempt(depot, partition, requests, retries, true)
              if (retries > 0) return attempt(depot, partition, requests, retries - 1, true)
              return Effect.fail(
                new StoreError({
                  code: "STORE_FAILED",
                  message: `Appending to ${depot}/${partition}: a message_id of this batch kept colliding with a concurrent append to another partition (${dup.message}); retry the batch.`,
                  retryable: true,
                  cause: error,
                }),
              )
            }
            // A derived event's ID is its message_id: a re-run batch hits the ID first.
            if (dup?.index === "id" && !lookup) return attempt(depot, partition, requests, retries, true)
            if (dup?.index === "id")
              return Effect.fail(
                new StoreError({
                  code: "STORE_FAILED",
                  message: `Appending to ${depot}/${partition}: a derived event's lineage ID already exists (${dup.message}); each child ID must be emitted once.`,
                  retryable: false,
                  cause: error,
                }),
              )
            cache.delete(batch.slot)
            if (dup?.index === "log")
              return Effect.fail(
                new StoreError({
                  code: "FENCED",
                  message: `Appending to ${depot}/${partition}: offset ${batch.head ?? "?"} onwards was written by another writer since this one last appended (${dup.message}). This writer is stale; stop it and let the partition's owner append.`,
                  retryable: false,
                  cause: error,
                }),
              )
            return Effect.fail(error)
          }),
        )
    }

    const remember = (slot: string, before: Cached | undefined, w: Written): void => {
      if (cache.get(slot) !== before) {
        // Another append on this instance moved the entry meanwhile; trust neither.
        cache.delete(slot)
        return
      }
      const entry = before ?? { head: 0, versions: new Map<string, number>() }
      entry.head = w.head + w.appended
      const versions = entry.versions
      for (const [key, v] of w.versions) {
        versions.delete(key)
        versions.set(key, v)
      }
      while (versions.size > keyCacheSize) versions.delete(versions.keys().next().value as string)
      if (before === undefined) cache.set(slot, entry)
    }

    /**
     * Whether the first try looks up message_ids: a repeat whose expect
     * fails is never inserted, so the unique key would not catch it.
     */
    const lookUpFirst = (requests: ReadonlyArray<AppendRequest>) => requests.some((r) => r.expect !== undefined)

    const append: DepotStoreShape["append"] = (depot, partition, requests) =>
      requests.length === 0 ? Effect.succeed([]) : attempt(depot, partition, requests, 1, lookUpFirst(requests))

    // Each batch as `append` would take it; a failure of any fails all, and the writer then appends each alone.
    const appendAll: NonNullable<DepotStoreShape["appendAll"]> = (batches) => {
      const prepared = batches.map((b) => prepare(b.depot, b.partition, b.requests, lookUpFirst(b.requests)))
      return db
        .withConnection(`Appending to ${batches.map((b) => `${b.depot}/${b.partition}`).join(", ")}`, (conn) =>
          write(conn, prepared),
        )
        .pipe(
          Effect.map((written) =>
            written.map((w, i) => {
              const b = prepared[i] as Prepared
              remember(b.slot, b.before, w)
              return w.outcomes
            }),
          ),
        )
    }

    const read: DepotStoreShape["read"] = (depot, partition, from, limit) =>
      limit <= 0
        ? Effect.succeed([])
        : db.run(`Reading ${depot}/${partition}`, async (pool) =>
            ((await pool.query(READ, [depot, partition, Math.max(0, from), limit])) as Array<Row>).map((r) =>
              toPartitionEvent(depot, partition, r),
            ),
          )

    const head: DepotStoreShape["head"] = (depot, partition) =>
      db.run(`Reading the head of ${depot}/${partition}`, async (pool) => {
        const rows = (await pool.query(HEAD, [depot, partition])) as Array<Row>
        return ((rows[0]?.[0] as number | null) ?? -1) + 1
      })

    const version: DepotStoreShape["version"] = (depot, _partition, key) =>
      db.run(`Reading the version of ${depot}/${key}`, async (pool) => {
        const rows = (await pool.query(VERSION, [depot, key])) as Array<Row>
        return (rows[0]?.[0] as number | null) ?? 0
      })

    const byMessageId: DepotStoreShape["byMessageId"] = (depot, messageId) =>
      db.run(`Looking up message_id in ${depot}`, async (pool) =>
        readOne((await pool.query(BY_MESSAGE_ID, [depot, messageId])) as Array<Row>),
      )

    const byId: DepotStoreShape["byId"] = (id) =>
      db.run(`Looking up event ${id}`, async (pool) => readOne((await pool.query(BY_ID, [id])) as Array<Row>))

    const descendants: DepotStoreShape["descendants"] = (id, limit) => {
      if (limit <= 0) return Effect.succeed([])
      const { lower, upper } = Lineage.descendantRange(id)
      return db.run(`Reading the descendants of ${id}`, async (pool) =>
        ((await pool.query(DESCENDANTS, [lower, upper, limit])) as Array<Row>).map(toEvent),
      )
    }

    // One range of ix_event_key (depot, key, version): a key's history without touching other keys.
    const byKey: DepotStoreShape["byKey"] = (depot, key, from, limit) =>
      limit <= 0
        ? Effect.succeed([])
        : db.run(`Reading the history of ${depot}/${key}`, async (pool) =>
            ((await pool.query(BY_KEY, [depot, key, Math.max(1, from), limit])) as Array<Row>).map(toEvent),
          )

    return DepotStore.of({ open, append, appendAll, read, head, version, byMessageId, byId, descendants, byKey })
  })

const BY_KEY = {
  sql: `${SELECT} FORCE INDEX (ix_event_key) WHERE depot = ? AND \`key\` = ? AND version >= ? ORDER BY version LIMIT ?`,
  rowsAsArray: true,
}

/** The MariaDB depot store as a Layer over the shared pool. */
export const layer: Layer.Layer<DepotStore, never, MariaDb> = Layer.effect(DepotStore, make())

/** The same, with tuning. */
export const layerWith = (options: Options): Layer.Layer<DepotStore, never, MariaDb> =>
  Layer.effect(DepotStore, make(options))
