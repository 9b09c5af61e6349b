/**
 * `beds status`: depots, partitions, head offsets, each topology's
 * checkpoint and lag. Read-only: it opens the stores, never a writer or a
 * topology, so it is safe beside a running engine.
 */
import { Command } from "commander"
import { Effect, Result } from "effect"
import * as Topology from "../broker/topology.ts"
import { DepotStore } from "../depot/store.ts"
import * as Router from "../readmodel/router.ts"
import { ReadModelStore } from "../readmodel/store.ts"
import { forRole, keptBackends, storesLayer } from "../runtime/boot.ts"
import * as Declarations from "../runtime/declarations.ts"
import { configOf, rootOf } from "./context.ts"
import { runCli } from "./run.ts"

export const statusCommand = () =>
  new Command("status")
    .description(
      "show depots, partitions, head offsets, topology checkpoints and lag, and the commands waiting on the broker",
    )
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
            const c = loaded.config
            const kept = keptBackends(c)
            const backendOf = new Map(decl.templates.map((t) => [t.name, t.backend]))
            // A routing store learns where each template lives from `ensure`, which creates what is
            // missing; status only reads, so it names them instead.
            Router.declareTemplates(models, decl.templates)
            const topologies = yield* Effect.forEach(decl.topologies, (t) =>
              Effect.gen(function* () {
                // Read models in memory live inside a running engine, rebuilt at its start: no
                // stored checkpoint to show.
                const stored = t.readModels.every((m) => {
                  const b = backendOf.get(m)
                  return b !== undefined && kept[b]
                })
                const peek = models.replay?.peekCheckpoint ?? models.checkpoint
                const streams = t.sources.flatMap((s) =>
                  Array.from({ length: s.partitions }, (_, p) => ({ topology: t.name, depot: s.name, partition: p })),
                )
                // peekCheckpoint never waits on (or trips) a replay's fence. One topology whose
                // checkpoints cannot be read does not hide the others'.
                const read = stored ? yield* Effect.result(Effect.forEach(streams, (c) => peek(c))) : undefined
                const unavailable = read !== undefined && Result.isFailure(read) ? read.failure.message : undefined
                const nexts: ReadonlyArray<number> = read !== undefined && Result.isSuccess(read) ? read.success : []
                const rows = streams.map((c, i) => {
                  const next = nexts[i]
                  const head = depots.find((d) => d.depot === c.depot)?.partitions[c.partition]?.head ?? 0
                  return {
                    depot: c.depot,
                    partition: c.partition,
                    checkpoint: next ?? null,
                    lag: next === undefined ? null : head - next,
                  }
                })
                return {
                  topology: t.name,
                  version: t.version,
                  readModels: stored ? "stored" : "memory",
                  ...(unavailable === undefined ? {} : { unavailable }),
                  streams: rows,
                }
              }),
            )
            const describe = (b: "rel" | "rec") =>
              `${b.toUpperCase()} ${b === "rel" ? c.engine.rel : c.engine.rec}${kept[b] ? "" : " (rebuilt at start)"}`
            // With the AMQP transport, what waits on the broker is the ingress's lag; a broker that
            // cannot be read is said, and the rest of the status still shown.
            const broker =
              c.engine.transport !== "amqp"
                ? undefined
                : yield* Effect.tryPromise({
                    try: () => Topology.inspect(c.amqp.url, decl.depots, { prefix: c.amqp.prefix }),
                    catch: (e) => (e instanceof Error ? e.message : String(e)),
                  }).pipe(
                    Effect.map((depots) => ({ address: Topology.addressOf(c.amqp.url), depots })),
                    Effect.catch((unavailable) =>
                      Effect.succeed({ address: Topology.addressOf(c.amqp.url), unavailable }),
                    ),
                  )
            return {
              depots,
              topologies,
              readModels: `${describe("rel")}, ${describe("rec")}`,
              ...(broker === undefined ? {} : { broker }),
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
              `topology ${t.topology}@v${t.version}: ${
                t.unavailable !== undefined
                  ? `checkpoints unavailable: ${t.unavailable}`
                  : t.readModels === "memory"
                    ? "read models in memory, rebuilt at start"
                    : t.streams.map((s) => `${s.depot}/p${s.partition} at ${s.checkpoint} lag ${s.lag}`).join(", ")
              }\n`,
            )
          process.stdout.write(`read models: ${result.readModels}\n`)
          const broker = result.broker
          if (broker !== undefined && "unavailable" in broker)
            process.stdout.write(`broker ${broker.address}: ${broker.unavailable}\n`)
          else if (broker !== undefined)
            for (const d of broker.depots)
              process.stdout.write(
                `queues ${d.depot} at ${broker.address}: ${d.queues
                  .map((q, i) =>
                    "missing" in q
                      ? `q${i} not declared (no engine has served it)`
                      : `q${i} ${q.waiting} waiting, ${q.consumers === 0 ? "no consumer" : `${q.consumers} consumer(s)`}`,
                  )
                  .join(", ")}\n`,
              )
        }),
      )
    })
