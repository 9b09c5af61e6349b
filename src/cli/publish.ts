/**
 * `beds publish <depot> <type> <key> <json>`: publishes one command through
 * the configured transport and prints the reply as JSON. With the embedded
 * transport the engine runs in this process for the one command.
 */
import { randomUUID } from "node:crypto"
import { Command, InvalidArgumentError } from "commander"
import { Context, Effect, Layer } from "effect"
import * as AmqpClient from "../client/amqp.ts"
import { BedsClient, type PublishOptions } from "../client/client.ts"
import * as EmbeddedClient from "../client/embedded.ts"
import { boot } from "../runtime/boot.ts"
import { configOf, rootOf } from "./context.ts"
import { ExitCode, runCli } from "./run.ts"

const wholeNumber = (v: string) => {
  const n = Number(v)
  if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgumentError("expected a whole number ≥ 0")
  return n
}

export const publishCommand = () =>
  new Command("publish")
    .description("publish one command and print the reply as JSON")
    .argument("<depot>", "depot name, e.g. accounts")
    .argument("<type>", "event type, e.g. Deposited")
    .argument("<key>", "entity key; it picks the partition")
    .argument("<json>", "the payload as JSON, e.g. '{\"amount\":100}'")
    .option("--ack <level>", "none | append | full", "append")
    .option("--id <message_id>", "idempotency key (default: a new UUID)")
    .option("--expect <version>", "the version the key must be at", wholeNumber)
    .option("--parent <lineage_id>", "lineage ID of the causing event")
    .option("--timeout <ms>", "how long to wait for the reply", wholeNumber, 30_000)
    .action(
      async (
        depot: string,
        type: string,
        key: string,
        json: string,
        opts: { ack: string; id?: string; expect?: number; parent?: string; timeout: number },
        cmd: Command,
      ) => {
        const root = rootOf(cmd)
        let payload: unknown
        try {
          payload = JSON.parse(json)
        } catch (e) {
          process.stderr.write(
            `beds: BAD_JSON: the payload argument is not JSON (${(e as Error).message}); quote it, e.g. '{"amount":100}'\n`,
          )
          process.exitCode = ExitCode.usage
          return
        }
        await runCli(
          Effect.gen(function* () {
            const loaded = yield* configOf(root)
            const c = loaded.config
            const client: Layer.Layer<BedsClient, unknown> =
              c.engine.transport === "amqp"
                ? AmqpClient.layer(c.amqp.url, { prefix: c.amqp.prefix })
                : EmbeddedClient.layer().pipe(Layer.provide(boot(loaded, root, () => undefined)))
            const options: PublishOptions = {
              ack: opts.ack as PublishOptions["ack"],
              id: opts.id ?? randomUUID(),
              expect: opts.expect,
              parent: opts.parent,
              timeoutMs: opts.timeout,
            }
            const reply = yield* Effect.gen(function* () {
              const ctx = yield* Layer.build(client)
              return yield* Context.get(ctx, BedsClient)
                .publish(depot, type, key, payload, options)
                .pipe(
                  Effect.catchTags({
                    PublishRejected: (e) =>
                      Effect.succeed({
                        ok: false as const,
                        error: { code: e.code, message: e.message, details: e.details },
                      }),
                    PublishFailed: (e) =>
                      Effect.succeed({ ok: false as const, error: { code: e.code, message: e.message } }),
                  }),
                )
            }).pipe(Effect.scoped)
            process.stdout.write(`${JSON.stringify(reply)}\n`)
            if (!reply.ok) {
              process.stderr.write(`beds: ${reply.error.code}: ${reply.error.message}\n`)
              process.exitCode = ExitCode.failed
            }
          }),
        )
      },
    )
