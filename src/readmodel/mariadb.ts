/**
 * REL read models in MariaDB: one table per template (DDL from
 * template/ddl.ts) and the `beds_checkpoint` table.
 *
 * Exactly-once: `commit` writes a batch's rows and the topology's checkpoint
 * in one InnoDB transaction. A crash or failure before COMMIT leaves both
 * as they were, so the topology re-runs the batch from the old checkpoint;
 * after COMMIT both have moved, so no event is applied twice.
 */
import { Effect, Layer } from "effect"
import type * as mariadb from "mariadb"
import { StoreError } from "../errors.ts"
import { getOrCreate } from "../internal/map.ts"
import { corked, MariaDb, type MariaDbShape } from "../mariadb/client.ts"
import {
  type ActualTable,
  CHECKPOINT_TABLE,
  checkpointTableSql,
  createTableSql,
  planMigration,
  quoteId,
} from "../template/ddl.ts"
import { checkEnsured } from "../template/load.ts"
import {
  checkKey,
  checkRow,
  type Field,
  keyId,
  keyOf,
  LAST_EVENT_COLUMN,
  type Row,
  type RowKey,
  type Template,
} from "../template/template.ts"
import {
  type CheckpointId,
  type ReadModelReplayShape,
  ReadModelStore,
  type ReadModelStoreShape,
  type ReplayLockHolder,
  type RowDifference,
  type RowWrite,
} from "./store.ts"
import { OLD, replayLockName, SHADOW, variantCheckpointTopology, variantTable } from "./variant.ts"

const failed = (message: string, cause?: unknown): StoreError =>
  new StoreError({ code: "STORE_FAILED", message, retryable: false, cause })

const describeKey = (key: RowKey): string => `(${key.map((k) => JSON.stringify(k)).join(", ")})`

/** A template with its statements, built once from validated names. */
interface Compiled {
  readonly template: Template
  /** Fields in declaration order, then LAST_EVENT_COLUMN (null: a plain string column). */
  readonly columns: ReadonlyArray<{ readonly name: string; readonly field: Field | null }>
  readonly keyWhere: (count: number) => string
  readonly keyParams: (keys: ReadonlyArray<RowKey>) => ReadonlyArray<unknown>
  readonly select: string
  readonly scan: string
  readonly upsert: string
  readonly insert: string
  readonly update: string
  readonly lock: string
  readonly delete: string
  /** Upsert and DELETE of a row whose LAST_EVENT_COLUMN still holds the lineage ID the writer saw. */
  readonly updateIf: string
  readonly deleteIf: string
  /**
   * With a unique secondary index, INSERT ... ON DUPLICATE KEY UPDATE would
   * update whichever row holds the clashing value instead of refusing the
   * write; such templates lock their keys, then UPDATE existing rows and
   * INSERT new ones, so a clash fails the commit.
   */
  readonly uniqueSecondary: boolean
}

// The seen lineage ID, converted to the ASCII of its column by the statement: MariaDB 10.11's bulk
// execution converts a parameter compared in ON DUPLICATE KEY UPDATE once, for the first row only.
const SEEN = "CONVERT(? USING ascii)"

const compile = (t: Template, tableName: string = t.name): Compiled => {
  const table = quoteId(tableName)
  const columns = [
    ...t.fields.map((f) => ({ name: f.name, field: f as Field | null })),
    { name: LAST_EVENT_COLUMN, field: null },
  ]
  const names = columns.map((c) => quoteId(c.name))
  const list = names.join(", ")
  const isKey = new Set(t.key)
  const rest = columns.filter((c) => !isKey.has(c.name)).map((c) => quoteId(c.name))
  const last = quoteId(LAST_EVENT_COLUMN)
  const keyMatch = t.key.map((k) => `${quoteId(k)} = ?`).join(" AND ")
  const single = t.key.length === 1
  const keyWhere = (count: number): string =>
    single ? `${quoteId(t.key[0] as string)} IN (?)` : Array.from({ length: count }, () => `(${keyMatch})`).join(" OR ")
  const keyParams = (keys: ReadonlyArray<RowKey>): ReadonlyArray<unknown> =>
    single ? [keys.map((k) => k[0])] : keys.flat()
  const placeholders = names.map(() => "?").join(", ")
  return {
    template: t,
    columns,
    keyWhere,
    keyParams,
    select: `SELECT ${list} FROM ${table} WHERE `,
    scan: `SELECT ${list} FROM ${table} ORDER BY ${t.key.map(quoteId).join(", ")}`,
    upsert: `INSERT INTO ${table} (${list}) VALUES (${placeholders}) ON DUPLICATE KEY UPDATE ${rest.map((c) => `${c} = VALUES(${c})`).join(", ")}`,
    insert: `INSERT INTO ${table} (${list}) VALUES (${placeholders})`,
    update: `UPDATE ${table} SET ${rest.map((c) => `${c} = ?`).join(", ")} WHERE ${keyMatch}`,
    lock: `SELECT ${t.key.map(quoteId).join(", ")} FROM ${table} WHERE `,
    delete: `DELETE FROM ${table} WHERE ${keyMatch}`,
    // An upsert that changes a row only where it still holds the lineage ID the writer saw (the
    // last ?). Assignments run left to right: the first one tests the row and records the answer
    // in a session variable, which the others read. A row changed counts 2 affected rows, one
    // left alone or inserted 1. (Bulk upserts cost the server less than bulk UPDATEs.)
    updateIf: `INSERT INTO ${table} (${list}) VALUES (${placeholders}) ON DUPLICATE KEY UPDATE ${last} = IF((@beds_seen := (${last} = ${SEEN})), VALUES(${last}), ${last})${rest
      .filter((c) => c !== last)
      .map((c) => `, ${c} = IF(@beds_seen, VALUES(${c}), ${c})`)
      .join("")}`,
    deleteIf: `DELETE FROM ${table} WHERE ${keyMatch} AND ${quoteId(LAST_EVENT_COLUMN)} = ${SEEN}`,
    uniqueSecondary: t.indexes.some((i) => i.unique),
  }
}

