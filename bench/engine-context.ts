/** Runs an engine over store instances for the duration of an async function. */
import { Context, Effect, Exit, Layer, Scope } from "effect"
import { DepotStore, type DepotStoreShape } from "../src/depot/store.ts"
import { ReadModelStore, type ReadModelStoreShape } from "../src/readmodel/store.ts"
import {
  type Declarations,
  defaultOptions,
  Engine,
  type EngineOptions,
  type EngineShape,
  layer,
} from "../src/runtime/engine.ts"

export const withEngineContext = async <A>(
  stores: { readonly depot: DepotStoreShape; readonly models: ReadModelStoreShape },
  declarations: Declarations,
  f: (engine: EngineShape) => Promise<A>,
  options: EngineOptions = defaultOptions,
): Promise<A> => {
  const scope = await Effect.runPromise(Scope.make())
  try {
    const ctx = await Effect.runPromise(
      Layer.buildWithScope(
        layer(declarations, options).pipe(
          Layer.provide(
            Layer.mergeAll(Layer.succeed(DepotStore, stores.depot), Layer.succeed(ReadModelStore, stores.models)),
          ),
        ),
        scope,
      ),
    )
    return await f(Context.get(ctx, Engine))
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
  }
}
