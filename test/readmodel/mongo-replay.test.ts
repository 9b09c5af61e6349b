/**
 * MongoDB replays without a server: the adapter (mongodb.ts) and its replay
 * operations (mongo-replay.ts) over the driver model (mongo-model.ts), with
 * transactions and with guarded writes. First the port's conformance suite
 * on the model, so the fencing added to commits and checkpoint reads is seen
 * to change nothing else; then each replay operation, and fencing against
 * live commits caught at every step that matters; then whole replays through
 * replay() beside a running engine, on the adapter and behind the router.
 *
 * Each test uses two adapter instances on one database where it matters: the
 * live engine's and the replay's, as two processes would.
 */
import * as os from "node:os"
import { Effect, Exit, Layer, Scope } from "effect"
import { Long } from "mongodb"
import { beforeAll, describe, expect, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import { balances } from "../../projections/balances.ts"
import { ledger } from "../../projections/ledger.ts"
import * as MemoryDepot from "../../src/depot/memory.ts"
import type { StoreError } from "../../src/errors.ts"
import * as Memory from "../../src/readmodel/memory.ts"
import { journalText, pendingUpdate, prepareBatch } from "../../src/readmodel/mongo-ops.ts"
import type { ReplayTiming } from "../../src/readmodel/mongo-replay.ts"
import * as Mongo from "../../src/readmodel/mongodb.ts"
import * as Router from "../../src/readmodel/router.ts"
import {
  type CheckpointId,
  type ReadModelReplayShape,
  ReadModelStore,
  type ReadModelStoreShape,
  type RowWrite,
} from "../../src/readmodel/store.ts"
import type { Declarations } from "../../src/runtime/engine.ts"
import { loadTemplates, parseTemplate } from "../../src/template/load.ts"
import { LAST_EVENT_COLUMN, type Row, type Template } from "../../src/template/template.ts"
import { history, MARK, publishAll, runReplay } from "../replay/properties.ts"
import { withEngine } from "../support/engine.ts"
import { expectReadModelsEqualFold, type Stores } from "../support/engine-properties.ts"
import { readModelConformance } from "./conformance.ts"
import { FakeMongo, type WriteEvent } from "./mongo-model.ts"

const MODES: ReadonlyArray<Mongo.ExactlyOnceMode> = ["transaction", "guarded"]

const TIMING: ReplayTiming = { leaseMs: 60_000, renewMs: 10_000, pendingWaitMs: 10_000 }

const openOn = (fake: FakeMongo, mode: Mongo.ExactlyOnceMode, timing: ReplayTiming = TIMING) =>
  Mongo.open({ client: fake.client, db: fake.db, mode, where: "the MongoDB model", database: fake.name, timing })

for (const mode of MODES)
  readModelConformance(
    `mongodb on the driver model (${mode === "transaction" ? "transactions" : "guarded writes"})`,
    () => Layer.sync(ReadModelStore, () => openOn(new FakeMongo(), mode).store),
    { backends: ["rec"] },
  )

const doc: Template = Effect.runSync(
  parseTemplate(
    `
tla = "MRD"
name = "mr_doc"
backend = "rec"
key = ["id"]

[fields.id]
type = "string"
max = 20

[fields.n]
type = "int"
default = 0

[fields.tags]
type = "map"
of = { type = "int" }
`,
    "mongo/mr_doc.toml",
  ),
)

const TOPOLOGY = "mr"
const ID = "d:0:1"
const cp: CheckpointId = { topology: TOPOLOGY, depot: "d", partition: 0 }
const row = (id: string, n: number, tags: Record<string, number> = {}): Row => ({
  id,
  n,
  tags,
  [LAST_EVENT_COLUMN]: ID,
})
const put = (r: Row): RowWrite => ({ template: "mr_doc", key: [r.id as string], row: r })
const HOLDER = { host: "replay-host", pid: 4242, since: 1_700_000_000_000 }

const run = <A, E>(effect: Effect.Effect<A, E>): Promise<A> => Effect.runPromise(effect)
const scoped = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>): Promise<A> => Effect.runPromise(Effect.scoped(effect))
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
const opsOf = (store: ReadModelStoreShape): ReadModelReplayShape => {
  if (store.replay === undefined) throw new Error("no replay operations")
  return store.replay
}
const ids = async (store: ReadModelStoreShape) => (await run(store.scan("mr_doc"))).map((r) => [r.id, r.n])
const collections = (fake: FakeMongo) => [...fake.data.collections.keys()].filter((n) => n.startsWith("mr_doc")).sort()
const docsOf = (fake: FakeMongo, name: string) => fake.data.collections.get(name)?.docs ?? []

