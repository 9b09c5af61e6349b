/**
 * Consistency of the production shape under real faults: `beds start` as a
 * child process with the AMQP transport, the MariaDB depot and MariaDB read
 * models; several AMQP clients (src/client/amqp.ts) publishing generated
 * histories while the engine is SIGKILLed (or SIGTERMed) and restarted, its broker
 * connection force-closed, MariaDB restarted (once per CI run) and, in the
 * soak profile, RabbitMQ restarted. After each history the engine settles,
 * the final state (depot, read models, dead letters) is judged by the
 * history checker, and a replay from scratch must reproduce the read models.
 *
 * Isolation: a broker prefix of its own (BEDS__AMQP__PREFIX) and a
 * throw-away database per history; both are deleted, and every service this
 * file stopped is running again, when it ends, whatever happened.
 */
import * as amqp from "amqplib"
import { Context, Effect, Layer, Schedule } from "effect"
import fc from "fast-check"
import * as mariadb from "mariadb"
import { afterAll, beforeAll, describe, it } from "vitest"
import * as Broker from "../../src/broker/topology.ts"
import * as AmqpClient from "../../src/client/amqp.ts"
import { PublishRejected } from "../../src/client/client.ts"
import * as MariaDbDepot from "../../src/depot/mariadb.ts"
import type { StoreError } from "../../src/errors.ts"
import * as MariaDb from "../../src/mariadb/client.ts"
import * as MariaDbModels from "../../src/readmodel/mariadb.ts"
import * as DeclarationsLoader from "../../src/runtime/declarations.ts"
import type { Declarations } from "../../src/runtime/engine.ts"
import type { FinalState } from "../../src/testing/checker.ts"
import { snapshot } from "../../src/testing/harness.ts"
import {
  count,
  type Fault,
  type Outcome,
  type Plan,
  planArbitrary,
  type ReadAfter,
  replay,
  replayParameters,
  runPlan,
  runs,
  soak,
  summary,
  tally,
  verdict,
  type WireCommand,
} from "../support/consistency.ts"
import { type EngineProcess, kill, projectRoot, startEngine } from "../support/engine-process.ts"
import {
  closeConnections,
  queueDepths,
  restartMariaDb,
  restartRabbit,
  restoreServices,
} from "../support/service-faults.ts"
import { dropDatabase, mariaDbAvailable, mariaDbSettings, rabbitAvailable } from "../support/services.ts"

const available = (await rabbitAvailable()) && (await mariaDbAvailable())
const URL = "amqp://guest:guest@127.0.0.1:5672"
const prefix = `bedscons${process.pid}`
const names = Broker.names(prefix)
const CLIENTS = 4

type AmqpFault = "sigkill" | "sigterm" | "close-connection" | "mariadb-restart" | "rabbit-restart"

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/** Everything the engine serves, and the part of it whose read models live in MariaDB (what this test can read). */
let all: Declarations
let rel: Declarations
let clients: Array<AmqpClient.AmqpClient> = []
const databases: Array<string> = []
const stats = tally()

beforeAll(async () => {
  if (!available) return
  all = await Effect.runPromise(DeclarationsLoader.load(projectRoot))
  const relTemplates = all.templates.filter((t) => t.backend === "rel")
  const topologies = all.topologies.filter((t) => t.readModels.every((m) => relTemplates.some((x) => x.name === m)))
  rel = { depots: all.depots, topologies, templates: relTemplates }
}, 60_000)

afterAll(async () => {
  if (!available) return
  try {
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)))
    clients = []
  } finally {
    try {
      await restoreServices()
    } finally {
      await Broker.remove(URL, all?.depots ?? [], { prefix, deadLetters: true }).catch(() => undefined)
      for (const database of databases)
        await dropDatabase({ ...mariaDbSettings("cons"), database }).catch(() => undefined)
      console.log(summary("AMQP + MariaDB engine process", stats))
    }
  }
}, 300_000)

const connectClients = async () => {
  if (clients.length > 0) return
  for (let i = 0; i < CLIENTS; i++)
    clients.push(
      await AmqpClient.connect(URL, {
        prefix,
        connectionName: `beds-consistency-${process.pid}-c${i}`,
        timeoutMs: 10_000,
        heartbeatS: 5,
      }),
    )
}

