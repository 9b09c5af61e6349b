/**
 * Engine properties shared by the memory and MariaDB test files: generated
 * histories are run through the real engine and checked against the pure
 * model (src/testing/model.ts) and the reference fold (src/topology/fold.ts).
 */
import { Effect } from "effect"
import fc from "fast-check"
import { expect, it } from "vitest"
import type { Event } from "../../src/depot/event.ts"
import type { DepotStoreShape } from "../../src/depot/store.ts"
import { StoreError } from "../../src/errors.ts"
import type { ReadModelStoreShape } from "../../src/readmodel/store.ts"
import { type Declarations, defaultOptions, type EngineOptions, type EngineShape } from "../../src/runtime/engine.ts"
import { keyId } from "../../src/template/template.ts"
import { EngineModel } from "../../src/testing/model.ts"
import { fold } from "../../src/topology/fold.ts"
import { withEngine } from "./engine.ts"

export interface Stores {
  readonly depot: DepotStoreShape
  readonly models: ReadModelStoreShape
}

export interface HistoryCommand {
  readonly type: "Opened" | "Deposited" | "Withdrawn" | "Closed"
  readonly key: string
  readonly payload: unknown
  readonly messageId: string
  readonly ack: "none" | "append" | "full"
  /** An offset from the key's true version (0: right), or undefined for no check. */
  readonly expectDelta?: number | undefined
}

const command = (ids: number) =>
  fc.record({
    type: fc.constantFrom("Opened", "Deposited", "Withdrawn", "Closed"),
    key: fc.constantFrom("a", "b", "c", "d", "e", "f", "g"),
    amount: fc.integer({ min: 1, max: 10_000 }),
    id: fc.nat({ max: ids - 1 }),
    ack: fc.constantFrom("none", "append", "full"),
    expectDelta: fc.option(fc.constantFrom(0, 0, 1, -1), { nil: undefined }),
  })

/** Histories with repeated message_ids (a small id pool), all ack levels and right and wrong expects. */
export const historyArbitrary = fc.array(command(40), { minLength: 1, maxLength: 60 }).map((cs) =>
  cs.map(
    (c): HistoryCommand => ({
      type: c.type as HistoryCommand["type"],
      key: c.key,
      payload: c.type === "Opened" ? { owner: `owner-${c.key}` } : c.type === "Closed" ? {} : { amount: c.amount },
      messageId: `m-${c.id}`,
      ack: c.ack as HistoryCommand["ack"],
      expectDelta: c.expectDelta,
    }),
  ),
)

/** A generated command of the accounts depot, with no id or ack of its own. */
export interface AccountCommand {
  readonly type: "Opened" | "Deposited" | "Withdrawn" | "Closed"
  readonly key: string
  readonly amount: number
}

/** Publishes account commands with ids m0, m1, ..., `concurrency` at a time, at one ack level (default append). */
export const publishAccountCommands = (
  engine: EngineShape,
  commands: ReadonlyArray<AccountCommand>,
  options: { readonly concurrency: number; readonly ack?: "none" | "append" | "full" },
) =>
  Effect.forEach(
    commands,
    (c, i) =>
      engine.publish(
        "accounts",
        c.type,
        c.key,
        c.type === "Opened" ? { owner: `o-${c.key}` } : c.type === "Closed" ? {} : { amount: c.amount },
        { id: `m${i}`, ...(options.ack === undefined ? {} : { ack: options.ack }) },
      ),
    { concurrency: options.concurrency, discard: true },
  )

/** Every event of the declared depots, partition by partition. */
export const depotEvents = (store: DepotStoreShape, declarations: Declarations) =>
  Effect.gen(function* () {
    const out: Array<Event> = []
    for (const d of declarations.depots)
      for (let p = 0; p < d.partitions; p++) {
        let from = 0
        while (true) {
          const batch = yield* store.read(d.name, p, from, 5000)
          out.push(...batch)
          if (batch.length < 5000) break
          from += batch.length
        }
      }
    return out
  })

/** Asserts that every read model equals the reference fold of the depot. */
export const expectReadModelsEqualFold = (stores: Stores, declarations: Declarations) =>
  Effect.gen(function* () {
    const events = yield* depotEvents(stores.depot, declarations)
    for (const topology of declarations.topologies) {
      const mine = events.filter((e) => topology.sources.some((s) => s.name === e.depot))
      const { state } = yield* fold(topology, declarations.templates, mine)
      for (const template of topology.readModels) {
        const tpl = declarations.templates.find((t) => t.name === template)
        if (tpl === undefined) throw new Error(`no template ${template}`)
        const rows = yield* stores.models.scan(template)
        const actual = Object.fromEntries(rows.map((r) => [keyId(tpl.key.map((k) => r[k] as string)), r]))
        const expected = Object.fromEntries(state.get(template) ?? new Map())
        expect(actual).toEqual(expected)
      }
    }
    return events
  })

