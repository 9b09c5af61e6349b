/**
 * One read-model store over two: REL templates go to the REL adapter
 * (MariaDB or memory), REC templates to the REC adapter (MongoDB or memory),
 * so that one topology may write a MariaDB table and a MongoDB collection.
 *
 * Checkpoints, and why a batch is still applied exactly once. Each backend
 * keeps its own checkpoint per (topology, depot, partition) and commits its
 * rows with it atomically, but the two commits are separate. A topology that
 * writes both backends commits a batch as:
 *
 *   1. check the REC half completely, unique indexes included (`check`), so
 *      that the REC commit does not refuse what the REL commit already took;
 *   2. outbox.put: record the batch's REC writes with its `from` and `next`;
 *   3. REL commit: REL rows + REL checkpoint = next (one transaction);
 *   4. REC commit: REC rows + REC checkpoint = next.
 *
 * A crash before 3 leaves both checkpoints at `from`: the batch is re-run, and
 * the stale outbox entry is never read. A crash between 3 and 4 leaves REL at
 * `next` and REC at `from`; at the stream's next start, `checkpoint` finds the
 * outbox entry for exactly that step and completes it (4) before answering,
 * so the runner resumes at `next` on both backends. Re-running the batch
 * instead would fold a possibly longer batch onto REL rows that already hold
 * part of it. Step 4 may therefore run twice; REC commits are idempotent (on
 * MongoDB every document is guarded by the position it has applied, see
 * mongo-ops.ts). REL is committed first because its adapter has no such
 * guard: it only ever commits once per batch. The resume point is the minimum
 * of the two checkpoints, which after that completion are equal; any other
 * difference means a backend lost data (e.g. an in-memory store restarted
 * beside a durable one) and is reported, never papered over.
 *
 * What step 1 cannot rule out is a unique value taken by another writer
 * between 1 and 4; the REC commit then fails, the stream stops, and it fails
 * the same way at its next start until the clash is resolved (reset and
 * replay), exactly as a single-backend batch that breaks a unique index.
 *
 * `reset` of such a topology is recorded in the outbox first and completed
 * at the next start if interrupted, so the two backends cannot be left one
 * reset and one not. Topologies that write only one backend bypass all of
 * this: their checkpoint lives with their rows.
 *
 * Replays (the port's `replay` operations) follow the same split. A topology
 * that writes one backend only is replayed by that backend's own operations,
 * fence and swap included, since its rows and checkpoints are all there. A
 * topology that writes both cannot be replayed: its swap would have to
 * replace a MariaDB table and a MongoDB collection in one step readers cannot
 * split, and no operation spans the two databases. Its replay operations
 * refuse with a message that says so and how to split the topology.
 */
import { Effect, Layer, type Scope } from "effect"
import { StoreError } from "../errors.ts"
import { checkEnsured } from "../template/load.ts"
import type { Template } from "../template/template.ts"
import * as Memory from "./memory.ts"
import { prepareBatch } from "./mongo-ops.ts"
import {
  type CheckpointId,
  type ReadModelReplayShape,
  ReadModelStore,
  type ReadModelStoreShape,
  type RowWrite,
} from "./store.ts"

export type Backend = Template["backend"]

/** The REC half of a batch whose REL half may already be committed. */
export interface OutboxEntry {
  /** The checkpoint the batch started from. */
  readonly from: number
  /** The checkpoint the batch moves to. */
  readonly next: number
  /** The batch's REC writes, checked and canonical (plain JSON). */
  readonly writes: ReadonlyArray<RowWrite>
}

/**
 * Durable notes the router keeps per stream, on the REC side (MongoDB:
 * `beds_outbox`; memory: in memory, as durable as the memory stores).
 */
