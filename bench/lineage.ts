/**
 * Lineage benchmark on MariaDB: the depot table is filled with N events
 * (BENCH_LINEAGE, default 1,000,000) by multi-row INSERTs — plain root events
 * for the bulk, and among them three cascades (derived IDs `<root>/t.<n>/…`
 * with their parent and root fields): a chain 10 generations deep, and two
 * events with 10,000 descendants each over four generations (10, 100, 1,000,
 * 8,890). One tree is appended together, among other events, as a topology
 * emitting it would append it; the other is scattered over the whole table,
 * which makes every descendant a page of its own. Then, through the MariaDB
 * depot store, each after a few warm-up runs and as p50/p99, beside the same
 * reads by the plain driver in the same run:
 *   - `ancestors` of the event 10 deep (10 point reads of uq_event_id),
 *     BENCH_LINEAGE_REPS times (default 200);
 *   - `descendants` of each wide tree (one range scan of uq_event_id, then the
 *     tree), BENCH_LINEAGE_REPS and BENCH_LINEAGE_SCATTERED_REPS (50) times;
 *   - the audit of the depot with the MariaDB look-ups, in events/s, beside a
 *     plain sequential read of the same table. Depots only: the bulk events
 *     would need a balances read model built to match, which is not the
 *     lineage's cost.
 * The throw-away database `beds_bench_lineage` is dropped before and after.
 */
import { Effect, Exit, Layer, Scope } from "effect"
import * as mariadb from "mariadb"
import { accounts } from "../depots/accounts.ts"
import { partitionOf } from "../src/depot/depot.ts"
import type { Event } from "../src/depot/event.ts"
import * as MariaDbDepot from "../src/depot/mariadb.ts"
import { DepotStore } from "../src/depot/store.ts"
import { type AuditProgress, type AuditReport, audit } from "../src/lineage/audit.ts"
import * as AuditMariaDb from "../src/lineage/audit-mariadb.ts"
import * as Lineage from "../src/lineage/lineage-id.ts"
import { ancestors, buildTree, descendants } from "../src/lineage/query.ts"
import * as MariaDb from "../src/mariadb/client.ts"
import * as MemoryModels from "../src/readmodel/memory.ts"
import { ReadModelStore } from "../src/readmodel/store.ts"
import type { Declarations } from "../src/runtime/engine.ts"
import { dropDatabase, fillEvents, fmt, peakRssMb, progress, summarize } from "./support.ts"

const settings: MariaDb.MariaDbSettings = {
  host: "127.0.0.1",
  port: 3306,
  user: "root",
  password: "",
  database: "beds_bench_lineage",
  pool: 8,
  connect_timeout_ms: 5000,
}

const ACCOUNTS = 10_000
/** The topology named in derived IDs (the audit of depots does not ask whether it is declared). */
const TOPOLOGY = "t"
const DEPTH = 10
const FANOUT = 10
const WIDE = 10_000
const WARMUP = 5
const COLUMNS = "depot, part, off, id, type, `key`, version, payload, time, parent, root, message_id, metadata"

const TARGET_ANCESTORS_MS = 5
const TARGET_DESCENDANTS_MS = 100
const TARGET_AUDIT_PER_SEC = 100_000

export interface Latency {
  readonly p50: number
  readonly p99: number
}

/** Descendants of one event as the library answers (range scan + tree), its two halves apart, and the raw scan. */
export interface DescendantsFigures {
  readonly id: string
  readonly reps: number
  readonly library: Latency
  readonly storeRange: Latency
  readonly tree: Latency
  readonly raw: Latency
}

export interface LineageBenchResult {
  readonly events: number
  readonly reps: number
  readonly fillPerSec: number
  /** Data and indexes of beds_event, and the InnoDB buffer pool, in MB. */
  readonly tableMb: number
  readonly bufferPoolMb: number
  readonly deepId: string
  readonly ancestors: Latency
  readonly rawAncestors: Latency
  readonly burst: DescendantsFigures
  readonly scattered: DescendantsFigures
  readonly audit: { readonly perSec: number; readonly seconds: number; readonly report: AuditReport }
  readonly rawReadPerSec: number
  readonly rssMb: number
}

/** The roots of the cascades: the chain 10 deep, the wide tree appended together, the one scattered. */
type Root = "deep" | "burst" | "scattered"

/** A derived event: its root and its path below it. */
interface Derived {
  readonly root: Root
  readonly path: string
}

/** The chain 10 deep. */
const chain = (): Array<Derived> =>
  Array.from({ length: DEPTH }, (_, d) => ({ root: "deep", path: `/${TOPOLOGY}.0`.repeat(d + 1) }))

