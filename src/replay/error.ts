/**
 * Replay failures. Codes are stable (scripts switch on them, `beds replay
 * --json` prints them); add codes, never rename them.
 */
import { Data } from "effect"

export const ReplayErrorCodes = [
  /** The topology is not declared in projections/. */
  "UNKNOWN_TOPOLOGY",
  /** --from/--to could not be read as an offset, a per-partition list or a time. */
  "BAD_BOUND",
  /** --from lies after --to. */
  "BAD_RANGE",
  /** An offset names no event yet. */
  "OFFSET_PAST_HEAD",
  /** A time lies before the first event of the topology's depots. */
  "TIME_BEFORE_FIRST_EVENT",
  /** Options that do not go together (e.g. --verify with a snapshot). */
  "BAD_OPTIONS",
  /** Another replay of the topology holds its lock. */
  "REPLAY_RUNNING",
  /** The read-model store has no blue/green operations. */
  "REPLAY_UNSUPPORTED",
  /** The topology's handler kept failing on an event under the `halt` policy. */
  "REPLAY_HALTED",
  /** A stream of the rebuild failed with something other than a handler failure (a store refusal, a bug). */
  "REPLAY_FAILED",
  /** --verify found differences between the rebuilt and the live model. */
  "VERIFY_MISMATCH",
  /** The live model moved while fenced, or was reset during the replay. */
  "LIVE_MOVED",
  /** A topology's version changed and the configuration asks for a flag, not an automatic rebuild. */
  "VERSION_CHANGED",
] as const
export type ReplayErrorCode = (typeof ReplayErrorCodes)[number]

/** A replay was refused or failed; `message` says what to do, `details` carries data for scripts. */
export class ReplayError extends Data.TaggedError("ReplayError")<{
  readonly code: ReplayErrorCode
  readonly message: string
  readonly details?: unknown
}> {}

/** Codes that mean the command line itself was wrong (exit code 2). */
export const USAGE_CODES: ReadonlySet<ReplayErrorCode> = new Set([
  "UNKNOWN_TOPOLOGY",
  "BAD_BOUND",
  "BAD_RANGE",
  "OFFSET_PAST_HEAD",
  "TIME_BEFORE_FIRST_EVENT",
  "BAD_OPTIONS",
  "REPLAY_UNSUPPORTED",
])
