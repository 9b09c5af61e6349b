/**
 * Runs declared topologies: one fiber per (topology, source depot,
 * partition), in offset order, in batches. A batch is folded in memory —
 * each touched row is loaded once and written once — and its rows are
 * committed together with the checkpoint (see the read-model port), so every
 * event takes effect exactly once however often the runner restarts.
 *
 * Derived events are appended before the checkpoint commit; their lineage IDs
 * double as message_ids, so a batch re-run after a crash finds them already
 * appended and appends nothing twice.
 */

import { Cause, Context, Duration, Effect, Fiber, Layer, Schedule } from "effect"
import type { Depot } from "../depot/depot.ts"
import * as DepotDecl from "../depot/depot.ts"
import type { Event } from "../depot/event.ts"
import { DepotStore } from "../depot/store.ts"
import { DepotWriter } from "../depot/writer.ts"
import type { StoreError } from "../errors.ts"
import { getOrCreate } from "../internal/map.ts"
import * as Lineage from "../lineage/lineage-id.ts"
import { type CheckpointId, ReadModelStore, type RowWrite } from "../readmodel/store.ts"
import {
  checkRow,
  keyId,
  keyOf,
  LAST_EVENT_COLUMN,
  type Row,
  type RowKey,
  type Template,
} from "../template/template.ts"
import { Progress } from "./progress.ts"
import {
  asFailure,
  MISSING,
  type Step,
  type StepContext,
  type Topology,
  type TopologyContext,
  TopologyFailure,
} from "./topology.ts"

export interface RunnerOptions {
  readonly batchMax: number
  /**
   * Batch size while a stream reads history from the store rather than the
   * live tail (start-up catch-up, replays): bigger batches coalesce more
   * events per row. Default: 25 × batchMax.
   */
  readonly catchUpBatchMax?: number | undefined
  /**
   * Live streams under load wait up to this long for a short batch to fill,
   * so read models take fewer, larger transactions. "Under load": the
   * stream committed within the last few lingers; an idle stream folds at
   * once, so a lone command's `full` reply never waits for it.
   */
  readonly lingerMs?: number | undefined
  /**
   * The linger while a `full` reply waits on the stream's partition (at
   * most `lingerMs`; default `lingerMs`): `full` pays a short linger in
   * latency, while commands nobody waits on for the read models let the
   * stream batch longer.
   */
  readonly lingerFullMs?: number | undefined
  /**
   * Rows a stream keeps between batches, per template, instead of loading
   * them again (only where the store checks `seen`, see the read-model port,
   * and only rows whose key belongs to the stream's partition). A row
   * another writer changed is caught at commit by its new last-event ID; a
   * row edited by hand with its last-event ID left as it was is not, and is
   * overwritten from the kept copy at its next event. Default: 0 (off).
   */
  readonly keepRows?: number | undefined
  /** Retries of a failing handler before the topology's policy applies. */
  readonly retries: number
  readonly retryBaseMs: number
  /** False for a replay: live-only side effects are skipped. */
  readonly live: boolean
  /**
   * Replays: the offset (exclusive) at which a stream stops instead of
   * waiting for appends; read once per batch, so a batch never passes it.
   */
  readonly until?: ((depot: string, partition: number) => number) | undefined
}

/** The state of one (topology, depot, partition) stream. */
export interface StreamStatus {
  readonly topology: string
  readonly depot: string
  readonly partition: number
  readonly next: number
  readonly state: "running" | "halted"
  readonly error?: string | undefined
  /** Events whose handler kept failing under the `park` policy, kept for inspection. */
  readonly parked: ReadonlyArray<{ readonly id: string; readonly offset: number; readonly error: string }>
  /** Times the stream died and was restarted by its supervisor. */
  readonly restarts: number
}

export interface TopologyRunnerShape {
  readonly status: () => ReadonlyArray<StreamStatus>
  /** Ends when every stream has stopped (reached `until`, or halted); a stream that died is restarted, not ended. */
  readonly finished?: Effect.Effect<void, unknown> | undefined
}

export class TopologyRunner extends Context.Service<TopologyRunner, TopologyRunnerShape>()("beds/TopologyRunner") {}

type Emit = { readonly depot: string; readonly type: string; readonly key: string; readonly payload: unknown }

/** What an applied event left besides its rows (which go straight into the batch). */
interface Staged {
  emits: Array<Emit> | undefined
  reply: unknown
  hasReply: boolean
}