/** A value as the driver sends it: booleans as 0/1, JSON as text. */
const toDb = (field: Field | null, v: unknown): unknown => {
  if (v === null || field === null) return v
  if (field.type === "bool") return v ? 1 : 0
  if (field.type === "json") return JSON.stringify(v)
  return v
}

/** A value as topologies see it, equal to what was written. */
const fromDb = (field: Field | null, v: unknown): unknown => {
  if (v === null || v === undefined || field === null) return v ?? null
  switch (field.type) {
    case "bool":
      return Number(v) !== 0
    case "json":
      return JSON.parse(String(v))
    case "int":
    case "time":
    case "float":
      return typeof v === "number" ? v : Number(v)
    default:
      return v
  }
}

const toRow = (c: Compiled, raw: Record<string, unknown>): Row => {
  const row: Record<string, unknown> = {}
  for (const col of c.columns) row[col.name] = fromDb(col.field, raw[col.name])
  return row
}

/** Reads a table's columns, indexes and CHECK constraints; undefined when it does not exist. */
export const describeTable = (name: string): Effect.Effect<ActualTable | undefined, StoreError, MariaDb> =>
  Effect.gen(function* () {
    const db = yield* MariaDb
    return yield* db.run(`Reading the definition of table ${name}`, async (pool) => {
      const columns: Array<Record<string, unknown>> = await pool.query(
        "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
        [name],
      )
      if (columns.length === 0) return undefined
      const stats: Array<Record<string, unknown>> = await pool.query(
        "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY INDEX_NAME, SEQ_IN_INDEX",
        [name],
      )
      // information_schema is utf8mb3 and turns 4-byte characters in CHECK clauses into "?";
      // SHOW CREATE TABLE prints them intact.
      const created: Array<Record<string, string>> = await pool.query(`SHOW CREATE TABLE ${quoteId(name)}`)
      const checks = [
        ...String(created[0]?.["Create Table"] ?? "").matchAll(/^ {2}CONSTRAINT `([^`]+)` CHECK \((.*)\),?$/gm),
      ]
      const indexes = new Map<string, { name: string; fields: Array<string>; unique: boolean }>()
      for (const s of stats) {
        const n = String(s.INDEX_NAME)
        const index = indexes.get(n) ?? { name: n, fields: [], unique: Number(s.NON_UNIQUE) === 0 }
        index.fields.push(String(s.COLUMN_NAME))
        indexes.set(n, index)
      }
      return {
        columns: columns.map((c) => ({
          name: String(c.COLUMN_NAME),
          type: String(c.COLUMN_TYPE),
          nullable: c.IS_NULLABLE === "YES",
          collation: c.COLLATION_NAME === null ? null : String(c.COLLATION_NAME),
        })),
        indexes: [...indexes.values()],
        checks: checks.map((m) => ({ name: m[1] as string, clause: m[2] as string })),
      } satisfies ActualTable
    })
  })

interface TableWrites {
  readonly c: Compiled
  readonly deletes: Array<RowKey>
  readonly upserts: Array<{ readonly key: RowKey; readonly row: Row }>
  /** Conditional writes (see `seen` in the port): each must find the row as the writer saw it. */
  readonly checked: {
    readonly deletes: Array<{ readonly key: RowKey; readonly seen: string | null }>
    readonly updates: Array<{ readonly key: RowKey; readonly row: Row; readonly seen: string }>
    readonly inserts: Array<{ readonly key: RowKey; readonly row: Row }>
  }
}

/** A conditional write found its row changed since the writer saw it. */
class RowConflict extends Error {}

const affected = (result: unknown): number =>
  Array.isArray(result)
    ? result.reduce((n: number, r: { affectedRows?: number }) => n + Number(r.affectedRows ?? 0), 0)
    : Number((result as { affectedRows?: number }).affectedRows ?? 0)

const DUPLICATE_KEY = 1062

/**
 * Where a store instance keeps its rows and checkpoints: the live models
 * under their template names, or a variant (replay shadow, snapshot) under
 * `<name>__<variant>` with checkpoints of its own.
 */
interface Naming {
  readonly table: (template: string) => string
  readonly topology: (topology: string) => string
  /** Live stores take part in fencing (see the port); variants are guarded by the replay lock instead. */
  readonly live: boolean
}

const LIVE: Naming = { table: (t) => t, topology: (t) => t, live: true }

/** Builds the MariaDB store on the shared pool. */
export const make: Effect.Effect<ReadModelStoreShape, never, MariaDb> = Effect.gen(function* () {
  const db = yield* MariaDb
  const live = build(db, LIVE)
  return ReadModelStore.of({ ...live.store, replay: replayOps(db, live.compiled) })
})

const build = (db: MariaDbShape, naming: Naming) => {
  const compiled = new Map<string, Compiled>()
  /** Per live checkpoint: the topology generation its stream saw when it read the checkpoint. */
  const seen = new Map<string, number>()
  const seenKey = (c: CheckpointId) => JSON.stringify([c.topology, c.depot, c.partition])

  const unknown = (name: string): StoreError =>
    failed(
      `Unknown template ${JSON.stringify(name)}: this read-model store knows ${[...compiled.keys()].join(", ") || "no templates"}; ensure() the template before using it.`,
    )

  const get = (name: string): Effect.Effect<Compiled, StoreError> => {
    const c = compiled.get(name)
    return c === undefined ? Effect.fail(unknown(name)) : Effect.succeed(c)
  }

  const ensure: ReadModelStoreShape["ensure"] = (templates) =>
    Effect.gen(function* () {
      const bad = checkEnsured(
        [...compiled.values()].map((c) => c.template),
        templates,
        { backend: "rel", store: "MariaDB" },
      )
      if (bad !== undefined) return yield* failed(bad.message, bad)

      yield* db.run(`Creating ${CHECKPOINT_TABLE}`, (pool) => pool.query(checkpointTableSql))
      // Before any stream can commit: commits of live streams read it to check the fence.
      yield* db.run(`Creating ${TOPOLOGY_TABLE}`, (pool) => pool.query(topologyTableSql))
      const plans: Array<{ readonly template: Template; readonly statements: ReadonlyArray<string> }> = []
      const drift: Array<string> = []
      for (const t of templates) {
        const physical = { ...t, name: naming.table(t.name) }
        const actual = yield* describeTable(physical.name).pipe(Effect.provideService(MariaDb, db))
        if (actual === undefined) {
          plans.push({ template: t, statements: [createTableSql(physical)] })
          continue
        }
        const plan = planMigration(physical, actual)
        if (plan.unsafe.length > 0)
          drift.push(
            `Table ${db.settings.database}.${physical.name} does not match template ${t.name} (${t.tla}, ${t.file}):\n${plan.unsafe.map((u) => `  - ${u}`).join("\n")}`,
          )
        plans.push({ template: t, statements: plan.safe })
      }
      // Nothing is applied while any table has drifted, so a refused start-up leaves the schema as it was.
      if (drift.length > 0)
        return yield* new StoreError({
          code: "SCHEMA_DRIFT",
          message: `${drift.join("\n")}\nThese changes could alter or lose stored values, so BEDS will not make them. Either replay into a new template (new name and TLA) and drop the old table once the new one has caught up, or migrate the table by hand so that it matches the template (\`beds templates sql\` prints the wanted DDL), then start again.`,
          retryable: false,
        })
      for (const { template, statements } of plans)
        for (const sql of statements) {
          yield* db.run(`Applying to table ${template.name}: ${sql}`, (pool) => pool.query(sql))
          if (!sql.startsWith("CREATE TABLE")) yield* Effect.logInfo(`read model ${template.name}: applied ${sql}`)
        }
      for (const t of templates) compiled.set(t.name, compile(t, naming.table(t.name)))
    })

  const load: ReadModelStoreShape["load"] = (name, keys) =>
    Effect.gen(function* () {
      const c = yield* get(name)
      const wanted = new Map<string, { key: RowKey; asked: Array<string> }>()
      for (const key of keys) {
        const k = checkKey(c.template, key)
        if (!k.ok) return yield* failed(`Loading ${name}: ${k.problem}.`)
        const id = keyId(k.value)
        const entry = wanted.get(id) ?? { key: k.value, asked: [] }
        entry.asked.push(keyId(key))
        wanted.set(id, entry)
      }
      const out = new Map<string, Row>()
      if (wanted.size === 0) return out
      const unique = [...wanted.values()].map((w) => w.key)
      const raw: Array<Record<string, unknown>> = yield* db.run(`Loading ${unique.length} ${name} row(s)`, (pool) =>
        pool.query(c.select + c.keyWhere(unique.length), c.keyParams(unique)),
      )
      for (const r of raw) {
        const row = toRow(c, r)
        for (const asked of wanted.get(keyId(keyOf(c.template, row)))?.asked ?? []) out.set(asked, row)
      }
      return out
    })

  /** Checks every write before the transaction opens, grouped per table. */
  const prepare = (writes: ReadonlyArray<RowWrite>): Effect.Effect<ReadonlyArray<TableWrites>, StoreError> =>
    Effect.suspend(() => {
      const groups = new Map<string, TableWrites>()
      const touched = new Map<string, Set<string>>()
      for (const w of writes) {
        const c = compiled.get(w.template)
        if (c === undefined)
          return Effect.fail(
            failed(
              `Commit refused: unknown template ${JSON.stringify(w.template)}; ensure() it first. Nothing was written.`,
            ),
          )
        const k = checkKey(c.template, w.key)
        if (!k.ok) return Effect.fail(failed(`Commit refused: ${k.problem}. Nothing was written.`))
        const ids = getOrCreate(touched, w.template, () => new Set<string>())
        const id = keyId(k.value)
        if (ids.has(id))
          return Effect.fail(
            failed(`Commit refused: ${w.template} row ${describeKey(k.value)} is written twice in one batch.`),
          )
        ids.add(id)
        const group = groups.get(w.template) ?? {
          c,
          deletes: [],
          upserts: [],
          checked: { deletes: [], updates: [], inserts: [] },
        }
        groups.set(w.template, group)
        const checked = w.seen !== undefined && !c.uniqueSecondary
        if (checked && w.seen !== null && typeof w.seen !== "string")
          return Effect.fail(
            failed(
              `Commit refused: ${w.template} row ${describeKey(k.value)} has a seen of ${typeof w.seen}, not a lineage ID or null. Nothing was written.`,
            ),
          )
        if (w.row === null) {
          if (checked) group.checked.deletes.push({ key: k.value, seen: w.seen as string | null })
          else group.deletes.push(k.value)
          continue
        }
        const r = checkRow(c.template, w.row)
        if (!r.ok) return Effect.fail(failed(`Commit refused: ${r.problem}. Nothing was written.`))
        const rowKey = keyOf(c.template, r.value)
        if (keyId(rowKey) !== keyId(k.value))
          return Effect.fail(
            failed(
              `Commit refused: ${w.template} write for key ${describeKey(k.value)} carries a row whose key is ${describeKey(rowKey)}. Nothing was written.`,
            ),
          )
        if (!checked) group.upserts.push({ key: k.value, row: r.value })
        else if (w.seen === null) group.checked.inserts.push({ key: k.value, row: r.value })
        else group.checked.updates.push({ key: k.value, row: r.value, seen: w.seen as string })
      }
      return Effect.succeed([...groups.values()])
    })

  const params = (c: Compiled, row: Row): Array<unknown> => c.columns.map((col) => toDb(col.field, row[col.name]))

  /** Conditional writes: a row that is no longer as its writer saw it throws RowConflict. */
  const writeChecked = async (conn: mariadb.PoolConnection, g: TableWrites): Promise<void> => {
    const { c, checked } = g
    const name = c.template.name
    const present = checked.deletes.filter((d) => d.seen !== null)
    const absent = checked.deletes.filter((d) => d.seen === null)
    // Sent together (the connection pipelines them), then each answer checked.
    const expect = async (result: Promise<unknown>, n: number, what: string) => {
      const got = affected(await result)
      if (got !== n) throw new RowConflict(`${name} row(s) to ${what}`)
    }
    const pending: Array<Promise<void>> = []
    if (present.length > 0)
      pending.push(
        expect(
          conn.batch(
            c.deleteIf,
            present.map((d) => [...d.key, d.seen]),
          ),
          present.length,
          "delete",
        ),
      )
    // A row the writer saw absent and now deletes must still be absent: nothing may go.
    if (absent.length > 0)
      pending.push(
        expect(
          conn.batch(
            c.delete,
            absent.map((d) => [...d.key]),
          ),
          0,
          "leave deleted",
        ),
      )
    if (checked.updates.length > 0)
      pending.push(
        expect(
          conn.batch(
            c.updateIf,
            checked.updates.map((u) => {
              const p = params(c, u.row)
              p.push(u.seen)
              return p
            }),
          ),
          2 * checked.updates.length,
          "update",
        ),
      )
    if (checked.inserts.length > 0)
      pending.push(
        conn
          .batch(
            c.insert,
            checked.inserts.map((u) => params(c, u.row)),
          )
          .then(
            () => undefined,
            (e: { errno?: number }) => {
              // Conditional templates have no unique secondary index: a clash is on the key.
              if (e?.errno === DUPLICATE_KEY) throw new RowConflict(`a ${name} row to insert that exists`)
              throw e
            },
          ),
      )
    const settled = await Promise.allSettled(pending)
    const conflict = settled.find((r): r is PromiseRejectedResult => r.status === "rejected")
    if (conflict !== undefined) throw conflict.reason
  }

  const writeTable = async (conn: mariadb.PoolConnection, g: TableWrites): Promise<void> => {
    const { c } = g
    // Everything that needs no answer first goes out at once (see `corked`); templates with a
    // unique secondary index have no conditional writes and go on below, answer by answer.
    const checked = writeChecked(conn, g)
    // Deletes first, so a value a deleted row held in a unique index is free for the rows written after it.
    const deleted =
      g.deletes.length > 0
        ? conn.batch(
            c.delete,
            g.deletes.map((k) => [...k]),
          )
        : undefined
    if (!c.uniqueSecondary) {
      const upserted =
        g.upserts.length > 0
          ? conn.batch(
              c.upsert,
              g.upserts.map((u) => params(c, u.row)),
            )
          : undefined
      await Promise.all([checked, deleted, upserted])
      return
    }
    await Promise.all([checked, deleted])
    if (g.upserts.length === 0) return
    const keys = g.upserts.map((u) => u.key)
    const existing: Array<Record<string, unknown>> = await conn.query(
      `${c.lock}${c.keyWhere(keys.length)} FOR UPDATE`,
      c.keyParams(keys),
    )
    const present = new Set(existing.map((r) => keyId(c.template.key.map((k) => r[k] as string | number))))
    const isKey = new Set(c.template.key)
    const updates = g.upserts.filter((u) => present.has(keyId(u.key)))
    const inserts = g.upserts.filter((u) => !present.has(keyId(u.key)))
    if (updates.length > 0)
      await conn.batch(
        c.update,
        updates.map((u) => [
          ...c.columns.filter((col) => !isKey.has(col.name)).map((col) => toDb(col.field, u.row[col.name])),
          ...u.key,
        ]),
      )
    if (inserts.length > 0)
      await conn.batch(
        c.insert,
        inserts.map((u) => params(c, u.row)),
      )
  }

  const commit: ReadModelStoreShape["commit"] = (checkpoint, next, writes) =>
    Effect.gen(function* () {
      const groups = yield* prepare(writes)
      const saw = naming.live ? seen.get(seenKey(checkpoint)) : undefined
      // One transaction, pipelined: BEGIN, the fence check, the row writes and
      // the checkpoint go out without waiting on each other, and COMMIT only
      // once every answer is in and good (else ROLLBACK) — two round trips
      // instead of one per statement, and still all or nothing.
      yield* db
        .withConnection(
          `Committing ${writes.length} row write(s) with checkpoint ${checkpoint.topology}/${checkpoint.depot}/${checkpoint.partition} = ${next}`,
          async (conn) => {
            const steps: Array<Promise<unknown>> = []
            // Under a shared lock that a fence must wait for: a fence raised after this stream
            // read its checkpoint means the rows it folded may come from replaced tables.
            let generation: Promise<number> | undefined
            corked(conn, () => {
              steps.push(conn.beginTransaction())
              generation = saw !== undefined ? lockedGeneration(conn, checkpoint.topology) : undefined
              if (generation !== undefined) steps.push(generation)
              for (const g of groups) steps.push(writeTable(conn, g))
              // Same transaction as the rows: this is what makes projection exactly-once.
              steps.push(
                conn.query(
                  `INSERT INTO ${quoteId(CHECKPOINT_TABLE)} (\`topology\`, \`depot\`, \`part\`, \`next\`) VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE \`next\` = VALUES(\`next\`)`,
                  [naming.topology(checkpoint.topology), checkpoint.depot, checkpoint.partition, next],
                ),
              )
            })
            const settled = await Promise.allSettled(steps)
            const failed = settled.find((r): r is PromiseRejectedResult => r.status === "rejected")
            const fenced = generation !== undefined && failed === undefined && (await generation) !== saw
            if (failed !== undefined || fenced) {
              await conn.rollback().catch(() => undefined)
              if (failed?.reason instanceof RowConflict) {
                // A retry of a commit that landed finds its own rows: the checkpoint says so.
                if ((await checkpointOn(conn, checkpoint)) === next) return
                throw new StoreError({
                  code: "ROW_CONFLICT",
                  message: `Commit refused: ${failed.reason.message} changed since topology ${checkpoint.topology} read them (${checkpoint.depot}/${checkpoint.partition}); another writer touched its read model. Load the rows again and fold again. Nothing was written.`,
                  retryable: false,
                })
              }
              if (failed !== undefined) throw failed.reason
              throw new StoreError({
                code: "FENCED",
                message: `Commit refused: topology ${checkpoint.topology} was fenced for a swap of its read models after this stream read its checkpoint (${checkpoint.depot}/${checkpoint.partition}); re-read the checkpoint and fold again. Nothing was written.`,
                retryable: false,
              })
            }
            await conn.commit()
          },
        )
        .pipe(Effect.mapError((e) => (e.cause instanceof StoreError ? e.cause : e)))
    })

  const checkpointOn = async (q: mariadb.Pool | mariadb.PoolConnection, c: CheckpointId): Promise<number> => {
    const rows: Array<{ next: number }> = await q.query(
      `SELECT \`next\` FROM ${quoteId(CHECKPOINT_TABLE)} WHERE \`topology\` = ? AND \`depot\` = ? AND \`part\` = ?`,
      [naming.topology(c.topology), c.depot, c.partition],
    )
    return Number(rows[0]?.next ?? 0)
  }

  const readCheckpoint = (c: CheckpointId) =>
    db.run(`Reading checkpoint ${c.topology}/${c.depot}/${c.partition}`, (pool) => checkpointOn(pool, c))

  // The generation is read before the checkpoint: a fence in between makes the first commit fail, never pass.
  const checkpoint: ReadModelStoreShape["checkpoint"] = (c) =>
    naming.live
      ? Effect.gen(function* () {
          const state = yield* fenceState(db, c.topology)
          if (state.fenced && state.held)
            return yield* new StoreError({
              code: "FENCED",
              message: `Topology ${c.topology} is paused while a replay swaps in its rebuilt read models; its streams resume when the swap is done.`,
              retryable: true,
            })
          const next = yield* readCheckpoint(c)
          seen.set(seenKey(c), state.generation)
          return next
        })
      : readCheckpoint(c)

  const scan: ReadModelStoreShape["scan"] = (name) =>
    Effect.gen(function* () {
      const c = yield* get(name)
      const raw: Array<Record<string, unknown>> = yield* db.run(`Scanning ${name}`, (pool) => pool.query(c.scan))
      return raw.map((r) => toRow(c, r))
    })

  const reset: ReadModelStoreShape["reset"] = (topology, names) =>
    Effect.gen(function* () {
      const cs = yield* Effect.forEach(names, get)
      // DELETE, not TRUNCATE: TRUNCATE commits on its own, and rows gone with the checkpoint still
      // standing (or the reverse) would make the rebuild skip or double-apply events.
      yield* db.transaction(`Resetting ${names.join(", ")} for topology ${topology}`, async (conn) => {
        for (const c of cs) await conn.query(`DELETE FROM ${quoteId(naming.table(c.template.name))}`)
        await conn.query(`DELETE FROM ${quoteId(CHECKPOINT_TABLE)} WHERE \`topology\` = ?`, [naming.topology(topology)])
      })
    })

  // A replay stopped mid-commit must not leave the commit running behind a second replay's back:
  // a variant's commit finishes (or fails) before the interruption goes through.
  const guarded: ReadModelStoreShape["commit"] = naming.live
    ? commit
    : (checkpoint, next, writes) => Effect.uninterruptible(commit(checkpoint, next, writes))
  return {
    store: ReadModelStore.of({
      ensure,
      load,
      commit: guarded,
      checkpoint,
      scan,
      reset,
      check: (writes) => Effect.asVoid(prepare(writes)),
      conditional: (template) => {
        const c = compiled.get(template)
        return c !== undefined && !c.uniqueSecondary
      },
    }),
    compiled,
  }
}

