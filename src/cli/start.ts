/**
 * `beds start`: the ordered start-up, then serving until SIGINT/SIGTERM.
 * With the AMQP transport it consumes the partition queues; with the
 * embedded transport it serves JSON lines on stdin (see transport/stdio.ts)
 * when stdin is not a terminal. Shutdown stops consuming, lets in-flight
 * commands finish and reply, commits checkpoints, then closes.
 */
import { Command } from "commander"
import { Context, Deferred, Effect, Exit, Layer, Scope } from "effect"
import * as Topology from "../broker/topology.ts"
import { rebuildChangedTopologies } from "../replay/startup.ts"
import { boot, step } from "../runtime/boot.ts"
import { Engine } from "../runtime/engine.ts"
import * as Amqp from "../transport/amqp.ts"
import * as Stdio from "../transport/stdio.ts"
import { configOf, rootOf } from "./context.ts"
import { runCli } from "./run.ts"

const log = (line: string) => process.stderr.write(`${line}\n`)

export const startCommand = () =>
  new Command("start")
    .description("start the engine: ordered start-up (IPL), then serve until SIGINT/SIGTERM")
    .option(
      "--rebuild",
      "rebuild topologies whose version changed (blue/green) even when config says to wait for this flag",
    )
    .action(async (opts: { rebuild?: boolean }, cmd: Command) => {
      const root = rootOf(cmd)
      await runCli(
        Effect.gen(function* () {
          const t0 = performance.now()
          const loaded = yield* configOf(root)
          const configMs = performance.now() - t0
          const scope = yield* Scope.make()
          const stop = yield* Deferred.make<string>()
          let stopping = false
          const onSignal = (sig: string) => {
            // A repeated signal (a terminal and a supervisor both sending one, say) must not cut
            // the shutdown short: it is noted, and SIGKILL remains for stopping at once.
            if (stopping) return log(`beds: ${sig} received again; still stopping (SIGKILL stops at once)`)
            stopping = true
            Effect.runFork(Deferred.succeed(stop, sig))
            // The stdio transport ends when its input does: closing stdin lets it finish the
            // commands in flight, write their replies and return, like the AMQP consumers.
            process.stdin.push(null)
          }
          process.on("SIGINT", () => onSignal("SIGINT"))
          process.on("SIGTERM", () => onSignal("SIGTERM"))

          const exit = yield* Effect.exit(
            Effect.gen(function* () {
              const c = loaded.config
              const amqp = c.engine.transport === "amqp"
              const broker = Topology.addressOf(c.amqp.url)
              const booted = boot(loaded, root, log, {
                configMs,
                // The broker is checked before the databases, and before a catch-up that may take a
                // while: a wrong URL or password is reported at once. Consumers start only at the end.
                broker: amqp
                  ? (decl) =>
                      step(
                        `RabbitMQ ${broker}: login, topology`,
                        Effect.tryPromise({
                          try: () =>
                            Topology.declare(c.amqp.url, decl.depots, {
                              queueType: c.amqp.queue_type,
                              prefix: c.amqp.prefix,
                            }),
                          catch: (e) =>
                            e instanceof Topology.TopologyError
                              ? e
                              : Topology.classify("Declaring the BEDS broker topology", e, c.amqp.url),
                        }),
                        log,
                      )
                  : undefined,
                // A topology whose version changed is rebuilt beside its live model before serving, never mixed.
                beforeStorage: step(
                  "topology versions",
                  rebuildChangedTopologies(loaded, root, { log, ...(opts.rebuild ? { rebuild: true } : {}) }),
                  log,
                ),
              })
              const ctx = yield* Layer.buildWithScope(booted, scope)
              const engine = Context.get(ctx, Engine)
              // Read models must have caught up before the first command is taken.
              yield* step("topologies catching up", engine.settle(), log)
              if (amqp) {
                yield* step(
                  `RabbitMQ ${broker}: consumers`,
                  Layer.buildWithScope(
                    Amqp.layer(Amqp.settingsFromConfig(c.amqp)).pipe(Layer.provide(Layer.succeed(Engine, engine))),
                    scope,
                  ),
                  log,
                )
              }
              const status = yield* engine.status()
              const events = status.depots.reduce((n, d) => n + d.partitions.reduce((m, p) => m + p.head, 0), 0)
              log(
                `beds ready in ${(performance.now() - t0).toFixed(0)} ms: ${status.depots.length} depot(s), ${events} event(s), ${status.streams.length} topology stream(s), transport ${c.engine.transport}`,
              )
              if (c.engine.transport === "embedded" && !process.stdin.isTTY) {
                const served = yield* Stdio.serve(engine, process.stdin, process.stdout)
                log(`beds: stdin closed after ${served} command(s); shutting down`)
                return
              }
              const sig = yield* Deferred.await(stop)
              log(`beds: ${sig} received; stopping consumers, finishing in-flight commands`)
            }),
          )
          const t1 = performance.now()
          yield* Scope.close(scope, Exit.void)
          if (Exit.isSuccess(exit)) log(`beds: stopped cleanly in ${(performance.now() - t1).toFixed(0)} ms`)
          return yield* exit
        }),
      )
    })
