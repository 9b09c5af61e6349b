/**
 * Ingress: turns an incoming command into an append and a reply. Every
 * transport goes through here, so validation, error codes and ack-level
 * semantics are identical on AMQP, embedded and in process.
 */
import { Effect } from "effect"
import type { Depot } from "../depot/depot.ts"
import * as DepotDecl from "../depot/depot.ts"
import type { AckLevel, AppendOutcome, AppendRequest } from "../depot/event.ts"
import type { DepotStoreShape } from "../depot/store.ts"
import type { DepotWriterShape } from "../depot/writer.ts"
import { CommandRejected, type ErrorCode } from "../errors.ts"
import * as Lineage from "../lineage/lineage-id.ts"
import type { ProgressShape } from "../topology/progress.ts"
import type { IncomingCommand, Reply, ReplyOk } from "../transport/protocol.ts"

export interface IngressOptions {
  readonly maxBodyBytes: number
  /** Accept `x-beds-parent` IDs that are not in any depot (e.g. from another system). */
  readonly allowExternalParents: boolean
  /** The clock, injectable for deterministic tests. */
  readonly now: () => number
}

/** A validated command, ready for its partition writer. */
export interface Accepted {
  readonly depot: Depot
  readonly partition: number
  readonly ack: AckLevel
  /** What a client may ask for: derived IDs and the parent check are the engine's to set. */
  readonly request: Omit<AppendRequest, "childId" | "checkParent">
}

const reject = (code: ErrorCode, message: string, details?: unknown) => new CommandRejected({ code, message, details })

/** The error reply for a refusal. */
export const errorReply = (e: CommandRejected): Reply => ({
  ok: false,
  error:
    e.details === undefined
      ? { code: e.code, message: e.message }
      : { code: e.code, message: e.message, details: e.details },
})

const decoder = new TextDecoder("utf-8", { fatal: true })

/** Validates everything that needs no storage look-up; pure. */
export const validate = (
  depots: ReadonlyMap<string, Depot>,
  command: IncomingCommand,
  options: IngressOptions,
): Accepted | CommandRejected => {
  const ackText = command.ack ?? "append"
  if (ackText !== "none" && ackText !== "append" && ackText !== "full")
    return reject("BAD_ACK_LEVEL", `Ack level "${ackText}" is unknown: use none, append or full (header x-beds-ack).`)
  const ack = ackText as AckLevel
  const messageId = command.messageId
  if (messageId === undefined || messageId.length === 0)
    return reject(
      "MISSING_MESSAGE_ID",
      "The command has no message_id: set the AMQP message_id property to a unique ID per command (it makes retries safe).",
    )
  if (messageId.length > 255)
    return reject("MISSING_MESSAGE_ID", `message_id is ${messageId.length} characters long: use at most 255.`)
  const depot = depots.get(command.depot)
  if (depot === undefined)
    return reject(
      "UNKNOWN_DEPOT",
      `Depot "${command.depot}" is not served here; known depots: ${[...depots.keys()].join(", ") || "(none)"}.`,
    )
  const type = command.type
  if (type === undefined || type.length === 0)
    return reject(
      "UNKNOWN_TYPE",
      `The command has no event type: set the AMQP type property to one of ${Object.keys(depot.events).join(", ")}.`,
    )
  const key = command.key
  if (key === undefined || key.length === 0)
    return reject("MISSING_KEY", `The command has no key: publish with the ${depot.keyDescription} as routing key.`)
  if (key.length > 255) return reject("MISSING_KEY", `The key is ${key.length} characters long: use at most 255.`)

  let payload: unknown
  if ("raw" in command.body) {
    const raw = command.body.raw
    const size = typeof raw === "string" ? Buffer.byteLength(raw) : raw.byteLength
    if (size > options.maxBodyBytes)
      return reject(
        "BODY_TOO_LARGE",
        `The body is ${size} bytes; the limit is ${options.maxBodyBytes} (ingress.max_body_bytes).`,
        {
          size,
          limit: options.maxBodyBytes,
        },
      )
    try {
      payload = JSON.parse(typeof raw === "string" ? raw : decoder.decode(raw))
    } catch (e) {
      return reject(
        "BAD_JSON",
        `The body is not valid UTF-8 JSON (${(e as Error).message}); send the payload as a JSON object.`,
      )
    }
  } else {
    // In-process payloads get the same limits as wire bodies: they are stored as JSON.
    let text: string | undefined
    try {
      text = JSON.stringify(command.body.payload)
    } catch (e) {
      return reject("BAD_JSON", `The payload cannot be stored as JSON (${(e as Error).message}); send plain data.`)
    }
    if (text === undefined) return reject("BAD_JSON", "The payload is missing or not JSON data; send a JSON object.")
    const size = Buffer.byteLength(text)
    if (size > options.maxBodyBytes)
      return reject(
        "BODY_TOO_LARGE",
        `The payload is ${size} bytes as JSON; the limit is ${options.maxBodyBytes} (ingress.max_body_bytes).`,
        { size, limit: options.maxBodyBytes },
      )
    payload = command.body.payload
  }

  const decoded = DepotDecl.decodePayload(depot, type, payload)
  if (!decoded.ok) return decoded.error

  let expect: number | undefined
  if (command.expect !== undefined && command.expect !== "") {
    const n = typeof command.expect === "number" ? command.expect : Number(command.expect)
    if (!Number.isSafeInteger(n) || n < 0)
      return reject(
        "BAD_EXPECT",
        `x-beds-expect must be a whole number ≥ 0 (the key's current event count); got ${JSON.stringify(command.expect)}.`,
      )
    expect = n
  }
  const parent = command.parent === "" ? undefined : command.parent
  if (parent !== undefined && !Lineage.isLineageId(parent))
    return reject(
      "BAD_PARENT",
      `x-beds-parent "${parent.slice(0, 100)}" is not a lineage ID (like "accounts:3:1234" or "accounts:3:1234/overdraft.0").`,
    )

  return {
    depot,
    partition: DepotDecl.partitionOf(key, depot.partitions),
    ack,
    request: {
      messageId,
      type,
      key,
      payload: decoded.payload,
      time: options.now(),
      expect,
      parent,
      metadata: command.metadata,
    },
  }
}

