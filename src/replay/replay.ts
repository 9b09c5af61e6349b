/**
 * Replay: rebuild a topology's read models from its depots beside the live
 * ones, then swap them in atomically — or build a snapshot of the models as
 * of an offset or a time, left beside the live ones.
 *
 * How the swap stays exactly-once while a live engine keeps running (in this
 * process or in another one):
 *
 *  1. Lock. One replay per topology: the store's replay lock (MariaDB: a
 *     named lock on a connection of its own, plus a row saying who holds it;
 *     it dies with the process, so a killed replay never leaves it behind).
 *
 *  2. Build. The topology runner itself folds the depot into the "shadow"
 *     copy (`<table>__shadow`): the same batching and per-key coalescing as
 *     live, large batches, `live: false` (no live-only side effects), its own
 *     checkpoints (`<topology>~shadow`) committed with its rows. Its target
 *     per partition is the *live* checkpoint, never the depot head: the shadow
 *     may only catch up with the live model, never pass it. Rounds repeat
 *     while the live model keeps moving, until the shadow is close behind.
 *     Killed at any point, the next run resumes from the shadow's checkpoint;
 *     a shadow built for another topology version or other templates (its
 *     fingerprint) is dropped and rebuilt.
 *
 *  3. Fence. The store bumps the topology's generation and marks it fenced.
 *     A live commit checks, inside its own transaction and under a shared
 *     lock the fence has to wait for, that the generation is the one its
 *     stream saw when it read its checkpoint; so once `fence` returns, no
 *     live commit is in flight and none can land. A live stream whose commit
 *     is refused re-reads its checkpoint, which waits while the fence stands
 *     and its lock is held. The live checkpoints L are now frozen.
 *
 *  4. Last catch-up to exactly L, then (with --verify) compare shadow and
 *     live at the same position, then check that L did not move.
 *
 *  5. Swap. One RENAME TABLE for all the topology's tables (MariaDB; memory:
 *     one synchronous step), then the shadow's checkpoints and record are
 *     dropped, the version recorded and the fence lowered. The live
 *     checkpoints need not move: the new tables are at exactly L, as were the
 *     old ones. So there is no instant at which tables and checkpoint
 *     disagree — even a crash between the rename and the bookkeeping leaves
 *     a consistent live model (the leftover shadow record is then rebuilt).
 *     Readers see the old tables or the new ones, never a half-built model.
 *
 * `full` replies stay truthful: an event acknowledged before the fence is
 * below L, and the new model contains everything below L; events after it
 * are applied by the live stream to the new model before their reply.
 *
 * Derived events: a handler's emits go through a writer that first looks the
 * child's lineage ID up (it is the child's message_id, the same on every
 * replay) and appends only children that do not exist yet — which happens
 * only when a new topology version emits something the old one did not.
 * Snapshots never append.
 */

import { createHash } from "node:crypto"
import * as os from "node:os"
import { Effect, Fiber, Schedule } from "effect"
import type { Event } from "../depot/event.ts"
import { DepotStore, type DepotStoreShape } from "../depot/store.ts"
import { DepotWriter, type DepotWriterShape } from "../depot/writer.ts"
import type { StoreError } from "../errors.ts"
import { type CheckpointId, ReadModelStore, type ReplayLockHolder, type RowDifference } from "../readmodel/store.ts"
import { SHADOW, variantTable } from "../readmodel/variant.ts"
import type { Declarations } from "../runtime/engine.ts"
import type { Template } from "../template/template.ts"
import * as Progress from "../topology/progress.ts"
import * as Runner from "../topology/runner.ts"
import type { Topology } from "../topology/topology.ts"
import { type Bound, resolveRanges, type SourceStream, type StreamRange, snapshotName } from "./bounds.ts"
import { ReplayError } from "./error.ts"

export { type Bound, parseBound } from "./bounds.ts"
export { ReplayError, type ReplayErrorCode, ReplayErrorCodes } from "./error.ts"

