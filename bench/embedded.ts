/**
 * Embedded benchmark: the whole engine in one process on the file depot
 * with in-memory read models — commands/s and latency per ack level with
 * many in flight, and the rebuild rate at start (a replay into memory).
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Context, Effect, Exit, Layer, Scope } from "effect"
import { accounts } from "../depots/accounts.ts"
import { balances } from "../projections/balances.ts"
import { ledger } from "../projections/ledger.ts"
import * as EmbeddedClient from "../src/client/embedded.ts"
import { partitionOf } from "../src/depot/depot.ts"
import type { AppendRequest } from "../src/depot/event.ts"
import * as FileDepot from "../src/depot/file.ts"
import { DepotStore } from "../src/depot/store.ts"
import * as MemoryModels from "../src/readmodel/memory.ts"
import { ReadModelStore } from "../src/readmodel/store.ts"
import { defaultOptions, Engine, layer as engineLayer } from "../src/runtime/engine.ts"
import { loadTemplates } from "../src/template/load.ts"
import type { Topology } from "../src/topology/topology.ts"
import { fmt, peakRssMb, progress, summarize } from "./support.ts"

export interface EmbeddedResult {
  readonly perAck: ReadonlyArray<{ ack: string; n: number; perSec: number; p50: number; p99: number }>
  readonly rebuild: { events: number; seconds: number; perSec: number; rssMb: number }
  /** Cold starts on a depot whose accounts reach 200 ledger entries: balances alone, then with ledger. */
  readonly rec: { events: number; balancesPerSec: number; ledgerPerSec: number }
}

const open = async (dir: string, topologies: ReadonlyArray<Topology> = [balances]) => {
  const templates = await Effect.runPromise(loadTemplates("templates"))
  const scope = await Effect.runPromise(Scope.make())
  const ctx = await Effect.runPromise(
    Layer.buildWithScope(
      engineLayer({ depots: [accounts], topologies, templates }, defaultOptions).pipe(
        Layer.provideMerge(Layer.mergeAll(FileDepot.layer(dir), MemoryModels.layer)),
      ),
      scope,
    ),
  )
  const engine = Context.get(ctx, Engine)
  return { engine, ctx, close: () => Effect.runPromise(Scope.close(scope, Exit.void)) }
}

