/**
 * Replays on MongoDB: the blue/green operations of the read-model port
 * (store.ts) for REC templates, and the fencing the live MongoDB store takes
 * part in (mongodb.ts calls `enterStream` and guards its commits with
 * `commitGuard`).
 *
 * System collections, beside beds_checkpoint: `beds_topology` holds per
 * topology its record { version, generation, fenced }; `beds_variant` the
 * fingerprint each copy was built for; `beds_replay_lock` who holds each
 * topology's replay lock.
 *
 * Variants. The copy `v` of template `t` is the collection `t__v`, named as
 * MariaDB names its shadow and snapshot tables (variant.ts). A store of the
 * same adapter reads and writes it, with the checkpoints of the topology
 * `<topology>~v` (variantCheckpointTopology): their own documents in
 * beds_checkpoint, and their own position paths in the copy's documents, so
 * nothing of the live models or their checkpoints is touched.
 *
 * Fencing, atomic with live commits. Every live checkpoint document carries a
 * `generation` stamp, which only ever grows.
 *
 *  - A live stream reading its checkpoint (1) makes sure its checkpoint
 *    document exists, (2) reads the topology's generation g (and waits, with
 *    a retryable FENCED, while a fence is up and its lock is held), (3)
 *    raises its document's stamp to g if it is lower. It remembers g.
 *  - Its commit carries `generation: g` in the filter of the single-document
 *    write that makes the batch count: with transactions, the checkpoint
 *    update, the transaction's first write; with guarded writes (standalone
 *    server), the write that records the batch as pending, after which it
 *    will be applied. If the stamp moved, the write matches nothing and the
 *    commit fails with FENCED before anything counts.
 *  - `fence` raises the generation to g' and marks the topology fenced, then
 *    stamps every checkpoint document of the topology with g'. Each stamp is
 *    one write to the same document a commit's guarded write goes to, so
 *    MongoDB orders the two. With transactions: a transaction that wrote its
 *    checkpoint document first holds it until it ends, and the stamp waits
 *    for it (a write outside a transaction waits for a transaction that has
 *    written the document); a transaction that comes to it after the stamp
 *    finds no match, or, if its snapshot is older than the stamp, hits a
 *    write conflict, is retried by the driver and then finds no match. With
 *    guarded writes: a batch recorded as pending before the stamp counts, and
 *    the fence waits until it is applied (and applies it itself after a while,
 *    as its writer may have died: a journaled batch applied twice changes
 *    nothing); a batch recorded after is refused. So once `fence` returns, no
 *    live commit is in flight and none can land.
 *  - Why (1) before (2) before (3): a fence that stamps before (1) also
 *    raised the generation before (2), so the stream either waits or reads
 *    g'; one that stamps after (1) finds the document and stamps it, so a
 *    stream that read the older g is refused at its commit. No order lets a
 *    stream commit under g after a fence to g' has returned.
 *
 * The replay lock is a document naming its holder, renewed by the holder
 * every `renewMs`. MongoDB has no lock that dies with a connection (as
 * MariaDB's named lock does), so a lock is taken to be dead, and may be taken
 * over, when its holder has not renewed it for `leaseMs`, or at once when it
 * names this host and a process that no longer runs. Hosts' clocks must agree
 * to well within the lease.
 *
 * The swap renames each shadow collection over its live one
 * (renameCollection with dropTarget: the old collection is dropped in the
 * same step), one template at a time, while the fence is up; see `swap`.
 */
import { randomUUID } from "node:crypto"
import * as os from "node:os"
import { Effect } from "effect"
import type { Db, Document } from "mongodb"
import { StoreError } from "../errors.ts"
import { compareKeys, keyId, LAST_EVENT_COLUMN, type Row, type RowKey, type Template } from "../template/template.ts"
import {
  CHECKPOINT_COLLECTION,
  checkpointDocId,
  JOURNAL_COLLECTION,
  keyFromId,
  readCheckpoint,
  SYSTEM_FIELD,
  TEMPLATES_COLLECTION,
} from "./mongo-ops.ts"
import type {
  CheckpointId,
  ReadModelReplayShape,
  ReadModelStoreShape,
  ReplayLockHolder,
  RowDifference,
  TopologyRecord,
} from "./store.ts"
import { SHADOW, variantCheckpointTopology, variantTable } from "./variant.ts"

