/**
 * Replay properties shared by the memory and MariaDB test files: generated
 * histories run through the real engine, then a replay runs beside it (same
 * process, same stores, the engine still serving) and the live model is
 * checked against the reference fold.
 */
import { Deferred, Effect, Exit, Fiber } from "effect"
import fc from "fast-check"
import { expect, it } from "vitest"
import { DepotStore } from "../../src/depot/store.ts"
import { ReadModelStore, type ReadModelStoreShape } from "../../src/readmodel/store.ts"
import type { ReplayError } from "../../src/replay/error.ts"
import { type ReplayOptions, type ReplaySummary, replay } from "../../src/replay/replay.ts"
import type { Declarations, EngineShape } from "../../src/runtime/engine.ts"
import type { Row } from "../../src/template/template.ts"
import { withEngine } from "../support/engine.ts"
import {
  expectReadModelsEqualFold,
  type HistoryCommand,
  historyArbitrary,
  type Stores,
} from "../support/engine-properties.ts"

/** Added to `events` of every live row before a replay, so rows of the old model are recognisable. */
export const MARK = 1_000_000

/** A deterministic accounts history over keys a..e: opens, then deposits and some withdrawals. */
export const history = (n: number) =>
  Array.from({ length: n }, (_, i) => {
    const key = "abcde"[i % 5] as string
    const type = i < 5 ? "Opened" : i % 7 === 0 ? "Withdrawn" : "Deposited"
    return {
      type: type as "Opened" | "Deposited" | "Withdrawn",
      key,
      payload: type === "Opened" ? { owner: `owner-${key}` } : { amount: 1 + (i % 13) },
      messageId: `h-${i}`,
      ack: "append" as const,
    }
  })

/** Runs a replay on these stores (the engine's own, when one is running beside it). */
export const runReplay = (stores: Stores, declarations: Declarations, options: ReplayOptions) =>
  replay(declarations, options).pipe(
    Effect.provideService(DepotStore, stores.depot),
    Effect.provideService(ReadModelStore, stores.models),
  )

/** The replay's failure, or a test failure when it succeeded. */
export const replayFailure = (stores: Stores, declarations: Declarations, options: ReplayOptions) =>
  Effect.flip(runReplay(stores, declarations, options)) as Effect.Effect<ReplayError>

/** Appends a history at ack `append` (duplicates and all). */
export const publishAll = (
  engine: Parameters<Parameters<typeof withEngine>[2]>[0],
  history: ReadonlyArray<HistoryCommand>,
) =>
  Effect.forEach(
    history,
    (c) => engine.publish("accounts", c.type, c.key, c.payload, { id: c.messageId, ack: "append" }),
    { discard: true },
  )

/** Rewrites live rows outside any stream (a checkpoint no topology uses), e.g. to corrupt or mark them. */
export const rewriteLive = (models: ReadModelStoreShape, f: (row: Row) => Row | null, template = "acc_balance") =>
  Effect.gen(function* () {
    const rows = yield* models.scan(template)
    yield* models.commit(
      { topology: "test_rewrite", depot: "none", partition: 0 },
      1,
      rows.map((r) => ({ template, key: [r.account_id as string], row: f(r) })),
    )
    return rows
  })

export const markLive = (models: ReadModelStoreShape) =>
  rewriteLive(models, (r) => ({ ...r, events: (r.events as number) + MARK }))

type Kill =
  | { readonly at: "commit"; readonly k: number; readonly after: boolean }
  | { readonly at: "fence" | "verify" | "swap-before" | "swap-after" }

class Killed extends Error {
  constructor() {
    super("killed by the test")
  }
}

/**
 * The store as a replay sees it, "killed" at a chosen point: the point
 * completes `killed` and hangs until the test interrupts the whole replay,
 * as a dead process stops everywhere at once. A fence dies inside its own
 * step instead (a fence step cannot be interrupted), so the fence stays up
 * without its lock, as after a SIGKILL.
 */
