/**
 * alert_log: folds the alerts depot into one alr_alert row per account.
 * Its events are all derived, so each row's beds_last_id leads back through
 * the alert to the withdrawal that caused it (`beds why alr_alert <account>`).
 */
import { Effect } from "effect"
import { alerts } from "../depots/alerts.ts"
import * as Topology from "../src/topology/topology.ts"

type AlertRow = {
  readonly account_id: string
  readonly alerts: number
  readonly last_balance: number
  readonly last_withdrawal: number
  readonly lowest_balance: number
  readonly first_at: number
  readonly last_at: number
}

export const alertLog = Topology.make({
  name: "alert_log",
  version: 1,
  sources: [alerts],
  readModels: ["alr_alert"],
  description: "Overdraft alerts per account: how many, the latest and the lowest balance.",
  handle: Topology.match(alerts, {
    OverdraftFlagged: (p, event, ctx) =>
      Effect.gen(function* () {
        const row = (yield* ctx.get("alr_alert", event.key)) as AlertRow | undefined
        const next: AlertRow = {
          account_id: event.key,
          alerts: (row?.alerts ?? 0) + 1,
          last_balance: p.balance,
          last_withdrawal: p.withdrawal,
          lowest_balance: Math.min(row?.lowest_balance ?? p.balance, p.balance),
          first_at: row?.first_at ?? event.time,
          last_at: event.time,
        }
        yield* ctx.put("alr_alert", next)
      }),
  }),
})