/** Per topology: the version its live models were built with, and the fence. */
export const TOPOLOGY_COLLECTION = "beds_topology"
/** Per (topology, variant): the fingerprint a copy was built for. */
export const VARIANT_COLLECTION = "beds_variant"
/** Per topology: who holds the replay lock, and when it last renewed it. */
export const REPLAY_LOCK_COLLECTION = "beds_replay_lock"

/** The collections the replay operations keep, created with the adapter's system collections. */
export const REPLAY_COLLECTIONS: ReadonlyArray<string> = [
  TOPOLOGY_COLLECTION,
  VARIANT_COLLECTION,
  REPLAY_LOCK_COLLECTION,
]

type SystemDoc = Document & { _id: string }

export interface ReplayTiming {
  /** A lock not renewed for this long is taken to be dead. */
  readonly leaseMs: number
  /** How often the holder renews its lock. */
  readonly renewMs: number
  /** How long a fence waits for a live batch recorded as pending before it applies that batch itself. */
  readonly pendingWaitMs: number
}

export const DEFAULT_TIMING: ReplayTiming = { leaseMs: 60_000, renewMs: 10_000, pendingWaitMs: 30_000 }

const failed = (message: string, cause?: unknown): StoreError =>
  new StoreError({ code: "STORE_FAILED", message, retryable: false, cause })

/** The refusal of a live commit whose stream read its checkpoint before a fence. */
export const fencedCommit = (cp: CheckpointId): StoreError =>
  new StoreError({
    code: "FENCED",
    message: `Commit refused: topology ${cp.topology} was fenced for a swap of its read models after this stream read its checkpoint (${cp.depot}/${cp.partition}); re-read the checkpoint and fold again. Nothing was written.`,
    retryable: false,
  })

/** Why a live stream cannot start while a replay swaps its topology's models. */
export const pausedStream = (topology: string): StoreError =>
  new StoreError({
    code: "FENCED",
    message: `Topology ${topology} is paused while a replay swaps in its rebuilt read models; its streams resume when the swap is done.`,
    retryable: true,
  })

/** The filter a guarded live commit adds to its checkpoint write: the stamp it saw. */
export const commitGuard = (generation: number): Document => ({ generation })

// ---------------------------------------------------------------------------
// The lock's liveness, shared by the live store (is a fence still guarded?)
// and the replay operations (may a lock be taken over?).

/** Tokens of the replay locks this process holds now. */
const heldHere = new Set<string>()

const processRuns = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    // EPERM: it runs, as another user.
    return (e as { code?: string }).code === "EPERM"
  }
}

/** Whether a lock document was left by a holder that is gone. */
const isStale = (lock: Document, now: number, timing: ReplayTiming): boolean => {
  if (now - Number(lock.beat ?? 0) > timing.leaseMs) return true
  if (lock.host !== os.hostname()) return false
  const pid = Number(lock.pid)
  // This very process: held only if one of its live locks has that token (a pid may be reused after a restart).
  return pid === process.pid ? !heldHere.has(String(lock.token)) : !processRuns(pid)
}

const holderOf = (lock: Document): ReplayLockHolder => ({
  host: String(lock.host),
  pid: Number(lock.pid),
  since: Number(lock.since),
})

const numberOf = (v: unknown): number => Number(v ?? 0)

/**
 * Steps 1 to 3 of a live stream's checkpoint read (see the module comment):
 * the generation to guard its commits with, or paused while a fence is up
 * and its lock held.
 */
