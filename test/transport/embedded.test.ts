/**
 * The embedded transport runs the transport conformance suite unchanged:
 * over the memory stores, and over the file depot the embedded default uses.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Context, Effect, Exit, Layer, Scope } from "effect"
import * as EmbeddedClient from "../../src/client/embedded.ts"
import * as FileDepot from "../../src/depot/file.ts"
import * as MemoryDepot from "../../src/depot/memory.ts"
import { DepotStore } from "../../src/depot/store.ts"
import * as MemoryModels from "../../src/readmodel/memory.ts"
import { ReadModelStore } from "../../src/readmodel/store.ts"
import { Engine, layer as engineLayer } from "../../src/runtime/engine.ts"
import {
  conformanceDeclarations,
  conformanceOptions,
  type TransportHarness,
  transportConformance,
} from "./conformance.ts"

const harness = async (
  stores: Layer.Layer<DepotStore | ReadModelStore, unknown>,
  cleanup: () => void = () => undefined,
): Promise<TransportHarness> => {
  const declarations = await Effect.runPromise(conformanceDeclarations())
  const scope = await Effect.runPromise(Scope.make())
  const ctx = await Effect.runPromise(
    Layer.buildWithScope(engineLayer(declarations, conformanceOptions).pipe(Layer.provideMerge(stores)), scope),
  )
  const engine = Context.get(ctx, Engine)
  const client = await Effect.runPromise(EmbeddedClient.make(engine, { inFlight: 1000 }))
  return {
    client,
    engine,
    depot: Context.get(ctx, DepotStore),
    models: Context.get(ctx, ReadModelStore),
    close: async () => {
      await Effect.runPromise(Scope.close(scope, Exit.void))
      cleanup()
    },
  }
}

transportConformance("embedded over the memory stores", () =>
  harness(Layer.mergeAll(Layer.sync(DepotStore, MemoryDepot.make), MemoryModels.layer)),
)

transportConformance("embedded over the file depot", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "beds-embedded-"))
  return harness(Layer.mergeAll(FileDepot.layer(dir), MemoryModels.layer), () =>
    fs.rmSync(dir, { recursive: true, force: true }),
  )
})
