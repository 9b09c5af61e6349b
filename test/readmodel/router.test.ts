/**
 * The routing store over a REL and a REC adapter (memory for both): the
 * conformance suite through it, where each template lands, how checkpoints
 * of a topology that writes both backends stay exactly-once, and a property
 * that crashes the process at any step of any commit (before or after the
 * step took effect), restarts it with other batch sizes, and finds every
 * event applied exactly once on both backends.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, References } from "effect"
import fc from "fast-check"
import { accounts } from "../../depots/accounts.ts"
import { balances } from "../../projections/balances.ts"
import { type Ledger, ledger, RECENT_ENTRIES } from "../../projections/ledger.ts"
import * as MemoryDepot from "../../src/depot/memory.ts"
import * as Memory from "../../src/readmodel/memory.ts"
import * as Router from "../../src/readmodel/router.ts"
import type { CheckpointId, ReadModelStoreShape, RowWrite } from "../../src/readmodel/store.ts"
import { loadTemplates, parseTemplate } from "../../src/template/load.ts"
import { keyId, LAST_EVENT_COLUMN, type Row, type Template } from "../../src/template/template.ts"
import { withEngine } from "../support/engine.ts"
import { readModelConformance } from "./conformance.ts"

readModelConformance(
  "router (memory REL + memory REC)",
  () => Router.layer({ rel: Memory.make, rec: Router.memoryBackend }),
  {
    backends: ["rel", "rec"],
  },
)

const parse = (text: string, file: string): Template => Effect.runSync(parseTemplate(text, file))

/** REL: a running total and count per key. */
const sums = parse(
  `
tla = "RTS"
name = "rt_sum"
backend = "rel"
key = ["k"]

[fields.k]
type = "string"
max = 10

[fields.total]
type = "int"
default = 0

[fields.count]
type = "int"
default = 0
`,
  "router/rt_sum.toml",
)

/** REC: the offsets applied per key, in order, and a counter. */
const logs = parse(
  `
tla = "RTL"
name = "rt_log"
backend = "rec"
key = ["k"]

[fields.k]
type = "string"
max = 10

[fields.offsets]
type = "list"
of = { type = "int" }

[fields.n]
type = "counter"

[fields.tag]
type = "string"
max = 10
nullable = true

[[indexes]]
name = "by_tag"
fields = ["tag"]
unique = true
`,
  "router/rt_log.toml",
)

const TOPOLOGIES = [
  { name: "both", readModels: ["rt_sum", "rt_log"] },
  { name: "relonly", readModels: ["rt_sum"] },
  { name: "reconly", readModels: ["rt_log"] },
]
const ID = "d:0:1"
const cp = (topology: string, partition = 0): CheckpointId => ({ topology, depot: "d", partition })
const sumRow = (k: string, total: number, count: number): Row => ({ k, total, count, [LAST_EVENT_COLUMN]: ID })
const logRow = (k: string, offsets: ReadonlyArray<number>, tag: string | null = null): Row => ({
  k,
  offsets: [...offsets],
  n: offsets.length,
  tag,
  [LAST_EVENT_COLUMN]: ID,
})
const put = (template: string, row: Row): RowWrite => ({ template, key: [row.k as string], row })

interface World {
  readonly rel: ReadModelStoreShape
  readonly rec: Router.RecBackend
}

/** Two durable stores and an outbox, as a process finds them when it starts. */
const world: Effect.Effect<World> = Effect.gen(function* () {
  const rel = yield* Memory.make
  const rec = yield* Router.memoryBackend
  return { rel, rec }
})

const routerOver = (w: World) =>
  Effect.gen(function* () {
    const store = yield* Router.make({ rel: w.rel, rec: w.rec, topologies: TOPOLOGIES })
    yield* store.ensure([sums, logs])
    return store
  })

