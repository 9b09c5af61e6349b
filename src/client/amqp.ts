/**
 * The BEDS client over AMQP: any process, any machine. Two faces over one
 * implementation:
 *
 *   Promise:  const beds = await connect("amqp://127.0.0.1")
 *             const reply = await beds.publish("accounts", "Deposited", "acc-1", { amount: 500 })
 *             await beds.close()
 *
 *   Effect:   AmqpClient.layer("amqp://127.0.0.1")  →  BedsClient
 *
 * `append` and `full` publish on a channel that consumes RabbitMQ's direct
 * reply-to pseudo-queue (one consumer per connection, replies matched by
 * correlation_id); `none` publishes on a confirm channel and resolves on the
 * broker's confirm. A lost connection fails what was waiting on it with
 * UNAVAILABLE (retry with the same id: the engine dedupes) and the next
 * publish reconnects.
 */
import { randomUUID } from "node:crypto"
import * as amqp from "amqplib"
import { Data, Effect, Layer, type Scope } from "effect"
import * as Topology from "../broker/topology.ts"
import { type ErrorCode, ErrorCodes } from "../errors.ts"
import { coalesceWrites } from "../transport/cork.ts"
import type { Reply, ReplyOk } from "../transport/protocol.ts"
import {
  BedsClient,
  type BedsClientShape,
  type Confirmed,
  PublishFailed,
  type PublishOptions,
  PublishRejected,
} from "./client.ts"

export interface AmqpClientOptions {
  /** Broker name prefix (default `beds`, the wire contract's). */
  readonly prefix?: string | undefined
  /** Default reply timeout (30 000 ms); `PublishOptions.timeoutMs` overrides it per command. */
  readonly timeoutMs?: number | undefined
  /** AMQP heartbeat in seconds (default 30); a `heartbeat` in the URL wins. */
  readonly heartbeatS?: number | undefined
  /** Shown in RabbitMQ's connection list. */
  readonly connectionName?: string | undefined
}

/** The Promise API. Rejections are PublishRejected or PublishFailed. */
export interface AmqpClient {
  readonly publish: (
    depot: string,
    type: string,
    key: string,
    payload: unknown,
    options?: PublishOptions,
    signal?: AbortSignal,
  ) => Promise<ReplyOk | Confirmed>
  /** Fails what is still waiting with UNAVAILABLE and closes the connection. */
  readonly close: () => Promise<void>
}