/** The MariaDB store as a Layer over the shared pool. */
export const layer: Layer.Layer<ReadModelStore, never, MariaDb> = Layer.effect(ReadModelStore, make)

// ---------------------------------------------------------------------------
// Replay: system tables, fencing, variants and the swap.
//
// The fence is a generation per topology in beds_topology. A live commit
// reads it first, under a shared row lock held until COMMIT; `fence` bumps it
// with an exclusive lock, so it waits for commits in flight, and every commit
// after it sees the new generation and is refused. The swap itself is one
// RENAME TABLE of all the topology's tables (atomic and crash-safe on MariaDB
// 10.6+); the live checkpoints stay where they are, because the replay builds
// the shadow to exactly them while the fence is up.

/** Per topology: the version its live models were built with, and the fence. */
export const TOPOLOGY_TABLE = "beds_topology"
/** Per (topology, variant): the fingerprint a variant was built for. */
export const VARIANT_TABLE = "beds_variant"
/** Per topology: who holds the replay lock (the lock itself is a MariaDB named lock). */
export const REPLAY_LOCK_TABLE = "beds_replay_lock"

const OPTIONS = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin"

export const topologyTableSql = `CREATE TABLE IF NOT EXISTS ${quoteId(TOPOLOGY_TABLE)} (
  \`topology\` VARCHAR(63) NOT NULL,
  \`version\` INT NULL,
  \`generation\` BIGINT NOT NULL DEFAULT 0,
  \`fenced\` TINYINT(1) NOT NULL DEFAULT 0,
  PRIMARY KEY (\`topology\`)
) ${OPTIONS}`

