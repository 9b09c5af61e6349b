/**
 * The AMQP transport against a real RabbitMQ: the conformance suite over the
 * memory stores (and over MariaDB when it answers), then what only AMQP has,
 * checked with plain amqplib and no BEDS client code. Everything declared
 * here lives under a prefix unique to this run and is deleted afterwards.
 */
import { execFileSync } from "node:child_process"
import { randomUUID } from "node:crypto"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as amqp from "amqplib"
import { Context, Effect, Exit, Layer, Scope } from "effect"
import { accounts } from "../../depots/accounts.ts"
import * as Topology from "../../src/broker/topology.ts"
import * as AmqpClient from "../../src/client/amqp.ts"
import * as MariaDbDepot from "../../src/depot/mariadb.ts"
import * as MemoryDepot from "../../src/depot/memory.ts"
import { DepotStore, type DepotStoreShape } from "../../src/depot/store.ts"
import * as MariaDb from "../../src/mariadb/client.ts"
import * as MariaDbModels from "../../src/readmodel/mariadb.ts"
import * as MemoryModels from "../../src/readmodel/memory.ts"
import { ReadModelStore, type ReadModelStoreShape } from "../../src/readmodel/store.ts"
import * as EngineModule from "../../src/runtime/engine.ts"
import { Engine, type EngineShape } from "../../src/runtime/engine.ts"
import * as Ingress from "../../src/transport/amqp.ts"
import type { Reply, ReplyOk } from "../../src/transport/protocol.ts"
import { dropDatabase, isCI, mariaDbAvailable, mariaDbSettings, rabbitAvailable } from "../support/services.ts"
import {
  CONFORMANCE_MAX_BODY,
  conformanceDeclarations,
  conformanceOptions,
  type TransportHarness,
  transportConformance,
} from "./conformance.ts"

const available = await rabbitAvailable()
const mariaDb = available && (await mariaDbAvailable())
const URL = `amqp://guest:guest@127.0.0.1:${Number(process.env.BEDS_TEST_AMQP_PORT ?? 5672)}`
const RUN = `beds_t${process.pid}_${randomUUID().slice(0, 6)}`

const ingressSettings = (
  prefix: string,
  extra: Partial<Ingress.AmqpIngressSettings> = {},
): Ingress.AmqpIngressSettings => ({
  url: URL,
  prefetch: 500,
  queueType: "classic",
  heartbeatS: 10,
  prefix,
  reconnect: { initialMs: 50, maxMs: 1000 },
  drainTimeoutMs: 5000,
  connectionName: `beds-ingress-${prefix}`,
  ...extra,
})

const build = <A, E>(layer: Layer.Layer<A, E>, scope: Scope.Scope) =>
  Effect.runPromise(Layer.buildWithScope(layer, scope))

/** An engine over given stores and an AMQP ingress in front of it; `wrap` may intercept submits. */
const startEngine = async (
  prefix: string,
  stores: { readonly depot: DepotStoreShape; readonly models: ReadModelStoreShape },
  wrap: (e: EngineShape) => EngineShape = (e) => e,
) => {
  const declarations = await Effect.runPromise(conformanceDeclarations())
  const engineScope = await Effect.runPromise(Scope.make())
  const engineCtx = await build(
    EngineModule.layer(declarations, conformanceOptions).pipe(
      Layer.provide(
        Layer.mergeAll(Layer.succeed(DepotStore, stores.depot), Layer.succeed(ReadModelStore, stores.models)),
      ),
    ),
    engineScope,
  )
  const engine = Context.get(engineCtx, Engine)
  const served = wrap(engine)
  const startIngress = async (extra: Partial<Ingress.AmqpIngressSettings> = {}) => {
    const scope = await Effect.runPromise(Scope.make())
    const ctx = await build(
      Ingress.layer(ingressSettings(prefix, extra)).pipe(Layer.provide(Layer.succeed(Engine, served))),
      scope,
    )
    return {
      ingress: Context.get(ctx, Ingress.AmqpIngress),
      close: () => Effect.runPromise(Scope.close(scope, Exit.void)),
    }
  }
  return {
    engine,
    startIngress,
    close: () => Effect.runPromise(Scope.close(engineScope, Exit.void)),
  }
}

