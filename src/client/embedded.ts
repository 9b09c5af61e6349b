/**
 * The embedded transport: the client port served by an engine in the same
 * process. Same contract as AMQP — ack levels, replies, dedupe, error codes,
 * expected versions — and the same backpressure: at most `inFlight` commands
 * pending, later publishes wait for a slot.
 */
import { randomUUID } from "node:crypto"
import { Effect, Layer, Semaphore } from "effect"
import { Engine, type EngineShape } from "../runtime/engine.ts"
import type { ReplyOk } from "../transport/protocol.ts"
import { BedsClient, type BedsClientShape, type Confirmed, PublishFailed, PublishRejected } from "./client.ts"

export interface EmbeddedOptions {
  /** Commands pending at once before publishers wait (the backpressure). */
  readonly inFlight: number
}

export const make = (engine: EngineShape, options: EmbeddedOptions = { inFlight: 10_000 }) =>
  Effect.map(
    Semaphore.make(options.inFlight),
    (slots): BedsClientShape => ({
      publish: (depot, type, key, payload, o = {}) => {
        const messageId = o.id ?? randomUUID()
        const submit = engine
          .submit({
            depot,
            type,
            key,
            messageId,
            body: { payload },
            ack: o.ack ?? "append",
            expect: o.expect,
            parent: o.parent,
          })
          .pipe(
            Effect.timeoutOption(o.timeoutMs ?? 30_000),
            Effect.flatMap((reply): Effect.Effect<ReplyOk | Confirmed, PublishFailed | PublishRejected> => {
              if (reply._tag === "None")
                return Effect.fail(
                  new PublishFailed({
                    code: "TIMEOUT",
                    message: `No reply for ${depot}/${type} within ${o.timeoutMs ?? 30_000} ms; it may still be appended — retry with message_id ${messageId}.`,
                    messageId,
                  }),
                )
              const r = reply.value
              if (!r.ok) return Effect.fail(new PublishRejected(r.error))
              if (o.ack === "none") return Effect.succeed({ ok: true as const, ack: "none" as const, messageId })
              return Effect.succeed(r)
            }),
          )
        return slots.withPermits(1)(submit)
      },
    }),
  )

/** The embedded client over the Engine in context. */
export const layer = (options?: EmbeddedOptions) =>
  Layer.effect(
    BedsClient,
    Effect.flatMap(Engine, (engine) => make(engine, options)),
  )
