/**
 * balances: folds the accounts depot into one acc_balance row per account.
 */
import { accounts } from "../depots/accounts.ts"
import * as Topology from "../src/topology/topology.ts"

type Balance = {
  readonly account_id: string
  readonly owner: string | null
  readonly balance: number
  readonly events: number
  readonly status: "open" | "closed"
}

const empty = (id: string): Balance => ({ account_id: id, owner: null, balance: 0, events: 0, status: "open" })

/** One step of the fold; exported so tests can model the read model purely. */
export const step = (current: Balance | undefined, key: string, type: string, payload: unknown): Balance => {
  const b = current ?? empty(key)
  const p = payload as { owner?: string; amount?: number }
  switch (type) {
    case "Opened":
      return { ...b, owner: p.owner ?? null, status: "open", events: b.events + 1 }
    case "Deposited":
      return { ...b, balance: b.balance + (p.amount ?? 0), events: b.events + 1 }
    case "Withdrawn":
      return { ...b, balance: b.balance - (p.amount ?? 0), events: b.events + 1 }
    case "Closed":
      return { ...b, status: "closed", events: b.events + 1 }
    default:
      return b
  }
}

export const balances = Topology.make({
  name: "balances",
  version: 1,
  sources: [accounts],
  readModels: ["acc_balance"],
  description: "Current balance per account.",
  step: (event, ctx) => {
    const next = step(ctx.get("acc_balance", event.key) as Balance | undefined, event.key, event.type, event.payload)
    ctx.put("acc_balance", next)
    ctx.reply({ balance: next.balance })
  },
})
