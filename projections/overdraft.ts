/**
 * overdraft: watches withdrawals and emits an OverdraftFlagged alert when one
 * takes an account's balance from zero or more to below zero. It keeps its
 * own balance per account (ovd_state) rather than reading another topology's
 * read model: topologies run independently, so another topology's row may be
 * ahead of or behind the event being processed, and a replay would differ.
 */
import { accounts } from "../depots/accounts.ts"
import * as Topology from "../src/topology/topology.ts"

type State = { readonly account_id: string; readonly balance: number }

const balanceOf = (row: unknown): number => (row as State | undefined)?.balance ?? 0

export const overdraft = Topology.make({
  name: "overdraft",
  version: 1,
  sources: [accounts],
  readModels: ["ovd_state"],
  description: "Flags withdrawals that overdraw an account, as events in the alerts depot.",
  step: Topology.matchStep(accounts, {
    Deposited: (p, event, ctx) => {
      const before = balanceOf(ctx.get("ovd_state", event.key))
      ctx.put("ovd_state", { account_id: event.key, balance: before + p.amount })
    },
    Withdrawn: (p, event, ctx) => {
      const before = balanceOf(ctx.get("ovd_state", event.key))
      const after = before - p.amount
      ctx.put("ovd_state", { account_id: event.key, balance: after })
      if (before >= 0 && after < 0)
        ctx.emit("alerts", "OverdraftFlagged", event.key, { account: event.key, balance: after, withdrawal: p.amount })
    },
  }),
})
