/**
 * The translation of template row writes into MongoDB operations, as pure
 * functions: documents to and from rows, and a batch's writes to one ordered
 * bulk write per collection. The MongoDB adapter (mongodb.ts) only runs what
 * these functions return, so every decision here is unit-tested without a
 * server (test/readmodel/mongo-ops.test.ts).
 *
 * Exactly-once, and which mechanism applies when:
 *
 * - Replica set or sharded cluster (the server's `hello` names a set, or is a
 *   mongos): the batch's bulk writes and the checkpoint document are written
 *   in one transaction. A failure before commit leaves both as they were.
 *
 * - Standalone server (no transactions): writes are idempotent by
 *   construction. Every document records, per stream, the position it has
 *   applied: `_beds.pos.<topology>.<depot>.<partition> = next`. Every update
 *   and delete is guarded by a filter on that position (`$not: {$gte: next}`),
 *   and the plan skips documents that already hold it, so applying the same
 *   batch again changes nothing. The batch itself is journaled in its
 *   checkpoint document before any row is written, so that after a crash the
 *   very same batch is re-applied: re-running the topology from the old
 *   checkpoint would fold a possibly longer batch onto documents that already
 *   hold part of it, which no guard can undo.
 *
 * Both modes write the same documents with the same guards; a transaction
 * simply never meets a guard that refuses.
 */
import { type AnyBulkWriteOperation, type Document, Double, Long } from "mongodb"
import {
  type Checked,
  checkKey,
  checkRow,
  defaultOf,
  type Field,
  isCanonical,
  keyId,
  keyOf,
  LAST_EVENT_COLUMN,
  type Row,
  type RowKey,
  type Shape,
  type Template,
  type ValueType,
} from "../template/template.ts"
import type { CheckpointId, RowWrite } from "./store.ts"

/** MongoDB's limit on one document, in bytes of BSON. */
export const MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
/** Room left in every document for the stream positions of `_beds`. */
export const SYSTEM_RESERVE_BYTES = 16 * 1024

/** The system field of every read-model document: positions applied per stream. */
export const SYSTEM_FIELD = "_beds"
/** Per (topology, depot, partition): the next offset to project, and a pending batch on a standalone server. */
export const CHECKPOINT_COLLECTION = "beds_checkpoint"
/** Parts of pending batches too large to sit in their checkpoint document. */
export const JOURNAL_COLLECTION = "beds_journal"
/** The template each collection was last ensured with, to detect drift (MongoDB has no schema to compare). */
export const TEMPLATES_COLLECTION = "beds_templates"
/** The router's record of batches whose REC half may still be due (see router.ts). */
export const OUTBOX_COLLECTION = "beds_outbox"

const ok = <A>(value: A): Checked<A> => ({ ok: true, value })
const problem = <A>(text: string): Checked<A> => ({ ok: false, problem: text })

/** A key as error messages show it. */
export const describeKey = (key: RowKey): string => `(${key.map((k) => JSON.stringify(k)).join(", ")})`

// ---------------------------------------------------------------------------
// Field names from data: map keys and the keys of json objects.

const BSON_TYPE_KEY = "_bsontype"

/**
 * Makes any string usable as a MongoDB field name, reversibly: `.` would be
 * read as a path and a leading `$` as an operator, NUL cannot be stored at
 * all, and the driver refuses to serialize an object with a `_bsontype` key,
 * taking it for one of its own types. `%` escapes, so every other key is
 * stored as it is. The empty key becomes a lone `%`, which no other key
 * encodes to.
 */
export const encodeKey = (key: string): string =>
  key === ""
    ? "%"
    : key === BSON_TYPE_KEY
      ? "%5Fbsontype"
      : key.replace(/[%.$\0]/g, (c) => `%${c.charCodeAt(0).toString(16).padStart(2, "0").toUpperCase()}`)

/** The inverse of encodeKey. */
export const decodeKey = (name: string): string =>
  name === "%"
    ? ""
    : name.replace(/%(25|2E|24|00|5F)/g, (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)))

const encodeJson = (v: unknown): unknown => {
  if (typeof v !== "object" || v === null) return v
  if (Array.isArray(v)) return v.map(encodeJson)
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [encodeKey(k), encodeJson(x)]))
}

