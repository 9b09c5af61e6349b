/**
 * The AMQP ingress: consumes the partition queues of every served depot and
 * hands each command to `Engine.submit`, then answers on `reply_to` and acks.
 *
 * Per delivery:
 *   - decode AMQP properties into an IncomingCommand (the README's wire table);
 *   - `engine.submit`, started in delivery order (see src/broker/topology.ts
 *     for why that keeps per-key order) and never awaited before the next
 *     delivery is started: `prefetch` bounds how many are in flight;
 *   - `ok:true`: reply at `append`/`full` when `reply_to` is set, nothing at `none`;
 *   - `ok:false`: publish the command to the dead-letter exchange with the
 *     reason (confirmed), then the error reply when `reply_to` is set;
 *   - ack only then. A delivery that was not acked (crash, lost connection)
 *     comes back from RabbitMQ; the engine dedupes by message_id and the
 *     redelivery is answered with the original reply marked duplicate.
 *
 * A lost connection is re-established with capped exponential backoff, the
 * topology re-declared and the consumers resumed.
 */
import * as amqp from "amqplib"
import { Cause, Context, Data, Effect, Fiber, Layer, Schedule, type Scope } from "effect"
import * as Topology from "../broker/topology.ts"
import type { Config } from "../config/schema.ts"
import { CommandRejected } from "../errors.ts"
import { Engine, type EngineShape } from "../runtime/engine.ts"
import { errorReply } from "../runtime/ingress.ts"
import { Acks } from "./acks.ts"
import { coalesceWrites } from "./cork.ts"
import type { IncomingCommand, Reply, ReplyError } from "./protocol.ts"

export interface AmqpIngressSettings {
  /** `amqp://user:password@host:port/vhost`. */
  readonly url: string
  /** Unacknowledged deliveries per partition queue: the backpressure. */
  readonly prefetch: number
  readonly queueType: Topology.QueueType
  /** AMQP heartbeat in seconds; 0 disables it. A `heartbeat` in the URL wins. */
  readonly heartbeatS: number
  /** Broker name prefix (default `beds`, the wire contract's). */
  readonly prefix?: string | undefined
  /** Depots to consume; default every depot the engine declares. */
  readonly depots?: ReadonlyArray<string> | undefined
  /** Reconnect backoff: first delay and cap, in milliseconds (default 100 and 5000). */
  readonly reconnect?: { readonly initialMs: number; readonly maxMs: number } | undefined
  /** How long `stop` waits for in-flight commands before closing anyway (default 30 000 ms). */
  readonly drainTimeoutMs?: number | undefined
  /** Shown in RabbitMQ's connection list. */
  readonly connectionName?: string | undefined
}

/** Settings from the `[amqp]` config section. */
export const settingsFromConfig = (c: Config["amqp"]): AmqpIngressSettings => ({
  url: c.url,
  prefetch: c.prefetch,
  queueType: c.queue_type,
  heartbeatS: c.heartbeat_s,
  prefix: c.prefix,
})

export interface AmqpIngressStatus {
  readonly connected: boolean
  /** Partition queues being consumed. */
  readonly consumers: number
  /** Deliveries handed to the engine and not yet acked. */
  readonly inFlight: number
  /** Deliveries acked since start. */
  readonly handled: number
  /** Of those, refused ones (dead-lettered). */
  readonly refused: number
  /** Sessions opened after the first one. */
  readonly reconnects: number
  readonly lastError?: string | undefined
}

export interface AmqpIngressShape {
  readonly status: () => AmqpIngressStatus
  /**
   * Stops consuming (basic.cancel), waits for in-flight commands to be
   * answered and acked, then closes the connection. Idempotent; also run
   * when the Layer's scope closes.
   */
  readonly stop: Effect.Effect<void>
}

export class AmqpIngress extends Context.Service<AmqpIngress, AmqpIngressShape>()("beds/AmqpIngress") {}

/** The ingress could not start. */
export class AmqpIngressError extends Data.TaggedError("AmqpIngressError")<{
  readonly code: "UNREACHABLE" | "BAD_SETTINGS" | "NO_DEPOTS" | "FAILED"
  readonly message: string
  readonly cause?: unknown
}> {}

// ---------------------------------------------------------------------------
// Decoding