export interface Outbox {
  /** Replaces the stream's entry; it must be durable when this succeeds. */
  readonly put: (stream: CheckpointId, entry: OutboxEntry) => Effect.Effect<void, StoreError>
  readonly get: (stream: CheckpointId) => Effect.Effect<OutboxEntry | undefined, StoreError>
  /** Records that a reset of these templates has begun for a topology. */
  readonly beginReset: (topology: string, templates: ReadonlyArray<string>) => Effect.Effect<void, StoreError>
  /** The templates of an unfinished reset of a topology, if any. */
  readonly pendingReset: (topology: string) => Effect.Effect<ReadonlyArray<string> | undefined, StoreError>
  /** Ends a reset: drops its record and every entry of the topology. */
  readonly endReset: (topology: string) => Effect.Effect<void, StoreError>
}

const streamId = (c: CheckpointId): string => JSON.stringify([c.topology, c.depot, c.partition])

/** An outbox in memory, for memory REC stores (which keep nothing across restarts either). */
export const memoryOutbox = (): Outbox => {
  const entries = new Map<string, OutboxEntry>()
  const resets = new Map<string, ReadonlyArray<string>>()
  return {
    put: (stream, entry) => Effect.sync(() => void entries.set(streamId(stream), structuredClone(entry))),
    get: (stream) => Effect.sync(() => structuredClone(entries.get(streamId(stream)))),
    beginReset: (topology, templates) => Effect.sync(() => void resets.set(topology, [...templates])),
    pendingReset: (topology) => Effect.sync(() => resets.get(topology)),
    endReset: (topology) =>
      Effect.sync(() => {
        resets.delete(topology)
        for (const id of [...entries.keys()]) if ((JSON.parse(id) as [string])[0] === topology) entries.delete(id)
      }),
  }
}

/** A REC adapter with the outbox it keeps. */
export interface RecBackend {
  readonly store: ReadModelStoreShape
  readonly outbox: Outbox
  /** Fails as `commit` would for these writes, unique indexes included, without writing them. */
  readonly check: (writes: ReadonlyArray<RowWrite>) => Effect.Effect<void, StoreError>
}

/** The memory store as a REC backend, with an outbox in memory. */
export const memoryBackend: Effect.Effect<RecBackend> = Effect.map(Memory.make, (store) => ({
  store,
  outbox: memoryOutbox(),
  check: (writes) =>
    Effect.suspend(() => {
      const refused = Memory.check(store, writes)
      return refused === undefined ? Effect.void : Effect.fail(refused)
    }),
}))

export interface RouterOptions {
  readonly rel: ReadModelStoreShape
  readonly rec: RecBackend
  /**
   * Which templates each topology writes, which decides where its checkpoints
   * live. A topology not listed is treated as writing both backends (always
   * correct, one outbox write per batch slower).
   */
  readonly topologies?: ReadonlyArray<{ readonly name: string; readonly readModels: ReadonlyArray<string> }>
}

const failed = (message: string, cause?: unknown): StoreError =>
  new StoreError({ code: "STORE_FAILED", message, retryable: false, cause })

const corrupt = (message: string): StoreError => new StoreError({ code: "CORRUPT", message, retryable: false })

const describe = (c: CheckpointId): string => `${c.topology}/${c.depot}/${c.partition}`

