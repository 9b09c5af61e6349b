/**
 * The engine over memory stores, as a specification of the write path and
 * of exactly-once projection. The same properties run against MariaDB in
 * engine.int.test.ts.
 */
import { Effect } from "effect"
import fc from "fast-check"
import { beforeAll, describe, expect, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import { alerts } from "../../depots/alerts.ts"
import { alertLog } from "../../projections/alert_log.ts"
import { balances } from "../../projections/balances.ts"
import { overdraft } from "../../projections/overdraft.ts"
import * as MemoryDepot from "../../src/depot/memory.ts"
import * as MemoryModels from "../../src/readmodel/memory.ts"
import type { Declarations } from "../../src/runtime/engine.ts"
import { loadTemplates } from "../../src/template/load.ts"
import type { Template } from "../../src/template/template.ts"
import * as Topology from "../../src/topology/topology.ts"
import { withEngine } from "../support/engine.ts"
import { engineProperties, historyArbitrary, runHistory } from "../support/engine-properties.ts"

let declarations: Declarations
beforeAll(async () => {
  const templates: ReadonlyArray<Template> = await Effect.runPromise(loadTemplates("templates"))
  declarations = { depots: [accounts], topologies: [balances], templates }
})

const freshStores = () =>
  Effect.runPromise(Effect.map(MemoryModels.make, (models) => ({ depot: MemoryDepot.make(), models })))

describe("engine (memory stores)", () => {
  it("replies at append with the event's position and version", async () => {
    const stores = await freshStores()
    const reply = await Effect.runPromise(
      withEngine(stores, declarations, (engine) =>
        engine.publish("accounts", "Opened", "acc-1", { owner: "Ada" }, { id: "m1", ack: "append" }),
      ),
    )
    expect(reply).toMatchObject({ ok: true, ack: "append", depot: "accounts", offset: 0, version: 1, duplicate: false })
    expect(reply.ok && reply.id).toMatch(/^accounts:\d+:0$/)
  })

  it("settle waits for derived events too: one call and a whole cascade is applied", async () => {
    const stores = await freshStores()
    const cascade: Declarations = {
      ...declarations,
      depots: [accounts, alerts],
      // alert_log slowed down, so the derived alerts are still being applied when the accounts side is done
      topologies: [
        balances,
        overdraft,
        Topology.make({
          name: alertLog.name,
          sources: alertLog.sources,
          readModels: alertLog.readModels,
          handle: (event, ctx) => Effect.andThen(Effect.sleep("1 millis"), alertLog.handle(event, ctx)),
        }),
      ],
    }
    const rows = await Effect.runPromise(
      withEngine(stores, cascade, (engine) =>
        Effect.gen(function* () {
          for (let i = 0; i < 400; i++)
            yield* engine.publish("accounts", "Opened", `acc-${i}`, { owner: "Ada" }, { id: `o${i}` })
          yield* Effect.forEach(
            Array.from({ length: 400 }, (_, i) => i),
            (i) => engine.publish("accounts", "Withdrawn", `acc-${i}`, { amount: 5 }, { id: `w${i}`, ack: "none" }),
            { concurrency: 400, discard: true },
          )
          yield* engine.settle()
          return yield* stores.models.scan("alr_alert")
        }),
      ),
    )
    // Every account went from 0 to -5: one alert each, through overdraft → alerts → alert_log.
    expect(rows).toHaveLength(400)
    expect(rows.every((r) => r.alerts === 1 && r.last_balance === -5)).toBe(true)
  })

  it("replies at full only after the topology applied the event, naming it and its value", async () => {
    const stores = await freshStores()
    const [reply, row] = await Effect.runPromise(
      withEngine(stores, declarations, (engine) =>
        Effect.gen(function* () {
          yield* engine.publish("accounts", "Opened", "acc-1", { owner: "Ada" }, { id: "m1" })
          const r = yield* engine.publish("accounts", "Deposited", "acc-1", { amount: 250 }, { id: "m2", ack: "full" })
          const rows = yield* stores.models.load("acc_balance", [["acc-1"]])
          return [r, rows.get("acc-1")] as const
        }),
      ),
    )
    expect(reply).toMatchObject({
      ok: true,
      ack: "full",
      applied: ["balances"],
      values: { balances: { balance: 250 } },
    })
    expect(row).toMatchObject({ account_id: "acc-1", owner: "Ada", balance: 250, events: 2, status: "open" })
    expect(row?.beds_last_id).toBe(reply.ok ? reply.id : "")
  })

  it("answers a repeated message_id with the original reply, marked duplicate, and appends nothing", async () => {
    const stores = await freshStores()
    const [a, b, head] = await Effect.runPromise(
      withEngine(stores, declarations, (engine) =>
        Effect.gen(function* () {
          const a = yield* engine.publish("accounts", "Deposited", "acc-1", { amount: 5 }, { id: "same" })
          const b = yield* engine.publish("accounts", "Deposited", "acc-1", { amount: 5 }, { id: "same", ack: "full" })
          const s = yield* engine.status()
          return [a, b, s.depots[0]?.partitions.reduce((n, p) => n + p.head, 0)] as const
        }),
      ),
    )
    expect(b).toMatchObject({ ok: true, duplicate: true, offset: a.ok ? a.offset : -1, id: a.ok ? a.id : "" })
    expect(head).toBe(1)
  })

  it("refuses a wrong expected version with VERSION_CONFLICT and the current version", async () => {
    const stores = await freshStores()
    const reply = await Effect.runPromise(
      withEngine(stores, declarations, (engine) =>
        Effect.gen(function* () {
          yield* engine.publish("accounts", "Opened", "acc-1", { owner: "Ada" }, { id: "m1" })
          yield* engine.publish("accounts", "Deposited", "acc-1", { amount: 1 }, { id: "m2", expect: 1 })
          return yield* engine.publish("accounts", "Deposited", "acc-1", { amount: 1 }, { id: "m3", expect: 1 })
        }),
      ),
    )
    expect(reply).toMatchObject({ ok: false, error: { code: "VERSION_CONFLICT", details: { expected: 1, actual: 2 } } })
  })

  it("property: replies match the model, and the read model equals the fold of the depot", async () => {
    await fc.assert(
      fc.asyncProperty(historyArbitrary, async (history) => {
        const stores = await freshStores()
        await runHistory(stores, declarations, history)
      }),
      { numRuns: 40 },
    )
  })

  engineProperties("memory", freshStores, () => declarations)
})
