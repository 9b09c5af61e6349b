/**
 * Read models in memory, for the embedded mode (rebuilt by replay at start)
 * and for fast tests. Serves REL and REC templates alike.
 *
 * Exactly-once: a commit is checked in full before anything changes, then
 * applied in one synchronous step, so a batch's rows and its checkpoint
 * change together or not at all (atomic by construction).
 *
 * It behaves like the MariaDB adapter wherever the conformance suite can
 * tell: rows are checked against their template the same way, keys sort in
 * the same order (code points, like utf8mb4_nopad_bin), and unique indexes
 * refuse the same writes — deletes first, then updates of existing rows, then
 * inserts, each checked against the rows before it, as InnoDB does.
 */
import { Effect, Layer } from "effect"
import { StoreError } from "../errors.ts"
import { checkEnsured } from "../template/load.ts"
import {
  checkKey,
  checkRow,
  compareKeys,
  keyId,
  keyOf,
  LAST_EVENT_COLUMN,
  type Row,
  type RowKey,
  type Template,
} from "../template/template.ts"
import { checkDocumentSize, valueAt } from "./mongo-ops.ts"
import {
  type CheckpointId,
  type ReadModelReplayShape,
  ReadModelStore,
  type ReadModelStoreShape,
  type ReplayLockHolder,
  type RowDifference,
  type RowWrite,
  type TopologyRecord,
} from "./store.ts"
import { SHADOW } from "./variant.ts"

interface Table {
  template: Template
  /** keyId → stored row (never handed out: reads return copies). */
  rows: Map<string, Row>
  /** Per unique index: value id → keyId of the row holding it. */
  unique: Map<string, Map<string, string>>
}

const failed = (message: string, cause?: unknown): StoreError =>
  new StoreError({ code: "STORE_FAILED", message, retryable: false, cause })

/**
 * Stored rows are frozen once when written (checkRow already built them
 * fresh), so loads can hand them out without copying and no caller can
 * change what is stored.
 */
const deepFreeze = <T>(value: T): T => {
  if (typeof value === "object" && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const v of Object.values(value)) deepFreeze(v)
  }
  return value
}

const uniqueCache = new WeakMap<Template, ReadonlyArray<Template["indexes"][number]>>()
/** A template's unique indexes, worked out once per template. */
const uniqueIndexes = (t: Template): ReadonlyArray<Template["indexes"][number]> => {
  let u = uniqueCache.get(t)
  if (u === undefined) {
    u = t.indexes.filter((i) => i.unique)
    uniqueCache.set(t, u)
  }
  return u
}

/** A frozen copy of a row; nested values (json fields) are copied too, the caller's objects are left alone. */
const freezeRow = (row: Row): Row => {
  const copy: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(row))
    copy[k] = typeof v === "object" && v !== null ? deepFreeze(structuredClone(v)) : v
  return Object.freeze(copy)
}

/**
 * The value of a unique index in a row, or undefined when a field is null
 * (NULLs never collide). REC indexes may name paths into objects ("a.b").
 */
const uniqueValue = (fields: ReadonlyArray<string>, row: Row): string | undefined => {
  const values = fields.map((f) => valueAt(row, f))
  return values.some((v) => v === null || v === undefined) ? undefined : JSON.stringify(values)
}

const describeKey = (key: RowKey): string => `(${key.map((k) => JSON.stringify(k)).join(", ")})`

