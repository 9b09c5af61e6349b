/**
 * The audit over the ports, on a depot broken on purpose: the events of a
 * real cascade are served by a minimal adapter over a plain list, which is
 * then edited the ways a damaged store could be. Each break must be found
 * and named; the untouched depot must pass. The same breaks are made in
 * MariaDB itself in audit.int.test.ts.
 */
import { Effect } from "effect"
import fc from "fast-check"
import { beforeAll, describe, expect, it } from "vitest"
import type { Event } from "../../src/depot/event.ts"
import * as MemoryDepot from "../../src/depot/memory.ts"
import { DepotStore, type DepotStoreShape } from "../../src/depot/store.ts"
import { type AuditOptions, type AuditReport, audit, CHECKS } from "../../src/lineage/audit.ts"
import * as Lineage from "../../src/lineage/lineage-id.ts"
import * as MemoryModels from "../../src/readmodel/memory.ts"
import { ReadModelStore, type ReadModelStoreShape } from "../../src/readmodel/store.ts"
import type { Declarations } from "../../src/runtime/engine.ts"
import { withEngine } from "../support/engine.ts"
import { depotEvents, type Stores } from "../support/engine-properties.ts"
import { cascadeDeclarations, settleCascades } from "./support.ts"

/** A depot store over a list of events, served exactly as listed: it enforces nothing, like a damaged table. */
const listStore = (events: ReadonlyArray<Event>): DepotStoreShape => {
  const inOrder = (depot: string, partition: number) =>
    events.filter((e) => e.depot === depot && e.partition === partition).sort((a, b) => a.offset - b.offset)
  const none = () => Effect.die(new Error("the audit must not write"))
  return {
    open: () => Effect.void,
    append: none,
    read: (depot, partition, from, limit) =>
      Effect.sync(() =>
        inOrder(depot, partition)
          .filter((e) => e.offset >= from)
          .slice(0, limit),
      ),
    head: (depot, partition) => Effect.sync(() => Math.max(-1, ...inOrder(depot, partition).map((e) => e.offset)) + 1),
    version: (depot, _p, key) => Effect.sync(() => events.filter((e) => e.depot === depot && e.key === key).length),
    byMessageId: (depot, messageId) =>
      Effect.sync(() => events.find((e) => e.depot === depot && e.messageId === messageId)),
    byId: (id) => Effect.sync(() => events.find((e) => e.id === id)),
    descendants: (id, limit) =>
      Effect.sync(() =>
        events
          .filter((e) => Lineage.isAncestor(id, e.id))
          .sort((a, b) => (a.id < b.id ? -1 : 1))
          .slice(0, limit),
      ),
    byKey: (depot, key, from, limit) =>
      Effect.sync(() =>
        events
          .filter((e) => e.depot === depot && e.key === key && e.version >= from)
          .sort((a, b) => a.version - b.version)
          .slice(0, limit),
      ),
  }
}

let decl: Declarations
let clean: ReadonlyArray<Event>
let models: ReadModelStoreShape

beforeAll(async () => {
  decl = await cascadeDeclarations()
  const stores: Stores = await Effect.runPromise(
    Effect.map(MemoryModels.make, (m) => ({ depot: MemoryDepot.make(), models: m })),
  )
  clean = await Effect.runPromise(
    withEngine(stores, decl, (engine) =>
      Effect.gen(function* () {
        yield* engine.publish("accounts", "Opened", "a", { owner: "Ada" }, { id: "o" })
        yield* engine.publish("accounts", "Deposited", "a", { amount: 10 }, { id: "d" })
        const w = yield* engine.publish("accounts", "Withdrawn", "a", { amount: 30 }, { id: "w" })
        yield* engine.publish("chain", "Spread", "n", { ttl: 2, fan: 2, account: "b", amount: 7 }, { id: "s" })
        yield* settleCascades(engine)
        yield* engine.publish("accounts", "Deposited", "a", { amount: 1 }, { id: "adopted", parent: w.ok ? w.id : "" })
        yield* settleCascades(engine)
        return yield* depotEvents(stores.depot, decl)
      }),
    ),
  )
  models = stores.models
})

const auditOf = (events: ReadonlyArray<Event>, options: AuditOptions = {}, m = models): Promise<AuditReport> =>
  Effect.runPromise(
    audit(decl, options).pipe(
      Effect.provideService(DepotStore, listStore(events)),
      Effect.provideService(ReadModelStore, m),
    ),
  )

const count = (r: AuditReport, check: string) => r.checks.find((c) => c.name === check)?.violations
const only = (r: AuditReport, check: string) => r.violations.filter((v) => v.check === check)
const replace = (events: ReadonlyArray<Event>, id: string, change: (e: Event) => Event) =>
  events.map((e) => (e.id === id ? change(e) : e))
