/**
 * The engine over the real MariaDB depot store and REL read models: the same
 * properties as over memory (engine.test.ts), on the production storage.
 */
import { Effect } from "effect"
import fc from "fast-check"
import { afterAll, beforeAll, describe, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import { balances } from "../../projections/balances.ts"
import type { Declarations } from "../../src/runtime/engine.ts"
import { loadTemplates } from "../../src/template/load.ts"
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

  it("property: replies match the model, and the MariaDB read model equals the fold of the depot", async () => {
    await fc.assert(
      fc.asyncProperty(historyArbitrary, async (history) => runHistory(await stores.fresh(), declarations, history)),
      { numRuns: 15 },
    )
  })

  engineProperties(
    "mariadb",
    () => stores.fresh(),
    () => declarations,
    { crash: 12, concurrent: 8 },
  )
})