describe("router", () => {
  it.effect("sends each template to its backend; one commit writes both", () =>
    Effect.gen(function* () {
      const w = yield* world
      const store = yield* routerOver(w)
      yield* store.commit(cp("both"), 3, [put("rt_sum", sumRow("a", 5, 1)), put("rt_log", logRow("a", [2]))])
      expect(yield* w.rel.scan("rt_sum")).toEqual([sumRow("a", 5, 1)])
      expect(yield* w.rec.store.scan("rt_log")).toEqual([logRow("a", [2])])
      expect(Exit.isFailure(yield* Effect.exit(w.rel.scan("rt_log")))).toBe(true)
      expect((yield* store.load("rt_log", [["a"]])).get("a")).toEqual(logRow("a", [2]))
      expect(yield* store.checkpoint(cp("both"))).toBe(3)
      expect(yield* w.rel.checkpoint(cp("both"))).toBe(3)
      expect(yield* w.rec.store.checkpoint(cp("both"))).toBe(3)
    }),
  )

  it.effect("a topology that writes one backend keeps its checkpoint there, with no outbox", () =>
    Effect.gen(function* () {
      const w = yield* world
      const store = yield* routerOver(w)
      yield* store.commit(cp("relonly"), 4, [put("rt_sum", sumRow("a", 1, 1))])
      yield* store.commit(cp("reconly"), 6, [put("rt_log", logRow("a", [5]))])
      expect(yield* w.rel.checkpoint(cp("relonly"))).toBe(4)
      expect(yield* w.rec.store.checkpoint(cp("relonly"))).toBe(0)
      expect(yield* w.rec.store.checkpoint(cp("reconly"))).toBe(6)
      expect(yield* w.rel.checkpoint(cp("reconly"))).toBe(0)
      expect(yield* w.rec.outbox.get(cp("relonly"))).toBeUndefined()
      expect(yield* w.rec.outbox.get(cp("reconly"))).toBeUndefined()
      const e = yield* Effect.flip(store.commit(cp("relonly"), 5, [put("rt_log", logRow("b", [4]))]))
      expect(e.message).toContain("topology relonly is declared to write REL templates only, but wrote rt_log")
      expect(yield* w.rec.store.scan("rt_log")).toEqual([logRow("a", [5])])
    }),
  )

  it.effect(
    "a template is conditional only where its adapter checks seen and every topology writing it commits to that backend alone",
    () =>
      Effect.gen(function* () {
        const w = yield* world
        const checking = (store: ReadModelStoreShape): ReadModelStoreShape => ({ ...store, conditional: () => true })
        const single = yield* Router.make({
          rel: checking(w.rel),
          rec: { ...w.rec, store: checking(w.rec.store) },
          topologies: TOPOLOGIES.filter((t) => t.name !== "both"),
        })
        yield* single.ensure([sums, logs])
        expect([single.conditional?.("rt_sum"), single.conditional?.("rt_log")]).toEqual([true, true])
        // A topology writing both backends commits through the outbox: a refused REL commit would leave it pending.
        const mixed = yield* Router.make({
          rel: checking(w.rel),
          rec: { ...w.rec, store: checking(w.rec.store) },
          topologies: TOPOLOGIES,
        })
        yield* mixed.ensure([sums, logs])
        expect([mixed.conditional?.("rt_sum"), mixed.conditional?.("rt_log")]).toEqual([false, false])
        const plain = yield* routerOver(w)
        expect([plain.conditional?.("rt_sum"), plain.conditional?.("rt_nope")]).toEqual([false, false])
      }),
  )

  it.effect("a crash between the REL and the REC commit is completed when the stream starts again", () =>
    Effect.gen(function* () {
      const w = yield* world
      const first = yield* routerOver(w)
      yield* first.commit(cp("both"), 2, [put("rt_sum", sumRow("a", 1, 1)), put("rt_log", logRow("a", [1]))])
      // The process dies after the REL half of the next batch: the outbox entry and REL are in, REC is not.
      const recWrites = [put("rt_log", logRow("a", [1, 2]))]
      yield* w.rec.outbox.put(cp("both"), { from: 2, next: 3, writes: recWrites })
      yield* w.rel.commit(cp("both"), 3, [put("rt_sum", sumRow("a", 3, 2))])
      const second = yield* routerOver(w)
      expect(yield* second.checkpoint(cp("both"))).toBe(3)
      expect(yield* w.rec.store.checkpoint(cp("both"))).toBe(3)
      expect(yield* second.scan("rt_log")).toEqual([logRow("a", [1, 2])])
      expect(yield* second.scan("rt_sum")).toEqual([sumRow("a", 3, 2)])
    }),
  )

  it.effect("backends that disagree with no pending batch between them are reported, never papered over", () =>
    Effect.gen(function* () {
      const w = yield* world
      const store = yield* routerOver(w)
      yield* w.rec.store.commit(cp("both", 1), 7, [])
      const recAhead = yield* Effect.flip(store.checkpoint(cp("both", 1)))
      expect(recAhead.code).toBe("CORRUPT")
      expect(recAhead.message).toContain("REC read models are at offset 7 but the REL ones only at 0")
      expect(recAhead.message).toContain("Reset the topology both and replay it")
      yield* w.rel.commit(cp("both", 2), 9, [])
      const relAhead = yield* Effect.flip(store.checkpoint(cp("both", 2)))
      expect(relAhead.message).toContain("REL read models are at offset 9 but the REC ones at 0")
      assert.isFalse(relAhead.retryable)
    }),
  )

  it.effect("a REC refusal is found before the REL half commits: neither backend changes", () =>
    Effect.gen(function* () {
      const w = yield* world
      const store = yield* routerOver(w)
      yield* store.commit(cp("both"), 1, [put("rt_log", logRow("a", [0], "t1"))])
      const e = yield* Effect.flip(
        store.commit(cp("both"), 2, [put("rt_sum", sumRow("b", 1, 1)), put("rt_log", logRow("b", [1], "t1"))]),
      )
      expect(e.message).toContain("unique index by_tag")
      expect(yield* w.rel.scan("rt_sum")).toEqual([])
      expect(yield* store.checkpoint(cp("both"))).toBe(1)
      const bad = yield* Effect.flip(store.commit(cp("both"), 2, [put("rt_log", { ...logRow("c", [1]), n: 0.5 })]))
      expect(bad.message).toContain("rt_log.n")
      expect(yield* w.rel.checkpoint(cp("both"))).toBe(1)
    }),
  )

  it.effect("an interrupted reset of a two-backend topology is finished when a stream starts", () =>
    Effect.gen(function* () {
      const w = yield* world
      const store = yield* routerOver(w)
      yield* store.commit(cp("both"), 5, [put("rt_sum", sumRow("a", 1, 1)), put("rt_log", logRow("a", [4]))])
      // The reset began and cleared REL only before the process stopped.
      yield* w.rec.outbox.beginReset("both", ["rt_sum", "rt_log"])
      yield* w.rel.reset("both", ["rt_sum"])
      const again = yield* routerOver(w)
      expect(yield* again.checkpoint(cp("both"))).toBe(0)
      expect(yield* again.scan("rt_log")).toEqual([])
      expect(yield* w.rec.outbox.pendingReset("both")).toBeUndefined()
      // A whole reset through the router clears both backends and the outbox.
      yield* again.commit(cp("both"), 2, [put("rt_sum", sumRow("b", 1, 1)), put("rt_log", logRow("b", [1]))])
      yield* again.reset("both", ["rt_sum", "rt_log"])
      expect([yield* again.scan("rt_sum"), yield* again.scan("rt_log")]).toEqual([[], []])
      expect(yield* w.rec.outbox.get(cp("both"))).toBeUndefined()
      expect(yield* again.checkpoint(cp("both"))).toBe(0)
    }),
  )
})

