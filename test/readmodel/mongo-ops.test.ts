/**
 * The translation of row writes into MongoDB operations (mongo-ops.ts), as
 * pure functions: documents to and from rows (through real BSON), sizes,
 * plans, unique checks and the pending-batch journal. Plans run on an
 * in-memory model of the operators they use (mongo-model.ts), where the
 * properties that make a standalone server exactly-once are checked: a batch
 * applied twice equals the batch applied once, and a batch cut short at any
 * point and then recovered equals the batch applied once.
 */
import { Effect } from "effect"
import fc from "fast-check"
import { BSON, type Document, Double, Long } from "mongodb"
import { describe, expect, it } from "vitest"
import {
  CHECKPOINT_COLLECTION,
  checkDocumentSize,
  checkpointDocId,
  checkUnique,
  chunkText,
  decodeKey,
  documentBytes,
  encodeKey,
  finishUpdate,
  fromDocument,
  guard,
  idOf,
  journalText,
  journalWrites,
  keyFromId,
  MAX_DOCUMENT_BYTES,
  type Pending,
  type Prepared,
  pendingUpdate,
  planBatch,
  positionOf,
  positionPath,
  prepareBatch,
  readCheckpoint,
  type Stored,
  storedQuery,
  toBson,
  toDocument,
  UnreadableValue,
  uniqueQuery,
} from "../../src/readmodel/mongo-ops.ts"
import type { CheckpointId, RowWrite } from "../../src/readmodel/store.ts"
import { parseTemplate } from "../../src/template/load.ts"
import {
  checkRow,
  isWellFormed,
  keyId,
  LAST_EVENT_COLUMN,
  type Row,
  type Template,
} from "../../src/template/template.ts"
import { Collection, Database, DuplicateKey, normalize } from "./mongo-model.ts"

/** A property over generated values, checked by fast-check inside one test. */
const prop = <T extends [unknown, ...Array<unknown>]>(
  name: string,
  arbitraries: { [K in keyof T]: fc.Arbitrary<T[K]> },
  predicate: (...values: T) => void,
): void => {
  it(name, () => fc.assert(fc.property(...arbitraries, predicate), { numRuns: 100 }))
}

const parse = (text: string, file = "test/t.toml"): Template => Effect.runSync(parseTemplate(text, file))

/** A REC template with one of everything the translation treats differently. */
const doc = parse(
  `
tla = "DOC"
name = "doc"
backend = "rec"
key = ["id"]

[fields.id]
type = "string"
max = 20

[fields.n]
type = "int"
default = 0

[fields.f]
type = "float"
nullable = true

[fields.at]
type = "time"
nullable = true

[fields.ok]
type = "bool"
default = false

[fields.kind]
type = "enum"
values = ["a", "b"]
default = "a"

[fields.hits]
type = "counter"

[fields.tags]
type = "set"
of = { type = "string", max = 10 }

[fields.m]
type = "map"
of = { type = "counter" }

[fields.items]
type = "list"

[fields.items.of]
type = "object"

[fields.items.of.fields.q]
type = "int"

[fields.items.of.fields.label]
type = "string"
max = 10
nullable = true

[fields.o]
type = "object"

[fields.o.fields.a]
type = "int"
default = 0

[fields.o.fields.when]
type = "time"
nullable = true

[fields.email]
type = "string"
max = 40
nullable = true

[fields.j]
type = "json"
nullable = true

[[indexes]]
name = "by_email"
fields = ["email"]
unique = true

[[indexes]]
name = "by_kind_n"
fields = ["kind", "n"]
unique = true
`,
  "test/doc.toml",
)

/** A compound key of a string and an int. */
const pair = parse(
  `
tla = "PAR"
name = "pair"
backend = "rec"
key = ["tenant", "seq"]

[fields.tenant]
type = "string"
max = 20

[fields.seq]
type = "int"

[fields.v]
type = "int"
default = 0
`,
  "test/pair.toml",
)

const templates = new Map([doc, pair].map((t) => [t.name, t]))
const templateOf = (name: string) => templates.get(name)
const ID = "t:0:1"
const cp: CheckpointId = { topology: "topo", depot: "dep", partition: 3 }
const other: CheckpointId = { topology: "else", depot: "dep", partition: 3 }