const find = (p: (e: Event) => boolean): Event => {
  const e = clean.find(p)
  if (e === undefined) throw new Error("fixture lacks the event")
  return e
}

describe("audit (over the ports)", () => {
  it("passes a clean depot, having checked every event, parent, row and emit", async () => {
    const r = await auditOf(clean)
    expect(r.violations).toEqual([])
    expect(r.ok).toBe(true)
    expect(r.checks.map((c) => c.name)).toEqual(CHECKS.map((c) => c.name))
    expect(r.events).toBe(clean.length)
    const checked = Object.fromEntries(r.checks.map((c) => [c.name, c.checked]))
    const children = clean.filter((e) => e.parent !== null).length
    expect(checked).toMatchObject({ offsets: clean.length, ids: clean.length, parents: children, order: children })
    expect(checked.read_models).toBeGreaterThan(0)
    expect(checked.emits).toBe(clean.filter((e) => /\/[a-z_]+\.\d+$/.test(e.id)).length)
  })

  it("names a child whose parent was deleted, and the gap the deletion left", async () => {
    const alert = find((e) => e.depot === "alerts")
    const parent = find((e) => e.id === alert.parent)
    const r = await auditOf(clean.filter((e) => e.id !== parent.id))
    expect(only(r, "parents")).toContainEqual(
      expect.objectContaining({
        depot: "alerts",
        partition: alert.partition,
        offset: alert.offset,
        id: alert.id,
        message: expect.stringContaining(`parent ${parent.id} is not stored`),
      }),
    )
    expect(only(r, "offsets")).toContainEqual(
      expect.objectContaining({
        depot: parent.depot,
        partition: parent.partition,
        message: `offset ${parent.offset} is missing`,
      }),
    )
    expect(r.ok).toBe(false)
  })

  it("property: finds an offset taken twice wherever the page boundaries fall", async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 2, max: 8 }), fc.nat({ max: clean.length - 1 }), async (pageSize, i) => {
        const victim = clean[i] as Event
        const copy: Event = { ...victim, id: `${victim.depot}:${victim.partition}:99999`, messageId: "copy" }
        const r = await auditOf([...clean, copy], { pageSize })
        expect(count(r, "offsets")).toBe(1)
        expect(only(r, "offsets")[0]).toMatchObject({
          depot: victim.depot,
          partition: victim.partition,
          offset: victim.offset,
          message: expect.stringMatching(new RegExp(`^offset ${victim.offset} is taken twice`)),
        })
      }),
      { numRuns: 40 },
    )
  })

  it("names a child appended before its parent in the same partition", async () => {
    // The first spread child under the seed's own key lands in the seed's partition.
    const child = find((e) => e.depot === "chain" && Lineage.depth(e.id) === 2 && e.id.endsWith("/spread.0/spread.0"))
    const parent = find((e) => e.id === child.parent)
    expect(parent.partition).toBe(child.partition)
    const swapped = clean.map((e) =>
      e.id === child.id ? { ...e, offset: parent.offset } : e.id === parent.id ? { ...e, offset: child.offset } : e,
    )
    const r = await auditOf(swapped)
    expect(only(r, "order")).toEqual([
      expect.objectContaining({
        id: child.id,
        offset: parent.offset,
        message: `appended at offset ${parent.offset}, before its parent ${parent.id} at offset ${child.offset}`,
      }),
    ])
  })

  it("names a child older than its parent in another partition", async () => {
    const alert = find((e) => e.depot === "alerts")
    const r = await auditOf(replace(clean, alert.id, (e) => ({ ...e, time: e.time - 1000 })))
    expect(only(r, "order")).toEqual([
      expect.objectContaining({
        id: alert.id,
        message: expect.stringContaining("a child cannot be older than its parent"),
      }),
    ])
  })

  it("names parent and root fields that disagree with the ID, and a child whose root is not its parent's", async () => {
    const alert = find((e) => e.depot === "alerts")
    const r = await auditOf(replace(clean, alert.id, (e) => ({ ...e, root: "accounts:3:999" })))
    expect(only(r, "ids")).toEqual([
      expect.objectContaining({ id: alert.id, message: `root field is accounts:3:999, but the ID says ${alert.root}` }),
    ])
    expect(only(r, "roots")).toEqual([expect.objectContaining({ id: alert.id })])

    const adopted = find((e) => e.messageId === "adopted")
    const r2 = await auditOf(replace(clean, adopted.id, (e) => ({ ...e, parent: null })))
    expect(only(r2, "ids")).toEqual([
      expect.objectContaining({
        id: adopted.id,
        message: expect.stringContaining("parent field is null, but the ID says"),
      }),
    ])
  })

  it("names a cycle of parent links", async () => {
    const alert = find((e) => e.depot === "alerts")
    const root = find((e) => e.id === alert.parent)
    expect(root.parent).toBeNull()
    const r = await auditOf(replace(clean, root.id, (e) => ({ ...e, parent: alert.id })))
    expect(only(r, "cycles")).toEqual([
      expect.objectContaining({
        id: root.id,
        message: `parent links form a cycle: ${root.id} → ${alert.id} → ${root.id}`,
      }),
    ])
  })

  it("names a message_id used twice in a depot", async () => {
    const [first, second] = clean.filter((e) => e.depot === "accounts" && e.parent === null)
    const r = await auditOf(replace(clean, second!.id, (e) => ({ ...e, messageId: first!.messageId })))
    expect(only(r, "message_ids")).toEqual([
      expect.objectContaining({
        id: second!.id,
        message: `message_id ${JSON.stringify(first!.messageId)} is already held by ${first!.id} at ${first!.depot}/${first!.partition}@${first!.offset}`,
      }),
    ])
  })

  it("names an emitted event that is missing or not as emitted", async () => {
    const alert = find((e) => e.depot === "alerts")
    const r = await auditOf(
      replace(clean, alert.id, (e) => ({ ...e, payload: { ...(e.payload as object), balance: -1 } })),
    )
    expect(only(r, "emits")).toEqual([
      expect.objectContaining({ id: alert.id, message: expect.stringContaining("its payload is") }),
    ])
    const r2 = await auditOf(clean.filter((e) => e.id !== alert.id))
    expect(only(r2, "emits")).toEqual([
      expect.objectContaining({
        id: alert.parent,
        message: expect.stringContaining(`but no event ${alert.id} is stored`),
      }),
    ])
  })

  it("names the first differing rows of an edited read model, by template and key", async () => {
    const copy = await Effect.runPromise(MemoryModels.make)
    await Effect.runPromise(copy.ensure(decl.templates))
    for (const t of decl.topologies)
      for (const s of t.sources)
        for (let p = 0; p < s.partitions; p++) {
          const cp = { topology: t.name, depot: s.name, partition: p }
          const next = await Effect.runPromise(models.checkpoint(cp))
          await Effect.runPromise(copy.commit(cp, next, []))
        }
    const rowsOf = async (template: string) => Effect.runPromise(models.scan(template))
    const writes = []
    for (const template of ["acc_balance", "ovd_state", "alr_alert"])
      for (const row of await rowsOf(template)) writes.push({ template, key: [row.account_id as string], row })
    const acc = writes.find((w) => w.template === "acc_balance" && w.key[0] === "a")!
    writes.splice(writes.indexOf(acc), 1, { ...acc, row: { ...acc.row, balance: 12345 } })
    await Effect.runPromise(copy.commit({ topology: "x", depot: "y", partition: 0 }, 0, writes))
    const r = await auditOf(clean, {}, copy)
    expect(only(r, "read_models")).toEqual([
      {
        check: "read_models",
        template: "acc_balance",
        key: "a",
        message: `row a differs from the fold: balance is 12345, the fold says ${(acc.row.balance as number).toString()}`,
      },
    ])
  })

  it("does not report a topology that lags: rows are compared with the fold up to its checkpoint", async () => {
    const empty = await Effect.runPromise(MemoryModels.make)
    await Effect.runPromise(empty.ensure(decl.templates))
    const r = await auditOf(clean, {}, empty)
    expect(r.violations).toEqual([])
    expect(r.checks.find((c) => c.name === "emits")?.checked).toBe(0)
  })

  it("narrows to depots and topologies, and refuses names it does not know", async () => {
    const r = await auditOf(clean, { depots: ["alerts"] })
    expect(r).toMatchObject({ depots: ["alerts"], topologies: ["alert_log"], ok: true })
    expect(r.events).toBe(clean.filter((e) => e.depot === "alerts").length)
    const t = await auditOf(clean, { topologies: ["overdraft"] })
    expect(t).toMatchObject({ depots: ["accounts"], topologies: ["overdraft"], ok: true })
    const bad = await Effect.runPromise(
      Effect.flip(
        audit(decl, { depots: ["nope"] }).pipe(
          Effect.provideService(DepotStore, listStore(clean)),
          Effect.provideService(ReadModelStore, models),
        ),
      ),
    )
    expect(bad).toMatchObject({ code: "UNKNOWN_NAME", message: expect.stringContaining("accounts, alerts, chain") })
  })

  it("lists at most maxViolations per check and counts the rest", async () => {
    const r = await auditOf(
      clean.map((e) => ({ ...e, root: "accounts:0:77777" })),
      { maxViolations: 2 },
    )
    expect(count(r, "ids")).toBe(clean.length)
    expect(only(r, "ids")).toHaveLength(2)
    expect(r.unlisted).toBe(r.checks.reduce((n, c) => n + c.violations, 0) - r.violations.length)
  })
})