export const killingAt = (
  models: ReadModelStoreShape,
  kill: Kill,
  killed: Deferred.Deferred<void>,
): ReadModelStoreShape => {
  const ops = models.replay
  if (ops === undefined) throw new Error("no replay operations")
  let commits = 0
  const hang = Effect.andThen(Deferred.succeed(killed, undefined), Effect.never)
  return {
    ...models,
    replay: {
      ...ops,
      variant: (...a) =>
        Effect.map(ops.variant(...a), (h) => ({
          ...h,
          store: {
            ...h.store,
            commit: (cp, next, writes) =>
              Effect.suspend(() => {
                commits++
                if (kill.at !== "commit" || commits !== kill.k) return h.store.commit(cp, next, writes)
                return kill.after ? Effect.andThen(h.store.commit(cp, next, writes), hang) : hang
              }),
          },
        })),
      fence: (t) =>
        kill.at === "fence"
          ? Effect.andThen(ops.fence(t), Effect.andThen(Deferred.succeed(killed, undefined), Effect.die(new Killed())))
          : ops.fence(t),
      diff: (...a) => (kill.at === "verify" ? hang : ops.diff(...a)),
      swap: (...a) =>
        kill.at === "swap-before"
          ? hang
          : kill.at === "swap-after"
            ? Effect.andThen(ops.swap(...a), hang)
            : ops.swap(...a),
    },
  }
}

/** Runs a replay on a killing store until it completes or is killed (then interrupted). */
export const replayUntilKilled = (stores: Stores, declarations: Declarations, kill: Kill, options: ReplayOptions) =>
  Effect.gen(function* () {
    const killed = yield* Deferred.make<void>()
    const dying = { depot: stores.depot, models: killingAt(stores.models, kill, killed) }
    return yield* Effect.raceFirst(
      Effect.exit(runReplay(dying, declarations, options)),
      Effect.as(Deferred.await(killed), Exit.fail("killed" as const)),
    )
  })

/** The store as a replay sees it, with each commit of the rebuilt copy slowed down, so that a replay spans many live reads. */
export const slowCopy = (models: ReadModelStoreShape, ms: number): ReadModelStoreShape => {
  const ops = models.replay
  if (ops === undefined) throw new Error("no replay operations")
  return {
    ...models,
    replay: {
      ...ops,
      variant: (...a) =>
        Effect.map(ops.variant(...a), (h) => ({
          ...h,
          store: {
            ...h.store,
            commit: (cp, next, writes) => Effect.andThen(Effect.sleep(ms), h.store.commit(cp, next, writes)),
          },
        })),
    },
  }
}

const killArbitrary: fc.Arbitrary<Kill> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      at: fc.constant("commit" as const),
      k: fc.integer({ min: 1, max: 30 }),
      after: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.constantFrom<Kill>({ at: "fence" }, { at: "verify" }, { at: "swap-before" }, { at: "swap-after" }),
  },
)

const keysOf = (rows: ReadonlyArray<Row>) => rows.map((r) => r.account_id as string).sort()

/** The engine goes on projecting onto the swapped-in model: one more `full` command, and the models still equal the fold. */
const goesOnProjecting = (
  engine: EngineShape,
  stores: Stores,
  declarations: Declarations,
  command: { readonly key: string; readonly amount: number; readonly id: string },
) =>
  Effect.gen(function* () {
    const { key, amount, id } = command
    const r = yield* engine.publish("accounts", "Deposited", key, { amount }, { id, ack: "full" })
    expect(r.ok).toBe(true)
    yield* expectReadModelsEqualFold(stores, declarations)
  })

