/**
 * The command/reply contract shared by every transport (AMQP, embedded, the
 * in-process API). Reply bodies are JSON and part of the published wire
 * contract: fields may be added, never renamed or removed.
 */
import type { AckLevel } from "../depot/event.ts"
import type { ErrorCode } from "../errors.ts"

/** A command as a transport received it, before validation. */
export interface IncomingCommand {
  readonly depot: string
  readonly type?: string | undefined
  readonly key?: string | undefined
  readonly messageId?: string | undefined
  /** Raw body (bytes or text, JSON expected) from the wire, or an already-decoded payload in process. */
  readonly body: { readonly raw: Uint8Array | string } | { readonly payload: unknown }
  readonly ack?: string | undefined
  readonly parent?: string | undefined
  readonly expect?: string | number | undefined
  readonly metadata?: Readonly<Record<string, string>> | undefined
}

/** A successful reply. `applied` and `values` are present at ack level `full`. */
export interface ReplyOk {
  readonly ok: true
  readonly ack: AckLevel
  readonly id: string
  readonly depot: string
  readonly partition: number
  readonly offset: number
  readonly version: number
  readonly duplicate: boolean
  readonly applied?: ReadonlyArray<string>
  readonly values?: Readonly<Record<string, unknown>>
}

/** A refusal, with a stable code and a message a person can act on. */
export interface ReplyError {
  readonly ok: false
  readonly error: { readonly code: ErrorCode; readonly message: string; readonly details?: unknown }
}

export type Reply = ReplyOk | ReplyError