/** The live engine's store and the replay's, on one database. */
const twoProcesses = async (mode: Mongo.ExactlyOnceMode, timing: ReplayTiming = TIMING) => {
  const fake = new FakeMongo()
  const live = openOn(fake, mode, timing).store
  const replayer = openOn(fake, mode, timing).store
  await run(live.ensure([doc]))
  await run(replayer.ensure([doc]))
  return { fake, live, replayer, ops: opsOf(replayer) }
}

/** Holds the first write that `match` picks until released. */
const holdAt = (fake: FakeMongo, match: (e: WriteEvent) => boolean) => {
  let reach: () => void = () => undefined
  let release: () => void = () => undefined
  const reached = new Promise<void>((resolve) => {
    reach = resolve
  })
  const released = new Promise<void>((resolve) => {
    release = resolve
  })
  let held = false
  fake.beforeWrite = async (e) => {
    if (held || !match(e)) return
    held = true
    reach()
    await released
  }
  return { reached, release: () => release() }
}

const num = (v: unknown): number => (v instanceof Long ? v.toNumber() : Number(v))

/** Whether a promise has settled within `ms`. */
const settledWithin = async (p: Promise<unknown>, ms: number): Promise<boolean> => {
  let settled = false
  p.then(
    () => {
      settled = true
    },
    () => {
      settled = true
    },
  )
  await sleep(ms)
  return settled
}

const failure = (effect: Effect.Effect<unknown, StoreError>) => run(Effect.flip(effect))

