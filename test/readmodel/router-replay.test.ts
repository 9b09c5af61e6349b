/**
 * Replays through the REL/REC router, over two memory stores as the engine's
 * stores layer builds it with engine.rel = engine.rec = "memory" behind a
 * router: a topology that writes one backend is rebuilt and swapped in by
 * that backend's own blue/green operations while the engine keeps serving;
 * a topology that writes both is refused, saying why and what to do.
 */
import { Effect } from "effect"
import { beforeAll, describe, expect, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import { balances } from "../../projections/balances.ts"
import { ledger } from "../../projections/ledger.ts"
import * as MemoryDepot from "../../src/depot/memory.ts"
import type { StoreError } from "../../src/errors.ts"
import * as Memory from "../../src/readmodel/memory.ts"
import * as Router from "../../src/readmodel/router.ts"
import type { ReadModelReplayShape, ReadModelStoreShape } from "../../src/readmodel/store.ts"
import type { Declarations } from "../../src/runtime/engine.ts"
import { loadTemplates } from "../../src/template/load.ts"
import type { Row, Template } from "../../src/template/template.ts"
import * as Topology from "../../src/topology/topology.ts"
import { history, MARK, publishAll, runReplay } from "../replay/properties.ts"
import { withEngine } from "../support/engine.ts"
import { expectReadModelsEqualFold, type Stores } from "../support/engine-properties.ts"

/** Writes acc_balance and ldg_account: one template on each backend. */
const mixed = Topology.make({
  name: "mixed",
  version: 1,
  sources: [accounts],
  readModels: ["acc_balance", "ldg_account"],
  step: () => undefined,
})

let templates: ReadonlyArray<Template>
let declarations: Declarations
beforeAll(async () => {
  templates = (await Effect.runPromise(loadTemplates("templates"))).filter((t) =>
    ["acc_balance", "ldg_account"].includes(t.name),
  )
  declarations = { depots: [accounts], topologies: [balances, ledger], templates }
})

interface World extends Stores {
  readonly rel: ReadModelStoreShape
  readonly rec: Router.RecBackend
}

const world = (rec: Effect.Effect<Router.RecBackend> = Router.memoryBackend, routed = true): Promise<World> =>
  Effect.runPromise(
    Effect.gen(function* () {
      const rel = yield* Memory.make
      const r = yield* rec
      const models = yield* Router.make({
        rel,
        rec: r,
        ...(routed ? { topologies: [balances, ledger, mixed] } : {}),
      })
      return { rel, rec: r, depot: MemoryDepot.make(), models }
    }),
  )

const opsOf = (store: ReadModelStoreShape): ReadModelReplayShape => {
  if (store.replay === undefined) throw new Error("no replay operations")
  return store.replay
}

/** Marks every live row of a template on its backend, outside any stream of the topologies. */
const mark = (backend: ReadModelStoreShape, template: string) =>
  Effect.gen(function* () {
    const rows = yield* backend.scan(template)
    yield* backend.commit(
      { topology: "test_mark", depot: "none", partition: 0 },
      1,
      rows.map((r) => ({
        template,
        key: [r.account_id as string],
        row: { ...r, events: (r.events as number) + MARK } as Row,
      })),
    )
    return rows.length
  })

const refusal = (w: World, decl: Declarations, topology: string) =>
  Effect.flip(runReplay(w, decl, { topology })) as Effect.Effect<StoreError>

describe("replay through the REL/REC router", () => {
  it("a REL-only and a REC-only topology are each rebuilt and swapped in by their own backend, beside a running engine", async () => {
    const w = await world()
    await Effect.runPromise(
      withEngine(w, declarations, (engine) =>
        Effect.gen(function* () {
          yield* publishAll(engine, history(40))
          yield* engine.settle()
          const cases = [
            { topology: balances, template: "acc_balance", home: w.rel, other: w.rec.store },
            { topology: ledger, template: "ldg_account", home: w.rec.store, other: w.rel },
          ]
          for (const c of cases) {
            const before = yield* w.models.scan(c.template)
            expect(before.length).toBe(5)
            // First: the rebuilt model equals the live one.
            const verified = yield* runReplay(w, declarations, { topology: c.topology.name, verify: true })
            expect(verified).toMatchObject({ mode: "swap", variant: "shadow", verify: { equal: true } })
            expect(yield* w.models.scan(c.template)).toEqual(before)
            // Then: live rows marked as old are replaced by rebuilt ones, so the swap took place.
            expect(yield* mark(c.home, c.template)).toBe(5)
            const summary = yield* runReplay(w, declarations, { topology: c.topology.name })
            expect(summary.mode).toBe("swap")
            const after = yield* w.models.scan(c.template)
            expect(after.every((r) => (r.events as number) < MARK)).toBe(true)
            expect(after).toEqual(before)
            // The version is recorded where the topology's rows live, and only there.
            expect((yield* opsOf(c.home).record(c.topology.name))?.version).toBe(c.topology.version)
            expect(yield* opsOf(c.other).record(c.topology.name)).toBeUndefined()
          }
          yield* expectReadModelsEqualFold(w, declarations)
          // The engine goes on projecting onto the swapped-in models of both topologies.
          const reply = yield* engine.publish("accounts", "Deposited", "a", { amount: 7 }, { id: "after", ack: "full" })
          expect(reply.ok && [...(reply.applied ?? [])].sort()).toEqual(["balances", "ledger"])
          yield* expectReadModelsEqualFold(w, declarations)
        }),
      ),
    )
  })

  it("a fence raised through the router refuses the live commit of a stream that read its checkpoint before it", async () => {
    const w = await world()
    await Effect.runPromise(
      Effect.gen(function* () {
        yield* w.models.ensure(templates)
        const ops = opsOf(w.models)
        for (const topology of ["balances", "ledger"]) {
          const cp = { topology, depot: "accounts", partition: 0 }
          const next = yield* w.models.checkpoint(cp)
          yield* ops.fence(topology)
          expect(yield* Effect.flip(w.models.commit(cp, next + 1, []))).toMatchObject({
            code: "FENCED",
            retryable: false,
          })
          yield* ops.unfence(topology)
          expect(yield* w.models.checkpoint(cp)).toBe(next)
          yield* w.models.commit(cp, next + 1, [])
          expect(yield* ops.peekCheckpoint(cp)).toBe(next + 1)
        }
      }),
    )
  })

  it("a topology that writes both backends is refused, naming its templates and the split that makes it replayable", async () => {
    const w = await world()
    const decl = { ...declarations, topologies: [balances, ledger, mixed] }
    const e = await Effect.runPromise(refusal(w, decl, "mixed"))
    // replay() refuses before touching anything, with the code the CLI maps to its usage exit status.
    expect(e).toMatchObject({ _tag: "ReplayError", code: "REPLAY_UNSUPPORTED" })
    expect(e.message).toContain("Topology mixed cannot be replayed")
    expect(e.message).toContain("REL templates (acc_balance) and REC templates (ldg_account)")
    expect(e.message).toContain("one atomic step")
    expect(e.message).toContain(
      "Split it into a topology that writes only the REL templates and one that writes only the REC templates",
    )
    // Called directly, once the router knows the templates, every operation refuses the same way;
    // neither backend was touched.
    Router.declareTemplates(w.models, templates)
    const ops = opsOf(w.models)
    const refusals = await Effect.runPromise(
      Effect.all(
        [
          ops.fence("mixed"),
          ops.record("mixed"),
          ops.peekCheckpoint({ topology: "mixed", depot: "accounts", partition: 0 }),
          ops.swap("mixed", mixed.readModels, 1),
        ].map((op) => Effect.flip(op as Effect.Effect<unknown, StoreError>)),
      ),
    )
    for (const r of refusals) expect(r.message).toContain("Topology mixed cannot be replayed")
    expect(await Effect.runPromise(opsOf(w.rel).record("mixed"))).toBeUndefined()
    expect(await Effect.runPromise(opsOf(w.rec.store).record("mixed"))).toBeUndefined()
  })

  it("templates declared but not yet ensured are enough to route a topology's record, as the start-up version step needs", async () => {
    const w = await world()
    const ops = opsOf(w.models)
    const undeclared = await Effect.runPromise(Effect.flip(ops.record("ledger")))
    expect(undeclared.message).toContain(
      "writes template(s) ldg_account that this read-model store has not been given yet",
    )
    Router.declareTemplates(w.models, templates)
    await Effect.runPromise(ops.setVersion("ledger", 4))
    await Effect.runPromise(ops.setVersion("balances", 2))
    expect((await Effect.runPromise(opsOf(w.rec.store).record("ledger")))?.version).toBe(4)
    expect((await Effect.runPromise(opsOf(w.rel).record("balances")))?.version).toBe(2)
    expect(await Effect.runPromise(ops.record("ledger"))).toMatchObject({ version: 4 })
    // Declaring does not make a topology writing both backends replayable.
    expect((await Effect.runPromise(Effect.flip(ops.record("mixed")))).message).toContain("cannot be replayed")
  })

  it("a backend without blue/green operations, or a topology the router was not given, is refused with the reason", async () => {
    const bare: Effect.Effect<Router.RecBackend> = Effect.map(Router.memoryBackend, (b) => ({
      ...b,
      store: { ...b.store, replay: undefined },
    }))
    const w = await world(bare)
    const noOps = await Effect.runPromise(refusal(w, declarations, "ledger"))
    expect(noOps.message).toContain("Topology ledger cannot be replayed")
    expect(noOps.message).toContain("REC read-model store, which has no blue/green operations")
    // The REL side still replays.
    await Effect.runPromise(runReplay(w, declarations, { topology: "balances" }))

    const unrouted = await world(Router.memoryBackend, false)
    const unknown = await Effect.runPromise(refusal(unrouted, declarations, "balances"))
    expect(unknown.message).toContain("Topology balances is not among the topologies this read-model store routes")
  })
})