/** Builds an in-memory store with its own state. */
export const make: Effect.Effect<ReadModelStoreShape> = Effect.sync(() => {
  const tables = new Map<string, Table>()
  const checkpoints = new Map<string, number>()
  const cpId = (c: CheckpointId): string => JSON.stringify([c.topology, c.depot, c.partition])
  const fencing: Fencing = { records: new Map(), seen: new Map(), locks: new Map() }

  const table = (name: string): Effect.Effect<Table, StoreError> => {
    const t = tables.get(name)
    return t !== undefined
      ? Effect.succeed(t)
      : Effect.fail(
          failed(
            `Unknown template ${JSON.stringify(name)}: this read-model store knows ${[...tables.keys()].join(", ") || "no templates"}; ensure() the template before using it.`,
          ),
        )
  }

  const emptyTable = (template: Template): Table => ({
    template,
    rows: new Map(),
    unique: new Map(template.indexes.filter((i) => i.unique).map((i) => [i.name, new Map()])),
  })

  /** Re-files a table's rows under a changed template; every row must still fit. */
  const migrate = (old: Table, template: Template): Table | string => {
    const next = emptyTable(template)
    for (const row of old.rows.values()) {
      const checked = checkRow(template, row)
      if (!checked.ok) return checked.problem
      const id = keyId(keyOf(template, checked.value))
      if (next.rows.has(id)) return `two rows would share the key ${id}`
      for (const index of template.indexes.filter((i) => i.unique)) {
        const v = uniqueValue(index.fields, checked.value)
        const map = next.unique.get(index.name) as Map<string, string>
        if (v !== undefined && map.has(v)) return `two rows would share ${v} in unique index ${index.name}`
        if (v !== undefined) map.set(v, id)
      }
      next.rows.set(id, checked.value)
    }
    return next
  }

  const sameTemplate = (a: Template, b: Template): boolean => {
    const { file: _a, ...x } = a
    const { file: _b, ...y } = b
    return JSON.stringify(x) === JSON.stringify(y)
  }

  const ensure: ReadModelStoreShape["ensure"] = (templates) =>
    Effect.suspend(() => {
      const bad = checkEnsured(
        [...tables.values()].map((table) => table.template),
        templates,
      )
      if (bad !== undefined) return Effect.fail(failed(bad.message, bad))
      const next = new Map<string, Table>()
      for (const t of templates) {
        const old = tables.get(t.name)
        if (old === undefined) next.set(t.name, emptyTable(t))
        else if (sameTemplate(old.template, t)) next.set(t.name, { ...old, template: t })
        else {
          const migrated = migrate(old, t)
          if (typeof migrated === "string")
            return Effect.fail(
              new StoreError({
                code: "SCHEMA_DRIFT",
                message: `Template ${t.name} (${t.tla}, ${t.file}) changed in a way its stored rows do not fit: ${migrated}. Reset and replay it, or undo the change.`,
                retryable: false,
              }),
            )
          next.set(t.name, migrated)
        }
      }
      for (const [name, t] of next) tables.set(name, t)
      return Effect.void
    })

  const load: ReadModelStoreShape["load"] = (name, keys) =>
    Effect.flatMap(table(name), (t) => {
      const out = new Map<string, Row>()
      for (const key of keys) {
        const k = checkKey(t.template, key)
        if (!k.ok) return Effect.fail(failed(`Loading ${name}: ${k.problem}.`))
        const row = t.rows.get(keyId(k.value))
        if (row !== undefined) out.set(keyId(key), row)
      }
      return Effect.succeed(out as ReadonlyMap<string, Row>)
    })

  interface Step {
    readonly table: Table
    readonly id: string
    readonly row: Row | null
    readonly key: RowKey
  }

  /** Checks every write; returns the steps in the order InnoDB would apply them. */
  const prepare = (writes: ReadonlyArray<RowWrite>): Array<Step> | StoreError => {
    const deletes: Array<Step> = []
    const updates: Array<Step> = []
    const inserts: Array<Step> = []
    const seen = new Set<string>()
    for (const w of writes) {
      const t = tables.get(w.template)
      if (t === undefined)
        return failed(
          `Commit refused: unknown template ${JSON.stringify(w.template)}; ensure() it first. Nothing was written.`,
        )
      const k = checkKey(t.template, w.key)
      if (!k.ok) return failed(`Commit refused: ${k.problem}. Nothing was written.`)
      const id = keyId(k.value)
      const touch = `${w.template}\u0000${id}`
      if (seen.has(touch))
        return failed(`Commit refused: ${w.template} row ${describeKey(k.value)} is written twice in one batch.`)
      seen.add(touch)
      if (w.row === null) {
        deletes.push({ table: t, id, row: null, key: k.value })
        continue
      }
      const r = checkRow(t.template, w.row)
      if (!r.ok) return failed(`Commit refused: ${r.problem}. Nothing was written.`)
      const rowKey = keyOf(t.template, r.value)
      if (keyId(rowKey) !== id)
        return failed(
          `Commit refused: ${w.template} write for key ${describeKey(k.value)} carries a row whose key is ${describeKey(rowKey)}. Nothing was written.`,
        )
      // A REC row must fit a MongoDB document here too, so tests on memory catch what production would refuse.
      if (t.template.backend === "rec") {
        const size = checkDocumentSize(t.template, k.value, r.value)
        if (!size.ok) return failed(`Commit refused: ${size.problem}. Nothing was written.`)
      }
      ;(t.rows.has(id) ? updates : inserts).push({ table: t, id, row: r.value, key: k.value })
    }
    return [...deletes, ...updates, ...inserts]
  }

  /** Unique indexes as they will be after `steps`, or the first write one of them refuses. */
  const checkUnique = (steps: ReadonlyArray<Step>): StoreError | undefined => {
    // value ids claimed or freed by this batch, per table and index, over the stored ones
    const overlay = new Map<string, Map<string, string | null>>()
    for (const s of steps) {
      const indexes = uniqueIndexes(s.table.template)
      if (indexes.length === 0) continue
      // each row appears once per batch, so its stored state is its state before this step
      const old = s.table.rows.get(s.id)
      for (const index of indexes) {
        const over = overlay.get(`${s.table.template.name}/${index.name}`) ?? new Map<string, string | null>()
        overlay.set(`${s.table.template.name}/${index.name}`, over)
        const base = s.table.unique.get(index.name) as Map<string, string>
        const owner = (v: string) => (over.has(v) ? over.get(v) : base.get(v))
        const before = old ? uniqueValue(index.fields, old) : undefined
        if (before !== undefined && owner(before) === s.id) over.set(before, null)
        const after = s.row ? uniqueValue(index.fields, s.row) : undefined
        if (after !== undefined) {
          const holder = owner(after)
          if (holder !== undefined && holder !== null && holder !== s.id)
            return failed(
              `Commit refused: ${s.table.template.name} row ${describeKey(s.key)} would repeat ${after} of unique index ${index.name}, held by row ${holder}. Nothing was written.`,
            )
          over.set(after, s.id)
        }
      }
    }
    return undefined
  }

  const apply = (steps: ReadonlyArray<Step>): void => {
    for (const s of steps) {
      const old = s.table.rows.get(s.id)
      for (const index of uniqueIndexes(s.table.template)) {
        const map = s.table.unique.get(index.name) as Map<string, string>
        const before = old ? uniqueValue(index.fields, old) : undefined
        if (before !== undefined && map.get(before) === s.id) map.delete(before)
        const after = s.row ? uniqueValue(index.fields, s.row) : undefined
        if (after !== undefined) map.set(after, s.id)
      }
      if (s.row === null) s.table.rows.delete(s.id)
      else s.table.rows.set(s.id, freezeRow(s.row))
    }
  }

  const commit: ReadModelStoreShape["commit"] = (checkpoint, next, writes) =>
    Effect.suspend(() => {
      const fenced = fencedCommit(fencing, checkpoint, cpId(checkpoint))
      if (fenced !== undefined) return Effect.fail(fenced)
      const steps = prepare(writes)
      if (steps instanceof StoreError) return Effect.fail(steps)
      const conflict = checkUnique(steps)
      if (conflict !== undefined) return Effect.fail(conflict)
      apply(steps)
      checkpoints.set(cpId(checkpoint), next)
      return Effect.void
    })

  const checkpoint: ReadModelStoreShape["checkpoint"] = (c) =>
    Effect.suspend(() => {
      const waiting = fencedCheckpoint(fencing, c, cpId(c))
      return waiting === undefined ? Effect.succeed(checkpoints.get(cpId(c)) ?? 0) : Effect.fail(waiting)
    })

  const scan: ReadModelStoreShape["scan"] = (name) =>
    Effect.map(table(name), (t) =>
      [...t.rows.values()]
        .map((row) => ({ row, key: keyOf(t.template, row) }))
        .sort((a, b) => compareKeys(a.key, b.key))
        .map(({ row }) => row),
    )

  const reset: ReadModelStoreShape["reset"] = (topology, names) =>
    Effect.flatMap(Effect.forEach(names, table), (ts) =>
      Effect.sync(() => {
        for (const t of ts) {
          t.rows.clear()
          for (const m of t.unique.values()) m.clear()
        }
        for (const id of [...checkpoints.keys()])
          if ((JSON.parse(id) as [string])[0] === topology) checkpoints.delete(id)
      }),
    )

  const replay = replayOps(tables, checkpoints, cpId, fencing)
  const check = (writes: ReadonlyArray<RowWrite>) =>
    Effect.suspend(() => {
      const steps = prepare(writes)
      return steps instanceof StoreError ? Effect.fail(steps) : Effect.void
    })
  const store = ReadModelStore.of({ ensure, load, commit, checkpoint, scan, reset, replay, check })
  internals.set(store, { tables, checkpoints })
  checks.set(store, (writes) => {
    const steps = prepare(writes)
    return steps instanceof StoreError ? steps : checkUnique(steps)
  })
  return store
})