// ---------------------------------------------------------------------------
// The crash property.

class Crash extends Error {}

interface Plan {
  /** Durable steps (outbox put, REL commit, REC commit) after which, or before which, the process dies. */
  readonly crashes: ReadonlyArray<{ readonly at: number; readonly after: boolean }>
}

/** Wraps the durable steps so that the process can die before or after any of them. */
const crashing = (w: World, plan: Plan, counter: { n: number }): World => {
  const step = <A, E>(effect: Effect.Effect<A, E>): Effect.Effect<A, E> =>
    Effect.suspend(() => {
      const n = counter.n++
      const crash = plan.crashes.find((c) => c.at === n)
      if (crash === undefined) return effect
      if (!crash.after) return Effect.die(new Crash())
      return Effect.flatMap(effect, () => Effect.die(new Crash()))
    })
  const wrap = (s: ReadModelStoreShape): ReadModelStoreShape => ({
    ...s,
    commit: (c, next, writes) => step(s.commit(c, next, writes)),
  })
  return {
    rel: wrap(w.rel),
    rec: {
      ...w.rec,
      store: wrap(w.rec.store),
      outbox: { ...w.rec.outbox, put: (stream, entry) => step(w.rec.outbox.put(stream, entry)) },
    },
  }
}

interface Event {
  readonly key: string
  readonly amount: number
}

