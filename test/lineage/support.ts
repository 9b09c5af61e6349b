/**
 * Cascades for lineage tests: the example domain (accounts → overdraft →
 * alerts → alert_log) plus a test-only depot whose topology fans out into
 * itself and then into accounts, so random histories build deep trees that
 * cross depots and partitions, and events adopted through x-beds-parent.
 */
import { Effect, Schema } from "effect"
import fc from "fast-check"
import { expect } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import { alerts } from "../../depots/alerts.ts"
import { alertLog } from "../../projections/alert_log.ts"
import { balances } from "../../projections/balances.ts"
import { overdraft } from "../../projections/overdraft.ts"
import { settleCascades as settleAll } from "../../src/cli/project.ts"
import * as Depot from "../../src/depot/depot.ts"
import type { Event } from "../../src/depot/event.ts"
import { DepotStore } from "../../src/depot/store.ts"
import { type AuditLookups, audit } from "../../src/lineage/audit.ts"
import * as Lineage from "../../src/lineage/lineage-id.ts"
import { ancestors, descendants, nodesOf } from "../../src/lineage/query.ts"
import { ReadModelStore } from "../../src/readmodel/store.ts"
import type { Declarations, EngineShape } from "../../src/runtime/engine.ts"
import { loadTemplates } from "../../src/template/load.ts"
import type { Row } from "../../src/template/template.ts"
import * as Topology from "../../src/topology/topology.ts"
import type { Reply } from "../../src/transport/protocol.ts"
import { withEngine } from "../support/engine.ts"
import { depotEvents, expectReadModelsEqualFold, type Stores } from "../support/engine-properties.ts"

/** A test depot whose events spread: each fans out into more of its own, the last generation into accounts. */
export const chain = Depot.make({
  name: "chain",
  partitions: 3,
  key: "node name",
  events: {
    Spread: Schema.Struct({
      ttl: Schema.Int,
      fan: Schema.Int,
      account: Schema.String,
      amount: Schema.Int.check(Schema.isGreaterThan(0)),
    }),
  },
})

/** Emits `fan` children into chain while ttl > 0 (some under the same key, so into the same partition), else a withdrawal. */
export const spread = Topology.make({
  name: "spread",
  sources: [chain],
  readModels: [],
  handle: Topology.match(chain, {
    Spread: (p, event, ctx) =>
      p.ttl > 0
        ? Effect.forEach(
            Array.from({ length: p.fan }, (_, i) => i),
            (i) =>
              ctx.emit("chain", "Spread", i === 0 ? event.key : `${event.key}.${i}`, {
                ...p,
                ttl: p.ttl - 1,
              }),
            { discard: true },
          )
        : ctx.emit("accounts", "Withdrawn", p.account, { amount: p.amount }),
  }),
})

/** The templates the example topologies write. */
export const exampleTemplates = ["acc_balance", "ovd_state", "alr_alert"]

/**
 * Lets every cascade finish, bounded: a stream that dies (an append it cannot
 * make) would otherwise leave the test waiting until its own timeout.
 */
export const settleCascades = (engine: EngineShape) =>
  settleAll(engine).pipe(
    Effect.timeoutOrElse({
      duration: "20 seconds",
      orElse: () =>
        Effect.die(
          new Error("the topologies did not catch up within 20 s: a stream died (see its log) or cannot keep up"),
        ),
    }),
  )

/** The example domain alone. */
export const exampleDeclarations = async (): Promise<Declarations> => ({
  depots: [accounts, alerts],
  topologies: [balances, overdraft, alertLog],
  templates: (await Effect.runPromise(loadTemplates("templates"))).filter((t) => exampleTemplates.includes(t.name)),
})

/** The example domain with the spreading test depot. */
export const cascadeDeclarations = async (): Promise<Declarations> => {
  const example = await exampleDeclarations()
  return { ...example, depots: [...example.depots, chain], topologies: [...example.topologies, spread] }
}

export type Step =
  | {
      readonly kind: "account"
      readonly type: "Opened" | "Deposited" | "Withdrawn"
      readonly key: string
      readonly amount: number
      readonly repeat: number | undefined
    }
  | {
      readonly kind: "chain"
      readonly key: string
      readonly ttl: number
      readonly fan: number
      readonly account: string
      readonly amount: number
    }
  | {
      readonly kind: "adopt"
      readonly pick: number
      readonly type: "Deposited" | "Withdrawn"
      readonly key: string
      readonly amount: number
    }
  | { readonly kind: "settle" }

