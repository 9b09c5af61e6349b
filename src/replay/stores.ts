/**
 * The stores a replay outside the engine works on: the configured depot store
 * and read-model store, as the engine opens them. The read-model store gives
 * each topology the blue/green operations of the backend that holds its read
 * models: the adapter itself, or behind the REL/REC router the adapter a
 * single-backend topology writes (see router.ts; a topology that writes both
 * backends is refused there, with the reason).
 */
import { Context, Effect, Layer } from "effect"
import type { LoadedConfig } from "../config/load.ts"
import * as Router from "../readmodel/router.ts"
import { ReadModelStore } from "../readmodel/store.ts"
import { storesLayer } from "../runtime/boot.ts"
import type { Declarations } from "../runtime/engine.ts"

/** Depot store and read-model store for replaying topologies from a process of their own. */
export const replayStoresLayer = (loaded: LoadedConfig, root: string, declarations: Declarations) =>
  storesLayer(loaded, root, declarations.topologies).pipe(
    // The start-up version step reads topology records before any template is ensured.
    Layer.tap((context) =>
      Effect.sync(() => Router.declareTemplates(Context.get(context, ReadModelStore), declarations.templates)),
    ),
  )