/**
 * What the runner does, on a store that may die: resume at the checkpoint,
 * read a batch (of a size the restart may change), load the touched rows,
 * fold, commit. Returns when every event is applied.
 */
const runToTheEnd = (w: World, events: ReadonlyArray<Event>, sizes: ReadonlyArray<number>, plan: Plan) =>
  Effect.gen(function* () {
    const counter = { n: 0 }
    let batches = 0
    for (let restart = 0; restart <= plan.crashes.length; restart++) {
      const exit = yield* Effect.exit(
        Effect.gen(function* () {
          const store = yield* routerOver(crashing(w, plan, counter))
          let next = yield* store.checkpoint(cp("both"))
          while (next < events.length) {
            const size = sizes[batches++ % sizes.length] as number
            const batch = events.slice(next, next + size)
            const keys = [...new Set(batch.map((e) => e.key))].map((k) => [k])
            const loadedSums = yield* store.load("rt_sum", keys)
            const loadedLogs = yield* store.load("rt_log", keys)
            const s = new Map<string, Row>()
            const l = new Map<string, Row>()
            for (const [i, e] of batch.entries()) {
              const offset = next + i
              const sum = s.get(e.key) ?? loadedSums.get(keyId([e.key])) ?? sumRow(e.key, 0, 0)
              s.set(e.key, sumRow(e.key, (sum.total as number) + e.amount, (sum.count as number) + 1))
              const log = l.get(e.key) ?? loadedLogs.get(keyId([e.key])) ?? logRow(e.key, [])
              l.set(e.key, logRow(e.key, [...(log.offsets as Array<number>), offset]))
            }
            const end = next + batch.length
            yield* store.commit(cp("both"), end, [
              ...[...s.values()].map((r) => put("rt_sum", r)),
              ...[...l.values()].map((r) => put("rt_log", r)),
            ])
            next = end
          }
        }),
      )
      if (Exit.isSuccess(exit)) return
      const crashed = exit.cause.reasons.some((r) => r._tag === "Die" && r.defect instanceof Crash)
      if (!crashed) return yield* Effect.failCause(exit.cause)
    }
  })

describe("router: crashes between the backends' commits", () => {
  const events = fc.array(fc.record({ key: fc.constantFrom("a", "b", "c"), amount: fc.integer({ min: 1, max: 9 }) }), {
    minLength: 1,
    maxLength: 25,
  })
  const sizes = fc.array(fc.integer({ min: 1, max: 8 }), { minLength: 1, maxLength: 6 })
  const crashes = fc.uniqueArray(fc.record({ at: fc.nat(30), after: fc.boolean() }), {
    selector: (c) => c.at,
    maxLength: 4,
  })

  it("whatever step the process dies at, and however the batches are cut on restart, every event applies exactly once on both backends", async () => {
    await fc.assert(
      fc.asyncProperty(events, sizes, crashes, async (evs, sz, cr) => {
        const w = await Effect.runPromise(world)
        // Recoveries log what they complete; the property makes hundreds of them.
        await Effect.runPromise(
          runToTheEnd(w, evs, sz, { crashes: cr }).pipe(Effect.provideService(References.MinimumLogLevel, "Error")),
        )
        const expected = new Map<string, { total: number; offsets: Array<number> }>()
        evs.forEach((e, offset) => {
          const x = expected.get(e.key) ?? { total: 0, offsets: [] }
          x.total += e.amount
          x.offsets.push(offset)
          expected.set(e.key, x)
        })
        const keys = [...expected.keys()].sort()
        const check = await Effect.runPromise(
          Effect.gen(function* () {
            const store = yield* routerOver(w)
            return {
              checkpoint: yield* store.checkpoint(cp("both")),
              sums: yield* store.scan("rt_sum"),
              logs: yield* store.scan("rt_log"),
            }
          }),
        )
        expect(check.checkpoint).toBe(evs.length)
        expect(check.sums).toEqual(
          keys.map((k) => sumRow(k, expected.get(k)?.total ?? 0, expected.get(k)?.offsets.length ?? 0)),
        )
        expect(check.logs).toEqual(keys.map((k) => logRow(k, expected.get(k)?.offsets ?? [])))
      }),
      { numRuns: 300 },
    )
  })
})

