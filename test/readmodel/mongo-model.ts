/**
 * An in-memory model of the MongoDB operators the adapter's plans use, and
 * nothing more: filters by equality (with numbers of any BSON type equal by
 * value), `$in`, `$or`, `$and`, `$not`, `$gte`, `$lt`, `$exists`; updates
 * with `$set` and `$unset` on dotted paths; `updateOne` with upsert,
 * `deleteOne`, and ordered bulk writes that stop at the first error. An
 * upsert whose filter matches nothing while its `_id` exists fails with a
 * duplicate key, as on a server. Any other operator throws, so a plan that
 * starts using one cannot pass its tests unmodelled.
 */
import { type AnyBulkWriteOperation, type Document, Double, Long } from "mongodb"

/** A value as MongoDB compares it: every numeric type by value, dates by time, key order kept. */
export const normalize = (v: unknown): unknown => {
  if (v instanceof Long) return v.toNumber()
  if (v instanceof Double) return v.valueOf()
  if (v instanceof Date) return { $date: v.getTime() }
  if (Array.isArray(v)) return v.map(normalize)
  if (typeof v === "object" && v !== null)
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, normalize(x)]))
  return v
}

const same = (a: unknown, b: unknown): boolean => JSON.stringify(normalize(a)) === JSON.stringify(normalize(b))

/** Copies a document; BSON values are immutable and kept as they are. */
const copy = (v: unknown): unknown => {
  if (v instanceof Long || v instanceof Double || v instanceof Date) return v
  if (Array.isArray(v)) return v.map(copy)
  if (typeof v === "object" && v !== null) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, copy(x)]))
  return v
}

const getPath = (doc: unknown, path: string): unknown => {
  let v = doc
  for (const segment of path.split(".")) {
    if (typeof v !== "object" || v === null || Array.isArray(v)) return undefined
    v = (v as Document)[segment]
  }
  return v
}

const setPath = (doc: Document, path: string, value: unknown): void => {
  const segments = path.split(".")
  let v: Document = doc
  for (const segment of segments.slice(0, -1)) {
    const child = v[segment]
    if (child === undefined || child === null) v[segment] = {}
    else if (typeof child !== "object" || Array.isArray(child))
      throw new Error(`Cannot create field '${segment}' in element {${segment}: ${String(child)}}`)
    v = v[segment] as Document
  }
  v[segments.at(-1) as string] = copy(value)
}

const unsetPath = (doc: Document, path: string): void => {
  const segments = path.split(".")
  const parent = getPath(doc, segments.slice(0, -1).join(".")) ?? (segments.length === 1 ? doc : undefined)
  if (typeof parent === "object" && parent !== null) delete (parent as Document)[segments.at(-1) as string]
}

const numeric = (v: unknown): number | undefined => {
  const n = normalize(v)
  return typeof n === "number" ? n : undefined
}

const isOperators = (v: unknown): v is Document =>
  typeof v === "object" &&
  v !== null &&
  !Array.isArray(v) &&
  !(v instanceof Long) &&
  !(v instanceof Double) &&
  !(v instanceof Date) &&
  Object.keys(v).length > 0 &&
  Object.keys(v).every((k) => k.startsWith("$"))

const matchesCondition = (value: unknown, condition: unknown): boolean => {
  if (!isOperators(condition)) return same(value, condition)
  return Object.entries(condition).every(([op, arg]) => {
    switch (op) {
      case "$eq":
        return same(value, arg)
      case "$in":
        return (arg as ReadonlyArray<unknown>).some((x) => same(value, x))
      case "$not":
        return !matchesCondition(value, arg)
      case "$gte": {
        const n = numeric(value)
        return n !== undefined && n >= (numeric(arg) as number)
      }
      case "$lt": {
        const n = numeric(value)
        return n !== undefined && n < (numeric(arg) as number)
      }
      case "$exists":
        return (value !== undefined) === arg
      default:
        throw new Error(`operator ${op} is not modelled`)
    }
  })
}

