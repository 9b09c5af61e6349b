/**
 * Testing your own depots and topologies, in the embedded mode (memory
 * stores, no services):
 *
 *  - `scenario`: Given/When/Then — given these events, when these commands,
 *    then the read model holds this;
 *  - `checkTopology`: properties over generated command histories —
 *    determinism, replay equivalence, idempotence under redelivery, and
 *    at-least-once delivery with crashes — judged by the history checker.
 *
 * Both take a `stores` factory, so the same checks run against real
 * services: pass one that builds MariaDB-backed stores (see the README).
 */
import { Context, Effect, Layer } from "effect"
import type * as fc from "fast-check"
import * as MemoryDepot from "../depot/memory.ts"
import { DepotStore, type DepotStoreShape } from "../depot/store.ts"
import { StoreError } from "../errors.ts"
import * as MemoryModels from "../readmodel/memory.ts"
import { ReadModelStore, type ReadModelStoreShape } from "../readmodel/store.ts"
import {
  type Declarations,
  defaultOptions,
  Engine,
  type EngineOptions,
  type EngineShape,
  layer,
} from "../runtime/engine.ts"
import { keyId, type Row, type RowKey } from "../template/template.ts"
import type { Reply } from "../transport/protocol.ts"
import { check, type HistoryEntry, report, type Violation } from "./checker.ts"

/** A command as a test writes it. */
export interface TestCommand {
  readonly depot: string
  readonly type: string
  readonly key: string
  readonly payload: unknown
  /** Default: a fresh id per command. */
  readonly id?: string | undefined
  readonly ack?: "none" | "append" | "full" | undefined
  readonly expect?: number | undefined
}

export interface Stores {
  readonly depot: DepotStoreShape
  readonly models: ReadModelStoreShape
}

/** Fresh in-memory stores: the embedded mode. */
export const memoryStores = (): Effect.Effect<Stores> =>
  Effect.map(MemoryModels.make, (models) => ({ depot: MemoryDepot.make(), models }))

/** Runs `f` with an engine over `stores`; the engine stops (as if the process ended) when `f` is done. */
export const withEngine = <A, E>(
  stores: Stores,
  declarations: Declarations,
  f: (engine: EngineShape) => Effect.Effect<A, E>,
  options: EngineOptions = defaultOptions,
): Effect.Effect<A, E | StoreError> =>
  Effect.scoped(
    Effect.gen(function* () {
      const ctx = yield* Layer.build(
        layer(declarations, options).pipe(
          Layer.provide(
            Layer.mergeAll(Layer.succeed(DepotStore, stores.depot), Layer.succeed(ReadModelStore, stores.models)),
          ),
        ),
      )
      return yield* f(Context.get(ctx, Engine))
    }),
  )

/** The failure of a scenario's expectation, with what was found. */
export class ScenarioFailure extends Error {
  readonly _tag = "ScenarioFailure"
}

let counter = 0
const idOf = (c: TestCommand) => c.id ?? `t${Date.now().toString(36)}-${counter++}`

const publish = (engine: EngineShape, c: TestCommand) =>
  engine.publish(c.depot, c.type, c.key, c.payload, { id: idOf(c), ack: c.ack ?? "full", expect: c.expect })

/**
 * Given/When/Then for a topology:
 *
 *   scenario(declarations)
 *     .given([{ depot: "accounts", type: "Opened", key: "a1", payload: { owner: "Ada" } }])
 *     .when([{ depot: "accounts", type: "Deposited", key: "a1", payload: { amount: 500 } }])
 *     .thenRow("acc_balance", "a1", { balance: 500, events: 2 })
 *     .run()                                   // an Effect; runPromise() for a Promise
 *
 * `given` events are appended and applied first; `when` commands are
 * published at `full` (read-your-writes), their replies kept for
 * `thenReplies`; `thenRow` compares the listed fields of one row (undefined
 * expects the row to be absent).
 */