/** The first connection could not be opened. */
export class ClientConnectError extends Data.TaggedError("ClientConnectError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

const REPLY_TO = "amq.rabbitmq.reply-to"
const DEFAULT_TIMEOUT_MS = 30_000

interface Session {
  readonly connection: amqp.ChannelModel
  readonly rpc: amqp.Channel
  readonly confirm: amqp.ConfirmChannel
  lost: boolean
}

interface Pending {
  readonly session: Session
  readonly depot: string
  readonly messageId: string
  readonly resolve: (r: ReplyOk | Confirmed) => void
  readonly reject: (e: PublishRejected | PublishFailed) => void
  readonly timer: ReturnType<typeof setTimeout>
}

/** A command validated and encoded by `publish`, on its way to a session. */
interface Outgoing {
  readonly depot: string
  readonly type: string
  readonly key: string
  readonly body: Buffer
  readonly options: PublishOptions
  readonly messageId: string
}

const unavailable = (messageId: string, message: string) =>
  new PublishFailed({ code: "UNAVAILABLE", message, messageId })

const knownCode = (code: unknown): ErrorCode =>
  typeof code === "string" && (ErrorCodes as ReadonlyArray<string>).includes(code) ? (code as ErrorCode) : "INTERNAL"

const withHeartbeat = (url: string, heartbeatS: number): string => {
  const u = new URL(url)
  if (!u.searchParams.has("heartbeat")) u.searchParams.set("heartbeat", String(heartbeatS))
  return u.toString()
}

class Client implements AmqpClient {
  private readonly names: Topology.Names
  private readonly url: string
  private readonly id = randomUUID().slice(0, 8)
  private seq = 0
  private current: { readonly promise: Promise<Session>; session?: Session } | undefined
  private readonly pending = new Map<string, Pending>()
  private readonly depots = new Map<string, Promise<void>>()
  /** Depots whose check succeeded on the open session: a publish to them needs no await. */
  private readonly checked = new Set<string>()
  /** Publishes between their call and their send, still awaiting the session or a depot check. */
  private entering = 0
  private closed = false

  private readonly options: AmqpClientOptions
  constructor(url: string, options: AmqpClientOptions) {
    this.options = options
    this.names = Topology.names(options.prefix)
    this.url = withHeartbeat(url, options.heartbeatS ?? 30)
  }

  /** The open session, or the one being opened; a failed attempt is forgotten so the next call retries. */
  session(): Promise<Session> {
    if (this.current !== undefined) return this.current.promise
    const promise: Promise<Session> = this.open().then(
      (s) => {
        if (this.current?.promise === promise) this.current.session = s
        return s
      },
      (e) => {
        if (this.current?.promise === promise) this.current = undefined
        throw e
      },
    )
    this.current = { promise }
    return promise
  }

  private async open(): Promise<Session> {
    const connection = await amqp.connect(this.url, {
      noDelay: true,
      clientProperties: { connection_name: this.options.connectionName ?? `beds-client@${process.pid}` },
    })
    // The broker's reason comes as an error event; the close that follows is what ends the session.
    let reason: Error | undefined
    const remember = (e: Error) => {
      reason ??= e
    }
    let session: Session | undefined
    const lost = () => {
      if (session !== undefined) this.lose(session, reason)
    }
    connection.on("error", remember)
    connection.on("close", lost)
    try {
      const rpc = await connection.createChannel()
      rpc.on("error", remember)
      rpc.on("close", lost)
      rpc.on("return", (m: amqp.Message) => this.returned(m))
      await rpc.consume(REPLY_TO, (m) => this.reply(m), { noAck: true })
      const confirm = await connection.createConfirmChannel()
      confirm.on("error", remember)
      confirm.on("close", lost)
      confirm.on("return", (m: amqp.Message) => this.returned(m))
      coalesceWrites(connection)
      session = { connection, rpc, confirm, lost: false }
      return session
    } catch (e) {
      await connection.close().catch(() => undefined)
      throw e
    }
  }

  /** Everything waiting on a dead session fails; the next publish opens a new one. */
  private lose(session: Session, reason: Error | undefined) {
    if (session.lost) return
    session.lost = true
    if (this.current?.session === session) this.current = undefined
    this.checked.clear()
    const text = reason?.message ?? "the connection to RabbitMQ closed"
    // A publish to an exchange that does not exist closes the channel with 404.
    const missing = /no exchange '([^']+)'/.exec(text)?.[1]
    if (missing !== undefined)
      for (const depot of this.depots.keys()) if (this.names.exchange(depot) === missing) this.depots.delete(depot)
    for (const [correlationId, p] of this.pending)
      if (p.session === session)
        this.settle(
          correlationId,
          missing !== undefined && missing === this.names.exchange(p.depot)
            ? this.unknownDepot(p.depot)
            : new PublishFailed({
                code: "UNAVAILABLE",
                message: `Lost the connection to RabbitMQ before the reply (${text}); the command may have been appended: retry with the same id.`,
                messageId: p.messageId,
              }),
        )
    session.connection.close().catch(() => undefined)
  }

  private unknownDepot(depot: string) {
    return new PublishRejected({
      code: "UNKNOWN_DEPOT",
      message: `RabbitMQ has no exchange ${this.names.exchange(depot)}: depot "${depot}" is not served by any BEDS engine on this broker (check the name, or start an engine that serves it).`,
    })
  }

  private settle(correlationId: string, outcome: ReplyOk | Confirmed | PublishRejected | PublishFailed) {
    const p = this.pending.get(correlationId)
    if (p === undefined) return
    this.pending.delete(correlationId)
    clearTimeout(p.timer)
    if (outcome instanceof PublishRejected || outcome instanceof PublishFailed) p.reject(outcome)
    else p.resolve(outcome)
  }

  private reply(m: amqp.ConsumeMessage | null) {
    if (m === null) return
    const correlationId = m.properties.correlationId as unknown
    if (typeof correlationId !== "string") return
    const p = this.pending.get(correlationId)
    if (p === undefined) return // timed out or abandoned: the reply is no one's any more
    let reply: Reply
    try {
      reply = JSON.parse(m.content.toString("utf8")) as Reply
    } catch {
      this.settle(
        correlationId,
        new PublishFailed({ code: "UNAVAILABLE", message: "The engine's reply was not JSON.", messageId: p.messageId }),
      )
      return
    }
    if (reply.ok === true) this.settle(correlationId, reply)
    else
      this.settle(
        correlationId,
        new PublishRejected(
          reply.error?.details === undefined
            ? { code: knownCode(reply.error?.code), message: String(reply.error?.message) }
            : { code: knownCode(reply.error.code), message: String(reply.error.message), details: reply.error.details },
        ),
      )
  }

  private returned(m: amqp.Message) {
    const correlationId = m.properties.correlationId as unknown
    if (typeof correlationId !== "string") return
    const p = this.pending.get(correlationId)
    if (p === undefined) return
    this.settle(
      correlationId,
      new PublishRejected({
        code: "UNKNOWN_DEPOT",
        message: `RabbitMQ could not route the command: ${this.names.exchange(p.depot)} has no partition queues bound; start an engine that serves depot "${p.depot}".`,
      }),
    )
  }

  /** Checks once (per success) that the depot's exchange exists, on a throw-away channel: a 404 closes the channel it happens on. */
  private depotExists(session: Session, depot: string): Promise<void> {
    const cached = this.depots.get(depot)
    if (cached !== undefined) return cached
    const check = (async () => {
      const ch = await session.connection.createChannel()
      ch.on("error", () => undefined)
      try {
        await ch.checkExchange(this.names.exchange(depot))
      } catch (e) {
        if ((e as { code?: unknown }).code === 404) throw this.unknownDepot(depot)
        throw e
      }
      await ch.close().catch(() => undefined)
    })()
    this.depots.set(depot, check)
    check.catch(() => {
      if (this.depots.get(depot) === check) this.depots.delete(depot)
    })
    return check
  }

  publish = (
    depot: string,
    type: string,
    key: string,
    payload: unknown,
    options: PublishOptions = {},
    signal?: AbortSignal,
  ): Promise<ReplyOk | Confirmed> => {
    // Whatever goes wrong, the caller gets a rejected promise, never a throw.
    try {
      return this.start(depot, type, key, payload, options, signal)
    } catch (e) {
      return Promise.reject(e)
    }
  }

  private start(
    depot: string,
    type: string,
    key: string,
    payload: unknown,
    options: PublishOptions,
    signal: AbortSignal | undefined,
  ): Promise<ReplyOk | Confirmed> {
    const messageId = options.id ?? randomUUID()
    if (this.closed) throw unavailable(messageId, "The client is closed.")
    // AMQP short strings hold 255 bytes; the engine's own limits say the same in characters.
    if (Buffer.byteLength(messageId) > 255)
      throw new PublishRejected({
        code: "MISSING_MESSAGE_ID",
        message: `The id is ${Buffer.byteLength(messageId)} bytes long: use at most 255.`,
      })
    if (Buffer.byteLength(key) > 255)
      throw new PublishRejected({
        code: "MISSING_KEY",
        message: `The key is ${Buffer.byteLength(key)} bytes long: use at most 255.`,
      })
    let body: Buffer
    try {
      body = Buffer.from(JSON.stringify(payload) ?? "null")
    } catch (e) {
      throw new PublishRejected({
        code: "BAD_JSON",
        message: `The payload cannot be sent as JSON: ${(e as Error).message}.`,
      })
    }
    const command: Outgoing = { depot, type, key, body, options, messageId }
    // Publishes to a depot leave in call order. One goes out at once only when the session is
    // open, the depot checked and no earlier publish is still on its way; otherwise it awaits the
    // same promises, in the same order, as those before it.
    const session = this.current?.session
    if (session !== undefined && !session.lost && this.entering === 0 && this.checked.has(depot))
      return this.send(session, command, signal)
    return this.sendWhenReady(command, signal)
  }

  private async sendWhenReady(command: Outgoing, signal: AbortSignal | undefined): Promise<ReplyOk | Confirmed> {
    const { depot, messageId } = command
    let session: Session
    this.entering++
    try {
      try {
        session = await this.session()
      } catch (e) {
        throw unavailable(messageId, `Cannot connect to RabbitMQ: ${(e as Error).message}`)
      }
      try {
        await this.depotExists(session, depot)
      } catch (e) {
        if (e instanceof PublishRejected) throw e
        throw unavailable(messageId, `Cannot check depot "${depot}" on RabbitMQ: ${(e as Error).message}`)
      }
      if (!session.lost) this.checked.add(depot)
    } finally {
      this.entering--
    }
    return this.send(session, command, signal)
  }

  /** Sends a command on an open session and waits for its reply (or, at `none`, the broker's confirm). */
  private send(session: Session, command: Outgoing, signal: AbortSignal | undefined): Promise<ReplyOk | Confirmed> {
    const { depot, type, key, body, options, messageId } = command
    if (session.lost)
      return Promise.reject(unavailable(messageId, "Lost the connection to RabbitMQ; retry with the same id."))
    if (signal?.aborted) return Promise.reject(unavailable(messageId, "Interrupted before publishing."))
    const ack = options.ack ?? "append"
    const headers: Record<string, unknown> = { [Topology.CommandHeaders.ack]: ack }
    if (options.expect !== undefined) headers[Topology.CommandHeaders.expect] = options.expect
    if (options.parent !== undefined) headers[Topology.CommandHeaders.parent] = options.parent
    const correlationId = `${this.id}.${++this.seq}`
    const timeoutMs = options.timeoutMs ?? this.options.timeoutMs ?? DEFAULT_TIMEOUT_MS
    return new Promise<ReplyOk | Confirmed>((resolve, reject) => {
      const timer = setTimeout(
        () =>
          this.settle(
            correlationId,
            new PublishFailed({
              code: "TIMEOUT",
              message: `No ${ack === "none" ? "confirm" : "reply"} within ${timeoutMs} ms; the command may have been appended: retry with the same id. If this keeps happening, check that an engine is running and consuming (beds status; beds start).`,
              messageId,
            }),
          ),
        timeoutMs,
      )
      this.pending.set(correlationId, { session, depot, messageId, resolve, reject, timer })
      signal?.addEventListener(
        "abort",
        () => this.settle(correlationId, unavailable(messageId, "Interrupted while waiting.")),
        {
          once: true,
        },
      )
      const properties: amqp.Options.Publish = {
        messageId,
        correlationId,
        type,
        contentType: "application/json",
        // Only `none` relies on the broker keeping the command (its confirm is all the publisher gets).
        // At `append`/`full` the reply is the promise: a command lost with a broker restart gets no
        // reply, and its retry with the same id is deduplicated. Transient commands spare the broker's disk.
        persistent: ack === "none",
        mandatory: true,
        timestamp: Math.floor(Date.now() / 1000),
        headers,
      }
      try {
        if (ack === "none")
          session.confirm.publish(this.names.exchange(depot), key, body, properties, (err: unknown) =>
            this.settle(
              correlationId,
              err === null || err === undefined
                ? { ok: true, ack: "none", messageId }
                : unavailable(
                    messageId,
                    "RabbitMQ did not accept the command (negative confirm); retry with the same id.",
                  ),
            ),
          )
        else session.rpc.publish(this.names.exchange(depot), key, body, { ...properties, replyTo: REPLY_TO })
      } catch (e) {
        this.settle(correlationId, unavailable(messageId, `Publishing failed: ${(e as Error).message}`))
      }
    })
  }

  close = async (): Promise<void> => {
    this.closed = true
    for (const [correlationId, p] of this.pending)
      this.settle(
        correlationId,
        new PublishFailed({
          code: "UNAVAILABLE",
          message: "The client was closed before the reply.",
          messageId: p.messageId,
        }),
      )
    const current = this.current
    this.current = undefined
    if (current === undefined) return
    const session = await current.promise.catch(() => undefined)
    if (session === undefined) return
    session.lost = true
    await session.connection.close().catch(() => undefined)
  }
}