const canonical = (t: Template, row: Row): Row => {
  const r = checkRow(t, row)
  if (!r.ok) throw new Error(r.problem)
  return r.value
}

/** A document as the driver hands it back: serialized and parsed with the driver's default options. */
const throughBson = (d: Document): Document => BSON.deserialize(BSON.serialize(d))

describe("field names from data", () => {
  it("escapes what MongoDB reads as paths or operators, and NUL, reversibly", () => {
    expect(
      ["", "a.b", "$set", "%", "\u0000", "plain", "ключ", "a$b", "_bsontype", "_bsontype_", "%5Fbsontype"].map(
        encodeKey,
      ),
    ).toEqual([
      "%",
      "a%2Eb",
      "%24set",
      "%25",
      "%00",
      "plain",
      "ключ",
      "a%24b",
      "%5Fbsontype",
      "_bsontype_",
      "%255Fbsontype",
    ])
  })

  prop("any string round-trips and becomes a usable field name", [fc.string({ unit: "binary" })], (s) => {
    const name = encodeKey(s)
    expect(decodeKey(name)).toBe(s)
    expect(name).not.toBe("")
    expect(name.startsWith("$")).toBe(false)
    expect(name.includes(".") || name.includes("\u0000")).toBe(false)
    expect(name).not.toBe("_bsontype")
  })
})

describe("documents", () => {
  const row = canonical(doc, {
    id: "x",
    n: 2 ** 40,
    f: 3,
    at: 1_700_000_000_123,
    ok: true,
    kind: "b",
    hits: 5,
    tags: ["b", "a"],
    m: { "a.b": 1, $x: 2, "": 3 },
    items: [{ q: 1 }, { q: 2, label: "two" }],
    o: { when: -5 },
    email: "x@y",
    j: { "$k.": [1, { "": null }] },
    [LAST_EVENT_COLUMN]: ID,
  })

  it("stores integers and counters as longs, floats as doubles, times as dates, and escapes data keys", () => {
    const d = toDocument(doc, ["x"], row)
    expect(d._id).toBe("x")
    expect(d.n).toEqual(Long.fromNumber(2 ** 40))
    expect(d.hits).toEqual(Long.fromNumber(5))
    expect(d.f).toBeInstanceOf(Double)
    expect(d.at).toEqual(new Date(1_700_000_000_123))
    expect(d.tags).toEqual(["a", "b"])
    expect(Object.keys(d.m as object)).toEqual(["%", "%24x", "a%2Eb"])
    expect(d.items).toEqual([
      { q: Long.fromNumber(1), label: null },
      { q: Long.fromNumber(2), label: "two" },
    ])
    expect(d.o).toEqual({ a: Long.fromNumber(0), when: new Date(-5) })
    expect(d.j).toEqual({ "%24k%2E": [1, { "%": null }] })
    expect(d[LAST_EVENT_COLUMN]).toBe(ID)
  })

  it("reads back through BSON equal to the canonical row", () => {
    const back = fromDocument(doc, throughBson(toDocument(doc, ["x"], row)))
    expect(back).toEqual(row)
    expect(Object.is(back.f, 3)).toBe(true)
  })

  it("keeps data keys the driver might treat specially as plain own keys through BSON", () => {
    const r = canonical(doc, {
      id: "x",
      m: Object.fromEntries([
        ["__proto__", 1],
        ["constructor", 2],
        ["x\u0000y", 3],
        ["_bsontype", 4],
      ]),
      j: JSON.parse('{"__proto__": {"a": 1}, "$ref": "r", "$id": 1, "_bsontype": "Long", "n": {"_bsontype": 5}}'),
      [LAST_EVENT_COLUMN]: ID,
    })
    const back = fromDocument(doc, throughBson(toDocument(doc, ["x"], r)))
    expect(back).toEqual(r)
    expect(Object.hasOwn(back.m as object, "__proto__")).toBe(true)
    expect(Object.getPrototypeOf(back.j)).toBe(Object.prototype)
  })

  it("keys a compound key by a document of its fields in key order", () => {
    const id = idOf(pair, ["acme", 7])
    expect(id).toEqual({ tenant: "acme", seq: Long.fromNumber(7) })
    expect(Object.keys(id as object)).toEqual(["tenant", "seq"])
    expect(keyFromId(pair, throughBson({ _id: id })._id)).toEqual(["acme", 7])
    expect(keyFromId(doc, "x")).toEqual(["x"])
  })

  it("gives a document written before a field existed the field's default", () => {
    const stored = throughBson({ _id: "old", id: "old", [LAST_EVENT_COLUMN]: ID })
    expect(fromDocument(doc, stored)).toEqual(canonical(doc, { id: "old", [LAST_EVENT_COLUMN]: ID }))
  })

  it("refuses to read an integer beyond 2^53 rather than round it", () => {
    expect(() => fromDocument(doc, { _id: "x", id: "x", n: Long.fromString("9007199254740993") })).toThrow(
      UnreadableValue,
    )
  })

  const recRow = fc.record({
    n: fc.maxSafeInteger(),
    f: fc.option(fc.double({ noNaN: true, noDefaultInfinity: true })),
    at: fc.option(fc.integer({ min: -8_640_000_000_000_000, max: 8_640_000_000_000_000 })),
    ok: fc.boolean(),
    hits: fc.maxSafeInteger(),
    tags: fc.array(fc.string({ maxLength: 10 }).filter(isWellFormed)),
    m: fc.dictionary(fc.string({ unit: "binary" }).filter(isWellFormed), fc.maxSafeInteger()),
    items: fc.array(fc.record({ q: fc.maxSafeInteger(), label: fc.option(fc.string({ maxLength: 10 })) })),
    j: fc.option(fc.jsonValue({ maxDepth: 4 }), { nil: null }),
  })

  prop("any row reads back through BSON equal to its canonical form", [recRow], (fields) => {
    const r = checkRow(doc, { id: "p", ...fields, [LAST_EVENT_COLUMN]: ID })
    fc.pre(r.ok)
    if (!r.ok) return
    expect(fromDocument(doc, throughBson(toDocument(doc, ["p"], r.value)))).toEqual(r.value)
  })
})

