/**
 * x-beds-parent through the engine: the same path every transport takes
 * (Engine.submit with the header's value), over memory stores.
 */
import { Effect } from "effect"
import { beforeAll, describe, expect, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import { alerts } from "../../depots/alerts.ts"
import { alertLog } from "../../projections/alert_log.ts"
import { balances } from "../../projections/balances.ts"
import { overdraft } from "../../projections/overdraft.ts"
import { settleCascades } from "../../src/cli/project.ts"
import * as MemoryDepot from "../../src/depot/memory.ts"
import * as Lineage from "../../src/lineage/lineage-id.ts"
import * as MemoryModels from "../../src/readmodel/memory.ts"
import { type Declarations, defaultOptions, type EngineShape } from "../../src/runtime/engine.ts"
import { loadTemplates } from "../../src/template/load.ts"
import type { IncomingCommand, Reply } from "../../src/transport/protocol.ts"
import { withEngine } from "../support/engine.ts"
import { depotEvents, type Stores } from "../support/engine-properties.ts"

let decl: Declarations
beforeAll(async () => {
  decl = {
    depots: [accounts, alerts],
    topologies: [balances, overdraft, alertLog],
    templates: (await Effect.runPromise(loadTemplates("templates"))).filter((t) => t.backend === "rel"),
  }
})

const freshStores = (): Promise<Stores> =>
  Effect.runPromise(Effect.map(MemoryModels.make, (models) => ({ depot: MemoryDepot.make(), models })))

/** A command as a transport hands it over: raw JSON body, headers as strings. */
const command = (messageId: string, parent: string | undefined, key = "acc-1"): IncomingCommand => ({
  depot: "accounts",
  type: "Deposited",
  key,
  messageId,
  body: { raw: '{"amount":5}' },
  parent,
})

const inEngine = <A>(
  f: (engine: EngineShape, stores: Stores) => Effect.Effect<A, unknown>,
  allowExternalParents = false,
): Promise<A> =>
  freshStores().then((stores) =>
    Effect.runPromise(
      withEngine(stores, decl, (engine) => f(engine, stores), { ...defaultOptions, allowExternalParents }),
    ),
  )

const okId = (r: Reply): string => {
  if (!r.ok) throw new Error(`expected an ok reply, got ${JSON.stringify(r)}`)
  return r.id
}

describe("x-beds-parent through the engine", () => {
  it("refuses a malformed parent with BAD_PARENT and appends nothing", async () => {
    const [replies, heads] = await inEngine((engine) =>
      Effect.gen(function* () {
        const replies = []
        for (const parent of [
          "nope",
          "accounts:1",
          "Accounts:0:1",
          "accounts:0:1/",
          "accounts:0:1//x.0",
          "a".repeat(800),
        ])
          replies.push(yield* engine.submit(command(`m-${parent.length}-${parent.slice(0, 8)}`, parent)))
        const s = yield* engine.status()
        return [replies, s.depots.flatMap((d) => d.partitions.map((p) => p.head))] as const
      }),
    )
    for (const r of replies)
      expect(r).toMatchObject({
        ok: false,
        error: { code: "BAD_PARENT", message: expect.stringContaining("is not a lineage ID") },
      })
    expect(heads.every((h) => h === 0)).toBe(true)
  })

  it("refuses a well-formed parent that names no stored event with UNKNOWN_PARENT, naming the setting that allows it", async () => {
    const [reply, head] = await inEngine((engine) =>
      Effect.gen(function* () {
        const reply = yield* engine.submit(command("m1", "accounts:2:40/overdraft.0"))
        return [reply, (yield* engine.status()).depots[0]?.partitions.reduce((n, p) => n + p.head, 0)] as const
      }),
    )
    expect(reply).toMatchObject({
      ok: false,
      error: { code: "UNKNOWN_PARENT", message: expect.stringContaining("engine.allow_external_parents") },
    })
    expect(head).toBe(0)
  })

  it("adopts a command under a stored parent: its ID extends the parent's with its own position", async () => {
    const { parent, child, stored } = await inEngine((engine, stores) =>
      Effect.gen(function* () {
        const parent = okId(yield* engine.publish("accounts", "Opened", "acc-9", { owner: "Ada" }, { id: "p" }))
        const child = yield* engine.submit(command("c", parent, "acc-1"))
        return { parent, child, stored: yield* stores.depot.byId(okId(child)) }
      }),
    )
    expect(child).toMatchObject({ ok: true, duplicate: false })
    const c = child as Extract<Reply, { ok: true }>
    expect(c.id).toBe(Lineage.adopted(parent, "accounts", c.partition, c.offset))
    expect(stored).toMatchObject({ id: c.id, parent, root: parent, messageId: "c" })
    expect(Lineage.ancestors(c.id)).toEqual([parent])
  })

  it("adopts under a derived parent in another depot, and the cascade continues below it", async () => {
    const { alert, child, events } = await inEngine((engine, stores) =>
      Effect.gen(function* () {
        const w = okId(yield* engine.publish("accounts", "Withdrawn", "acc-1", { amount: 9 }, { id: "w" }))
        yield* settleCascades(engine)
        const alert = `${w}/overdraft.0`
        // A client reacting to the alert withdraws again, citing it; that overdraws acc-2 in turn.
        const child = okId(
          yield* engine.submit({ ...command("r", alert, "acc-2"), type: "Withdrawn", body: { raw: '{"amount":3}' } }),
        )
        yield* settleCascades(engine)
        return { alert, child, events: yield* depotEvents(stores.depot, decl) }
      }),
    )
    expect(Lineage.parentOf(child)).toBe(alert)
    expect(Lineage.rootOf(child)).toBe(Lineage.rootOf(alert))
    const grandchild = events.find((e) => e.parent === child)
    expect(grandchild).toMatchObject({ id: `${child}/overdraft.0`, depot: "alerts", root: Lineage.rootOf(alert) })
    expect(Lineage.depth(grandchild!.id)).toBe(3)
  })

  it("answers a repeat with the original, even if the repeat names another parent", async () => {
    const [a, b] = await inEngine((engine) =>
      Effect.gen(function* () {
        const p1 = okId(yield* engine.publish("accounts", "Opened", "x", { owner: "A" }, { id: "p1" }))
        const p2 = okId(yield* engine.publish("accounts", "Opened", "y", { owner: "B" }, { id: "p2" }))
        return [yield* engine.submit(command("same", p1)), yield* engine.submit(command("same", p2))] as const
      }),
    )
    expect(b).toMatchObject({ ok: true, duplicate: true, id: okId(a) })
  })

  it("treats an empty header as no parent", async () => {
    const reply = await inEngine((engine) => engine.submit(command("e", "")))
    expect(okId(reply)).toMatch(/^accounts:\d+:0$/)
  })

  it("with engine.allow_external_parents, adopts under a parent no depot holds", async () => {
    const reply = await inEngine((engine) => engine.submit(command("x", "billing:0:17/invoice.2")), true)
    const c = reply as Extract<Reply, { ok: true }>
    expect(c.id).toBe(Lineage.adopted("billing:0:17/invoice.2", "accounts", c.partition, c.offset))
    // A malformed one is still refused.
    const bad = await inEngine((engine) => engine.submit(command("y", "billing/x")), true)
    expect(bad).toMatchObject({ ok: false, error: { code: "BAD_PARENT" } })
  })
})
