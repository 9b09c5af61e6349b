/**
 * The AMQP engine process under real faults: SIGKILL between append and
 * reply, and SIGTERM under load. RabbitMQ keeps what was not acknowledged,
 * the restarted engine dedupes by message_id, so every command a client
 * sent ends up in the depot exactly once, and every reply stays true.
 */
import { randomUUID } from "node:crypto"
import { Effect } from "effect"
import * as mariadb from "mariadb"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import * as Broker from "../../src/broker/topology.ts"
import * as AmqpClient from "../../src/client/amqp.ts"
import { type EngineProcess, kill, startEngine } from "../support/engine-process.ts"
import { dropDatabase, mariaDbAvailable, mariaDbSettings, rabbitAvailable } from "../support/services.ts"

const available = (await rabbitAvailable()) && (await mariaDbAvailable())
const URL = "amqp://guest:guest@127.0.0.1:5672"
const settings = mariaDbSettings("amqpcrash")
const prefix = `bedsfault${process.pid}`
const env = {
  BEDS_ENV: "dev",
  BEDS__MARIADB__DATABASE: settings.database,
  BEDS__AMQP__PREFIX: prefix,
}

interface Sent {
  readonly id: string
  reply?: { id: string; offset: number; partition: number }
}

const depotCount = async () => {
  const conn = await mariadb.createConnection({
    host: settings.host,
    port: settings.port,
    user: "root",
    database: settings.database,
  })
  try {
    const rows = (await conn.query("SELECT message_id FROM beds_event WHERE depot = 'accounts'")) as Array<{
      message_id: string
    }>
    return rows.map((r) => r.message_id)
  } finally {
    await conn.end()
  }
}

/** Publishes until stopped; records each reply; failures (the engine died) are expected. */
const load = (client: AmqpClient.AmqpClient, sent: Array<Sent>, inFlight: number) => {
  let stopping = false
  const workers = Array.from({ length: inFlight }, async () => {
    while (!stopping) {
      const s: Sent = { id: randomUUID() }
      sent.push(s)
      const r = await Effect.runPromise(
        Effect.result(
          Effect.tryPromise(() =>
            client.publish(
              "accounts",
              "Deposited",
              `acc-${sent.length % 40}`,
              { amount: 1 },
              { id: s.id, timeoutMs: 20_000 },
            ),
          ),
        ),
      )
      if (r._tag === "Success" && "offset" in r.success)
        s.reply = { id: r.success.id, offset: r.success.offset, partition: r.success.partition }
    }
  })
  return async () => {
    stopping = true
    await Promise.all(workers)
  }
}

/** Waits until the depot holds every sent command (RabbitMQ redelivers what was not acked). */
const eventually = async (expected: number) => {
  let ids: Array<string> = []
  for (let i = 0; i < 300; i++) {
    ids = await depotCount()
    if (ids.length >= expected) break
    await new Promise((r) => setTimeout(r, 100))
  }
  return ids
}

describe.runIf(available)("AMQP engine process under faults", () => {
  let client: AmqpClient.AmqpClient
  beforeAll(async () => {
    await dropDatabase(settings)
    client = await AmqpClient.connect(URL, { prefix, connectionName: "fault test" })
  })
  afterAll(async () => {
    await client?.close()
    await Broker.remove(URL, [accounts, { name: "alerts", partitions: 2 }], { prefix, deadLetters: true }).catch(
      () => undefined,
    )
    await dropDatabase(settings)
  })

  it("SIGKILL between append and reply: after restart every sent command is in the depot once, and a republished one is a duplicate at its position", async () => {
    const sent: Array<Sent> = []
    let engine: EngineProcess = await startEngine(env)
    const stop = load(client, sent, 64)
    await new Promise((r) => setTimeout(r, 800))
    await kill(engine)
    engine = await startEngine(env)
    await new Promise((r) => setTimeout(r, 500))
    await stop()
    const ids = await eventually(sent.length)
    // Commands whose publish failed while the engine was down may never have reached the broker.
    const delivered = new Set(ids)
    expect(ids.length).toBe(delivered.size)
    const replied = sent.filter((s) => s.reply !== undefined)
    expect(replied.length).toBeGreaterThan(50)
    for (const s of replied) expect(delivered.has(s.id)).toBe(true)
    // Every sent command that did not time out on the client side made it.
    const missing = sent.filter((s) => !delivered.has(s.id) && s.reply !== undefined)
    expect(missing).toEqual([])
    for (const s of replied.slice(0, 50)) {
      const again = await client.publish("accounts", "Deposited", "any", { amount: 1 }, { id: s.id })
      expect(again).toMatchObject({ duplicate: true, id: s.reply?.id, offset: s.reply?.offset })
    }
    await kill(engine)
  }, 120_000)

  it("SIGTERM under load: the engine exits 0, every reply it sent is true, nothing is lost or doubled", async () => {
    const before = (await depotCount()).length
    const sent: Array<Sent> = []
    const engine = await startEngine(env)
    const stop = load(client, sent, 64)
    await new Promise((r) => setTimeout(r, 800))
    engine.child.kill("SIGTERM")
    expect(await engine.exited).toBe(0)
    expect(engine.stderr.join("\n")).toContain("stopped cleanly")
    const next = await startEngine(env)
    await new Promise((r) => setTimeout(r, 300))
    await stop()
    const ids = await eventually(before + sent.length)
    expect(ids.length).toBe(new Set(ids).size)
    const delivered = new Set(ids)
    for (const s of sent.filter((x) => x.reply !== undefined)) expect(delivered.has(s.id)).toBe(true)
    await kill(next)
  }, 120_000)
})