describe("document size", () => {
  const text = (maxLength: number) => fc.string({ unit: "binary", maxLength }).filter(isWellFormed)
  // lists long enough for two- and three-digit element names, numbers on both sides of int32
  const many = <T>(a: fc.Arbitrary<T>, maxLength: number) =>
    fc.oneof(fc.array(a, { maxLength: 3 }), fc.array(a, { minLength: 9, maxLength, size: "max" }))
  const number = fc.oneof(
    fc.integer(),
    fc.constantFrom(2 ** 31 - 1, 2 ** 31, -(2 ** 31), -(2 ** 31) - 1, -0, 0.5),
    fc.maxSafeInteger(),
    fc.double({ noNaN: true, noDefaultInfinity: true }),
  )
  const { json } = fc.letrec((tie) => ({
    json: fc.oneof(
      { depthSize: "small", withCrossShrink: true },
      fc.constant(null),
      fc.boolean(),
      number,
      text(8),
      many(tie("json"), 12),
      fc.dictionary(fc.oneof(text(4), fc.constantFrom("a.b", "$x", "%", "\u0000", "")), tie("json"), { maxKeys: 4 }),
    ),
  }))
  const anyRow = fc.record({
    id: text(20),
    n: fc.maxSafeInteger(),
    f: fc.option(fc.double({ noNaN: true, noDefaultInfinity: true })),
    at: fc.option(fc.integer({ min: -8_640_000_000_000_000, max: 8_640_000_000_000_000 })),
    ok: fc.boolean(),
    kind: fc.constantFrom("a", "b"),
    hits: fc.maxSafeInteger(),
    tags: many(text(10), 12),
    m: fc.dictionary(fc.oneof(text(6), fc.constantFrom("a.b", "$x", "%")), fc.maxSafeInteger()),
    items: many(fc.record({ q: fc.maxSafeInteger(), label: fc.option(text(10)) }), 120),
    o: fc.option(fc.record({ a: fc.maxSafeInteger(), when: fc.option(fc.integer()) }), { nil: undefined }),
    email: fc.option(text(40)),
    j: fc.option(json, { nil: null }),
  })

  prop("counts exactly the bytes the driver gives the row's document", [anyRow], (fields) => {
    const r = checkRow(doc, { ...fields, [LAST_EVENT_COLUMN]: ID })
    fc.pre(r.ok)
    if (!r.ok) return
    const key = [r.value.id as string]
    expect(documentBytes(doc, key, r.value)).toBe(BSON.calculateObjectSize(toDocument(doc, key, r.value)))
  })

  prop(
    "counts a compound key's _id document too",
    [text(20), fc.maxSafeInteger(), fc.maxSafeInteger()],
    (tenant, seq, v) => {
      const r = checkRow(pair, { tenant, seq, v, [LAST_EVENT_COLUMN]: ID })
      fc.pre(r.ok)
      if (!r.ok) return
      expect(documentBytes(pair, [tenant, seq], r.value)).toBe(
        BSON.calculateObjectSize(toDocument(pair, [tenant, seq], r.value)),
      )
    },
  )

  it("refuses a document over 16 MiB, naming the template, the key and the limit", () => {
    const big = canonical(doc, { id: "big", j: "x".repeat(MAX_DOCUMENT_BYTES), [LAST_EVENT_COLUMN]: ID })
    const checked = checkDocumentSize(doc, ["big"], big)
    expect(checked.ok).toBe(false)
    if (checked.ok) return
    for (const part of ["doc (DOC)", '("big")', "16 MiB", String(MAX_DOCUMENT_BYTES), "split"])
      expect(checked.problem).toContain(part)
    const prepared = prepareBatch(templateOf, [{ template: "doc", key: ["big"], row: big }])
    expect(prepared.ok ? "" : prepared.problem).toContain("Nothing was written")
  })

  it("accepts a document just under the limit", () => {
    const row = canonical(doc, { id: "ok", j: "x".repeat(MAX_DOCUMENT_BYTES - 64 * 1024), [LAST_EVENT_COLUMN]: ID })
    expect(checkDocumentSize(doc, ["ok"], row).ok).toBe(true)
  })
})