/**
 * A batch being folded: every row it loaded or wrote (null: absent or
 * deleted), and the keys of the rows it wrote.
 */
interface Batch {
  readonly cache: Map<string, Map<string, Row | null>>
  readonly dirty: Map<string, Map<string, RowKey>>
  /** Rows of conditional templates as the store held them when the batch got them (see RowWrite.seen). */
  readonly seen: Map<string, Map<string, string | null>>
}

/** Loads rows of a template the batch does not hold yet into its cache. */
type Fill = (batch: Batch, template: string, keys: ReadonlyMap<string, RowKey>) => Effect.Effect<void, StoreError>

const NO_REPLIES: ReadonlyArray<unknown> = []

/** Events per read of history; a catch-up batch folds several before it commits. */
const READ_CHUNK = 10_000

/** A stream that ran this long before it failed is restarted as promptly as a first failure. */
const HEALTHY_MS = 30_000

/** Events kept per partition for live streams; a stream further behind reads the store. */
const TAIL_MAX = 20_000

const loadFailure = (e: StoreError) => new TopologyFailure(e.message, e.retryable)

/** Starts every topology's streams; they stop when the Layer's scope closes. */
export const make = (
  topologies: ReadonlyArray<Topology>,
  templates: ReadonlyArray<Template>,
  depots: ReadonlyArray<Depot>,
  options: RunnerOptions,
) =>
  Effect.gen(function* () {
    const store = yield* DepotStore
    const models = yield* ReadModelStore
    const writer = yield* DepotWriter
    const progress = yield* Progress
    const templateByName = new Map(templates.map((t) => [t.name, t]))
    const depotByName = new Map(depots.map((d) => [d.name, d]))
    type MutableStatus = { -readonly [K in keyof StreamStatus]: StreamStatus[K] } & {
      parked: Array<{ id: string; offset: number; error: string }>
    }
    const statuses = new Map<string, MutableStatus>()

    // Wake-ups: a stream that caught up sleeps until its partition's head moves.
    const wakers = new Map<string, Array<() => void>>()
    // The newest events of each partition as the writer committed them: live
    // streams read them from here instead of querying (and decoding) the store.
    const tails = new Map<string, { first: number; events: Array<Event> }>()
    /** The tail's events from `next` (none when `next` is its end), or undefined where it does not reach. */
    const fromTail = (depot: string, partition: number, next: number, limit: number) => {
      const tail = tails.get(`${depot}/${partition}`)
      if (tail === undefined || next < tail.first || next > tail.first + tail.events.length) return undefined
      const start = next - tail.first
      return tail.events.slice(start, start + limit)
    }
    yield* writer.listen((depot, partition, events) => {
      const key = `${depot}/${partition}`
      const first = (events[0] as Event).offset
      const tail = tails.get(key)
      if (tail !== undefined && tail.first + tail.events.length === first) for (const e of events) tail.events.push(e)
      else tails.set(key, { first, events: [...events] })
      const t = tails.get(key) as { first: number; events: Array<Event> }
      if (t.events.length > TAIL_MAX) {
        const drop = t.events.length - TAIL_MAX / 2
        t.events = t.events.slice(drop)
        t.first += drop
      }
      const list = wakers.get(key)
      if (list && list.length > 0) {
        wakers.set(key, [])
        for (const w of list) w()
      }
    })
    /** Sleeps until the partition's head passes `next`; false when only the safety poll woke it. */
    const waitForAppend = (depot: string, partition: number, next: number) =>
      Effect.callback<boolean>((resume) => {
        const key = `${depot}/${partition}`
        const list = wakers.get(key) ?? []
        let done = false
        const wake = (appended: boolean) => {
          if (!done) {
            done = true
            resume(Effect.succeed(appended))
          }
        }
        list.push(() => wake(true))
        wakers.set(key, list)
        // Re-check after registering: an append may have landed in between. The
        // tail answers without a query once the writer has committed anything.
        const tail = tails.get(key)
        if (tail !== undefined) {
          if (tail.first + tail.events.length > next) wake(true)
        } else
          Effect.runFork(
            Effect.flatMap(store.head(depot, partition), (head) => Effect.sync(() => head > next && wake(true))).pipe(
              Effect.ignore,
            ),
          )
        // A slow safety poll covers appends made by another process, which the tail does not see:
        // after it the stream asks the store.
        const timer = setTimeout(() => wake(false), 1000)
        return Effect.sync(() => clearTimeout(timer))
      })

    for (const t of topologies)
      for (const name of t.readModels)
        if (!templateByName.has(name))
          return yield* Effect.die(
            new Error(`Topology "${t.name}" writes template "${name}", which is not declared in templates/.`),
          )

    const runStream = (topology: Topology, depot: Depot, partition: number) =>
      Effect.gen(function* () {
        const cp: CheckpointId = { topology: topology.name, depot: depot.name, partition }
        const key = `${topology.name}|${depot.name}/${partition}`
        const status: MutableStatus = statuses.get(key) ?? {
          topology: topology.name,
          depot: depot.name,
          partition,
          next: 0,
          state: "running" as "running" | "halted",
          error: undefined as string | undefined,
          parked: [] as Array<{ id: string; offset: number; error: string }>,
          restarts: 0,
        }
        status.state = "running"
        statuses.set(key, status)
        let next = yield* retryStore(models.checkpoint(cp))
        status.next = next
        progress.advance(topology.name, depot.name, partition, next, next, NO_REPLIES)
        const singleKeyModels = topology.readModels.filter((n) => templateByName.get(n)?.key.length === 1)
        // Rows of conditional templates are written with what the batch saw of them, so the rows of
        // this partition's keys can be kept from one batch to the next: a change made behind the
        // stream's back fails the commit (ROW_CONFLICT), and the batch is folded again from the store.
        const conditional = new Set(topology.readModels.filter((n) => models.conditional?.(n) === true))
        const keepRows = options.keepRows ?? 0
        const keepable = keepRows > 0 ? singleKeyModels.filter((n) => conditional.has(n)) : []
        const kept = new Map<string, Map<string, Row | null>>()
        const fill: Fill = (b, template, keys) => {
          const into = getOrCreate(b.cache, template, () => new Map<string, Row | null>())
          const seen = conditional.has(template) ? getOrCreate(b.seen, template, () => new Map()) : undefined
          const see = (id: string, row: Row | null) => {
            const last = row === null ? null : row[LAST_EVENT_COLUMN]
            if (seen !== undefined && (last === null || typeof last === "string")) seen.set(id, last)
          }
          const keep = kept.get(template)
          let wanted = keys
          if (keep !== undefined && keep.size > 0) {
            const rest = new Map<string, RowKey>()
            for (const [id, key] of keys) {
              const row = keep.get(id)
              if (row === undefined) rest.set(id, key)
              else {
                into.set(id, row)
                see(id, row)
              }
            }
            wanted = rest
          }
          if (wanted.size === 0) return Effect.void
          return Effect.map(models.load(template, [...wanted.values()]), (rows) => {
            for (const id of wanted.keys()) {
              const row = rows.get(id) ?? null
              into.set(id, row)
              see(id, row)
            }
          })
        }
        /** After a commit: the batch's rows of this partition's keys are what the store holds. */
        const keepCommitted = (b: Batch) => {
          for (const template of keepable) {
            const rows = b.cache.get(template)
            if (rows === undefined) continue
            const keep = getOrCreate(kept, template, () => new Map<string, Row | null>())
            // Only new keys are hashed: a key kept already is known to be this partition's. Rows are
            // dropped oldest-kept first; a row still in use is soon loaded and kept again.
            for (const [id, row] of rows)
              if (keep.has(id) || DepotDecl.partitionOf(id, depot.partitions) === partition) keep.set(id, row)
            if (keep.size > keepRows) {
              let drop = keep.size - keepRows
              for (const id of keep.keys()) {
                if (drop-- <= 0) break
                keep.delete(id)
              }
            }
          }
        }
        const { apply, applyNow } = makeApplier(topology, templateByName, options, models, depotByName, fill)
        const lingerMs = options.lingerMs ?? 0
        const lingerFullMs = Math.max(1, Math.min(lingerMs, options.lingerFullMs ?? lingerMs))
        // Set when the safety poll, not an append of this process, woke the stream: the store is asked.
        let polled = false
        let lastCommit = Number.NEGATIVE_INFINITY
        /**
         * Under load (a commit within the last few lingers), waits for a short live batch to fill:
         * up to lingerMs, or lingerFullMs while a `full` reply waits on the partition. In short
         * steps, so that a `full` reply that starts waiting meanwhile cuts a long linger short.
         */
        const linger = (limit: number) =>
          Effect.gen(function* () {
            if (lingerMs <= 0 || performance.now() - lastCommit >= lingerMs * 4) return
            const started = performance.now()
            while (true) {
              const short = fromTail(depot.name, partition, next, limit)
              if (short === undefined || short.length === 0 || short.length >= limit) return
              const budget =
                (progress.watched(depot.name, partition) ? lingerFullMs : lingerMs) - (performance.now() - started)
              if (budget <= 0) return
              yield* Effect.sleep(Duration.millis(Math.min(budget, lingerFullMs)))
            }
          })
        // A read of the next batch of history, started while the current one is folded.
        let ahead: { readonly from: number; readonly fiber: Fiber.Fiber<ReadonlyArray<Event>> } | undefined

        while (true) {
          const stop = options.until?.(depot.name, partition)
          if (stop !== undefined && next >= stop) return
          const limit = stop === undefined ? options.batchMax : Math.min(options.batchMax, stop - next)
          const catchUp = options.catchUpBatchMax ?? options.batchMax * 25
          // History is read in chunks and folded into one batch of up to `catchUp` events: many
          // events coalesce per row, while each chunk's events can be collected young.
          const chunkOf = (from: number) =>
            Math.min(READ_CHUNK, stop === undefined ? catchUp : Math.min(catchUp, stop - from))
          /** Events of history from `from` (the read started ahead, if it is that one); starts the next read. */
          const readStore = (from: number) =>
            Effect.gen(function* () {
              const read = ahead !== undefined && ahead.from === from ? ahead.fiber : undefined
              if (ahead !== undefined && read === undefined) yield* Fiber.interrupt(ahead.fiber)
              ahead = undefined
              const got: ReadonlyArray<Event> =
                read !== undefined
                  ? yield* Fiber.join(read)
                  : yield* retryStore(store.read(depot.name, partition, from, chunkOf(from)))
              // Fetch the next chunk while this one is folded.
              const last = got[got.length - 1]
              if (last !== undefined && got.length === chunkOf(from)) {
                const after = last.offset + 1
                if (stop === undefined || after < stop)
                  ahead = {
                    from: after,
                    fiber: yield* Effect.forkChild(
                      retryStore(store.read(depot.name, partition, after, chunkOf(after))),
                    ),
                  }
              }
              return got
            })
          if (stop === undefined && !polled) yield* linger(limit)
          let chunk: ReadonlyArray<Event> | undefined = polled
            ? undefined
            : fromTail(depot.name, partition, next, limit)
          polled = false
          const fromStore = chunk === undefined
          if (chunk === undefined) chunk = yield* readStore(next)
          if (chunk.length === 0) {
            polled = !(yield* waitForAppend(depot.name, partition, next))
            continue
          }
          const first = (chunk[0] as Event).offset
          const cache = new Map<string, Map<string, Row | null>>()
          const dirty = new Map<string, Map<string, RowKey>>()
          const batch: Batch = { cache, dirty, seen: new Map() }
          // Reply values by position in the batch; undefined where an event replied nothing.
          const replies: Array<unknown> = []
          const derived: Array<{ parent: Event; emits: Array<Emit> }> = []
          let processed = 0
          let lastOffset = next - 1
          let halted: string | undefined
          while (true) {
            const chunkStart = (chunk[0] as Event).offset
            // Load every row the chunk will touch that the batch does not hold yet, one query per template.
            const wanted = new Map<string, Map<string, RowKey>>()
            const have = (template: string, id: string) => cache.get(template)?.has(id) === true
            if (topology.prefetch)
              for (const e of chunk)
                for (const { template, key } of topology.prefetch(e)) {
                  const id = keyId(key)
                  if (!have(template, id)) getOrCreate(wanted, template, () => new Map()).set(id, key)
                }
            else
              for (const template of singleKeyModels) {
                const m = new Map<string, RowKey>()
                for (const e of chunk) if (!m.has(e.key) && !have(template, e.key)) m.set(e.key, [e.key])
                if (m.size > 0) wanted.set(template, m)
              }
            for (const [template, keys] of wanted) yield* retryStore(fill(batch, template, keys))

            for (const event of chunk) {
              const outcome = applyNow(event, batch) ?? (yield* apply(event, batch))
              if (outcome._tag === "Failed") {
                if (topology.onFailure === "halt") {
                  halted = outcome.error
                  break
                }
                status.parked.push({ id: event.id, offset: event.offset, error: outcome.error })
                yield* Effect.logWarning(
                  `topology ${topology.name} parked ${event.id} (${depot.name}/${partition}@${event.offset}): ${outcome.error}`,
                )
              } else {
                const staged = outcome.staged
                // Replays have no one waiting for replies.
                if (staged.hasReply && options.live) replies[processed] = staged.reply
                if (staged.emits !== undefined) derived.push({ parent: event, emits: staged.emits })
              }
              processed++
              lastOffset = event.offset
            }
            // Another chunk joins this batch only while history goes on and the batch has room for it.
            if (halted !== undefined || !fromStore || chunk.length < chunkOf(chunkStart)) break
            if (processed + READ_CHUNK > catchUp || (stop !== undefined && lastOffset + 1 >= stop)) break
            chunk = yield* readStore(lastOffset + 1)
            if (chunk.length === 0) break
          }

          // Children first, checkpoint after: a crash in between re-runs the batch and the children dedupe.
          for (const { parent, emits } of derived)
            for (let n = 0; n < emits.length; n++) {
              const emit = emits[n] as Emit
              const target = depotByName.get(emit.depot) as Depot
              const childId = Lineage.derived(parent.id, topology.name, n)
              yield* writer.append(target.name, DepotDecl.partitionOf(emit.key, target.partitions), {
                messageId: childId,
                childId,
                parent: parent.id,
                type: emit.type,
                key: emit.key,
                payload: emit.payload,
                time: parent.time,
              })
            }

          const writes: Array<RowWrite> = []
          for (const [template, keys] of dirty) {
            const c = cache.get(template) as Map<string, Row | null>
            const seen = batch.seen.get(template)
            for (const [id, key] of keys) {
              const row = c.get(id) ?? null
              const was = seen?.get(id)
              writes.push(was === undefined ? { template, key, row } : { template, key, row, seen: was })
            }
          }
          const newNext = processed > 0 ? lastOffset + 1 : next
          const refused = processed > 0 ? yield* commitOrRefold(models.commit(cp, newNext, writes)) : undefined
          if (refused !== undefined) {
            // FENCED: a replay swapped rebuilt read models in, so this batch was folded from rows that
            // may be gone. ROW_CONFLICT: a row changed behind the stream's back. Either way the kept
            // rows are stale: fold again from the checkpoint (which waits for a swap to finish).
            kept.clear()
            next = yield* retryStore(models.checkpoint(cp))
            status.next = next
            yield* Effect.logInfo(
              refused === "FENCED"
                ? `topology ${topology.name} ${depot.name}/${partition}: read models swapped by a replay; resuming at ${next}`
                : `topology ${topology.name} ${depot.name}/${partition}: a read-model row changed behind this stream; folding again from ${next}`,
            )
            continue
          }
          keepCommitted(batch)
          next = newNext
          status.next = next
          lastCommit = performance.now()
          progress.advance(topology.name, depot.name, partition, next, first, replies)
          if (halted !== undefined) {
            status.state = "halted"
            status.error = halted
            yield* Effect.logError(
              `topology ${topology.name} halted on ${depot.name}/${partition}@${next}: ${halted}. The event is kept in the depot; fix the handler and restart.`,
            )
            return
          }
        }
      })

    /**
     * A stream that dies (a store failure that is not transient, a bug) is
     * restarted with capped backoff from its stored checkpoint, which is
     * always consistent with its rows; a stream halted by its topology's
     * policy stays halted.
     */
    const supervise = (topology: Topology, depot: Depot, partition: number) =>
      Effect.gen(function* () {
        let delay = 100
        while (true) {
          const started = Date.now()
          const exit = yield* Effect.exit(runStream(topology, depot, partition))
          if (exit._tag === "Success" || Cause.hasInterruptsOnly(exit.cause)) return
          // A stream that ran well for a while before it died starts over from the short delay.
          if (Date.now() - started > HEALTHY_MS) delay = 100
          const status = statuses.get(`${topology.name}|${depot.name}/${partition}`)
          if (status) status.restarts++
          yield* Effect.logError(
            `topology ${topology.name} on ${depot.name}/${partition} failed and restarts in ${delay} ms: ${Cause.pretty(exit.cause).split("\n")[0]}`,
          )
          yield* Effect.sleep(Duration.millis(delay))
          delay = Math.min(delay * 2, 10_000)
        }
      })

    const fibers: Array<Fiber.Fiber<unknown, unknown>> = []
    for (const t of topologies)
      for (const source of t.sources) {
        progress.register(t.name, source.name)
      }
    for (const t of topologies)
      for (const source of t.sources)
        for (let p = 0; p < source.partitions; p++) fibers.push(yield* Effect.forkDetach(supervise(t, source, p)))
    yield* Effect.addFinalizer(() => Effect.forEach(fibers, Fiber.interrupt, { discard: true }))

    return TopologyRunner.of({
      status: () => [...statuses.values()].map((s) => ({ ...s, parked: [...s.parked] })),
      finished: Effect.asVoid(Fiber.joinAll(fibers)),
    })
  })

