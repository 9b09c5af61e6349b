/**
 * The start-up step for topology versions: before the engine starts its
 * topologies, compare each topology's declared `version` with the version its
 * read models were built with, and rebuild changed ones blue/green (a replay
 * into shadow tables, swapped in) — or refuse to start, by configuration
 * (`topology.rebuild_on_version_change`).
 *
 * It must run before the engine boots: a live stream of the new version must
 * never fold events onto rows the old version wrote. It opens the stores
 * itself and closes them again, so the embedded file depot's lock is free for
 * the engine afterwards. Memory read models are rebuilt from the depot at
 * every start anyway, so there is nothing to do for them.
 */
import { Effect } from "effect"
import type { LoadedConfig } from "../config/load.ts"
import { DepotStore } from "../depot/store.ts"
import type { DeclarationError, StoreError } from "../errors.ts"
import { ReadModelStore } from "../readmodel/store.ts"
import { forRole } from "../runtime/boot.ts"
import * as Declarations from "../runtime/declarations.ts"
import { ReplayError } from "./error.ts"
import { type ReplayProgress, type ReplaySummary, replay } from "./replay.ts"
import { replayStoresLayer } from "./stores.ts"

export interface VersionStepOptions {
  /** Rebuild changed topologies even when the configuration says "flag" (`beds start --rebuild`). */
  readonly rebuild?: boolean | undefined
  readonly log?: ((line: string) => void) | undefined
  readonly onProgress?: ((p: ReplayProgress) => void) | undefined
}

/** What the step did per topology. */
export interface VersionStepResult {
  readonly topology: string
  readonly version: number
  /** "same": nothing to do; "recorded": first start with version bookkeeping; "rebuilt": replayed and swapped. */
  readonly action: "same" | "recorded" | "rebuilt"
  readonly previous?: number | undefined
  readonly summary?: ReplaySummary | undefined
}

/**
 * Checks every topology this node serves against the version its read models
 * were built with; rebuilds changed ones ("auto" or `rebuild`), else fails
 * with VERSION_CHANGED naming each topology and the ways out. Call it from
 * `beds start` before booting the engine.
 */
export const rebuildChangedTopologies = (
  loaded: LoadedConfig,
  root: string,
  options: VersionStepOptions = {},
): Effect.Effect<ReadonlyArray<VersionStepResult>, ReplayError | StoreError | DeclarationError> =>
  Effect.gen(function* () {
    const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`))
    const c = loaded.config
    if (c.engine.rel === "memory" && c.engine.rec === "memory") return []
    const all = yield* Declarations.load(root)
    const decl = forRole(all, c)
    const mode = c.topology.rebuild_on_version_change ?? "auto"
    // A topology writing REL and REC templates kept in two stores cannot be swapped in one step, so it
    // cannot be rebuilt blue/green; its version is not checked (splitting it makes both halves replayable).
    const split = c.engine.rel !== c.engine.rec
    const bothBackends = (name: string) => {
      const backends = new Set(
        (all.topologies.find((t) => t.name === name)?.readModels ?? []).map(
          (m) => all.templates.find((t) => t.name === m)?.backend,
        ),
      )
      return backends.has("rel") && backends.has("rec")
    }
    return yield* Effect.scoped(
      Effect.gen(function* () {
        const models = yield* ReadModelStore
        const ops = models.replay
        if (ops === undefined) {
          log("ipl: topology versions: the read-model store has no replay support; versions are not checked")
          return []
        }
        yield* (yield* DepotStore).open(decl.depots)
        const results: Array<VersionStepResult> = []
        const changed: Array<{ name: string; built: number; declared: number }> = []
        for (const t of decl.topologies) {
          if (split && bothBackends(t.name)) {
            log(
              `ipl: topology ${t.name}: writes both REL (${c.engine.rel}) and REC (${c.engine.rec}) templates, which cannot be swapped in one step; its version is not checked. Split it into a REL and a REC topology to make both rebuildable.`,
            )
            continue
          }
          const record = yield* ops.record(t.name)
          if (record?.version === undefined) {
            // Models from before versions were recorded are taken to be of the declared version.
            yield* ops.setVersion(t.name, t.version)
            results.push({ topology: t.name, version: t.version, action: "recorded" })
          } else if (record.version === t.version)
            results.push({ topology: t.name, version: t.version, action: "same" })
          else changed.push({ name: t.name, built: record.version, declared: t.version })
        }
        if (changed.length > 0 && mode === "flag" && options.rebuild !== true)
          return yield* new ReplayError({
            code: "VERSION_CHANGED",
            message: `${changed
              .map(
                (x) =>
                  `Topology ${x.name} is at version ${x.declared} in projections/, but its read models were built by version ${x.built}.`,
              )
              .join(
                " ",
              )} Rebuild ${changed.length === 1 ? "them" : "each"} beside the live models with \`beds replay ${changed.map((x) => x.name).join("` / `beds replay ")}\`, or start with \`beds start --rebuild\`; topology.rebuild_on_version_change = "auto" rebuilds at every start.`,
            details: { changed },
          })
        for (const x of changed) {
          log(
            `ipl: topology ${x.name}: version ${x.built} -> ${x.declared}; rebuilding its read models beside the live ones`,
          )
          const summary = yield* replay(all, { topology: x.name, onProgress: options.onProgress })
          log(
            `ipl: topology ${x.name}: rebuilt from ${summary.events} event(s) in ${summary.seconds.toFixed(1)} s and swapped in`,
          )
          results.push({ topology: x.name, version: x.declared, action: "rebuilt", previous: x.built, summary })
        }
        return results
      }).pipe(Effect.provide(replayStoresLayer(loaded, root, all))),
    )
  })