describe("prepareBatch", () => {
  const put = (id: string, fields: Row = {}): RowWrite => ({
    template: "doc",
    key: [id],
    row: { id, ...fields, [LAST_EVENT_COLUMN]: ID },
  })

  it("checks every write before anything is written, as the other adapters do", () => {
    const problems = [
      [{ template: "nope", key: ["a"], row: null }],
      [put("a"), put("a")],
      [{ template: "doc", key: ["a"], row: { id: "b", [LAST_EVENT_COLUMN]: ID } }],
      [put("a", { hits: 0.5 })],
      [{ template: "pair", key: ["t"], row: null }],
    ].map((writes) => {
      const p = prepareBatch(templateOf, writes)
      return p.ok ? "" : p.problem
    })
    expect(problems[0]).toContain('unknown template "nope"')
    expect(problems[1]).toContain("written twice")
    expect(problems[2]).toContain('carries a row whose key is ("b")')
    expect(problems[3]).toContain("doc.hits")
    expect(problems[4]).toContain("needs 2 value(s)")
  })

  it("normalises keys and rows", () => {
    const p = prepareBatch(templateOf, [
      { template: "pair", key: ["t", "5"], row: { tenant: "t", seq: 5, [LAST_EVENT_COLUMN]: ID } },
    ])
    expect(p.ok && p.value[0]?.key).toEqual(["t", 5])
    expect(p.ok && p.value[0]?.row).toEqual({ tenant: "t", seq: 5, v: 0, [LAST_EVENT_COLUMN]: ID })
  })
})

const prepare = (writes: ReadonlyArray<RowWrite>): ReadonlyArray<Prepared> => {
  const p = prepareBatch(templateOf, writes)
  if (!p.ok) throw new Error(p.problem)
  return p.value
}