/** Builds a routing store over a REL and a REC adapter. */
export const make = (options: RouterOptions): Effect.Effect<ReadModelStoreShape> =>
  Effect.sync(() => {
    const { rel } = options
    const rec = options.rec.store
    const outbox = options.rec.outbox
    const templates = new Map<string, Template>()
    /**
     * The backend of every template ever passed to `ensure`, even one its
     * adapter refused: a replay rebuilds a template whose live table drifted,
     * and still has to know where it lives.
     */
    const backends = new Map<string, Backend>()
    /** Per stream: the checkpoint both backends are known to hold. */
    const known = new Map<string, number>()
    const store = (b: Backend): ReadModelStoreShape => (b === "rel" ? rel : rec)

    const unknown = (name: string): StoreError =>
      failed(
        `Unknown template ${JSON.stringify(name)}: this read-model store knows ${[...templates.keys()].join(", ") || "no templates"}; ensure() the template before using it.`,
      )

    const backendOf = (name: string): Effect.Effect<Backend, StoreError> => {
      const t = templates.get(name)
      return t === undefined ? Effect.fail(unknown(name)) : Effect.succeed(t.backend)
    }

    /** The backends a topology's checkpoints live on. */
    const backendsOf = (topology: string): ReadonlyArray<Backend> => {
      const declared = options.topologies?.find((t) => t.name === topology)
      if (declared === undefined) return ["rel", "rec"]
      const used = new Set(declared.readModels.map((m) => templates.get(m)?.backend))
      if (used.has(undefined)) return ["rel", "rec"]
      if (used.has("rel") && used.has("rec")) return ["rel", "rec"]
      return used.has("rec") ? ["rec"] : ["rel"]
    }
    const single = (topology: string): Backend | undefined => {
      const b = backendsOf(topology)
      return b.length === 1 ? b[0] : undefined
    }

    const ensure: ReadModelStoreShape["ensure"] = (list) =>
      Effect.gen(function* () {
        const bad = checkEnsured(templates.values(), list)
        if (bad !== undefined) return yield* failed(bad.message, bad)
        const moved = list.find((t) => templates.has(t.name) && templates.get(t.name)?.backend !== t.backend)
        if (moved !== undefined)
          return yield* new StoreError({
            code: "SCHEMA_DRIFT",
            message: `Template ${moved.name} (${moved.tla}, ${moved.file}) moved from backend ${templates.get(moved.name)?.backend} to ${moved.backend}; its rows would stay behind. Replay into a new template (new name and TLA) instead.`,
            retryable: false,
          })
        for (const t of list) backends.set(t.name, t.backend)
        yield* rel.ensure(list.filter((t) => t.backend === "rel"))
        yield* rec.ensure(list.filter((t) => t.backend === "rec"))
        for (const t of list) templates.set(t.name, t)
      })

    const load: ReadModelStoreShape["load"] = (name, keys) =>
      Effect.flatMap(backendOf(name), (b) => store(b).load(name, keys))

    const scan: ReadModelStoreShape["scan"] = (name) => Effect.flatMap(backendOf(name), (b) => store(b).scan(name))

    const finishReset = (topology: string, names: ReadonlyArray<string>) =>
      Effect.gen(function* () {
        const ours = names.filter((n) => templates.has(n))
        yield* rel.reset(
          topology,
          ours.filter((n) => templates.get(n)?.backend === "rel"),
        )
        yield* rec.reset(
          topology,
          ours.filter((n) => templates.get(n)?.backend === "rec"),
        )
        yield* outbox.endReset(topology)
        for (const id of [...known.keys()]) if ((JSON.parse(id) as [string])[0] === topology) known.delete(id)
      })

    /**
     * Brings a two-backend stream to one checkpoint, completing an
     * interrupted reset or the REC half of a batch whose REL half committed.
     */
    const settle = (c: CheckpointId): Effect.Effect<number, StoreError> =>
      Effect.gen(function* () {
        const pendingReset = yield* outbox.pendingReset(c.topology)
        if (pendingReset !== undefined) {
          yield* Effect.logWarning(`read models: completing an interrupted reset of topology ${c.topology}`)
          yield* finishReset(c.topology, pendingReset)
        }
        const r = yield* rel.checkpoint(c)
        const d = yield* rec.checkpoint(c)
        if (r === d) {
          known.set(streamId(c), r)
          return r
        }
        if (r > d) {
          const entry = yield* outbox.get(c)
          if (entry !== undefined && entry.next === r && entry.from === d) {
            yield* Effect.logInfo(
              `read models: completing batch ${describe(c)} ${d}..${r} on the REC store (its REL half committed before a stop)`,
            )
            yield* rec.commit(c, r, entry.writes)
            known.set(streamId(c), r)
            return r
          }
          return yield* corrupt(
            `Stream ${describe(c)}: the REL read models are at offset ${r} but the REC ones at ${d}, and no pending batch ${d}..${r} is recorded (${entry === undefined ? "none is" : `the outbox holds ${entry.from}..${entry.next}`}). The REC store lost data. Reset the topology ${c.topology} and replay it to rebuild both.`,
          )
        }
        return yield* corrupt(
          `Stream ${describe(c)}: the REC read models are at offset ${d} but the REL ones only at ${r}; BEDS commits REL first, so the REL store lost data (is engine.rel = "memory" while engine.rec keeps its data?). Reset the topology ${c.topology} and replay it to rebuild both, or keep both stores durable.`,
        )
      })

    const checkpoint: ReadModelStoreShape["checkpoint"] = (c) => {
      const only = single(c.topology)
      return only === undefined ? settle(c) : store(only).checkpoint(c)
    }

    const commit: ReadModelStoreShape["commit"] = (c, next, writes) =>
      Effect.gen(function* () {
        const split: Record<Backend, Array<RowWrite>> = { rel: [], rec: [] }
        for (const w of writes) {
          const t = templates.get(w.template)
          if (t === undefined)
            return yield* failed(
              `Commit refused: unknown template ${JSON.stringify(w.template)}; ensure() it first. Nothing was written.`,
            )
          split[t.backend].push(w)
        }
        const only = single(c.topology)
        if (only !== undefined) {
          const other = only === "rel" ? split.rec : split.rel
          if (other.length > 0)
            return yield* failed(
              `Commit refused: topology ${c.topology} is declared to write ${only.toUpperCase()} templates only, but wrote ${other[0]?.template}. Nothing was written.`,
            )
          return yield* store(only).commit(c, next, writes)
        }
        const prepared = prepareBatch((name) => templates.get(name), split.rec)
        if (!prepared.ok) return yield* failed(prepared.problem)
        const recWrites: ReadonlyArray<RowWrite> = prepared.value.map((p) => ({
          template: p.template.name,
          key: p.key,
          row: p.row,
        }))
        yield* options.rec.check(recWrites)
        const from = known.get(streamId(c)) ?? (yield* settle(c))
        yield* outbox.put(c, { from, next, writes: recWrites })
        yield* rel.commit(c, next, split.rel)
        yield* rec.commit(c, next, recWrites)
        known.set(streamId(c), next)
      })

    const reset: ReadModelStoreShape["reset"] = (topology, names) =>
      Effect.gen(function* () {
        for (const n of names) yield* backendOf(n)
        const only = single(topology)
        if (only !== undefined) {
          const other = names.find((n) => templates.get(n)?.backend !== only)
          if (other !== undefined)
            return yield* failed(
              `Reset refused: topology ${topology} is declared to write ${only.toUpperCase()} templates only, not ${other}.`,
            )
          return yield* store(only).reset(topology, names)
        }
        yield* outbox.beginReset(topology, names)
        yield* finishReset(topology, names)
      })

    const check = (writes: ReadonlyArray<RowWrite>) =>
      Effect.gen(function* () {
        const recWrites = writes.filter((w) => templates.get(w.template)?.backend === "rec")
        const relWrites = writes.filter((w) => templates.get(w.template)?.backend !== "rec")
        if (recWrites.length > 0) {
          const prepared = prepareBatch((name) => templates.get(name), recWrites)
          if (!prepared.ok) return yield* failed(prepared.problem)
        }
        if (relWrites.length > 0 && rel.check !== undefined) yield* rel.check(relWrites)
      })
    const replay = replayOps({
      store,
      backendOf: (name) => backends.get(name) ?? templates.get(name)?.backend,
      topologies: options.topologies,
    })
    // Only REL-only topologies commit straight to one backend; a topology writing both goes through
    // the outbox, whose pending batch a refused REL commit would leave behind.
    const conditional = (name: string): boolean => {
      const t = templates.get(name)
      const store = t === undefined ? undefined : t.backend === "rel" ? rel : rec
      const writers = options.topologies?.filter((x) => x.readModels.includes(name)) ?? []
      return (
        store?.conditional?.(name) === true && writers.length > 0 && writers.every((w) => single(w.name) === t?.backend)
      )
    }
    const routing = ReadModelStore.of({ ensure, load, commit, checkpoint, scan, reset, check, replay, conditional })
    declared.set(routing, (list) => {
      for (const t of list) if (!backends.has(t.name)) backends.set(t.name, t.backend)
    })
    return routing
  })

