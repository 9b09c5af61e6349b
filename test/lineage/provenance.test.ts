/**
 * `why`: the events behind a read-model row, over memory stores, for the
 * example cascade and for topologies the key-history rule does not cover.
 */
import { Effect, Schema } from "effect"
import { beforeAll, describe, expect, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import * as Depot from "../../src/depot/depot.ts"
import type { Event } from "../../src/depot/event.ts"
import * as MemoryDepot from "../../src/depot/memory.ts"
import { DepotStore } from "../../src/depot/store.ts"
import { why } from "../../src/lineage/provenance.ts"
import * as MemoryModels from "../../src/readmodel/memory.ts"
import { ReadModelStore } from "../../src/readmodel/store.ts"
import type { Declarations } from "../../src/runtime/engine.ts"
import { parseTemplate } from "../../src/template/load.ts"
import type { RowKey } from "../../src/template/template.ts"
import * as Topology from "../../src/topology/topology.ts"
import { withEngine } from "../support/engine.ts"
import { depotEvents, type Stores } from "../support/engine-properties.ts"
import { cascadeDeclarations, settleCascades } from "./support.ts"

const template = (text: string) => Effect.runSync(parseTemplate(text, "test.toml"))

/** Rows keyed by owner, loaded by a custom prefetch: outside the key-history rule. */
const byOwner = Topology.make({
  name: "by_owner",
  sources: [accounts],
  readModels: ["tst_owner"],
  prefetch: (e) =>
    e.type === "Opened" ? [{ template: "tst_owner", key: [(e.payload as { owner: string }).owner] }] : [],
  handle: Topology.match(accounts, {
    Opened: (p, e, ctx) => ctx.put("tst_owner", { owner: p.owner, account: e.key }),
  }),
})

/** The same rows without a custom prefetch: the row's key is not the event's. */
const byOwnerPlain = Topology.make({
  name: "by_owner_plain",
  sources: [accounts],
  readModels: ["tst_owner2"],
  handle: Topology.match(accounts, {
    Opened: (p, e, ctx) => ctx.put("tst_owner2", { owner: p.owner, account: e.key }),
  }),
})

/** A second source sharing the account key space. */
const notes = Depot.make({ name: "notes", partitions: 2, key: "account id", events: { Noted: Schema.Struct({}) } })
const tally = Topology.make({
  name: "tally",
  sources: [accounts, notes],
  readModels: ["tst_tally"],
  handle: (e, ctx) =>
    Effect.gen(function* () {
      const row = yield* ctx.get("tst_tally", e.key)
      yield* ctx.put("tst_tally", { account: e.key, n: ((row?.n as number | undefined) ?? 0) + 1 })
    }),
})

let decl: Declarations
let stores: Stores
let events: ReadonlyArray<Event>

beforeAll(async () => {
  const base = await cascadeDeclarations()
  decl = {
    depots: [...base.depots, notes],
    topologies: [...base.topologies, byOwner, byOwnerPlain, tally],
    templates: [
      ...base.templates,
      template(
        `tla = "TSO"\nname = "tst_owner"\nbackend = "rel"\nkey = ["owner"]\n[fields.owner]\ntype = "string"\nmax = 64\n[fields.account]\ntype = "string"\nmax = 64\n`,
      ),
      template(
        `tla = "TSP"\nname = "tst_owner2"\nbackend = "rel"\nkey = ["owner"]\n[fields.owner]\ntype = "string"\nmax = 64\n[fields.account]\ntype = "string"\nmax = 64\n`,
      ),
      template(
        `tla = "TST"\nname = "tst_tally"\nbackend = "rel"\nkey = ["account"]\n[fields.account]\ntype = "string"\nmax = 64\n[fields.n]\ntype = "int"\n`,
      ),
      template(
        `tla = "TSU"\nname = "tst_unused"\nbackend = "rel"\nkey = ["k"]\n[fields.k]\ntype = "string"\nmax = 64\n`,
      ),
    ],
  }
  stores = await Effect.runPromise(Effect.map(MemoryModels.make, (models) => ({ depot: MemoryDepot.make(), models })))
  events = await Effect.runPromise(
    withEngine(stores, decl, (engine) =>
      Effect.gen(function* () {
        const publish = (depot: string, type: string, key: string, payload: unknown, id: string) =>
          engine.publish(depot, type, key, payload, { id })
        yield* publish("accounts", "Opened", "a", { owner: "Ada" }, "1")
        yield* publish("accounts", "Deposited", "a", { amount: 10 }, "2")
        yield* publish("accounts", "Withdrawn", "a", { amount: 30 }, "3")
        yield* publish("accounts", "Deposited", "a", { amount: 100 }, "4")
        yield* publish("accounts", "Withdrawn", "a", { amount: 500 }, "5")
        yield* publish("accounts", "Closed", "a", {}, "6")
        yield* publish("notes", "Noted", "a", {}, "7")
        yield* publish("chain", "Spread", "n", { ttl: 1, fan: 1, account: "b", amount: 5 }, "8")
        yield* settleCascades(engine)
        return yield* depotEvents(stores.depot, decl)
      }),
    ),
  )
})

const ask = (tpl: string, key: RowKey | string, limit?: number) =>
  Effect.runPromise(
    why(decl, tpl, key, limit === undefined ? {} : { limit }).pipe(
      Effect.provideService(DepotStore, stores.depot),
      Effect.provideService(ReadModelStore, stores.models),
    ),
  )
const refusal = (tpl: string, key: RowKey | string) =>
  Effect.runPromise(
    Effect.flip(
      why(decl, tpl, key).pipe(
        Effect.provideService(DepotStore, stores.depot),
        Effect.provideService(ReadModelStore, stores.models),
      ),
    ),
  )
const ofAccount = (depot: string, key: string) => events.filter((e) => e.depot === depot && e.key === key)

describe("why: the events behind a row", () => {
  it("lists the key's history up to beds_last_id, in order, for a row keyed by its event key", async () => {
    const p = await ask("acc_balance", "a")
    const history = ofAccount("accounts", "a")
    expect(p).toMatchObject({
      template: "acc_balance",
      key: ["a"],
      topology: "balances",
      rule: "key-history",
      omitted: 0,
    })
    expect(p.last.id).toBe(p.row.beds_last_id)
    expect(p.events.map((x) => x.event)).toEqual(history)
    expect(p.note).toContain("up to and including beds_last_id (version 6)")
  })

  it("stops at the last event that wrote the row: later events of the key the topology ignored are not listed", async () => {
    const p = await ask("ovd_state", "a")
    // overdraft ignores Closed, so its row's last event is the second withdrawal.
    expect(p.events.map((x) => x.event.type)).toEqual(["Opened", "Deposited", "Withdrawn", "Deposited", "Withdrawn"])
    expect(p.row).toMatchObject({ balance: -420 })
  })

  it("traces a derived row back through its causes", async () => {
    const p = await ask("alr_alert", "a")
    expect(p.rule).toBe("key-history")
    expect(p.events).toHaveLength(2)
    for (const { event, causes } of p.events) {
      expect(event.depot).toBe("alerts")
      expect(causes).toEqual([{ id: event.parent, event: events.find((e) => e.id === event.parent) }])
      expect(causes[0]?.event?.type).toBe("Withdrawn")
    }
    const viaChain = await ask("ovd_state", "b")
    const withdrawal = viaChain.events.at(-1)!
    expect(withdrawal.causes.map((c) => c.event?.depot)).toEqual(["chain", "chain"])
  })

  it("keeps the latest events within the limit and counts the rest", async () => {
    const p = await ask("acc_balance", "a", 2)
    expect(p.events.map((x) => x.event.version)).toEqual([5, 6])
    expect(p.omitted).toBe(4)
  })

  it("adds the key's events from a topology's other sources, up to its checkpoint", async () => {
    const p = await ask("tst_tally", "a")
    expect(p.rule).toBe("key-history")
    expect(p.row).toMatchObject({ n: 7 })
    expect(p.events).toHaveLength(7)
    expect(p.note).toContain("two depots share no order")
  })

  it("falls back to the last event, and says why, where the key-history rule does not hold", async () => {
    const custom = await ask("tst_owner", "Ada")
    expect(custom).toMatchObject({ rule: "last-event", topology: "by_owner" })
    expect(custom.events.map((x) => x.event.type)).toEqual(["Opened"])
    expect(custom.note).toContain("loads rows by its own prefetch")
    const plain = await ask("tst_owner2", "Ada")
    expect(plain.rule).toBe("last-event")
    expect(plain.note).toContain('is not the key "a" of its last event')
  })

  it("refuses what it cannot answer, with a code per reason", async () => {
    expect(await refusal("nope", "a")).toMatchObject({ code: "UNKNOWN_TEMPLATE" })
    expect(await refusal("tst_unused", "a")).toMatchObject({
      code: "UNKNOWN_TEMPLATE",
      message: expect.stringContaining("No declared topology writes"),
    })
    expect(await refusal("acc_balance", ["a", "b"])).toMatchObject({ code: "BAD_KEY" })
    expect(await refusal("acc_balance", "zz")).toMatchObject({ code: "NO_ROW" })
    const orphan = await Effect.runPromise(MemoryModels.make)
    await Effect.runPromise(orphan.ensure(decl.templates))
    await Effect.runPromise(
      orphan.commit({ topology: "balances", depot: "accounts", partition: 0 }, 0, [
        {
          template: "acc_balance",
          key: ["q"],
          row: { account_id: "q", owner: null, balance: 1, events: 1, status: "open", beds_last_id: "accounts:0:4242" },
        },
      ]),
    )
    const untraceable = await Effect.runPromise(
      Effect.flip(
        why(decl, "acc_balance", "q").pipe(
          Effect.provideService(DepotStore, stores.depot),
          Effect.provideService(ReadModelStore, orphan),
        ),
      ),
    )
    expect(untraceable).toMatchObject({ code: "UNTRACEABLE", message: expect.stringContaining("accounts:0:4242") })
  })
})