/** What the adapter reads before planning: the touched documents' positions for the stream. */
const storedIn = (db: Database, c: CheckpointId, prepared: ReadonlyArray<Prepared>): Stored => {
  const out = new Map<string, Map<string, number | null>>()
  for (const t of new Set(prepared.map((p) => p.template))) {
    const q = storedQuery(
      c,
      prepared.filter((p) => p.template === t),
    )
    out.set(
      t.name,
      new Map(
        db
          .collection(t.name)
          .find(q.filter)
          .map((d) => [keyId(keyFromId(t, d._id)), positionOf(d, c) ?? null]),
      ),
    )
  }
  return out
}

/** Applies a plan's ops in order; a duplicate `_id` ends the run as it ends an ordered bulk write. */
const applyPlan = (
  db: Database,
  c: CheckpointId,
  next: number,
  prepared: ReadonlyArray<Prepared>,
  limit = Infinity,
) => {
  let n = 0
  for (const plan of planBatch(c, next, prepared, storedIn(db, c, prepared)))
    for (const op of plan.ops) {
      if (n++ >= limit) return
      db.collection(plan.template.name).apply(op)
    }
}

describe("planBatch", () => {
  const put = (id: string, fields: Row = {}): RowWrite => ({
    template: "doc",
    key: [id],
    row: { id, ...fields, [LAST_EVENT_COLUMN]: ID },
  })
  const del = (id: string): RowWrite => ({ template: "doc", key: [id], row: null })

  it("orders deletes, updates, inserts; guards every write by the stream's position; sets fields whole", () => {
    const prepared = prepare([put("new"), del("gone"), put("old", { n: 2 }), del("never")])
    const stored: Stored = new Map([
      [
        "doc",
        new Map<string, number | null>([
          ["gone", 4],
          ["old", null],
        ]),
      ],
    ])
    const [plan] = planBatch(cp, 10, prepared, stored)
    expect(plan?.keys).toEqual([["gone"], ["old"], ["new"]])
    const path = positionPath(cp)
    expect(path).toBe("_beds.pos.topo.dep.3")
    expect(guard(cp, 10)).toEqual({ [path]: { $not: { $gte: 10 } } })
    expect(plan?.ops[0]).toEqual({ deleteOne: { filter: { _id: "gone", ...guard(cp, 10) } } })
    const update = plan?.ops[1] as { updateOne: { filter: Document; update: Document; upsert: boolean } }
    expect(update.updateOne.filter).toEqual({ _id: "old", ...guard(cp, 10) })
    expect(update.updateOne.upsert).toBe(false)
    expect(update.updateOne.update.$set[path]).toEqual(Long.fromNumber(10))
    expect(update.updateOne.update.$set._id).toBeUndefined()
    expect(Object.keys(update.updateOne.update.$set)).toEqual([
      ...doc.fields.map((f) => f.name),
      LAST_EVENT_COLUMN,
      path,
    ])
    expect(plan?.ops[2]).toMatchObject({ updateOne: { upsert: true } })
  })

  it("leaves out documents that already hold the batch's position", () => {
    const prepared = prepare([put("a"), del("b")])
    const stored: Stored = new Map([
      [
        "doc",
        new Map<string, number | null>([
          ["a", 10],
          ["b", 12],
        ]),
      ],
    ])
    const [plan] = planBatch(cp, 10, prepared, stored)
    expect(plan?.ops).toEqual([])
    expect(plan?.applied).toBe(2)
  })

  it("a guard that refuses an upsert surfaces as a duplicate _id, as on a server", () => {
    const db = new Database()
    const prepared = prepare([put("a")])
    const [plan] = planBatch(cp, 10, prepared, new Map())
    db.collection("doc").bulkWrite(plan?.ops ?? [])
    expect(() => db.collection("doc").bulkWrite(plan?.ops ?? [])).toThrow(DuplicateKey)
    expect(db.collection("doc").docs).toHaveLength(1)
  })

  // Properties over random stored states and batches.
  const keys = fc.constantFrom("k0", "k1", "k2", "k3", "k4", "k5")
  const fields = fc.record({
    n: fc.integer({ min: -5, max: 5 }),
    tags: fc.array(fc.constantFrom("a", "b", "c"), { maxLength: 3 }),
    m: fc.dictionary(fc.constantFrom("x", "y.z", "$w", ""), fc.integer({ min: 0, max: 9 }), { maxKeys: 3 }),
    email: fc.option(fc.constantFrom("p@x", "q@x"), { nil: null }),
  })
  const batch = fc.uniqueArray(fc.record({ id: keys, row: fc.option(fields, { nil: null }) }), {
    selector: (w) => w.id,
    maxLength: 6,
  })
  const NEXT = 10
  /** Stored documents: random rows, with this stream's position before, at or after the batch, or none. */
  const state = fc.uniqueArray(
    fc.record({
      id: keys,
      row: fields,
      mine: fc.option(fc.integer({ min: 0, max: 2 * NEXT }), { nil: undefined }),
      theirs: fc.option(fc.integer({ min: 0, max: 50 }), { nil: undefined }),
    }),
    { selector: (d) => d.id, maxLength: 6 },
  )

  const build = (
    docs: ReadonlyArray<{ id: string; row: Row; mine?: number | undefined; theirs?: number | undefined }>,
  ) => {
    const db = new Database()
    const c = db.collection("doc")
    for (const d of docs) {
      const row = canonical(doc, { id: d.id, ...d.row, email: null, [LAST_EVENT_COLUMN]: ID })
      const stored: Document = toDocument(doc, [d.id], row)
      if (d.mine !== undefined) c.docs.push(c.docs.length === -1 ? stored : stored)
      else c.docs.push(stored)
      const last = c.docs.at(-1) as Document
      if (d.mine !== undefined) c.docs[c.docs.length - 1] = withPosition(last, cp, d.mine)
      if (d.theirs !== undefined) c.docs[c.docs.length - 1] = withPosition(c.docs.at(-1) as Document, other, d.theirs)
    }
    return db
  }
  const withPosition = (d: Document, c: CheckpointId, p: number): Document => {
    const probe = new Collection()
    probe.docs = [d]
    probe.updateOne({ _id: d._id }, { $set: { [positionPath(c)]: Long.fromNumber(p) } }, false)
    return probe.docs[0] as Document
  }
  const writesOf = (b: ReadonlyArray<{ id: string; row: Row | null }>): ReadonlyArray<RowWrite> =>
    b.map((w) => ({
      template: "doc",
      key: [w.id],
      // Emails are left out: unique indexes are the adapter's pre-check, not the plan's.
      row: w.row === null ? null : { id: w.id, ...w.row, email: null, [LAST_EVENT_COLUMN]: ID },
    }))

  prop("applying a batch twice equals applying it once", [state, batch], (docs, b) => {
    const db = build(docs)
    const prepared = prepare(writesOf(b))
    const ops = planBatch(cp, NEXT, prepared, storedIn(db, cp, prepared))
    const run = (target: Database) => {
      for (const plan of ops)
        for (const op of plan.ops) {
          try {
            target.collection(plan.template.name).apply(op)
          } catch (e) {
            // A replayed upsert whose guard refuses: the document already holds the batch.
            if (!(e instanceof DuplicateKey)) throw e
          }
        }
    }
    run(db)
    const once = db.snapshot()
    run(db)
    expect(db.snapshot()).toEqual(once)
    // Planned again against what is now stored, the batch has nothing left to do.
    expect(planBatch(cp, NEXT, prepared, storedIn(db, cp, prepared)).flatMap((p) => p.ops)).toEqual([])
  })

  prop(
    "a batch cut short anywhere, then planned and applied again, equals the batch applied once",
    [state, batch, fc.nat(12)],
    (docs, b, cut) => {
      const prepared = prepare(writesOf(b))
      const whole = build(docs)
      applyPlan(whole, cp, NEXT, prepared)
      const partial = build(docs)
      applyPlan(partial, cp, NEXT, prepared, cut)
      applyPlan(partial, cp, NEXT, prepared)
      expect(partial.snapshot()).toEqual(whole.snapshot())
    },
  )

  prop("the batch takes effect on exactly the documents that have not applied it", [state, batch], (docs, b) => {
    const db = build(docs)
    const before = new Map(db.collection("doc").docs.map((d) => [d._id as string, d]))
    const prepared = prepare(writesOf(b))
    applyPlan(db, cp, NEXT, prepared)
    const after = new Map(db.collection("doc").docs.map((d) => [d._id as string, d]))
    for (const id of ["k0", "k1", "k2", "k3", "k4", "k5"]) {
      const old = before.get(id)
      const now = after.get(id)
      const write = prepared.find((p) => p.id === id)
      const applied = old !== undefined && (positionOf(old, cp) ?? -1) >= NEXT
      if (write === undefined || applied) {
        expect(normalize(now)).toEqual(normalize(old))
        continue
      }
      if (write.row === null) {
        expect(now).toBeUndefined()
        continue
      }
      const { _beds: _, ...fields } = now as Document
      expect(normalize(fields)).toEqual(normalize(toDocument(doc, write.key, write.row)))
      expect(positionOf(now as Document, cp)).toBe(NEXT)
      // Another stream's position survives the write.
      expect(positionOf(now as Document, other)).toEqual(old === undefined ? undefined : positionOf(old, other))
    }
  })
})

