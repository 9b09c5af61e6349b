/**
 * The engine over the real MariaDB depot store and REL read models: the same
 * properties as over memory (engine.test.ts), on the production storage.
 */
import { Effect } from "effect"
import fc from "fast-check"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import { balances } from "../../projections/balances.ts"
import { type Declarations, defaultOptions } from "../../src/runtime/engine.ts"
import { loadTemplates } from "../../src/template/load.ts"
import { LAST_EVENT_COLUMN, type Row } from "../../src/template/template.ts"
import { withEngine } from "../support/engine.ts"
import { engineProperties, historyArbitrary, runHistory } from "../support/engine-properties.ts"
import { mariaDbStores } from "../support/mariadb-stores.ts"
import { mariaDbAvailable } from "../support/services.ts"

const available = await mariaDbAvailable()

describe.skipIf(!available)("engine (MariaDB depot + MariaDB read models)", () => {
  let declarations: Declarations
  let stores: Awaited<ReturnType<typeof mariaDbStores>>
  beforeAll(async () => {
    const templates = await Effect.runPromise(loadTemplates("templates"))
    declarations = { depots: [accounts], topologies: [balances], templates }
    stores = await mariaDbStores("engine")
  })
  afterAll(async () => stores?.close())

  // Few kept rows, so that rows also leave the keep and are loaded again.
  const keeping = { ...defaultOptions, topology: { ...defaultOptions.topology, keepRows: 3 } }

  for (const [label, options, runs] of [
    ["", defaultOptions, { history: 15, crash: 12, concurrent: 8 }],
    [", rows kept between batches", keeping, { history: 10, crash: 8, concurrent: 5 }],
  ] as const) {
    it(`property: replies match the model, and the MariaDB read model equals the fold of the depot (mariadb${label})`, async () => {
      await fc.assert(
        fc.asyncProperty(historyArbitrary, async (history) =>
          runHistory(await stores.fresh(), declarations, history, options),
        ),
        { numRuns: runs.history },
      )
    })

    engineProperties(
      `mariadb${label}`,
      () => stores.fresh(),
      () => declarations,
      { crash: runs.crash, concurrent: runs.concurrent },
      options,
    )
  }

  it("a kept row that another writer changed is caught at commit: the next event folds on the stored row", async () => {
    const s = await stores.fresh()
    await Effect.runPromise(
      withEngine(
        s,
        declarations,
        (engine) =>
          Effect.gen(function* () {
            const publish = (type: string, payload: unknown, id: string) =>
              engine.publish("accounts", type, "k1", payload, { id, ack: "full" })
            yield* publish("Opened", { owner: "ann" }, "m1")
            yield* publish("Deposited", { amount: 10 }, "m2")
            const kept = (yield* s.models.load("acc_balance", [["k1"]])).get("k1") as Row
            expect(kept).toMatchObject({ balance: 10, events: 2 })
            // Another writer (its own checkpoint) moves the row on, as a second topology might.
            const foreign = { ...kept, balance: 1000, [LAST_EVENT_COLUMN]: "accounts:9:99" }
            yield* s.models.commit({ topology: "other", depot: "accounts", partition: 0 }, 1, [
              { template: "acc_balance", key: ["k1"], row: foreign },
            ])
            yield* publish("Deposited", { amount: 5 }, "m3")
            expect((yield* s.models.load("acc_balance", [["k1"]])).get("k1")).toMatchObject({
              balance: 1005,
              events: 3,
            })
          }),
        keeping,
      ),
    )
  })
})