/** Retries a query while MariaDB restarts (or any transient failure), for at most a minute. */
const query = async <T>(pool: mariadb.Pool, sql: string, values: ReadonlyArray<unknown> = []): Promise<T> => {
  const end = Date.now() + 60_000
  while (true) {
    try {
      return (await pool.query(sql, [...values])) as T
    } catch (e) {
      if (Date.now() > end) throw e
      await sleep(250)
    }
  }
}

/** One history's engine: a process on its own database, restarted after every kill. */
class AmqpEngine {
  private proc: EngineProcess | undefined
  readonly settings: MariaDb.MariaDbSettings
  readonly pool: mariadb.Pool
  private readonly env: NodeJS.ProcessEnv

  constructor(n: number) {
    const database = `beds_t_cons_${process.pid}_${n}`
    databases.push(database)
    this.settings = { ...mariaDbSettings("cons"), database }
    this.env = { BEDS_ENV: "dev", BEDS__MARIADB__DATABASE: database, BEDS__AMQP__PREFIX: prefix }
    this.pool = mariadb.createPool({
      host: this.settings.host,
      port: this.settings.port,
      user: this.settings.user,
      password: this.settings.password,
      database,
      connectionLimit: 2,
      acquireTimeout: 3000,
      connectTimeout: 3000,
    })
  }

  /**
   * Starts the engine. Its start-up fails fast when a service does not
   * answer (by design), and the services are shared: another test may be
   * restarting one right now. Like a supervisor, try again for a while.
   */
  async start(): Promise<void> {
    const end = Date.now() + 90_000
    while (true) {
      try {
        this.proc = await startEngine(this.env, 90_000)
        return
      } catch (e) {
        if (Date.now() > end) throw e
        await sleep(2000)
      }
    }
  }

  async kill(): Promise<void> {
    const proc = this.proc
    this.proc = undefined
    if (proc !== undefined) await kill(proc)
  }

  /** SIGTERM: the engine must finish what it took, reply, and exit 0 on its own. */
  async stop(): Promise<void> {
    const proc = this.proc
    this.proc = undefined
    if (proc === undefined) return
    proc.child.kill("SIGTERM")
    const code = await Promise.race([proc.exited, sleep(45_000).then(() => "no exit in 45 s" as const)])
    if (code !== 0 || !proc.stderr.some((l) => l.includes("stopped cleanly"))) {
      await kill(proc)
      throw new Error(`the engine did not stop cleanly on SIGTERM (${code}):\n${proc.stderr.slice(-15).join("\n")}`)
    }
  }

  get connectionName(): string | undefined {
    return this.proc === undefined ? undefined : `beds-ingress@${this.proc.child.pid}`
  }

  readonly send = async (client: number, c: WireCommand): Promise<Outcome> => {
    const beds = clients[client % clients.length] as AmqpClient.AmqpClient
    try {
      const r = await beds.publish("accounts", c.type, c.key, c.payload, {
        id: c.messageId,
        ack: c.ack,
        expect: c.expect,
        timeoutMs: 10_000,
      })
      return "offset" in r ? { reply: r, confirmed: true } : { confirmed: true }
    } catch (e) {
      if (e instanceof PublishRejected)
        return {
          reply: {
            ok: false,
            error:
              e.details === undefined
                ? { code: e.code, message: e.message }
                : { code: e.code, message: e.message, details: e.details },
          },
          confirmed: true,
        }
      const err = e as { code?: string; message?: string }
      return { confirmed: false, failure: `${err.code}: ${err.message?.slice(0, 120)}` }
    }
  }

  /** Reads the rows straight from MariaDB, as another application would. */
  readonly readAfter = async (c: WireCommand): Promise<ReadAfter> => {
    const out: Record<string, Record<string, Record<string, unknown> | undefined>> = {}
    for (const t of ["acc_balance", ...(c.type === "Deposited" || c.type === "Withdrawn" ? ["ovd_state"] : [])]) {
      const rows = await query<Array<Record<string, unknown>>>(
        this.pool,
        `SELECT account_id, beds_last_id FROM ${t} WHERE account_id = ?`,
        [c.key],
      )
      out[t] = { [c.key]: rows[0] === undefined ? undefined : { ...rows[0] } }
    }
    return out
  }

