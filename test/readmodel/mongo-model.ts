/**
 * An in-memory model of the MongoDB operators the adapter's plans use, and
 * nothing more: filters by equality (with numbers of any BSON type equal by
 * value), `$in`, `$or`, `$and`, `$not`, `$gte`, `$lt`, `$exists`, `$regex`;
 * updates with `$set`, `$unset`, `$inc` and `$setOnInsert` on dotted paths;
 * `updateOne` with upsert, `deleteOne`, and ordered bulk writes that stop at
 * the first error. An upsert whose filter matches nothing while its `_id`
 * exists fails with a duplicate key, as on a server. Any other operator
 * throws, so a plan that starts using one cannot pass its tests unmodelled.
 *
 * `FakeMongo` puts the driver's surface over it (the calls of `Db`,
 * `Collection`, cursors, `MongoClient.withSession` and transactions the
 * adapter makes), so the adapter itself runs without a server. Each call is
 * atomic. Transactions keep what fencing relies on: a write outside a
 * transaction to a document an unfinished transaction wrote waits until that
 * transaction ends; a transaction writing a document another transaction
 * holds, or one written since the transaction began, fails with a
 * WriteConflict labelled TransientTransactionError, and `withTransaction`
 * undoes and runs it again, as the driver does. Unique indexes (with their
 * partial filters) refuse a write that would repeat a value, as a duplicate
 * key. Not modelled: read isolation (reads see a transaction's writes before
 * it commits).
 */

import {
  type AnyBulkWriteOperation,
  type Db,
  type Document,
  Double,
  Long,
  type MongoClient,
  MongoServerError,
} from "mongodb"
import { compareCodePoints } from "../../src/template/template.ts"

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

const hasType = (value: unknown, type: string): boolean => {
  switch (type) {
    case "string":
      return typeof value === "string"
    case "long":
      return value instanceof Long
    case "double":
      return value instanceof Double || (typeof value === "number" && !Number.isInteger(value))
    case "bool":
      return typeof value === "boolean"
    case "date":
      return value instanceof Date
    default:
      throw new Error(`$type ${type} is not modelled`)
  }
}

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
      case "$type":
        return hasType(value, String(arg))
      case "$regex":
        return typeof value === "string" && (arg instanceof RegExp ? arg : new RegExp(String(arg))).test(value)
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

