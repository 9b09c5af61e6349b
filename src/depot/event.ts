/**
 * The records a depot stores and the commands that ask for them.
 */
import { Schema } from "effect"
import { LineageId } from "../lineage/lineage-id.ts"

/** When the engine replies to a command: see the README's ack-level table. */
export const AckLevel = Schema.Literals(["none", "append", "full"])
export type AckLevel = typeof AckLevel.Type

/** Where an event sits: total order within (depot, partition). */
export const Position = Schema.Struct({
  depot: Schema.String,
  partition: Schema.Int,
  offset: Schema.Int,
})
export type Position = typeof Position.Type

/** One stored event. `version` is the key's event count including this one. */
export const Event = Schema.Struct({
  id: LineageId,
  depot: Schema.String,
  partition: Schema.Int,
  offset: Schema.Int,
  type: Schema.String,
  key: Schema.String,
  version: Schema.Int,
  payload: Schema.Unknown,
  time: Schema.Int,
  parent: Schema.NullOr(LineageId),
  root: LineageId,
  messageId: Schema.String,
  metadata: Schema.Record(Schema.String, Schema.String),
})
export interface Event extends Schema.Schema.Type<typeof Event> {}

/**
 * A validated request to append one event, already routed to its partition.
 * `parent` is the lineage ID of the cause (client-supplied or derived);
 * `childId` is set for derived events, whose ID is known before the append.
 */
export interface AppendRequest {
  readonly messageId: string
  readonly type: string
  readonly key: string
  readonly payload: unknown
  readonly time: number
  readonly expect?: number | undefined
  readonly parent?: LineageId | undefined
  readonly childId?: LineageId | undefined
  readonly metadata?: Readonly<Record<string, string>> | undefined
  /**
   * Refuse the request (UnknownParent) unless `parent` is a stored event.
   * Checked by the partition writer in queue order, so it never lets a later
   * command of the same key overtake this one.
   */
  readonly checkParent?: boolean | undefined
}

/** What happened to one append request. */
export type AppendOutcome =
  | {
      readonly _tag: "Appended"
      readonly event: Event
      /** True when message_id had been appended before; `event` is the original. */
      readonly duplicate: boolean
    }
  | {
      readonly _tag: "VersionConflict"
      readonly key: string
      readonly expected: number
      readonly actual: number
    }
  | {
      readonly _tag: "UnknownParent"
      readonly parent: string
    }
