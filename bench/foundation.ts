/**
 * Foundation benchmark: appends through the in-process API into the MariaDB
 * depot with the balances topology projecting into MariaDB, beside a raw
 * baseline measured in the same run — the same rows inserted by a plain
 * multi-row INSERT loop with the mariadb driver.
 */
import { Effect, Exit, Layer, Scope } from "effect"
import * as mariadb from "mariadb"
import { accounts } from "../depots/accounts.ts"
import { balances } from "../projections/balances.ts"
import { load as loadConfig } from "../src/config/load.ts"
import * as MariaDbDepot from "../src/depot/mariadb.ts"
import * as MariaDb from "../src/mariadb/client.ts"
import * as MariaDbModels from "../src/readmodel/mariadb.ts"
import { engineOptions } from "../src/runtime/boot.ts"
import { loadTemplates } from "../src/template/load.ts"
import { withEngineContext } from "./engine-context.ts"
import { driveCallbacks, dropDatabase, fmt, peakRssMb, progress } from "./support.ts"

const settings: MariaDb.MariaDbSettings = {
  host: "127.0.0.1",
  port: 3306,
  user: "root",
  password: "",
  database: "beds_bench",
  pool: 8,
  connect_timeout_ms: 5000,
}

const ACCOUNTS = 10_000

export interface FoundationResult {
  readonly events: number
  readonly inFlight: number
  readonly rawRowsPerSec: number
  readonly appendsPerSec: number
  readonly projectedPerSec: number
  readonly maxLag: number
  readonly ratio: number
  readonly rssMb: number
}

const payloadOf = (i: number) => (i < ACCOUNTS ? { owner: `owner-${i}` } : { amount: 1 + (i % 997) })
const typeOf = (i: number) => (i < ACCOUNTS ? "Opened" : i % 5 === 0 ? "Withdrawn" : "Deposited")

/** The raw baseline: the same rows, multi-row INSERTs of 1000 rows per transaction, one connection. */
const rawInsert = async (n: number) => {
  const conn = await mariadb.createConnection({ ...settings, bigIntAsNumber: true })
  try {
    await conn.query("DROP TABLE IF EXISTS raw_event")
    await conn.query("CREATE TABLE raw_event LIKE beds_event")
    const bar = progress("raw multi-row INSERT", n)
    const t0 = performance.now()
    const BATCH = 1000
    for (let start = 0; start < n; start += BATCH) {
      const rows: Array<unknown> = []
      const end = Math.min(n, start + BATCH)
      for (let i = start; i < end; i++) {
        const key = `acc-${i % ACCOUNTS}`
        const part = i % 4
        rows.push(
          "accounts",
          part,
          i,
          `accounts:${part}:${i}`,
          typeOf(i),
          key,
          Math.floor(i / ACCOUNTS) + 1,
          JSON.stringify(payloadOf(i)),
          Date.now(),
          null,
          `accounts:${part}:${i}`,
          `m-${i}`,
          "{}",
        )
      }
      const placeholders = Array.from({ length: end - start }, () => "(?,?,?,?,?,?,?,?,?,?,?,?,?)").join(",")
      await conn.beginTransaction()
      await conn.query(
        `INSERT INTO raw_event (depot, part, off, id, type, \`key\`, version, payload, time, parent, root, message_id, metadata) VALUES ${placeholders}`,
        rows,
      )
      await conn.commit()
      bar.update(end)
    }
    bar.stop()
    const seconds = (performance.now() - t0) / 1000
    await conn.query("DROP TABLE raw_event")
    return n / seconds
  } finally {
    await conn.end()
  }
}

/**
 * `inFlight` defaults to one full group commit per partition (ingress
 * batch_max × partitions), as the baseline inserts 1000 rows per transaction.
 */