/** Applies an update document to a copy of `doc`; `inserting` when an upsert creates it. */
export const applyUpdate = (doc: Document, update: Document, inserting = false): Document => {
  const out = copy(doc) as Document
  for (const [op, fields] of Object.entries(update)) {
    if (op === "$set") for (const [path, v] of Object.entries(fields as Document)) setPath(out, path, v)
    else if (op === "$unset") for (const path of Object.keys(fields as Document)) unsetPath(out, path)
    else if (op === "$setOnInsert") {
      if (inserting) for (const [path, v] of Object.entries(fields as Document)) setPath(out, path, v)
    } else if (op === "$inc")
      for (const [path, v] of Object.entries(fields as Document))
        setPath(out, path, (numeric(getPath(out, path)) ?? 0) + (numeric(v) as number))
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

  /** Returns whether a document matched (0 or 1) and whether one was inserted. */
  updateOne(filter: Document, update: Document, upsert: boolean, index = 0): { matched: number; upserted: number } {
    const i = this.docs.findIndex((d) => matches(d, filter))
    if (i >= 0) {
      const updated = applyUpdate(this.docs[i] as Document, update)
      if (!same(updated._id, (this.docs[i] as Document)._id)) throw new Error("the _id of a document is immutable")
      this.docs[i] = updated
      return { matched: 1, upserted: 0 }
    }
    if (!upsert) return { matched: 0, upserted: 0 }
    const seed: Document = {}
    for (const [k, v] of Object.entries(filter)) if (!k.startsWith("$") && !isOperators(v)) setPath(seed, k, v)
    if (seed._id !== undefined && this.docs.some((d) => same(d._id, seed._id))) throw new DuplicateKey(index)
    this.docs.push(applyUpdate(seed, update, true))
    return { matched: 0, upserted: 1 }
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

// ---------------------------------------------------------------------------
// The driver's surface over the model.

/** BSON order for the values keys are made of: numbers by value, strings by code point, documents field by field. */
export const compareBson = (a: unknown, b: unknown): number => {
  const x = normalize(a)
  const y = normalize(b)
  const rank = (v: unknown) =>
    v === null || v === undefined ? 0 : typeof v === "number" ? 1 : typeof v === "string" ? 2 : 3
  if (rank(x) !== rank(y)) return rank(x) - rank(y)
  if (typeof x === "number" && typeof y === "number") return x - y
  if (typeof x === "string" && typeof y === "string") return compareCodePoints(x, y)
  if (typeof x === "object" && x !== null && typeof y === "object" && y !== null) {
    const ex = Object.entries(x)
    const ey = Object.entries(y)
    for (let i = 0; i < Math.min(ex.length, ey.length); i++) {
      const [kx, vx] = ex[i] as [string, unknown]
      const [ky, vy] = ey[i] as [string, unknown]
      const c = compareCodePoints(kx, ky) || compareBson(vx, vy)
      if (c !== 0) return c
    }
    return ex.length - ey.length
  }
  return 0
}

const project = (doc: Document, projection: Document | undefined): Document => {
  if (projection === undefined) return doc
  const entries = Object.entries(projection)
  if (entries.every(([, v]) => v === 0)) {
    for (const [path] of entries) unsetPath(doc, path)
    return doc
  }
  const out: Document = {}
  if (projection._id !== 0) out._id = doc._id
  for (const [path, v] of entries) {
    if (v === 0 || path === "_id") continue
    const value = getPath(doc, path)
    if (value !== undefined) setPath(out, path, value)
  }
  return out
}

const sortBy = (docs: Array<Document>, sort: Document | undefined): Array<Document> => {
  if (sort === undefined) return docs
  const keys = Object.entries(sort)
  return [...docs].sort((a, b) => {
    for (const [path, dir] of keys) {
      const c = compareBson(getPath(a, path), getPath(b, path)) * (dir === -1 ? -1 : 1)
      if (c !== 0) return c
    }
    return 0
  })
}

const cursor = (produce: () => Array<Document>) => {
  let docs: Array<Document> | undefined
  let at = 0
  return {
    toArray: async () => produce(),
    next: async () => {
      docs ??= produce()
      return docs[at++] ?? null
    },
    close: async () => undefined,
  }
}

interface IndexSpec {
  readonly name: string
  readonly key: Document
  readonly unique?: boolean
  readonly partialFilterExpression?: Document
}

interface Transaction {
  /** The write sequence number when the transaction began. */
  readonly start: number
  /** Documents it wrote. */
  readonly writes: Set<string>
  /** What they held before, oldest first (undefined: none existed). */
  readonly undo: Array<{ readonly collection: string; readonly id: unknown; readonly prior: Document | undefined }>
  readonly ended: Promise<void>
  readonly end: () => void
}

interface FakeSession {
  txn: Transaction | undefined
}

/** A write about to happen, for tests that stop a writer at a chosen point. */
export interface WriteEvent {
  readonly collection: string
  readonly op: string
  readonly filter: Document | undefined
  /** Whether it runs inside a transaction. */
  readonly inTransaction: boolean
}

/**
 * A database as the adapter sees it through the driver: `db` and `client`
 * stand in for the driver's Db and MongoClient (cast to their types; only
 * the calls the adapter makes exist).
 */
export class FakeMongo {
  readonly data = new Database()
  readonly indexes = new Map<string, Array<IndexSpec>>()
  readonly name = "model"
  readonly db: Db
  readonly client: MongoClient
  /** Awaited before every write: a test may hold a writer there. */
  beforeWrite: (event: WriteEvent) => Promise<void> = async () => undefined

  private seq = 0
  private readonly lastWrite = new Map<string, number>()
  private readonly active = new Set<Transaction>()

  constructor() {
    this.client = {
      withSession: async <A>(f: (s: unknown) => Promise<A>) => {
        const session: FakeSession & { withTransaction: <B>(g: (s: unknown) => Promise<B>) => Promise<B> } = {
          txn: undefined,
          withTransaction: (g) => this.transaction(session, g),
        }
        return f(session)
      },
    } as unknown as MongoClient
    this.db = {
      databaseName: this.name,
      collection: (name: string) => this.collection(name),
      createCollection: async (name: string) => {
        if (this.data.collections.has(name))
          throw new MongoServerError({ message: `Collection ${this.name}.${name} already exists.`, code: 48 })
        this.data.collection(name)
        return this.collection(name)
      },
      listCollections: (filter: Document = {}) =>
        cursor(() =>
          [...this.data.collections.keys()]
            .filter((name) => matches({ name }, filter))
            .map((name) => ({ name, type: "collection" })),
        ),
      renameCollection: async (from: string, to: string, options: { dropTarget?: boolean } = {}) => {
        await this.beforeWrite({ collection: from, op: "renameCollection", filter: undefined, inTransaction: false })
        const source = this.data.collections.get(from)
        if (source === undefined)
          throw new MongoServerError({ message: `Source collection ${this.name}.${from} does not exist`, code: 26 })
        if (this.data.collections.has(to) && options.dropTarget !== true)
          throw new MongoServerError({ message: `target namespace ${this.name}.${to} exists`, code: 48 })
        this.data.collections.delete(from)
        this.data.collections.set(to, source)
        this.indexes.set(to, this.indexes.get(from) ?? [])
        this.indexes.delete(from)
        return this.collection(to)
      },
      dropCollection: async (name: string) => {
        this.indexes.delete(name)
        return this.data.collections.delete(name)
      },
    } as unknown as Db
  }

  /** Whether a transaction is running now. */
  get inTransaction(): boolean {
    return this.active.size > 0
  }

  private async transaction<B>(session: FakeSession, g: (s: unknown) => Promise<B>): Promise<B> {
    for (let attempt = 0; ; attempt++) {
      // The driver retries at once; a moment lets the transaction holding the document finish.
      if (attempt > 0) await new Promise((resolve) => setTimeout(resolve, 1))
      let end: () => void = () => undefined
      const ended = new Promise<void>((resolve) => {
        end = resolve
      })
      const txn: Transaction = { start: this.seq, writes: new Set(), undo: [], ended, end }
      this.active.add(txn)
      session.txn = txn
      try {
        const result = await g(session)
        for (const k of txn.writes) this.lastWrite.set(k, ++this.seq)
        return result
      } catch (e) {
        for (const u of txn.undo.reverse()) {
          const c = this.data.collection(u.collection)
          c.docs = c.docs.filter((d) => !same(d._id, u.id))
          if (u.prior !== undefined) c.docs.push(u.prior)
        }
        const transient = e instanceof MongoServerError && e.hasErrorLabel("TransientTransactionError")
        if (!transient || attempt >= 200) throw e
      } finally {
        session.txn = undefined
        this.active.delete(txn)
        txn.end()
      }
    }
  }

  private key(collection: string, id: unknown): string {
    return `${collection}\u0000${JSON.stringify(normalize(id))}`
  }

  /**
   * Orders a write to these documents against transactions: outside one, it
   * waits for every unfinished transaction that wrote them; inside one, it
   * fails with a write conflict when another holds them or wrote them since
   * this one began. Then notes the write (and, in a transaction, what to undo).
   */
  private async gate(collection: string, ids: ReadonlyArray<unknown>, session: unknown): Promise<void> {
    const txn = (session as FakeSession | undefined)?.txn
    for (;;) {
      const keys = ids.map((id) => this.key(collection, id))
      if (txn === undefined) {
        const holder = [...this.active].find((t) => keys.some((k) => t.writes.has(k)))
        if (holder === undefined) break
        await holder.ended
        continue
      }
      for (const k of keys) {
        if (txn.writes.has(k)) continue
        const held = [...this.active].some((t) => t !== txn && t.writes.has(k))
        if (held || (this.lastWrite.get(k) ?? 0) > txn.start) {
          const conflict = new MongoServerError({
            message: `WriteConflict on ${this.name}.${collection}`,
            code: 112,
          })
          conflict.addErrorLabel("TransientTransactionError")
          throw conflict
        }
      }
      break
    }
    for (const id of ids) {
      const k = this.key(collection, id)
      if (txn === undefined) {
        this.lastWrite.set(k, ++this.seq)
        continue
      }
      if (!txn.writes.has(k)) {
        const prior = this.docs(collection).find((d) => same(d._id, id))
        txn.undo.push({ collection, id, prior: prior === undefined ? undefined : (copy(prior) as Document) })
        txn.writes.add(k)
      }
    }
  }

  private docs(name: string): Array<Document> {
    return this.data.collections.get(name)?.docs ?? []
  }

  private idsMatching(name: string, filter: Document, one: boolean): Array<unknown> {
    const found = this.docs(name).filter((d) => matches(d, filter))
    return (one ? found.slice(0, 1) : found).map((d) => d._id)
  }

  private duplicate(name: string, index: string): MongoServerError {
    return new MongoServerError({
      message: `E11000 duplicate key error collection: ${this.name}.${name} index: ${index} dup key: { }`,
      code: 11000,
    })
  }

  /** The first unique index of a collection that two documents' values break, if any. */
  private uniqueClash(name: string): string | undefined {
    for (const index of this.indexes.get(name) ?? []) {
      if (index.unique !== true) continue
      const seen = new Set<string>()
      for (const d of this.docs(name)) {
        if (index.partialFilterExpression !== undefined && !matches(d, index.partialFilterExpression)) continue
        const value = JSON.stringify(Object.keys(index.key).map((f) => normalize(getPath(d, f)) ?? null))
        if (seen.has(value)) return index.name
        seen.add(value)
      }
    }
    return undefined
  }

  /** Applies one write; undone, as a duplicate key, when it breaks a unique index. */
  private checked<A>(name: string, mutate: () => A): A {
    const c = this.data.collection(name)
    const before = [...c.docs]
    let result: A
    try {
      result = mutate()
    } catch (e) {
      throw e instanceof DuplicateKey ? this.duplicate(name, "_id_") : e
    }
    const clash = this.uniqueClash(name)
    if (clash !== undefined) {
      c.docs = before
      throw this.duplicate(name, clash)
    }
    return result
  }

  collection(name: string) {
    const write = () => this.data.collection(name)
    const before = async (op: string, filter: Document | undefined, session: unknown) =>
      this.beforeWrite({
        collection: name,
        op,
        filter,
        inTransaction: (session as FakeSession | undefined)?.txn !== undefined,
      })
    const insertOne = async (doc: Document, options: { session?: unknown } = {}) => {
      await before("insertOne", undefined, options.session)
      await this.gate(name, [doc._id], options.session)
      if (this.docs(name).some((d) => same(d._id, doc._id))) throw this.duplicate(name, "_id_")
      this.checked(name, () => write().docs.push(copy(doc) as Document))
      return { acknowledged: true, insertedId: doc._id }
    }
    return {
      collectionName: name,
      find: (filter: Document = {}, options: { projection?: Document; sort?: Document } = {}) =>
        cursor(() =>
          sortBy(
            this.docs(name).filter((d) => matches(d, filter)),
            options.sort,
          ).map((d) => project(copy(d) as Document, options.projection)),
        ),
      findOne: async (filter: Document = {}, options: { projection?: Document } = {}) => {
        const d = this.docs(name).find((x) => matches(x, filter))
        return d === undefined ? null : project(copy(d) as Document, options.projection)
      },
      insertOne,
      insertMany: async (docs: ReadonlyArray<Document>, options: { session?: unknown } = {}) => {
        for (const d of docs) await insertOne(d, options)
        return { acknowledged: true, insertedCount: docs.length }
      },
      updateOne: async (filter: Document, update: Document, options: { upsert?: boolean; session?: unknown } = {}) => {
        await before("updateOne", filter, options.session)
        const ids = this.idsMatching(name, filter, true)
        const seeded = filter._id !== undefined && !isOperators(filter._id) ? [filter._id] : []
        await this.gate(name, ids.length > 0 ? ids : options.upsert === true ? seeded : [], options.session)
        const r = this.checked(name, () => write().updateOne(filter, update, options.upsert === true))
        return { acknowledged: true, matchedCount: r.matched, modifiedCount: r.matched, upsertedCount: r.upserted }
      },
      updateMany: async (filter: Document, update: Document, options: { session?: unknown } = {}) => {
        await before("updateMany", filter, options.session)
        await this.gate(name, this.idsMatching(name, filter, false), options.session)
        const c = write()
        let n = 0
        this.checked(name, () => {
          c.docs = c.docs.map((d) => {
            if (!matches(d, filter)) return d
            n++
            return applyUpdate(d, update)
          })
        })
        return { acknowledged: true, matchedCount: n, modifiedCount: n, upsertedCount: 0 }
      },
      replaceOne: async (
        filter: Document,
        replacement: Document,
        options: { upsert?: boolean; session?: unknown } = {},
      ) => {
        await before("replaceOne", filter, options.session)
        const ids = this.idsMatching(name, filter, true)
        const seeded = filter._id !== undefined && !isOperators(filter._id) ? [filter._id] : []
        await this.gate(name, ids.length > 0 ? ids : options.upsert === true ? seeded : [], options.session)
        const c = write()
        const i = c.docs.findIndex((d) => matches(d, filter))
        if (i >= 0) {
          this.checked(name, () => {
            c.docs[i] = { _id: (c.docs[i] as Document)._id, ...(copy(replacement) as Document) }
          })
          return { acknowledged: true, matchedCount: 1, modifiedCount: 1, upsertedCount: 0 }
        }
        if (options.upsert !== true) return { acknowledged: true, matchedCount: 0, modifiedCount: 0, upsertedCount: 0 }
        if (seeded.length === 0) throw new Error("replaceOne upserts by _id only here")
        if (c.docs.some((d) => same(d._id, filter._id))) throw this.duplicate(name, "_id_")
        this.checked(name, () => c.docs.push({ _id: filter._id, ...(copy(replacement) as Document) }))
        return { acknowledged: true, matchedCount: 0, modifiedCount: 0, upsertedCount: 1 }
      },
      deleteOne: async (filter: Document, options: { session?: unknown } = {}) => {
        await before("deleteOne", filter, options.session)
        await this.gate(name, this.idsMatching(name, filter, true), options.session)
        const count = this.docs(name).length
        this.data.collections.get(name)?.deleteOne(filter)
        return { acknowledged: true, deletedCount: count - this.docs(name).length }
      },
      deleteMany: async (filter: Document = {}, options: { session?: unknown } = {}) => {
        await before("deleteMany", filter, options.session)
        await this.gate(name, this.idsMatching(name, filter, false), options.session)
        const c = this.data.collections.get(name)
        if (c === undefined) return { acknowledged: true, deletedCount: 0 }
        const count = c.docs.length
        c.docs = c.docs.filter((d) => !matches(d, filter))
        return { acknowledged: true, deletedCount: count - c.docs.length }
      },
      bulkWrite: async (ops: ReadonlyArray<AnyBulkWriteOperation>, options: { session?: unknown } = {}) => {
        await before("bulkWrite", undefined, options.session)
        const ids = ops.map((op) =>
          "updateOne" in op ? op.updateOne.filter._id : "deleteOne" in op ? op.deleteOne.filter._id : undefined,
        )
        await this.gate(name, ids, options.session)
        // Ordered: each op in turn, stopping at the first that fails.
        for (const [index, op] of ops.entries()) this.checked(name, () => write().apply(op, index))
        return { acknowledged: true }
      },
      estimatedDocumentCount: async () => this.docs(name).length,
      listIndexes: () =>
        cursor(() => [{ name: "_id_", key: { _id: 1 } }, ...(this.indexes.get(name) ?? [])] as Array<Document>),
      createIndex: async (
        key: Document,
        options: { name: string; unique?: boolean; partialFilterExpression?: Document },
      ) => {
        write()
        const list = (this.indexes.get(name) ?? []).filter((i) => i.name !== options.name)
        list.push({ ...options, key })
        this.indexes.set(name, list)
        return options.name
      },
    }
  }
}