export interface ReplayOptions {
  readonly topology: string
  /** Build a snapshot from this bound (inclusive) instead of a shadow to swap in. */
  readonly from?: Bound | undefined
  /** Build a snapshot as of this bound (inclusive) instead of a shadow to swap in. */
  readonly to?: Bound | undefined
  /** Compare the rebuilt model with the live one before swapping; refuse to swap when they differ. */
  readonly verify?: boolean | undefined
  /** Swap even when --verify found differences. */
  readonly force?: boolean | undefined
  /** Events per batch (default 10,000). */
  readonly batchMax?: number | undefined
  readonly retries?: number | undefined
  readonly retryBaseMs?: number | undefined
  /** Who takes the lock (default: this host and process). */
  readonly holder?: ReplayLockHolder | undefined
  /** Appends first-time derived events (e.g. the engine's writer); default: the depot store directly. */
  readonly writer?: DepotWriterShape | undefined
  readonly onProgress?: ((p: ReplayProgress) => void) | undefined
  /** How often onProgress is called while building (default 500 ms). */
  readonly progressEveryMs?: number | undefined
  /** Differing rows reported per table by --verify (default 10). */
  readonly differences?: number | undefined
  /** Catch-up rounds before the fence goes up even if the live model keeps moving (default 20). */
  readonly maxRounds?: number | undefined
}

export type ReplayPhase = "build" | "catch-up" | "fenced" | "verify" | "swap" | "done"

export interface ReplayProgress {
  readonly topology: string
  readonly phase: ReplayPhase
  /** Events folded in this run. */
  readonly done: number
  /** Events to fold as far as known now (the live model may still move). */
  readonly total: number
  readonly perSec: number
  readonly etaSeconds: number | undefined
  readonly elapsedSeconds: number
}

export interface TableVerification {
  readonly template: string
  readonly differing: number
  readonly first: ReadonlyArray<RowDifference>
}

export interface ReplaySummary {
  readonly topology: string
  readonly version: number
  /** "swap": rebuilt and swapped in; "snapshot": built beside the live models and left there. */
  readonly mode: "swap" | "snapshot"
  readonly variant: string
  /** What the copy was built for; `variant(topology, templates, variant, fingerprint)` reopens a snapshot. */
  readonly fingerprint: string
  /** Where each template's rebuilt rows are now. */
  readonly tables: ReadonlyArray<{ readonly template: string; readonly table: string }>
  /** Events folded by this run (a resumed run counts only its own). */
  readonly events: number
  readonly seconds: number
  readonly perSec: number
  readonly rounds: number
  /** The copy existed from an earlier run of the same topology version and was continued. */
  readonly resumed: boolean
  /** An earlier copy built for another version or other templates was dropped first. */
  readonly droppedStale: boolean
  /** How long live commits of the topology were held back for the swap (swap mode). */
  readonly pausedMs: number
  /** Offsets covered per source partition: [from, to), `to` being where the live model continues. */
  readonly positions: ReadonlyArray<{
    readonly depot: string
    readonly partition: number
    readonly from: number
    readonly to: number
  }>
  readonly verify?: {
    readonly equal: boolean
    readonly forced: boolean
    readonly tables: ReadonlyArray<TableVerification>
  }
  /** Derived events: found already appended, appended now, or skipped (snapshots). */
  readonly derived: { readonly existing: number; readonly appended: number; readonly skipped: number }
  /** Events whose handler kept failing under the `park` policy. */
  readonly parked: ReadonlyArray<{ readonly id: string; readonly offset: number; readonly error: string }>
}

const streamKey = (depot: string, partition: number) => `${depot}/${partition}`

/** Identifies what a copy was built for: a copy with another fingerprint is stale. */
const fingerprintOf = (topology: Topology, templates: ReadonlyArray<Template>, extra: unknown): string =>
  createHash("sha256")
    .update(
      JSON.stringify({
        version: topology.version,
        templates: templates.map(({ file: _file, description: _d, ...t }) => t),
        extra,
      }),
    )
    .digest("hex")

interface DerivedCounts {
  existing: number
  appended: number
  skipped: number
}

const retryable = <A>(effect: Effect.Effect<A, StoreError>) =>
  effect.pipe(
    Effect.retry({
      while: (e) => e.retryable,
      schedule: Schedule.min([Schedule.exponential("20 millis", 2), Schedule.spaced("2 seconds")]),
    }),
  )