const decodeJson = (v: unknown): unknown => {
  if (typeof v !== "object" || v === null) return v
  if (Array.isArray(v)) return v.map(decodeJson)
  if (v instanceof Long) return v.toNumber()
  if (v instanceof Date) return v.getTime()
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [decodeKey(k), decodeJson(x)]))
}

// ---------------------------------------------------------------------------
// Values: canonical row values (checkRow's output) to BSON and back.

/**
 * A canonical value as stored: integers and counters as 64-bit longs (exact,
 * and `$inc`-able by other tools), floats as doubles (even when integral),
 * times as BSON dates, map keys encoded, objects with their declared fields.
 */
export const toBson = (spec: ValueType, value: unknown): unknown => {
  if (value === null || value === undefined) return null
  const shape = spec.shape
  if (shape !== undefined)
    switch (shape.kind) {
      case "counter":
        return Long.fromNumber(value as number)
      case "map":
        return Object.fromEntries(
          Object.entries(value as Record<string, unknown>).map(([k, x]) => [encodeKey(k), toBson(shape.of, x)]),
        )
      case "list":
      case "set":
        return (value as ReadonlyArray<unknown>).map((x) => toBson(shape.of, x))
      case "object":
        return Object.fromEntries(
          shape.fields.map((f) => [f.name, toBson(f, (value as Record<string, unknown>)[f.name])]),
        )
    }
  switch (spec.type) {
    case "int":
      return Long.fromNumber(value as number)
    case "float":
      return new Double(value as number)
    case "time":
      return new Date(value as number)
    case "json":
      return encodeJson(value)
    default:
      return value
  }
}

/** Thrown by fromBson for a stored value no template value can equal; the adapter reports it as CORRUPT. */
export class UnreadableValue extends Error {}

const toInteger = (v: unknown): number => {
  const n =
    v instanceof Long
      ? v.lessThanOrEqual(Long.fromNumber(Number.MAX_SAFE_INTEGER)) &&
        v.greaterThanOrEqual(Long.fromNumber(Number.MIN_SAFE_INTEGER))
        ? v.toNumber()
        : Number.NaN
      : Number(v)
  if (!Number.isSafeInteger(n)) throw new UnreadableValue(`${String(v)} is not an integer a template can hold`)
  return n === 0 ? 0 : n
}

/** A stored value as topologies see it, equal to what was written. */
export const fromBson = (spec: ValueType, value: unknown): unknown => {
  if (value === null || value === undefined) return null
  const shape = spec.shape
  if (shape !== undefined)
    switch (shape.kind) {
      case "counter":
        return toInteger(value)
      case "map":
        return Object.fromEntries(
          Object.entries(value as Record<string, unknown>).map(([k, x]) => [decodeKey(k), fromBson(shape.of, x)]),
        )
      case "list":
      case "set":
        return (value as ReadonlyArray<unknown>).map((x) => fromBson(shape.of, x))
      case "object":
        return Object.fromEntries(shape.fields.map((f) => [f.name, fromStored(f, (value as Document)[f.name])]))
    }
  switch (spec.type) {
    case "int":
      return toInteger(value)
    case "time":
      return value instanceof Date ? value.getTime() : toInteger(value)
    case "float": {
      const n = Number(value)
      return n === 0 ? 0 : n
    }
    case "json":
      return decodeJson(value)
    default:
      return value
  }
}

/** A field of a stored document; a document written before the field existed reads its default. */
const fromStored = (field: Field, value: unknown): unknown =>
  value === undefined ? (defaultOf(field) ?? null) : fromBson(field, value)

const fieldOf = (template: Template, name: string): Field => template.fields.find((f) => f.name === name) as Field

/** The `_id` of a row's document: the key value, or for a compound key a document of the key fields in key order. */
export const idOf = (template: Template, key: RowKey): unknown => {
  if (template.key.length === 1) return toBson(fieldOf(template, template.key[0] as string), key[0])
  return Object.fromEntries(template.key.map((k, i) => [k, toBson(fieldOf(template, k), key[i])]))
}