const harness = async (
  prefix: string,
  stores: { readonly depot: DepotStoreShape; readonly models: ReadModelStoreShape },
  cleanup: () => Promise<void> = async () => undefined,
  settings: Partial<Ingress.AmqpIngressSettings> = {},
): Promise<TransportHarness> => {
  const running = await startEngine(prefix, stores)
  const ingress = await running.startIngress(settings)
  const client = await AmqpClient.connect(URL, { prefix, timeoutMs: 15_000 })
  return {
    client: AmqpClient.fromClient(client),
    engine: running.engine,
    depot: stores.depot,
    models: stores.models,
    close: async () => {
      await client.close()
      await ingress.close()
      await running.close()
      await Topology.remove(URL, [accounts], { prefix, deadLetters: true })
      await cleanup()
    },
  }
}

describe.runIf(available)("AMQP transport", () => {
  transportConformance("AMQP over the memory stores", async () =>
    harness(`${RUN}_mem`, { depot: MemoryDepot.make(), models: await Effect.runPromise(MemoryModels.make) }),
  )

  transportConformance("AMQP over the memory stores, quorum queues", async () =>
    harness(
      `${RUN}_quorum`,
      { depot: MemoryDepot.make(), models: await Effect.runPromise(MemoryModels.make) },
      async () => undefined,
      { queueType: "quorum", prefetch: 1000 },
    ),
  )

  describe.runIf(mariaDb)("over MariaDB", () => {
    const settings = { ...mariaDbSettings("amqp"), pool: 8 }
    transportConformance("AMQP over the MariaDB stores", async () => {
      const scope = await Effect.runPromise(Scope.make())
      const ctx = await build(
        Layer.mergeAll(MariaDbDepot.layer, MariaDbModels.layer).pipe(Layer.provide(MariaDb.layer(settings))),
        scope,
      )
      return harness(
        `${RUN}_maria`,
        { depot: Context.get(ctx, DepotStore), models: Context.get(ctx, ReadModelStore) },
        async () => {
          await Effect.runPromise(Scope.close(scope, Exit.void))
          await dropDatabase(settings)
        },
      )
    })
  })

  describe("start-up", () => {
    it("fails with a message that says what to do when RabbitMQ cannot be reached", async () => {
      const declarations = await Effect.runPromise(conformanceDeclarations())
      const exit = await Effect.runPromiseExit(
        Effect.scoped(
          Layer.build(
            Ingress.layer({ ...ingressSettings(`${RUN}_down`), url: "amqp://guest:guest@127.0.0.1:1" }).pipe(
              Layer.provide(
                EngineModule.layer(declarations).pipe(
                  Layer.provide(
                    Layer.mergeAll(
                      Layer.succeed(DepotStore, MemoryDepot.make()),
                      Layer.effect(ReadModelStore, MemoryModels.make),
                    ),
                  ),
                ),
              ),
            ),
          ),
        ),
      )
      expect(Exit.isFailure(exit)).toBe(true)
      const text = JSON.stringify(exit)
      expect(text).toContain("UNREACHABLE")
      expect(text).toContain("rabbitmq-server")
    })
  })

  describe("the client over AMQP", () => {
    const prefix = `${RUN}_client`
    const n = Topology.names(prefix)
    let raw: amqp.ChannelModel
    let client: AmqpClient.AmqpClient
    beforeAll(async () => {
      raw = await amqp.connect(URL, { noDelay: true })
      const ch = await raw.createChannel()
      // An exchange nobody bound a queue to, and one whose queue nobody consumes.
      await ch.assertExchange(n.exchange("unbound"), "x-consistent-hash", { durable: false, autoDelete: false })
      await ch.assertExchange(n.exchange("idle"), "x-consistent-hash", { durable: false, autoDelete: false })
      await ch.assertQueue(n.queue("idle", 0), { durable: false })
      await ch.bindQueue(n.queue("idle", 0), n.exchange("idle"), "1")
      await ch.close()
      client = await AmqpClient.connect(URL, { prefix })
    })
    afterAll(async () => {
      await client?.close()
      const ch = await raw.createChannel()
      await ch.deleteQueue(n.queue("idle", 0))
      await ch.deleteExchange(n.exchange("idle"))
      await ch.deleteExchange(n.exchange("unbound"))
      await raw.close()
    })

    it("turns an unknown depot exchange into UNKNOWN_DEPOT without losing the connection", async () => {
      await expect(client.publish("no_such_depot", "Opened", "k", {})).rejects.toMatchObject({
        _tag: "PublishRejected",
        code: "UNKNOWN_DEPOT",
      })
      await expect(client.publish("no_such_depot", "Opened", "k", {}, { ack: "none" })).rejects.toMatchObject({
        code: "UNKNOWN_DEPOT",
      })
      // The connection survived: the idle depot still times out rather than failing as unavailable.
      await expect(client.publish("idle", "Opened", "k", {}, { timeoutMs: 200 })).rejects.toMatchObject({
        _tag: "PublishFailed",
        code: "TIMEOUT",
      })
    })

    it("turns an unroutable command (no partition queues) into UNKNOWN_DEPOT, at every ack level", async () => {
      await expect(client.publish("unbound", "Opened", "k", {})).rejects.toMatchObject({ code: "UNKNOWN_DEPOT" })
      await expect(client.publish("unbound", "Opened", "k", {}, { ack: "none" })).rejects.toMatchObject({
        code: "UNKNOWN_DEPOT",
      })
    })

    it("refuses a payload that cannot be JSON before publishing", async () => {
      await expect(client.publish("idle", "Opened", "k", { n: 1n })).rejects.toMatchObject({ code: "BAD_JSON" })
    })

    it("publishes to a depot in call order, before, during and after the depot's first check", async () => {
      const ch = await raw.createChannel()
      await ch.purgeQueue(n.queue("idle", 0))
      const fresh = await AmqpClient.connect(URL, { prefix })
      try {
        const sent: Array<Promise<unknown>> = []
        const send = (i: number) => sent.push(fresh.publish("idle", "Opened", "k", { i }, { ack: "none" }))
        // The first publishes wait for the check, later ones go out at once; calls made in
        // between, at every kind of turn, must not overtake those still waiting.
        for (let i = 0; i < 100; i++) {
          send(i)
          if (i % 7 === 3) await Promise.resolve()
          if (i % 11 === 5) await new Promise((r) => setImmediate(r))
          if (i % 13 === 8) await new Promise((r) => setTimeout(r, 1))
        }
        await Promise.all(sent)
        const order: Array<number> = []
        for (let m = await ch.get(n.queue("idle", 0), { noAck: true }); m !== false; ) {
          order.push((JSON.parse(m.content.toString()) as { i: number }).i)
          m = await ch.get(n.queue("idle", 0), { noAck: true })
        }
        expect(order).toEqual(Array.from({ length: 100 }, (_, i) => i))
      } finally {
        await fresh.close()
        await ch.close()
      }
    })

    it("rejects, never throws, whatever it is given", async () => {
      const wrong = client.publish("idle", "Opened", 5 as unknown as string, {})
      await expect(wrong).rejects.toThrow()
    })

    it("fails with UNAVAILABLE once closed", async () => {
      const other = await AmqpClient.connect(URL, { prefix })
      await other.close()
      await expect(other.publish("idle", "Opened", "k", {})).rejects.toMatchObject({ code: "UNAVAILABLE" })
    })
  })

  describe("plain AMQP (no BEDS client code)", () => {
    const prefix = `${RUN}_raw`
    const n = Topology.names(prefix)
    const exchange = n.exchange(accounts.name)
    const depotStore = MemoryDepot.make()

    // Commands whose first submit appends, then hangs without answering, as
    // an engine that crashed between append and ack would.
    const stallOnce = new Set<string>()
    const stalled = new Map<string, Reply>()
    const release: Array<() => void> = []
    const wrap = (e: EngineShape): EngineShape => ({
      ...e,
      submit: (command) =>
        command.messageId !== undefined && stallOnce.delete(command.messageId)
          ? Effect.flatMap(e.submit(command), (reply) =>
              Effect.callback<Reply>((resume) => {
                stalled.set(command.messageId as string, reply)
                release.push(() => resume(Effect.succeed(reply)))
              }),
            )
          : e.submit(command),
      submitWith: (command, done) => {
        if (command.messageId === undefined || !stallOnce.delete(command.messageId)) return e.submitWith(command, done)
        return e.submitWith(command, (reply) => {
          stalled.set(command.messageId as string, reply)
          release.push(() => done(reply))
        })
      },
    })

    let running: Awaited<ReturnType<typeof startEngine>>
    let ingress: Awaited<ReturnType<Awaited<ReturnType<typeof startEngine>>["startIngress"]>>
    let conn: amqp.ChannelModel
    let ch: amqp.Channel
    const waiting = new Map<string, (m: amqp.ConsumeMessage) => void>()
    const dead: Array<amqp.ConsumeMessage> = []

    beforeAll(async () => {
      running = await startEngine(
        prefix,
        { depot: depotStore, models: await Effect.runPromise(MemoryModels.make) },
        wrap,
      )
      ingress = await running.startIngress({ drainTimeoutMs: 300 })
      conn = await amqp.connect(URL, { noDelay: true })
      ch = await conn.createChannel()
      await ch.consume(
        "amq.rabbitmq.reply-to",
        (m) => {
          if (m === null) return
          const f = waiting.get(m.properties.correlationId)
          waiting.delete(m.properties.correlationId)
          f?.(m)
        },
        { noAck: true },
      )
      const deadCh = await conn.createChannel()
      await deadCh.consume(n.dead, (m) => m !== null && dead.push(m), { noAck: true })
    })
    afterAll(async () => {
      for (const f of release) f()
      await conn?.close()
      await ingress?.close()
      await running?.close()
      await Topology.remove(URL, [accounts], { prefix, deadLetters: true })
    })

    /** Publishes with direct reply-to and resolves with the reply message. */
    const rpc = (
      routingKey: string,
      body: string | Buffer,
      properties: amqp.Options.Publish,
      timeoutMs = 10_000,
    ): Promise<{ readonly message: amqp.ConsumeMessage; readonly reply: Reply }> => {
      const correlationId = properties.correlationId ?? randomUUID()
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiting.delete(correlationId)
          reject(new Error(`no reply to ${correlationId} within ${timeoutMs} ms`))
        }, timeoutMs)
        waiting.set(correlationId, (message) => {
          clearTimeout(timer)
          resolve({ message, reply: JSON.parse(message.content.toString()) as Reply })
        })
        ch.publish(exchange, routingKey, typeof body === "string" ? Buffer.from(body) : body, {
          ...properties,
          correlationId,
          replyTo: "amq.rabbitmq.reply-to",
        })
      })
    }

    const until = async (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000) => {
      const deadline = Date.now() + timeoutMs
      while (!(await check())) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
        await new Promise((r) => setTimeout(r, 10))
      }
    }

    const key = (what: string) => `${what}-${randomUUID().slice(0, 8)}`

    it("answers a command published with plain AMQP properties", async () => {
      const k = key("plain")
      const correlationId = randomUUID()
      const { message, reply } = await rpc(k, JSON.stringify({ owner: "Ann" }), {
        type: "Opened",
        messageId: randomUUID(),
        correlationId,
        contentType: "application/json",
        headers: { "x-beds-ack": "full" },
      })
      expect(message.properties.correlationId).toBe(correlationId)
      expect(message.properties.contentType).toBe("application/json")
      expect(reply).toMatchObject({ ok: true, ack: "full", depot: accounts.name, version: 1, duplicate: false })
      expect((reply as ReplyOk).applied).toEqual(["balances"])
      // Headers as other clients send them: text, and no ack header at all.
      const second = await rpc(k, Buffer.from('{"amount":42}'), {
        type: "Deposited",
        messageId: randomUUID(),
        headers: { "x-beds-expect": "1" },
      })
      expect(second.reply).toMatchObject({ ok: true, ack: "append", version: 2 })
    })

    it("does not reply at ack level none, and appends", async () => {
      const k = key("none")
      const messageId = randomUUID()
      await expect(
        rpc(k, '{"owner":"Nia"}', { type: "Opened", messageId, headers: { "x-beds-ack": "none" } }, 400),
      ).rejects.toThrow(/no reply/)
      expect(await Effect.runPromise(depotStore.byMessageId(accounts.name, messageId))).toMatchObject({ key: k })
    })

    const badInputs: ReadonlyArray<{
      readonly name: string
      readonly code: string
      readonly body?: string
      readonly properties: amqp.Options.Publish
    }> = [
      { name: "bad JSON", code: "BAD_JSON", body: '{"amount": 5', properties: { type: "Deposited", messageId: "m" } },
      { name: "a missing message_id", code: "MISSING_MESSAGE_ID", properties: { type: "Deposited" } },
      {
        name: "an oversized body",
        code: "BODY_TOO_LARGE",
        body: JSON.stringify({ amount: 5, pad: "x".repeat(CONFORMANCE_MAX_BODY) }),
        properties: { type: "Deposited", messageId: "m" },
      },
      { name: "an unknown type", code: "UNKNOWN_TYPE", properties: { type: "Stolen", messageId: "m" } },
      { name: "no type", code: "UNKNOWN_TYPE", properties: { messageId: "m" } },
      {
        name: "a bad x-beds-ack",
        code: "BAD_ACK_LEVEL",
        properties: { type: "Deposited", messageId: "m", headers: { "x-beds-ack": "sometimes" } },
      },
      {
        name: "a malformed x-beds-parent",
        code: "BAD_PARENT",
        properties: { type: "Deposited", messageId: "m", headers: { "x-beds-parent": "not/a:lineage id" } },
      },
      {
        name: "a bad x-beds-expect",
        code: "BAD_EXPECT",
        properties: { type: "Deposited", messageId: "m", headers: { "x-beds-expect": "two" } },
      },
      {
        name: "a content_type that is not JSON",
        code: "BAD_JSON",
        properties: { type: "Deposited", messageId: "m", contentType: "text/plain" },
      },
      {
        name: "a payload that fails the Schema",
        code: "SCHEMA_MISMATCH",
        body: '{"amount":-1}',
        properties: { type: "Deposited", messageId: "m" },
      },
    ]

    it.each(badInputs)("replies to $name with $code and dead-letters it with the reason", async (c) => {
      const k = key("bad")
      const messageId = c.properties.messageId === undefined ? undefined : randomUUID()
      const correlationId = randomUUID()
      const body = c.body ?? '{"amount":5}'
      const properties: amqp.Options.Publish = {
        ...c.properties,
        ...(messageId === undefined ? {} : { messageId }),
        correlationId,
        headers: { ...c.properties.headers, "x-test-origin": "kept" },
      }
      const { reply } = await rpc(k, body, properties)
      expect(reply).toMatchObject({ ok: false, error: { code: c.code } })
      if (reply.ok) throw new Error("unreachable")
      expect(reply.error.message.length).toBeGreaterThan(10)
      // The dead letter is confirmed before the reply is sent, so it is there already.
      await until("the dead letter", () => dead.some((m) => m.properties.correlationId === correlationId), 2000)
      const entry = dead.find((m) => m.properties.correlationId === correlationId) as amqp.ConsumeMessage
      const h = entry.properties.headers ?? {}
      expect(h["x-beds-error-code"]).toBe(c.code)
      expect(h["x-beds-error-message"]).toBe(reply.error.message)
      expect(h["x-beds-depot"]).toBe(accounts.name)
      expect(Number.isNaN(Date.parse(String(h["x-beds-failed-at"])))).toBe(false)
      expect(h["x-beds-routing-key"]).toBe(k)
      expect(h["x-test-origin"]).toBe("kept")
      for (const [name, value] of Object.entries(c.properties.headers ?? {})) expect(h[name]).toBe(value)
      expect(entry.content.toString()).toBe(body)
      expect(entry.properties.type).toBe(c.properties.type)
      expect(entry.properties.messageId).toBe(messageId)
      expect(entry.properties.deliveryMode).toBe(2)
      if (messageId !== undefined)
        expect(await Effect.runPromise(depotStore.byMessageId(accounts.name, messageId))).toBeUndefined()
    })

    it("at ack level none, still dead-letters a refused command and answers it when there is a reply_to", async () => {
      const correlationId = randomUUID()
      const { reply } = await rpc(key("none-bad"), "nope", {
        type: "Deposited",
        messageId: randomUUID(),
        correlationId,
        headers: { "x-beds-ack": "none" },
      })
      expect(reply).toMatchObject({ ok: false, error: { code: "BAD_JSON" } })
      expect(dead.some((m) => m.properties.correlationId === correlationId)).toBe(true)
    })

    it("redelivers a command appended but not acked when the ingress stops, and answers it as a duplicate with the same offset", async () => {
      const k = key("redeliver")
      const messageId = randomUUID()
      stallOnce.add(messageId)
      const answer = rpc(k, '{"owner":"Rex"}', { type: "Opened", messageId })
      await until("the first submit", () => stalled.has(messageId))
      const first = stalled.get(messageId) as ReplyOk
      expect(first).toMatchObject({ ok: true, duplicate: false })
      // Stopping waits for in-flight commands at most drainTimeoutMs, then closes with the delivery unacked.
      await Effect.runPromise(ingress.ingress.stop)
      await ingress.close()
      ingress = await running.startIngress({ drainTimeoutMs: 300 })
      const { reply } = await answer
      for (const f of release.splice(0)) f()
      expect(reply).toMatchObject({ ok: true, duplicate: true, id: first.id, offset: first.offset, version: 1 })
      const events = (await Effect.runPromise(depotStore.read(accounts.name, first.partition, 0, 1_000_000))).filter(
        (e) => e.key === k,
      )
      expect(events.length).toBe(1)
    })

    const rabbitmqctl = (() => {
      try {
        execFileSync("rabbitmqctl", ["list_connections", "name"], { stdio: "pipe", timeout: 15_000 })
        return true
      } catch {
        if (!isCI)
          console.warn("[skip] rabbitmqctl is not usable here: the broker-side connection-loss test is skipped.")
        return false
      }
    })()

    /** Has the broker close a connection, found by its connection_name, as a network failure would. */
    const closeConnection = (connectionName: string) => {
      const listing = execFileSync("rabbitmqctl", ["list_connections", "pid", "client_properties", "-q"], {
        encoding: "utf8",
        timeout: 15_000,
      })
      const line = listing.split("\n").find((l) => l.includes(`"${connectionName}"`))
      if (line === undefined) throw new Error(`no connection named ${connectionName}`)
      const pid = line.split("\t")[0] as string
      execFileSync("rabbitmqctl", ["close_connection", pid, "test: simulated connection loss"], { timeout: 15_000 })
    }

    it.runIf(rabbitmqctl || isCI)(
      "reconnects after the broker closes its connection, and answers the redelivered command as a duplicate",
      async () => {
        const k = key("reconnect")
        const messageId = randomUUID()
        stallOnce.add(messageId)
        const answer = rpc(k, '{"owner":"Rae"}', { type: "Opened", messageId }, 20_000)
        await until("the first submit", () => stalled.has(messageId))
        const first = stalled.get(messageId) as ReplyOk
        const before = ingress.ingress.status().reconnects
        closeConnection(`beds-ingress-${prefix}`)
        const { reply } = await answer
        // The stalled first submit may finish now: its ack goes nowhere, as after a real crash.
        for (const f of release.splice(0)) f()
        expect(reply).toMatchObject({ ok: true, duplicate: true, id: first.id, offset: first.offset })
        expect(ingress.ingress.status().reconnects).toBe(before + 1)
        expect(ingress.ingress.status().connected).toBe(true)
      },
    )

    it.runIf(rabbitmqctl || isCI)(
      "the client fails what waited on a lost connection with UNAVAILABLE, reconnects, and a retry with the same id is a duplicate",
      async () => {
        const client = await AmqpClient.connect(URL, { prefix, connectionName: `beds-client-${prefix}` })
        try {
          const k = key("client-retry")
          const id = randomUUID()
          stallOnce.add(id)
          const first = client.publish(accounts.name, "Opened", k, { owner: "Uma" }, { id })
          await until("the first submit", () => stalled.has(id))
          closeConnection(`beds-client-${prefix}`)
          await expect(first).rejects.toMatchObject({ _tag: "PublishFailed", code: "UNAVAILABLE", messageId: id })
          for (const f of release.splice(0)) f()
          const retried = (await client.publish(accounts.name, "Opened", k, { owner: "Uma" }, { id })) as ReplyOk
          expect(retried).toMatchObject({ duplicate: true, id: (stalled.get(id) as ReplyOk).id })
        } finally {
          await client.close()
        }
      },
    )

    it("keeps answering good commands on a queue flooded with bad input", async () => {
      const k = key("flood")
      const flood = randomUUID()
      const bad = 2000
      const good = 40
      const started = Date.now()
      const replies: Array<Promise<{ readonly reply: Reply }>> = []
      await rpc(k, '{"owner":"Flo"}', { type: "Opened", messageId: randomUUID() })
      for (let i = 0; i < bad; i++) {
        ch.publish(exchange, k, Buffer.from("{garbage"), {
          type: "Deposited",
          messageId: randomUUID(),
          headers: { "x-test-flood": flood },
        })
        if (i % (bad / good) === 0)
          replies.push(
            rpc(k, JSON.stringify({ amount: i + 1 }), { type: "Deposited", messageId: randomUUID() }, 30_000),
          )
      }
      const answered = await Promise.all(replies)
      const goodMs = Date.now() - started
      expect(answered.every((a) => a.reply.ok)).toBe(true)
      expect(answered.map((a) => (a.reply as ReplyOk).version)).toEqual(Array.from({ length: good }, (_, i) => i + 2))
      await until(
        "every flooded command in the dead-letter queue",
        () => dead.filter((m) => m.properties.headers?.["x-test-flood"] === flood).length === bad,
        30_000,
      )
      const allMs = Date.now() - started
      await until("the ingress to drain", () => ingress.ingress.status().inFlight === 0)
      console.info(
        `[measure] flood: ${good} good commands answered within ${goodMs} ms among ${bad} bad ones; all ${bad} dead-lettered after ${allMs} ms (${Math.round((bad * 1000) / allMs)} refusals/s)`,
      )
    })
  })
})