describe("the ledger example: balances in a REL table and ledger in a REC collection, through the router", () => {
  it("a full reply waits for both topologies; each read model reflects the events", async () => {
    const templates = (await Effect.runPromise(loadTemplates("templates"))).filter((t) =>
      ["acc_balance", "ldg_account"].includes(t.name),
    )
    const w = await Effect.runPromise(world)
    const models = await Effect.runPromise(Router.make({ ...w, topologies: [balances, ledger] }))
    const declarations = { depots: [accounts], topologies: [balances, ledger], templates }
    const amounts = Array.from({ length: RECENT_ENTRIES + 5 }, (_, i) => i + 1)
    const [reply, doc, row] = await Effect.runPromise(
      withEngine({ depot: MemoryDepot.make(), models }, declarations, (engine) =>
        Effect.gen(function* () {
          yield* engine.publish("accounts", "Opened", "acc-1", { owner: "Ada" }, { id: "m0" })
          for (const [i, amount] of amounts.entries())
            yield* engine.publish("accounts", "Deposited", "acc-1", { amount }, { id: `d${i}` })
          const r = yield* engine.publish("accounts", "Withdrawn", "acc-1", { amount: 7 }, { id: "w", ack: "full" })
          const d = (yield* models.load("ldg_account", [["acc-1"]])).get("acc-1") as Ledger | undefined
          const b = (yield* models.load("acc_balance", [["acc-1"]])).get("acc-1")
          return [r, d, b] as const
        }),
      ),
    )
    const deposited = amounts.reduce((a, b) => a + b, 0)
    expect(reply.ok && [...(reply.applied ?? [])].sort()).toEqual(["balances", "ledger"])
    expect(row).toMatchObject({ owner: "Ada", balance: deposited - 7, events: amounts.length + 2 })
    expect(doc).toMatchObject({
      account_id: "acc-1",
      owner: "Ada",
      status: "open",
      balance: deposited - 7,
      events: amounts.length + 2,
      counts: { Deposited: amounts.length, Opened: 1, Withdrawn: 1 },
      totals: { deposited, withdrawn: 7, largest_deposit: amounts.length },
    })
    expect(doc?.entries).toHaveLength(RECENT_ENTRIES)
    expect(doc?.entries.at(-1)).toMatchObject({ kind: "withdrawal", amount: 7, balance: deposited - 7 })
    expect(doc?.entries.at(-1)?.event).toBe(reply.ok ? reply.id : "")
    // Each topology's checkpoint lives with its rows only.
    const checkpoints = (store: ReadModelStoreShape, topology: string) =>
      Effect.runPromise(
        Effect.forEach([0, 1, 2, 3], (partition) => store.checkpoint({ topology, depot: "accounts", partition })),
      )
    const total = amounts.length + 2
    expect((await checkpoints(w.rel, "balances")).reduce((a, b) => a + b)).toBe(total)
    expect((await checkpoints(w.rec.store, "ledger")).reduce((a, b) => a + b)).toBe(total)
    expect(await checkpoints(w.rec.store, "balances")).toEqual([0, 0, 0, 0])
    expect(await checkpoints(w.rel, "ledger")).toEqual([0, 0, 0, 0])
  })
})
