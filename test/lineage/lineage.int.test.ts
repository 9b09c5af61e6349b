/**
 * The lineage properties of lineage.test.ts on MariaDB: the depot table's
 * ID index serves ancestors and descendants, derived events dedupe by
 * message_id across a rebuild, and the audit (with its MariaDB look-ups)
 * passes every clean history.
 */
import fc from "fast-check"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Lineage from "../../src/lineage/lineage-id.ts"
import type { Declarations } from "../../src/runtime/engine.ts"
import { mariaDbAvailable } from "../support/services.ts"
import { lineageMariaDbStores } from "./mariadb.ts"
import { cascadeDeclarations, cascadeProperty, stepsArbitrary } from "./support.ts"

const available = await mariaDbAvailable()

describe.skipIf(!available)("lineage on MariaDB (depot + read models)", () => {
  let decl: Declarations
  let stores: Awaited<ReturnType<typeof lineageMariaDbStores>>
  beforeAll(async () => {
    decl = await cascadeDeclarations()
    stores = await lineageMariaDbStores("lineage")
  })
  afterAll(async () => stores?.close())

  it("property: ancestors from the ID are the stored parent chain, descendants by range scan are those found by walking children, the audit is clean, and a rebuild from scratch reproduces the same derived events and rows", async () => {
    let derived = 0
    await fc.assert(
      fc.asyncProperty(stepsArbitrary, async (steps) => {
        const events = await cascadeProperty(stores.fresh, stores.freshModels, decl, steps, () => stores.lookups())
        derived += events.filter((e) => Lineage.depth(e.id) > 0).length
      }),
      // A failing MariaDB run costs seconds; report the first counterexample rather than shrink for minutes.
      { numRuns: 25, endOnFailure: true },
    )
    expect(derived).toBeGreaterThan(10)
  })
})