/** 10,000 descendants, FANOUT per parent, in breadth-first order: every parent comes before its children. */
const wideTree = (root: Root): Array<Derived> => {
  const out: Array<Derived> = []
  const queue = [""]
  for (let q = 0; out.length < WIDE; q++) {
    const parent = queue[q] as string
    for (let c = 0; c < FANOUT && out.length < WIDE; c++) {
      const path = `${parent}/${TOPOLOGY}.${c}`
      out.push({ root, path })
      queue.push(path)
    }
  }
  return out
}

/**
 * The events, as the depot and a topology would have written them: per-partition
 * offsets, per-key versions, derived IDs with their parent and root fields and
 * their ID as message_id, one time for all (a derived event carries its parent's).
 * Bulk event 0 is the root of the chain and bulk event 1 that of the scattered
 * tree: one of their derived events follows every `stride` bulk events, over the
 * whole table. The bulk event in the middle is the root of the burst tree: its
 * descendants follow it, one after each bulk event, as a topology emitting them
 * while other traffic goes on would append them.
 */
const eventRows = function* (n: number) {
  const spread = [...chain(), ...wideTree("scattered")]
  const burst = wideTree("burst")
  const bulk = Math.max(3, n - spread.length - burst.length)
  const middle = Math.floor(bulk / 2)
  const stride = Math.max(1, Math.floor(bulk / spread.length))
  const heads = new Array<number>(accounts.partitions).fill(0)
  const versions = new Int32Array(ACCOUNTS)
  const partOfKey = Array.from({ length: ACCOUNTS }, (_, k) => partitionOf(`acc-${k}`, accounts.partitions))
  const roots = new Map<Root, string>()
  const time = Date.now()
  let nextSpread = 0
  let nextBurst = 0
  let sequence = 0
  const row = (
    k: number,
    type: string,
    payload: unknown,
    id: (part: number, off: number) => string,
    messageId?: string,
  ) => {
    const part = partOfKey[k] as number
    const off = heads[part] as number
    heads[part] = off + 1
    versions[k] = (versions[k] as number) + 1
    const lineageId = id(part, off)
    return [
      "accounts",
      part,
      off,
      lineageId,
      type,
      `acc-${k}`,
      versions[k],
      JSON.stringify(payload),
      time,
      Lineage.parentOf(lineageId) ?? null,
      Lineage.rootOf(lineageId),
      messageId ?? lineageId,
      "{}",
    ]
  }
  const derivedRow = (d: Derived) =>
    row(sequence++ % ACCOUNTS, "Deposited", { amount: 1 }, () => `${roots.get(d.root)}${d.path}`)
  for (let i = 0; i < bulk; i++) {
    const k = i % ACCOUNTS
    const r = row(
      k,
      i < ACCOUNTS ? "Opened" : i % 5 === 0 ? "Withdrawn" : "Deposited",
      i < ACCOUNTS ? { owner: `owner-${i}` } : { amount: 1 + (i % 997) },
      (part, off) => Lineage.root("accounts", part, off),
      `m-${i}`,
    )
    if (i === 0) roots.set("deep", r[3] as string)
    if (i === 1) roots.set("scattered", r[3] as string)
    if (i === middle) roots.set("burst", r[3] as string)
    yield r
    if (i >= 1 && (i + 1) % stride === 0 && nextSpread < spread.length)
      yield derivedRow(spread[nextSpread++] as Derived)
    if (i >= middle && nextBurst < burst.length) yield derivedRow(burst[nextBurst++] as Derived)
  }
  while (nextSpread < spread.length) yield derivedRow(spread[nextSpread++] as Derived)
  while (nextBurst < burst.length) yield derivedRow(burst[nextBurst++] as Derived)
  return {
    events: bulk + spread.length + burst.length,
    heads,
    deepId: `${roots.get("deep")}${`/${TOPOLOGY}.0`.repeat(DEPTH)}`,
    burstId: roots.get("burst") as string,
    scatteredId: roots.get("scattered") as string,
  }
}

/** Runs `op` WARMUP times unmeasured, then `reps` times; p50/p99 in ms. */
const measure = async (label: string, reps: number, op: () => Promise<void>): Promise<Latency> => {
  for (let i = 0; i < WARMUP; i++) await op()
  const latencies = new Float64Array(reps)
  const bar = progress(label, reps)
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now()
    await op()
    latencies[i] = performance.now() - t0
    bar.update(i + 1)
  }
  bar.stop()
  return summarize(latencies)
}

/** Reads every partition in offset order, 10,000 rows per query, with the plain driver. */
const rawRead = async (conn: mariadb.Connection, heads: ReadonlyArray<number>): Promise<number> => {
  const total = heads.reduce((a, b) => a + b, 0)
  const bar = progress("raw sequential read", total)
  const t0 = performance.now()
  let done = 0
  for (let p = 0; p < heads.length; p++)
    for (let from = 0; from < (heads[p] as number); from += 10_000) {
      const rows: Array<unknown> = await conn.query(
        {
          sql: `SELECT ${COLUMNS} FROM beds_event WHERE depot = ? AND part = ? AND off >= ? ORDER BY off LIMIT ?`,
          rowsAsArray: true,
        },
        ["accounts", p, from, 10_000],
      )
      done += rows.length
      bar.update(done)
    }
  bar.stop()
  return total / ((performance.now() - t0) / 1000)
}