const checks = new WeakMap<object, (writes: ReadonlyArray<RowWrite>) => StoreError | undefined>()

/**
 * Checks a batch as `commit` would, unique indexes included, without writing
 * it; undefined when `commit` would accept it. The router checks the REC half
 * of a batch this way before the REL half commits.
 */
export const check = (store: ReadModelStoreShape, writes: ReadonlyArray<RowWrite>): StoreError | undefined => {
  const f = checks.get(store)
  if (f === undefined) throw new Error("check() needs a store built by memory.make")
  return f(writes)
}

/** The in-memory store as a Layer; each build starts empty. */
export const layer: Layer.Layer<ReadModelStore> = Layer.effect(ReadModelStore, make)

// ---------------------------------------------------------------------------
// Replay: variants, fencing and swaps. Everything here runs synchronously
// inside one Effect step, so a swap is atomic for every reader of this
// process: a load or scan sees the old Table objects or the new ones.

/** The state of a store instance, for swapping a variant's tables into the live store. */
const internals = new WeakMap<object, { tables: Map<string, Table>; checkpoints: Map<string, number> }>()

interface Fencing {
  readonly records: Map<string, TopologyRecord>
  /** Per live checkpoint: the generation its stream saw when it read the checkpoint. */
  readonly seen: Map<string, number>
  readonly locks: Map<string, ReplayLockHolder>
}