/** Header values arrive typed by whatever client sent them; the engine validates text. */
const headerText = (v: unknown): string | undefined => {
  if (v === undefined || v === null) return undefined
  if (typeof v === "string") return v
  if (Buffer.isBuffer(v)) return v.toString("utf8")
  if (typeof v === "number" || typeof v === "boolean" || typeof v === "bigint") return String(v)
  try {
    return JSON.stringify(v) ?? String(v)
  } catch {
    return String(v)
  }
}

const headerExpect = (v: unknown): string | number | undefined => (typeof v === "number" ? v : headerText(v))

const isJsonType = (contentType: string) => {
  const t = contentType.split(";")[0]?.trim().toLowerCase() ?? ""
  return t === "" || t === "application/json" || t.endsWith("+json") || t === "text/json"
}

const IDENTITY_ENCODINGS = new Set(["", "identity", "utf-8", "utf8"])

/** The parts of a delivery decoding reads. */
export interface DeliveryLike {
  readonly content: Uint8Array
  readonly fields: { readonly routingKey: string }
  readonly properties: {
    readonly type?: unknown
    readonly messageId?: unknown
    readonly contentType?: unknown
    readonly contentEncoding?: unknown
    readonly headers?: Readonly<Record<string, unknown>> | undefined
  }
}

const optionalText = (v: unknown): string | undefined => (v === undefined || v === null ? undefined : String(v))

/**
 * A delivery as an IncomingCommand, per the wire table. Only what the engine
 * cannot see is refused here: a content type or encoding that is not JSON.
 */
export const decode = (depot: string, message: DeliveryLike): IncomingCommand | CommandRejected => {
  const p = message.properties
  const contentType = optionalText(p.contentType)
  if (contentType !== undefined && !isJsonType(contentType))
    return new CommandRejected({
      code: "BAD_JSON",
      message: `content_type is "${contentType.slice(0, 100)}": the body must be the payload as JSON; publish with content_type application/json.`,
    })
  const encoding = optionalText(p.contentEncoding)
  if (encoding !== undefined && !IDENTITY_ENCODINGS.has(encoding.toLowerCase()))
    return new CommandRejected({
      code: "BAD_JSON",
      message: `content_encoding "${encoding.slice(0, 100)}" is not supported: send the JSON body uncompressed, without content_encoding.`,
    })
  const h = p.headers ?? {}
  return {
    depot,
    type: optionalText(p.type),
    key: message.fields.routingKey,
    messageId: optionalText(p.messageId),
    body: { raw: message.content },
    ack: headerText(h[Topology.CommandHeaders.ack]),
    parent: headerText(h[Topology.CommandHeaders.parent]),
    expect: headerExpect(h[Topology.CommandHeaders.expect]),
  }
}

const internalReply = (cause: Cause.Cause<unknown>): ReplyError =>
  errorReply(
    new CommandRejected({
      code: "INTERNAL",
      message: `The engine failed while handling the command (${Cause.pretty(cause).split("\n")[0]?.slice(0, 300)}); it may not have been appended: retry with the same message_id.`,
    }),
  ) as ReplyError

// ---------------------------------------------------------------------------
// The running ingress

interface Consumer {
  readonly channel: amqp.Channel
  readonly tag: string
  readonly acks: Acks
}

/** Each consuming channel's ack coalescer. */
const ackers = new WeakMap<amqp.Channel, Acks>()
const ackerOf = (channel: amqp.Channel): Acks => {
  let acks = ackers.get(channel)
  if (acks === undefined) {
    const byTag = (tag: number) => ({ fields: { deliveryTag: tag } }) as amqp.Message
    acks = new Acks({
      ack: (tag, multiple) => channel.ack(byTag(tag), multiple),
      nack: (tag) => channel.nack(byTag(tag), false, false),
    })
    ackers.set(channel, acks)
  }
  return acks
}

interface Session {
  readonly connection: amqp.ChannelModel
  readonly dlx: amqp.ConfirmChannel
  readonly consumers: Array<Consumer>
  /** Resolves when the connection is gone, however it went. */
  readonly closed: Promise<void>
  /** Closes the connection so the supervisor opens a new session. */
  readonly recycle: (reason: string) => void
}

