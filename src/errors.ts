/**
 * Every failure a user can see carries a stable code. Codes are part of the
 * wire contract (clients in other languages switch on them): add, never rename.
 */
import { Data } from "effect"

/** Stable error codes, as sent in `{"ok":false,"error":{"code":...}}` replies. */
export const ErrorCodes = [
  "UNKNOWN_DEPOT",
  "UNKNOWN_TYPE",
  "SCHEMA_MISMATCH",
  "BAD_JSON",
  "BODY_TOO_LARGE",
  "MISSING_MESSAGE_ID",
  "MISSING_KEY",
  "BAD_ACK_LEVEL",
  "BAD_EXPECT",
  "BAD_PARENT",
  "UNKNOWN_PARENT",
  "VERSION_CONFLICT",
  "FENCED",
  "TIMEOUT",
  "UNAVAILABLE",
  "INTERNAL",
] as const
export type ErrorCode = (typeof ErrorCodes)[number]

/**
 * A command was refused. It is the error every ingress path replies with;
 * `details` holds machine-readable context (schema issues, current version).
 */
export class CommandRejected extends Data.TaggedError("CommandRejected")<{
  readonly code: ErrorCode
  readonly message: string
  readonly details?: unknown
}> {}

/** A declaration (depot, topology, template) is invalid; start-up stops. */
export class DeclarationError extends Data.TaggedError("DeclarationError")<{
  readonly code:
    | "BAD_DEPOT"
    | "BAD_TOPOLOGY"
    | "BAD_TEMPLATE"
    | "UNSAFE_IDENTIFIER"
    | "UNKNOWN_TEMPLATE"
    | "UNKNOWN_FIELD"
  readonly message: string
}> {}

/** Configuration could not be read or decoded; start-up stops. */
export class ConfigError extends Data.TaggedError("ConfigError")<{
  readonly code: "CONFIG_UNREADABLE" | "CONFIG_SYNTAX" | "CONFIG_INVALID"
  readonly message: string
}> {}

/**
 * A storage backend failed. `retryable` is decided at the adapter boundary
 * (lost connection, deadlock: yes; constraint or syntax error: no).
 */
export class StoreError extends Data.TaggedError("StoreError")<{
  readonly code:
    | "STORE_UNAVAILABLE"
    | "STORE_FAILED"
    | "LOGIN_REFUSED"
    | "FENCED"
    | "ROW_CONFLICT"
    | "SCHEMA_DRIFT"
    | "CORRUPT"
  readonly message: string
  readonly retryable: boolean
  readonly cause?: unknown
}> {}
