/**
 * What the inspection verbs (`lineage`, `why`, `audit`) share: loading a
 * project's configuration and declarations, opening its stores without
 * starting an engine, and turning lineage errors into exit codes.
 */
import { Context, Effect, Layer } from "effect"
import type { LoadedConfig } from "../config/load.ts"
import { DepotStore } from "../depot/store.ts"
import { isUsageError, LineageError } from "../lineage/error.ts"
import { ReadModelStore } from "../readmodel/store.ts"
import { engineOptions, storesLayer } from "../runtime/boot.ts"
import * as Declarations from "../runtime/declarations.ts"
import { type Declarations as Decl, type EngineShape, make as makeEngine } from "../runtime/engine.ts"
import { configOf } from "./context.ts"
import { ExitCode, runCli } from "./run.ts"

/** A project folder with its configuration and declarations, as the verbs load it. */
export interface Project {
  readonly root: string
  readonly loaded: LoadedConfig
  readonly declarations: Decl
}

/** Configuration (BEDS_CONFIG_DIR, else <root>/config) and every declaration under `root`. */
export const loadProject = (root: string) =>
  Effect.gen(function* () {
    const loaded = yield* configOf(root)
    const declarations = yield* Declarations.load(root)
    return { root, loaded, declarations } satisfies Project
  })

/**
 * Waits until the topologies have applied everything, including the events
 * they emitted meanwhile: `settle` waits for the heads it saw, and a cascade
 * moves them, so it repeats until they stand still. A stream that halts
 * (its handler kept failing) would never catch up, so that fails the wait.
 */
export const settleCascades = (engine: EngineShape) =>
  Effect.gen(function* () {
    const heads = Effect.map(engine.status(), (s) => JSON.stringify(s.depots))
    const halted = Effect.gen(function* () {
      while (true) {
        const stuck = (yield* engine.status()).streams.find((s) => s.state === "halted")
        if (stuck !== undefined)
          return yield* new LineageError({
            code: "REPLAY_HALTED",
            message: `Topology ${stuck.topology} halted on ${stuck.depot}/${stuck.partition} at offset ${stuck.next} (${stuck.error ?? "no reason given"}), so its read models cannot catch up. Fix the handler and run again; \`beds lineage ${stuck.depot}:${stuck.partition}:${stuck.next}\` shows the event if it is a root.`,
          })
        yield* Effect.sleep("250 millis")
      }
    })
    let before = yield* heads
    while (true) {
      yield* Effect.raceFirst(engine.settle(), halted)
      const after = yield* heads
      if (after === before) return
      before = after
    }
  })

/**
 * Runs `use` with the project's depot store and read-model store, without
 * serving commands. `templates` names the read models `use` reads (none: it
 * reads only the depots); only those are opened, so a verb about one template
 * does not depend on the others' backends. Read models kept in memory
 * (engine.rel = "memory") exist only inside a running engine, so they are
 * first rebuilt here by replaying the depots, as the embedded engine does at
 * start; the replay may append derived events an interrupted run left unwritten.
 */
export const withStores = <A, E>(
  project: Project,
  options: { readonly templates: ReadonlyArray<string>; readonly log: (line: string) => void },
  use: Effect.Effect<A, E, DepotStore | ReadModelStore>,
) =>
  Effect.scoped(
    Effect.gen(function* () {
      const { loaded, declarations } = project
      const ctx = yield* Layer.build(storesLayer(loaded, project.root, declarations.topologies))
      const store = Context.get(ctx, DepotStore)
      const models = Context.get(ctx, ReadModelStore)
      yield* store.open(declarations.depots)
      const wanted = declarations.templates.filter((t) => options.templates.includes(t.name))
      if (wanted.length > 0) {
        if (loaded.config.engine.rel === "memory" && loaded.config.engine.depot !== "memory") {
          options.log("read models live in memory (engine.rel = memory): rebuilding them by replay first")
          const engine = yield* makeEngine(declarations, engineOptions(loaded.config)).pipe(Effect.provideContext(ctx))
          yield* settleCascades(engine)
        } else yield* models.ensure(wanted)
      }
      return yield* Effect.provideContext(use, ctx)
    }),
  )

/** Like runCli, with lineage errors mapped to exit codes: 2 for a bad request, 1 for an answer of "not found". */
export const runVerb = <A, E>(effect: Effect.Effect<A, E>): Promise<void> =>
  runCli(
    Effect.catchIf(
      effect,
      (e): e is E & LineageError => e instanceof LineageError,
      (e) =>
        Effect.sync(() => {
          process.stderr.write(`beds: ${e.code}: ${e.message}\n`)
          process.exitCode = isUsageError(e) ? ExitCode.usage : ExitCode.failed
        }),
    ),
  )

/** Writes JSON to stdout; absent values print as null so that scripts see every field. */
export const printJson = (value: unknown): void => {
  process.stdout.write(`${JSON.stringify(value, (_k, v: unknown) => (v === undefined ? null : v), 2)}\n`)
}

/** A time as ISO 8601. */
export const isoTime = (t: number): string => (Number.isFinite(t) ? new Date(t).toISOString() : String(t))
