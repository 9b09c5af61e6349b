/**
 * The broker topology of the write path, declared idempotently at start-up
 * (and again after every reconnect, so a broker that lost its definitions
 * gets them back):
 *
 *   exchange  beds.cmd.<depot>      x-consistent-hash, durable; routes by routing key (the entity key)
 *   queues    beds.cmd.<depot>.<q>  q = 0..Q-1 (Q = the depot's partition count), durable,
 *                                   single active consumer, classic or quorum, dead-lettering to beds.dlx
 *   exchange  beds.dlx              fanout, durable
 *   queue     beds.dead             durable: refused commands, original body and headers plus
 *                                   x-beds-error-code, x-beds-error-message, x-beds-depot, x-beds-failed-at
 *
 * Partitions and queues are different things. The engine owns key → partition
 * (`partitionOf` in src/depot/depot.ts, the same on every transport); the
 * queues are only this transport's shards, and RabbitMQ's hash ring decides
 * which queue a key lands in. What matters for order is that a key always
 * lands in the same queue, that a queue has one active consumer, and that the
 * consumer hands its deliveries to `engine.submit` in delivery order without
 * waiting for earlier ones to finish: the engine validates synchronously and
 * its per-partition writer queues keep call order, so per-key order holds from
 * the queue to the depot while many commands of a queue are in flight.
 *
 * The `prefix` ("beds") names everything; the wire contract uses the default.
 * Another prefix isolates installations (or tests) sharing one vhost.
 */
import * as amqp from "amqplib"
import { Data } from "effect"

/** The names the write path uses on the broker. */
export interface Names {
  readonly prefix: string
  /** `<prefix>.cmd.<depot>`: where clients publish. */
  readonly exchange: (depot: string) => string
  /** `<prefix>.cmd.<depot>.<q>`: one of the depot's partition queues. */
  readonly queue: (depot: string, q: number) => string
  /** `<prefix>.dlx`: where refused commands are published. */
  readonly dlx: string
  /** `<prefix>.dead`: where refused commands stay for a person to look at. */
  readonly dead: string
}

export const DEFAULT_PREFIX = "beds"

const PREFIX_RE = /^[A-Za-z0-9_.-]{1,100}$/

/** The names under a prefix (default `beds`, the wire contract's). */
export const names = (prefix: string = DEFAULT_PREFIX): Names => {
  if (!PREFIX_RE.test(prefix))
    throw new Error(`Broker name prefix "${prefix}" is invalid: use 1-100 characters of A-Z, a-z, 0-9, _, . and -.`)
  return {
    prefix,
    exchange: (depot) => `${prefix}.cmd.${depot}`,
    queue: (depot, q) => `${prefix}.cmd.${depot}.${q}`,
    dlx: `${prefix}.dlx`,
    dead: `${prefix}.dead`,
  }
}

/** The command headers of the wire contract. */
export const CommandHeaders = {
  ack: "x-beds-ack",
  parent: "x-beds-parent",
  expect: "x-beds-expect",
} as const

/** Headers a dead-lettered command carries besides its own. */
export const DeadLetterHeaders = {
  code: "x-beds-error-code",
  message: "x-beds-error-message",
  details: "x-beds-error-details",
  depot: "x-beds-depot",
  failedAt: "x-beds-failed-at",
  queue: "x-beds-queue",
  exchange: "x-beds-exchange",
  routingKey: "x-beds-routing-key",
} as const

export type QueueType = "classic" | "quorum"

/** What a depot needs on the broker: its name and partition count. */
export interface DepotShape {
  readonly name: string
  readonly partitions: number
}

export interface TopologyOptions {
  readonly queueType: QueueType
  readonly prefix?: string | undefined
}

/** Declaring the topology failed; `message` says what to do about it. */
export class TopologyError extends Data.TaggedError("TopologyError")<{
  readonly code: "PLUGIN_MISSING" | "MISMATCH" | "UNREACHABLE" | "LOGIN_REFUSED" | "FAILED"
  readonly message: string
  readonly cause?: unknown
}> {}