/** Whether a document matches a filter. */
export const matches = (doc: Document, filter: Document): boolean =>
  Object.entries(filter).every(([key, condition]) => {
    if (key === "$or") return (condition as ReadonlyArray<Document>).some((f) => matches(doc, f))
    if (key === "$and") return (condition as ReadonlyArray<Document>).every((f) => matches(doc, f))
    if (key.startsWith("$")) throw new Error(`operator ${key} is not modelled`)
    return matchesCondition(getPath(doc, key), condition)
  })

/** Applies an update document to a copy of `doc`. */
export const applyUpdate = (doc: Document, update: Document): Document => {
  const out = copy(doc) as Document
  for (const [op, fields] of Object.entries(update)) {
    if (op === "$set") for (const [path, v] of Object.entries(fields as Document)) setPath(out, path, v)
    else if (op === "$unset") for (const path of Object.keys(fields as Document)) unsetPath(out, path)
    else throw new Error(`update operator ${op} is not modelled`)
  }
  return out
}

/** The server's answer to a duplicate `_id`. */
export class DuplicateKey extends Error {
  readonly code = 11000
  readonly index: number
  constructor(index: number) {
    super(`E11000 duplicate key error collection: model index: _id_ dup key`)
    this.index = index
  }
}

/** A collection: documents in insertion order. */
export class Collection {
  docs: Array<Document> = []

  find(filter: Document): Array<Document> {
    return this.docs.filter((d) => matches(d, filter)).map((d) => copy(d) as Document)
  }

  updateOne(filter: Document, update: Document, upsert: boolean, index = 0): void {
    const i = this.docs.findIndex((d) => matches(d, filter))
    if (i >= 0) {
      const updated = applyUpdate(this.docs[i] as Document, update)
      if (!same(updated._id, (this.docs[i] as Document)._id)) throw new Error("the _id of a document is immutable")
      this.docs[i] = updated
      return
    }
    if (!upsert) return
    const seed: Document = {}
    for (const [k, v] of Object.entries(filter)) if (!k.startsWith("$") && !isOperators(v)) setPath(seed, k, v)
    if (seed._id !== undefined && this.docs.some((d) => same(d._id, seed._id))) throw new DuplicateKey(index)
    this.docs.push(applyUpdate(seed, update))
  }

  deleteOne(filter: Document): void {
    const i = this.docs.findIndex((d) => matches(d, filter))
    if (i >= 0) this.docs.splice(i, 1)
  }

  /** An ordered bulk write: applies ops in turn and stops at the first error. */
  bulkWrite(ops: ReadonlyArray<AnyBulkWriteOperation>): void {
    for (const [index, op] of ops.entries()) this.apply(op, index)
  }

  apply(op: AnyBulkWriteOperation, index = 0): void {
    if ("updateOne" in op)
      this.updateOne(op.updateOne.filter, op.updateOne.update as Document, op.updateOne.upsert === true, index)
    else if ("deleteOne" in op) this.deleteOne(op.deleteOne.filter)
    else throw new Error(`bulk operation ${Object.keys(op)[0]} is not modelled`)
  }

  /** Documents in a comparable form, ordered by `_id`. */
  snapshot(): ReadonlyArray<unknown> {
    return this.docs
      .map((d) => normalize(d))
      .sort((a, b) => JSON.stringify((a as Document)._id).localeCompare(JSON.stringify((b as Document)._id)))
  }
}

/** Collections by name. */
export class Database {
  readonly collections = new Map<string, Collection>()

  collection(name: string): Collection {
    const c = this.collections.get(name) ?? new Collection()
    this.collections.set(name, c)
    return c
  }

  clone(): Database {
    const db = new Database()
    for (const [name, c] of this.collections) db.collection(name).docs = c.docs.map((d) => copy(d) as Document)
    return db
  }

  snapshot(): Readonly<Record<string, ReadonlyArray<unknown>>> {
    return Object.fromEntries(
      [...this.collections].filter(([, c]) => c.docs.length > 0).map(([name, c]) => [name, c.snapshot()]),
    )
  }
}
