/**
 * MariaDB stores for lineage tests. Wraps test/support/mariadb-stores.ts
 * and also drops the example cascade's read-model tables, so every run
 * starts empty; adds a fresh read-model store over the same depot (a rebuild
 * from scratch) and the audit's MariaDB look-ups.
 */
import { Effect } from "effect"
import * as MariaDbDepot from "../../src/depot/mariadb.ts"
import * as AuditMariaDb from "../../src/lineage/audit-mariadb.ts"
import { MariaDb } from "../../src/mariadb/client.ts"
import * as MariaDbModels from "../../src/readmodel/mariadb.ts"
import type { Stores } from "../support/engine-properties.ts"
import { mariaDbStores } from "../support/mariadb-stores.ts"

/** Read-model tables of the example cascade, beyond those mariaDbStores drops. */
const MODEL_TABLES = ["beds_checkpoint", "acc_balance", "ovd_state", "alr_alert"]

export const lineageMariaDbStores = async (suite: string) => {
  const base = await mariaDbStores(suite)
  const provide = <A, E>(effect: Effect.Effect<A, E, MariaDb>) =>
    Effect.runPromise(Effect.provideService(effect, MariaDb, base.db))
  const fresh = async (): Promise<Stores> => {
    await base.db.pool.query(`DROP TABLE IF EXISTS ${MODEL_TABLES.join(", ")}`)
    return base.fresh()
  }
  /** A new depot-store instance on the same events (as after a restart) and empty read models. */
  const freshModels = async (_stores: Stores): Promise<Stores> => {
    await base.db.pool.query(`DROP TABLE IF EXISTS ${MODEL_TABLES.join(", ")}`)
    return provide(
      Effect.gen(function* () {
        return { depot: yield* MariaDbDepot.make(), models: yield* MariaDbModels.make }
      }),
    )
  }
  const lookups = () => provide(AuditMariaDb.lookups)
  const sql = (statement: string, params: ReadonlyArray<unknown> = []) => base.db.pool.query(statement, [...params])
  return { ...base, fresh, freshModels, lookups, sql }
}