const withHeartbeat = (url: string, heartbeatS: number): string => {
  const u = new URL(url)
  if (!u.searchParams.has("heartbeat")) u.searchParams.set("heartbeat", String(heartbeatS))
  return u.toString()
}

const encodeReply = (reply: Reply) => Buffer.from(JSON.stringify(reply))

/** Builds the ingress over an engine; the returned shape is live until `stop`. */
export const make = (
  settings: AmqpIngressSettings,
): Effect.Effect<AmqpIngressShape, AmqpIngressError | Topology.TopologyError, Engine | Scope.Scope> =>
  Effect.gen(function* () {
    const engine: EngineShape = yield* Engine
    const context = yield* Effect.context<never>()
    const log = (level: "info" | "warn" | "error", message: string) =>
      Effect.runForkWith(context)(
        level === "info"
          ? Effect.logInfo(message)
          : level === "warn"
            ? Effect.logWarning(message)
            : Effect.logError(message),
      )

    const n = yield* Effect.try({
      try: () => Topology.names(settings.prefix),
      catch: (e) => new AmqpIngressError({ code: "BAD_SETTINGS", message: (e as Error).message }),
    })
    const url = yield* Effect.try({
      try: () => withHeartbeat(settings.url, settings.heartbeatS),
      catch: () =>
        new AmqpIngressError({
          code: "BAD_SETTINGS",
          message: `amqp.url "${settings.url}" is not a URL: use amqp://user:password@host:5672/vhost.`,
        }),
    })
    const wanted = settings.depots
    const depots = engine.declarations.depots.filter((d) => wanted === undefined || wanted.includes(d.name))
    if (wanted !== undefined) {
      const missing = wanted.filter((w) => !depots.some((d) => d.name === w))
      if (missing.length > 0)
        return yield* new AmqpIngressError({
          code: "NO_DEPOTS",
          message: `The AMQP ingress was asked to serve ${missing.join(", ")}, which the engine does not declare (it has ${engine.declarations.depots.map((d) => d.name).join(", ") || "none"}).`,
        })
    }
    const connectionName = settings.connectionName ?? `beds-ingress@${process.pid}`

    const state = {
      session: undefined as Session | undefined,
      stopping: false,
      inFlight: 0,
      handled: 0,
      refused: 0,
      sessions: 0,
      live: undefined as { readonly connection: amqp.ChannelModel; readonly consumers: Array<Consumer> } | undefined,
      lastError: undefined as string | undefined,
      drained: [] as Array<() => void>,
    }

    const done = () => {
      state.inFlight--
      if (state.inFlight === 0 && state.drained.length > 0) for (const f of state.drained.splice(0)) f()
    }

    const sendReply = (channel: amqp.Channel, message: amqp.ConsumeMessage, reply: Reply) => {
      const replyTo = message.properties.replyTo as unknown
      if (typeof replyTo !== "string" || replyTo.length === 0) return
      const correlationId = message.properties.correlationId as unknown
      channel.publish(
        "",
        replyTo,
        encodeReply(reply),
        correlationId === undefined || correlationId === null
          ? { contentType: "application/json" }
          : { contentType: "application/json", correlationId: String(correlationId) },
      )
    }

    /** Publishes a refused command to the dead-letter exchange; resolves true once the broker confirmed it. */
    const deadLetter = (
      session: Session,
      queue: string,
      depot: string,
      message: amqp.ConsumeMessage,
      error: ReplyError["error"],
    ): Promise<boolean> =>
      new Promise((resolve) => {
        const p = message.properties
        const reason: Record<string, unknown> = {
          [Topology.DeadLetterHeaders.code]: error.code,
          [Topology.DeadLetterHeaders.message]: error.message,
          [Topology.DeadLetterHeaders.depot]: depot,
          [Topology.DeadLetterHeaders.failedAt]: new Date().toISOString(),
          [Topology.DeadLetterHeaders.queue]: queue,
          [Topology.DeadLetterHeaders.exchange]: message.fields.exchange,
          [Topology.DeadLetterHeaders.routingKey]: message.fields.routingKey,
        }
        if (error.details !== undefined)
          try {
            reason[Topology.DeadLetterHeaders.details] = JSON.stringify(error.details)
          } catch {}
        // Not copied: expiration (the entry must stay) and user_id (the broker checks it against our login).
        const options = (headers: Record<string, unknown>): amqp.Options.Publish => {
          const o: Record<string, unknown> = { persistent: true, headers }
          for (const k of [
            "contentType",
            "contentEncoding",
            "correlationId",
            "replyTo",
            "messageId",
            "type",
            "appId",
            "timestamp",
            "priority",
          ] as const)
            if (p[k] !== undefined && p[k] !== null) o[k] = p[k]
          return o as amqp.Options.Publish
        }
        const confirmed = (err: unknown) => resolve(err === null || err === undefined)
        try {
          session.dlx.publish(n.dlx, depot, message.content, options({ ...(p.headers ?? {}), ...reason }), confirmed)
        } catch {
          // A header the client library cannot encode again: keep the reason, drop the rest.
          try {
            session.dlx.publish(n.dlx, depot, message.content, options(reason), confirmed)
          } catch {
            resolve(false)
          }
        }
      })

    const settle = async (
      session: Session,
      consumer: amqp.Channel,
      queue: string,
      depot: string,
      message: amqp.ConsumeMessage,
      reply: Reply,
    ) => {
      try {
        if (reply.ok) {
          if (reply.ack !== "none") sendReply(consumer, message, reply)
          ackerOf(consumer).ack(message.fields.deliveryTag)
        } else {
          const dead = await deadLetter(session, queue, depot, message, reply.error)
          sendReply(consumer, message, reply)
          // Unconfirmed: let the broker dead-letter it through the queue's x-dead-letter-exchange.
          if (dead) ackerOf(consumer).ack(message.fields.deliveryTag)
          else ackerOf(consumer).nack(message.fields.deliveryTag)
          state.refused++
        }
        state.handled++
      } catch (e) {
        // The channel is gone: RabbitMQ redelivers the command, and the engine answers it as a duplicate.
        state.lastError = `settling a delivery on ${queue}: ${(e as Error).message}`
      } finally {
        done()
      }
    }

    const onDelivery = (session: Session, channel: amqp.Channel, queue: string, depot: string) => {
      return (message: amqp.ConsumeMessage | null) => {
        if (message === null) {
          session.recycle(`the broker cancelled the consumer of ${queue} (was the queue deleted?)`)
          return
        }
        state.inFlight++
        ackerOf(channel).delivered(message.fields.deliveryTag)
        let command: IncomingCommand | CommandRejected
        try {
          command = decode(depot, message)
        } catch (e) {
          command = new CommandRejected({
            code: "INTERNAL",
            message: `The command could not be decoded: ${(e as Error).message}`,
          })
        }
        if (command instanceof CommandRejected) {
          void settle(session, channel, queue, depot, message, errorReply(command))
          return
        }
        // Started synchronously, so commands enter the engine in delivery order.
        try {
          engine.submitWith(command, (reply) => void settle(session, channel, queue, depot, message, reply))
        } catch (e) {
          void settle(session, channel, queue, depot, message, internalReply(Cause.die(e)))
        }
      }
    }

    const openSession = async (): Promise<Session> => {
      await Topology.declare(settings.url, depots, { queueType: settings.queueType, prefix: n.prefix })
      let connection: amqp.ChannelModel
      try {
        connection = await amqp.connect(url, { noDelay: true, clientProperties: { connection_name: connectionName } })
      } catch (e) {
        throw Topology.classify("Connecting the AMQP ingress", e, url)
      }
      state.sessions++
      let resolveClosed: () => void = () => undefined
      const closed = new Promise<void>((r) => {
        resolveClosed = r
      })
      connection.on("error", (e: Error) => {
        state.lastError = e.message
      })
      connection.on("close", () => {
        if (state.live?.connection === connection) state.live = undefined
        resolveClosed()
      })
      connection.on("blocked", (reason: string) => log("warn", `RabbitMQ blocked the ingress connection: ${reason}`))
      const consumers: Array<Consumer> = []
      // Deliveries flow as soon as the first consumer is registered, before the session is complete.
      state.live = { connection, consumers }
      const recycle = (reason: string) => {
        if (state.stopping) return
        state.lastError = reason
        log("warn", `AMQP ingress: ${reason}; reconnecting.`)
        connection.close().catch(() => resolveClosed())
      }
      const fail = async (what: string, e: unknown): Promise<never> => {
        await connection.close().catch(() => undefined)
        throw Topology.classify(what, e, url)
      }
      const dlx = await connection.createConfirmChannel().catch((e) => fail("Opening the dead-letter channel", e))
      dlx.on("error", (e: Error) => recycle(`the dead-letter channel failed: ${e.message}`))
      coalesceWrites(connection)
      const session: Session = { connection, dlx, consumers, closed, recycle }
      try {
        for (const depot of depots)
          for (let q = 0; q < depot.partitions; q++) {
            const queue = n.queue(depot.name, q)
            const channel = await connection.createChannel()
            channel.on("error", (e: Error) => session.recycle(`the channel of ${queue} failed: ${e.message}`))
            await channel.prefetch(settings.prefetch)
            const { consumerTag } = await channel.consume(queue, onDelivery(session, channel, queue, depot.name), {
              noAck: false,
            })
            consumers.push({ channel, tag: consumerTag, acks: ackerOf(channel) })
          }
      } catch (e) {
        await fail("Starting the AMQP consumers", e)
      }
      if (state.stopping) {
        // `stop` ran while this session was being opened: it must not consume.
        await connection.close().catch(() => undefined)
      }
      return session
    }

    const open = Effect.tryPromise({
      try: openSession,
      catch: (e) =>
        e instanceof Topology.TopologyError
          ? e
          : new AmqpIngressError({
              code: "FAILED",
              message: `The AMQP ingress failed to start: ${String(e)}`,
              cause: e,
            }),
    })

    // Fail fast at start-up: a broker that is down or misconfigured must stop the IPL with its reason.
    state.session = yield* open

    const initialMs = settings.reconnect?.initialMs ?? 100
    const maxMs = settings.reconnect?.maxMs ?? 5000
    const backoff = Schedule.min([
      Schedule.exponential(`${initialMs} millis`, 2),
      Schedule.spaced(`${maxMs} millis`),
    ]).pipe(Schedule.jittered)

    const supervisor = yield* Effect.forkScoped(
      Effect.gen(function* () {
        while (true) {
          const current = state.session
          if (current !== undefined) yield* Effect.promise(() => current.closed)
          state.session = undefined
          if (state.stopping) return
          log("warn", `AMQP ingress lost its connection (${state.lastError ?? "closed"}); reconnecting.`)
          state.session = yield* open.pipe(
            Effect.tapError((e) =>
              Effect.sync(() => {
                state.lastError = e.message
              }),
            ),
            Effect.retry(backoff),
          )
          log("info", `AMQP ingress reconnected (${state.sessions - 1} reconnect(s) so far).`)
        }
      }),
    )

    let stopped: Promise<void> | undefined
    const stopNow = async () => {
      // The live connection, not the supervisor's session: one may be half open when stop comes.
      const live = state.live
      if (live === undefined) return
      await Promise.all(live.consumers.map((c) => c.channel.cancel(c.tag).catch(() => undefined)))
      if (state.inFlight > 0)
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, settings.drainTimeoutMs ?? 30_000)
          state.drained.push(() => {
            clearTimeout(timer)
            resolve()
          })
        })
      for (const c of live.consumers)
        try {
          c.acks.flush()
        } catch {
          // The channel is gone: the broker redelivers what was not acknowledged.
        }
      await live.connection.close().catch(() => undefined)
    }
    const stop = Effect.suspend(() => {
      state.stopping = true
      return Effect.andThen(
        Fiber.interrupt(supervisor),
        Effect.promise(() => {
          stopped ??= stopNow()
          return stopped
        }),
      )
    })
    yield* Effect.addFinalizer(() => stop)

    return AmqpIngress.of({
      status: () => ({
        connected: state.live !== undefined,
        consumers: state.live?.consumers.length ?? 0,
        inFlight: state.inFlight,
        handled: state.handled,
        refused: state.refused,
        reconnects: Math.max(0, state.sessions - 1),
        lastError: state.lastError,
      }),
      stop,
    })
  })

/** The AMQP ingress as a Layer over an Engine; stops gracefully when its scope closes. */
export const layer = (
  settings: AmqpIngressSettings,
): Layer.Layer<AmqpIngress, AmqpIngressError | Topology.TopologyError, Engine> =>
  Layer.effect(AmqpIngress, make(settings))
