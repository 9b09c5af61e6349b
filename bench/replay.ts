/**
 * Replay benchmark: rebuilding the balances read model from N events
 * (BENCH_REPLAY, default 1,000,000) into its shadow table and swapping it in,
 * on MariaDB, beside the raw rate of reading the same depot table
 * sequentially in the same run (plain driver, and through the depot store);
 * then the same rebuild on in-memory stores.
 *
 * The depot table is filled with multi-row INSERTs (valid events: lineage
 * IDs, per-key versions, keys on their own partitions). The live checkpoints
 * are set to the heads, as a live engine that had projected everything would
 * leave them, so the replay builds the full model and swaps it in.
 */
import { Effect, Exit, Layer, Scope } from "effect"
import * as mariadb from "mariadb"
import { accounts } from "../depots/accounts.ts"
import { balances } from "../projections/balances.ts"
import { partitionOf } from "../src/depot/depot.ts"
import * as MariaDbDepot from "../src/depot/mariadb.ts"
import * as MemoryDepot from "../src/depot/memory.ts"
import { DepotStore, type DepotStoreShape } from "../src/depot/store.ts"
import * as MariaDb from "../src/mariadb/client.ts"
import * as MariaDbModels from "../src/readmodel/mariadb.ts"
import * as MemoryModels from "../src/readmodel/memory.ts"
import { ReadModelStore, type ReadModelStoreShape } from "../src/readmodel/store.ts"
import { type ReplayProgress, type ReplaySummary, replay } from "../src/replay/replay.ts"
import type { Declarations } from "../src/runtime/engine.ts"
import { loadTemplates } from "../src/template/load.ts"
import { dropDatabase, fillEvents, fmt, peakRssMb, progress } from "./support.ts"

const settings: MariaDb.MariaDbSettings = {
  host: "127.0.0.1",
  port: 3306,
  user: "root",
  password: "",
  database: "beds_bench_replay",
  pool: 8,
  connect_timeout_ms: 5000,
}

const ACCOUNTS = 10_000
/** Rows per query of the sequential reads. */
const BATCH = 10_000
/** Events per replay batch: large, so many events coalesce into each row written. */
const REPLAY_BATCH = Number(process.env.BENCH_REPLAY_BATCH ?? 100_000)

export interface ReplayBenchResult {
  readonly events: number
  readonly fillPerSec: number
  readonly rawReadPerSec: number
  readonly storeReadPerSec: number
  readonly mariadb: {
    readonly perSec: number
    readonly seconds: number
    readonly pausedMs: number
    readonly rssMb: number
  }
  readonly memory: { readonly perSec: number; readonly seconds: number; readonly rssMb: number }
}

const typeOf = (i: number) => (i < ACCOUNTS ? "Opened" : i % 5 === 0 ? "Withdrawn" : "Deposited")
const payloadOf = (i: number) => (i < ACCOUNTS ? { owner: `owner-${i}` } : { amount: 1 + (i % 997) })

/** The events, as the depot would have assigned them: per-partition offsets, per-key versions. */
const eventRows = function* (n: number) {
  const heads = new Array<number>(accounts.partitions).fill(0)
  const versions = new Int32Array(ACCOUNTS)
  const partOfKey = Array.from({ length: ACCOUNTS }, (_, k) => partitionOf(`acc-${k}`, accounts.partitions))
  const time = Date.now()
  for (let i = 0; i < n; i++) {
    const k = i % ACCOUNTS
    const part = partOfKey[k] as number
    const off = heads[part] as number
    heads[part] = off + 1
    versions[k] = (versions[k] as number) + 1
    const id = `accounts:${part}:${off}`
    yield [
      "accounts",
      part,
      off,
      id,
      typeOf(i),
      `acc-${k}`,
      versions[k],
      JSON.stringify(payloadOf(i)),
      time,
      null,
      id,
      `m-${i}`,
      "{}",
    ]
  }
  return heads
}