/**
 * The writer a replay's runner emits through: children already in the depot
 * (every child the live topology emitted) are answered as duplicates without
 * a write; others are appended, or skipped for snapshots.
 */
const replayWriter = (
  store: DepotStoreShape,
  counts: DerivedCounts,
  mode: "append" | "skip",
  delegate: DepotWriterShape | undefined,
): DepotWriterShape => {
  const writer: DepotWriterShape = {
    append: (depot, partition, request) =>
      Effect.gen(function* () {
        const existing = yield* retryable(store.byMessageId(depot, request.messageId))
        if (existing !== undefined) {
          counts.existing++
          return { _tag: "Appended", event: existing, duplicate: true } as const
        }
        if (mode === "skip") {
          counts.skipped++
          const event: Event = {
            id: request.childId ?? request.messageId,
            depot,
            partition,
            offset: -1,
            type: request.type,
            key: request.key,
            version: 0,
            payload: request.payload,
            time: request.time,
            parent: request.parent ?? null,
            root: request.parent ?? request.messageId,
            messageId: request.messageId,
            metadata: {},
          }
          return { _tag: "Appended", event, duplicate: false } as const
        }
        counts.appended++
        if (delegate !== undefined) return yield* delegate.append(depot, partition, request)
        const [outcome] = yield* retryable(store.append(depot, partition, [request]))
        return outcome as NonNullable<typeof outcome>
      }),
    appendWith: (depot, partition, request, done) =>
      void Effect.runFork(Effect.match(writer.append(depot, partition, request), { onFailure: done, onSuccess: done })),
    listen: () => Effect.void,
    stats: () => ({ commits: counts.appended, appends: counts.appended }),
  }
  return writer
}

/** Events per replay batch unless asked otherwise: many coalesce into each row written. */
export const DEFAULT_BATCH = 100_000

/** The declared topology of that name, or UNKNOWN_TOPOLOGY naming the known ones. */
export const findTopology = (declarations: Declarations, name: string): Topology | ReplayError =>
  declarations.topologies.find((t) => t.name === name) ??
  new ReplayError({
    code: "UNKNOWN_TOPOLOGY",
    message: `No topology named ${JSON.stringify(name)} is declared in projections/; known: ${declarations.topologies.map((t) => t.name).join(", ") || "none"}.`,
  })