/** The key a document's `_id` stands for. */
export const keyFromId = (template: Template, id: unknown): RowKey => {
  if (template.key.length === 1) return [fromBson(fieldOf(template, template.key[0] as string), id) as string | number]
  return template.key.map((k) => fromBson(fieldOf(template, k), (id as Document)[k]) as string | number)
}

/** A checked row as its document (without `_beds`). */
export const toDocument = (template: Template, key: RowKey, row: Row): Document => {
  const doc: Document = { _id: idOf(template, key) }
  for (const f of template.fields) doc[f.name] = toBson(f, row[f.name])
  doc[LAST_EVENT_COLUMN] = row[LAST_EVENT_COLUMN]
  return doc
}

/** A stored document as a row: every field (defaults for fields it predates), and its last event's lineage ID. */
export const fromDocument = (template: Template, doc: Document): Row => {
  const row: Record<string, unknown> = {}
  for (const f of template.fields) row[f.name] = fromStored(f, doc[f.name])
  row[LAST_EVENT_COLUMN] = doc[LAST_EVENT_COLUMN] ?? null
  return row
}

// Sizes as BSON, counted from the canonical row without building its document:
// every write of a REC row is checked, and building a document of a few
// hundred list items only to measure it cost more than checking the row.
// The counts follow the BSON spec; a property test holds them to the driver's
// calculateObjectSize of toDocument.

const utf8Bytes = (s: string): number => Buffer.byteLength(s, "utf8")
/** An element around a value of `bytes`: its type byte and its name as a C string. */
const element = (name: string, bytes: number): number => 2 + utf8Bytes(name) + bytes
/** An array element, named by its index in decimal. */
const item = (index: number, bytes: number): number =>
  2 + (index < 10 ? 1 : index < 100 ? 2 : index < 1000 ? 3 : String(index).length) + bytes
/** An embedded document or array: its length, its elements, its terminator. */
const EMPTY_DOCUMENT = 5
const INT32_MIN = -(2 ** 31)
const INT32_MAX = 2 ** 31 - 1

/**
 * The bytes encodeJson's value takes: the driver stores an integral number in
 * int32 range as int32 (canonical JSON is a JSON copy, so it holds no -0).
 */
const jsonBytes = (v: unknown): number => {
  switch (typeof v) {
    case "string":
      return 5 + utf8Bytes(v)
    case "number":
      return Number.isInteger(v) && v >= INT32_MIN && v <= INT32_MAX ? 4 : 8
    case "boolean":
      return 1
    case "object": {
      if (v === null) return 0
      let n = EMPTY_DOCUMENT
      if (Array.isArray(v)) for (let i = 0; i < v.length; i++) n += item(i, jsonBytes(v[i]))
      else for (const [k, x] of Object.entries(v)) n += element(encodeKey(k), jsonBytes(x))
      return n
    }
    default:
      return 0
  }
}

/** Bytes of canonical values already counted; they are frozen, so a count stays true. */
const counted = new WeakMap<object, number>()

/** The bytes toBson(spec, value) takes as an element's value. */
const valueBytes = (spec: ValueType, value: unknown): number => {
  if (value === null || value === undefined) return 0
  const shape = spec.shape
  if (shape === undefined) return scalarBytes(spec, value)
  if (!isCanonical(shape, value)) return shapedBytes(shape, value)
  let n = counted.get(value as object)
  if (n === undefined) {
    n = shapedBytes(shape, value)
    counted.set(value as object, n)
  }
  return n
}

const shapedBytes = (shape: Shape, value: unknown): number => {
  switch (shape.kind) {
    case "counter":
      return 8
    case "map": {
      let n = EMPTY_DOCUMENT
      for (const [k, x] of Object.entries(value as Record<string, unknown>))
        n += element(encodeKey(k), valueBytes(shape.of, x))
      return n
    }
    case "list":
    case "set": {
      const items = value as ReadonlyArray<unknown>
      let n = EMPTY_DOCUMENT
      for (let i = 0; i < items.length; i++) n += item(i, valueBytes(shape.of, items[i]))
      return n
    }
    case "object": {
      const fields = value as Record<string, unknown>
      let n = EMPTY_DOCUMENT
      for (const f of shape.fields) n += element(f.name, valueBytes(f, fields[f.name]))
      return n
    }
  }
}