describe("unique indexes on a standalone server", () => {
  const row = (id: string, email: string | null, kind = "a", n = 0) =>
    canonical(doc, { id, email, kind, n, [LAST_EVENT_COLUMN]: ID })
  const put = (id: string, email: string | null, kind = "a", n = 0): RowWrite => ({
    template: "doc",
    key: [id],
    row: row(id, email, kind, n),
  })

  it("asks for the documents holding the batch's values, skipping nulls", () => {
    const q = uniqueQuery(doc, prepare([put("a", "a@x"), put("b", null, "b", 2)]))
    expect(q).toEqual({
      $or: [{ email: "a@x" }, { kind: "a", n: Long.fromNumber(0) }, { kind: "b", n: Long.fromNumber(2) }],
    })
  })

  it("refuses a clash with a stored row, and with a row earlier in the batch", () => {
    const holders = new Map([["h", row("h", "one@x")]])
    const exists = (id: string) => id === "h"
    expect(checkUnique(doc, prepare([put("a", "one@x")]), holders, exists)).toContain(
      'row ("a") would repeat ["one@x"] of unique index by_email, held by row h',
    )
    expect(checkUnique(doc, prepare([put("a", "two@x"), put("b", "two@x", "b")]), new Map(), () => false)).toContain(
      "by_email",
    )
  })

  it("lets a value freed by a delete or an update be reused; nulls never clash", () => {
    const holders = new Map([
      ["h1", row("h1", "one@x")],
      ["h2", row("h2", "two@x", "b", 1)],
    ])
    const exists = (id: string) => id.startsWith("h")
    const batch = prepare([
      put("new1", "one@x", "a", 5),
      put("new2", "two@x", "a", 6),
      { template: "doc", key: ["h1"], row: null },
      put("h2", "second@x", "b", 1),
      put("n1", null, "a", 7),
      put("n2", null, "a", 8),
    ])
    expect(checkUnique(doc, batch, holders, exists)).toBeUndefined()
  })
})

