/**
 * The client port: how applications publish commands. Adapters: AMQP
 * (`amqp.ts`, any process, any machine) and embedded (`embedded.ts`, the
 * engine in the same process). Both pass test/transport/conformance.ts, so
 * code written against one runs unchanged on the other.
 */
import { Context, Data, type Effect } from "effect"
import type { AckLevel } from "../depot/event.ts"
import type { ErrorCode } from "../errors.ts"
import type { ReplyOk } from "../transport/protocol.ts"

export interface PublishOptions {
  /** When the engine replies; default `append`. */
  readonly ack?: AckLevel | undefined
  /** The message_id (idempotency key); generated when absent. Reuse it to retry safely. */
  readonly id?: string | undefined
  /** Optimistic concurrency: the version (event count) the key must be at. */
  readonly expect?: number | undefined
  /** Lineage ID of the event that caused this command. */
  readonly parent?: string | undefined
  /** Give up waiting for the reply after this many milliseconds (default 30 000). */
  readonly timeoutMs?: number | undefined
}

/** The engine refused the command; `code` is one of the stable error codes. */
export class PublishRejected extends Data.TaggedError("PublishRejected")<{
  readonly code: ErrorCode
  readonly message: string
  readonly details?: unknown
}> {}

/** No reply came in time, or the transport failed; the command may or may not have been appended — retry with the same id. */
export class PublishFailed extends Data.TaggedError("PublishFailed")<{
  readonly code: "TIMEOUT" | "UNAVAILABLE"
  readonly message: string
  readonly messageId: string
}> {}

/** The result of a `none` publish: only the broker's confirm. */
export interface Confirmed {
  readonly ok: true
  readonly ack: "none"
  readonly messageId: string
}

export interface BedsClientShape {
  /**
   * Publishes one command. Resolves with the reply at `append`/`full`, with
   * the broker's confirm at `none`; fails with PublishRejected (`ok:false`)
   * or PublishFailed (no answer).
   */
  readonly publish: (
    depot: string,
    type: string,
    key: string,
    payload: unknown,
    options?: PublishOptions,
  ) => Effect.Effect<ReplyOk | Confirmed, PublishRejected | PublishFailed>
}

export class BedsClient extends Context.Service<BedsClient, BedsClientShape>()("beds/Client") {}