const scalarBytes = (spec: ValueType, value: unknown): number => {
  switch (spec.type) {
    case "int":
    case "float":
    case "time":
      return 8
    case "bool":
      return 1
    case "json":
      return jsonBytes(value)
    default:
      return 5 + utf8Bytes(value as string)
  }
}

/** Bytes toDocument(template, key, row) takes as BSON, for a canonical row. */
export const documentBytes = (template: Template, key: RowKey, row: Row): number => {
  let id: number
  if (template.key.length === 1) id = valueBytes(fieldOf(template, template.key[0] as string), key[0])
  else {
    id = EMPTY_DOCUMENT
    template.key.forEach((k, i) => {
      id += element(k, valueBytes(fieldOf(template, k), key[i]))
    })
  }
  let n = EMPTY_DOCUMENT + element("_id", id)
  for (const f of template.fields) n += element(f.name, valueBytes(f, row[f.name]))
  const last = row[LAST_EVENT_COLUMN]
  return n + element(LAST_EVENT_COLUMN, typeof last === "string" ? 5 + utf8Bytes(last) : 0)
}

/**
 * Refuses a canonical row whose document MongoDB would refuse, before
 * anything is written, with what to do about it. The `_beds` positions of
 * every stream writing the document must fit too, hence the reserve.
 */
export const checkDocumentSize = (template: Template, key: RowKey, row: Row): Checked<number> => {
  const bytes = documentBytes(template, key, row)
  const limit = MAX_DOCUMENT_BYTES - SYSTEM_RESERVE_BYTES
  if (bytes <= limit) return ok(bytes)
  return problem(
    `${template.name} (${template.tla}) document ${describeKey(key)} would take ${bytes} bytes of BSON; MongoDB stores at most ${MAX_DOCUMENT_BYTES} bytes (16 MiB) per document, of which BEDS keeps ${SYSTEM_RESERVE_BYTES} for its positions. Keep less in it (for example only the most recent items of a list) or split it into several documents`,
  )
}

// ---------------------------------------------------------------------------
// Streams and positions.

/** The `_id` of a stream's checkpoint document. */
export const checkpointDocId = (cp: CheckpointId): string => `${cp.topology}/${cp.depot}/${cp.partition}`

/** Where a document records the position it has applied for a stream (names are safe identifiers). */
export const positionPath = (cp: CheckpointId): string =>
  `${SYSTEM_FIELD}.pos.${cp.topology}.${cp.depot}.${cp.partition}`

/** The position a stored document has applied for a stream, if any. */
export const positionOf = (doc: Document, cp: CheckpointId): number | undefined => {
  let v: unknown = doc
  for (const segment of positionPath(cp).split("."))
    v = typeof v === "object" && v !== null ? (v as Document)[segment] : undefined
  if (v === undefined || v === null) return undefined
  return v instanceof Long ? v.toNumber() : Number(v)
}

/** The filter every write carries: the document has not yet applied this stream up to `next`. */
export const guard = (cp: CheckpointId, next: number): Document => ({ [positionPath(cp)]: { $not: { $gte: next } } })

// ---------------------------------------------------------------------------
// A batch: checked, then planned against what is stored.

/** A write checked against its template. */
export interface Prepared {
  readonly template: Template
  /** The canonical key. */
  readonly key: RowKey
  /** keyId of the canonical key. */
  readonly id: string
  /** The canonical row; null deletes. */
  readonly row: Row | null
}

/**
 * Checks a batch completely before anything is written, as the other
 * adapters do: every row against its template, one write per document, the
 * key inside the row, and every document within MongoDB's size limit.
 */
