/**
 * Start-up ("IPL"): an ordered sequence of steps, each logged with its
 * duration, that turns configuration and declarations into a running engine.
 * Each step that can fail names itself, the address it tried and the remedy,
 * so an operator knows what to fix without reading code.
 */
import * as path from "node:path"
import { type Context, Effect, Layer } from "effect"
import type { LoadedConfig } from "../config/load.ts"
import type { Depot } from "../depot/depot.ts"
import * as FileDepot from "../depot/file.ts"
import * as MariaDbDepot from "../depot/mariadb.ts"
import * as MemoryDepot from "../depot/memory.ts"
import { DepotStore } from "../depot/store.ts"
import * as MariaDb from "../mariadb/client.ts"
import * as MariaDbModels from "../readmodel/mariadb.ts"
import * as MemoryModels from "../readmodel/memory.ts"
import * as MongoModels from "../readmodel/mongodb.ts"
import * as Router from "../readmodel/router.ts"
import type { ReadModelStore } from "../readmodel/store.ts"
import type { Topology } from "../topology/topology.ts"
import * as Declarations from "./declarations.ts"
import { type Declarations as Decl, Engine, type EngineOptions, make as makeEngine } from "./engine.ts"

/** Engine options from configuration. */
export const engineOptions = (c: LoadedConfig["config"]): EngineOptions => ({
  ingress: { maxBodyBytes: c.ingress.max_body_bytes, batchMax: c.ingress.batch_max, inFlight: c.ingress.in_flight },
  topology: {
    batchMax: c.topology.batch_max,
    retries: c.topology.retries,
    retryBaseMs: c.topology.retry_base_ms,
    lingerMs: c.topology.linger_ms ?? 0,
    lingerFullMs: c.topology.linger_full_ms,
    keepRows: c.topology.keep_rows,
  },
  allowExternalParents: c.engine.allow_external_parents,
})

/** Logs a start-up step with its duration; failures keep their own message. */
export const step = <A, E, R>(name: string, effect: Effect.Effect<A, E, R>, log: (line: string) => void) =>
  Effect.suspend(() => {
    const t0 = performance.now()
    return effect.pipe(
      Effect.tap(() => Effect.sync(() => log(`ipl: ${name.padEnd(34)} ok  ${(performance.now() - t0).toFixed(1)} ms`))),
      Effect.tapError(() =>
        Effect.sync(() => log(`ipl: ${name.padEnd(34)} FAILED after ${(performance.now() - t0).toFixed(1)} ms`)),
      ),
    )
  })

/**
 * Replicas are optional: each is tried once with the primary's credentials,
 * and one that does not answer is logged as a warning naming its address.
 * (Reads are served from the primary today; replicas are checked so an
 * operator learns early that one is gone.)
 */
const checkReplicas = (
  c: LoadedConfig["config"]["mariadb"],
  replicas: ReadonlyArray<string>,
  log: (line: string) => void,
) =>
  Effect.forEach(
    replicas,
    (address) =>
      Effect.promise(async () => {
        const [host, port] = address.split(":") as [string, string]
        try {
          const mariadb = await import("mariadb")
          const conn = await mariadb.createConnection({
            host,
            port: Number(port),
            user: c.user,
            password: c.password,
            connectTimeout: Math.min(c.connect_timeout_ms, 3000),
          })
          await conn.end()
          log(`ipl:   replica ${address} answers`)
        } catch (e) {
          log(
            `ipl:   WARNING replica ${address} does not answer (${(e as Error).message}); serving from the primary only`,
          )
        }
      }),
    { discard: true },
  )

/** Narrows declarations to what this node's role serves ("*" = all). */
export const forRole = (decl: Decl, config: LoadedConfig["config"]): Decl => {
  const role = config.roles[config.engine.role]
  if (role === undefined) return decl
  const pick = <T extends Depot | Topology>(all: ReadonlyArray<T>, names: ReadonlyArray<string>) =>
    names.includes("*") ? all : all.filter((x) => names.includes(x.name))
  const topologies = pick(decl.topologies, role.topologies)
  const depots = pick(decl.depots, role.depots)
  return { ...decl, depots, topologies: topologies.filter((t) => t.sources.every((s) => depots.includes(s))) }
}

/**
 * Which read-model backends keep their rows in a database; the others are in
 * memory, inside the engine, and rebuilt from the depots at every start.
 */
export const keptBackends = (c: LoadedConfig["config"]): Readonly<Record<"rel" | "rec", boolean>> => ({
  rel: c.engine.rel === "mariadb",
  rec: c.engine.rec === "mongodb" && c.mongodb !== undefined,
})