export const runLineageBench = async (n: number, reps: number, scatteredReps: number): Promise<LineageBenchResult> => {
  await dropDatabase(settings.database)
  const scope = await Effect.runPromise(Scope.make())
  try {
    const ctx = await Effect.runPromise(Layer.buildWithScope(MariaDb.layer(settings), scope))
    const { depot, lookups } = await Effect.runPromise(
      Effect.gen(function* () {
        const depot = yield* MariaDbDepot.make()
        yield* depot.open([accounts])
        return { depot, lookups: yield* AuditMariaDb.lookups }
      }).pipe(Effect.provideContext(ctx)),
    )
    const fill = await fillEvents(settings, n, eventRows(n))
    const filled = { ...fill.result, perSec: fill.perSec }
    const run = <A, E>(effect: Effect.Effect<A, E, DepotStore>) =>
      Effect.runPromise(Effect.provideService(effect, DepotStore, depot))
    const conn = await mariadb.createConnection({ ...settings, bigIntAsNumber: true })
    try {
      await conn.query("ANALYZE TABLE beds_event")
      const sizes: Array<Array<number>> = await conn.query(
        {
          sql: "SELECT (SELECT data_length + index_length FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'beds_event'), @@innodb_buffer_pool_size",
          rowsAsArray: true,
        },
        [],
      )
      const [tableBytes, poolBytes] = (sizes[0] ?? []).map(Number) as [number, number]

      // Ancestors of the event 10 deep: the library, then the same 10 point reads pipelined on one connection.
      const ancestorsLatency = await measure("ancestors (10 deep)", reps, async () => {
        const found = await run(ancestors(filled.deepId))
        if (found.length !== DEPTH || found.some((a) => a.event === undefined))
          throw new Error(`ancestors of ${filled.deepId}: ${found.filter((a) => a.event).length}/${found.length} found`)
      })
      const chain = Lineage.ancestors(filled.deepId)
      const rawAncestors = await measure("raw point reads (driver)", reps, async () => {
        const rows = await Promise.all(
          chain.map((id) =>
            conn.query({ sql: `SELECT ${COLUMNS} FROM beds_event WHERE id = ?`, rowsAsArray: true }, [id]),
          ),
        )
        if (rows.some((r: Array<unknown>) => r.length !== 1)) throw new Error("raw point reads: an ancestor is missing")
      })

      // Descendants of an event with 10,000: the library (range scan + tree), its two halves apart, the raw scan.
      const descendantsOf = async (label: string, id: string, times: number): Promise<DescendantsFigures> => {
        const library = await measure(`descendants (${label})`, times, async () => {
          const d = await run(descendants(id))
          if (d.count !== WIDE || d.truncated) throw new Error(`descendants: ${d.count}, truncated ${d.truncated}`)
        })
        let scanned: ReadonlyArray<Event> = []
        const storeRange = await measure(`store range scan (${label})`, times, async () => {
          scanned = await Effect.runPromise(depot.descendants(id, WIDE + 1))
        })
        const top = await Effect.runPromise(depot.byId(id))
        const tree = await measure(`build tree (${label})`, times, async () => {
          const t = buildTree(id, top, scanned)
          if (t.children.length !== FANOUT) throw new Error(`tree: ${t.children.length} children at the top`)
        })
        const { lower, upper } = Lineage.descendantRange(id)
        const raw = await measure(`raw range scan (${label})`, times, async () => {
          const rows: Array<unknown> = await conn.query(
            {
              sql: `SELECT ${COLUMNS} FROM beds_event WHERE id >= ? AND id < ? ORDER BY id LIMIT ?`,
              rowsAsArray: true,
            },
            [lower, upper, WIDE + 1],
          )
          if (rows.length !== WIDE) throw new Error(`raw range scan: ${rows.length} rows`)
        })
        return { id, reps: times, library, storeRange, tree, raw }
      }
      const burst = await descendantsOf("appended together", filled.burstId, reps)
      const scattered = await descendantsOf("scattered", filled.scatteredId, scatteredReps)

      const rawReadPerSec = await rawRead(conn, filled.heads)
      // The audit of the depot (no read models): the MariaDB look-ups, default page size.
      const models = await Effect.runPromise(MemoryModels.make)
      const declarations: Declarations = { depots: [accounts], topologies: [], templates: [] }
      let bar: ReturnType<typeof progress> | undefined
      const onProgress = (p: AuditProgress) => {
        if (p.phase !== "events") return
        if (bar === undefined) bar = progress("audit (MariaDB look-ups)", p.total)
        bar.update(p.done)
      }
      const t0 = performance.now()
      const report = await Effect.runPromise(
        audit(declarations, { depots: ["accounts"], lookups, onProgress }).pipe(
          Effect.provideService(DepotStore, depot),
          Effect.provideService(ReadModelStore, models),
        ),
      )
      const seconds = (performance.now() - t0) / 1000
      bar?.stop()
      if (!report.ok || report.events !== filled.events)
        throw new Error(
          `the audit of the bench data is not clean (${report.events} events): ${JSON.stringify(report.violations.slice(0, 5))}`,
        )
      return {
        events: filled.events,
        reps,
        fillPerSec: filled.perSec,
        tableMb: tableBytes / 1024 / 1024,
        bufferPoolMb: poolBytes / 1024 / 1024,
        deepId: filled.deepId,
        ancestors: ancestorsLatency,
        rawAncestors,
        burst,
        scattered,
        audit: { perSec: report.events / seconds, seconds, report },
        rawReadPerSec,
        rssMb: peakRssMb(),
      }
    } finally {
      await conn.end()
    }
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    await dropDatabase(settings.database).catch(() => undefined)
  }
}

