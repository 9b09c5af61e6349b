/**
 * Declaring a depot: a named, partitioned, append-only log whose event types
 * are Schemas. Declaring is pure; the runtime decides where a depot lives.
 */
import { Result, Schema, SchemaIssue } from "effect"
import { CommandRejected, DeclarationError } from "../errors.ts"

// biome-ignore lint/suspicious/noExplicitAny: a heterogeneous map of event Schemas
export type EventSchemas = Readonly<Record<string, Schema.Codec<any, any, never, never>>>

/** A declared depot. */
export interface Depot<E extends EventSchemas = EventSchemas> {
  readonly name: string
  readonly partitions: number
  /** What the key is, in the domain's words (e.g. "account id"). */
  readonly keyDescription: string
  readonly events: E
  /** Where failed projections of this depot's events go: see the README. */
  readonly description?: string | undefined
}

const NAME_RE = /^[a-z][a-z0-9_]{0,62}$/

/** Declares a depot; throws DeclarationError at module load on a bad name. */
export const make = <const E extends EventSchemas>(spec: {
  readonly name: string
  readonly partitions: number
  readonly key: string
  readonly events: E
  readonly description?: string
}): Depot<E> => {
  if (!NAME_RE.test(spec.name))
    throw new DeclarationError({
      code: "BAD_DEPOT",
      message: `Depot name "${spec.name}" is invalid: use 1-63 characters of a-z, 0-9 and _, starting with a letter.`,
    })
  if (!Number.isInteger(spec.partitions) || spec.partitions < 1 || spec.partitions > 1024)
    throw new DeclarationError({
      code: "BAD_DEPOT",
      message: `Depot "${spec.name}" declares ${spec.partitions} partitions: use a whole number from 1 to 1024.`,
    })
  for (const type of Object.keys(spec.events))
    if (!/^[A-Za-z][A-Za-z0-9_]{0,62}$/.test(type))
      throw new DeclarationError({
        code: "BAD_DEPOT",
        message: `Depot "${spec.name}" declares event type "${type}": use letters, digits and _, starting with a letter.`,
      })
  return {
    name: spec.name,
    partitions: spec.partitions,
    keyDescription: spec.key,
    events: spec.events,
    description: spec.description,
  }
}

/**
 * The partition of a key: FNV-1a (32 bit) over its UTF-8 bytes, modulo the
 * partition count. Stable forever: changing it would move keys between
 * partitions and break per-key order of existing depots.
 */
export const partitionOf = (key: string, partitions: number): number => {
  let h = 0x811c9dc5
  for (let i = 0; i < key.length; i++) {
    const c = key.charCodeAt(i)
    if (c >= 0x80) return partitionOfBytes(key, partitions) // ASCII is hashed in place; the rest via UTF-8 bytes
    h ^= c
    h = Math.imul(h, 0x01000193) >>> 0
  }
  return h % partitions
}

const partitionOfBytes = (key: string, partitions: number): number => {
  let h = 0x811c9dc5
  const bytes = Buffer.from(key, "utf8")
  for (let i = 0; i < bytes.length; i++) {
    h ^= bytes[i] as number
    h = Math.imul(h, 0x01000193) >>> 0
  }
  return h % partitions
}

type Decoder = (input: unknown, options: { readonly errors: "all" }) => Result.Result<unknown, Schema.SchemaError>
const decoders = new WeakMap<object, Decoder>()
/** One decoder per Schema, built on first use: building it costs more than running it. */
const decoderOf = (schema: Schema.Top): Decoder => {
  let d = decoders.get(schema)
  if (d === undefined) {
    d = Schema.decodeUnknownResult(schema as Schema.Codec<unknown, unknown>) as Decoder
    decoders.set(schema, d)
  }
  return d
}

/**
 * Validates a command's type and payload against the depot's Schemas,
 * returning the decoded payload or a CommandRejected saying what to fix.
 */
export const decodePayload = (
  depot: Depot,
  type: string,
  payload: unknown,
): { readonly ok: true; readonly payload: unknown } | { readonly ok: false; readonly error: CommandRejected } => {
  const schema = Object.hasOwn(depot.events, type) ? depot.events[type] : undefined
  if (schema === undefined)
    return {
      ok: false,
      error: new CommandRejected({
        code: "UNKNOWN_TYPE",
        message: `Depot "${depot.name}" has no event type "${type}"; known types: ${Object.keys(depot.events).join(", ")}.`,
        details: { depot: depot.name, type, known: Object.keys(depot.events) },
      }),
    }
  const result = decoderOf(schema)(payload, ALL_ERRORS)
  if (Result.isSuccess(result)) return { ok: true, payload: result.success }
  const err = result.failure
  const issues = schemaIssues(err)
  return {
    ok: false,
    error: new CommandRejected({
      code: "SCHEMA_MISMATCH",
      message: `Payload of ${depot.name}/${type} does not match its Schema: ${issues.map((i) => `${i.path.length ? i.path.join(".") : "(payload)"}: ${i.message}`).join("; ")}.`,
      details: { issues },
    }),
  }
}

/** Schema issues as `{path, message}` pairs, for error replies. */
export const schemaIssues = (
  error: Schema.SchemaError,
): ReadonlyArray<{ path: ReadonlyArray<PropertyKey>; message: string }> => {
  const formatted = issueFormatter(error.issue)
  return formatted.issues.map((i) => ({ path: (i.path ?? []) as ReadonlyArray<PropertyKey>, message: i.message }))
}

const issueFormatter = SchemaIssue.makeFormatterStandardSchemaV1()
const ALL_ERRORS = { errors: "all" } as const
