/**
 * The MongoDB read-model adapter against a real server, whenever
 * BEDS_MONGO_URL names one (e.g. mongodb://127.0.0.1:27017/?directConnection=true):
 * the conformance suite in the mode the server allows (transactions on a
 * replica set, guarded writes on a standalone server) and again with guarded
 * writes forced; then what only a server can show: indexes, drift, the shape
 * of stored documents, the recovery of a batch cut short, and a replay round
 * trip (copy, fence, diff, swap) in either mode.
 *
 * Each run uses throw-away databases named beds_t_readmodel_<pid>[_suffix]
 * and drops them at the end.
 */
import { afterAll, assert, describe, expect, layer } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { type Document, Long, MongoClient } from "mongodb"
import {
  journalText,
  pendingUpdate,
  planBatch,
  positionPath,
  prepareBatch,
  storedQuery,
} from "../../src/readmodel/mongo-ops.ts"
import * as Mongo from "../../src/readmodel/mongodb.ts"
import { ReadModelStore } from "../../src/readmodel/store.ts"
import { parseTemplate } from "../../src/template/load.ts"
import { LAST_EVENT_COLUMN, type Template } from "../../src/template/template.ts"
import { readModelConformance } from "./conformance.ts"

const url = process.env.BEDS_MONGO_URL
const available = url !== undefined && url !== ""
if (!available)
  console.warn(
    "[skip] BEDS_MONGO_URL is not set: MongoDB read-model tests skipped (set it to e.g. mongodb://127.0.0.1:27017 to run them).",
  )

const database = `beds_t_readmodel_${process.pid}`
const settings = (suffix = "", extra: Partial<Mongo.MongoSettings> = {}): Mongo.MongoSettings => ({
  url: url ?? "",
  database: `${database}${suffix}`,
  connectTimeoutMs: 5000,
  ...extra,
})

afterAll(async () => {
  if (!available) return
  const client = await MongoClient.connect(url as string)
  try {
    for (const suffix of ["", "_guarded", "_mongo", "_replay", "_replay_guarded"])
      await client.db(`${database}${suffix}`).dropDatabase()
  } finally {
    await client.close()
  }
})

readModelConformance("mongodb", () => Mongo.layer(settings()), { backends: ["rec"], skip: !available })
readModelConformance(
  "mongodb (guarded writes forced)",
  () => Mongo.layer(settings("_guarded", { exactlyOnce: "guarded" })),
  {
    backends: ["rec"],
    skip: !available,
  },
)

const template = (text: string) => Effect.runSync(parseTemplate(text, "mongo/mg_acct.toml"))

const V1 = `
tla = "MGA"
name = "mg_acct"
backend = "rec"
key = ["id"]

[fields.id]
type = "string"
max = 32

[fields.owner]
type = "string"
max = 50
nullable = true

[fields.hits]
type = "counter"

[fields.seen]
type = "map"
of = { type = "time" }

[[indexes]]
name = "by_owner"
fields = ["owner"]
`

/** V1 plus only safe changes. */
const V2 = `${V1}
[fields.score]
type = "int"
default = 5

[fields.profile]
type = "object"

[fields.profile.fields.email]
type = "string"
max = 60
nullable = true

[[indexes]]
name = "by_email"
fields = ["profile.email"]
unique = true
`

/** A raw client on the test database, for looking at what the adapter stored. */
const raw = Effect.acquireRelease(
  Effect.promise(() => MongoClient.connect(url as string)),
  (c) => Effect.promise(() => c.close()),
).pipe(Effect.map((c) => c.db(`${database}_mongo`)))

const ID = "d:0:0"
const cp = { topology: "mg", depot: "d", partition: 2 }