const ms = (l: Latency) => `p50 ${fmt(l.p50, 2).padStart(8)} ms  p99 ${fmt(l.p99, 2).padStart(8)} ms`
const line = (label: string, figures: string, note = "") => console.log(`  ${label.padEnd(52)} ${figures}${note}`)
const within = (l: Latency, target: number) =>
  `   target < ${target} ms: p50 ${l.p50 < target ? "met" : "MISSED"}, p99 ${l.p99 < target ? "met" : "MISSED"}`

export const printLineageBench = (r: LineageBenchResult) => {
  console.log(
    `\nLineage (MariaDB depot store, ${fmt(r.events)} events: ${fmt(r.tableMb)} MB of table and indexes, buffer pool ${fmt(r.bufferPoolMb)} MB; runs after ${WARMUP} warm-up runs each)`,
  )
  line("fill beds_event, multi-row INSERT", `${fmt(r.fillPerSec).padStart(12)} rows/s`)
  line(
    `ancestors of an event ${DEPTH} deep (${fmt(r.reps)} runs)`,
    ms(r.ancestors),
    within(r.ancestors, TARGET_ANCESTORS_MS),
  )
  line(`  raw: the ${DEPTH} point reads pipelined (driver)`, ms(r.rawAncestors))
  const descendantsLines = (what: string, d: DescendantsFigures) => {
    console.log(`  descendants of an event with ${fmt(WIDE)}, as a tree,`)
    line(`  ${what} (${fmt(d.reps)} runs)`, ms(d.library), within(d.library, TARGET_DESCENDANTS_MS))
    line("    the range scan through the depot store", ms(d.storeRange))
    line("    building the tree", ms(d.tree))
    line("    raw: the range scan (driver)", ms(d.raw))
  }
  descendantsLines("appended together, among other events", r.burst)
  descendantsLines("scattered over the whole table", r.scattered)
  line(
    "audit of the depot (no read models)",
    `${fmt(r.audit.perSec).padStart(12)} events/s`,
    `  (${fmt(r.audit.seconds, 2)} s)   target ≥ ${fmt(TARGET_AUDIT_PER_SEC)}/s: ${r.audit.perSec >= TARGET_AUDIT_PER_SEC ? "met" : "MISSED"}`,
  )
  line(
    "  raw: sequential read (driver)",
    `${fmt(r.rawReadPerSec).padStart(12)} events/s`,
    `  (the audit runs at ${fmt((100 * r.audit.perSec) / r.rawReadPerSec)}% of it)`,
  )
  line(
    "  checks",
    `${r.audit.report.checks
      .filter((c) => c.checked > 0)
      .map((c) => `${c.name} ${fmt(c.checked)}`)
      .join(", ")}: ${r.audit.report.ok ? "clean" : "VIOLATIONS"}`,
  )
  line("peak RSS", `${fmt(r.rssMb)} MB`)
}

/**
 * The section as bench/main.ts runs it: BENCH_LINEAGE events (default 1,000,000),
 * BENCH_LINEAGE_REPS runs (200), BENCH_LINEAGE_SCATTERED_REPS for the scattered tree (50: each run reads its pages).
 */
export const benchLineage = async () =>
  printLineageBench(
    await runLineageBench(
      Number(process.env.BENCH_LINEAGE ?? 1_000_000),
      Number(process.env.BENCH_LINEAGE_REPS ?? 200),
      Number(process.env.BENCH_LINEAGE_SCATTERED_REPS ?? 50),
    ),
  )
