/**
 * ledger: folds the accounts depot into one ldg_account document per account
 * (a REC template: a MongoDB collection, or memory in the embedded mode),
 * beside `balances`, which keeps acc_balance in MariaDB. Both topologies read
 * the same depot, so a `full` reply waits until both have applied the event.
 */
import { accounts } from "../depots/accounts.ts"
import type { Event } from "../src/depot/event.ts"
import * as Topology from "../src/topology/topology.ts"

/** Entries a document keeps; totals and counts cover the whole history, so the document stays small. */
export const RECENT_ENTRIES = 200

export type Entry = {
  /** Lineage ID of the event. */
  readonly event: string
  readonly at: number
  readonly kind: "deposit" | "withdrawal"
  readonly amount: number
  /** Balance right after the entry. */
  readonly balance: number
}

export type Ledger = {
  readonly account_id: string
  readonly owner: string | null
  readonly status: "open" | "closed"
  readonly balance: number
  readonly events: number
  readonly counts: Readonly<Record<string, number>>
  readonly totals: { readonly deposited: number; readonly withdrawn: number; readonly largest_deposit: number }
  readonly entries: ReadonlyArray<Entry>
  readonly opened_at: number | null
  readonly last_at: number | null
}

const empty = (id: string): Ledger => ({
  account_id: id,
  owner: null,
  status: "open",
  balance: 0,
  events: 0,
  counts: {},
  totals: { deposited: 0, withdrawn: 0, largest_deposit: 0 },
  entries: [],
  opened_at: null,
  last_at: null,
})

const remember = (entries: ReadonlyArray<Entry>, entry: Entry): ReadonlyArray<Entry> =>
  [...entries, entry].slice(-RECENT_ENTRIES)

/** One step of the fold; exported so tests can model the read model purely. */
export const step = (
  current: Ledger | undefined,
  event: Pick<Event, "id" | "key" | "type" | "payload" | "time">,
): Ledger => {
  const l = current ?? empty(event.key)
  const p = event.payload as { owner?: string; amount?: number }
  const counted: Ledger = {
    ...l,
    events: l.events + 1,
    counts: { ...l.counts, [event.type]: (l.counts[event.type] ?? 0) + 1 },
    last_at: event.time,
  }
  switch (event.type) {
    case "Opened":
      return { ...counted, owner: p.owner ?? null, status: "open", opened_at: l.opened_at ?? event.time }
    case "Deposited": {
      const amount = p.amount ?? 0
      const balance = l.balance + amount
      return {
        ...counted,
        balance,
        totals: {
          ...l.totals,
          deposited: l.totals.deposited + amount,
          largest_deposit: Math.max(l.totals.largest_deposit, amount),
        },
        entries: remember(l.entries, { event: event.id, at: event.time, kind: "deposit", amount, balance }),
      }
    }
    case "Withdrawn": {
      const amount = p.amount ?? 0
      const balance = l.balance - amount
      return {
        ...counted,
        balance,
        totals: { ...l.totals, withdrawn: l.totals.withdrawn + amount },
        entries: remember(l.entries, { event: event.id, at: event.time, kind: "withdrawal", amount, balance }),
      }
    }
    case "Closed":
      return { ...counted, status: "closed" }
    default:
      return counted
  }
}

export const ledger = Topology.make({
  name: "ledger",
  version: 1,
  sources: [accounts],
  readModels: ["ldg_account"],
  description: "Per-account ledger documents: recent entries, running totals, event counts.",
  step: (event, ctx) => ctx.put("ldg_account", step(ctx.get("ldg_account", event.key) as Ledger | undefined, event)),
})
