/**
 * Runs an engine over given store instances inside a scope, so a test can
 * "crash" it (close the scope mid-flight) and start another on the same
 * stores, as a restarted process would find them.
 */
import { Context, Effect, Layer } from "effect"
import { DepotStore, type DepotStoreShape } from "../../src/depot/store.ts"
import { ReadModelStore, type ReadModelStoreShape } from "../../src/readmodel/store.ts"
import {
  type Declarations,
  defaultOptions,
  Engine,
  type EngineOptions,
  type EngineShape,
  layer,
} from "../../src/runtime/engine.ts"

export const withEngine = <A, E>(
  stores: { readonly depot: DepotStoreShape; readonly models: ReadModelStoreShape },
  declarations: Declarations,
  f: (engine: EngineShape) => Effect.Effect<A, E>,
  options: EngineOptions = defaultOptions,
) =>
  Effect.scoped(
    Effect.gen(function* () {
      const ctx = yield* Layer.build(
        layer(declarations, options).pipe(
          Layer.provide(
            Layer.mergeAll(Layer.succeed(DepotStore, stores.depot), Layer.succeed(ReadModelStore, stores.models)),
          ),
        ),
      )
      return yield* f(Context.get(ctx, Engine))
    }),
  )
