/**
 * The stores a replay outside the engine works on. The depot store is the
 * configured one. The read models of a topology that only writes REL
 * templates on MariaDB are opened on the MariaDB adapter itself: that is
 * where such a topology's rows and checkpoints live even behind the
 * REL/REC router (a single-backend topology bypasses it), and where the
 * blue/green operations are. Any other topology gets the configured store,
 * which replays only if it offers those operations.
 */
import { Layer } from "effect"
import type { LoadedConfig } from "../config/load.ts"
import * as MariaDb from "../mariadb/client.ts"
import * as MariaDbModels from "../readmodel/mariadb.ts"
import { storesLayer } from "../runtime/boot.ts"
import type { Declarations } from "../runtime/engine.ts"

/** Depot store and read-model store for replaying these topologies from a process of their own. */
export const replayStoresLayer = (
  loaded: LoadedConfig,
  root: string,
  declarations: Declarations,
  topologies: ReadonlyArray<string>,
) => {
  const c = loaded.config
  const configured = storesLayer(loaded, root, declarations.topologies)
  const relOnly = topologies.every((name) =>
    (declarations.topologies.find((t) => t.name === name)?.readModels ?? []).every(
      (m) => declarations.templates.find((t) => t.name === m)?.backend === "rel",
    ),
  )
  if (c.engine.rel !== "mariadb" || !relOnly) return configured
  return Layer.merge(configured, MariaDbModels.layer.pipe(Layer.provide(MariaDb.layer(c.mariadb))))
}
