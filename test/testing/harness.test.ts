/**
 * The user harness on the accounts domain, as the README shows it: a
 * Given/When/Then scenario and the property check of a topology.
 */
import { Effect } from "effect"
import fc from "fast-check"
import { beforeAll, describe, expect, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import { balances } from "../../projections/balances.ts"
import type { Declarations } from "../../src/runtime/engine.ts"
import { loadTemplates } from "../../src/template/load.ts"
import { type CheckOptions, checkTopology, scenario, type TestCommand } from "../../src/testing/index.ts"

let declarations: Declarations
beforeAll(async () => {
  const templates = (await Effect.runPromise(loadTemplates("templates"))).filter((t) => t.name === "acc_balance")
  declarations = { depots: [accounts], topologies: [balances], templates }
})

const accountCommand: fc.Arbitrary<TestCommand> = fc.oneof(
  fc.record({ key: fc.constantFrom("a1", "a2", "a3"), owner: fc.string({ minLength: 1, maxLength: 8 }) }).map((x) => ({
    depot: "accounts",
    type: "Opened",
    key: x.key,
    payload: { owner: x.owner },
  })),
  fc
    .record({
      key: fc.constantFrom("a1", "a2", "a3"),
      amount: fc.integer({ min: 1, max: 1000 }),
      type: fc.constantFrom("Deposited", "Withdrawn"),
    })
    .map((x) => ({ depot: "accounts", type: x.type, key: x.key, payload: { amount: x.amount }, ack: "full" as const })),
)

describe("testing harness", () => {
  it("given an opened account, when money moves, then the balance follows", async () => {
    await scenario(declarations)
      .given([{ depot: "accounts", type: "Opened", key: "a1", payload: { owner: "Ada" } }])
      .when([
        { depot: "accounts", type: "Deposited", key: "a1", payload: { amount: 500 } },
        { depot: "accounts", type: "Withdrawn", key: "a1", payload: { amount: 120 } },
      ])
      .thenRow("acc_balance", "a1", { owner: "Ada", balance: 380, events: 3, status: "open" })
      .thenRow("acc_balance", "a2", undefined)
      .thenReplies((replies) => (replies.every((r) => r.ok) ? undefined : "a command was refused"))
      .runPromise()
  })

  it("a wrong expectation fails the scenario and says what was found", async () => {
    await expect(
      scenario(declarations)
        .when([{ depot: "accounts", type: "Deposited", key: "a1", payload: { amount: 5 } }])
        .thenRow("acc_balance", "a1", { balance: 6 })
        .runPromise(),
    ).rejects.toThrow("acc_balance a1.balance: expected 6, found 5")
  })

  it("checks determinism, replay, redelivery and crashes of the balances topology", async () => {
    await checkTopology({
      declarations,
      commands: fc.array(accountCommand, { maxLength: 25 }),
      runs: 15,
      fc: fc as unknown as CheckOptions["fc"],
    })
  })
})