/** Commits; the code when the store refused with FENCED or ROW_CONFLICT (see the port), other failures as retryStore. */
const commitOrRefold = (commit: Effect.Effect<void, StoreError>) =>
  retryStore(
    commit.pipe(
      Effect.as(undefined),
      Effect.catchIf(
        (e) => e.code === "FENCED" || e.code === "ROW_CONFLICT",
        (e) => Effect.succeed(e.code as "FENCED" | "ROW_CONFLICT"),
      ),
    ),
  )

/** Built once: every batch retries its store calls, and the schedule is the same for all. */
const STORE_RETRY = {
  while: (e: StoreError) => e.retryable,
  schedule: Schedule.min([Schedule.exponential("20 millis", 2), Schedule.spaced("2 seconds")]),
}

/** Store failures that may pass (lost connection) are retried until they do; the stream just waits. */
const retryStore = <A>(effect: Effect.Effect<A, StoreError>) => Effect.orDie(Effect.retry(effect, STORE_RETRY))

type ApplyOutcome =
  | { readonly _tag: "Applied"; readonly staged: Staged }
  | { readonly _tag: "Failed"; readonly error: string }

/**
 * Applies handlers to events one at a time, writing straight into the batch
 * and journaling what each write replaced, so a failed event is undone
 * exactly. One context object serves a whole stream (its methods read the
 * current event and batch), so the per-event cost is the handler's own.
 */