describe.each(MODES)("MongoDB replay operations (%s)", (mode) => {
  it("fence: a live commit of a stream that read its checkpoint before the fence fails with FENCED and writes nothing; streams wait while the lock is held", async () => {
    const { live, ops } = await twoProcesses(mode)
    expect(await run(live.checkpoint(cp))).toBe(0)
    await run(live.commit(cp, 1, [put(row("a", 1))]))
    await scoped(
      Effect.gen(function* () {
        expect(yield* ops.lock(TOPOLOGY, HOLDER)).toEqual({ acquired: true })
        yield* ops.fence(TOPOLOGY)
        expect(yield* ops.record(TOPOLOGY)).toEqual({ version: undefined, generation: 1, fenced: true })
        const refused = yield* Effect.flip(live.commit(cp, 2, [put(row("b", 2))]))
        expect(refused).toMatchObject({ code: "FENCED", retryable: false })
        expect(refused.message).toContain("Nothing was written")
        expect(yield* ops.peekCheckpoint(cp)).toBe(1)
        // A restarted stream waits for the swap.
        expect(yield* Effect.flip(live.checkpoint(cp))).toMatchObject({ code: "FENCED", retryable: true })
        yield* ops.unfence(TOPOLOGY)
      }),
    )
    expect(await ids(live)).toEqual([["a", 1]])
    // Re-reading the checkpoint adopts the new generation; the batch is folded again and lands.
    expect(await run(live.checkpoint(cp))).toBe(1)
    await run(live.commit(cp, 2, [put(row("b", 2))]))
    expect(await ids(live)).toEqual([
      ["a", 1],
      ["b", 2],
    ])
    expect(await run(ops.peekCheckpoint(cp))).toBe(2)
  })

  it("fence: a fence whose replay lock is gone (the replay died) does not hold live streams", async () => {
    const { live, ops } = await twoProcesses(mode)
    await scoped(Effect.andThen(ops.lock(TOPOLOGY, HOLDER), ops.fence(TOPOLOGY)))
    expect((await run(ops.record(TOPOLOGY)))?.fenced).toBe(true)
    expect(await run(live.checkpoint(cp))).toBe(0)
    await run(live.commit(cp, 1, [put(row("a", 1))]))
    expect(await ids(live)).toEqual([["a", 1]])
  })

  it("lock: a second attempt returns the holder; the lock goes with its scope; a dead holder's lock is taken over", async () => {
    const { fake, ops } = await twoProcesses(mode)
    const other = opsOf(openOn(fake, mode).store)
    const scope = await run(Scope.make())
    expect(await run(ops.lock(TOPOLOGY, HOLDER).pipe(Scope.provide(scope)))).toEqual({ acquired: true })
    expect(await scoped(other.lock(TOPOLOGY, { host: "h2", pid: 1, since: 2 }))).toEqual({
      acquired: false,
      holder: HOLDER,
    })
    await run(Scope.close(scope, Exit.void))
    expect(docsOf(fake, "beds_replay_lock")).toEqual([])
    expect(await scoped(other.lock(TOPOLOGY, { host: "h2", pid: 1, since: 2 }))).toEqual({ acquired: true })

    // A holder that stopped renewing its lock longer ago than the lease.
    const locks = fake.db.collection("beds_replay_lock")
    const stale = { _id: TOPOLOGY, host: "gone", pid: 9, since: 1, token: "t-old", beat: Date.now() - 61_000 }
    await locks.insertOne(stale as never)
    expect(await scoped(other.lock(TOPOLOGY, { host: "h3", pid: 3, since: 3 }))).toEqual({ acquired: true })
    // A holder on this host whose process no longer runs, however recently it renewed.
    await locks.insertOne({ ...stale, host: os.hostname(), pid: 2 ** 22 + 4321, beat: Date.now() } as never)
    expect(await scoped(other.lock(TOPOLOGY, { host: "h4", pid: 4, since: 4 }))).toEqual({ acquired: true })
    // A live holder elsewhere keeps it.
    await locks.insertOne({ ...stale, beat: Date.now() } as never)
    expect(await scoped(other.lock(TOPOLOGY, { host: "h5", pid: 5, since: 5 }))).toEqual({
      acquired: false,
      holder: { host: "gone", pid: 9, since: 1 },
    })
  })

  it("variants: separate collections and checkpoints; reopened with the same fingerprint they resume, with another one or a collection missing they start again", async () => {
    const { fake, live, ops } = await twoProcesses(mode)
    await run(live.checkpoint(cp))
    await run(live.commit(cp, 3, [put(row("a", 1))]))
    const first = await run(ops.variant(TOPOLOGY, [doc], "shadow", "fp1"))
    expect(first).toMatchObject({ resumed: false, dropped: false })
    await run(first.store.commit(cp, 2, [put(row("a", 10)), put(row("b", 20))]))
    expect(collections(fake)).toEqual(["mr_doc", "mr_doc__shadow"])
    expect(await run(first.store.checkpoint(cp))).toBe(2)
    expect(await run(live.checkpoint(cp))).toBe(3)
    expect(await ids(live)).toEqual([["a", 1]])
    expect(await ids(first.store)).toEqual([
      ["a", 10],
      ["b", 20],
    ])
    expect(docsOf(fake, "beds_checkpoint").map((d) => d._id)).toEqual(["mr/d/0", "mr~shadow/d/0"])

    const again = await run(ops.variant(TOPOLOGY, [doc], "shadow", "fp1"))
    expect(again).toMatchObject({ resumed: true, dropped: false })
    expect(await run(again.store.checkpoint(cp))).toBe(2)
    const other = await run(ops.variant(TOPOLOGY, [doc], "shadow", "fp2"))
    expect(other).toMatchObject({ resumed: false, dropped: true })
    expect(await ids(other.store)).toEqual([])
    expect(await run(other.store.checkpoint(cp))).toBe(0)
    await run(other.store.commit(cp, 1, [put(row("c", 1))]))
    await fake.db.dropCollection("mr_doc__shadow")
    expect(await run(ops.variant(TOPOLOGY, [doc], "shadow", "fp2"))).toMatchObject({ resumed: false, dropped: true })

    const snapshot = await run(ops.variant(TOPOLOGY, [doc], "at_4", "fp3"))
    await run(snapshot.store.commit(cp, 4, [put(row("s", 4))]))
    expect(collections(fake)).toEqual(["mr_doc", "mr_doc__at_4", "mr_doc__shadow"])
    await run(ops.dropVariant(TOPOLOGY, ["mr_doc"], "at_4"))
    expect(collections(fake)).toEqual(["mr_doc", "mr_doc__shadow"])
    expect(docsOf(fake, "beds_checkpoint").map((d) => d._id)).toEqual(["mr/d/0"])
    expect(docsOf(fake, "beds_variant").map((d) => [d._id, d.fingerprint])).toEqual([["mr/shadow", "fp2"]])
    // The live model never changed.
    expect(await ids(live)).toEqual([["a", 1]])
  })

  it("swap makes the shadow the live collection and drops the old one; the live checkpoints stay, the shadow's go", async () => {
    const { fake, live, ops } = await twoProcesses(mode)
    await run(live.checkpoint(cp))
    await run(live.commit(cp, 2, [put(row("a", 1)), put(row("z", 26))]))
    const shadow = await run(ops.variant(TOPOLOGY, [doc], "shadow", "fp"))
    await run(shadow.store.commit(cp, 2, [put(row("a", 10)), put(row("b", 20, { x: 1 }))]))
    // Without the lock the fence guards nothing: refused, nothing changed.
    const unlocked = await failure(ops.swap(TOPOLOGY, ["mr_doc"], 7))
    expect(unlocked.message).toContain("Swap refused: the replay lock of topology mr was lost")
    expect(collections(fake)).toEqual(["mr_doc", "mr_doc__shadow"])
    await scoped(
      Effect.gen(function* () {
        yield* ops.lock(TOPOLOGY, HOLDER)
        yield* ops.fence(TOPOLOGY)
        yield* ops.swap(TOPOLOGY, ["mr_doc"], 7)
      }),
    )
    expect(collections(fake)).toEqual(["mr_doc"])
    expect(await ids(live)).toEqual([
      ["a", 10],
      ["b", 20],
    ])
    expect((await run(live.load("mr_doc", [["b"]]))).get("b")).toEqual(row("b", 20, { x: 1 }))
    expect(await run(ops.record(TOPOLOGY))).toEqual({ version: 7, generation: 1, fenced: false })
    expect(docsOf(fake, "beds_checkpoint").map((d) => [d._id, num(d.next)])).toEqual([["mr/d/0", 2]])
    expect(docsOf(fake, "beds_variant")).toEqual([])
    expect(docsOf(fake, "beds_templates").map((d) => d._id)).toEqual(["mr_doc"])
    // A second swap has nothing to swap in.
    const again = await scoped(
      Effect.andThen(ops.lock(TOPOLOGY, HOLDER), Effect.flip(ops.swap(TOPOLOGY, ["mr_doc"], 8))),
    )
    expect(again.message).toContain("mr_doc__shadow do not exist")
    // The live stream, refused once, goes on from the kept checkpoint on the new collection.
    expect(await failure(live.commit(cp, 3, [put(row("c", 3))]))).toMatchObject({ code: "FENCED" })
    expect(await run(live.checkpoint(cp))).toBe(2)
    await run(live.commit(cp, 3, [put(row("c", 3))]))
    await run(live.ensure([doc]))
    expect(await ids(live)).toEqual([
      ["a", 10],
      ["b", 20],
      ["c", 3],
    ])
  })

  it("diff finds a deliberately changed document, and documents on one side only, in key order, as load returns them", async () => {
    const { live, ops } = await twoProcesses(mode)
    // "é" sorts after "e" (code points, as the server sorts strings).
    const rows = ["a", "b", "c", "d", "é"].map((k, i) => row(k, i, { k: i }))
    await run(live.commit(cp, 1, rows.map(put)))
    const shadow = await run(ops.variant(TOPOLOGY, [doc], "shadow", "fp"))
    await run(shadow.store.commit(cp, 1, rows.map(put)))
    expect(await run(ops.diff("mr_doc", "shadow", 10))).toEqual({ count: 0, first: [] })
    // One changed (a map entry), one missing from the copy, one only in the copy.
    await run(shadow.store.commit(cp, 2, [put(row("b", 1, { k: 99 })), { template: "mr_doc", key: ["c"], row: null }]))
    await run(shadow.store.commit(cp, 3, [put(row("e", 9))]))
    const loaded = async (store: ReadModelStoreShape, key: string) =>
      (await run(store.load("mr_doc", [[key]]))).get(key) ?? null
    const d = await run(ops.diff("mr_doc", "shadow", 100))
    expect(d.count).toBe(3)
    expect(d.first).toEqual([
      { key: ["b"], live: await loaded(live, "b"), copy: await loaded(shadow.store, "b") },
      { key: ["c"], live: await loaded(live, "c"), copy: null },
      { key: ["e"], live: null, copy: await loaded(shadow.store, "e") },
    ])
    expect(d.first[0]?.copy).toEqual(row("b", 1, { k: 99 }))
    const limited = await run(ops.diff("mr_doc", "shadow", 1))
    expect(limited.count).toBe(3)
    expect(limited.first.map((x) => x.key)).toEqual([["b"]])
  })
})