export const PLUGIN_HINT =
  "RabbitMQ's consistent-hash exchange plugin is not enabled, and BEDS routes commands through it. " +
  "Enable it on every broker node with `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange` " +
  "(no broker restart needed), then start BEDS again."

const queueArguments = (n: Names, type: QueueType): Record<string, unknown> => ({
  "x-single-active-consumer": true,
  "x-dead-letter-exchange": n.dlx,
  // Classic is the broker's default; naming it would make queues declared by
  // older brokers or tools "inequivalent".
  ...(type === "quorum" ? { "x-queue-type": "quorum" } : {}),
})

const deadArguments = (type: QueueType): Record<string, unknown> =>
  type === "quorum" ? { "x-queue-type": "quorum" } : {}

/** Where a URL points, for messages: host, port and vhost, never the credentials. */
export const addressOf = (url: string): string => {
  try {
    const u = new URL(url)
    const vhost = decodeURIComponent(u.pathname.slice(1))
    return `${u.hostname}:${u.port || (u.protocol === "amqps:" ? "5671" : "5672")}${vhost === "" ? "" : ` vhost "${vhost}"`}`
  } catch {
    return "the configured amqp.url"
  }
}

/** Turns a broker refusal during declaration into a TopologyError that says what to do. */
export const classify = (what: string, cause: unknown, url?: string): TopologyError => {
  const e = cause as { code?: unknown; message?: unknown }
  const text = typeof e?.message === "string" ? e.message : String(cause)
  const at = url === undefined ? "RabbitMQ" : `RabbitMQ at ${addressOf(url)}`
  // A wrong password and a vhost the user may not use both end the handshake; neither is fixed by waiting.
  // (amqplib reports a vhost the broker will not open only as an unexpected close of the handshake.)
  if (/ACCESS.REFUSED|\b403\b|NOT_ALLOWED|Expected ConnectionOpenOk/.test(text))
    return new TopologyError({
      code: "LOGIN_REFUSED",
      message: `${what}: ${at} refused the login (${text}). Check the user, password and vhost in amqp.url (or BEDS__AMQP__URL), and that the user has permissions on the vhost (rabbitmqctl list_permissions).`,
      cause,
    })
  if (/unknown exchange type '?x-consistent-hash/i.test(text) || (e?.code === 503 && /exchange type/i.test(text)))
    return new TopologyError({ code: "PLUGIN_MISSING", message: PLUGIN_HINT, cause })
  if (e?.code === 406 || /PRECONDITION_FAILED|inequivalent arg/i.test(text))
    return new TopologyError({
      code: "MISMATCH",
      message:
        `${what}: the broker already has it with other settings (${text}). ` +
        "This happens when amqp.queue_type changed or something else declared the name. " +
        "Keep the old settings, or drain and delete the old queue/exchange (rabbitmqctl delete_queue <name>) and start again.",
      cause,
    })
  if (/ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|ETIMEDOUT|socket|connect/i.test(text))
    return new TopologyError({
      code: "UNREACHABLE",
      message: `${what}: cannot reach ${at} (${text}). Is it running? Start it with \`rabbitmq-server -detached\`, and check amqp.url.`,
      cause,
    })
  return new TopologyError({ code: "FAILED", message: `${what} failed: ${text}`, cause })
}

/**
 * Runs declarations on a connection of their own: a missing exchange type is
 * a connection-level error in AMQP (503), and must not take a working
 * connection down with it.
 */
const withConnection = async <A>(url: string, what: string, f: (channel: amqp.Channel) => Promise<A>): Promise<A> => {
  let connection: amqp.ChannelModel
  try {
    connection = await amqp.connect(url, { noDelay: true })
  } catch (e) {
    throw classify(what, e, url)
  }
  // The broker's reason for closing arrives as a connection event; the
  // pending operation only learns that the channel ended.
  let closedBy: unknown
  connection.on("error", (e: unknown) => {
    closedBy = e
  })
  try {
    const channel = await connection.createChannel()
    channel.on("error", (e: unknown) => {
      closedBy ??= e
    })
    const result = await f(channel)
    await channel.close().catch(() => undefined)
    return result
  } catch (e) {
    throw e instanceof TopologyError ? e : classify(what, closedBy ?? e, url)
  } finally {
    await connection.close().catch(() => undefined)
  }
}

/**
 * Declares, idempotently, the dead-letter exchange and queue and, per depot,
 * its exchange and partition queues. Fails with PLUGIN_MISSING when the
 * consistent-hash exchange plugin is not enabled.
 */
export const declare = (url: string, depots: ReadonlyArray<DepotShape>, options: TopologyOptions): Promise<void> => {
  const n = names(options.prefix)
  return withConnection(url, "Declaring the BEDS broker topology", async (ch) => {
    await ch.assertExchange(n.dlx, "fanout", { durable: true })
    await ch.assertQueue(n.dead, { durable: true, arguments: deadArguments(options.queueType) })
    await ch.bindQueue(n.dead, n.dlx, "")
    for (const depot of depots) {
      const exchange = n.exchange(depot.name)
      await ch.assertExchange(exchange, "x-consistent-hash", { durable: true })
      for (let q = 0; q < depot.partitions; q++) {
        const queue = n.queue(depot.name, q)
        await ch.assertQueue(queue, { durable: true, arguments: queueArguments(n, options.queueType) })
        // With the consistent-hash exchange the binding key is the queue's weight on the ring.
        await ch.bindQueue(queue, exchange, "1")
      }
    }
  })
}

/**
 * Deletes what `declare` made for these depots, and with `deadLetters` also
 * the dead-letter exchange and queue. For tests and decommissioning:
 * messages still in the queues are lost.
 */
export const remove = (
  url: string,
  depots: ReadonlyArray<DepotShape>,
  options: { readonly prefix?: string | undefined; readonly deadLetters?: boolean },
): Promise<void> => {
  const n = names(options.prefix)
  return withConnection(url, "Removing BEDS broker topology", async (ch) => {
    for (const depot of depots) {
      for (let q = 0; q < depot.partitions; q++) await ch.deleteQueue(n.queue(depot.name, q))
      await ch.deleteExchange(n.exchange(depot.name))
    }
    if (options.deadLetters === true) {
      await ch.deleteQueue(n.dead)
      await ch.deleteExchange(n.dlx)
    }
  })
}

/** A partition queue as the broker sees it, or `missing` when it was never declared. */
export type QueueState =
  | { readonly queue: string; readonly waiting: number; readonly consumers: number }
  | { readonly queue: string; readonly missing: true }

/**
 * How many commands wait in each partition queue of these depots, and how
 * many consumers take them (0: no engine is serving that queue). Reads
 * only: it declares nothing, so it is safe beside a running engine.
 */
export const inspect = async (
  url: string,
  depots: ReadonlyArray<DepotShape>,
  options: { readonly prefix?: string | undefined },
): Promise<ReadonlyArray<{ readonly depot: string; readonly queues: ReadonlyArray<QueueState> }>> => {
  const n = names(options.prefix)
  const what = "Reading the partition queues"
  let connection: amqp.ChannelModel
  try {
    connection = await amqp.connect(url, { noDelay: true })
  } catch (e) {
    throw classify(what, e, url)
  }
  connection.on("error", () => undefined)
  try {
    const states = []
    for (const depot of depots) {
      const queues: Array<QueueState> = []
      for (let q = 0; q < depot.partitions; q++) {
        const queue = n.queue(depot.name, q)
        // A queue the broker lacks closes the channel it was asked on (404): one channel per queue.
        const channel = await connection.createChannel()
        channel.on("error", () => undefined)
        try {
          const ok = await channel.checkQueue(queue)
          queues.push({ queue, waiting: ok.messageCount, consumers: ok.consumerCount })
          await channel.close().catch(() => undefined)
        } catch (e) {
          if ((e as { code?: unknown }).code !== 404) throw classify(what, e, url)
          queues.push({ queue, missing: true })
        }
      }
      states.push({ depot: depot.name, queues })
    }
    return states
  } finally {
    await connection.close().catch(() => undefined)
  }
}