export const enterStream = async (
  db: Db,
  cp: CheckpointId,
  timing: ReplayTiming = DEFAULT_TIMING,
): Promise<{ readonly paused: true } | { readonly paused: false; readonly generation: number }> => {
  const checkpoints = db.collection<SystemDoc>(CHECKPOINT_COLLECTION)
  const id = checkpointDocId(cp)
  await checkpoints.updateOne(
    { _id: id },
    { $setOnInsert: { topology: cp.topology, depot: cp.depot, partition: cp.partition } },
    { upsert: true },
  )
  const record = await db.collection<SystemDoc>(TOPOLOGY_COLLECTION).findOne({ _id: cp.topology })
  const generation = numberOf(record?.generation)
  if (record?.fenced === true) {
    // A fence whose lock is gone was left by a replay that died; the models are consistent either way.
    const lock = await db.collection<SystemDoc>(REPLAY_LOCK_COLLECTION).findOne({ _id: cp.topology })
    if (lock !== null && !isStale(lock, Date.now(), timing)) return { paused: true }
  }
  await checkpoints.updateOne({ _id: id, generation: { $not: { $gte: generation } } }, { $set: { generation } })
  return { paused: false, generation }
}

// ---------------------------------------------------------------------------
// The replay operations.

/** What the replay operations need from the adapter that serves the live models. */
export interface MongoReplayContext {
  readonly db: Db
  /** Runs driver calls: errors classified as the adapter does, retryable ones retried a few times. */
  readonly run: <A>(what: string, f: () => Promise<A>) => Effect.Effect<A, StoreError>
  /** The template of that name as the live store has ensured it. */
  readonly template: (name: string) => Template | undefined
  /** A stored document as the live store reads it (failing as CORRUPT on a value no row can have). */
  readonly decode: (template: Template, doc: Document) => Row
  /** Applies a live stream's pending batch, if it has one, as the stream's next start would. */
  readonly recover: (cp: CheckpointId) => Promise<number>
  /** A store of the same adapter over a variant's collections and checkpoints. */
  readonly variantStore: (variant: string) => ReadModelStoreShape
  readonly timing?: ReplayTiming | undefined
}

const variantId = (topology: string, variant: string): string => `${topology}/${variant}`

const escapeRegExp = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")

/** Field values in template order, the provenance field last: equal rows give equal strings. */
const canonical = (template: Template, row: Row): string =>
  JSON.stringify([...template.fields.map((f) => row[f.name] ?? null), row[LAST_EVENT_COLUMN] ?? null])

