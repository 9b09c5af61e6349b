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
import { MariaDb } from "../mariadb/client.ts"
import {
  type ActualTable,
  CHECKPOINT_TABLE,
  checkpointTableSql,
  createTableSql,
  planMigration,
  quoteId,
} from "../template/ddl.ts"
import { checkTemplate, checkTemplates } from "../template/load.ts"
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
import { ReadModelStore, type ReadModelStoreShape, type RowWrite } from "./store.ts"

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
  /**
   * With a unique secondary index, INSERT ... ON DUPLICATE KEY UPDATE would
   * update whichever row holds the clashing value instead of refusing the
   * write; such templates lock their keys, then UPDATE existing rows and
   * INSERT new ones, so a clash fails the commit.
   */
  readonly uniqueSecondary: boolean
}

const compile = (t: Template): Compiled => {
  const table = quoteId(t.name)
  const columns = [
    ...t.fields.map((f) => ({ name: f.name, field: f as Field | null })),
    { name: LAST_EVENT_COLUMN, field: null },
  ]
  const names = columns.map((c) => quoteId(c.name))
  const list = names.join(", ")
  const isKey = new Set(t.key)
  const rest = columns.filter((c) => !isKey.has(c.name)).map((c) => quoteId(c.name))
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
}

/** Builds the MariaDB store on the shared pool. */
export const make: Effect.Effect<ReadModelStoreShape, never, MariaDb> = Effect.gen(function* () {
  const db = yield* MariaDb
  const compiled = new Map<string, Compiled>()

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
      for (const t of templates) {
        if (t.backend !== "rel")
          return yield* failed(
            `Template ${t.name} (${t.file}) is a REC template; the MariaDB read-model store holds REL templates only.`,
          )
        const bad = checkTemplate(t)
        if (bad !== undefined) return yield* failed(bad.message, bad)
      }
      const merged = new Map([...compiled].map(([name, c]) => [name, c.template]))
      for (const t of templates) merged.set(t.name, t)
      const clash = checkTemplates(templates) ?? checkTemplates([...merged.values()])
      if (clash !== undefined) return yield* failed(clash.message, clash)

      yield* db.run(`Creating ${CHECKPOINT_TABLE}`, (pool) => pool.query(checkpointTableSql))
      const plans: Array<{ readonly template: Template; readonly statements: ReadonlyArray<string> }> = []
      const drift: Array<string> = []
      for (const t of templates) {
        const actual = yield* describeTable(t.name).pipe(Effect.provideService(MariaDb, db))
        if (actual === undefined) {
          plans.push({ template: t, statements: [createTableSql(t)] })
          continue
        }
        const plan = planMigration(t, actual)
        if (plan.unsafe.length > 0)
          drift.push(
            `Table ${db.settings.database}.${t.name} does not match template ${t.name} (${t.tla}, ${t.file}):\n${plan.unsafe.map((u) => `  - ${u}`).join("\n")}`,
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
      for (const t of templates) compiled.set(t.name, compile(t))
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
      const seen = new Set<string>()
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
        const touch = JSON.stringify([w.template, keyId(k.value)])
        if (seen.has(touch))
          return Effect.fail(
            failed(`Commit refused: ${w.template} row ${describeKey(k.value)} is written twice in one batch.`),
          )
        seen.add(touch)
        const group = groups.get(w.template) ?? { c, deletes: [], upserts: [] }
        groups.set(w.template, group)
        if (w.row === null) {
          group.deletes.push(k.value)
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
        group.upserts.push({ key: k.value, row: r.value })
      }
      return Effect.succeed([...groups.values()])
    })

  const params = (c: Compiled, row: Row): Array<unknown> => c.columns.map((col) => toDb(col.field, row[col.name]))

  const writeTable = async (conn: mariadb.PoolConnection, g: TableWrites): Promise<void> => {
    const { c } = g
    // Deletes first, so a value a deleted row held in a unique index is free for the rows written after it.
    if (g.deletes.length > 0)
      await conn.batch(
        c.delete,
        g.deletes.map((k) => [...k]),
      )
    if (g.upserts.length === 0) return
    if (!c.uniqueSecondary) {
      await conn.batch(
        c.upsert,
        g.upserts.map((u) => params(c, u.row)),
      )
      return
    }
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
      yield* db.transaction(
        `Committing ${writes.length} row write(s) with checkpoint ${checkpoint.topology}/${checkpoint.depot}/${checkpoint.partition} = ${next}`,
        async (conn) => {
          for (const g of groups) await writeTable(conn, g)
          // Same transaction as the rows: this is what makes projection exactly-once.
          await conn.query(
            `INSERT INTO ${quoteId(CHECKPOINT_TABLE)} (\`topology\`, \`depot\`, \`part\`, \`next\`) VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE \`next\` = VALUES(\`next\`)`,
            [checkpoint.topology, checkpoint.depot, checkpoint.partition, next],
          )
        },
      )
    })

  const checkpoint: ReadModelStoreShape["checkpoint"] = (c) =>
    Effect.map(
      db.run(
        `Reading checkpoint ${c.topology}/${c.depot}/${c.partition}`,
        (pool) =>
          pool.query(
            `SELECT \`next\` FROM ${quoteId(CHECKPOINT_TABLE)} WHERE \`topology\` = ? AND \`depot\` = ? AND \`part\` = ?`,
            [c.topology, c.depot, c.partition],
          ) as Promise<Array<{ next: number }>>,
      ),
      (rows) => Number(rows[0]?.next ?? 0),
    )

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
        for (const c of cs) await conn.query(`DELETE FROM ${quoteId(c.template.name)}`)
        await conn.query(`DELETE FROM ${quoteId(CHECKPOINT_TABLE)} WHERE \`topology\` = ?`, [topology])
      })
    })

  return ReadModelStore.of({ ensure, load, commit, checkpoint, scan, reset })
})

/** The MariaDB store as a Layer over the shared pool. */
export const layer: Layer.Layer<ReadModelStore, never, MariaDb> = Layer.effect(ReadModelStore, make)
