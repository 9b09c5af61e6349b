/**
 * Failures of the lineage tools (queries, provenance, audit) that a user
 * can act on. Codes are stable: scripts switch on them.
 */
import { Data } from "effect"

export type LineageErrorCode =
  /** The text is not a lineage ID. A usage error: nothing was looked up. */
  | "BAD_ID"
  /** No stored event has this ID. */
  | "UNKNOWN_EVENT"
  /** No template of this name, or no declared topology writes it. */
  | "UNKNOWN_TEMPLATE"
  /** The key does not fit the template's key fields. A usage error. */
  | "BAD_KEY"
  /** The read model has no row under this key. */
  | "NO_ROW"
  /** The row names an event (beds_last_id) that the depot does not hold. */
  | "UNTRACEABLE"
  /** A depot or topology named on the command line is not declared. A usage error. */
  | "UNKNOWN_NAME"
  /** Rebuilding read models by replay stopped at an event a topology cannot apply. */
  | "REPLAY_HALTED"

/** A lineage tool could not answer; `message` says what to check. */
export class LineageError extends Data.TaggedError("LineageError")<{
  readonly code: LineageErrorCode
  readonly message: string
}> {}

/** Codes that mean the request itself was wrong (exit code 2), not the data. */
export const isUsageError = (e: LineageError): boolean =>
  e.code === "BAD_ID" || e.code === "BAD_KEY" || e.code === "UNKNOWN_NAME" || e.code === "UNKNOWN_TEMPLATE"
