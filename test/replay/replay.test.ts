/**
 * Replay on memory stores: the shared properties (properties.ts), then the
 * behaviour around them — snapshots, derived events, bad input, locks,
 * stale fences and stale shadows, the version step.
 */
import { Effect, Exit, Scope } from "effect"
import { beforeAll, describe, expect, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import { alerts } from "../../depots/alerts.ts"
import { alertLog } from "../../projections/alert_log.ts"
import { balances, step } from "../../projections/balances.ts"
import { overdraft } from "../../projections/overdraft.ts"
import * as MemoryDepot from "../../src/depot/memory.ts"
import * as MemoryModels from "../../src/readmodel/memory.ts"
import { parseBound } from "../../src/replay/bounds.ts"
import type { ReplayError } from "../../src/replay/error.ts"
import type { Declarations } from "../../src/runtime/engine.ts"
import { loadTemplates } from "../../src/template/load.ts"
import type { Template } from "../../src/template/template.ts"
import * as Topology from "../../src/topology/topology.ts"
import { withEngine } from "../support/engine.ts"
import { depotEvents, expectReadModelsEqualFold, type Stores } from "../support/engine-properties.ts"
import { history, publishAll, replayFailure, replayProperties, replayUntilKilled, runReplay } from "./properties.ts"

let templates: ReadonlyArray<Template>
let declarations: Declarations
beforeAll(async () => {
  templates = await Effect.runPromise(loadTemplates("templates"))
  declarations = { depots: [accounts], topologies: [balances], templates }
})

const freshStores = (): Promise<Stores> =>
  Effect.runPromise(Effect.map(MemoryModels.make, (models) => ({ depot: MemoryDepot.make(), models })))

/** Runs `f` beside an engine that has appended and projected a history. */
const withHistory = <A>(
  stores: Stores,
  decl: Declarations,
  n: number,
  f: (engine: Parameters<Parameters<typeof withEngine>[2]>[0]) => Effect.Effect<A, unknown>,
) =>
  Effect.runPromise(
    withEngine(stores, decl, (engine) =>
      Effect.gen(function* () {
        yield* publishAll(engine, history(n))
        yield* engine.settle()
        return yield* f(engine)
      }),
    ) as Effect.Effect<A, never>,
  )

/** The reference model of `balances` after the events of each partition up to `until` (exclusive). */
const foldUntil = (
  events: ReadonlyArray<{
    key: string
    type: string
    payload: unknown
    partition: number
    offset: number
    time: number
  }>,
  keep: (e: { partition: number; offset: number; time: number }) => boolean,
) => {
  const rows = new Map<string, ReturnType<typeof step>>()
  for (const e of events) if (keep(e)) rows.set(e.key, step(rows.get(e.key), e.key, e.type, e.payload))
  return rows
}

describe("replay (memory stores)", () => {
  replayProperties("memory", freshStores, () => declarations)

  describe("bounds", () => {
    it("reads offsets, per-partition offsets, ISO times and epoch milliseconds", () => {
      expect(parseBound("1234", "--to")).toMatchObject({ kind: "offset", offset: 1234 })
      expect(parseBound("0:120,3:98", "--to")).toMatchObject({
        kind: "offsets",
        offsets: [
          { partition: 0, offset: 120 },
          { partition: 3, offset: 98 },
        ],
      })
      expect(parseBound("accounts/1:5", "--to")).toMatchObject({
        kind: "offsets",
        offsets: [{ depot: "accounts", partition: 1, offset: 5 }],
      })
      expect(parseBound("2026-01-05T12:00:00Z", "--to")).toMatchObject({
        kind: "time",
        time: Date.parse("2026-01-05T12:00:00Z"),
      })
      expect(parseBound("@1767614400000", "--from")).toMatchObject({ kind: "time", time: 1767614400000 })
      for (const bad of ["", "abc", "-1", "1.5", "0:x", "2026-13-45T99:99"])
        expect(parseBound(bad, "--to")).toMatchObject({ _tag: "ReplayError", code: "BAD_BOUND" })
    })
  })

  describe("refusals", () => {
    it("unknown topology, from > to, an offset past the head, a time before the first event, --verify with a range", async () => {
      const stores = await freshStores()
      const codes = await withHistory(stores, declarations, 40, () =>
        Effect.gen(function* () {
          const bound = (s: string) => parseBound(s, "x") as Exclude<ReturnType<typeof parseBound>, ReplayError>
          const events = yield* depotEvents(stores.depot, declarations)
          const first = Math.min(...events.map((e) => e.time))
          return [
            yield* replayFailure(stores, declarations, { topology: "nope" }),
            yield* replayFailure(stores, declarations, { topology: "balances", from: bound("5"), to: bound("3") }),
            yield* replayFailure(stores, declarations, { topology: "balances", to: bound("999") }),
            yield* replayFailure(stores, declarations, { topology: "balances", to: bound("0:999") }),
            yield* replayFailure(stores, declarations, { topology: "balances", to: bound("7:1") }),
            yield* replayFailure(stores, declarations, { topology: "balances", to: bound(`@${first - 1}`) }),
            yield* replayFailure(stores, declarations, { topology: "balances", to: bound("3"), verify: true }),
          ].map((e) => [e.code, e.message])
        }),
      )
      expect(codes.map(([c]) => c)).toEqual([
        "UNKNOWN_TOPOLOGY",
        "BAD_RANGE",
        "OFFSET_PAST_HEAD",
        "OFFSET_PAST_HEAD",
        "BAD_BOUND",
        "TIME_BEFORE_FIRST_EVENT",
        "BAD_OPTIONS",
      ])
      expect(codes[0]?.[1]).toContain("known: balances")
    })

    it("a second replay of the same topology fails with REPLAY_RUNNING and names the holder", async () => {
      const stores = await freshStores()
      const e = await withHistory(stores, declarations, 10, () =>
        Effect.scoped(
          Effect.gen(function* () {
            const ops = stores.models.replay
            if (ops === undefined) throw new Error("no replay ops")
            yield* ops.lock("balances", { host: "other-host", pid: 4242, since: 0 })
            return yield* replayFailure(stores, declarations, { topology: "balances" })
          }),
        ),
      )
      expect(e.code).toBe("REPLAY_RUNNING")
      expect(e.message).toContain("other-host")
      expect(e.message).toContain("4242")
    })
  })

  describe("snapshots", () => {
    it("--to an offset builds the model as of that offset beside the live one, not swapped", async () => {
      const stores = await freshStores()
      await withHistory(stores, declarations, 60, () =>
        Effect.gen(function* () {
          const liveBefore = yield* stores.models.scan("acc_balance")
          const summary = yield* runReplay(stores, declarations, {
            topology: "balances",
            to: parseBound("4", "--to") as never,
          })
          expect(summary).toMatchObject({
            mode: "snapshot",
            variant: "at_4",
            tables: [{ template: "acc_balance", table: "acc_balance__at_4" }],
          })
          expect(yield* stores.models.scan("acc_balance")).toEqual(liveBefore)
          const ops = stores.models.replay
          if (ops === undefined) throw new Error("no replay ops")
          const events = yield* depotEvents(stores.depot, declarations)
          const want = foldUntil(events, (e) => e.offset <= 4)
          const copy = yield* ops.variant(
            "balances",
            templates.filter((t) => t.name === "acc_balance"),
            summary.variant,
            summary.fingerprint,
          )
          expect(copy.resumed).toBe(true)
          const rows = yield* copy.store.scan("acc_balance")
          expect(Object.fromEntries(rows.map((r) => [r.account_id, { ...r, beds_last_id: undefined }]))).toEqual(
            Object.fromEntries([...want].map(([k, r]) => [k, { ...r, beds_last_id: undefined }])),
          )
          expect(summary.positions.every((p) => p.from === 0 && p.to <= 5)).toBe(true)
        }),
      )
    })

    it("--from/--to times pick events by their time stamps, per partition", async () => {
      const stores = await freshStores()
      await withHistory(stores, declarations, 30, () =>
        Effect.gen(function* () {
          const events = yield* depotEvents(stores.depot, declarations)
          const times = [...new Set(events.map((e) => e.time))].sort((a, b) => a - b)
          const lo = times[0] as number
          const hi = times[times.length - 1] as number
          const summary = yield* runReplay(stores, declarations, {
            topology: "balances",
            from: parseBound(`@${lo}`, "--from") as never,
            to: parseBound(`@${hi}`, "--to") as never,
          })
          expect(summary.mode).toBe("snapshot")
          expect(summary.variant).toBe(`from_t${lo}_at_t${hi}`)
          expect(summary.events).toBe(events.length)
        }),
      )
    })
  })

  describe("derived events and live-only side effects", () => {
    it("re-emits no derived event that exists, and runs handlers with ctx.live = false", async () => {
      const decl: Declarations = {
        depots: [accounts, alerts],
        topologies: [balances, overdraft, alertLog],
        templates,
      }
      const stores = await freshStores()
      await Effect.runPromise(
        withEngine(stores, decl, (engine) =>
          Effect.gen(function* () {
            for (let i = 0; i < 20; i++) {
              const key = `k${i % 4}`
              yield* engine.publish(
                "accounts",
                i % 3 === 0 ? "Deposited" : "Withdrawn",
                key,
                { amount: 10 + i },
                { id: `d-${i}` },
              )
            }
            yield* engine.settle()
            const before = yield* depotEvents(stores.depot, decl)
            const alertCount = before.filter((e) => e.depot === "alerts").length
            expect(alertCount).toBeGreaterThan(0)
            const summary = yield* runReplay(stores, decl, { topology: "overdraft", verify: true })
            expect(summary.derived).toEqual({ existing: alertCount, appended: 0, skipped: 0 })
            expect(yield* depotEvents(stores.depot, decl)).toEqual(before)
            yield* expectReadModelsEqualFold(stores, decl)
          }),
        ),
      )
    })

    it("a new topology version's first-time children are appended once, with their deterministic IDs", async () => {
      const seenLive: Array<boolean> = []
      const v2 = Topology.make({
        name: "overdraft",
        version: 2,
        sources: [accounts],
        readModels: ["ovd_state"],
        handle: (event, ctx) =>
          Effect.gen(function* () {
            seenLive.push(ctx.live)
            const before = ((yield* ctx.get("ovd_state", event.key))?.balance as number | undefined) ?? 0
            const p = event.payload as { amount: number }
            const after = event.type === "Withdrawn" ? before - p.amount : before + p.amount
            yield* ctx.put("ovd_state", { account_id: event.key, balance: after })
            // Version 2 flags every withdrawal that ends below zero, not only the first one.
            if (after < 0 && event.type === "Withdrawn")
              yield* ctx.emit("alerts", "OverdraftFlagged", event.key, {
                account: event.key,
                balance: after,
                withdrawal: p.amount,
              })
          }),
      })
      const v1decl: Declarations = { depots: [accounts, alerts], topologies: [overdraft], templates }
      const v2decl: Declarations = { depots: [accounts, alerts], topologies: [v2], templates }
      const stores = await freshStores()
      await Effect.runPromise(
        withEngine(stores, v1decl, (engine) =>
          Effect.gen(function* () {
            for (let i = 0; i < 12; i++)
              yield* engine.publish("accounts", "Withdrawn", `k${i % 2}`, { amount: 5 }, { id: `w-${i}` })
            yield* engine.settle()
          }),
        ),
      )
      const alertsOf = () =>
        Effect.runPromise(Effect.map(depotEvents(stores.depot, v1decl), (es) => es.filter((e) => e.depot === "alerts")))
      const v1Alerts = await alertsOf()
      expect(v1Alerts.length).toBe(2)
      const first = await Effect.runPromise(runReplay(stores, v2decl, { topology: "overdraft" }))
      expect(first.derived).toEqual({ existing: 2, appended: 10, skipped: 0 })
      expect(seenLive.length).toBeGreaterThan(0)
      expect(seenLive.every((l) => l === false)).toBe(true)
      const afterFirst = await alertsOf()
      expect(afterFirst.length).toBe(12)
      expect(afterFirst.every((e) => e.id.endsWith("/overdraft.0"))).toBe(true)
      const second = await Effect.runPromise(runReplay(stores, v2decl, { topology: "overdraft" }))
      expect(second.derived).toEqual({ existing: 12, appended: 0, skipped: 0 })
      expect((await alertsOf()).length).toBe(12)
      expect(
        (await Effect.runPromise(stores.models.replay?.record("overdraft") ?? Effect.succeed(undefined)))?.version,
      ).toBe(2)
    })
  })

  describe("fences, locks and stale copies", () => {
    it("a fence left by a replay that died does not stop the live engine, and the next replay lowers it", async () => {
      const stores = await freshStores()
      await withHistory(stores, declarations, 20, (engine) =>
        Effect.gen(function* () {
          const ops = stores.models.replay
          if (ops === undefined) throw new Error("no replay ops")
          // The replay took its lock, raised the fence and died: its lock went with it.
          const scope = yield* Scope.make()
          yield* ops.lock("balances", { host: "h", pid: 1, since: 0 }).pipe(Scope.provide(scope))
          yield* ops.fence("balances")
          yield* Scope.close(scope, Exit.void)
          const r = yield* engine.publish("accounts", "Deposited", "a", { amount: 1 }, { id: "x1", ack: "full" })
          expect(r.ok).toBe(true)
          expect((yield* ops.record("balances"))?.fenced).toBe(true)
          yield* runReplay(stores, declarations, { topology: "balances", verify: true })
          expect((yield* ops.record("balances"))?.fenced).toBe(false)
          yield* expectReadModelsEqualFold(stores, declarations)
        }),
      )
    })

    it("a live commit folded before a fence is refused and folded again after the swap", async () => {
      const stores = await freshStores()
      await withHistory(stores, declarations, 10, () =>
        Effect.gen(function* () {
          const ops = stores.models.replay
          if (ops === undefined) throw new Error("no replay ops")
          const cp = { topology: "balances", depot: "accounts", partition: 0 }
          const next = yield* stores.models.checkpoint(cp)
          yield* ops.fence("balances")
          const refused = yield* Effect.flip(stores.models.commit(cp, next + 1, []))
          expect(refused).toMatchObject({ code: "FENCED", retryable: false })
          yield* ops.unfence("balances")
          // Reading the checkpoint again adopts the new generation.
          expect(yield* stores.models.checkpoint(cp)).toBe(next)
          yield* stores.models.commit(cp, next, [])
        }),
      )
    })

    it("a shadow left by an older topology version is dropped and rebuilt", async () => {
      const stores = await freshStores()
      await withHistory(stores, declarations, 50, () =>
        Effect.gen(function* () {
          yield* replayUntilKilled(stores, declarations, { at: "swap-before" }, { topology: "balances" })
          const v2 = { ...balances, version: 2 }
          const decl2 = { ...declarations, topologies: [v2] }
          const summary = yield* runReplay(stores, decl2, { topology: "balances" })
          expect(summary.droppedStale).toBe(true)
          expect(summary.resumed).toBe(false)
          expect(
            (yield* (stores.models.replay as NonNullable<typeof stores.models.replay>).record("balances"))?.version,
          ).toBe(2)
          yield* expectReadModelsEqualFold(stores, decl2)
        }),
      )
    })
  })
})