const declared = new WeakMap<object, (templates: ReadonlyArray<Template>) => void>()

/**
 * Tells a routing store which backend each of these templates is on before
 * anything ensures them. A process that only replays, or checks topology
 * versions at start, asks the replay operations about a topology before any
 * template is ensured, and they route by template. A store that is not a
 * router is left as it is.
 */
export const declareTemplates = (store: ReadModelStoreShape, templates: ReadonlyArray<Template>): void =>
  declared.get(store)?.(templates)

const BACKEND_NAME: Record<Backend, string> = { rel: "REL", rec: "REC" }

/**
 * Replay operations that hand each call to the backend holding the
 * topology's read models (see the module comment), or refuse.
 */
const replayOps = (r: {
  readonly store: (b: Backend) => ReadModelStoreShape
  readonly backendOf: (template: string) => Backend | undefined
  readonly topologies: RouterOptions["topologies"]
}): ReadModelReplayShape => {
  const refused = (message: string): StoreError => failed(message)

  const opsOf = (b: Backend, what: string): Effect.Effect<ReadModelReplayShape, StoreError> => {
    const ops = r.store(b).replay
    return ops === undefined
      ? Effect.fail(
          refused(
            `${what} cannot be replayed: its read models are on the ${BACKEND_NAME[b]} read-model store, which has no blue/green operations (variants, fence, swap). Use a ${BACKEND_NAME[b]} backend that has them (${b === "rel" ? "MariaDB or memory" : "MongoDB or memory"}).`,
          ),
        )
      : Effect.succeed(ops)
  }

  /** The one backend a topology writes, or why a replay of it is refused. */
  const backendOfTopology = (topology: string): Effect.Effect<Backend, StoreError> =>
    Effect.suspend(() => {
      const declared = r.topologies?.find((t) => t.name === topology)
      if (declared === undefined)
        return Effect.fail(
          refused(
            `Topology ${topology} is not among the topologies this read-model store routes (${r.topologies?.map((t) => t.name).join(", ") || "it was built without a list of them"}), so it cannot tell which backend holds that topology's read models and cannot replay it. Build the store with every topology it serves (its \`topologies\` option), as the engine's stores layer does.`,
          ),
        )
      const unknown = declared.readModels.filter((m) => r.backendOf(m) === undefined)
      if (unknown.length > 0)
        return Effect.fail(
          refused(
            `Topology ${topology} writes template(s) ${unknown.join(", ")} that this read-model store has not been given yet; ensure() them before replaying it.`,
          ),
        )
      const by = split(declared.readModels)
      const mixed = mixedRefusal(topology, by)
      if (mixed !== undefined) return Effect.fail(refused(mixed))
      if (by.rel.length === 0 && by.rec.length === 0)
        return Effect.fail(refused(`Topology ${topology} writes no read models; there is nothing to replay.`))
      return Effect.succeed(by.rel.length > 0 ? "rel" : "rec")
    })

  const split = (names: ReadonlyArray<string>) => {
    const by: Record<Backend, Array<string>> = { rel: [], rec: [] }
    for (const m of names) {
      const b = r.backendOf(m)
      if (b !== undefined) by[b].push(m)
    }
    return by
  }
  const mixedRefusal = (topology: string, by: Record<Backend, ReadonlyArray<string>>) =>
    by.rel.length > 0 && by.rec.length > 0
      ? `Topology ${topology} cannot be replayed: it writes REL templates (${by.rel.join(", ")}) and REC templates (${by.rec.join(", ")}), which live in two databases, and a replay's swap cannot replace the read models of both in one atomic step. Split it into a topology that writes only the REL templates and one that writes only the REC templates; each of them can then be replayed.`
      : undefined

  const forTopology = (topology: string) =>
    Effect.flatMap(backendOfTopology(topology), (b) => opsOf(b, `Topology ${topology}`))

  /** The backend of a topology, checking that the templates given for it are all there too. */
  const forTemplates = (topology: string, names: ReadonlyArray<string>) =>
    Effect.gen(function* () {
      const b = yield* backendOfTopology(topology)
      const elsewhere = names.filter((n) => r.backendOf(n) !== b)
      if (elsewhere.length > 0)
        return yield* refused(
          `Topology ${topology} writes ${BACKEND_NAME[b]} templates only, but the replay named ${elsewhere.join(", ")}, which ${elsewhere.length === 1 ? "is" : "are"} not a ${BACKEND_NAME[b]} template of this store.`,
        )
      return yield* opsOf(b, `Topology ${topology}`)
    })

  return {
    refusal: (topology, templates) => {
      const by: Record<Backend, Array<string>> = { rel: [], rec: [] }
      for (const t of templates) by[t.backend].push(t.name)
      return mixedRefusal(topology, by)
    },
    record: (topology) => Effect.flatMap(forTopology(topology), (ops) => ops.record(topology)),
    setVersion: (topology, version) =>
      Effect.flatMap(forTopology(topology), (ops) => ops.setVersion(topology, version)),
    lock: (topology, holder) => Effect.flatMap(forTopology(topology), (ops) => ops.lock(topology, holder)),
    variant: (topology, list, variant, fingerprint) =>
      Effect.flatMap(
        forTemplates(
          topology,
          list.map((t) => t.name),
        ),
        (ops) => ops.variant(topology, list, variant, fingerprint),
      ),
    dropVariant: (topology, names, variant) =>
      Effect.flatMap(forTemplates(topology, names), (ops) => ops.dropVariant(topology, names, variant)),
    peekCheckpoint: (c) => Effect.flatMap(forTopology(c.topology), (ops) => ops.peekCheckpoint(c)),
    fence: (topology) => Effect.flatMap(forTopology(topology), (ops) => ops.fence(topology)),
    unfence: (topology) => Effect.flatMap(forTopology(topology), (ops) => ops.unfence(topology)),
    swap: (topology, names, version) =>
      Effect.flatMap(forTemplates(topology, names), (ops) => ops.swap(topology, names, version)),
    diff: (template, variant, limit) =>
      Effect.suspend(() => {
        const b = r.backendOf(template)
        if (b === undefined)
          return Effect.fail(
            refused(
              `Cannot compare ${template}: this read-model store has not been given that template; ensure() it first.`,
            ),
          )
        return Effect.flatMap(opsOf(b, `Template ${template}`), (ops) => ops.diff(template, variant, limit))
      }),
  }
}

/**
 * The routing store as a Layer, built from the two adapters' constructors
 * (e.g. MariaDB's `make` and MongoDB's `backend(settings)`).
 */
export const layer = <E1, R1, E2, R2>(options: {
  readonly rel: Effect.Effect<ReadModelStoreShape, E1, R1>
  readonly rec: Effect.Effect<RecBackend, E2, R2>
  readonly topologies?: RouterOptions["topologies"]
}): Layer.Layer<ReadModelStore, E1 | E2, Exclude<R1 | R2, Scope.Scope>> =>
  Layer.effect(
    ReadModelStore,
    Effect.gen(function* () {
      const rel = yield* options.rel
      const rec = yield* options.rec
      return yield* make({ rel, rec, ...(options.topologies === undefined ? {} : { topologies: options.topologies }) })
    }),
  )