/**
 * A live commit held at `at` while a fence is raised: the fence waits (at least `waitMs`) until
 * the commit lands, and the next live commit is refused.
 */
const fenceWaitsForCommitInFlight = async (
  mode: "transaction" | "guarded",
  at: Parameters<typeof holdAt>[1],
  waitMs: number,
) => {
  const { fake, live, ops } = await twoProcesses(mode)
  expect(await run(live.checkpoint(cp))).toBe(0)
  const hold = holdAt(fake, at)
  const commit = run(live.commit(cp, 1, [put(row("a", 1))]))
  await hold.reached
  const fence = run(ops.fence(TOPOLOGY))
  expect(await settledWithin(fence, waitMs)).toBe(false)
  hold.release()
  await commit
  await fence
  expect(await ids(live)).toEqual([["a", 1]])
  expect(await run(ops.peekCheckpoint(cp))).toBe(1)
  expect(await failure(live.commit(cp, 2, [put(row("b", 2))]))).toMatchObject({ code: "FENCED" })
}

describe("MongoDB fencing against live commits caught in flight: transactions", () => {
  it("a fence waits for a live transaction that has written its checkpoint, which then lands", () =>
    fenceWaitsForCommitInFlight(
      "transaction",
      (e) => e.collection === "mr_doc" && e.op === "bulkWrite" && e.inTransaction,
      50,
    ))

  it("a live transaction that reaches its checkpoint after the fence is refused, and nothing of it stays", async () => {
    const { fake, live, ops } = await twoProcesses("transaction")
    expect(await run(live.checkpoint(cp))).toBe(0)
    const hold = holdAt(fake, (e) => e.collection === "beds_checkpoint" && e.inTransaction)
    const commit = failure(live.commit(cp, 1, [put(row("a", 1))]))
    await hold.reached
    await run(ops.fence(TOPOLOGY))
    hold.release()
    expect(await commit).toMatchObject({ code: "FENCED", retryable: false })
    expect(await ids(live)).toEqual([])
    expect(await run(ops.peekCheckpoint(cp))).toBe(0)
  })
})