export const scenario = (declarations: Declarations, stores: () => Effect.Effect<Stores> = memoryStores) => {
  const given: Array<TestCommand> = []
  const when: Array<TestCommand> = []
  const rows: Array<{ template: string; key: RowKey | string; fields: Readonly<Record<string, unknown>> | undefined }> =
    []
  const replyChecks: Array<(replies: ReadonlyArray<Reply>) => string | undefined> = []
  const self = {
    given: (events: ReadonlyArray<TestCommand>) => {
      given.push(...events)
      return self
    },
    when: (commands: ReadonlyArray<TestCommand>) => {
      when.push(...commands)
      return self
    },
    thenRow: (template: string, key: RowKey | string, fields: Readonly<Record<string, unknown>> | undefined) => {
      rows.push({ template, key, fields })
      return self
    },
    /** Checks the replies to the `when` commands, in order; return a message to fail. */
    thenReplies: (f: (replies: ReadonlyArray<Reply>) => string | undefined) => {
      replyChecks.push(f)
      return self
    },
    run: (): Effect.Effect<ReadonlyArray<Reply>, ScenarioFailure | StoreError> =>
      Effect.gen(function* () {
        const s = yield* stores()
        return yield* withEngine(s, declarations, (engine) =>
          Effect.gen(function* () {
            for (const g of given) {
              const r = yield* publish(engine, { ...g, ack: "append" })
              if (!r.ok)
                return yield* Effect.fail(
                  new ScenarioFailure(`given ${g.type} ${g.key} was refused: ${r.error.code} ${r.error.message}`),
                )
            }
            yield* engine.settle()
            const replies: Array<Reply> = []
            for (const c of when) replies.push(yield* publish(engine, c))
            yield* engine.settle()
            for (const f of replyChecks) {
              const problem = f(replies)
              if (problem !== undefined) return yield* Effect.fail(new ScenarioFailure(problem))
            }
            for (const r of rows) {
              const key = typeof r.key === "string" ? [r.key] : r.key
              const found = (yield* s.models.load(r.template, [key])).get(keyId(key))
              if (r.fields === undefined) {
                if (found !== undefined)
                  return yield* Effect.fail(
                    new ScenarioFailure(
                      `then ${r.template} ${keyId(key)}: expected no row, found ${JSON.stringify(found)}`,
                    ),
                  )
                continue
              }
              if (found === undefined)
                return yield* Effect.fail(new ScenarioFailure(`then ${r.template} ${keyId(key)}: no such row`))
              for (const [field, want] of Object.entries(r.fields))
                if (JSON.stringify(found[field]) !== JSON.stringify(want))
                  return yield* Effect.fail(
                    new ScenarioFailure(
                      `then ${r.template} ${keyId(key)}.${field}: expected ${JSON.stringify(want)}, found ${JSON.stringify(found[field])}`,
                    ),
                  )
            }
            return replies
          }),
        )
      }),
    runPromise: () => Effect.runPromise(self.run()),
  }
  return self
}

/** The properties `checkTopology` can check. */
export type TopologyProperty = "determinism" | "replay" | "redelivery" | "crash"

export interface CheckOptions {
  readonly declarations: Declarations
  /** Generates a history: the commands one client sends, in order. */
  readonly commands: fc.Arbitrary<ReadonlyArray<TestCommand>>
  readonly properties?: ReadonlyArray<TopologyProperty>
  /** Runs per property (default 50). */
  readonly runs?: number
  readonly seed?: number
  readonly stores?: () => Effect.Effect<Stores>
  readonly fc: typeof fc
}

/** Everything the engine holds, for the checker. */
export const snapshot = (stores: Stores, declarations: Declarations) =>
  Effect.gen(function* () {
    const events = []
    for (const d of declarations.depots)
      for (let p = 0; p < d.partitions; p++) {
        let from = 0
        while (true) {
          const batch = yield* stores.depot.read(d.name, p, from, 10_000)
          events.push(...batch)
          from += batch.length
          if (batch.length < 10_000) break
        }
      }
    const readModels: Record<string, ReadonlyArray<Row>> = {}
    for (const t of declarations.topologies)
      for (const name of t.readModels) readModels[name] = yield* stores.models.scan(name)
    return { events, readModels }
  })

/** Sends a history through an engine, recording what the client heard. */
const runHistory = (engine: EngineShape, commands: ReadonlyArray<TestCommand>, ids: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const history: Array<HistoryEntry> = []
    for (let i = 0; i < commands.length; i++) {
      const c = commands[i] as TestCommand
      const reply = yield* engine.publish(c.depot, c.type, c.key, c.payload, {
        id: ids[i] as string,
        ack: c.ack ?? "append",
        expect: c.expect,
      })
      history.push({
        client: "c1",
        seq: i,
        depot: c.depot,
        type: c.type,
        key: c.key,
        payload: c.payload,
        messageId: ids[i] as string,
        ack: c.ack ?? "append",
        reply: (c.ack ?? "append") === "none" ? undefined : reply,
        confirmed: true,
        expect: c.expect,
      })
    }
    yield* engine.settle()
    return history
  })