const variantTableSql = `CREATE TABLE IF NOT EXISTS ${quoteId(VARIANT_TABLE)} (
  \`topology\` VARCHAR(63) NOT NULL,
  \`variant\` VARCHAR(40) NOT NULL,
  \`fingerprint\` VARCHAR(64) NOT NULL,
  \`created\` BIGINT NOT NULL,
  PRIMARY KEY (\`topology\`, \`variant\`)
) ${OPTIONS}`

const lockTableSql = `CREATE TABLE IF NOT EXISTS ${quoteId(REPLAY_LOCK_TABLE)} (
  \`topology\` VARCHAR(63) NOT NULL,
  \`host\` VARCHAR(255) NOT NULL,
  \`pid\` INT NOT NULL,
  \`since\` BIGINT NOT NULL,
  \`conn\` BIGINT NOT NULL,
  PRIMARY KEY (\`topology\`)
) ${OPTIONS}`

const NO_SUCH_TABLE = 1146
const isNoSuchTable = (e: unknown): boolean => (e as { errno?: number })?.errno === NO_SUCH_TABLE

/** The topology's generation under a shared lock (0 when it was never fenced). */
const lockedGeneration = async (conn: mariadb.PoolConnection, topology: string): Promise<number> => {
  const rows: Array<{ generation: number }> = await conn.query(
    `SELECT \`generation\` FROM ${quoteId(TOPOLOGY_TABLE)} WHERE \`topology\` = ? LOCK IN SHARE MODE`,
    [topology],
  )
  return Number(rows[0]?.generation ?? 0)
}