describe("MongoDB fencing against live commits caught in flight: guarded writes", () => {
  it("a fence waits for a batch recorded as pending before it, which then lands", () =>
    fenceWaitsForCommitInFlight("guarded", (e) => e.collection === "mr_doc" && e.op === "bulkWrite", 100))

  it("a batch that comes to record itself as pending after the fence is refused, and nothing of it stays", async () => {
    const { fake, live, ops } = await twoProcesses("guarded")
    expect(await run(live.checkpoint(cp))).toBe(0)
    const hold = holdAt(fake, (e) => e.collection === "beds_checkpoint")
    const commit = failure(live.commit(cp, 1, [put(row("a", 1))]))
    await hold.reached
    await run(ops.fence(TOPOLOGY))
    hold.release()
    expect(await commit).toMatchObject({ code: "FENCED", retryable: false })
    expect(await ids(live)).toEqual([])
    expect(docsOf(fake, "beds_checkpoint").find((d) => d._id === "mr/d/0")?.pending).toBeUndefined()
  })

  it("a batch left pending by a writer that died is applied by the fence, once", async () => {
    const { fake, live, ops } = await twoProcesses("guarded", { ...TIMING, pendingWaitMs: 30 })
    expect(await run(live.checkpoint(cp))).toBe(0)
    await run(live.commit(cp, 1, [put(row("a", 1))]))
    const writes = [put(row("a", 2)), put(row("b", 1))]
    const prepared = prepareBatch((n) => (n === doc.name ? doc : undefined), writes)
    if (!prepared.ok) throw new Error(prepared.problem)
    const p = pendingUpdate(cp, { next: 3, writes: journalText(prepared.value) })
    await fake.db.collection("beds_checkpoint").updateOne(p.filter, p.update)
    await run(ops.fence(TOPOLOGY))
    expect(await ids(live)).toEqual([
      ["a", 2],
      ["b", 1],
    ])
    expect(await run(ops.peekCheckpoint(cp))).toBe(3)
    expect(docsOf(fake, "beds_checkpoint").find((d) => d._id === "mr/d/0")?.next).toEqual(Long.fromNumber(3))
  })
})