const fencedCommit = (f: Fencing, c: CheckpointId, id: string): StoreError | undefined => {
  const saw = f.seen.get(id)
  if (saw === undefined || saw === (f.records.get(c.topology)?.generation ?? 0)) return undefined
  return new StoreError({
    code: "FENCED",
    message: `Commit refused: topology ${c.topology} was fenced for a swap of its read models after this stream read its checkpoint (${c.depot}/${c.partition}); re-read the checkpoint and fold again. Nothing was written.`,
    retryable: false,
  })
}

const fencedCheckpoint = (f: Fencing, c: CheckpointId, id: string): StoreError | undefined => {
  const record = f.records.get(c.topology)
  // A fence whose lock is gone was left by a replay that died; the models are consistent either way.
  if (record?.fenced === true && f.locks.has(c.topology))
    return new StoreError({
      code: "FENCED",
      message: `Topology ${c.topology} is paused while a replay swaps in its rebuilt read models; its streams resume when the swap is done.`,
      retryable: true,
    })
  f.seen.set(id, record?.generation ?? 0)
  return undefined
}

/** Field values in template order, the provenance column last: equal rows give equal strings. */
const canonical = (template: Template, row: Row): string =>
  JSON.stringify([...template.fields.map((f) => row[f.name] ?? null), row[LAST_EVENT_COLUMN] ?? null])