const makeApplier = (
  topology: Topology,
  templates: ReadonlyMap<string, Template>,
  options: RunnerOptions,
  models: Context.Service.Shape<typeof ReadModelStore>,
  depots: ReadonlyMap<string, Depot>,
  fill: Fill,
) => {
  let event: Event
  const staged: Staged = { emits: undefined, reply: undefined, hasReply: false }
  let batch: Batch
  // Undo log of the current attempt, five slots per write: rows, dirty keys, id, previous row, previous key.
  const journal: Array<unknown> = []
  const begin = (e: Event, b: Batch) => {
    event = e
    batch = b
    journal.length = 0
    staged.emits = undefined
    staged.reply = undefined
    staged.hasReply = false
  }
  const undo = () => {
    for (let i = journal.length - 5; i >= 0; i -= 5) {
      const c = journal[i] as Map<string, Row | null>
      const d = journal[i + 1] as Map<string, RowKey>
      const id = journal[i + 2] as string
      const prev = journal[i + 3] as Row | null | undefined
      const prevKey = journal[i + 4] as RowKey | undefined
      if (prev === undefined) c.delete(id)
      else c.set(id, prev)
      if (prevKey === undefined) d.delete(id)
      else d.set(id, prevKey)
    }
    journal.length = 0
  }
  const write = (template: string, id: string, key: RowKey, row: Row | null) => {
    const c = getOrCreate(batch.cache, template, () => new Map())
    const d = getOrCreate(batch.dirty, template, () => new Map())
    journal.push(c, d, id, c.get(id), d.get(id))
    c.set(id, row)
    d.set(id, key)
  }
  const readable = new Set(topology.readModels)
  const writable = (template: string): Template | TopologyFailure =>
    readable.has(template)
      ? (templates.get(template) as Template)
      : new TopologyFailure(
          `Topology "${topology.name}" used template "${template}", which is not in its readModels (${topology.readModels.join(", ")}).`,
          false,
        )
  const normKey = (key: RowKey | string): RowKey => (typeof key === "string" ? [key] : key)
  const known = new Map([...templates].map(([name, t]) => [name, new Set(t.fields.map((f) => f.name))]))

  /** Stages a put after checking it; a failure to fail the event with, or the row staged. */
  const stagePut = (template: string, row: Row): TopologyFailure | { tpl: Template; key: RowKey; full: Row } => {
    const tpl = writable(template)
    if (tpl instanceof TopologyFailure) return tpl
    const fields = known.get(template) as Set<string>
    for (const field in row)
      if (!fields.has(field) && field !== LAST_EVENT_COLUMN)
        return new TopologyFailure(
          `Topology "${topology.name}" wrote unknown field "${field}" to template "${template}" (${tpl.file}); known fields: ${[...fields].join(", ")}.`,
          false,
        )
    for (const k of tpl.key)
      if (row[k] === undefined || row[k] === null)
        return new TopologyFailure(
          `Topology "${topology.name}" wrote a row to "${template}" without its key field "${k}".`,
          false,
        )
    let full: Row = { ...row, [LAST_EVENT_COLUMN]: event.id }
    if (tpl.backend === "rec" && models.check !== undefined) {
      // A REC row is staged as its canonical form, frozen, as a committed one reads back: the next
      // event's row is then built from canonical parts, which the check knows without walking them.
      const canonical = checkRow(tpl, full)
      if (!canonical.ok)
        return new TopologyFailure(
          `Topology "${topology.name}" wrote a row its template refuses: ${canonical.problem}.`,
          false,
        )
      full = Object.freeze(canonical.value)
    }
    const key = keyOf(tpl, full)
    write(template, keyId(key), key, full)
    return { tpl, key, full }
  }
  const stageRemove = (template: string, key: RowKey | string): TopologyFailure | undefined => {
    const tpl = writable(template)
    if (tpl instanceof TopologyFailure) return tpl
    const k = normKey(key)
    write(template, keyId(k), k, null)
    return undefined
  }
  const stageEmit = (depot: string, type: string, key: string, payload: unknown): TopologyFailure | undefined => {
    const target = depots.get(depot)
    if (target === undefined)
      return new TopologyFailure(`Topology "${topology.name}" emitted into unknown depot "${depot}".`, false)
    const decoded = DepotDecl.decodePayload(target, type, payload)
    if (!decoded.ok)
      return new TopologyFailure(
        `Topology "${topology.name}" emitted an invalid event: ${decoded.error.message}`,
        false,
      )
    if (staged.emits === undefined) staged.emits = []
    staged.emits.push({ depot, type, key, payload: decoded.payload })
    return undefined
  }
  /** The row as this event sees it: its own writes, then the batch's; undefined when not loaded yet. */
  const peek = (template: string, id: string): Row | null | undefined => batch.cache.get(template)?.get(id)
  // A document the store would refuse (over MongoDB's size limit, say) fails this event, so the
  // topology's policy decides, instead of the whole batch failing at commit again and again.
  const checkRec = (template: string, staged: { tpl: Template; key: RowKey; full: Row }) =>
    staged.tpl.backend === "rec" && models.check !== undefined
      ? Effect.mapError(
          models.check([{ template, key: staged.key, row: staged.full }]),
          (e) => new TopologyFailure(`Topology "${topology.name}" wrote a row the store refuses: ${e.message}`, false),
        )
      : Effect.void

  const ctx: TopologyContext = {
    live: options.live,
    get: (template, key) => {
      const tpl = writable(template)
      if (tpl instanceof TopologyFailure) return Effect.fail(tpl)
      const k = normKey(key)
      const id = keyId(k)
      const seen = peek(template, id)
      if (seen !== undefined) return Effect.succeed(seen ?? undefined)
      const b = batch
      return fill(b, template, new Map([[id, k]])).pipe(
        Effect.mapError(loadFailure),
        Effect.map(() => b.cache.get(template)?.get(id) ?? undefined),
      )
    },
    put: (template, row) => {
      const r = stagePut(template, row)
      return r instanceof TopologyFailure ? Effect.fail(r) : checkRec(template, r)
    },
    remove: (template, key) => {
      const failure = stageRemove(template, key)
      return failure ? Effect.fail(failure) : Effect.void
    },
    emit: (depot, type, key, payload) => {
      const failure = stageEmit(depot, type, key, payload)
      return failure ? Effect.fail(failure) : Effect.void
    },
    reply: (value) =>
      Effect.sync(() => {
        staged.reply = value
        staged.hasReply = true
      }),
  }

  // The synchronous context of `step` topologies. A row not loaded yet is
  // recorded in `missing` and thrown as MISSING; rows the store must check
  // (REC) are collected in `recChecks` and checked once the step returns.
  let missing: { template: string; key: RowKey } | undefined
  let recChecks: Array<Effect.Effect<void, TopologyFailure>> = []
  const stepCtx: StepContext = {
    live: options.live,
    get: (template, key) => {
      const tpl = writable(template)
      if (tpl instanceof TopologyFailure) throw tpl
      const k = normKey(key)
      const seen = peek(template, keyId(k))
      if (seen !== undefined) return seen ?? undefined
      missing = { template, key: k }
      throw MISSING
    },
    put: (template, row) => {
      const r = stagePut(template, row)
      if (r instanceof TopologyFailure) throw r
      if (r.tpl.backend === "rec" && models.check !== undefined) recChecks.push(checkRec(template, r))
    },
    remove: (template, key) => {
      const failure = stageRemove(template, key)
      if (failure) throw failure
    },
    emit: (depot, type, key, payload) => {
      const failure = stageEmit(depot, type, key, payload)
      if (failure) throw failure
    },
    reply: (value) => {
      staged.reply = value
      staged.hasReply = true
    },
  }
  const step = topology.step

  /**
   * One synchronous attempt of a step: the staged writes, the row to load
   * first, or the failure. Needs nothing async unless `recChecks` is non-empty.
   */
  const attemptStep = (
    e: Event,
    b: Batch,
  ): Staged | { readonly missing: { template: string; key: RowKey } } | TopologyFailure => {
    begin(e, b)
    missing = undefined
    if (recChecks.length > 0) recChecks = []
    try {
      ;(step as Step)(e, stepCtx)
      return staged
    } catch (err) {
      undo()
      if (err === MISSING && missing !== undefined) return { missing }
      return asFailure(err)
    }
  }

  // An attempt applyNow made whose REC checks are still to run: `apply` runs them, not the step again.
  let unchecked:
    | { readonly event: Event; readonly checks: ReadonlyArray<Effect.Effect<void, TopologyFailure>> }
    | undefined

  /** Step topologies: applies an event without leaving the caller's loop, or undefined when it needs the Effect path. */
  const applied: ApplyOutcome = { _tag: "Applied", staged }
  const applyNow = (e: Event, b: Batch): ApplyOutcome | undefined => {
    if (step === undefined) return undefined
    const r = attemptStep(e, b)
    if (r !== staged) return undefined
    if (recChecks.length > 0) {
      unchecked = { event: e, checks: recChecks }
      return undefined
    }
    return applied
  }

  /** Step topologies, the Effect path: loads missing rows, checks REC rows, retries failures. */
  const attemptStepEffect = (e: Event, b: Batch) =>
    Effect.gen(function* () {
      while (true) {
        const r = attemptStep(e, b)
        if (r instanceof TopologyFailure) return yield* Effect.fail(r)
        if ("missing" in r) {
          const { template, key } = r.missing
          yield* Effect.mapError(fill(b, template, new Map([[keyId(key), key]])), loadFailure)
          continue
        }
        const checks = recChecks
        for (const check of checks) yield* check
        return r
      }
    })

  const attempt = (e: Event, b: Batch) =>
    Effect.suspend(() => {
      if (step !== undefined) return attemptStepEffect(e, b)
      begin(e, b)
      return Effect.as(topology.handle(e, ctx), staged)
    })

  /** Runs one event's handler, retrying with backoff; a handler that keeps failing yields Failed. */
  const apply = (e: Event, b: Batch): Effect.Effect<ApplyOutcome> =>
    Effect.gen(function* () {
      let tries = 0
      let made = unchecked?.event === e ? unchecked.checks : undefined
      unchecked = undefined
      while (true) {
        const exit = yield* Effect.exit(
          made === undefined
            ? attempt(e, b)
            : Effect.as(
                Effect.forEach(made, (c) => c, { discard: true }),
                staged,
              ),
        )
        made = undefined
        if (exit._tag === "Success") return applied
        undo()
        const failure = exit.cause.reasons.find((r) => r._tag === "Fail" || r._tag === "Die")
        if (failure === undefined) return yield* Effect.interrupt
        const err =
          failure._tag === "Fail"
            ? (failure.error as TopologyFailure)
            : new TopologyFailure(`the handler threw: ${String((failure as { defect?: unknown }).defect)}`, true)
        if (!err.retryable || tries >= options.retries)
          return { _tag: "Failed", error: `${err.message} (after ${tries + 1} attempt(s))` } as const
        yield* Effect.sleep(Duration.millis(options.retryBaseMs * 2 ** tries))
        tries++
      }
    })
  return { apply, applyNow }
}

export const layer = (
  topologies: ReadonlyArray<Topology>,
  templates: ReadonlyArray<Template>,
  depots: ReadonlyArray<Depot>,
  options: RunnerOptions,
) => Layer.effect(TopologyRunner, make(topologies, templates, depots, options))