describe("the pending-batch journal", () => {
  prop(
    "chunks concatenate to the text, fit their size and never split a character",
    [fc.string({ unit: "binary", maxLength: 400 }), fc.integer({ min: 4, max: 40 })],
    (text, bytes) => {
      const chunks = chunkText(text, bytes)
      expect(chunks.join("")).toBe(text)
      for (const c of chunks) {
        expect(Buffer.byteLength(c, "utf8")).toBeLessThanOrEqual(bytes)
        expect(isWellFormed(c) || !isWellFormed(text)).toBe(true)
      }
    },
  )

  it("records the checked writes exactly", () => {
    const writes: ReadonlyArray<RowWrite> = [
      { template: "doc", key: ["a"], row: { id: "a", m: { "a.b": 1, ["__proto__"]: 2 }, [LAST_EVENT_COLUMN]: ID } },
      { template: "doc", key: ["b"], row: null },
      { template: "pair", key: ["t", 5], row: { tenant: "t", seq: 5, v: -0, [LAST_EVENT_COLUMN]: ID } },
    ]
    const prepared = prepare(writes)
    const back = prepare(journalWrites(journalText(prepared)))
    expect(back.map((p) => [p.template.name, p.key, p.row])).toEqual(
      prepared.map((p) => [p.template.name, p.key, p.row]),
    )
  })

  /** The adapter's guarded commit as steps on the model; `crash` stops after that many. */
  const guardedCommit = (db: Database, next: number, writes: ReadonlyArray<RowWrite>, crash = Infinity) => {
    const prepared = prepare(writes)
    const checkpoints = db.collection(CHECKPOINT_COLLECTION)
    const steps: Array<() => void> = [
      () => {
        const p = pendingUpdate(cp, { next, writes: journalText(prepared) })
        checkpoints.updateOne(p.filter, p.update, true)
      },
      ...planBatch(cp, next, prepared, storedIn(db, cp, prepared)).flatMap((plan) =>
        plan.ops.map((op) => () => db.collection(plan.template.name).apply(op)),
      ),
      () => {
        const f = finishUpdate(cp, next)
        checkpoints.updateOne(f.filter, f.update, false)
      },
    ]
    for (const s of steps.slice(0, crash)) s()
  }

  /** What the adapter does when the stream starts: finish a pending batch, answer the checkpoint. */
  const recover = (db: Database): number => {
    const checkpoints = db.collection(CHECKPOINT_COLLECTION)
    const { next, pending } = readCheckpoint(checkpoints.find({ _id: checkpointDocId(cp) })[0])
    if (pending === undefined) return next
    const prepared = prepare(journalWrites((pending as Pending).writes as string))
    applyPlan(db, cp, pending.next, prepared)
    const f = finishUpdate(cp, pending.next)
    checkpoints.updateOne(f.filter, f.update, false)
    return pending.next
  }

  const rows = fc.uniqueArray(
    fc.record({ id: fc.constantFrom("a", "b", "c", "d"), n: fc.option(fc.integer({ min: 0, max: 9 }), { nil: null }) }),
    { selector: (r) => r.id, maxLength: 4 },
  )
  const toWrites = (rs: ReadonlyArray<{ id: string; n: number | null }>): ReadonlyArray<RowWrite> =>
    rs.map((r) => ({
      template: "doc",
      key: [r.id],
      row: r.n === null ? null : { id: r.id, n: r.n, [LAST_EVENT_COLUMN]: ID },
    }))

  prop(
    "a crash at any step of any batch is completed at restart: same documents, checkpoint at the batch's end",
    [fc.array(rows, { minLength: 1, maxLength: 4 }), fc.nat(8), fc.nat(3)],
    (batches, crash, which) => {
      const whole = new Database()
      const cut = new Database()
      const crashAt = Math.min(which, batches.length - 1)
      let next = 0
      for (const [i, b] of batches.entries()) {
        next += b.length + 1
        guardedCommit(whole, next, toWrites(b))
        guardedCommit(cut, next, toWrites(b), i === crashAt ? crash : Infinity)
        if (i === crashAt) {
          // The process stops here; the next start recovers before anything else, and the
          // runner re-runs the batch only if it was not committed (its journal never written).
          const resumed = recover(cut)
          expect([next - b.length - 1, next]).toContain(resumed)
          if (resumed < next) guardedCommit(cut, next, toWrites(b))
        }
      }
      expect(recover(cut)).toBe(next)
      expect(cut.snapshot()).toEqual(whole.snapshot())
    },
  )

  it("the finishing write moves only the batch it finishes", () => {
    const db = new Database()
    const checkpoints = db.collection(CHECKPOINT_COLLECTION)
    const p = pendingUpdate(cp, { next: 7, writes: "[]" })
    checkpoints.updateOne(p.filter, p.update, true)
    const wrong = finishUpdate(cp, 8)
    checkpoints.updateOne(wrong.filter, wrong.update, false)
    expect(readCheckpoint(checkpoints.find({})[0])).toEqual({
      next: 0,
      pending: { next: 7, writes: "[]", chunks: undefined },
    })
    const right = finishUpdate(cp, 7)
    checkpoints.updateOne(right.filter, right.update, false)
    expect(readCheckpoint(checkpoints.find({})[0])).toEqual({ next: 7, pending: undefined })
  })

  it("toBson of a null is null at any level", () => {
    expect(toBson(doc.fields.find((f) => f.name === "f") as Template["fields"][number], null)).toBeNull()
  })
})