/** Connects (failing fast when RabbitMQ cannot be reached) and returns the Promise API. */
export const connect = async (url: string, options: AmqpClientOptions = {}): Promise<AmqpClient> => {
  const client = new Client(url, options)
  await client.session()
  return client
}

/** The BedsClient port over a connected client. */
export const fromClient = (client: AmqpClient): BedsClientShape => ({
  publish: (depot, type, key, payload, options) =>
    Effect.tryPromise({
      try: (signal) => client.publish(depot, type, key, payload, options, signal),
      catch: (e) =>
        e instanceof PublishRejected || e instanceof PublishFailed
          ? e
          : new PublishFailed({ code: "UNAVAILABLE", message: String(e), messageId: options?.id ?? "" }),
    }),
})

/** A connected client, closed when the scope closes. */
export const make = (
  url: string,
  options: AmqpClientOptions = {},
): Effect.Effect<AmqpClient, ClientConnectError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: () => connect(url, options),
      catch: (e) =>
        new ClientConnectError({
          message: `Cannot connect to RabbitMQ at ${url.replace(/\/\/[^@/]*@/, "//")}: ${(e as Error).message}. Is it running, and is the URL right?`,
          cause: e,
        }),
    }),
    (client) => Effect.promise(() => client.close()),
  )

/** The BedsClient service over AMQP. */
export const layer = (url: string, options: AmqpClientOptions = {}): Layer.Layer<BedsClient, ClientConnectError> =>
  Layer.effect(BedsClient, Effect.map(make(url, options), fromClient))
