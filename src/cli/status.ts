/**
 * `beds status`: depots, partitions, head offsets, each topology's
 * checkpoint and lag. Read-only: it opens the stores, never a writer or a
 * topology, so it is safe beside a running engine.
 */
import { Command } from "commander"
import { Effect } from "effect"
import { DepotStore } from "../depot/store.ts"
import { ReadModelStore } from "../readmodel/store.ts"
import { forRole, storesLayer } from "../runtime/boot.ts"
import * as Declarations from "../runtime/declarations.ts"
import { configOf, rootOf } from "./context.ts"
import { runCli } from "./run.ts"

export const statusCommand = () =>
  new Command("status")
    .description("show depots, partitions, head offsets, topology checkpoints and lag")
    .option("--json", "print JSON")
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const root = rootOf(cmd)
      await runCli(
        Effect.gen(function* () {
          const loaded = yield* configOf(root)
          const decl = forRole(yield* Declarations.load(root), loaded.config)
          const result = yield* Effect.gen(function* () {
            const store = yield* DepotStore
            const models = yield* ReadModelStore
            // The file store opens (and checks) its logs; MariaDB creates nothing it does not need.
            yield* store.open(decl.depots)
            const depots = yield* Effect.forEach(decl.depots, (d) =>
              Effect.map(
                Effect.forEach(
                  Array.from({ length: d.partitions }, (_, p) => p),
                  (p) => Effect.map(store.head(d.name, p), (head) => ({ partition: p, head })),
                ),
                (partitions) => ({ depot: d.name, partitions }),
              ),
            )
            const memoryModels = loaded.config.engine.rel === "memory"
            const topologies = yield* Effect.forEach(decl.topologies, (t) =>
              Effect.map(
                Effect.forEach(t.sources, (s) =>
                  Effect.forEach(
                    Array.from({ length: s.partitions }, (_, p) => p),
                    (p) =>
                      Effect.map(
                        memoryModels
                          ? Effect.succeed(undefined)
                          : // peekCheckpoint never waits on (or trips) a replay's fence.
                            (models.replay?.peekCheckpoint ?? models.checkpoint)({
                              topology: t.name,
                              depot: s.name,
                              partition: p,
                            }),
                        (next) => {
                          const head = depots.find((d) => d.depot === s.name)?.partitions[p]?.head ?? 0
                          // Memory read models live inside a running engine: no stored checkpoint to show.
                          return {
                            depot: s.name,
                            partition: p,
                            checkpoint: next ?? null,
                            lag: next === undefined ? null : head - next,
                          }
                        },
                      ),
                  ),
                ),
                (streams) => ({ topology: t.name, version: t.version, streams: streams.flat() }),
              ),
            )
            return {
              depots,
              topologies,
              readModels: memoryModels ? "memory (rebuilt at start)" : loaded.config.engine.rel,
            }
          }).pipe(Effect.provide(storesLayer(loaded, root, decl.topologies)), Effect.scoped)
          if (opts.json) {
            process.stdout.write(`${JSON.stringify(result, null, 2)}\n`)
            return
          }
          for (const d of result.depots)
            process.stdout.write(
              `depot ${d.depot}: ${d.partitions.map((p) => `p${p.partition}=${p.head}`).join(" ")} (total ${d.partitions.reduce((n, p) => n + p.head, 0)})\n`,
            )
          for (const t of result.topologies)
            process.stdout.write(
              `topology ${t.topology}@v${t.version}: ${t.streams.map((s) => (s.checkpoint === null ? `${s.depot}/p${s.partition} rebuilt at start` : `${s.depot}/p${s.partition} at ${s.checkpoint} lag ${s.lag}`)).join(", ")}\n`,
            )
          process.stdout.write(`read models: ${result.readModels}\n`)
        }),
      )
    })
