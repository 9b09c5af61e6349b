/**
 * `beds status` beside a running engine on RabbitMQ and MariaDB: head
 * offsets per partition, each topology's stored checkpoint and lag, and
 * topologies whose read models are in memory named as such, not as a stored
 * checkpoint of 0.
 */
import { spawnSync } from "node:child_process"
import { randomUUID } from "node:crypto"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import * as Broker from "../../src/broker/topology.ts"
import * as AmqpClient from "../../src/client/amqp.ts"
import { type EngineProcess, kill, projectRoot, startEngine } from "../support/engine-process.ts"
import { dropDatabase, mariaDbAvailable, mariaDbSettings, rabbitAvailable } from "../support/services.ts"

const available = (await rabbitAvailable()) && (await mariaDbAvailable())
const URL = "amqp://guest:guest@127.0.0.1:5672"
const settings = mariaDbSettings("status")
const prefix = `bedsstatus${process.pid}`
// The dev configuration: depot and REL read models on MariaDB, REC read models in memory.
const env = { BEDS_ENV: "dev", BEDS__MARIADB__DATABASE: settings.database, BEDS__AMQP__PREFIX: prefix }

interface Status {
  readonly depots: ReadonlyArray<{ depot: string; partitions: ReadonlyArray<{ partition: number; head: number }> }>
  readonly topologies: ReadonlyArray<{
    topology: string
    readModels: "stored" | "memory"
    unavailable?: string
    streams: ReadonlyArray<{ depot: string; partition: number; checkpoint: number | null; lag: number | null }>
  }>
  readonly readModels: string
  readonly broker?: {
    address: string
    unavailable?: string
    depots?: ReadonlyArray<{
      depot: string
      queues: ReadonlyArray<{ queue: string; waiting?: number; consumers?: number }>
    }>
  }
}

const status = (args: ReadonlyArray<string>, overrides: Record<string, string> = {}) =>
  spawnSync(
    path.join(projectRoot, "node_modules", "node", "bin", "node"),
    [path.join(projectRoot, "bin", "beds.js"), "--root", projectRoot, "status", ...args],
    { env: { ...process.env, ...env, ...overrides }, encoding: "utf8", timeout: 60_000 },
  )

describe.runIf(available)("beds status", () => {
  let engine: EngineProcess | undefined
  let client: AmqpClient.AmqpClient
  const replies: Array<{ partition: number; offset: number }> = []

  beforeAll(async () => {
    await dropDatabase(settings)
    engine = await startEngine(env)
    client = await AmqpClient.connect(URL, { prefix, connectionName: "status test" })
    // `full` replies once every topology on the depot applied the command: the checkpoints are then stored.
    for (let i = 0; i < 12; i++) {
      const r = await client.publish(
        "accounts",
        "Deposited",
        `acc-${i % 5}`,
        { amount: 10 + i },
        { ack: "full", id: randomUUID() },
      )
      if ("offset" in r) replies.push({ partition: r.partition, offset: r.offset })
    }
  }, 90_000)

  afterAll(async () => {
    await client?.close()
    if (engine !== undefined) await kill(engine)
    await Broker.remove(URL, [accounts, { name: "alerts", partitions: 2 }], { prefix, deadLetters: true }).catch(
      () => undefined,
    )
    await dropDatabase(settings)
  })

  it("--json: heads per partition, stored checkpoints with their lag, memory read models without a checkpoint", () => {
    const r = status(["--json"])
    expect(r.stderr).toBe("")
    expect(r.status).toBe(0)
    const s = JSON.parse(r.stdout) as Status
    const heads = new Map(
      (s.depots.find((d) => d.depot === "accounts")?.partitions ?? []).map((p) => [p.partition, p.head]),
    )
    expect(replies).toHaveLength(12)
    const expected = new Map<number, number>()
    for (const x of replies) expected.set(x.partition, Math.max(expected.get(x.partition) ?? 0, x.offset + 1))
    for (let p = 0; p < accounts.partitions; p++) expect(heads.get(p)).toBe(expected.get(p) ?? 0)

    const balances = s.topologies.find((t) => t.topology === "balances")
    expect(balances).toMatchObject({ readModels: "stored" })
    expect(balances?.unavailable).toBeUndefined()
    expect(balances?.streams).toHaveLength(accounts.partitions)
    for (const stream of balances?.streams ?? [])
      expect(stream).toMatchObject({ checkpoint: heads.get(stream.partition), lag: 0 })

    // The ledger writes a REC template, kept in memory by the dev configuration.
    const ledger = s.topologies.find((t) => t.topology === "ledger")
    expect(ledger).toMatchObject({ readModels: "memory" })
    for (const stream of ledger?.streams ?? []) expect(stream).toMatchObject({ checkpoint: null, lag: null })
    expect(s.readModels).toBe("REL mariadb, REC memory (rebuilt at start)")

    // The ingress's side: every partition queue drained and consumed by the running engine.
    expect(s.broker?.address).toBe("127.0.0.1:5672")
    const queues = s.broker?.depots?.find((d) => d.depot === "accounts")?.queues ?? []
    expect(queues.map((q) => q.queue)).toEqual(
      Array.from({ length: accounts.partitions }, (_, p) => `${prefix}.cmd.accounts.${p}`),
    )
    for (const q of queues) expect(q).toMatchObject({ waiting: 0, consumers: 1 })
  })

  it("says when the broker cannot be read, and still shows the depots and topologies", () => {
    const r = status(["--json"])
    expect(r.status).toBe(0)
    const down = status(["--json"], { BEDS__AMQP__URL: "amqp://guest:guest@127.0.0.1:1" })
    expect(down.status).toBe(0)
    const s = JSON.parse(down.stdout) as Status
    expect(s.broker?.unavailable).toContain("cannot reach RabbitMQ at 127.0.0.1:1")
    expect(s.depots).toEqual((JSON.parse(r.stdout) as Status).depots)
  })

  it("prints one line per depot and per topology", () => {
    const r = status([])
    expect(r.status).toBe(0)
    expect(r.stdout).toMatch(/^depot accounts: p0=\d+ p1=\d+ p2=\d+ p3=\d+ \(total 12\)$/m)
    expect(r.stdout).toMatch(/^topology balances@v\d+: accounts\/p0 at \d+ lag 0, /m)
    expect(r.stdout).toMatch(/^topology ledger@v\d+: read models in memory, rebuilt at start$/m)
    expect(r.stdout).toMatch(/^queues accounts at 127\.0\.0\.1:5672: q0 0 waiting, 1 consumer\(s\), q1 /m)
  })
})