/** Rebuilds (and swaps in) or snapshots a topology's read models; see the module comment. */
export const replay = (
  declarations: Declarations,
  options: ReplayOptions,
): Effect.Effect<ReplaySummary, ReplayError | StoreError, DepotStore | ReadModelStore> =>
  Effect.scoped(
    Effect.gen(function* () {
      const t0 = performance.now()
      const topology = findTopology(declarations, options.topology)
      if (topology instanceof ReplayError) return yield* topology
      const snapshot = options.from !== undefined || options.to !== undefined
      if (snapshot && options.verify === true)
        return yield* new ReplayError({
          code: "BAD_OPTIONS",
          message:
            "--verify compares a rebuilt model with the live one before a swap; a snapshot (--from/--to) is a different model by design and is never swapped. Leave out --verify or the range.",
        })
      const depots = yield* DepotStore
      const live = yield* ReadModelStore
      const ops = live.replay
      if (ops === undefined)
        return yield* new ReplayError({
          code: "REPLAY_UNSUPPORTED",
          message: `The configured read-model store has no blue/green operations, so topology ${topology.name} cannot be replayed beside its live models.`,
        })
      const templates = topology.readModels.map(
        (name) => declarations.templates.find((t) => t.name === name) as Template,
      )
      const refusal = ops.refusal?.(topology.name, templates)
      if (refusal !== undefined) return yield* new ReplayError({ code: "REPLAY_UNSUPPORTED", message: refusal })
      yield* depots.open(declarations.depots)
      // A live table that no longer fits its template is what a rebuild replaces: only --verify needs it to fit.
      yield* live.ensure(templates).pipe(
        Effect.catchIf(
          (e) => e.code === "SCHEMA_DRIFT" && !snapshot && options.verify !== true,
          () => Effect.void,
        ),
      )

      const holder = options.holder ?? { host: os.hostname(), pid: process.pid, since: Date.now() }
      const locked = yield* ops.lock(topology.name, holder)
      if (!locked.acquired) {
        const h = locked.holder
        return yield* new ReplayError({
          code: "REPLAY_RUNNING",
          message: `A replay of topology ${topology.name} is already running${h === undefined ? "" : ` (host ${h.host}, pid ${h.pid}, since ${new Date(h.since).toISOString()})`}. Wait for it to finish, or stop that process; a killed replay releases its lock.`,
          details: { holder: h },
        })
      }
      // A fence left up by a replay that died: its lock is gone, so live streams already ignore it.
      const record = yield* ops.record(topology.name)
      if (record?.fenced === true) yield* ops.unfence(topology.name)

      const streams: Array<SourceStream> = []
      for (const d of topology.sources)
        for (let p = 0; p < d.partitions; p++)
          streams.push({ depot: d.name, partition: p, head: yield* depots.head(d.name, p) })
      const cp = (s: { depot: string; partition: number }): CheckpointId => ({
        topology: topology.name,
        depot: s.depot,
        partition: s.partition,
      })

      const ranges: ReadonlyArray<StreamRange> | undefined = snapshot
        ? yield* resolveRanges(streams, options.from, options.to, depots.read)
        : undefined
      const variant = snapshot ? snapshotName(options.from, options.to) : SHADOW
      const fingerprint = fingerprintOf(
        topology,
        templates,
        ranges?.map((r) => [r.depot, r.partition, r.from, r.until]),
      )
      const handle = yield* ops.variant(topology.name, templates, variant, fingerprint)
      const copy = handle.store
      if (ranges !== undefined && !handle.resumed)
        for (const r of ranges) if (r.from > 0) yield* copy.commit(cp(r), r.from, [])

      const starts = new Map<string, number>()
      for (const s of streams) starts.set(streamKey(s.depot, s.partition), yield* copy.checkpoint(cp(s)))
      const targets = new Map<string, number>(starts)
      const counts: DerivedCounts = { existing: 0, appended: 0, skipped: 0 }
      const writer = replayWriter(depots, counts, snapshot ? "skip" : "append", options.writer)
      const parked: Array<{ id: string; offset: number; error: string }> = []
      let phase: ReplayPhase = "build"
      let positions = new Map<string, number>(starts)
      const doneSoFar = () => {
        let n = 0
        for (const [k, start] of starts) n += (positions.get(k) ?? start) - start
        return n
      }
      const totalSoFar = () => {
        let n = 0
        for (const [k, start] of starts) n += Math.max(0, (targets.get(k) ?? start) - start)
        return n
      }
      const report = () => {
        if (options.onProgress === undefined) return
        const elapsed = (performance.now() - t0) / 1000
        const done = doneSoFar()
        const total = Math.max(done, totalSoFar())
        const perSec = elapsed > 0 ? done / elapsed : 0
        options.onProgress({
          topology: topology.name,
          phase,
          done,
          total,
          perSec,
          etaSeconds: perSec > 0 ? (total - done) / perSec : undefined,
          elapsedSeconds: elapsed,
        })
      }

      /** Runs the copy's streams to `targets` with the topology runner and waits for them to stop. */
      const runToTargets = Effect.scoped(
        Effect.gen(function* () {
          const runner = yield* Runner.make([topology], templates, declarations.depots, {
            batchMax: options.batchMax ?? DEFAULT_BATCH,
            // A replay reads nothing but history: its batch size is the one asked for.
            catchUpBatchMax: options.batchMax ?? DEFAULT_BATCH,
            retries: options.retries ?? 5,
            retryBaseMs: options.retryBaseMs ?? 50,
            live: false,
            until: (depot, partition) => targets.get(streamKey(depot, partition)) ?? 0,
          }).pipe(
            Effect.provideService(ReadModelStore, copy),
            Effect.provideService(DepotWriter, writer),
            Effect.provideService(Progress.Progress, Progress.make()),
          )
          const sample = () => {
            positions = new Map(runner.status().map((s) => [streamKey(s.depot, s.partition), s.next]))
          }
          // The runner restarts a stream that died, as it must live; a replay stops instead and says so.
          const died = Effect.gen(function* () {
            while (true) {
              yield* Effect.sleep(Math.min(options.progressEveryMs ?? 500, 100))
              const failed = runner.status().find((s) => s.restarts > 0)
              if (failed !== undefined)
                return yield* new ReplayError({
                  code: "REPLAY_FAILED",
                  message: `Rebuilding topology ${topology.name} failed on ${failed.depot}/${failed.partition} at offset ${failed.next} (the log above says why). The live models are untouched and the rebuilt copy keeps its progress; fix the cause and run the replay again.`,
                })
            }
          })
          const ticker = yield* Effect.forkScoped(
            Effect.forever(
              Effect.andThen(
                Effect.sleep(options.progressEveryMs ?? 500),
                Effect.sync(() => {
                  sample()
                  report()
                }),
              ),
            ),
          )
          yield* Effect.raceFirst((runner.finished ?? Effect.never).pipe(Effect.orDie), died)
          yield* Fiber.interrupt(ticker)
          sample()
          const statuses = runner.status()
          for (const s of statuses) parked.push(...s.parked)
          const halted = statuses.find((s) => s.state === "halted")
          if (halted !== undefined)
            return yield* new ReplayError({
              code: "REPLAY_HALTED",
              message: `Topology ${topology.name} halted on ${halted.depot}/${halted.partition} at offset ${halted.next} during the replay: ${halted.error}. The live models are untouched and the rebuilt copy keeps its progress; fix the handler and run the replay again.`,
              details: { depot: halted.depot, partition: halted.partition, offset: halted.next, error: halted.error },
            })
          const short = statuses.find((s) => s.next < (targets.get(streamKey(s.depot, s.partition)) ?? 0))
          if (short !== undefined)
            return yield* new ReplayError({
              code: "REPLAY_FAILED",
              message: `Rebuilding topology ${topology.name} stopped on ${short.depot}/${short.partition} at offset ${short.next}, short of ${targets.get(streamKey(short.depot, short.partition))}. The live models are untouched; run the replay again.`,
            })
        }),
      )

      const peekLive = Effect.gen(function* () {
        const out = new Map<string, number>()
        for (const s of streams) out.set(streamKey(s.depot, s.partition), yield* ops.peekCheckpoint(cp(s)))
        return out
      })
      const copyAheadOf = (frozen: ReadonlyMap<string, number>) =>
        [...positions].find(([k, at]) => at > (frozen.get(k) ?? 0))

      let rounds = 0
      let pausedMs = 0
      let verification: ReplaySummary["verify"]

      if (ranges !== undefined) {
        for (const r of ranges) targets.set(streamKey(r.depot, r.partition), r.until)
        rounds = 1
        yield* runToTargets
      } else {
        // Catch up with the live model while it keeps moving; each round aims at where it stands now.
        const maxRounds = options.maxRounds ?? 20
        // What is left for the fenced last round, while live commits wait: kept small whatever the batch size.
        const slack = Math.max(1000, Math.min(options.batchMax ?? DEFAULT_BATCH, 10_000))
        while (true) {
          const at = yield* peekLive
          const ahead = copyAheadOf(at)
          if (ahead !== undefined)
            return yield* liveMoved(
              topology.name,
              `the live checkpoint of ${ahead[0]} went back below the rebuilt copy (${ahead[1]}); was the live model reset?`,
              ops.dropVariant(topology.name, topology.readModels, SHADOW),
            )
          let behind = 0
          for (const [k, target] of at) behind += target - (positions.get(k) ?? 0)
          if (rounds > 0 && (behind <= slack || rounds >= maxRounds)) break
          for (const [k, target] of at) targets.set(k, target)
          phase = rounds === 0 ? "build" : "catch-up"
          rounds++
          yield* runToTargets
          report()
        }

        // Fenced from here to the swap; the fence comes down on any exit that did not swap.
        const fencedAt = performance.now()
        let swapped = false
        phase = "fenced"
        yield* Effect.acquireRelease(ops.fence(topology.name), () =>
          swapped ? Effect.void : Effect.ignore(ops.unfence(topology.name)),
        )
        const frozen = yield* peekLive
        const ahead = copyAheadOf(frozen)
        if (ahead !== undefined)
          return yield* liveMoved(
            topology.name,
            `the live checkpoint of ${ahead[0]} is below the rebuilt copy (${ahead[1]}); was the live model reset?`,
            ops.dropVariant(topology.name, topology.readModels, SHADOW),
          )
        for (const [k, target] of frozen) targets.set(k, target)
        rounds++
        yield* runToTargets
        report()
        // The swap keeps the live checkpoints, so the copy must stand exactly at them, as stored.
        for (const s of streams) {
          const at = yield* copy.checkpoint(cp(s))
          const want = frozen.get(streamKey(s.depot, s.partition)) ?? 0
          if (at !== want)
            return yield* new ReplayError({
              code: "REPLAY_FAILED",
              message: `The rebuilt copy of topology ${topology.name} stands at ${at} on ${s.depot}/${s.partition}, not at the live checkpoint ${want}; nothing was swapped. Run the replay again.`,
            })
        }

        if (options.verify === true) {
          phase = "verify"
          report()
          const tables: Array<TableVerification> = []
          for (const name of topology.readModels) {
            const d = yield* ops.diff(name, SHADOW, options.differences ?? 10)
            tables.push({ template: name, differing: d.count, first: d.first })
          }
          const equal = tables.every((t) => t.differing === 0)
          verification = { equal, forced: !equal && options.force === true, tables }
          if (!equal && options.force !== true)
            return yield* new ReplayError({
              code: "VERIFY_MISMATCH",
              message: `The rebuilt model of topology ${topology.name} differs from the live one: ${tables
                .filter((t) => t.differing > 0)
                .map(
                  (t) =>
                    `${t.template}: ${t.differing} row(s), first key(s) ${t.first
                      .slice(0, 5)
                      .map((d) => JSON.stringify(d.key.length === 1 ? d.key[0] : d.key))
                      .join(", ")}`,
                )
                .join(
                  "; ",
                )}. Nothing was swapped; the rebuilt copy is kept, so a second run with --force swaps it in quickly.`,
              details: verification,
            })
        }

        const now = yield* peekLive
        const moved = [...now].find(([k, at]) => at !== frozen.get(k))
        if (moved !== undefined)
          return yield* liveMoved(
            topology.name,
            `the live checkpoint of ${moved[0]} moved from ${frozen.get(moved[0])} to ${moved[1]} while fenced (was the replay lock lost?)`,
            Effect.void,
          )
        phase = "swap"
        yield* ops.swap(topology.name, topology.readModels, topology.version)
        swapped = true
        pausedMs = performance.now() - fencedAt
      }

      phase = "done"
      report()
      const seconds = (performance.now() - t0) / 1000
      const events = doneSoFar()
      return {
        topology: topology.name,
        version: topology.version,
        mode: snapshot ? "snapshot" : "swap",
        variant,
        fingerprint,
        tables: topology.readModels.map((name) => ({
          template: name,
          table: snapshot ? variantTable(name, variant) : name,
        })),
        events,
        seconds,
        perSec: seconds > 0 ? events / seconds : 0,
        rounds,
        resumed: handle.resumed,
        droppedStale: handle.dropped,
        pausedMs,
        positions: streams.map((s) => ({
          depot: s.depot,
          partition: s.partition,
          from: ranges?.find((r) => r.depot === s.depot && r.partition === s.partition)?.from ?? 0,
          to: positions.get(streamKey(s.depot, s.partition)) ?? 0,
        })),
        ...(verification === undefined ? {} : { verify: verification }),
        derived: { ...counts },
        parked,
      } satisfies ReplaySummary
    }),
  )

const liveMoved = <R>(topology: string, why: string, cleanup: Effect.Effect<void, StoreError, R>) =>
  Effect.andThen(
    Effect.ignore(cleanup),
    Effect.fail(
      new ReplayError({
        code: "LIVE_MOVED",
        message: `Replay of topology ${topology} stopped before the swap: ${why}. The live models are untouched; run the replay again.`,
      }),
    ),
  )