const accountKey = fc.constantFrom("a", "b", "c", "d", "e")

/** Histories rich in overdrafts, fan-outs and adopted children; some commands repeat an earlier message_id. */
export const stepsArbitrary = fc.array(
  fc.oneof(
    {
      weight: 6,
      arbitrary: fc.record({
        kind: fc.constant("account" as const),
        type: fc.constantFrom("Opened" as const, "Deposited" as const, "Withdrawn" as const, "Withdrawn" as const),
        key: accountKey,
        amount: fc.integer({ min: 1, max: 1500 }),
        repeat: fc.option(fc.nat({ max: 30 }), { nil: undefined, freq: 8 }),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant("chain" as const),
        key: fc.constantFrom("n1", "n2", "n3", "n4"),
        ttl: fc.integer({ min: 0, max: 2 }),
        fan: fc.integer({ min: 1, max: 3 }),
        account: accountKey,
        amount: fc.integer({ min: 1, max: 1500 }),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant("adopt" as const),
        pick: fc.nat(),
        type: fc.constantFrom("Deposited" as const, "Withdrawn" as const),
        key: accountKey,
        amount: fc.integer({ min: 1, max: 1500 }),
      }),
    },
    { weight: 1, arbitrary: fc.constant({ kind: "settle" as const }) },
  ),
  { minLength: 1, maxLength: 30 },
)

/**
 * Publishes the steps one by one and lets every cascade finish. An adopted
 * command names an event already stored (after a settle, derived ones too)
 * as its x-beds-parent.
 */
export const publishSteps = (
  engine: EngineShape,
  depot: Stores["depot"],
  decl: Declarations,
  steps: ReadonlyArray<Step>,
) =>
  Effect.gen(function* () {
    const known: Array<string> = []
    const replies: Array<Reply> = []
    for (let i = 0; i < steps.length; i++) {
      const s = steps[i] as Step
      let reply: Reply | undefined
      if (s.kind === "settle") {
        yield* settleCascades(engine)
        known.splice(0, known.length, ...(yield* depotEvents(depot, decl)).map((e) => e.id))
        continue
      }
      if (s.kind === "account")
        reply = yield* engine.publish(
          "accounts",
          s.type,
          s.key,
          s.type === "Opened" ? { owner: `owner-${s.key}` } : { amount: s.amount },
          { id: `m-${s.repeat !== undefined && s.repeat < i ? s.repeat : i}`, ack: i % 3 === 0 ? "full" : "append" },
        )
      else if (s.kind === "chain")
        reply = yield* engine.publish(
          "chain",
          "Spread",
          s.key,
          { ttl: s.ttl, fan: s.fan, account: s.account, amount: s.amount },
          { id: `m-${i}` },
        )
      else if (known.length > 0)
        reply = yield* engine.publish(
          "accounts",
          s.type,
          s.key,
          { amount: s.amount },
          {
            id: `m-${i}`,
            parent: known[s.pick % known.length] as string,
          },
        )
      if (reply === undefined) continue
      expect(reply).toMatchObject({ ok: true })
      replies.push(reply)
      if (reply.ok && !known.includes(reply.id)) known.push(reply.id)
    }
    yield* settleCascades(engine)
    return replies
  })

/** Every row of every declared template. */
export const allRows = (models: Stores["models"], decl: Declarations) =>
  Effect.gen(function* () {
    const out: Record<string, ReadonlyArray<Row>> = {}
    for (const t of decl.templates) out[t.name] = yield* models.scan(t.name)
    return out
  })

const provideStores = <A, E>(stores: Stores, effect: Effect.Effect<A, E, DepotStore | ReadModelStore>) =>
  effect.pipe(Effect.provideService(DepotStore, stores.depot), Effect.provideService(ReadModelStore, stores.models))

/**
 * The lineage properties of a settled depot: ancestors read from each ID are
 * the stored parent chain; descendants from one range scan are the events
 * found by walking children; the query's tree agrees with both.
 */