export const replayOps = (ctx: MongoReplayContext): ReadModelReplayShape => {
  const { db, run } = ctx
  const timing = ctx.timing ?? DEFAULT_TIMING
  const topologies = db.collection<SystemDoc>(TOPOLOGY_COLLECTION)
  const variants = db.collection<SystemDoc>(VARIANT_COLLECTION)
  const locks = db.collection<SystemDoc>(REPLAY_LOCK_COLLECTION)
  const checkpoints = db.collection<SystemDoc>(CHECKPOINT_COLLECTION)
  const journal = db.collection<SystemDoc>(JOURNAL_COLLECTION)
  const recorded = db.collection<SystemDoc>(TEMPLATES_COLLECTION)
  /** Per topology: the token of the lock this instance holds. */
  const mine = new Map<string, string>()

  const existing = async (names: ReadonlyArray<string>): Promise<Set<string>> =>
    names.length === 0
      ? new Set()
      : new Set(
          (await db.listCollections({ name: { $in: [...names] } }, { nameOnly: true }).toArray()).map((c) =>
            String(c.name),
          ),
        )

  /** Drops a copy's collections, their recorded templates and the copy's checkpoints (missing ones are ignored). */
  const clear = async (topology: string, collections: ReadonlyArray<string>, variant: string): Promise<void> => {
    for (const name of collections) await db.dropCollection(name)
    if (collections.length > 0) await recorded.deleteMany({ _id: { $in: [...collections] } })
    const cpTopology = variantCheckpointTopology(topology, variant)
    await checkpoints.deleteMany({ topology: cpTopology })
    await checkpoints.deleteOne({ _id: `reset:${cpTopology}` })
    await journal.deleteMany({ _id: { $regex: new RegExp(`^${escapeRegExp(cpTopology)}/`) } })
  }

  const record: ReadModelReplayShape["record"] = (topology) =>
    run(`Reading the record of topology ${topology}`, async (): Promise<TopologyRecord | undefined> => {
      const doc = await topologies.findOne({ _id: topology })
      if (doc === null) return undefined
      return {
        version: doc.version === undefined || doc.version === null ? undefined : Number(doc.version),
        generation: numberOf(doc.generation),
        fenced: doc.fenced === true,
      }
    })

  const setVersion: ReadModelReplayShape["setVersion"] = (topology, version) =>
    run(`Recording version ${version} of topology ${topology}`, async () => {
      await topologies.updateOne({ _id: topology }, { $set: { version } }, { upsert: true })
    })

  type Taken =
    | { readonly acquired: true; readonly token: string; readonly from: ReplayLockHolder | undefined }
    | { readonly acquired: false; readonly holder: ReplayLockHolder | undefined }

  const take = (topology: string, holder: ReplayLockHolder) =>
    run(`Taking the replay lock of topology ${topology}`, async (): Promise<Taken> => {
      for (let attempt = 0; attempt < 3; attempt++) {
        const token = randomUUID()
        const doc = { host: holder.host, pid: holder.pid, since: holder.since, token, beat: Date.now() }
        try {
          await locks.insertOne({ _id: topology, ...doc })
          heldHere.add(token)
          return { acquired: true, token, from: undefined }
        } catch (e) {
          if ((e as { code?: unknown })?.code !== 11000) throw e
        }
        const current = await locks.findOne({ _id: topology })
        if (current === null) continue
        if (!isStale(current, Date.now(), timing)) return { acquired: false, holder: holderOf(current) }
        // Only the stale lock just read is replaced: two replays taking it over at once cannot both win.
        const replaced = await locks.replaceOne({ _id: topology, token: current.token }, doc)
        if (replaced.matchedCount === 1) {
          heldHere.add(token)
          return { acquired: true, token, from: holderOf(current) }
        }
      }
      const current = await locks.findOne({ _id: topology })
      return { acquired: false, holder: current === null ? undefined : holderOf(current) }
    })

  const release = (topology: string, token: string) =>
    Effect.andThen(
      Effect.sync(() => {
        heldHere.delete(token)
        if (mine.get(topology) === token) mine.delete(topology)
      }),
      Effect.ignore(
        run(`Releasing the replay lock of topology ${topology}`, () => locks.deleteOne({ _id: topology, token })),
      ),
    )

  /** Renews the lock until the scope closes; a lock found taken over is given up, so `swap` refuses. */
  const renew = (topology: string, token: string) =>
    Effect.gen(function* () {
      while (heldHere.has(token)) {
        yield* Effect.sleep(timing.renewMs)
        const renewed = yield* Effect.option(
          run(`Renewing the replay lock of topology ${topology}`, () =>
            locks.updateOne({ _id: topology, token }, { $set: { beat: Date.now() } }),
          ),
        )
        if (renewed._tag === "Some" && renewed.value.matchedCount === 0) {
          heldHere.delete(token)
          yield* Effect.logWarning(
            `replay lock of topology ${topology}: lost (it was not renewed within ${timing.leaseMs} ms and was taken over); this replay will not swap`,
          )
        }
      }
    })

  const lock: ReadModelReplayShape["lock"] = (topology, holder) =>
    Effect.gen(function* () {
      const taken = yield* Effect.acquireRelease(take(topology, holder), (t) =>
        t.acquired ? release(topology, t.token) : Effect.void,
      )
      if (!taken.acquired) return { acquired: false as const, holder: taken.holder }
      mine.set(topology, taken.token)
      if (taken.from !== undefined)
        yield* Effect.logWarning(
          `replay lock of topology ${topology}: taken over from host ${taken.from.host}, pid ${taken.from.pid} (since ${new Date(taken.from.since).toISOString()}), which stopped renewing it`,
        )
      yield* Effect.forkScoped(renew(topology, taken.token))
      return { acquired: true as const }
    })

  /** Whether this instance still holds the topology's lock, as the database sees it. */
  const holding = async (topology: string): Promise<boolean> => {
    const token = mine.get(topology)
    if (token === undefined || !heldHere.has(token)) return false
    const doc = await locks.findOne({ _id: topology, token })
    return doc !== null && Date.now() - Number(doc.beat ?? 0) <= timing.leaseMs
  }

  const variant: ReadModelReplayShape["variant"] = (topology, templates, name, fingerprint) =>
    Effect.gen(function* () {
      const collections = templates.map((t) => variantTable(t.name, name))
      const state = yield* run(`Opening the ${name} copy of topology ${topology}`, async () => {
        const stored = await variants.findOne({ _id: variantId(topology, name) })
        const present = await existing(collections)
        if (stored?.fingerprint === fingerprint && collections.every((c) => present.has(c)))
          return { resumed: true, dropped: false }
        const dropped = stored !== null || present.size > 0
        // The record goes last: a copy killed half-made has none and is made again.
        await variants.deleteOne({ _id: variantId(topology, name) })
        await clear(topology, collections, name)
        return { resumed: false, dropped }
      })
      const store = ctx.variantStore(name)
      yield* store.ensure(templates)
      if (!state.resumed)
        yield* run(`Recording the ${name} copy of topology ${topology}`, () =>
          variants.replaceOne(
            { _id: variantId(topology, name) },
            { topology, variant: name, fingerprint, created: Date.now() },
            { upsert: true },
          ),
        )
      return { store, ...state }
    })

  const dropVariant: ReadModelReplayShape["dropVariant"] = (topology, names, name) =>
    run(`Dropping the ${name} copy of topology ${topology}`, async () => {
      await variants.deleteOne({ _id: variantId(topology, name) })
      await clear(
        topology,
        names.map((n) => variantTable(n, name)),
        name,
      )
    })

  const peekCheckpoint: ReadModelReplayShape["peekCheckpoint"] = (cp) =>
    run(
      `Reading checkpoint ${checkpointDocId(cp)}`,
      async () => readCheckpoint(await checkpoints.findOne({ _id: checkpointDocId(cp) })).next,
    )

  /** Waits for the topology's live batches recorded as pending; after a while applies the rest itself. */
  const settlePending = async (topology: string): Promise<void> => {
    const pending = () =>
      checkpoints
        .find({ topology, pending: { $exists: true } }, { projection: { _id: 1, depot: 1, partition: 1 } })
        .toArray()
    const until = Date.now() + timing.pendingWaitMs
    let left = await pending()
    while (left.length > 0 && Date.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, 20))
      left = await pending()
    }
    for (const doc of left) await ctx.recover({ topology, depot: String(doc.depot), partition: Number(doc.partition) })
  }

  const fence: ReadModelReplayShape["fence"] = (topology) =>
    run(`Fencing topology ${topology}`, async () => {
      await topologies.updateOne(
        { _id: topology },
        { $inc: { generation: 1 }, $set: { fenced: true } },
        { upsert: true },
      )
      const generation = numberOf((await topologies.findOne({ _id: topology }))?.generation)
      await checkpoints.updateMany({ topology, generation: { $not: { $gte: generation } } }, { $set: { generation } })
      await settlePending(topology)
    })

  const unfence: ReadModelReplayShape["unfence"] = (topology) =>
    run(`Unfencing topology ${topology}`, async () => {
      await topologies.updateOne({ _id: topology }, { $set: { fenced: false } })
    })

  /**
   * One renameCollection per template, the shadow over the live collection
   * with dropTarget, so each collection changes in one step: a reader of one
   * collection sees all the old documents or all the rebuilt ones. A
   * topology with several REC templates is swapped collection by collection,
   * all while the fence is up, so no live commit lands in between; but a
   * reader of two of its collections may, for that moment, see one rebuilt
   * and the other not yet. Should the process die between two renames, each
   * collection is still consistent with the live checkpoints (the old ones
   * and the rebuilt ones stood at exactly them), the fence stays up without
   * its lock and is ignored, and live streams go on over that mix until the
   * next replay, which finds the shadow incomplete, rebuilds it and swaps
   * again. The live checkpoints are kept; the record comes last.
   */
  const swap: ReadModelReplayShape["swap"] = (topology, names, version) =>
    Effect.suspend(() => {
      const shadows = names.map((n) => variantTable(n, SHADOW))
      /** Renames done by this call, so that a retried step goes on where it stopped. */
      const renamed = new Set<string>()
      return run(`Swapping the rebuilt read models of topology ${topology} in`, async () => {
        const present = await existing(shadows)
        const missing = shadows.filter((s) => !present.has(s) && !renamed.has(s))
        if (missing.length > 0)
          throw failed(
            `Swap refused: collection(s) ${missing.join(", ")} do not exist; run the replay again. Nothing was changed.`,
          )
        // The fence is only as good as the lock behind it: a lost lock lets live streams move on.
        if (!(await holding(topology)))
          throw failed(
            `Swap refused: the replay lock of topology ${topology} was lost (not renewed within ${timing.leaseMs} ms, or taken over), so live streams may have moved on. Nothing was changed; run the replay again.`,
          )
        for (const [i, name] of names.entries()) {
          const shadow = shadows[i] as string
          if (renamed.has(shadow)) continue
          await db.renameCollection(shadow, name, { dropTarget: true })
          renamed.add(shadow)
          // The collection's recorded template (drift detection) moves with it.
          const rec = await recorded.findOne({ _id: shadow })
          if (rec !== null) {
            const { _id, ...fields } = rec
            await recorded.replaceOne({ _id: name }, fields, { upsert: true })
            await recorded.deleteOne({ _id: shadow })
          }
        }
        await clear(topology, [], SHADOW)
        await variants.deleteOne({ _id: variantId(topology, SHADOW) })
        await topologies.updateOne({ _id: topology }, { $set: { version, fenced: false } }, { upsert: true })
      })
    })

  /**
   * Both collections in `_id` order, side by side: memory stays at `limit`
   * differences whatever the collections hold.
   */
  const diff: ReadModelReplayShape["diff"] = (name, variantName, limit) =>
    Effect.suspend(() => {
      const t = ctx.template(name)
      if (t === undefined)
        return Effect.fail(
          failed(`Cannot compare ${name}: this store has not ensured that template; ensure() it first.`),
        )
      const copyName = variantTable(name, variantName)
      return run(`Comparing ${name} with its ${variantName} copy`, async () => {
        const present = await existing([name, copyName])
        if (!present.has(name) || !present.has(copyName))
          throw failed(`Cannot compare ${name} with its ${variantName} copy: one of them does not exist.`)
        const open = (collection: string) =>
          db.collection(collection).find({}, { sort: { _id: 1 }, projection: { [SYSTEM_FIELD]: 0 } })
        const sides = [open(name), open(copyName)] as const
        try {
          const next = async (side: 0 | 1, previous: RowKey | undefined) => {
            const doc = await sides[side].next()
            if (doc === null) return undefined
            const key = keyFromId(t, doc._id)
            if (previous !== undefined && compareKeys(previous, key) >= 0)
              throw failed(
                `Cannot compare ${name} with its ${variantName} copy: the server returned key ${keyId(key)} after ${keyId(previous)}, out of the order the comparison relies on.`,
              )
            return { key, row: ctx.decode(t, doc) }
          }
          let count = 0
          const first: Array<RowDifference> = []
          const differ = (key: RowKey, live: Row | null, copy: Row | null) => {
            count++
            if (first.length < limit) first.push({ key, live, copy })
          }
          let live = await next(0, undefined)
          let copy = await next(1, undefined)
          while (live !== undefined || copy !== undefined) {
            const order = live === undefined ? 1 : copy === undefined ? -1 : compareKeys(live.key, copy.key)
            if (order < 0 && live !== undefined) {
              differ(live.key, live.row, null)
              live = await next(0, live.key)
            } else if (order > 0 && copy !== undefined) {
              differ(copy.key, null, copy.row)
              copy = await next(1, copy.key)
            } else if (live !== undefined && copy !== undefined) {
              if (canonical(t, live.row) !== canonical(t, copy.row)) differ(live.key, live.row, copy.row)
              live = await next(0, live.key)
              copy = await next(1, copy.key)
            }
          }
          return { count, first }
        } finally {
          await Promise.all(sides.map((s) => s.close().catch(() => undefined)))
        }
      })
    })

  return { record, setVersion, lock, variant, dropVariant, peekCheckpoint, fence, unfence, swap, diff }
}