export const runFoundation = async (n: number, inFlightOption?: number): Promise<FoundationResult> => {
  await dropDatabase(settings.database)
  const templates = await Effect.runPromise(loadTemplates("templates"))
  // The engine as config/ sets it up (batch sizes, linger, kept rows; BEDS__TOPOLOGY__* variables apply).
  const options = engineOptions((await Effect.runPromise(loadConfig())).config)
  const inFlight = inFlightOption ?? options.ingress.batchMax * accounts.partitions
  const declarations = { depots: [accounts], topologies: process.env.BENCH_NO_TOPOLOGY ? [] : [balances], templates }

  const scope = await Effect.runPromise(Scope.make())
  const ctx = await Effect.runPromise(Layer.buildWithScope(MariaDb.layer(settings), scope))
  try {
    // Create beds_event first so the baseline can copy its exact shape.
    await Effect.runPromise(
      Effect.flatMap(MariaDbDepot.make(), (s) => s.open([accounts])).pipe(Effect.provideContext(ctx)),
    )
    const rawRowsPerSec = await rawInsert(n)

    const stores = await Effect.runPromise(
      Effect.gen(function* () {
        return { depot: yield* MariaDbDepot.make(), models: yield* MariaDbModels.make }
      }).pipe(Effect.provideContext(ctx)),
    )
    const result = await withEngineContext(
      stores,
      declarations,
      async (engine) => {
        const bar = progress("BEDS append (MariaDB)", n)
        let maxLag = 0
        let sampling = true
        const sampler = (async () => {
          while (sampling) {
            const s = await Effect.runPromise(engine.status())
            maxLag = Math.max(maxLag, ...s.streams.map((x) => x.lag))
            await new Promise((r) => setTimeout(r, 100))
          }
        })()
        const t0 = performance.now()
        const cpu0 = process.cpuUsage()
        const elu0 = performance.eventLoopUtilization()
        // Through the in-process callback API (engine.submitWith), as a transport drives the engine.
        await driveCallbacks(
          n,
          inFlight,
          (i, done) =>
            engine.submitWith(
              {
                depot: "accounts",
                type: typeOf(i),
                key: `acc-${i % ACCOUNTS}`,
                messageId: `m-${i}`,
                body: { payload: payloadOf(i) },
                ack: "append",
              },
              (r) => done(r.ok ? undefined : new Error(`append refused: ${JSON.stringify(r.error)}`)),
            ),
          (done) => bar.update(done),
        )
        const appendSeconds = (performance.now() - t0) / 1000
        const cpu = process.cpuUsage(cpu0)
        const elu = performance.eventLoopUtilization(elu0).utilization
        const w = (await Effect.runPromise(engine.status())).writer
        console.error(
          `  engine process CPU during appends: ${fmt(((cpu.user + cpu.system) / 1e6 / appendSeconds) * 100)} % of one core (event loop busy ${fmt(elu * 100)} %); ${fmt(w.commits)} commits, ${fmt(w.appends / Math.max(1, w.commits), 1)} appends per commit`,
        )
        bar.update(n)
        bar.stop()
        await Effect.runPromise(engine.settle())
        const projectSeconds = (performance.now() - t0) / 1000
        sampling = false
        await sampler
        return { appendsPerSec: n / appendSeconds, projectedPerSec: n / projectSeconds, maxLag }
      },
      options,
    )
    return {
      events: n,
      inFlight,
      rawRowsPerSec,
      ...result,
      ratio: result.appendsPerSec / rawRowsPerSec,
      rssMb: peakRssMb(),
    }
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    await dropDatabase(settings.database).catch(() => undefined)
  }
}

export const printFoundation = (r: FoundationResult) => {
  console.log(
    `\nFoundation: ${fmt(r.events)} events into the MariaDB depot, balances projecting into MariaDB, ${fmt(r.inFlight)} in flight`,
  )
  console.log(`  raw multi-row INSERT (1000 rows/tx)   ${fmt(r.rawRowsPerSec).padStart(10)} rows/s`)
  console.log(
    `  BEDS group-commit append              ${fmt(r.appendsPerSec).padStart(10)} appends/s   (${fmt(r.ratio * 100, 1)} % of raw; target >= 70 %)`,
  )
  console.log(
    `  BEDS projected (append start → caught up) ${fmt(r.projectedPerSec).padStart(6)} events/s   max lag ${fmt(r.maxLag)} events`,
  )
  console.log(`  peak RSS ${fmt(r.rssMb)} MB`)
}
