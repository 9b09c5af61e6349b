/**
 * Lineage as a product feature, over memory stores: the example cascade
 * (accounts → overdraft → alerts → alert_log), lineage queries and their
 * properties on random cascades, and replay determinism of derived events.
 * The same properties run on MariaDB in lineage.int.test.ts.
 */
import { Effect } from "effect"
import fc from "fast-check"
import { beforeAll, describe, expect, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import { settleCascades as settleAll } from "../../src/cli/project.ts"
import * as DepotDecl from "../../src/depot/depot.ts"
import * as MemoryDepot from "../../src/depot/memory.ts"
import { DepotStore } from "../../src/depot/store.ts"
import { StoreError } from "../../src/errors.ts"
import * as Lineage from "../../src/lineage/lineage-id.ts"
import { ancestors, buildTree, descendants, nodesOf, tree } from "../../src/lineage/query.ts"
import * as MemoryModels from "../../src/readmodel/memory.ts"
import type { Declarations } from "../../src/runtime/engine.ts"
import * as Topology from "../../src/topology/topology.ts"
import { TopologyFailure } from "../../src/topology/topology.ts"
import { withEngine } from "../support/engine.ts"
import { depotEvents, type Stores } from "../support/engine-properties.ts"
import { cascadeDeclarations, cascadeProperty, exampleDeclarations, settleCascades, stepsArbitrary } from "./support.ts"

const freshStores = (): Promise<Stores> =>
  Effect.runPromise(Effect.map(MemoryModels.make, (models) => ({ depot: MemoryDepot.make(), models })))

const freshModels = (stores: Stores): Promise<Stores> =>
  Effect.runPromise(Effect.map(MemoryModels.make, (models) => ({ depot: stores.depot, models })))

let example: Declarations
let cascades: Declarations
beforeAll(async () => {
  example = await exampleDeclarations()
  cascades = await cascadeDeclarations()
})

const run = <A, E>(stores: Stores, decl: Declarations, f: Parameters<typeof withEngine<A, E>>[2]) =>
  Effect.runPromise(withEngine(stores, decl, f))

const inStore = <A, E>(stores: Stores, effect: Effect.Effect<A, E, DepotStore>) =>
  Effect.runPromise(Effect.provideService(effect, DepotStore, stores.depot))

describe("the example cascade: accounts → overdraft → alerts → alert_log", () => {
  it("flags a withdrawal that overdraws an account, in another depot and partition, with a derived lineage ID", async () => {
    const stores = await freshStores()
    const { withdrawn, events, rows } = await run(stores, example, (engine) =>
      Effect.gen(function* () {
        yield* engine.publish("accounts", "Opened", "acc-7", { owner: "Ada" }, { id: "m1" })
        yield* engine.publish("accounts", "Deposited", "acc-7", { amount: 100 }, { id: "m2" })
        const withdrawn = yield* engine.publish(
          "accounts",
          "Withdrawn",
          "acc-7",
          { amount: 250 },
          { id: "m3", ack: "full" },
        )
        // Already overdrawn: no second alert.
        yield* engine.publish("accounts", "Withdrawn", "acc-7", { amount: 5 }, { id: "m4" })
        yield* settleCascades(engine)
        return {
          withdrawn,
          events: yield* depotEvents(stores.depot, example),
          rows: {
            ovd: yield* stores.models.scan("ovd_state"),
            alr: yield* stores.models.scan("alr_alert"),
          },
        }
      }),
    )
    expect(withdrawn).toMatchObject({ ok: true, applied: ["balances", "overdraft"] })
    const parent = withdrawn.ok ? withdrawn.id : ""
    const alerts = events.filter((e) => e.depot === "alerts")
    expect(alerts).toHaveLength(1)
    const alert = alerts[0]!
    expect(alert).toMatchObject({
      id: `${parent}/overdraft.0`,
      messageId: `${parent}/overdraft.0`,
      parent,
      root: parent,
      type: "OverdraftFlagged",
      key: "acc-7",
      partition: DepotDecl.partitionOf("acc-7", 2),
      payload: { account: "acc-7", balance: -150, withdrawal: 250 },
    })
    expect(alert.time).toBe(events.find((e) => e.id === parent)?.time)
    expect(rows.ovd).toEqual([
      { account_id: "acc-7", balance: -155, beds_last_id: events.find((e) => e.messageId === "m4")?.id },
    ])
    expect(rows.alr).toEqual([
      {
        account_id: "acc-7",
        alerts: 1,
        last_balance: -150,
        last_withdrawal: 250,
        lowest_balance: -150,
        first_at: alert.time,
        last_at: alert.time,
        beds_last_id: alert.id,
      },
    ])
  })

  it("flags again after the account recovers and is overdrawn anew", async () => {
    const stores = await freshStores()
    const alerts = await run(stores, example, (engine) =>
      Effect.gen(function* () {
        for (const [i, [type, amount]] of (
          [
            ["Withdrawn", 10],
            ["Deposited", 50],
            ["Withdrawn", 100],
            ["Withdrawn", 1],
          ] as const
        ).entries())
          yield* engine.publish("accounts", type, "acc-1", { amount }, { id: `m${i}` })
        yield* settleCascades(engine)
        return (yield* depotEvents(stores.depot, example)).filter((e) => e.depot === "alerts")
      }),
    )
    expect(alerts.map((e) => e.payload)).toEqual([
      { account: "acc-1", balance: -10, withdrawal: 10 },
      { account: "acc-1", balance: -60, withdrawal: 100 },
    ])
  })
})

describe("lineage queries", () => {
  it("answers ancestors, descendants and trees for a deep cascade across depots", async () => {
    const stores = await freshStores()
    const seed = await run(stores, cascades, (engine) =>
      Effect.gen(function* () {
        const r = yield* engine.publish(
          "chain",
          "Spread",
          "n1",
          { ttl: 2, fan: 2, account: "z", amount: 9 },
          { id: "s" },
        )
        yield* settleCascades(engine)
        return r.ok ? r.id : ""
      }),
    )
    // n1 → 2 → 4 chain events, 4 withdrawals, the first of which overdraws z: 1 alert.
    const below = await inStore(stores, descendants(seed))
    const ids = nodesOf(below.tree).map((n) => n.id)
    expect(below.count).toBe(2 + 4 + 4 + 1)
    expect(ids[0]).toBe(seed)
    const alert = ids.find((id) => id.endsWith("/overdraft.0"))!
    expect(Lineage.depth(alert)).toBe(4)
    expect(alert.startsWith(`${seed}/spread.`)).toBe(true)

    const up = await inStore(stores, ancestors(alert))
    expect(up.map((a) => a.id)).toEqual(Lineage.ancestors(alert))
    expect(up.map((a) => a.event?.depot)).toEqual(["accounts", "chain", "chain", "chain"])
    expect(up.at(-1)?.id).toBe(seed)

    const t = await inStore(stores, tree(alert))
    expect(t).toMatchObject({ id: alert, top: alert, count: 0, truncated: false })
    expect(t.ancestors.map((a) => a.id)).toEqual(Lineage.ancestors(alert))
    const whole = await inStore(stores, tree(alert, { root: true }))
    expect(whole.top).toBe(seed)
    expect(whole.ancestors).toEqual([])
    expect(whole.count).toBe(below.count)

    const limited = await inStore(stores, descendants(seed, { limit: 3 }))
    expect(limited).toMatchObject({ count: 3, truncated: true })
  })

  it("orders children by emission number, not as strings", () => {
    const e = (id: string) => ({ id }) as never
    const t = buildTree("a:0:0", undefined, [
      e("a:0:0/t.10"),
      e("a:0:0/t.2"),
      e("a:0:0/t.2/u.0"),
      e("a:0:0/t.1/u.0"), // its parent is not stored: a node without an event keeps it reachable
    ])
    expect(t.children.map((c) => c.id)).toEqual(["a:0:0/t.1", "a:0:0/t.2", "a:0:0/t.10"])
    expect(t.children[0]?.event).toBeUndefined()
    expect(t.children[0]?.children.map((c) => c.id)).toEqual(["a:0:0/t.1/u.0"])
  })

  it("refuses a malformed ID with BAD_ID and an unknown one with UNKNOWN_EVENT", async () => {
    const stores = await freshStores()
    const code = (e: Effect.Effect<unknown, { code: string } | unknown, DepotStore>) =>
      inStore(stores, Effect.flip(e)).then((x) => (x as { code: string }).code)
    expect(await code(tree("not an id"))).toBe("BAD_ID")
    expect(await code(ancestors("accounts:1"))).toBe("BAD_ID")
    expect(await code(descendants("accounts:0:1/"))).toBe("BAD_ID")
    expect(await code(tree("accounts:0:99"))).toBe("UNKNOWN_EVENT")
    expect(await code(descendants("accounts:0:99"))).toBe("UNKNOWN_EVENT")
    // Ancestors need no stored event: they are read from the ID.
    expect(await inStore(stores, ancestors("accounts:0:1/overdraft.0"))).toEqual([
      { id: "accounts:0:1", event: undefined },
    ])
  })
})

describe("lineage properties over random cascades (memory stores)", () => {
  it("property: ancestors from the ID are the stored parent chain, descendants by range scan are those found by walking children, the audit is clean, and a rebuild from scratch reproduces the same derived events and rows", async () => {
    let derivedSeen = 0
    await fc.assert(
      fc.asyncProperty(stepsArbitrary, async (steps) => {
        const events = await cascadeProperty(freshStores, freshModels, cascades, steps)
        derivedSeen += events.filter((e) => Lineage.depth(e.id) > 0).length
      }),
      { numRuns: 100 },
    )
    expect(derivedSeen).toBeGreaterThan(100)
  })

  it("settling fails, naming the stream, when a topology halts instead of catching up", async () => {
    const stores = await freshStores()
    const broken = Topology.make({
      name: "broken",
      sources: [accounts],
      readModels: [],
      handle: (e) => (e.type === "Closed" ? Effect.fail(new TopologyFailure("cannot close", false)) : Effect.void),
    })
    const failure = await run(stores, { ...example, topologies: [...example.topologies, broken] }, (engine) =>
      Effect.gen(function* () {
        yield* engine.publish("accounts", "Opened", "k", { owner: "K" }, { id: "1" })
        yield* engine.publish("accounts", "Closed", "k", {}, { id: "2" })
        return yield* Effect.flip(settleAll(engine))
      }),
    )
    expect(failure).toMatchObject({
      code: "REPLAY_HALTED",
      message: expect.stringMatching(/^Topology broken halted on accounts\/\d at offset 1 \(cannot close/),
    })
  })

  it("a crashed engine re-runs the batch whose children it appended and appends none twice", async () => {
    const stores = await freshStores()
    let commits = 0
    // The first life dies at its first checkpoint commit: children appended, checkpoint not moved.
    const dying: Stores = {
      depot: stores.depot,
      models: {
        ...stores.models,
        commit: (cp, next, writes) =>
          cp.topology === "overdraft" && commits++ === 0
            ? Effect.fail(new StoreError({ code: "STORE_FAILED", message: "injected crash", retryable: false }))
            : stores.models.commit(cp, next, writes),
      },
    }
    await run(dying, example, (engine) =>
      Effect.gen(function* () {
        yield* engine.publish("accounts", "Withdrawn", "acc-1", { amount: 5 }, { id: "w" })
        for (let i = 0; i < 200; i++) {
          if ((yield* depotEvents(stores.depot, example)).some((e) => e.depot === "alerts")) break
          yield* Effect.sleep("5 millis")
        }
      }),
    )
    const before = await Effect.runPromise(depotEvents(stores.depot, example))
    expect(before.filter((e) => e.depot === "alerts")).toHaveLength(1)
    const after = await run(stores, example, (engine) =>
      Effect.andThen(settleCascades(engine), depotEvents(stores.depot, example)),
    )
    expect(after).toEqual(before)
  })
})