export const prepareBatch = (
  templateOf: (name: string) => Template | undefined,
  writes: ReadonlyArray<RowWrite>,
): Checked<ReadonlyArray<Prepared>> => {
  const out: Array<Prepared> = []
  const seen = new Set<string>()
  for (const w of writes) {
    const template = templateOf(w.template)
    if (template === undefined)
      return problem(
        `Commit refused: unknown template ${JSON.stringify(w.template)}; ensure() it first. Nothing was written.`,
      )
    const k = checkKey(template, w.key)
    if (!k.ok) return problem(`Commit refused: ${k.problem}. Nothing was written.`)
    const id = keyId(k.value)
    const touch = JSON.stringify([w.template, id])
    if (seen.has(touch))
      return problem(`Commit refused: ${w.template} row ${describeKey(k.value)} is written twice in one batch.`)
    seen.add(touch)
    if (w.row === null) {
      out.push({ template, key: k.value, id, row: null })
      continue
    }
    const r = checkRow(template, w.row)
    if (!r.ok) return problem(`Commit refused: ${r.problem}. Nothing was written.`)
    const rowKey = keyOf(template, r.value)
    if (keyId(rowKey) !== id)
      return problem(
        `Commit refused: ${w.template} write for key ${describeKey(k.value)} carries a row whose key is ${describeKey(rowKey)}. Nothing was written.`,
      )
    const size = checkDocumentSize(template, k.value, r.value)
    if (!size.ok) return problem(`Commit refused: ${size.problem}. Nothing was written.`)
    out.push({ template, key: k.value, id, row: r.value })
  }
  return ok(out)
}

/**
 * What is stored for the documents a batch touches, per template name:
 * keyId → the position the document has applied for the batch's stream
 * (null when it records none). A key that is absent has no document.
 */
export type Stored = ReadonlyMap<string, ReadonlyMap<string, number | null>>

/** The query that fills Stored for one template: the touched `_id`s, with only the stream's position. */
export const storedQuery = (
  cp: CheckpointId,
  prepared: ReadonlyArray<Prepared>,
): { readonly filter: Document; readonly projection: Document } => ({
  filter: { _id: { $in: prepared.map((p) => idOf(p.template, p.key)) } },
  projection: { _id: 1, [positionPath(cp)]: 1 },
})

/** One collection's share of a batch. */
export interface CollectionPlan {
  readonly template: Template
  /** Deletes, then updates of existing documents, then inserts: the order InnoDB and the memory adapter use. */
  readonly ops: ReadonlyArray<AnyBulkWriteOperation>
  /** The key each op writes, for error messages. */
  readonly keys: ReadonlyArray<RowKey>
  /** Writes left out because their document has already applied this batch. */
  readonly applied: number
}

/**
 * Plans a batch against what is stored. A document that already holds the
 * batch's position is left alone (this is how a replayed batch changes
 * nothing); a delete of a missing document is left out; an existing document
 * is updated under the position guard; a missing one is upserted under it
 * (if the guard then refuses, the server reports a duplicate `_id`: someone
 * inserted it meanwhile). Fields are set whole: a write replaces the row.
 */
export const planBatch = (
  cp: CheckpointId,
  next: number,
  prepared: ReadonlyArray<Prepared>,
  stored: Stored,
): ReadonlyArray<CollectionPlan> => {
  const groups = new Map<
    string,
    {
      template: Template
      deletes: Array<Prepared>
      updates: Array<Prepared>
      inserts: Array<Prepared>
      applied: number
    }
  >()
  for (const p of prepared) {
    const name = p.template.name
    const g = groups.get(name) ?? { template: p.template, deletes: [], updates: [], inserts: [], applied: 0 }
    groups.set(name, g)
    const known = stored.get(name)
    const exists = known?.has(p.id) === true
    const position = known?.get(p.id) ?? null
    if (exists && position !== null && position >= next) {
      g.applied++
      continue
    }
    if (p.row === null) {
      if (exists) g.deletes.push(p)
    } else (exists ? g.updates : g.inserts).push(p)
  }
  const path = positionPath(cp)
  const filter = (p: Prepared): Document => ({ _id: idOf(p.template, p.key), ...guard(cp, next) })
  const update = (p: Prepared): Document => {
    const { _id, ...fields } = toDocument(p.template, p.key, p.row as Row)
    return { $set: { ...fields, [path]: Long.fromNumber(next) } }
  }
  return [...groups.values()].map((g) => {
    const ops: Array<AnyBulkWriteOperation> = [
      ...g.deletes.map((p) => ({ deleteOne: { filter: filter(p) } })),
      ...g.updates.map((p) => ({ updateOne: { filter: filter(p), update: update(p), upsert: false } })),
      ...g.inserts.map((p) => ({ updateOne: { filter: filter(p), update: update(p), upsert: true } })),
    ]
    return {
      template: g.template,
      ops,
      keys: [...g.deletes, ...g.updates, ...g.inserts].map((p) => p.key),
      applied: g.applied,
    }
  })
}