/** A read-model store that dies at its k-th commit, before or after the commit took effect. */
const crashing = (models: ReadModelStoreShape, k: number, after: boolean): ReadModelStoreShape => {
  let commits = 0
  const crash = Effect.fail(new StoreError({ code: "STORE_FAILED", message: "injected crash", retryable: false }))
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

const fail = (what: string, violations: ReadonlyArray<Violation>) =>
  violations.length === 0 ? undefined : `${what}\n${report(violations)}`

/**
 * Checks properties of a user's topology over generated histories. Throws
 * (with fast-check's shrunk counterexample and seed) when one fails.
 */
export const checkTopology = async (options: CheckOptions): Promise<void> => {
  const { declarations, fc: fast } = options
  const stores = options.stores ?? memoryStores
  const properties = options.properties ?? ["determinism", "replay", "redelivery", "crash"]
  const params = { numRuns: options.runs ?? 50, ...(options.seed === undefined ? {} : { seed: options.seed }) }
  const idsFor = (cs: ReadonlyArray<TestCommand>) => cs.map((c, i) => c.id ?? `m${i}`)
  const run = (s: Stores, cs: ReadonlyArray<TestCommand>, engineOptions?: EngineOptions) =>
    withEngine(s, declarations, (engine) => runHistory(engine, cs, idsFor(cs)), engineOptions)
  const verdict = async (problem: Effect.Effect<string | undefined, unknown>) => {
    const p = await Effect.runPromise(problem)
    if (p !== undefined) throw new Error(p)
  }

  for (const property of properties) {
    const body = async (cs: ReadonlyArray<TestCommand>, k: number, after: boolean) =>
      verdict(
        Effect.gen(function* () {
          if (property === "determinism") {
            // The same history on two fresh engines: identical depots (IDs included) and read models.
            const a = yield* stores()
            const b = yield* stores()
            yield* run(a, cs)
            yield* run(b, cs)
            const sa = yield* snapshot(a, declarations)
            const sb = yield* snapshot(b, declarations)
            const ka = JSON.stringify([sa.events.map((e) => [e.id, e.messageId, e.version]), sa.readModels])
            const kb = JSON.stringify([sb.events.map((e) => [e.id, e.messageId, e.version]), sb.readModels])
            return ka === kb ? undefined : "determinism: the same history gave two different results"
          }
          const s = yield* stores()
          if (property === "crash") {
            // First life dies at the k-th projection commit; a second life on the same stores catches up.
            // (The supervisor restarts the dead stream within the first life too; both paths must hold.)
            yield* Effect.ignore(run({ depot: s.depot, models: crashing(s.models, k, after) }, cs))
            const recorded = yield* run(s, cs)
            const final = yield* snapshot(s, declarations)
            return fail("crash: after a crash and a restart", yield* check(declarations, recorded, final))
          }
          const history = yield* run(s, cs)
          if (property === "redelivery") {
            // Every command delivered again (same message_id): nothing changes, every reply is a duplicate.
            const before = yield* snapshot(s, declarations)
            const again = yield* run(s, cs)
            const after = yield* snapshot(s, declarations)
            const notDup = again.filter((h) => h.reply?.ok && !h.reply.duplicate)
            if (notDup.length > 0) return `redelivery: ${notDup[0]?.messageId} was appended again`
            if (JSON.stringify(before) !== JSON.stringify(after))
              return "redelivery: delivering the history again changed the state"
            return fail("redelivery", yield* check(declarations, history, after))
          }
          // replay: read models rebuilt from the depot alone equal the live ones.
          const live = yield* snapshot(s, declarations)
          const fresh = yield* stores()
          const rebuilt = yield* withEngine({ depot: s.depot, models: fresh.models }, declarations, (engine) =>
            Effect.andThen(engine.settle(), snapshot({ depot: s.depot, models: fresh.models }, declarations)),
          )
          return fail("replay", yield* check(declarations, history, { ...live, replayed: rebuilt.readModels }))
        }),
      )
    await fast.assert(
      fast.asyncProperty(options.commands, fast.integer({ min: 1, max: 10 }), fast.boolean(), body),
      params,
    )
  }
}