/** Reads every partition in offset order, 10,000 rows per query, with the plain driver. */
const rawRead = async (heads: ReadonlyArray<number>): Promise<number> => {
  const conn = await mariadb.createConnection({ ...settings, bigIntAsNumber: true })
  try {
    const total = heads.reduce((a, b) => a + b, 0)
    const bar = progress("raw sequential read", total)
    const t0 = performance.now()
    let done = 0
    for (let p = 0; p < heads.length; p++)
      for (let from = 0; from < (heads[p] as number); from += BATCH) {
        const rows: Array<unknown> = await conn.query(
          {
            sql: "SELECT depot, part, off, id, type, `key`, version, payload, time, parent, root, message_id, metadata FROM beds_event WHERE depot = ? AND part = ? AND off >= ? ORDER BY off LIMIT ?",
            rowsAsArray: true,
          },
          ["accounts", p, from, BATCH],
        )
        done += rows.length
        bar.update(done)
      }
    bar.stop()
    return total / ((performance.now() - t0) / 1000)
  } finally {
    await conn.end()
  }
}

/** The same reads through the depot store (events decoded, payloads parsed). */
const storeRead = (store: DepotStoreShape, heads: ReadonlyArray<number>) =>
  Effect.gen(function* () {
    const total = heads.reduce((a, b) => a + b, 0)
    const bar = progress("depot store sequential read", total)
    const t0 = performance.now()
    let done = 0
    for (let p = 0; p < heads.length; p++)
      for (let from = 0; from < (heads[p] as number); from += BATCH) {
        done += (yield* store.read("accounts", p, from, BATCH)).length
        bar.update(done)
      }
    bar.stop()
    return total / ((performance.now() - t0) / 1000)
  })

/** The live checkpoints at the heads, as after a live engine projected everything. */
const liveAtHeads = (models: ReadModelStoreShape, heads: ReadonlyArray<number>) =>
  Effect.forEach(
    heads,
    (head, partition) => models.commit({ topology: "balances", depot: "accounts", partition }, head, []),
    { discard: true },
  )

const replayWithBar = (
  label: string,
  declarations: Declarations,
  depot: DepotStoreShape,
  models: ReadModelStoreShape,
) =>
  Effect.gen(function* () {
    let bar: ReturnType<typeof progress> | undefined
    const onProgress = (p: ReplayProgress) => {
      if (bar === undefined && p.total > 0) bar = progress(label, p.total)
      bar?.update(p.done)
    }
    const summary: ReplaySummary = yield* replay(declarations, {
      topology: "balances",
      batchMax: REPLAY_BATCH,
      onProgress,
    }).pipe(Effect.provideService(DepotStore, depot), Effect.provideService(ReadModelStore, models))
    bar?.stop()
    return summary
  })