export const runEmbedded = async (n: number, inFlight: number, rebuildEvents: number): Promise<EmbeddedResult> => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "beds-bench-"))
  try {
    const perAck: Array<EmbeddedResult["perAck"][number]> = []
    const s = await open(dir)
    const client = await Effect.runPromise(EmbeddedClient.make(s.engine, { inFlight: 100_000 }))
    for (const ack of ["none", "append", "full"] as const) {
      const bar = progress(`embedded ${ack}`, n)
      const latencies = new Float64Array(n)
      const t0 = performance.now()
      let done = 0
      await Effect.runPromise(
        Effect.forEach(
          Array.from({ length: n }, (_, i) => i),
          (i) => {
            const t = performance.now()
            return Effect.map(
              client.publish(
                "accounts",
                "Deposited",
                `acc-${i % 10_000}`,
                { amount: 1 + (i % 100) },
                { id: `${ack}-${i}`, ack },
              ),
              () => {
                latencies[i] = performance.now() - t
                if (++done % 5000 === 0) bar.update(done)
              },
            )
          },
          { concurrency: inFlight, discard: true },
        ),
      )
      const seconds = (performance.now() - t0) / 1000
      bar.stop()
      perAck.push({ ack, n, perSec: n / seconds, ...summarize(latencies) })
    }
    await s.close()

    await fill(dir, rebuildEvents, 10_000)
    const { events, seconds } = await coldStart(dir, [balances], 10_000)
    const rebuild = { events, seconds, perSec: events / seconds, rssMb: peakRssMb() }

    // REC documents cost more to fold than rows: every write of one is checked as MongoDB would
    // check it. A depot whose keys reach the ledger's 200 kept entries, cold-started with and
    // without the ledger topology, side by side.
    const recDir = fs.mkdtempSync(path.join(os.tmpdir(), "beds-bench-rec-"))
    try {
      await fill(recDir, REC_EVENTS, REC_KEYS)
      const alone = await coldStart(recDir, [balances], REC_KEYS)
      const withLedger = await coldStart(recDir, [balances, ledger], REC_KEYS)
      const rec = {
        events: REC_EVENTS,
        balancesPerSec: REC_EVENTS / alone.seconds,
        ledgerPerSec: REC_EVENTS / withLedger.seconds,
      }
      return { perAck, rebuild, rec }
    } finally {
      fs.rmSync(recDir, { recursive: true, force: true })
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

const REC_EVENTS = 50_000
/** 250 events per account: past the 200 entries the ledger keeps. */
const REC_KEYS = 200

/** Appends Deposited events to the accounts depot in `dir` up to `events`, over `keys` accounts, through the store directly (fast). */
const fill = (dir: string, events: number, keys: number) =>
  Effect.runPromise(
    Effect.gen(function* () {
      const store = yield* DepotStore
      yield* store.open([accounts])
      let total = 0
      for (let p = 0; p < accounts.partitions; p++) total += yield* store.head("accounts", p)
      const bar = progress("filling the depot", events)
      // Each key in the partition the engine would route it to, as every append through the engine is.
      for (let i = total; i < events; i += 4000) {
        const byPartition = Array.from({ length: accounts.partitions }, () => [] as Array<AppendRequest>)
        for (let j = i; j < Math.min(i + 4000, events); j++) {
          const key = `acc-${j % keys}`
          byPartition[partitionOf(key, accounts.partitions)]?.push({
            messageId: `fill-${j}`,
            type: "Deposited",
            key,
            payload: { amount: 7 },
            time: Date.now(),
          })
        }
        for (let p = 0; p < accounts.partitions; p++) yield* store.append("accounts", p, byPartition[p] ?? [])
        bar.update(Math.min(i + 4000, events))
      }
      bar.stop()
    }).pipe(Effect.provide(FileDepot.layer(dir)), Effect.scoped),
  )

/** Starts an engine on the depot in `dir` and times it until its topologies have caught up; checks the balance rows of `keys` accounts. */
const coldStart = async (dir: string, topologies: ReadonlyArray<Topology>, keys: number) => {
  const t0 = performance.now()
  const s = await open(dir, topologies)
  try {
    await Effect.runPromise(s.engine.settle())
    const seconds = (performance.now() - t0) / 1000
    const status = await Effect.runPromise(s.engine.status())
    const events = status.depots.reduce((a, d) => a + d.partitions.reduce((b, p) => b + p.head, 0), 0)
    const rows = await Effect.runPromise(
      Effect.flatMap(ReadModelStore, (m) => m.scan("acc_balance")).pipe(Effect.provideContext(s.ctx)),
    )
    if (rows.length !== keys) throw new Error(`rebuild produced ${rows.length} balance rows, expected ${keys}`)
    return { events, seconds }
  } finally {
    await s.close()
  }
}

export const printEmbedded = (r: EmbeddedResult) => {
  console.log(`\nEmbedded (file depot, in-memory read models, balances topology)`)
  console.log(
    `  ${"ack".padEnd(8)}${"commands".padStart(10)}${"cmd/s".padStart(12)}${"p50 ms".padStart(10)}${"p99 ms".padStart(10)}`,
  )
  for (const a of r.perAck)
    console.log(
      `  ${a.ack.padEnd(8)}${fmt(a.n).padStart(10)}${fmt(a.perSec).padStart(12)}${fmt(a.p50, 2).padStart(10)}${fmt(a.p99, 2).padStart(10)}`,
    )
  console.log(
    `  rebuild at start: ${fmt(r.rebuild.events)} events in ${fmt(r.rebuild.seconds, 2)} s = ${fmt(r.rebuild.perSec)} events/s (target >= 300,000); peak RSS ${fmt(r.rebuild.rssMb)} MB`,
  )
  console.log(
    `  rebuild at start with ledger (REC documents of 200 entries), ${fmt(r.rec.events)} events: ${fmt(r.rec.ledgerPerSec)} events/s, against ${fmt(r.rec.balancesPerSec)} with balances alone (${fmt((100 * r.rec.ledgerPerSec) / r.rec.balancesPerSec, 1)} %)`,
  )
}