  async inject(f: Fault<AmqpFault>): Promise<void> {
    switch (f.kind) {
      case "sigkill":
        await this.kill()
        await sleep(f.arg % 1000)
        await this.start()
        return
      case "sigterm":
        await this.stop()
        await sleep(f.arg % 500)
        await this.start()
        return
      case "close-connection": {
        const name = this.connectionName
        if (name === undefined) return
        // Just after a restart or an earlier close the engine may still be (re)connecting.
        for (let i = 0; i < 20; i++) {
          if ((await closeConnections(name)) > 0) return
          await sleep(250)
        }
        throw new Error(`the engine has no AMQP connection named ${name} to close: it did not reconnect`)
      }
      case "mariadb-restart":
        try {
          await restartMariaDb(f.arg % 2000)
        } finally {
          await restoreServices()
        }
        return
      case "rabbit-restart":
        try {
          await restartRabbit(f.arg % 3000)
        } finally {
          await restoreServices()
        }
        return
    }
  }

  /**
   * Waits until the broker holds nothing for the engine and every MariaDB
   * topology's checkpoints stand at the depot heads, twice in a row.
   */
  async settle(timeoutMs = 120_000): Promise<void> {
    const end = Date.now() + timeoutMs
    let previous = ""
    let last = ""
    while (Date.now() < end) {
      const depths = await queueDepths(`${prefix}.cmd.`).catch((e: Error) => {
        last = `rabbitmqctl: ${e.message}`
        return undefined
      })
      if (depths === undefined) {
        await sleep(1000)
        continue
      }
      const busy = [...depths].filter(([, d]) => d.ready + d.unacked > 0)
      const heads = await query<Array<{ depot: string; part: number; n: bigint | number }>>(
        this.pool,
        "SELECT depot, part, COUNT(*) AS n FROM beds_event GROUP BY depot, part",
      )
      const cps = await query<Array<{ topology: string; depot: string; part: number; next: bigint | number }>>(
        this.pool,
        "SELECT topology, depot, part, `next` FROM beds_checkpoint",
      )
      const head = new Map(heads.map((h) => [`${h.depot}/${h.part}`, Number(h.n)]))
      const cp = new Map(cps.map((c) => [`${c.topology}|${c.depot}/${c.part}`, Number(c.next)]))
      const behind: Array<string> = []
      for (const t of rel.topologies)
        for (const s of t.sources)
          for (let p = 0; p < s.partitions; p++) {
            const h = head.get(`${s.name}/${p}`) ?? 0
            const c = cp.get(`${t.name}|${s.name}/${p}`) ?? 0
            if (c !== h) behind.push(`${t.name} ${s.name}/${p} at ${c} of ${h}`)
          }
      last = `queues busy: ${JSON.stringify(busy)}; behind: ${behind.join(", ")}`
      const now = JSON.stringify([...head].sort())
      if (busy.length === 0 && behind.length === 0 && now === previous) return
      previous = busy.length === 0 && behind.length === 0 ? now : ""
      await sleep(300)
    }
    throw new Error(`the engine did not settle in ${timeoutMs / 1000} s (${last})`)
  }

  /** Refused commands the engine dead-lettered (drains the dead-letter queue). */
  async deadLetters(): Promise<Set<string>> {
    const ids = new Set<string>()
    const conn = await amqp.connect(URL)
    try {
      const ch = await conn.createChannel()
      while (true) {
        const m = await ch.get(names.dead, { noAck: true })
        if (m === false) break
        if (typeof m.properties.messageId === "string") ids.add(m.properties.messageId)
      }
    } finally {
      await conn.close().catch(() => undefined)
    }
    return ids
  }