/**
 * The storage Layers the configuration asks for. With REL and REC on
 * different backends, a router sends each template to its own (and keeps
 * a topology that writes both exactly-once; see readmodel/router.ts).
 */
export const storesLayer = (
  loaded: LoadedConfig,
  root: string,
  topologies?: ReadonlyArray<{ readonly name: string; readonly readModels: ReadonlyArray<string> }>,
) => {
  const c = loaded.config
  const kept = keptBackends(c)
  // Layers are memoized by reference, so both adapters share one pool.
  const maria = MariaDb.layer(c.mariadb)
  const depot =
    c.engine.depot === "mariadb"
      ? MariaDbDepot.layer.pipe(Layer.provide(maria))
      : c.engine.depot === "file"
        ? FileDepot.layer(path.resolve(root, c.engine.data_dir))
        : Layer.sync(DepotStore, MemoryDepot.make)
  const mongo = c.mongodb
  const rec =
    kept.rec && mongo !== undefined
      ? MongoModels.backend({ url: mongo.url, database: mongo.database })
      : Router.memoryBackend
  const routed = { ...(topologies === undefined ? {} : { topologies }) }
  const models =
    c.engine.rel === "memory" && c.engine.rec === "memory"
      ? MemoryModels.layer
      : kept.rel
        ? Router.layer({ rel: MariaDbModels.make, rec, ...routed }).pipe(Layer.provide(maria))
        : Router.layer({ rel: MemoryModels.make, rec, ...routed })
  return Layer.mergeAll(depot, models)
}

/** Steps a caller adds to start-up, each at its place in the order. */
export interface BootSteps<E1, E2> {
  /** After the declarations, before any database is touched: the broker's reachability, login and topology. */
  readonly broker?: ((declarations: Decl) => Effect.Effect<void, E1>) | undefined
  /** After the databases answered, before storage opens (e.g. rebuilding topologies whose version changed). */
  readonly beforeStorage?: Effect.Effect<unknown, E2> | undefined
  /** How long reading the configuration took, when the caller timed it: logged on the config line. */
  readonly configMs?: number | undefined
}

/**
 * Boots an engine from a project folder and its configuration, logging each
 * step. The returned Layer provides the Engine (and the stores beneath it).
 * The order: config, declarations and templates, the broker (when given),
 * the MariaDB primary (required) and replicas (warned about), the caller's
 * step before storage, then storage with its DDL, recovery of offsets and
 * checkpoints, and the topologies.
 */
export const boot = <E1 = never, E2 = never>(
  loaded: LoadedConfig,
  root: string,
  log: (line: string) => void = (l) => console.log(l),
  steps: BootSteps<E1, E2> = {},
) =>
  Layer.unwrap(
    Effect.gen(function* () {
      log(
        `ipl: config ${loaded.files.join(" + ")} (depot=${loaded.config.engine.depot}, rel=${loaded.config.engine.rel}, transport=${loaded.config.engine.transport}, role=${loaded.config.engine.role})${steps.configMs === undefined ? "" : ` ok  ${steps.configMs.toFixed(1)} ms`}`,
      )
      const all = yield* step("declarations and templates", Declarations.load(root), log)
      const decl = forRole(all, loaded.config)
      log(
        `ipl: serving depots [${decl.depots.map((d) => `${d.name}/${d.partitions}`).join(", ")}], topologies [${decl.topologies.map((t) => `${t.name}@v${t.version}`).join(", ")}], templates [${decl.templates.map((t) => `${t.tla}:${t.name}`).join(", ")}]`,
      )
      if (steps.broker !== undefined) yield* steps.broker(decl)
      const m = loaded.config.mariadb
      const usesMariaDb = loaded.config.engine.depot === "mariadb" || loaded.config.engine.rel === "mariadb"
      if (usesMariaDb) yield* step(`MariaDB ${m.host}:${m.port} primary`, MariaDb.connectPrimary(m), log)
      const replicas = m.replicas ?? []
      if (replicas.length > 0 && usesMariaDb)
        yield* step(`MariaDB replicas (${replicas.length})`, checkReplicas(m, replicas, log), log)
      if (steps.beforeStorage !== undefined) yield* steps.beforeStorage
      const stores = storesLayer(loaded, root, decl.topologies)
      const engine = Layer.effect(
        Engine,
        step("storage, DDL, recovery, topologies", makeEngine(decl, engineOptions(loaded.config)), log),
      )
      return engine.pipe(Layer.provideMerge(stores))
    }),
  )

export type BootedContext = Context.Context<Engine | DepotStore | ReadModelStore>
