/**
 * Runs an engine over given store instances inside a scope, so a test can
 * "crash" it (close the scope mid-flight) and start another on the same
 * stores, as a restarted process would find them.
 */
import { Context, Effect, Layer } from "effect"
import * as MemoryDepot from "../../src/depot/memory.ts"
import { DepotStore, type DepotStoreShape } from "../../src/depot/store.ts"
import * as MemoryModels from "../../src/readmodel/memory.ts"
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

/** Engine options whose handler retries come quickly, for tests of failing handlers. */
export const fastRetries: EngineOptions = {
  ...defaultOptions,
  topology: { batchMax: 100, retries: 3, retryBaseMs: 1 },
}

/** A memory depot and memory read models, as a fresh embedded engine finds them. */
export const memoryStores = async () => ({
  depot: MemoryDepot.make(),
  models: await Effect.runPromise(MemoryModels.make),
})

/** Polls `check` every 5 ms until it holds; fails after 2 s. */
export const waitUntil = <E>(check: () => Effect.Effect<boolean, E>) =>
  Effect.gen(function* () {
    for (let i = 0; i < 400; i++) {
      if (yield* check()) return
      yield* Effect.sleep("5 millis")
    }
    throw new Error("condition not reached in 2 s")
  })
