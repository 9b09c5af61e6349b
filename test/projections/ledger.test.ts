/**
 * The ledger example through the real runner: its REC documents are staged
 * in canonical form and checked at every write, and must still equal the
 * plain fold of its `step` over each account's events, whatever the batches.
 */
import { Effect } from "effect"
import fc from "fast-check"
import { beforeAll, describe, expect, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import { type Ledger, ledger, RECENT_ENTRIES, step } from "../../projections/ledger.ts"
import type { Event } from "../../src/depot/event.ts"
import * as MemoryModels from "../../src/readmodel/memory.ts"
import type { Declarations } from "../../src/runtime/engine.ts"
import { loadTemplates } from "../../src/template/load.ts"
import { LAST_EVENT_COLUMN, type Row, type Template } from "../../src/template/template.ts"
import { fastRetries, memoryStores, withEngine } from "../support/engine.ts"
import { depotEvents, publishAccountCommands } from "../support/engine-properties.ts"

let declarations: Declarations
beforeAll(async () => {
  const templates: ReadonlyArray<Template> = await Effect.runPromise(loadTemplates("templates"))
  declarations = { depots: [accounts], topologies: [ledger], templates }
})

/** Each account's document as the plain fold of `step` gives it, with the last event's ID. */
const foldLedgers = (events: ReadonlyArray<Event>): Map<string, Row> => {
  const out = new Map<string, Row>()
  for (const e of events) {
    const next = step(out.get(e.key) as Ledger | undefined, e)
    out.set(e.key, { ...next, [LAST_EVENT_COLUMN]: e.id })
  }
  return out
}

const scanned = (rows: ReadonlyArray<Row>) => new Map(rows.map((r) => [r.account_id as string, r]))

describe("ledger", () => {
  it("property: each document equals the fold of step over its account's events, live in any batches and refolded at a cold start", async () => {
    const command = (keys: ReadonlyArray<string>) =>
      fc.record({
        type: fc.constantFrom("Opened", "Deposited", "Deposited", "Withdrawn", "Closed"),
        key: fc.constantFrom(...keys),
        amount: fc.integer({ min: 1, max: 1000 }),
      })
    // Now and then long enough for account "a" to pass the entries a document keeps.
    const history = fc.oneof(
      fc.array(command(["a", "b", "c"]), { minLength: 1, maxLength: 30 }),
      fc.array(command(["a", "a", "a", "a", "b"]), {
        minLength: 2 * RECENT_ENTRIES + 50,
        maxLength: 3 * RECENT_ENTRIES,
      }),
    )
    await fc.assert(
      fc.asyncProperty(history, fc.constantFrom(1, 7, 100), async (commands, batchMax) => {
        const s = await memoryStores()
        const options = { ...fastRetries, topology: { ...fastRetries.topology, batchMax } }
        const [live, events] = await Effect.runPromise(
          withEngine(
            s,
            declarations,
            (engine) =>
              Effect.gen(function* () {
                yield* publishAccountCommands(engine, commands, { concurrency: 8, ack: "none" })
                yield* engine.settle()
                return [yield* s.models.scan("ldg_account"), yield* depotEvents(s.depot, declarations)] as const
              }),
            options,
          ),
        )
        const expected = foldLedgers(events.toSorted((a, b) => a.partition - b.partition || a.offset - b.offset))
        expect(scanned(live)).toEqual(expected)
        // A cold start on the same depot with empty read models folds it again, in catch-up batches.
        const fresh = { depot: s.depot, models: await Effect.runPromise(MemoryModels.make) }
        const refolded = await Effect.runPromise(
          withEngine(
            fresh,
            declarations,
            (engine) => Effect.andThen(engine.settle(), fresh.models.scan("ldg_account")),
            options,
          ),
        )
        expect(scanned(refolded)).toEqual(expected)
      }),
      { numRuns: 25 },
    )
  })
})
