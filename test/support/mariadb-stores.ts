/**
 * MariaDB-backed store pairs for engine tests: one pool per test file, fresh
 * tables (and fresh store instances, whose caches start empty) per run.
 */
import { Context, Effect, Exit, Layer, Scope } from "effect"
import * as MariaDbDepot from "../../src/depot/mariadb.ts"
import * as MariaDb from "../../src/mariadb/client.ts"
import * as MariaDbModels from "../../src/readmodel/mariadb.ts"
import type { Stores } from "./engine-properties.ts"
import { dropDatabase, mariaDbSettings } from "./services.ts"

export const mariaDbStores = async (suite: string) => {
  const settings = mariaDbSettings(suite)
  const scope = await Effect.runPromise(Scope.make())
  const ctx = await Effect.runPromise(Layer.buildWithScope(MariaDb.layer(settings), scope))
  const db = Context.get(ctx, MariaDb.MariaDb)
  const fresh = async (): Promise<Stores> => {
    await db.pool.query("DROP TABLE IF EXISTS beds_event, beds_checkpoint, acc_balance")
    return Effect.runPromise(
      Effect.gen(function* () {
        const depot = yield* MariaDbDepot.make()
        const models = yield* MariaDbModels.make
        return { depot, models }
      }).pipe(Effect.provideContext(ctx)),
    )
  }
  const close = async () => {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    await dropDatabase(settings)
  }
  return { fresh, close, db, settings }
}