// ---------------------------------------------------------------------------
// Whole replays.

let templates: ReadonlyArray<Template>
beforeAll(async () => {
  templates = (await Effect.runPromise(loadTemplates("templates"))).filter((t) =>
    ["acc_balance", "ldg_account"].includes(t.name),
  )
})

/** Marks every live document of ldg_account outside any stream of the topologies. */
const markLedger = (store: ReadModelStoreShape) =>
  Effect.gen(function* () {
    const rows = yield* store.scan("ldg_account")
    yield* store.commit(
      { topology: "test_mark", depot: "none", partition: 0 },
      1,
      rows.map((r) => ({
        template: "ldg_account",
        key: [r.account_id as string],
        row: { ...r, events: (r.events as number) + MARK } as Row,
      })),
    )
  })

/** Replays ledger (verify, then over marked documents) beside a running engine, then checks it goes on. */
const replayLedger = (stores: Stores, home: ReadModelStoreShape, declarations: Declarations) =>
  run(
    withEngine(stores, declarations, (engine) =>
      Effect.gen(function* () {
        yield* publishAll(engine, history(40))
        yield* engine.settle()
        const before = yield* stores.models.scan("ldg_account")
        expect(before.length).toBe(5)
        const verified = yield* runReplay(stores, declarations, { topology: "ledger", verify: true, batchMax: 7 })
        expect(verified).toMatchObject({ mode: "swap", verify: { equal: true } })
        expect(yield* stores.models.scan("ldg_account")).toEqual(before)
        yield* markLedger(home)
        yield* runReplay(stores, declarations, { topology: "ledger", batchMax: 7 })
        const after = yield* stores.models.scan("ldg_account")
        expect(after.every((r) => (r.events as number) < MARK)).toBe(true)
        expect(after).toEqual(before)
        expect((yield* opsOf(home).record("ledger"))?.version).toBe(ledger.version)
        yield* expectReadModelsEqualFold(stores, declarations)
        const reply = yield* engine.publish("accounts", "Deposited", "a", { amount: 7 }, { id: "after", ack: "full" })
        expect(reply.ok).toBe(true)
        yield* expectReadModelsEqualFold(stores, declarations)
      }),
    ),
  )

describe.each(MODES)("replay() on MongoDB read models (%s)", (mode) => {
  it("rebuilds a REC topology beside a running engine, equal to the live model, and swaps it in", async () => {
    const fake = new FakeMongo()
    const store = openOn(fake, mode).store
    await replayLedger({ depot: MemoryDepot.make(), models: store }, store, {
      depots: [accounts],
      topologies: [ledger],
      templates: templates.filter((t) => t.backend === "rec"),
    })
    expect([...fake.data.collections.keys()].filter((n) => n.startsWith("ldg_account"))).toEqual(["ldg_account"])
  })

  it("behind the router (REL memory, REC MongoDB), as the engine's stores layer builds it", async () => {
    const fake = new FakeMongo()
    const rec = openOn(fake, mode)
    const rel = await run(Memory.make)
    const models = await run(Router.make({ rel, rec, topologies: [balances, ledger] }))
    const declarations = { depots: [accounts], topologies: [balances, ledger], templates }
    await replayLedger({ depot: MemoryDepot.make(), models }, rec.store, declarations)
    expect(await run(opsOf(rel).record("ledger"))).toBeUndefined()
  })
})