/** Generation, fence, and whether the fence's replay lock is held by a live connection. */
const fenceState = (db: MariaDbShape, topology: string) =>
  db.run(`Reading the fence of topology ${topology}`, async (pool) => {
    try {
      const rows: Array<{ generation: number; fenced: number; holder: number | null }> = await pool.query(
        `SELECT \`generation\`, \`fenced\`, IS_USED_LOCK(?) AS holder FROM ${quoteId(TOPOLOGY_TABLE)} WHERE \`topology\` = ?`,
        [replayLockName(topology), topology],
      )
      const r = rows[0]
      return {
        generation: Number(r?.generation ?? 0),
        fenced: Number(r?.fenced ?? 0) !== 0,
        held: r?.holder !== null && r?.holder !== undefined,
      }
    } catch (e) {
      // A database from before replays: nothing was ever fenced.
      if (isNoSuchTable(e)) return { generation: 0, fenced: false, held: false }
      throw e
    }
  })

const replayOps = (db: MariaDbShape, liveCompiled: ReadonlyMap<string, Compiled>): ReadModelReplayShape => {
  let systemReady = false
  const system = Effect.suspend(() =>
    systemReady
      ? Effect.void
      : db
          .run("Creating the replay system tables", async (pool) => {
            for (const sql of [checkpointTableSql, topologyTableSql, variantTableSql, lockTableSql])
              await pool.query(sql)
          })
          .pipe(Effect.tap(() => Effect.sync(() => (systemReady = true)))),
  )
  const tableExists = (conn: mariadb.Pool | mariadb.Connection, names: ReadonlyArray<string>) =>
    names.length === 0
      ? Promise.resolve(new Set<string>())
      : (
          conn.query(
            "SELECT TABLE_NAME AS name FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN (?)",
            [names],
          ) as Promise<Array<{ name: string }>>
        ).then((rows) => new Set(rows.map((r) => String(r.name))))
  const dropSql = (tables: ReadonlyArray<string>) => `DROP TABLE IF EXISTS ${tables.map(quoteId).join(", ")}`

  const record: ReadModelReplayShape["record"] = (topology) =>
    Effect.andThen(
      system,
      db.run(`Reading the record of topology ${topology}`, async (pool) => {
        const rows: Array<{ version: number | null; generation: number; fenced: number }> = await pool.query(
          `SELECT \`version\`, \`generation\`, \`fenced\` FROM ${quoteId(TOPOLOGY_TABLE)} WHERE \`topology\` = ?`,
          [topology],
        )
        const r = rows[0]
        return r === undefined
          ? undefined
          : {
              version: r.version === null ? undefined : Number(r.version),
              generation: Number(r.generation),
              fenced: Number(r.fenced) !== 0,
            }
      }),
    )

  const setVersion: ReadModelReplayShape["setVersion"] = (topology, version) =>
    Effect.andThen(
      system,
      db.run(`Recording version ${version} of topology ${topology}`, (pool) =>
        pool.query(
          `INSERT INTO ${quoteId(TOPOLOGY_TABLE)} (\`topology\`, \`version\`) VALUES (?, ?) ON DUPLICATE KEY UPDATE \`version\` = VALUES(\`version\`)`,
          [topology, version],
        ),
      ),
    )

  /**
   * A named lock on a connection of its own: it is released when the scope
   * closes, and by the server when the process dies, so a killed replay never
   * leaves its topology locked. The row only says who holds it.
   */
  const lock: ReadModelReplayShape["lock"] = (topology, holder) =>
    Effect.andThen(
      system,
      Effect.acquireRelease(
        db.run(`Taking the replay lock of topology ${topology}`, async () => {
          const { host, port, user, password, database, connect_timeout_ms } = db.settings
          const { createConnection } = await import("mariadb")
          const conn = await createConnection({
            host,
            port,
            user,
            password,
            database,
            connectTimeout: connect_timeout_ms,
          })
          try {
            // A short wait lets the server finish tearing down the connection of a holder that just died.
            const got: Array<{ ok: number | null }> = await conn.query("SELECT GET_LOCK(?, 3) AS ok", [
              replayLockName(topology),
            ])
            const ok = got[0]?.ok
            if (ok === null || ok === undefined) throw new Error(`GET_LOCK(${replayLockName(topology)}) failed`)
            if (Number(ok) === 1) {
              await conn.query(
                `REPLACE INTO ${quoteId(REPLAY_LOCK_TABLE)} (\`topology\`, \`host\`, \`pid\`, \`since\`, \`conn\`) VALUES (?, ?, ?, ?, CONNECTION_ID())`,
                [topology, holder.host, holder.pid, holder.since],
              )
              // Keeps the connection (and with it the lock) from timing out during a long replay.
              const ping = setInterval(() => void conn.ping().catch(() => undefined), 60_000)
              return { acquired: true as const, conn, ping }
            }
            // The row names the holder only if it was written by the connection that holds the lock now.
            const rows: Array<{ host: string; pid: number; since: number; conn: number; holder: number | null }> =
              await conn.query(
                `SELECT \`host\`, \`pid\`, \`since\`, \`conn\`, IS_USED_LOCK(?) AS holder FROM ${quoteId(REPLAY_LOCK_TABLE)} WHERE \`topology\` = ?`,
                [replayLockName(topology), topology],
              )
            await conn.end()
            const r = rows[0]
            const current: ReplayLockHolder | undefined =
              r === undefined || r.holder === null || Number(r.holder) !== Number(r.conn)
                ? undefined
                : { host: String(r.host), pid: Number(r.pid), since: Number(r.since) }
            return { acquired: false as const, holder: current }
          } catch (e) {
            await conn.end().catch(() => undefined)
            throw e
          }
        }),
        (r) =>
          r.acquired
            ? Effect.promise(async () => {
                clearInterval(r.ping)
                await r.conn
                  .query(
                    `DELETE FROM ${quoteId(REPLAY_LOCK_TABLE)} WHERE \`topology\` = ? AND \`conn\` = CONNECTION_ID()`,
                    [topology],
                  )
                  .catch(() => undefined)
                await r.conn.query("SELECT RELEASE_LOCK(?)", [replayLockName(topology)]).catch(() => undefined)
                await r.conn.end().catch(() => undefined)
              })
            : Effect.void,
      ),
    ).pipe(Effect.map((r) => (r.acquired ? { acquired: true as const } : r)))

  const variant: ReadModelReplayShape["variant"] = (topology, templates, name, fingerprint) =>
    Effect.gen(function* () {
      yield* system
      const tables = templates.map((t) => variantTable(t.name, name))
      const cpTopology = variantCheckpointTopology(topology, name)
      const state = yield* db.run(`Opening the ${name} copy of topology ${topology}`, async (pool) => {
        const rows: Array<{ fingerprint: string }> = await pool.query(
          `SELECT \`fingerprint\` FROM ${quoteId(VARIANT_TABLE)} WHERE \`topology\` = ? AND \`variant\` = ?`,
          [topology, name],
        )
        const present = await tableExists(pool, tables)
        const stored = rows[0]?.fingerprint
        if (stored === fingerprint && tables.every((t) => present.has(t))) return { resumed: true, dropped: false }
        const dropped = stored !== undefined || present.size > 0
        // The record goes last: a copy killed half-made has none and is made again.
        await pool.query(`DELETE FROM ${quoteId(VARIANT_TABLE)} WHERE \`topology\` = ? AND \`variant\` = ?`, [
          topology,
          name,
        ])
        await pool.query(dropSql(tables))
        await pool.query(`DELETE FROM ${quoteId(CHECKPOINT_TABLE)} WHERE \`topology\` = ?`, [cpTopology])
        for (const t of templates) await pool.query(createTableSql({ ...t, name: variantTable(t.name, name) }))
        await pool.query(
          `INSERT INTO ${quoteId(VARIANT_TABLE)} (\`topology\`, \`variant\`, \`fingerprint\`, \`created\`) VALUES (?, ?, ?, ?)`,
          [topology, name, fingerprint, Date.now()],
        )
        return { resumed: false, dropped }
      })
      const copy = build(db, {
        table: (t) => variantTable(t, name),
        topology: (t) => variantCheckpointTopology(t, name),
        live: false,
      })
      yield* copy.store.ensure(templates)
      return { store: copy.store, ...state }
    })

  const dropVariant: ReadModelReplayShape["dropVariant"] = (topology, names, name) =>
    Effect.andThen(
      system,
      db.run(`Dropping the ${name} copy of topology ${topology}`, async (pool) => {
        await pool.query(`DELETE FROM ${quoteId(VARIANT_TABLE)} WHERE \`topology\` = ? AND \`variant\` = ?`, [
          topology,
          name,
        ])
        if (names.length > 0) await pool.query(dropSql(names.map((n) => variantTable(n, name))))
        await pool.query(`DELETE FROM ${quoteId(CHECKPOINT_TABLE)} WHERE \`topology\` = ?`, [
          variantCheckpointTopology(topology, name),
        ])
      }),
    )

  const peekCheckpoint: ReadModelReplayShape["peekCheckpoint"] = (c) =>
    Effect.map(
      db.run(`Reading checkpoint ${c.topology}/${c.depot}/${c.partition}`, async (pool) => {
        try {
          return (await pool.query(
            `SELECT \`next\` FROM ${quoteId(CHECKPOINT_TABLE)} WHERE \`topology\` = ? AND \`depot\` = ? AND \`part\` = ?`,
            [c.topology, c.depot, c.partition],
          )) as Array<{ next: number }>
        } catch (e) {
          // A database no topology has written to yet has no checkpoint table: nothing is applied.
          // Peeking creates nothing, so it is safe from processes that only look (beds status).
          if (isNoSuchTable(e)) return []
          throw e
        }
      }),
      (rows) => Number(rows[0]?.next ?? 0),
    )

  const fence: ReadModelReplayShape["fence"] = (topology) =>
    Effect.andThen(
      system,
      db.run(`Fencing topology ${topology}`, (pool) =>
        pool.query(
          `INSERT INTO ${quoteId(TOPOLOGY_TABLE)} (\`topology\`, \`generation\`, \`fenced\`) VALUES (?, 1, 1) ON DUPLICATE KEY UPDATE \`generation\` = \`generation\` + 1, \`fenced\` = 1`,
          [topology],
        ),
      ),
    )

  const unfence: ReadModelReplayShape["unfence"] = (topology) =>
    Effect.andThen(
      system,
      db.run(`Unfencing topology ${topology}`, (pool) =>
        pool.query(`UPDATE ${quoteId(TOPOLOGY_TABLE)} SET \`fenced\` = 0 WHERE \`topology\` = ?`, [topology]),
      ),
    )

  const swap: ReadModelReplayShape["swap"] = (topology, names, version) =>
    Effect.andThen(
      system,
      db.run(`Swapping the rebuilt read models of topology ${topology} in`, async (pool) => {
        const conn = await pool.getConnection()
        try {
          const shadows = names.map((n) => variantTable(n, SHADOW))
          const olds = names.map((n) => variantTable(n, OLD))
          const present = await tableExists(conn, [...names, ...shadows])
          const missing = shadows.filter((t) => !present.has(t))
          if (missing.length > 0)
            throw new StoreError({
              code: "STORE_FAILED",
              message: `Swap refused: table(s) ${missing.join(", ")} do not exist; run the replay again. Nothing was changed.`,
              retryable: false,
            })
          // The fence is only as good as the lock behind it: a lost lock lets live streams move on.
          const held: Array<{ holder: number | null; conn: number | null }> = await conn.query(
            `SELECT IS_USED_LOCK(?) AS holder, (SELECT \`conn\` FROM ${quoteId(REPLAY_LOCK_TABLE)} WHERE \`topology\` = ?) AS conn`,
            [replayLockName(topology), topology],
          )
          const h = held[0]
          if (h?.holder === null || h?.holder === undefined || Number(h.holder) !== Number(h.conn))
            throw new StoreError({
              code: "STORE_FAILED",
              message: `Swap refused: the replay lock of topology ${topology} was lost (its connection closed), so live streams may have moved on. Nothing was changed; run the replay again.`,
              retryable: false,
            })
          // A reader holding a table in a long transaction must not stall the swap (and every query queued behind it) for a day.
          await conn.query("SET SESSION lock_wait_timeout = 60")
          if (names.length > 0) await conn.query(dropSql(olds))
          // One statement for every table: readers see all the old tables or all the new ones.
          if (names.length > 0)
            await conn.query(
              `RENAME TABLE ${names.map((n, i) => `${present.has(n) ? `${quoteId(n)} TO ${quoteId(olds[i] as string)}, ` : ""}${quoteId(shadows[i] as string)} TO ${quoteId(n)}`).join(", ")}`,
            )
          await conn.beginTransaction()
          await conn.query(`DELETE FROM ${quoteId(CHECKPOINT_TABLE)} WHERE \`topology\` = ?`, [
            variantCheckpointTopology(topology, SHADOW),
          ])
          await conn.query(`DELETE FROM ${quoteId(VARIANT_TABLE)} WHERE \`topology\` = ? AND \`variant\` = ?`, [
            topology,
            SHADOW,
          ])
          await conn.query(
            `INSERT INTO ${quoteId(TOPOLOGY_TABLE)} (\`topology\`, \`version\`, \`fenced\`) VALUES (?, ?, 0) ON DUPLICATE KEY UPDATE \`version\` = VALUES(\`version\`), \`fenced\` = 0`,
            [topology, version],
          )
          await conn.commit()
          if (names.length > 0) await conn.query(dropSql(olds))
        } catch (e) {
          await conn.rollback().catch(() => undefined)
          throw e
        } finally {
          await conn.query("SET SESSION lock_wait_timeout = DEFAULT").catch(() => undefined)
          await conn.release().catch(() => undefined)
        }
      }),
    ).pipe(Effect.mapError((e) => (e.cause instanceof StoreError ? e.cause : e)))

  const diff: ReadModelReplayShape["diff"] = (name, variantName, limit) =>
    Effect.gen(function* () {
      const c = liveCompiled.get(name)
      if (c === undefined)
        return yield* failed(`Cannot compare ${name}: this store has not ensured it; ensure() the template first.`)
      const live = quoteId(name)
      const copy = quoteId(variantTable(name, variantName))
      const keys = c.template.key.map(quoteId)
      const on = keys.map((k) => `l.${k} = s.${k}`).join(" AND ")
      const same = c.columns.map((col) => `l.${quoteId(col.name)} <=> s.${quoteId(col.name)}`).join(" AND ")
      const differing = `SELECT ${keys.map((k) => `l.${k}`).join(", ")} FROM ${live} l LEFT JOIN ${copy} s ON ${on} WHERE s.${keys[0]} IS NULL OR NOT (${same})
        UNION ALL SELECT ${keys.map((k) => `s.${k}`).join(", ")} FROM ${copy} s LEFT JOIN ${live} l ON ${on} WHERE l.${keys[0]} IS NULL`
      const columnList = c.columns.map((col) => quoteId(col.name)).join(", ")
      return yield* db.run(`Comparing ${name} with its ${variantName} copy`, async (pool) => {
        const counted: Array<{ n: number }> = await pool.query(`SELECT COUNT(*) AS n FROM (${differing}) d`)
        const count = Number(counted[0]?.n ?? 0)
        if (count === 0) return { count, first: [] }
        const firstKeys: Array<Record<string, string | number>> = await pool.query(
          `SELECT * FROM (${differing}) d ORDER BY ${keys.join(", ")} LIMIT ?`,
          [limit],
        )
        const wanted = firstKeys.map((r) => c.template.key.map((k) => r[k] as string | number))
        const fetch = async (table: string) => {
          const rows: Array<Record<string, unknown>> = await pool.query(
            `SELECT ${columnList} FROM ${table} WHERE ${c.keyWhere(wanted.length)}`,
            c.keyParams(wanted),
          )
          return new Map(rows.map((r) => [keyId(c.template.key.map((k) => r[k] as string | number)), toRow(c, r)]))
        }
        const liveRows = await fetch(live)
        const copyRows = await fetch(copy)
        const first: Array<RowDifference> = wanted.map((key) => ({
          key,
          live: liveRows.get(keyId(key)) ?? null,
          copy: copyRows.get(keyId(key)) ?? null,
        }))
        return { count, first }
      })
    })

  return { record, setVersion, lock, variant, dropVariant, peekCheckpoint, fence, unfence, swap, diff }
}