describe.skipIf(!available)("MongoDB read models", () => {
  layer(Layer.effect(ReadModelStore, Mongo.make(settings("_mongo"))), { timeout: "60 seconds" })((it) => {
    it.effect("creates collections and indexes, stores query-shaped documents with their stream positions", () =>
      Effect.gen(function* () {
        const store = yield* ReadModelStore
        const db = yield* raw
        const v1 = template(V1)
        yield* store.ensure([v1])
        yield* store.commit(cp, 4, [
          {
            template: "mg_acct",
            key: ["a1"],
            row: { id: "a1", owner: "Ann", hits: 3, seen: { "x.y": 1000 }, [LAST_EVENT_COLUMN]: ID },
          },
        ])
        const doc = (yield* Effect.promise(() =>
          db.collection("mg_acct").findOne({ _id: "a1" as never }, { promoteLongs: false }),
        )) as Document
        expect(doc).toMatchObject({
          _id: "a1",
          id: "a1",
          owner: "Ann",
          seen: { "x%2Ey": new Date(1000) },
          [LAST_EVENT_COLUMN]: ID,
        })
        expect(doc.hits).toEqual(Long.fromNumber(3))
        expect(positionPath(cp)).toBe("_beds.pos.mg.d.2")
        expect(doc._beds).toEqual({ pos: { mg: { d: { "2": Long.fromNumber(4) } } } })
        const indexes = yield* Effect.promise(() => db.collection("mg_acct").listIndexes().toArray())
        expect(indexes.map((i) => i.name).sort()).toEqual(["_id_", "by_owner"])
        const checkpoint = yield* Effect.promise(() =>
          db.collection("beds_checkpoint").findOne({ _id: "mg/d/2" as never }),
        )
        expect(Number(checkpoint?.next)).toBe(4)
        expect(checkpoint?.pending).toBeUndefined()
        // Idempotent.
        yield* store.ensure([v1])
        expect(yield* store.checkpoint(cp)).toBe(4)
      }),
    )

    it.effect("applies safe changes (new fields get their defaults, new indexes) and refuses unsafe ones", () =>
      Effect.gen(function* () {
        const store = yield* ReadModelStore
        const db = yield* raw
        yield* store.ensure([template(V2)])
        const doc = yield* Effect.promise(() => db.collection("mg_acct").findOne({ _id: "a1" as never }))
        expect(doc).toMatchObject({ score: 5, profile: { email: null } })
        const indexes = yield* Effect.promise(() => db.collection("mg_acct").listIndexes().toArray())
        expect(indexes.find((i) => i.name === "by_email")).toMatchObject({
          unique: true,
          partialFilterExpression: { "profile.email": { $type: "string" } },
        })
        const v3 = template(
          V2.replace(`[fields.owner]\ntype = "string"\nmax = 50`, `[fields.owner]\ntype = "int"`)
            .replace(`fields = ["owner"]`, `fields = ["owner", "score"]`)
            .concat(`\n[fields.required_later]\ntype = "int"\n`),
        )
        const e = yield* Effect.flip(store.ensure([v3]))
        expect(e.code).toBe("SCHEMA_DRIFT")
        for (const part of [
          "mg_acct (MGA, mongo/mg_acct.toml)",
          "owner is string in the stored documents; the template now says int",
          "index by_owner is an index on (owner) in the collection",
          "field required_later is new",
          "replay into a new template",
        ])
          expect(e.message).toContain(part)
        // Nothing of the refused change was applied, and the store still serves the template it had.
        const after = yield* Effect.promise(() => db.collection("mg_acct").listIndexes().toArray())
        expect(after.map((i) => i.name).sort()).toEqual(["_id_", "by_email", "by_owner"])
        expect((yield* store.scan("mg_acct")).map((r) => r.id)).toEqual(["a1"])
      }),
    )

    it.effect("refuses REL templates", () =>
      Effect.gen(function* () {
        const store = yield* ReadModelStore
        const rel = template(
          V1.replace(`backend = "rec"`, `backend = "rel"`).replace(/\[fields\.hits\][^[]*\[fields\.seen\][^[]*/, ""),
        )
        const e = yield* Effect.flip(store.ensure([{ ...rel, name: "mg_rel", tla: "MGR" }]))
        expect(e.message).toContain("REL template")
      }),
    )
  })
})

describe.skipIf(!available)("MongoDB: a batch cut short on a standalone server", () => {
  const recovers = (label: string, suffix: string) =>
    Effect.scoped(
      Effect.gen(function* () {
        const s = settings(suffix, { exactlyOnce: "guarded" })
        const t: Template = template(V1)
        const first = yield* Mongo.backend(s)
        expect(first.mode).toBe("guarded")
        yield* first.store.ensure([t])
        yield* first.store.commit(cp, 1, [
          { template: "mg_acct", key: ["k1"], row: { id: "k1", hits: 1, [LAST_EVENT_COLUMN]: ID } },
        ])
        // Journal a batch and apply only its first write, as a process that died halfway would.
        const writes = [
          { template: "mg_acct", key: ["k1"], row: { id: "k1", hits: 2, [LAST_EVENT_COLUMN]: ID } },
          { template: "mg_acct", key: ["k2"], row: { id: "k2", hits: 1, [LAST_EVENT_COLUMN]: ID } },
        ]
        const prepared = prepareBatch((n) => (n === t.name ? t : undefined), writes)
        assert.isTrue(prepared.ok)
        if (!prepared.ok) return
        const client = yield* Effect.acquireRelease(
          Effect.promise(() => MongoClient.connect(url as string)),
          (c) => Effect.promise(() => c.close()),
        )
        const db = client.db(s.database)
        const p = pendingUpdate(cp, { next: 3, writes: journalText(prepared.value) })
        yield* Effect.promise(() => db.collection("beds_checkpoint").updateOne(p.filter, p.update, { upsert: true }))
        const q = storedQuery(cp, prepared.value)
        const found = yield* Effect.promise(() =>
          db.collection("mg_acct").find(q.filter, { projection: q.projection }).toArray(),
        )
        const stored = new Map([
          ["mg_acct", new Map(found.map((d) => [String(d._id), Number(d._beds?.pos?.mg?.d?.["2"] ?? 0)]))],
        ])
        const [plan] = planBatch(cp, 3, prepared.value, stored)
        yield* Effect.promise(() => db.collection("mg_acct").bulkWrite([plan?.ops[0]] as never))
        // The next start finds the pending batch and finishes it.
        const second = yield* Mongo.backend(s)
        yield* second.store.ensure([t])
        expect(yield* second.store.checkpoint(cp), label).toBe(3)
        expect((yield* second.store.scan("mg_acct")).map((r) => [r.id, r.hits])).toEqual([
          ["k1", 2],
          ["k2", 1],
        ])
        // Applying the same batch again changes nothing.
        yield* second.store.commit(cp, 3, writes)
        expect((yield* second.store.scan("mg_acct")).map((r) => [r.id, r.hits])).toEqual([
          ["k1", 2],
          ["k2", 1],
        ])
      }),
    )

  layer(Layer.empty, { timeout: "60 seconds" })((it) => {
    it.effect("the next start applies the journaled batch once", () => recovers("guarded", "_guarded"))
  })
})

describe.skipIf(!available)("MongoDB: a replay round trip", () => {
  const roundTrip = (suffix: string, extra: Partial<Mongo.MongoSettings>) =>
    Effect.scoped(
      Effect.gen(function* () {
        const s = settings(suffix, extra)
        const t: Template = template(V1)
        const acct = (id: string, hits: number) => ({
          template: "mg_acct",
          key: [id],
          row: { id, hits, [LAST_EVENT_COLUMN]: ID },
        })
        // The live engine's store and the replay's, as two processes would have them.
        const live = (yield* Mongo.backend(s)).store
        const replayer = (yield* Mongo.backend(s)).store
        const ops = replayer.replay
        assert.isDefined(ops)
        if (ops === undefined) return
        yield* live.ensure([t])
        yield* replayer.ensure([t])
        const stream = { topology: "mgr", depot: "d", partition: 0 }
        expect(yield* live.checkpoint(stream)).toBe(0)
        yield* live.commit(stream, 2, [acct("a1", 1), acct("z9", 9)])
        const holder = { host: "int-replay", pid: 1, since: Date.now() }
        yield* Effect.scoped(
          Effect.gen(function* () {
            expect(yield* ops.lock("mgr", holder)).toEqual({ acquired: true })
            const second = yield* Effect.scoped(ops.lock("mgr", { host: "int-other", pid: 2, since: 0 }))
            expect(second).toEqual({ acquired: false, holder })
            const shadow = yield* ops.variant("mgr", [t], "shadow", "fp")
            expect(shadow).toMatchObject({ resumed: false, dropped: false })
            yield* shadow.store.commit(stream, 2, [acct("a1", 5), acct("b2", 2)])
            expect(yield* ops.peekCheckpoint(stream)).toBe(2)
            yield* ops.fence("mgr")
            const refused = yield* Effect.flip(live.commit(stream, 3, [acct("c3", 3)]))
            expect(refused).toMatchObject({ code: "FENCED", retryable: false })
            expect(yield* Effect.flip(live.checkpoint(stream))).toMatchObject({ code: "FENCED", retryable: true })
            const d = yield* ops.diff("mg_acct", "shadow", 10)
            expect(d.count).toBe(3)
            expect(d.first.map((x) => [x.key, x.live?.hits ?? null, x.copy?.hits ?? null])).toEqual([
              [["a1"], 1, 5],
              [["b2"], null, 2],
              [["z9"], 9, null],
            ])
            yield* ops.swap("mgr", ["mg_acct"], 2)
          }),
        )
        expect((yield* live.scan("mg_acct")).map((r) => [r.id, r.hits])).toEqual([
          ["a1", 5],
          ["b2", 2],
        ])
        expect(yield* ops.record("mgr")).toMatchObject({ version: 2, fenced: false })
        const client = yield* Effect.acquireRelease(
          Effect.promise(() => MongoClient.connect(url as string)),
          (c) => Effect.promise(() => c.close()),
        )
        const names = yield* Effect.promise(() =>
          client.db(s.database).listCollections({}, { nameOnly: true }).toArray(),
        )
        expect(names.map((c) => c.name).filter((n) => n.startsWith("mg_acct"))).toEqual(["mg_acct"])
        // The live stream goes on from its kept checkpoint, over the swapped-in collection.
        expect(yield* live.checkpoint(stream)).toBe(2)
        yield* live.commit(stream, 3, [acct("c3", 3)])
        expect((yield* live.scan("mg_acct")).map((r) => r.id)).toEqual(["a1", "b2", "c3"])
        yield* live.ensure([t])
      }),
    )

  layer(Layer.empty, { timeout: "60 seconds" })((it) => {
    it.effect("copy, fence, diff and swap, in the mode the server allows", () => roundTrip("_replay", {}))
    it.effect("copy, fence, diff and swap, with guarded writes", () =>
      roundTrip("_replay_guarded", { exactlyOnce: "guarded" }),
    )
  })
})