/** Properties every store pairing with replay support must satisfy. */
export const replayProperties = (
  name: string,
  freshStores: () => Promise<Stores>,
  declarations: () => Declarations,
  runs = { scratch: 25, killed: 25, reads: 10, verify: 15 },
) => {
  it(`property: a replay from scratch beside a running engine yields exactly the live model (${name})`, async () => {
    await fc.assert(
      fc.asyncProperty(historyArbitrary, fc.integer({ min: 1, max: 25 }), async (history, batchMax) => {
        const stores = await freshStores()
        const decl = declarations()
        await Effect.runPromise(
          withEngine(stores, decl, (engine) =>
            Effect.gen(function* () {
              yield* publishAll(engine, history)
              yield* engine.settle()
              const before = yield* stores.models.scan("acc_balance")
              const summary = yield* runReplay(stores, decl, { topology: "balances", verify: true, batchMax })
              expect(summary.verify?.equal).toBe(true)
              expect(summary.mode).toBe("swap")
              expect(yield* stores.models.scan("acc_balance")).toEqual(before)
              yield* expectReadModelsEqualFold(stores, decl)
              yield* goesOnProjecting(engine, stores, decl, { key: "a", amount: 7, id: "after-swap" })
            }),
          ),
        )
      }),
      { numRuns: runs.scratch },
    )
  })

  it(`property: a replay killed at any point and run again yields the fold, resuming its copy (${name})`, async () => {
    await fc.assert(
      fc.asyncProperty(
        historyArbitrary,
        killArbitrary,
        fc.integer({ min: 1, max: 6 }),
        async (history, kill, batchMax) => {
          const stores = await freshStores()
          const decl = declarations()
          await Effect.runPromise(
            withEngine(stores, decl, (engine) =>
              Effect.gen(function* () {
                yield* publishAll(engine, history)
                yield* engine.settle()
                // A marked old model: the result must come from the rebuild, not from the rows already there.
                yield* markLive(stores.models)
                const first = yield* replayUntilKilled(stores, decl, kill, {
                  topology: "balances",
                  batchMax,
                  verify: true,
                })
                const second: ReplaySummary = yield* runReplay(stores, decl, { topology: "balances", batchMax })
                if (first._tag === "Success") {
                  // The kill point was never reached (fewer commits than k): the first run swapped.
                  expect(kill.at === "commit").toBe(true)
                } else if (kill.at === "commit" && (kill.k > 1 || kill.after)) expect(second.resumed).toBe(true)
                const rows = yield* stores.models.scan("acc_balance")
                expect(rows.every((r) => (r.events as number) < MARK)).toBe(true)
                yield* expectReadModelsEqualFold(stores, decl)
                yield* goesOnProjecting(engine, stores, decl, { key: "b", amount: 3, id: "after" })
              }),
            ),
          )
        },
      ),
      { numRuns: runs.killed },
    )
  })

  it(`property: reads during a replay see the old model or the new one, never a mix; every full reply stays truthful (${name})`, async () => {
    await fc.assert(
      fc.asyncProperty(historyArbitrary, fc.integer({ min: 1, max: 4 }), async (history, batchMax) => {
        const stores = await freshStores()
        const decl = declarations()
        await Effect.runPromise(
          withEngine(stores, decl, (engine) =>
            Effect.gen(function* () {
              yield* publishAll(engine, history)
              yield* engine.settle()
              const initial = keysOf(yield* markLive(stores.models))
              const problems: Array<string> = []
              let reads = 0
              let oldReads = 0
              let newReads = 0
              let running = true
              const reader = yield* Effect.forkChild(
                Effect.gen(function* () {
                  while (running) {
                    const rows = yield* stores.models.scan("acc_balance")
                    reads++
                    const marked = rows.filter((r) => (r.events as number) >= MARK).length
                    if (marked === rows.length) oldReads++
                    else if (marked === 0) {
                      newReads++
                      const have = new Set(keysOf(rows))
                      const missing = initial.filter((k) => !have.has(k))
                      if (missing.length > 0) problems.push(`new model without ${missing.join(",")}: half-built`)
                    } else problems.push(`mixed read: ${marked} of ${rows.length} rows from the old model`)
                    yield* Effect.yieldNow
                  }
                }),
              )
              // One sequential publisher per existing key: after a full reply, nothing else touches the row.
              const publishers = yield* Effect.forkChild(
                Effect.forEach(
                  initial,
                  (key) =>
                    Effect.gen(function* () {
                      for (let i = 0; i < 6; i++) {
                        const reply = yield* engine.publish(
                          "accounts",
                          "Deposited",
                          key,
                          { amount: 1 },
                          {
                            id: `live-${key}-${i}`,
                            ack: "full",
                          },
                        )
                        if (!reply.ok) {
                          problems.push(`publish failed: ${JSON.stringify(reply)}`)
                          continue
                        }
                        const row = (yield* stores.models.load("acc_balance", [[key]])).get(key)
                        const events = ((row?.events as number) ?? -1) % MARK
                        if (events !== reply.version)
                          problems.push(`full reply for ${key} v${reply.version} but the row says ${events} events`)
                      }
                    }),
                  { concurrency: "unbounded", discard: true },
                ),
              )
              yield* runReplay({ depot: stores.depot, models: slowCopy(stores.models, 2) }, decl, {
                topology: "balances",
                batchMax,
                progressEveryMs: 1,
              })
              yield* Fiber.join(publishers)
              running = false
              yield* Fiber.join(reader)
              expect(problems).toEqual([])
              expect(reads).toBeGreaterThan(0)
              expect(oldReads + newReads).toBe(reads)
              yield* engine.settle()
              yield* expectReadModelsEqualFold(stores, decl)
            }),
          ),
        )
      }),
      { numRuns: runs.reads },
    )
  })

  it(`property: --verify finds a deliberately corrupted row and refuses to swap it away without --force (${name})`, async () => {
    await fc.assert(
      fc.asyncProperty(
        historyArbitrary,
        fc.nat(),
        fc.constantFrom("balance", "owner", "delete", "phantom"),
        async (history, pick, how) => {
          const stores = await freshStores()
          const decl = declarations()
          await Effect.runPromise(
            withEngine(stores, decl, (engine) =>
              Effect.gen(function* () {
                yield* publishAll(engine, history)
                yield* engine.settle()
                const rows = yield* stores.models.scan("acc_balance")
                const victim =
                  how === "phantom"
                    ? "zz-phantom"
                    : (rows[pick % Math.max(1, rows.length)]?.account_id as string | undefined)
                if (victim === undefined) return
                const base = rows.find((r) => r.account_id === victim)
                const corrupt: Row | null =
                  how === "delete"
                    ? null
                    : how === "phantom"
                      ? {
                          account_id: victim,
                          owner: null,
                          balance: 1,
                          events: 1,
                          status: "open",
                          beds_last_id: "accounts:0:0",
                        }
                      : how === "balance"
                        ? { ...base, balance: (base?.balance as number) + 1 }
                        : { ...base, owner: "mallory" }
                yield* stores.models.commit({ topology: "test_rewrite", depot: "none", partition: 0 }, 1, [
                  { template: "acc_balance", key: [victim], row: corrupt },
                ])
                const e = yield* replayFailure(stores, decl, { topology: "balances", verify: true })
                expect(e.code).toBe("VERIFY_MISMATCH")
                const details = e.details as {
                  tables: Array<{ template: string; differing: number; first: Array<{ key: Array<string> }> }>
                }
                expect(details.tables[0]?.differing).toBe(1)
                expect(details.tables[0]?.first[0]?.key).toEqual([victim])
                // Not swapped: the corruption is still live.
                const still = (yield* stores.models.load("acc_balance", [[victim]])).get(victim) ?? null
                expect(still === null ? null : { ...still }).toEqual(corrupt === null ? null : { ...corrupt })
                const forced = yield* runReplay(stores, decl, { topology: "balances", verify: true, force: true })
                expect(forced.verify).toMatchObject({ equal: false, forced: true })
                expect(forced.resumed).toBe(true)
                yield* expectReadModelsEqualFold(stores, decl)
              }),
            ),
          )
        },
      ),
      { numRuns: runs.verify },
    )
  })
}