// ---------------------------------------------------------------------------
// Unique indexes on a standalone server: checked before the journal commits
// the batch, since without a transaction a refusal halfway could not be undone.

/** The value at a dotted path of a row, or undefined. */
export const valueAt = (row: Row, path: string): unknown => {
  let v: unknown = row
  for (const segment of path.split(".")) {
    if (typeof v !== "object" || v === null || Array.isArray(v)) return undefined
    v = (v as Record<string, unknown>)[segment]
  }
  return v
}

/** The value of a unique index in a row, or undefined when any part is null (NULLs never collide). */
export const uniqueValue = (paths: ReadonlyArray<string>, row: Row): string | undefined => {
  const values = paths.map((p) => valueAt(row, p))
  return values.some((v) => v === null || v === undefined) ? undefined : JSON.stringify(values)
}

const bsonAt = (template: Template, path: string, value: unknown): unknown => {
  const [head, ...rest] = path.split(".")
  let spec: ValueType | undefined = template.fields.find((f) => f.name === head)
  for (const segment of rest)
    spec = spec?.shape?.kind === "object" ? spec.shape.fields.find((f) => f.name === segment) : undefined
  return spec === undefined ? value : toBson(spec, value)
}

/**
 * The query for the documents holding any unique value this batch writes,
 * or undefined when the batch writes none. The documents it finds, with the
 * batch, decide whether the batch would break a unique index.
 */
export const uniqueQuery = (template: Template, prepared: ReadonlyArray<Prepared>): Document | undefined => {
  const or: Array<Document> = []
  for (const index of template.indexes.filter((i) => i.unique))
    for (const p of prepared) {
      if (p.row === null || p.template !== template || uniqueValue(index.fields, p.row) === undefined) continue
      or.push(Object.fromEntries(index.fields.map((f) => [f, bsonAt(template, f, valueAt(p.row as Row, f))])))
    }
  return or.length === 0 ? undefined : { $or: or }
}

/**
 * Whether a batch keeps every unique index of `template` unique, given the
 * rows that hold its values now (`holders`, by keyId) and which keys exist.
 * Steps go in the plan's order (deletes, updates, inserts), each seeing the
 * ones before it, as in the memory adapter.
 */
export const checkUnique = (
  template: Template,
  prepared: ReadonlyArray<Prepared>,
  holders: ReadonlyMap<string, Row>,
  exists: (id: string) => boolean,
): string | undefined => {
  const indexes = template.indexes.filter((i) => i.unique)
  if (indexes.length === 0) return undefined
  const mine = prepared.filter((p) => p.template === template)
  const ordered = [
    ...mine.filter((p) => p.row === null),
    ...mine.filter((p) => p.row !== null && exists(p.id)),
    ...mine.filter((p) => p.row !== null && !exists(p.id)),
  ]
  for (const index of indexes) {
    const owner = new Map<string, string | null>()
    for (const [id, row] of holders) {
      const v = uniqueValue(index.fields, row)
      if (v !== undefined) owner.set(v, id)
    }
    for (const p of ordered) {
      const old = holders.get(p.id)
      const before = old === undefined ? undefined : uniqueValue(index.fields, old)
      if (before !== undefined && owner.get(before) === p.id) owner.set(before, null)
      const after = p.row === null ? undefined : uniqueValue(index.fields, p.row)
      if (after === undefined) continue
      const holder = owner.get(after)
      if (holder !== undefined && holder !== null && holder !== p.id)
        return `Commit refused: ${template.name} row ${describeKey(p.key)} would repeat ${after} of unique index ${index.name}, held by row ${holder}. Nothing was written.`
      owner.set(after, p.id)
    }
  }
  return undefined
}

