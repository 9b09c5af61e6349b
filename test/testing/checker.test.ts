/**
 * The history checker can fail: each known-bad engine below breaks one
 * guarantee on purpose, and the checker must name it. A checker that passes
 * everything proves nothing.
 */
import { Effect } from "effect"
import fc from "fast-check"
import { beforeAll, describe, expect, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import { balances } from "../../projections/balances.ts"
import type { AppendRequest } from "../../src/depot/event.ts"
import type { DepotStoreShape } from "../../src/depot/store.ts"
import type { ReadModelStoreShape } from "../../src/readmodel/store.ts"
import type { Declarations } from "../../src/runtime/engine.ts"
import { loadTemplates } from "../../src/template/load.ts"
import { check, type HistoryEntry } from "../../src/testing/checker.ts"
import { memoryStores, type Stores, snapshot, withEngine } from "../../src/testing/harness.ts"

let declarations: Declarations
beforeAll(async () => {
  const templates = (await Effect.runPromise(loadTemplates("templates"))).filter((t) => t.name === "acc_balance")
  declarations = { depots: [accounts], topologies: [balances], templates }
})

/** One client's history: deposits on three keys, published concurrently, all acknowledged at full. */
const history = fc.array(fc.record({ key: fc.constantFrom("a", "b", "c"), amount: fc.integer({ min: 1, max: 100 }) }), {
  minLength: 4,
  maxLength: 30,
})

const entry = (
  i: number,
  key: string,
  type: string,
  payload: unknown,
  messageId: string,
  reply: HistoryEntry["reply"],
): HistoryEntry => ({
  client: "c1",
  seq: i,
  depot: "accounts",
  type,
  key,
  payload,
  messageId,
  ack: "full",
  reply,
  confirmed: true,
})

/**
 * Runs one history through an engine, then restarts the engine once on the
 * same stores (as a redeploy would), and checks what the client heard
 * against what the stores hold.
 */
const runAndCheck = async (stores: Stores, cmds: ReadonlyArray<{ key: string; amount: number }>, concurrency = 8) => {
  const entries = await Effect.runPromise(
    withEngine(stores, declarations, (engine) =>
      Effect.gen(function* () {
        const opened = yield* Effect.forEach(["a", "b", "c"], (k, i) =>
          Effect.map(engine.publish("accounts", "Opened", k, { owner: k }, { id: `open-${k}`, ack: "full" }), (r) =>
            entry(i, k, "Opened", { owner: k }, `open-${k}`, r),
          ),
        )
        const replies = yield* Effect.forEach(
          cmds,
          (c, i) => engine.publish("accounts", "Deposited", c.key, { amount: c.amount }, { id: `m${i}`, ack: "full" }),
          { concurrency },
        )
        yield* engine.settle()
        return [
          ...opened,
          ...replies.map((r, i) =>
            entry(
              3 + i,
              (cmds[i] as { key: string }).key,
              "Deposited",
              { amount: (cmds[i] as { amount: number }).amount },
              `m${i}`,
              r,
            ),
          ),
        ]
      }),
    ).pipe(Effect.timeout("10 seconds")),
  )
  await Effect.runPromise(
    withEngine(stores, declarations, (engine) => engine.settle()).pipe(Effect.timeout("10 seconds")),
  )
  const final = await Effect.runPromise(snapshot(stores, declarations))
  return Effect.runPromise(check(declarations, entries, final))
}

/** Finds a history on which the bad engine is caught, and returns the check names it broke. */
const caught = async (bad: (s: Stores) => Stores) => {
  const names = new Set<string>()
  await fc.assert(
    fc.asyncProperty(history, async (cmds) => {
      const s = bad(await Effect.runPromise(memoryStores()))
      for (const v of await runAndCheck(s, cmds)) names.add(v.check)
    }),
    { numRuns: 15 },
  )
  return names
}

describe("history checker", () => {
  it("passes a correct engine", async () => {
    await fc.assert(
      fc.asyncProperty(history, async (cmds) => {
        expect(await runAndCheck(await Effect.runPromise(memoryStores()), cmds)).toEqual([])
      }),
      { numRuns: 30 },
    )
  })

  it("catches an engine that drops an event after acknowledging it", async () => {
    const dropping = (s: Stores): Stores => {
      let n = 0
      const depot: DepotStoreShape = {
        ...s.depot,
        // Every 5th read page loses its last event, as if it were never durable.
        read: (d, p, from, limit) =>
          Effect.map(s.depot.read(d, p, from, limit), (es) => (++n % 5 === 0 && es.length > 1 ? es.slice(0, -1) : es)),
      }
      return { depot, models: s.models }
    }
    expect(await caught(dropping)).toContain("acknowledged-once")
  })

  it("catches an engine that applies an event twice", async () => {
    const twice = (s: Stores): Stores => {
      let n = 0
      const models: ReadModelStoreShape = {
        ...s.models,
        // Every 3rd commit stores a checkpoint one short: after a restart the last event is applied again.
        commit: (cp, next, writes) => s.models.commit(cp, ++n % 3 === 0 && next > 1 ? next - 1 : next, writes),
      }
      return { depot: s.depot, models }
    }
    expect(await caught(twice)).toContain("read-model-equals-fold")
  })

  it("catches an engine that reorders a key", async () => {
    const reordering = (s: Stores): Stores => {
      const depot: DepotStoreShape = {
        ...s.depot,
        // Swaps the first two requests of the same key in a batch.
        append: (d, p, requests) => {
          const rs = [...requests]
          for (let i = 0; i < rs.length; i++)
            for (let j = i + 1; j < rs.length; j++)
              if ((rs[i] as AppendRequest).key === (rs[j] as AppendRequest).key) {
                ;[rs[i], rs[j]] = [rs[j] as AppendRequest, rs[i] as AppendRequest]
                return Effect.map(s.depot.append(d, p, rs), (outcomes) => {
                  const o = [...outcomes]
                  ;[o[i], o[j]] = [o[j] as (typeof o)[number], o[i] as (typeof o)[number]]
                  return o
                })
              }
          return s.depot.append(d, p, rs)
        },
      }
      return { depot, models: s.models }
    }
    expect(await caught(reordering)).toContain("per-key-order")
  })
})