  /** Settles, reads the final state, stops the engine and replays its depot on fresh read models. */
  async final(): Promise<FinalState> {
    await this.settle()
    const deadLettered = await this.deadLetters()
    const settings = this.settings
    const stop = () => this.kill()
    // Reads retry while a shared MariaDB is briefly away (another test may restart it).
    const retrying = <A, R>(e: Effect.Effect<A, StoreError, R>) =>
      Effect.retry(e, { while: (x) => x.retryable, schedule: Schedule.spaced("1 second"), times: 90 })
    return Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const ctx = yield* retrying(Layer.build(MariaDb.layer(settings)))
          const db = Context.get(ctx, MariaDb.MariaDb)
          const depot = yield* MariaDbDepot.make().pipe(Effect.provideService(MariaDb.MariaDb, db))
          const models = yield* MariaDbModels.make.pipe(Effect.provideService(MariaDb.MariaDb, db))
          yield* retrying(models.ensure(rel.templates))
          const state = yield* retrying(snapshot({ depot, models }, rel))
          yield* Effect.promise(stop)
          const replayed = yield* replay(depot, rel)
          return { ...state, deadLettered, replayed }
        }),
      ),
    )
  }

  async close(): Promise<void> {
    await this.kill()
    await this.pool.end().catch(() => undefined)
    // Left in the list when MariaDB is away, so afterAll drops it once the services are back.
    await dropDatabase(this.settings).then(
      () => databases.splice(databases.indexOf(this.settings.database), 1),
      () => undefined,
    )
  }
}

let historyNo = 0

const runHistory = async (plan: Plan<AmqpFault>) => {
  await connectClients()
  const n = historyNo++
  const engine = new AmqpEngine(n)
  try {
    await engine.start()
    const run = await runPlan(plan, `${prefix}-h${n}`, {
      transport: engine,
      inject: (f) => engine.inject(f),
      retries: 12,
      retryDelayMs: 100,
      pauseMs: 40,
    })
    const final = await engine.final()
    count(stats, run, final.events.length)
    await verdict("AMQP engine process (MariaDB depot and read models)", rel, run, final)
  } finally {
    await engine.close()
    await restoreServices()
  }
}

/**
 * Histories with 1-3 faults drawn from `faults`, plus one `extra` before
 * them, early enough that traffic goes on around it.
 */
const plans = (faults: ReadonlyArray<AmqpFault>, extra?: AmqpFault) =>
  fc
    .tuple(
      planArbitrary({
        clients: { min: extra === undefined ? 2 : 3, max: CLIENTS },
        steps: { min: extra === undefined ? 8 : 20, max: soak ? 50 : 25 },
        faults,
        minFaults: 1,
        maxFaults: 3,
      }),
      fc.integer({ min: 5, max: 30 }),
      fc.nat({ max: 999 }),
    )
    .map(([plan, at, arg]) =>
      extra === undefined
        ? plan
        : {
            ...plan,
            // First, so that it meets traffic: clients may finish while an earlier fault still recovers.
            faults: [{ at, kind: extra, arg }, ...plan.faults.map((f) => ({ ...f, at: Math.max(f.at, at + 1) }))],
          },
    )

// Each history costs seconds: shrinking is bounded so a failure is reported in minutes, not hours;
// where every history restarts a shared service, hardly at all, so others are disturbed little.
const shrinkLimit = 12
const restartShrinkLimit = 2

describe.runIf(available)("consistency of the AMQP engine process under real faults", () => {
  const basic = runs(12, 150)
  it(`${basic} generated histories with SIGKILLs, SIGTERMs and force-closed broker connections`, async () => {
    await fc.assert(
      fc.asyncProperty(fc.limitShrink(plans(["sigkill", "sigterm", "close-connection"]), shrinkLimit), runHistory),
      {
        numRuns: basic,
        ...replayParameters(),
      },
    )
  }, 3_600_000)

  const restarts = runs(1, 4)
  it(`${restarts} generated histories across a MariaDB restart`, async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.limitShrink(plans(["sigkill", "close-connection"], "mariadb-restart"), restartShrinkLimit),
        runHistory,
      ),
      { numRuns: restarts, ...replayParameters() },
    )
  }, 3_600_000)

  it.runIf(soak)(
    "generated histories across RabbitMQ restarts",
    async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.limitShrink(plans(["sigkill", "close-connection"], "rabbit-restart"), restartShrinkLimit),
          runHistory,
        ),
        { numRuns: runs(3, 3), ...replayParameters() },
      )
    },
    3_600_000,
  )
})