/** Replies for an append outcome at an ack level (before `full` waiting). */
const okReply = (ack: AckLevel, outcome: Extract<AppendOutcome, { _tag: "Appended" }>): ReplyOk => ({
  ok: true,
  ack,
  id: outcome.event.id,
  depot: outcome.event.depot,
  partition: outcome.event.partition,
  offset: outcome.event.offset,
  version: outcome.event.version,
  duplicate: outcome.duplicate,
})

/**
 * Handles one command end to end: validate, append through group commit,
 * wait for topologies at `full`. Calls `done` once with the reply to send
 * (also for `none`, where the transport sends nothing). Callback-shaped, not
 * an Effect: this runs once per command, and a transport should not need a
 * fiber per command. Returns a cancel for a `full` wait that is no longer
 * wanted.
 */
export const handleWith = (deps: IngressDeps, command: IncomingCommand, done: (reply: Reply) => void): (() => void) => {
  const accepted = validate(deps.depots, command, deps.options)
  if (accepted instanceof CommandRejected) {
    done(errorReply(accepted))
    return noop
  }
  const { depot, partition, ack, request } = accepted
  const checkParent = request.parent !== undefined && !deps.options.allowExternalParents
  let cancel: () => void = noop
  let cancelled = false
  deps.writer.appendWith(depot.name, partition, checkParent ? { ...request, checkParent } : request, (outcome) => {
    if (cancelled) return
    switch (outcome._tag) {
      case "StoreError":
        return done(
          errorReply(
            reject(
              outcome.code === "FENCED" ? "FENCED" : "UNAVAILABLE",
              `${outcome.message}${outcome.retryable ? " The command was not appended; retry it with the same message_id." : ""}`,
            ),
          ),
        )
      case "UnknownParent":
        return done(
          errorReply(
            reject(
              "UNKNOWN_PARENT",
              `x-beds-parent "${outcome.parent}" names no stored event; check the ID, or set engine.allow_external_parents = true to accept parents from outside this engine.`,
            ),
          ),
        )
      case "VersionConflict":
        return done(
          errorReply(
            reject(
              "VERSION_CONFLICT",
              `Key "${outcome.key}" is at version ${outcome.actual}, not ${outcome.expected} as x-beds-expect said; nothing was appended. Re-read and retry with x-beds-expect: ${outcome.actual}.`,
              { expected: outcome.expected, actual: outcome.actual },
            ),
          ),
        )
    }
    const reply = okReply(ack, outcome)
    if (ack !== "full") return done(reply)
    // A duplicate may name another key, hence another partition: wait on the original's.
    cancel = deps.progress.whenApplied(depot.name, outcome.event.partition, outcome.event.offset, (applied) =>
      done({ ...reply, applied: applied.topologies, values: applied.values }),
    )
  })
  return () => {
    cancelled = true
    cancel()
  }
}

/** `handleWith` as an Effect; interrupting it drops the reply (the append itself goes on). */
export const handle = (deps: IngressDeps, command: IncomingCommand): Effect.Effect<Reply> =>
  Effect.callback<Reply>((resume) => {
    const cancel = handleWith(deps, command, (reply) => resume(Effect.succeed(reply)))
    return Effect.sync(cancel)
  })

const noop = () => undefined

/** What ingress needs from the engine. */
export interface IngressDeps {
  readonly depots: ReadonlyMap<string, Depot>
  readonly store: DepotStoreShape
  readonly writer: DepotWriterShape
  readonly progress: ProgressShape
  readonly options: IngressOptions
}
