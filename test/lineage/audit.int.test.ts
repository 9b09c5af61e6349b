/**
 * The audit on MariaDB, with each invariant broken on purpose in the tables
 * themselves (dropping the constraint that would prevent it first). Every
 * break must be found and named, both with the MariaDB look-ups and with the
 * plain port look-ups; the untouched depot must pass.
 */
import { Effect } from "effect"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import type { Event } from "../../src/depot/event.ts"
import { DepotStore } from "../../src/depot/store.ts"
import { type AuditLookups, type AuditOptions, type AuditReport, audit, portLookups } from "../../src/lineage/audit.ts"
import * as Lineage from "../../src/lineage/lineage-id.ts"
import { ReadModelStore } from "../../src/readmodel/store.ts"
import type { Declarations } from "../../src/runtime/engine.ts"
import { withEngine } from "../support/engine.ts"
import { depotEvents, type Stores } from "../support/engine-properties.ts"
import { mariaDbAvailable } from "../support/services.ts"
import { lineageMariaDbStores } from "./mariadb.ts"
import { cascadeDeclarations, settleCascades } from "./support.ts"

const available = await mariaDbAvailable()

describe.skipIf(!available)("audit on MariaDB, with invariants broken in the tables", () => {
  let decl: Declarations
  let maria: Awaited<ReturnType<typeof lineageMariaDbStores>>
  let stores: Stores
  let events: ReadonlyArray<Event>

  beforeAll(async () => {
    decl = await cascadeDeclarations()
    maria = await lineageMariaDbStores("audit")
  })
  afterAll(async () => maria?.close())

  beforeEach(async () => {
    stores = await maria.fresh()
    events = await Effect.runPromise(
      withEngine(stores, decl, (engine) =>
        Effect.gen(function* () {
          yield* engine.publish("accounts", "Opened", "a", { owner: "Ada" }, { id: "o" })
          yield* engine.publish("accounts", "Deposited", "a", { amount: 10 }, { id: "d" })
          const w = yield* engine.publish("accounts", "Withdrawn", "a", { amount: 30 }, { id: "w" })
          yield* engine.publish("chain", "Spread", "n", { ttl: 2, fan: 2, account: "b", amount: 7 }, { id: "s" })
          yield* settleCascades(engine)
          yield* engine.publish(
            "accounts",
            "Deposited",
            "a",
            { amount: 1 },
            { id: "adopted", parent: w.ok ? w.id : "" },
          )
          yield* settleCascades(engine)
          return yield* depotEvents(stores.depot, decl)
        }),
      ),
    )
  })

  /** Audits twice, with the MariaDB look-ups and with the port's, and expects the same findings. */
  const auditBoth = async (options: AuditOptions = {}): Promise<AuditReport> => {
    const run = (lookups: AuditLookups) =>
      Effect.runPromise(
        audit(decl, { ...options, lookups }).pipe(
          Effect.provideService(DepotStore, stores.depot),
          Effect.provideService(ReadModelStore, stores.models),
        ),
      )
    const sql = await run(await maria.lookups())
    const port = await run(portLookups(stores.depot))
    expect(port.checks).toEqual(sql.checks)
    return sql
  }
  const only = (r: AuditReport, check: string) => r.violations.filter((v) => v.check === check)
  const find = (p: (e: Event) => boolean): Event => {
    const e = events.find(p)
    if (e === undefined) throw new Error("fixture lacks the event")
    return e
  }

  it("passes the clean depot", async () => {
    const r = await auditBoth()
    expect(r.violations).toEqual([])
    expect(r.ok).toBe(true)
    expect(r.events).toBe(events.length)
  })

  it("names the child of a deleted parent", async () => {
    const alert = find((e) => e.depot === "alerts")
    await maria.sql("DELETE FROM beds_event WHERE id = ?", [alert.parent])
    const r = await auditBoth()
    expect(r.ok).toBe(false)
    // The alert and the command adopted under the withdrawal are both orphans now.
    expect(only(r, "parents")).toHaveLength(2)
    expect(only(r, "parents")).toContainEqual(
      expect.objectContaining({
        depot: "alerts",
        partition: alert.partition,
        offset: alert.offset,
        id: alert.id,
        message: expect.stringContaining(`parent ${alert.parent} is not stored`),
      }),
    )
  })

  it("names an offset taken twice once the primary key is dropped, wherever pages end", async () => {
    const victim = find((e) => e.depot === "chain" && e.offset === 1)
    await maria.sql("ALTER TABLE beds_event DROP PRIMARY KEY")
    await maria.sql(
      "INSERT INTO beds_event (depot, part, off, id, type, `key`, version, payload, time, parent, root, message_id, metadata) " +
        "SELECT depot, part, off, CONCAT(id, '/forged.0'), type, `key`, version, payload, time, id, root, 'forged', metadata FROM beds_event WHERE id = ?",
      [victim.id],
    )
    for (const pageSize of [2, 3, 1000]) {
      const r = await auditBoth({ pageSize })
      const found = only(r, "offsets")
      expect(found).toEqual([expect.objectContaining({ depot: "chain", partition: victim.partition, offset: 1 })])
      // Rows tied on an offset come back in no fixed order.
      const named = /^offset 1 is taken twice: by (\S+) and by (\S+)$/.exec(found[0]?.message ?? "")
      expect(named?.slice(1).sort()).toEqual([victim.id, `${victim.id}/forged.0`].sort())
    }
  })

  it("names an edited read-model row by template and key", async () => {
    await maria.sql("UPDATE acc_balance SET balance = balance + 1 WHERE account_id = 'a'")
    const r = await auditBoth()
    expect(r.violations).toEqual([
      {
        check: "read_models",
        template: "acc_balance",
        key: "a",
        message: "row a differs from the fold: balance is -18, the fold says -19",
      },
    ])
  })

  it("names a child moved before its parent in the same partition", async () => {
    const child = find((e) => e.depot === "chain" && Lineage.depth(e.id) === 2 && e.id.endsWith("/spread.0/spread.0"))
    const parent = find((e) => e.id === child.parent)
    expect(parent.partition).toBe(child.partition)
    // Swap their offsets through a free one, under the primary key.
    await maria.sql("UPDATE beds_event SET off = 999999 WHERE id = ?", [parent.id])
    await maria.sql("UPDATE beds_event SET off = ? WHERE id = ?", [parent.offset, child.id])
    await maria.sql("UPDATE beds_event SET off = ? WHERE id = ?", [child.offset, parent.id])
    const r = await auditBoth()
    expect(r.violations).toEqual([
      expect.objectContaining({
        check: "order",
        depot: "chain",
        partition: child.partition,
        offset: parent.offset,
        id: child.id,
        message: `appended at offset ${parent.offset}, before its parent ${parent.id} at offset ${child.offset}`,
      }),
    ])
  })

  it("names a message_id used twice once its unique key is dropped", async () => {
    const [first, second] = events.filter((e) => e.depot === "accounts" && e.parent === null && e.partition === 0)
    expect(second).toBeDefined()
    await maria.sql("ALTER TABLE beds_event DROP INDEX uq_event_message")
    await maria.sql("UPDATE beds_event SET message_id = ? WHERE id = ?", [first!.messageId, second!.id])
    const r = await auditBoth()
    expect(only(r, "message_ids")).toEqual([
      expect.objectContaining({ id: expect.any(String), message: expect.stringContaining("is already held by") }),
    ])
  })

  it("names parent links that form a cycle, and the fields that disagree with the IDs", async () => {
    const alert = find((e) => e.depot === "alerts")
    await maria.sql("UPDATE beds_event SET parent = ? WHERE id = ?", [alert.id, alert.parent])
    await maria.sql("UPDATE beds_event SET root = 'accounts:3:999' WHERE id = ?", [alert.id])
    const r = await auditBoth()
    expect(only(r, "cycles")).toEqual([
      expect.objectContaining({
        message: `parent links form a cycle: ${alert.parent} → ${alert.id} → ${alert.parent}`,
      }),
    ])
    expect(
      only(r, "ids")
        .map((v) => v.id)
        .sort(),
    ).toEqual([alert.id, alert.parent].sort())
    // Each of the two now has a parent with another root.
    expect(
      only(r, "roots")
        .map((v) => v.id)
        .sort(),
    ).toEqual([alert.id, alert.parent].sort())
  })
})