const replayOps = (
  tables: Map<string, Table>,
  checkpoints: Map<string, number>,
  cpId: (c: CheckpointId) => string,
  fencing: Fencing,
): ReadModelReplayShape => {
  const variants = new Map<string, { readonly store: ReadModelStoreShape; readonly fingerprint: string }>()
  const variantKey = (topology: string, variant: string) => `${topology}/${variant}`
  const tablesOf = (store: ReadModelStoreShape) => internals.get(store)?.tables ?? new Map<string, Table>()
  const record = (topology: string): TopologyRecord =>
    fencing.records.get(topology) ?? { version: undefined, generation: 0, fenced: false }

  return {
    record: (topology) => Effect.sync(() => fencing.records.get(topology)),
    setVersion: (topology, version) =>
      Effect.sync(() => void fencing.records.set(topology, { ...record(topology), version })),
    lock: (topology, holder) =>
      Effect.acquireRelease(
        Effect.sync(() => {
          const current = fencing.locks.get(topology)
          if (current !== undefined) return { acquired: false as const, holder: current }
          fencing.locks.set(topology, holder)
          return { acquired: true as const }
        }),
        (r) => (r.acquired ? Effect.sync(() => void fencing.locks.delete(topology)) : Effect.void),
      ),
    variant: (topology, templates, variant, fingerprint) =>
      Effect.gen(function* () {
        const key = variantKey(topology, variant)
        const existing = variants.get(key)
        if (existing !== undefined && existing.fingerprint === fingerprint) {
          const have = tablesOf(existing.store)
          if (templates.every((t) => have.has(t.name))) return { store: existing.store, resumed: true, dropped: false }
        }
        // A variant is a store instance of its own: its tables and checkpoints never meet the live ones.
        const store = yield* make
        yield* store.ensure(templates)
        variants.set(key, { store, fingerprint })
        return { store, resumed: false, dropped: existing !== undefined }
      }),
    dropVariant: (topology, _templates, variant) =>
      Effect.sync(() => void variants.delete(variantKey(topology, variant))),
    peekCheckpoint: (c) => Effect.sync(() => checkpoints.get(cpId(c)) ?? 0),
    fence: (topology) =>
      Effect.sync(() => {
        const r = record(topology)
        fencing.records.set(topology, { ...r, generation: r.generation + 1, fenced: true })
      }),
    unfence: (topology) =>
      Effect.sync(() => void fencing.records.set(topology, { ...record(topology), fenced: false })),
    swap: (topology, names, version) =>
      Effect.suspend(() => {
        const shadow = variants.get(variantKey(topology, SHADOW))
        const fresh = shadow === undefined ? undefined : tablesOf(shadow.store)
        const missing = names.filter((n) => fresh?.get(n) === undefined || !tables.has(n))
        if (fresh === undefined || missing.length > 0)
          return Effect.fail(
            failed(
              `Swap refused: topology ${topology} has no complete shadow (${missing.join(", ") || "none built"}); run the replay again. Nothing was changed.`,
            ),
          )
        for (const n of names) tables.set(n, fresh.get(n) as Table)
        variants.delete(variantKey(topology, SHADOW))
        fencing.records.set(topology, { ...record(topology), version, fenced: false })
        return Effect.void
      }),
    diff: (name, variant, limit) =>
      Effect.suspend(() => {
        const live = tables.get(name)
        const other = [...variants.entries()]
          .filter(([k]) => k.endsWith(`/${variant}`))
          .map(([, v]) => tablesOf(v.store).get(name))
          .find((t) => t !== undefined)
        if (live === undefined || other === undefined)
          return Effect.fail(failed(`Cannot compare ${name} with its ${variant} copy: one of them does not exist.`))
        const differences: Array<RowDifference> = []
        for (const [id, row] of live.rows) {
          const copy = other.rows.get(id) ?? null
          if (copy === null || canonical(live.template, row) !== canonical(live.template, copy))
            differences.push({ key: keyOf(live.template, row), live: row, copy })
        }
        for (const [id, row] of other.rows)
          if (!live.rows.has(id)) differences.push({ key: keyOf(live.template, row), live: null, copy: row })
        differences.sort((a, b) => compareKeys(a.key, b.key))
        return Effect.succeed({ count: differences.length, first: differences.slice(0, limit) })
      }),
  }
}
