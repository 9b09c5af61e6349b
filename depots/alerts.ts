/**
 * The example domain's second depot: alerts about accounts. Nobody publishes
 * here; topologies emit into it (see projections/overdraft.ts), so every
 * alert's lineage ID names the event that caused it.
 */
import { Schema } from "effect"
import * as Depot from "../src/depot/depot.ts"

export const alerts = Depot.make({
  name: "alerts",
  // Fewer partitions than accounts on purpose: an account's alerts land on a
  // different partition number than its account events, so cascades cross both.
  partitions: 2,
  key: "account id",
  description: "Alerts raised about accounts by topologies.",
  events: {
    /** A withdrawal took the account's balance below zero. Amounts in cents. */
    OverdraftFlagged: Schema.Struct({
      account: Schema.String.check(Schema.isMinLength(1)),
      balance: Schema.Int.check(Schema.isLessThan(0)),
      withdrawal: Schema.Int.check(Schema.isGreaterThan(0)),
    }),
  },
})