export const runReplayBench = async (n: number): Promise<ReplayBenchResult> => {
  const templates = await Effect.runPromise(loadTemplates("templates"))
  const declarations: Declarations = { depots: [accounts], topologies: [balances], templates }

  await dropDatabase(settings.database)
  const scope = await Effect.runPromise(Scope.make())
  try {
    const ctx = await Effect.runPromise(Layer.buildWithScope(MariaDb.layer(settings), scope))
    const open = await Effect.runPromise(
      Effect.gen(function* () {
        const depot = yield* MariaDbDepot.make()
        yield* depot.open([accounts])
        return depot
      }).pipe(Effect.provideContext(ctx)),
    )
    void open
    const filled = await fillEvents(settings, n, eventRows(n))
    const fill = { heads: filled.result, perSec: filled.perSec }
    const rawReadPerSec = await rawRead(fill.heads)
    const { depot, models } = await Effect.runPromise(
      Effect.gen(function* () {
        return { depot: yield* MariaDbDepot.make(), models: yield* MariaDbModels.make }
      }).pipe(Effect.provideContext(ctx)),
    )
    const storeReadPerSec = await Effect.runPromise(storeRead(depot, fill.heads))
    await Effect.runPromise(
      Effect.andThen(models.ensure(templates.filter((t) => t.name === "acc_balance")), liveAtHeads(models, fill.heads)),
    )
    const maria = await Effect.runPromise(replayWithBar("replay (MariaDB)", declarations, depot, models))
    const rows = await Effect.runPromise(models.scan("acc_balance"))
    if (rows.length !== Math.min(n, ACCOUNTS)) throw new Error(`replay produced ${rows.length} rows`)
    const mariaRss = peakRssMb()

    // The same events in memory: fill the memory depot, then rebuild.
    const memDepot = MemoryDepot.make()
    const memModels = await Effect.runPromise(MemoryModels.make)
    await Effect.runPromise(
      Effect.gen(function* () {
        yield* memDepot.open([accounts])
        yield* memModels.ensure(templates.filter((t) => t.name === "acc_balance"))
        const bar = progress("filling the memory depot", n)
        const byPartition: Array<
          Array<{ messageId: string; type: string; key: string; payload: unknown; time: number }>
        > = Array.from({ length: accounts.partitions }, () => [])
        const flush = (p: number) =>
          Effect.gen(function* () {
            const batch = byPartition[p] as Array<{
              messageId: string
              type: string
              key: string
              payload: unknown
              time: number
            }>
            if (batch.length > 0) yield* memDepot.append("accounts", p, batch)
            byPartition[p] = []
          })
        for (let i = 0; i < n; i++) {
          const key = `acc-${i % ACCOUNTS}`
          const p = partitionOf(key, accounts.partitions)
          const list = byPartition[p] as Array<{
            messageId: string
            type: string
            key: string
            payload: unknown
            time: number
          }>
          list.push({ messageId: `m-${i}`, type: typeOf(i), key, payload: payloadOf(i), time: Date.now() })
          if (list.length === 4000) yield* flush(p)
          if (i % 20_000 === 0) bar.update(i)
        }
        for (let p = 0; p < accounts.partitions; p++) yield* flush(p)
        bar.stop()
        const heads: Array<number> = []
        for (let p = 0; p < accounts.partitions; p++) heads.push(yield* memDepot.head("accounts", p))
        yield* liveAtHeads(memModels, heads)
      }),
    )
    const mem = await Effect.runPromise(replayWithBar("replay (memory)", declarations, memDepot, memModels))
    return {
      events: n,
      fillPerSec: fill.perSec,
      rawReadPerSec,
      storeReadPerSec,
      mariadb: { perSec: maria.perSec, seconds: maria.seconds, pausedMs: maria.pausedMs, rssMb: mariaRss },
      memory: { perSec: mem.perSec, seconds: mem.seconds, rssMb: peakRssMb() },
    }
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    await dropDatabase(settings.database).catch(() => undefined)
  }
}

export const printReplayBench = (r: ReplayBenchResult) => {
  console.log(
    `\nReplay (balances topology, ${fmt(r.events)} events, ${fmt(ACCOUNTS)} accounts, replay batches of ${fmt(REPLAY_BATCH)}, reads of ${fmt(BATCH)} rows)`,
  )
  console.log(`  fill beds_event, multi-row INSERT      ${fmt(r.fillPerSec).padStart(12)} rows/s`)
  console.log(`  raw sequential read (driver)           ${fmt(r.rawReadPerSec).padStart(12)} events/s`)
  console.log(`  sequential read (depot store)          ${fmt(r.storeReadPerSec).padStart(12)} events/s`)
  console.log(
    `  replay into shadow + swap (MariaDB)    ${fmt(r.mariadb.perSec).padStart(12)} events/s  (${fmt(r.mariadb.seconds, 2)} s, ${fmt((100 * r.mariadb.perSec) / r.rawReadPerSec)}% of the raw read; live paused ${fmt(r.mariadb.pausedMs)} ms for the swap)`,
  )
  console.log(
    `  replay into shadow + swap (memory)     ${fmt(r.memory.perSec).padStart(12)} events/s  (${fmt(r.memory.seconds, 2)} s)`,
  )
  console.log(
    `  peak RSS: ${fmt(r.mariadb.rssMb)} MB after the MariaDB replay, ${fmt(r.memory.rssMb)} MB after the in-memory one (memory depot and models included)`,
  )
}

/** The section as bench/main.ts runs it: BENCH_REPLAY events (default 1,000,000). */
export const benchReplay = async () =>
  printReplayBench(await runReplayBench(Number(process.env.BENCH_REPLAY ?? 1_000_000)))
