/**
 * Finds a project's declarations: depots in depots/*.ts, topologies in
 * projections/*.ts, templates in templates/*.toml. Every exported value that
 * is a depot or a topology counts, so a file may declare several.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { pathToFileURL } from "node:url"
import { Effect } from "effect"
import type { Depot } from "../depot/depot.ts"
import { DeclarationError } from "../errors.ts"
import { loadTemplates } from "../template/load.ts"
import type { Topology } from "../topology/topology.ts"
import type { Declarations } from "./engine.ts"

const isDepot = (v: unknown): v is Depot =>
  typeof v === "object" && v !== null && "partitions" in v && "events" in v && "name" in v

const isTopology = (v: unknown): v is Topology =>
  typeof v === "object" && v !== null && "handle" in v && "sources" in v && "readModels" in v

const modulesIn = (dir: string) =>
  fs.existsSync(dir)
    ? fs
        .readdirSync(dir)
        .filter((f) => /\.(ts|js|mjs)$/.test(f) && !f.endsWith(".d.ts") && !f.includes(".test."))
        .sort()
        .map((f) => path.join(dir, f))
    : []

const importAll = (files: ReadonlyArray<string>) =>
  Effect.forEach(files, (file) =>
    Effect.tryPromise({
      try: () => import(pathToFileURL(file).href) as Promise<Record<string, unknown>>,
      catch: (e) =>
        new DeclarationError({
          code: "BAD_DEPOT",
          message: `Cannot load ${file}: ${e instanceof Error ? e.message : String(e)}`,
        }),
    }).pipe(Effect.map((m) => ({ file, exports: Object.values(m) }))),
  )

/** Loads every declaration under a project root and checks that they fit together. */
export const load = (root: string): Effect.Effect<Declarations, DeclarationError> =>
  Effect.gen(function* () {
    const depotModules = yield* importAll(modulesIn(path.join(root, "depots")))
    const topologyModules = yield* importAll(modulesIn(path.join(root, "projections")))
    const templates = yield* loadTemplates(path.join(root, "templates"))
    const depots = new Map<string, Depot>()
    for (const m of depotModules)
      for (const v of m.exports)
        if (isDepot(v)) {
          const seen = depots.get(v.name)
          if (seen !== undefined && seen !== v)
            return yield* new DeclarationError({
              code: "BAD_DEPOT",
              message: `Depot "${v.name}" is declared twice (again in ${m.file}); depot names must be unique.`,
            })
          depots.set(v.name, v)
        }
    const topologies = new Map<string, Topology>()
    for (const m of topologyModules)
      for (const v of m.exports)
        if (isTopology(v)) {
          if (topologies.has(v.name) && topologies.get(v.name) !== v)
            return yield* new DeclarationError({
              code: "BAD_TOPOLOGY",
              message: `Topology "${v.name}" is declared twice (again in ${m.file}); topology names must be unique.`,
            })
          topologies.set(v.name, v)
        }
    return yield* check({ depots: [...depots.values()], topologies: [...topologies.values()], templates })
  })

/** Checks cross-references: topologies name declared templates and depots. */
export const check = (d: Declarations): Effect.Effect<Declarations, DeclarationError> =>
  Effect.gen(function* () {
    const templateNames = new Set(d.templates.map((t) => t.name))
    const depotNames = new Set(d.depots.map((x) => x.name))
    for (const t of d.topologies) {
      for (const m of t.readModels)
        if (!templateNames.has(m))
          return yield* new DeclarationError({
            code: "UNKNOWN_TEMPLATE",
            message: `Topology "${t.name}" writes template "${m}", but templates/ declares no such template (known: ${[...templateNames].join(", ") || "none"}).`,
          })
      for (const s of t.sources)
        if (!depotNames.has(s.name))
          return yield* new DeclarationError({
            code: "BAD_TOPOLOGY",
            message: `Topology "${t.name}" reads depot "${s.name}", which is not declared in depots/.`,
          })
    }
    return d
  })