export const expectLineageConsistent = (stores: Stores, events: ReadonlyArray<Event>) =>
  Effect.gen(function* () {
    const byId = new Map(events.map((e) => [e.id, e]))
    expect(byId.size).toBe(events.length)
    const children = new Map<string, Array<Event>>()
    for (const e of events) if (e.parent !== null) children.set(e.parent, [...(children.get(e.parent) ?? []), e])
    for (const e of events) {
      // Up: the stored parent chain, event by event.
      const chainIds: Array<string> = []
      for (let cur: Event | undefined = e; cur?.parent != null; cur = byId.get(cur.parent)) chainIds.push(cur.parent)
      expect(chainIds).toEqual(Lineage.ancestors(e.id))
      const above = yield* provideStores(stores, ancestors(e.id))
      expect(above.map((a) => a.id)).toEqual(chainIds)
      expect(above.map((a) => a.event)).toEqual(chainIds.map((id) => byId.get(id)))
      expect(e.root).toBe(Lineage.rootOf(e.id))
      if (e.parent !== null)
        expect(e.messageId === e.id || Lineage.positionOfSegment(e.id.split("/").at(-1) ?? "") !== undefined).toBe(true)

      // Down: walking children versus one range scan versus the query's tree.
      const walked: Array<string> = []
      const walk = (x: Event) => {
        for (const c of children.get(x.id) ?? []) {
          walked.push(c.id)
          walk(c)
        }
      }
      walk(e)
      const scanned = (yield* stores.depot.descendants(e.id, 1_000_000)).map((d) => d.id)
      expect(scanned).toEqual([...walked].sort())
      expect([...scanned].sort()).toEqual(scanned)
      const below = yield* provideStores(stores, descendants(e.id))
      const nodes = nodesOf(below.tree)
      expect(below.count).toBe(walked.length)
      expect(below.truncated).toBe(false)
      expect(
        nodes
          .slice(1)
          .map((n) => n.id)
          .sort(),
      ).toEqual([...walked].sort())
      for (const n of nodes) {
        expect(n.event).toEqual(byId.get(n.id))
        for (const c of n.children) expect(c.event?.parent).toBe(n.id)
      }
    }
  })

/** Audits with the given look-ups (default: over the port) and expects a clean report. */
export const expectAuditClean = (stores: Stores, decl: Declarations, lookups?: AuditLookups) =>
  Effect.gen(function* () {
    const report = yield* provideStores(stores, audit(decl, lookups === undefined ? {} : { lookups }))
    expect(report.violations).toEqual([])
    expect(report.ok).toBe(true)
    return report
  })

/**
 * The whole property for one history: run the cascades, check lineage and
 * read models, audit, then rebuild every read model from scratch on fresh
 * read-model stores and check that nothing changed: the same events (no
 * derived event appended twice), the same IDs, the same rows.
 */
export const cascadeProperty = async (
  fresh: () => Promise<Stores>,
  freshModels: (stores: Stores) => Promise<Stores>,
  decl: Declarations,
  steps: ReadonlyArray<Step>,
  lookups?: (stores: Stores) => Promise<AuditLookups>,
) => {
  const stores = await fresh()
  const first = await Effect.runPromise(
    withEngine(stores, decl, (engine) =>
      Effect.gen(function* () {
        yield* publishSteps(engine, stores.depot, decl, steps)
        yield* expectReadModelsEqualFold(stores, decl)
        const events = yield* depotEvents(stores.depot, decl)
        yield* expectLineageConsistent(stores, events)
        return { events, rows: yield* allRows(stores.models, decl) }
      }),
    ),
  )
  await Effect.runPromise(expectAuditClean(stores, decl, lookups ? await lookups(stores) : undefined))

  const rebuilt = await freshModels(stores)
  const second = await Effect.runPromise(
    withEngine(rebuilt, decl, (engine) =>
      Effect.gen(function* () {
        yield* settleCascades(engine)
        return { events: yield* depotEvents(rebuilt.depot, decl), rows: yield* allRows(rebuilt.models, decl) }
      }),
    ),
  )
  expect(second.events).toEqual(first.events)
  expect(second.rows).toEqual(first.rows)
  await Effect.runPromise(expectAuditClean(rebuilt, decl, lookups ? await lookups(rebuilt) : undefined))
  return first.events
}