/** Runs a history sequentially through the engine, checking every reply against the model, then the read models against the fold. */
export const runHistory = (
  stores: Stores,
  declarations: Declarations,
  history: ReadonlyArray<HistoryCommand>,
  options: EngineOptions = defaultOptions,
) =>
  Effect.runPromise(
    withEngine(
      stores,
      declarations,
      (engine) =>
        Effect.gen(function* () {
          const model = new EngineModel(declarations.depots)
          const versions = new Map<string, number>()
          for (const c of history) {
            const current = versions.get(c.key) ?? 0
            const expectVersion = c.expectDelta === undefined ? undefined : Math.max(0, current + c.expectDelta)
            const reply = yield* engine.publish("accounts", c.type, c.key, c.payload, {
              id: c.messageId,
              ack: c.ack,
              ...(expectVersion === undefined ? {} : { expect: expectVersion }),
            })
            const want = model.append({
              depot: "accounts",
              type: c.type,
              key: c.key,
              payload: c.payload,
              messageId: c.messageId,
              expect: expectVersion,
            })
            if (want._tag === "VersionConflict") {
              expect(reply).toMatchObject({
                ok: false,
                error: { code: "VERSION_CONFLICT", details: { actual: want.actual } },
              })
            } else {
              expect(reply).toMatchObject({
                ok: true,
                partition: want.event.partition,
                offset: want.event.offset,
                version: want.event.version,
                duplicate: want.duplicate,
              })
              if (!want.duplicate) versions.set(c.key, want.event.version)
              if (c.ack === "full") expect(reply).toMatchObject({ applied: ["balances"] })
            }
          }
          yield* engine.settle()
          const events = yield* expectReadModelsEqualFold(stores, declarations)
          // The depot holds exactly what the model appended, nothing more.
          expect(events.map((e) => [e.partition, e.offset, e.messageId, e.version])).toEqual(
            declarations.depots
              .flatMap((d) => model.events(d.name))
              .map((e) => [e.partition, e.offset, e.messageId, e.version]),
          )
        }),
      options,
    ),
  )

/** A read-model store that "crashes" at its k-th commit, before or after the commit took effect. */
const crashingAt = (
  models: ReadModelStoreShape,
  k: number,
  after: boolean,
  crashed: { value: boolean },
): ReadModelStoreShape => {
  let commits = 0
  const crash = Effect.suspend(() => {
    crashed.value = true
    return Effect.fail(new StoreError({ code: "STORE_FAILED", message: "injected crash", retryable: false }))
  })
  return {
    ...models,
    commit: (cp, next, writes) =>
      Effect.suspend(() => {
        commits++
        if (commits !== k) return models.commit(cp, next, writes)
        return after ? Effect.andThen(models.commit(cp, next, writes), crash) : crash
      }),
  }
}

/** Properties every store pairing must satisfy. */
export const engineProperties = (
  name: string,
  freshStores: () => Promise<Stores>,
  declarations: () => Declarations,
  runs = { crash: 25, concurrent: 15 },
  options: EngineOptions = defaultOptions,
) => {
  it(`property: a crash at any projection commit, before or after it took effect, leaves rows equal to the fold after restart (${name})`, async () => {
    await fc.assert(
      fc.asyncProperty(historyArbitrary, fc.integer({ min: 1, max: 12 }), fc.boolean(), async (history, k, after) => {
        const stores = await freshStores()
        const crashed = { value: false }
        const faulty = { depot: stores.depot, models: crashingAt(stores.models, k, after, crashed) }
        const decl = declarations()
        // First life: appends succeed; the projection dies at its k-th commit.
        await Effect.runPromise(
          withEngine(
            faulty,
            decl,
            (engine) =>
              Effect.gen(function* () {
                for (const c of history)
                  yield* engine.publish("accounts", c.type, c.key, c.payload, { id: c.messageId, ack: "append" })
                // Let the runner reach the crash or finish, bounded.
                for (let i = 0; i < 200 && !crashed.value; i++) {
                  const s = yield* engine.status()
                  if (s.streams.every((x) => x.lag === 0)) break
                  yield* Effect.sleep("5 millis")
                }
              }),
            options,
          ),
        )
        // Second life: a fresh engine on the same stores catches up from the stored checkpoint.
        await Effect.runPromise(
          withEngine(
            stores,
            decl,
            (engine) => Effect.andThen(engine.settle(), expectReadModelsEqualFold(stores, decl)),
            options,
          ),
        )
      }),
      { numRuns: runs.crash },
    )
  })

  it(`property: with many concurrent publishers every appended reply is in the depot exactly once, offsets are gapless, rows equal the fold (${name})`, async () => {
    await fc.assert(
      fc.asyncProperty(historyArbitrary, async (history) => {
        const stores = await freshStores()
        const decl = declarations()
        await Effect.runPromise(
          withEngine(
            stores,
            decl,
            (engine) =>
              Effect.gen(function* () {
                const replies = yield* Effect.forEach(
                  history,
                  (c, i) =>
                    engine.publish("accounts", c.type, c.key, c.payload, { id: `${c.messageId}-${i % 7}`, ack: c.ack }),
                  { concurrency: 16 },
                )
                yield* engine.settle()
                const events = yield* expectReadModelsEqualFold(stores, decl)
                const byPosition = new Map(events.map((e) => [`${e.partition}/${e.offset}`, e]))
                for (const r of replies) {
                  expect(r.ok).toBe(true)
                  if (r.ok) expect(byPosition.get(`${r.partition}/${r.offset}`)?.id).toBe(r.id)
                }
                const ids = new Set(events.map((e) => e.messageId))
                expect(ids.size).toBe(events.length)
                for (let p = 0; p < 4; p++) {
                  const offs = events.filter((e) => e.partition === p).map((e) => e.offset)
                  expect(offs).toEqual(offs.map((_, i) => i))
                }
              }),
            options,
          ),
        )
      }),
      { numRuns: runs.concurrent },
    )
  })
}
