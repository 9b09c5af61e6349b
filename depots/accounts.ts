/**
 * The example domain: bank accounts. Amounts are integer cents, so folds are
 * exact and replays reproduce balances to the cent.
 */
import { Schema } from "effect"
import * as Depot from "../src/depot/depot.ts"

const Cents = Schema.Int.check(Schema.isGreaterThan(0))

export const accounts = Depot.make({
  name: "accounts",
  partitions: 4,
  key: "account id",
  description: "Bank accounts: opened, money in and out, closed.",
  events: {
    Opened: Schema.Struct({ owner: Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(200)) }),
    Deposited: Schema.Struct({ amount: Cents }),
    Withdrawn: Schema.Struct({ amount: Cents }),
    Closed: Schema.Struct({}),
  },
})