// ---------------------------------------------------------------------------
// Checkpoints and the pending-batch journal.

/** The checkpoint write of a transaction: moves the stream to `next`. */
export const checkpointUpdate = (cp: CheckpointId, next: number): { filter: Document; update: Document } => ({
  filter: { _id: checkpointDocId(cp) },
  update: {
    $set: { topology: cp.topology, depot: cp.depot, partition: cp.partition, next: Long.fromNumber(next) },
  },
})

/** Largest journal text kept inside the checkpoint document; longer ones go to beds_journal in chunks. */
export const INLINE_JOURNAL_BYTES = 4 * 1024 * 1024
/** Bytes of journal text per beds_journal document. */
export const JOURNAL_CHUNK_BYTES = 8 * 1024 * 1024

/** A pending batch as the checkpoint document records it. */
export interface Pending {
  readonly next: number
  /** The batch's writes as JSON text, when inline. */
  readonly writes?: string | undefined
  /** Otherwise the number of beds_journal chunks holding it. */
  readonly chunks?: number | undefined
}

/** The batch's checked writes as journal text: canonical rows are plain JSON, so it reads back exactly. */
export const journalText = (prepared: ReadonlyArray<Prepared>): string =>
  JSON.stringify(prepared.map((p) => ({ template: p.template.name, key: p.key, row: p.row })))

/** Journal text back into the writes it recorded. */
export const journalWrites = (text: string): ReadonlyArray<RowWrite> => JSON.parse(text) as ReadonlyArray<RowWrite>

/** Splits journal text into chunks of at most `bytes` UTF-8 bytes (at least 4), never inside a character. */
export const chunkText = (text: string, bytes = JOURNAL_CHUNK_BYTES): ReadonlyArray<string> => {
  const out: Array<string> = []
  let start = 0
  let size = 0
  for (let i = 0; i < text.length; ) {
    const code = text.codePointAt(i) as number
    const units = code > 0xffff ? 2 : 1
    const width = code < 0x80 ? 1 : code < 0x800 ? 2 : code < 0x10000 ? 3 : 4
    if (size + width > bytes) {
      out.push(text.slice(start, i))
      start = i
      size = 0
    }
    size += width
    i += units
  }
  out.push(text.slice(start))
  return out
}

/** The `_id` of a journal chunk. */
export const journalChunkId = (cp: CheckpointId, next: number, i: number): string =>
  `${checkpointDocId(cp)}@${next}#${i}`

/**
 * The write that commits a batch on a standalone server: once the checkpoint
 * document holds it as pending, the batch will be applied, now or by the
 * recovery at the stream's next start.
 */
export const pendingUpdate = (cp: CheckpointId, pending: Pending): { filter: Document; update: Document } => ({
  filter: { _id: checkpointDocId(cp) },
  update: {
    $set: {
      topology: cp.topology,
      depot: cp.depot,
      partition: cp.partition,
      pending: {
        next: Long.fromNumber(pending.next),
        ...(pending.writes === undefined ? {} : { writes: pending.writes }),
        ...(pending.chunks === undefined ? {} : { chunks: pending.chunks }),
      },
    },
  },
})

/** The write that closes an applied pending batch: the checkpoint moves to its `next`. */
export const finishUpdate = (cp: CheckpointId, next: number): { filter: Document; update: Document } => ({
  filter: { _id: checkpointDocId(cp), "pending.next": Long.fromNumber(next) },
  update: { $set: { next: Long.fromNumber(next) }, $unset: { pending: "" } },
})

/** A checkpoint document's next offset and pending batch. */
export const readCheckpoint = (doc: Document | null | undefined): { next: number; pending: Pending | undefined } => {
  if (doc === null || doc === undefined) return { next: 0, pending: undefined }
  const n = (v: unknown): number => (v instanceof Long ? v.toNumber() : Number(v ?? 0))
  const p = doc.pending as Document | undefined
  return {
    next: n(doc.next),
    pending:
      p === undefined || p === null
        ? undefined
        : {
            next: n(p.next),
            writes: typeof p.writes === "string" ? p.writes : undefined,
            chunks: p.chunks === undefined ? undefined : n(p.chunks),
          },
  }
}
