/**
 * The embedded transport: the client port served by an engine in the same
 * process. Same contract as AMQP — ack levels, replies, dedupe, error codes,
 * expected versions — and the same backpressure: at most `inFlight` commands
 * pending, later publishes wait for a slot.
 *
 * A publish is one callback into the engine (no fiber, semaphore or timer of
 * its own): slots are a counter with a queue, and timeouts are found by one
 * sweep over the pending commands.
 */
import { randomUUID } from "node:crypto"
import { Effect, Layer } from "effect"
import { Engine, type EngineShape } from "../runtime/engine.ts"
import type { Reply, ReplyOk } from "../transport/protocol.ts"
import { BedsClient, type BedsClientShape, type Confirmed, PublishFailed, PublishRejected } from "./client.ts"

export interface EmbeddedOptions {
  /** Commands pending at once before publishers wait (the backpressure). */
  readonly inFlight: number
}

const DEFAULT_TIMEOUT_MS = 30_000
/** How often pending commands are checked against their deadlines; a timeout fires up to this much late. */
const SWEEP_MS = 100

type Result = Effect.Effect<ReplyOk | Confirmed, PublishFailed | PublishRejected>

interface Pending {
  readonly deadline: number
  readonly timeout: () => void
}

export const make = (engine: EngineShape, options: EmbeddedOptions = { inFlight: 10_000 }) =>
  Effect.sync((): BedsClientShape => {
    let free = options.inFlight
    const waiting: Array<() => void> = []
    const pending = new Set<Pending>()
    let timer: ReturnType<typeof setInterval> | undefined
    const sweep = () => {
      const now = Date.now()
      for (const p of pending) if (p.deadline <= now) p.timeout()
      if (pending.size === 0 && timer !== undefined) {
        clearInterval(timer)
        timer = undefined
      }
    }
    const release = () => {
      const next = waiting.shift()
      if (next !== undefined) next()
      else free++
    }

    const toResult = (reply: Reply, ack: string | undefined, messageId: string): Result => {
      if (!reply.ok) return Effect.fail(new PublishRejected(reply.error))
      if (ack === "none") return Effect.succeed({ ok: true as const, ack: "none" as const, messageId })
      return Effect.succeed(reply)
    }

    const client: BedsClientShape = {
      publish: (depot, type, key, payload, o = {}) =>
        Effect.callback<ReplyOk | Confirmed, PublishFailed | PublishRejected>((resume) => {
          const messageId = o.id ?? randomUUID()
          const timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS
          let finished = false
          let cancel: (() => void) | undefined
          let entry: Pending | undefined
          const finish = (result: Result) => {
            if (finished) return
            finished = true
            if (entry !== undefined) pending.delete(entry)
            if (cancel !== undefined) release()
            resume(result)
          }
          const start = () => {
            if (finished) return release()
            cancel = engine.submitWith(
              {
                depot,
                type,
                key,
                messageId,
                body: { payload },
                ack: o.ack ?? "append",
                expect: o.expect,
                parent: o.parent,
              },
              (reply) => finish(toResult(reply, o.ack, messageId)),
            )
          }
          entry = {
            deadline: Date.now() + timeoutMs,
            timeout: () => {
              cancel?.()
              finish(
                Effect.fail(
                  new PublishFailed({
                    code: "TIMEOUT",
                    message: `No reply for ${depot}/${type} within ${timeoutMs} ms; it may still be appended — retry with message_id ${messageId}.`,
                    messageId,
                  }),
                ),
              )
            },
          }
          pending.add(entry)
          // The sweep stops itself once nothing is pending, and never keeps the process alive.
          if (timer === undefined) {
            timer = setInterval(sweep, SWEEP_MS)
            timer.unref()
          }
          if (free > 0) {
            free--
            start()
          } else waiting.push(start)
          return Effect.sync(() => {
            // Interrupted: the command may still be appended; its reply is dropped.
            cancel?.()
            finish(Effect.interrupt)
          })
        }),
    }
    return client
  })

/** The embedded client over the Engine in context. */
export const layer = (options?: EmbeddedOptions) =>
  Layer.effect(
    BedsClient,
    Effect.flatMap(Engine, (engine) => make(engine, options)),
  )
