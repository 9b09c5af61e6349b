/**
 * REC read models in MongoDB with the official driver: one collection per
 * template (indexes and drift from template/mongo-plan.ts), documents and
 * bulk writes from mongo-ops.ts, checkpoints in `beds_checkpoint`.
 *
 * Exactly-once, chosen at start from the server's `hello` (see mongo-ops.ts
 * for the mechanism):
 * - replica set or sharded cluster: `transaction` — a batch's documents and
 *   its checkpoint commit in one transaction;
 * - standalone server: `guarded` — the batch is journaled in its checkpoint
 *   document, then applied with writes guarded by the position each document
 *   has applied, then the checkpoint moves; a crash anywhere is completed by
 *   re-applying the journaled batch, which changes nothing that was applied.
 *
 * Replays (the port's blue/green operations) are in mongo-replay.ts; the
 * live store takes part in their fencing: reading a checkpoint notes the
 * topology's generation, and a commit's checkpoint write is guarded by it.
 * A variant (a replay's shadow, a snapshot) is served by this same store
 * code over `<name>__<variant>` collections and checkpoints of its own.
 *
 * Driver errors are classified here, once: unreachable servers, network
 * errors, `RetryableWriteError`/`TransientTransactionError` labels and
 * NotWritablePrimary-like codes are retryable (and retried a few times here,
 * every operation being idempotent); everything else fails naming the
 * template and the operation.
 */
import { Effect, Layer, Schedule, type Scope } from "effect"
import {
  type AnyBulkWriteOperation,
  type ClientSession,
  type Db,
  type Document,
  Long,
  MongoBulkWriteError,
  MongoClient,
  MongoError,
  MongoNetworkError,
  MongoOperationTimeoutError,
  MongoParseError,
  MongoServerSelectionError,
} from "mongodb"
import { StoreError } from "../errors.ts"
import { checkEnsured } from "../template/load.ts"
import { type ActualCollection, planCollection, type Step, stepText } from "../template/mongo-plan.ts"
import { checkKey, keyId, type Row, type RowKey, type Template } from "../template/template.ts"
import {
  CHECKPOINT_COLLECTION,
  checkpointDocId,
  checkpointUpdate,
  checkUnique,
  chunkText,
  finishUpdate,
  fromDocument,
  INLINE_JOURNAL_BYTES,
  idOf,
  JOURNAL_COLLECTION,
  journalChunkId,
  journalText,
  journalWrites,
  keyFromId,
  OUTBOX_COLLECTION,
  type Prepared,
  pendingUpdate,
  planBatch,
  positionOf,
  prepareBatch,
  readCheckpoint,
  type Stored,
  SYSTEM_FIELD,
  storedQuery,
  TEMPLATES_COLLECTION,
  UnreadableValue,
  uniqueQuery,
} from "./mongo-ops.ts"
import {
  commitGuard,
  DEFAULT_TIMING,
  enterStream,
  fencedCommit,
  pausedStream,
  REPLAY_COLLECTIONS,
  type ReplayTiming,
  replayOps,
} from "./mongo-replay.ts"
import type { Outbox, OutboxEntry, RecBackend } from "./router.ts"
import { type CheckpointId, ReadModelStore, type ReadModelStoreShape, type RowWrite } from "./store.ts"
import { variantCheckpointTopology, variantTable } from "./variant.ts"

export interface MongoSettings {
  /** `mongodb://host:port` or `mongodb+srv://...`, with credentials and options if needed. */
  readonly url: string
  /** The database BEDS owns; created by MongoDB on first write. */
  readonly database: string
  /** Most connections per process (default 20); each partition writer uses one while it commits. */
  readonly pool?: number | undefined
  /** How long to look for a usable server before an operation fails as unavailable (default 5000). */
  readonly connectTimeoutMs?: number | undefined
  /** How long a single operation may wait on its socket before it fails, retryably (default 60000). */
  readonly operationTimeoutMs?: number | undefined
  /**
   * `auto` (default): transactions on a replica set or sharded cluster,
   * guarded writes on a standalone server. `guarded` forces guarded writes
   * (e.g. to test them on a replica set); `transaction` refuses to start
   * without transactions.
   */
  readonly exactlyOnce?: "auto" | "transaction" | "guarded" | undefined
}

/** How a MongoDB store makes each batch take effect exactly once. */
export type ExactlyOnceMode = "transaction" | "guarded"

/** The MongoDB store, the router outbox it keeps, and the mode it chose. */
export interface MongoBackend extends RecBackend {
  readonly mode: ExactlyOnceMode
}

/** The router's outbox collection (see router.ts). */
const OUTBOX = OUTBOX_COLLECTION

/** A system document: `_id` is a string of safe names. */
type SystemDoc = Document & { _id: string }
/** A read-model document: `_id` is a key value, or a document of key values. */
// biome-ignore lint/suspicious/noExplicitAny: keys of any template shape
type ModelDoc = Document & { _id: any }

const RETRYABLE_LABELS = [
  "RetryableWriteError",
  "TransientTransactionError",
  "UnknownTransactionCommitResult",
  "ResetPool",
  "PoolRequestedRetry",
  "RetryableError",
  "SystemOverloadedError",
]

const RETRYABLE_CODES = new Set([
  6, // HostUnreachable
  7, // HostNotFound
  24, // LockTimeout
  64, // WriteConcernFailed (our writes are idempotent, so repeating is safe)
  89, // NetworkTimeout
  91, // ShutdownInProgress
  112, // WriteConflict
  189, // PrimarySteppedDown
  251, // NoSuchTransaction
  262, // ExceededTimeLimit
  9001, // SocketException
  10107, // NotWritablePrimary
  11600, // InterruptedAtShutdown
  11602, // InterruptedDueToReplStateChange
  13435, // NotPrimaryNoSecondaryOk
  13436, // NotPrimaryOrSecondary
])

const DUPLICATE_KEY = 11000
const NAMESPACE_EXISTS = 48

/** A connection string without its password, for messages. */
export const redact = (url: string): string => url.replace(/\/\/[^@/]*@/, "//***@")

/** Turns a driver error into a StoreError that says what failed and whether retrying may help. */
export const classify = (what: string, where: string, cause: unknown): StoreError => {
  if (cause instanceof StoreError) return cause
  const e = cause as { message?: string; code?: unknown; name?: string }
  const message = e?.message ?? String(cause)
  if (cause instanceof MongoServerSelectionError || cause instanceof MongoNetworkError)
    return new StoreError({
      code: "STORE_UNAVAILABLE",
      message: `${what}: cannot reach ${where} (${message}). Is the server running, and is the url right (engine.rec = "mongodb", [mongodb] url or BEDS_MONGO_URL)?`,
      retryable: true,
      cause,
    })
  // The connection-string parser has its own MongoParseError class: match the name.
  if (cause instanceof MongoParseError || e?.name === "MongoParseError")
    return new StoreError({
      code: "STORE_FAILED",
      message: `${what}: the MongoDB url is not a connection string (${message}); use mongodb://host:port or mongodb+srv://host.`,
      retryable: false,
      cause,
    })
  const labelled = cause instanceof MongoError && RETRYABLE_LABELS.some((l) => cause.hasErrorLabel(l))
  const retryable =
    labelled ||
    (typeof e?.code === "number" && RETRYABLE_CODES.has(e.code)) ||
    cause instanceof MongoOperationTimeoutError ||
    e?.name === "MongoPoolClearedError"
  return new StoreError({ code: "STORE_FAILED", message: `${what} failed on ${where}: ${message}`, retryable, cause })
}

const failed = (message: string, cause?: unknown): StoreError =>
  new StoreError({ code: "STORE_FAILED", message, retryable: false, cause })

const corrupt = (message: string, cause?: unknown): StoreError =>
  new StoreError({ code: "CORRUPT", message, retryable: false, cause })

/** Write errors of a bulk write that are duplicate keys, with the index each names. */
const duplicates = (cause: unknown): ReadonlyArray<{ readonly index: string; readonly message: string }> => {
  const errors =
    cause instanceof MongoBulkWriteError
      ? [cause.writeErrors].flat()
      : cause instanceof MongoError && cause.code === DUPLICATE_KEY
        ? [{ code: DUPLICATE_KEY, errmsg: cause.message }]
        : []
  return errors
    .filter((w) => w.code === DUPLICATE_KEY)
    .map((w) => {
      const message = w.errmsg ?? ""
      return { index: /index: (\S+)/.exec(message)?.[1] ?? "?", message }
    })
}

const DATABASE_NAME = /^[A-Za-z0-9_-]{1,63}$/

/** Connects, picks the exactly-once mode, and builds the store and its outbox. */
export const backend = (settings: MongoSettings): Effect.Effect<MongoBackend, StoreError, Scope.Scope> =>
  Effect.gen(function* () {
    const where = `MongoDB at ${redact(settings.url)}/${settings.database}`
    if (!DATABASE_NAME.test(settings.database))
      return yield* failed(
        `MongoDB database name ${JSON.stringify(settings.database)} is not usable: use 1-63 letters, digits, _ or -.`,
      )
    const client = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: async () => {
          const c = new MongoClient(settings.url, {
            appName: "beds",
            maxPoolSize: settings.pool ?? 20,
            serverSelectionTimeoutMS: settings.connectTimeoutMs ?? 5000,
            connectTimeoutMS: settings.connectTimeoutMs ?? 5000,
            socketTimeoutMS: settings.operationTimeoutMs ?? 60_000,
            retryWrites: true,
            retryReads: true,
            // A commit is acknowledged once it survives a crash of the primary.
            writeConcern: { w: "majority", journal: true },
          })
          await c.connect()
          return c
        },
        catch: (cause) => classify("Connecting", where, cause),
      }),
      (c) => Effect.promise(() => c.close().catch(() => undefined)),
    )
    const db = client.db(settings.database)

    const run = runner(where)

    const hello: Document = yield* run("Asking the server what it is (hello)", () =>
      db
        .admin()
        .command({ hello: 1 })
        // Servers before 4.4.2 know the same command as isMaster.
        .catch((e: unknown) =>
          e instanceof MongoError && e.code === 59 ? db.admin().command({ isMaster: 1 }) : Promise.reject(e),
        ),
    )
    const transactional =
      (typeof hello.setName === "string" || hello.msg === "isdbgrid") && hello.logicalSessionTimeoutMinutes != null
    const wanted = settings.exactlyOnce ?? "auto"
    if (wanted === "transaction" && !transactional)
      return yield* failed(
        `${where} is a standalone server, which has no transactions, but exactlyOnce = "transaction" was asked for. Run it as a replica set (a single-node one is enough: mongod --replSet rs0, then rs.initiate()), or leave exactlyOnce at "auto".`,
      )
    const mode: ExactlyOnceMode = wanted === "guarded" || !transactional ? "guarded" : "transaction"
    yield* Effect.logInfo(
      mode === "transaction"
        ? `read models on ${where}: ${typeof hello.setName === "string" ? `replica set ${hello.setName}` : "sharded cluster"}, each batch commits its documents and checkpoint in one transaction`
        : `read models on ${where}: ${transactional ? "guarded writes asked for" : "standalone server (no transactions)"}, each batch is journaled, then applied with position-guarded idempotent writes`,
    )

    return open({ client, db, mode, where, database: settings.database })
  })

/** Runs driver calls for one server: errors classified, retryable ones retried a few times before they surface. */
const runner =
  (where: string) =>
  <A>(what: string, f: () => Promise<A>): Effect.Effect<A, StoreError> =>
    Effect.tryPromise({ try: f, catch: (cause) => classify(what, where, cause) }).pipe(
      Effect.retry({ while: (e) => e.retryable, times: 3, schedule: Schedule.exponential("100 millis", 2) }),
    )

/** A connected client, as `backend` opens it. */
export interface MongoConnection {
  readonly client: MongoClient
  readonly db: Db
  readonly mode: ExactlyOnceMode
  /** The server and database, for messages (no password). */
  readonly where: string
  /** The database name, for messages. */
  readonly database: string
  /** How long replay locks live and fences wait; the defaults suit production. */
  readonly timing?: ReplayTiming | undefined
}

/**
 * Where a store instance keeps its documents and checkpoints: the live models
 * in collections named as their templates, or a variant (replay shadow,
 * snapshot) in `<name>__<variant>` with checkpoints of its own.
 */
interface Naming {
  readonly collection: (template: string) => string
  readonly topology: (topology: string) => string
  /** Live stores take part in fencing (see mongo-replay.ts); variants are guarded by the replay lock instead. */
  readonly live: boolean
}

const LIVE: Naming = { collection: (t) => t, topology: (t) => t, live: true }

const variantNaming = (variant: string): Naming => ({
  collection: (t) => variantTable(t, variant),
  topology: (t) => variantCheckpointTopology(t, variant),
  live: false,
})

/** Builds the store, its outbox and its replay operations over a connected client. */
export const open = (connection: MongoConnection): MongoBackend => {
  const { client, db, mode, where, database } = connection
  const timing = connection.timing ?? DEFAULT_TIMING
  const run = runner(where)
  const checkpoints = db.collection<SystemDoc>(CHECKPOINT_COLLECTION)
  const journal = db.collection<SystemDoc>(JOURNAL_COLLECTION)
  const recorded = db.collection<SystemDoc>(TEMPLATES_COLLECTION)
  const outboxes = db.collection<SystemDoc>(OUTBOX)

  const createIfMissing = async (name: string): Promise<void> => {
    await db.createCollection(name).catch((e: unknown) => {
      if (!(e instanceof MongoError && e.code === NAMESPACE_EXISTS)) throw e
    })
  }

  const resetId = (topology: string): string => `reset:${topology}`

  /** The store over the live models, or over a variant's copies of them. */
  const build = (naming: Naming) => {
    const templates = new Map<string, Template>()
    /** Streams whose last guarded commit did not finish in this process: recover before the next. */
    const dirty = new Set<string>()
    /** Per live checkpoint: the topology generation its stream saw when it read the checkpoint. */
    const seen = new Map<string, number>()
    const physical = (name: string): string => naming.collection(name)
    const own = (cp: CheckpointId): CheckpointId =>
      naming.live ? cp : { ...cp, topology: naming.topology(cp.topology) }

    const unknown = (name: string): StoreError =>
      failed(
        `Unknown template ${JSON.stringify(name)}: this read-model store knows ${[...templates.keys()].join(", ") || "no templates"}; ensure() the template before using it.`,
      )
    const get = (name: string): Effect.Effect<Template, StoreError> => {
      const t = templates.get(name)
      return t === undefined ? Effect.fail(unknown(name)) : Effect.succeed(t)
    }

    // -----------------------------------------------------------------------
    // ensure

    const describeCollection = async (name: string): Promise<ActualCollection> => {
      const exists = (await db.listCollections({ name }, { nameOnly: true }).toArray()).length > 0
      const coll = db.collection<ModelDoc>(name)
      const rec = await recorded.findOne({ _id: name })
      return {
        exists,
        documents: exists ? await coll.estimatedDocumentCount() : 0,
        recorded: typeof rec?.template === "string" ? (JSON.parse(rec.template) as Template) : undefined,
        indexes: exists
          ? (await coll.listIndexes().toArray()).map((i) => ({
              name: String(i.name),
              key: i.key as Document,
              unique: i.unique === true,
              partialFilterExpression: i.partialFilterExpression as Document | undefined,
            }))
          : [],
      }
    }

    const applyStep = async (t: Template, step: Step): Promise<void> => {
      const coll = db.collection<ModelDoc>(physical(t.name))
      switch (step.kind) {
        case "createCollection":
          return createIfMissing(physical(t.name))
        case "createIndex":
          await coll.createIndex(step.index.key, {
            name: step.index.name,
            ...(step.index.unique ? { unique: true } : {}),
            ...(step.index.partialFilterExpression === undefined
              ? {}
              : { partialFilterExpression: step.index.partialFilterExpression }),
          })
          return
        case "fillDefault":
          await coll.updateMany({ [step.field]: { $exists: false } }, { $set: { [step.field]: step.value } })
          return
        case "record":
          await recorded.replaceOne(
            { _id: physical(t.name) },
            { tla: t.tla, file: t.file, template: JSON.stringify(t), ensured: new Date() },
            { upsert: true },
          )
          return
      }
    }

    const ensure: ReadModelStoreShape["ensure"] = (list) =>
      Effect.gen(function* () {
        const bad = checkEnsured(templates.values(), list, { backend: "rec", store: "MongoDB" })
        if (bad !== undefined) return yield* failed(bad.message, bad)

        yield* run("Creating the system collections", async () => {
          for (const name of [
            CHECKPOINT_COLLECTION,
            JOURNAL_COLLECTION,
            TEMPLATES_COLLECTION,
            OUTBOX,
            ...REPLAY_COLLECTIONS,
          ])
            await createIfMissing(name)
        })
        const plans: Array<{ readonly template: Template; readonly steps: ReadonlyArray<Step> }> = []
        const drift: Array<string> = []
        for (const t of list) {
          const actual = yield* run(`Reading collection ${physical(t.name)} (its indexes and recorded template)`, () =>
            describeCollection(physical(t.name)),
          )
          const plan = planCollection(t, actual)
          if (plan.unsafe.length > 0)
            drift.push(
              `Collection ${database}.${physical(t.name)} does not match template ${t.name} (${t.tla}, ${t.file}):\n${plan.unsafe.map((u) => `  - ${u}`).join("\n")}`,
            )
          plans.push({ template: t, steps: plan.safe })
        }
        // Nothing is applied while any collection has drifted, so a refused start-up leaves everything as it was.
        if (drift.length > 0)
          return yield* new StoreError({
            code: "SCHEMA_DRIFT",
            message: `${drift.join("\n")}\nThese changes could alter or lose stored values, so BEDS will not make them. Either replay into a new template (new name and TLA) and drop the old collection once the new one has caught up, or migrate the collection by hand so that it matches the template (\`beds templates\` prints the wanted indexes), then start again.`,
            retryable: false,
          })
        for (const { template, steps } of plans)
          for (const step of steps) {
            yield* run(
              `Applying to collection ${physical(template.name)}: ${stepText(physical(template.name), step)}`,
              () => applyStep(template, step),
            )
            if (naming.live && (step.kind === "createIndex" || step.kind === "fillDefault"))
              yield* Effect.logInfo(`read model ${template.name}: applied ${stepText(template.name, step)}`)
          }
        for (const t of list) templates.set(t.name, t)
      })

    // -----------------------------------------------------------------------
    // reads

    const decode = (t: Template, doc: Document): Row => {
      try {
        return fromDocument(t, doc)
      } catch (e) {
        if (e instanceof UnreadableValue)
          throw corrupt(
            `${t.name} document ${JSON.stringify(doc._id)} holds a value no ${t.name} row can have (${e.message}); was it written by something other than BEDS? Reset and replay the topology that writes ${t.name}.`,
            e,
          )
        throw e
      }
    }

    const load: ReadModelStoreShape["load"] = (name, keys) =>
      Effect.gen(function* () {
        const t = yield* get(name)
        const wanted = new Map<string, { key: RowKey; asked: Array<string> }>()
        for (const key of keys) {
          const k = checkKey(t, key)
          if (!k.ok) return yield* failed(`Loading ${name}: ${k.problem}.`)
          const id = keyId(k.value)
          const entry = wanted.get(id) ?? { key: k.value, asked: [] }
          entry.asked.push(keyId(key))
          wanted.set(id, entry)
        }
        const out = new Map<string, Row>()
        if (wanted.size === 0) return out
        const ids = [...wanted.values()].map((w) => idOf(t, w.key))
        const filter: Document = { _id: { $in: ids } }
        const docs = yield* run(`Loading ${ids.length} ${name} document(s)`, () =>
          db
            .collection<ModelDoc>(physical(name))
            .find(filter, { projection: { [SYSTEM_FIELD]: 0 } })
            .toArray(),
        )
        for (const doc of docs) {
          const row = yield* Effect.try({ try: () => decode(t, doc), catch: (e) => e as StoreError })
          for (const asked of wanted.get(keyId(keyFromId(t, doc._id)))?.asked ?? []) out.set(asked, row)
        }
        return out
      })

    const scan: ReadModelStoreShape["scan"] = (name) =>
      Effect.gen(function* () {
        const t = yield* get(name)
        const docs = yield* run(`Scanning ${name}`, () =>
          db
            .collection<ModelDoc>(physical(name))
            .find({}, { projection: { [SYSTEM_FIELD]: 0 }, sort: { _id: 1 } })
            .toArray(),
        )
        return yield* Effect.try({ try: () => docs.map((d) => decode(t, d)), catch: (e) => e as StoreError })
      })

    // -----------------------------------------------------------------------
    // writes

    const byTemplate = (prepared: ReadonlyArray<Prepared>): Map<string, Array<Prepared>> => {
      const m = new Map<string, Array<Prepared>>()
      for (const p of prepared) {
        const list = m.get(p.template.name) ?? []
        list.push(p)
        m.set(p.template.name, list)
      }
      return m
    }

    /** The positions the touched documents have applied for this stream (absent: no document). */
    const readStored = async (
      cp: CheckpointId,
      prepared: ReadonlyArray<Prepared>,
      session?: ClientSession,
    ): Promise<Stored> => {
      const stored = new Map<string, Map<string, number | null>>()
      for (const [name, ps] of byTemplate(prepared)) {
        const t = ps[0]?.template as Template
        const q = storedQuery(cp, ps)
        const docs = await db
          .collection<ModelDoc>(physical(name))
          .find(q.filter, { projection: q.projection, ...(session === undefined ? {} : { session }) })
          .toArray()
        stored.set(name, new Map(docs.map((d) => [keyId(keyFromId(t, d._id)), positionOf(d, cp) ?? null])))
      }
      return stored
    }

    const writePlans = async (
      cp: CheckpointId,
      next: number,
      prepared: ReadonlyArray<Prepared>,
      stored: Stored,
      session?: ClientSession,
    ): Promise<void> => {
      for (const plan of planBatch(cp, next, prepared, stored))
        if (plan.ops.length > 0)
          await db.collection(physical(plan.template.name)).bulkWrite(plan.ops as Array<AnyBulkWriteOperation>, {
            ordered: true,
            ...(session === undefined ? {} : { session }),
          })
    }

    const refusedDuplicate = (
      prepared: ReadonlyArray<Prepared>,
      cause: unknown,
      after: string,
    ): StoreError | undefined => {
      const dup = duplicates(cause).find((d) => d.index !== "_id_")
      if (dup === undefined) return undefined
      const names = [...new Set(prepared.map((p) => p.template.name))]
      const template = names.find((n) => dup.message.includes(`.${physical(n)} `)) ?? names.join(", ")
      return failed(
        `Commit refused: a ${template} document would repeat a value of unique index ${dup.index} (${dup.message.replace(/^.*dup key: /, "")}). ${after}`,
        cause,
      )
    }

    const commitInTransaction = (
      cp: CheckpointId,
      next: number,
      prepared: ReadonlyArray<Prepared>,
      saw: number | undefined,
    ) =>
      Effect.tryPromise({
        try: () =>
          client.withSession((session) =>
            session.withTransaction(
              async () => {
                const c = checkpointUpdate(cp, next)
                if (saw === undefined) await checkpoints.updateOne(c.filter, c.update, { upsert: true, session })
                else {
                  // First, so that a fenced batch writes nothing, and a fence stamping this document
                  // from now on waits for the transaction to end (see mongo-replay.ts). The counter makes
                  // it a write even when the checkpoint does not move: a no-op update locks nothing.
                  const guarded = await checkpoints.updateOne(
                    { ...c.filter, ...commitGuard(saw) },
                    { ...c.update, $inc: { commits: 1 } },
                    { session },
                  )
                  if (guarded.matchedCount === 0) throw fencedCommit(cp)
                }
                const stored = await readStored(cp, prepared, session)
                await writePlans(cp, next, prepared, stored, session)
              },
              { readConcern: { level: "snapshot" }, writeConcern: { w: "majority" }, readPreference: "primary" },
            ),
          ),
        catch: (cause) =>
          refusedDuplicate(prepared, cause, "Nothing was written.") ??
          classify(`Committing ${describeBatch(cp, next, prepared)}`, where, cause),
      })

    /** Applies a batch under the position guards; a duplicate `_id` means another writer inserted it meanwhile: re-plan. */
    const applyGuarded = async (
      cp: CheckpointId,
      next: number,
      prepared: ReadonlyArray<Prepared>,
      first: Stored,
    ): Promise<void> => {
      let stored = first
      for (let attempt = 0; ; attempt++) {
        try {
          await writePlans(cp, next, prepared, stored)
          return
        } catch (e) {
          if (attempt >= 3 || !duplicates(e).some((d) => d.index === "_id_")) throw e
          stored = await readStored(cp, prepared)
        }
      }
    }

    const journalChunks = async (cp: CheckpointId, next: number, count: number): Promise<string> => {
      const ids = Array.from({ length: count }, (_, i) => journalChunkId(cp, next, i))
      const docs = await journal.find({ _id: { $in: ids } }).toArray()
      const byId = new Map(docs.map((d) => [String(d._id), String(d.data)]))
      const parts = ids.map((id) => byId.get(id))
      if (parts.some((p) => p === undefined))
        throw corrupt(
          `The pending batch of ${checkpointDocId(cp)} (to offset ${next}) is missing journal chunks in ${JOURNAL_COLLECTION}; reset and replay the topology ${cp.topology}.`,
        )
      return parts.join("")
    }

    const chunkPrefix = (cp: CheckpointId): RegExp => new RegExp(`^${checkpointDocId(cp)}@`)

    /** Finishes a stream's pending batch, if it has one; answers the stream's next offset. */
    const recover = async (cp: CheckpointId): Promise<number> => {
      const id = checkpointDocId(cp)
      const { next, pending } = readCheckpoint(await checkpoints.findOne({ _id: id }))
      if (pending === undefined) {
        dirty.delete(id)
        return next
      }
      const text = pending.writes ?? (await journalChunks(cp, pending.next, pending.chunks ?? 0))
      const prepared = prepareBatch((name) => templates.get(name), journalWrites(text))
      if (!prepared.ok)
        throw corrupt(
          `The pending batch of ${id} (to offset ${pending.next}) no longer fits its templates: ${prepared.problem} Undo the template change, or reset and replay the topology ${cp.topology}.`,
        )
      await applyGuarded(cp, pending.next, prepared.value, await readStored(cp, prepared.value))
      const f = finishUpdate(cp, pending.next)
      await checkpoints.updateOne(f.filter, f.update)
      if (pending.chunks !== undefined) await journal.deleteMany({ _id: { $regex: chunkPrefix(cp) } })
      dirty.delete(id)
      return pending.next
    }

    /** Throws the refusal a unique index would give this batch, reading the documents holding its values. */
    const checkUniqueIndexes = async (prepared: ReadonlyArray<Prepared>, stored: Stored): Promise<void> => {
      for (const [name, ps] of byTemplate(prepared)) {
        const t = ps[0]?.template as Template
        const q = uniqueQuery(t, ps)
        if (q === undefined) continue
        const holders = await db
          .collection<ModelDoc>(name)
          .find(q, { projection: { [SYSTEM_FIELD]: 0 } })
          .toArray()
        const rows = new Map(holders.map((d) => [keyId(keyFromId(t, d._id)), decode(t, d)]))
        const clash = checkUnique(t, ps, rows, (x) => stored.get(name)?.has(x) === true)
        if (clash !== undefined) throw failed(clash)
      }
    }

    const commitGuarded = async (
      cp: CheckpointId,
      next: number,
      prepared: ReadonlyArray<Prepared>,
      saw: number | undefined,
    ): Promise<void> => {
      const id = checkpointDocId(cp)
      if (dirty.has(id)) await recover(cp)
      const stored = await readStored(cp, prepared)
      // Without a transaction a refusal halfway could not be undone: check unique indexes first.
      await checkUniqueIndexes(prepared, stored)
      dirty.add(id)
      const text = journalText(prepared)
      let chunks: number | undefined
      if (Buffer.byteLength(text, "utf8") > INLINE_JOURNAL_BYTES) {
        const parts = chunkText(text)
        await journal.deleteMany({ _id: { $regex: chunkPrefix(cp) } })
        await journal.insertMany(parts.map((data, i) => ({ _id: journalChunkId(cp, next, i), data })))
        chunks = parts.length
      }
      // The commit point: from here on the batch will be applied, now or by recover().
      const p = pendingUpdate(cp, { next, writes: chunks === undefined ? text : undefined, chunks })
      if (saw === undefined) await checkpoints.updateOne(p.filter, p.update, { upsert: true })
      else {
        // One write to the document a fence stamps: either the batch is pending before the stamp
        // (and the fence waits for it), or it is refused here (see mongo-replay.ts).
        const guarded = await checkpoints.updateOne({ ...p.filter, ...commitGuard(saw) }, p.update)
        if (guarded.matchedCount === 0) {
          if (chunks !== undefined) await journal.deleteMany({ _id: { $regex: chunkPrefix(cp) } })
          dirty.delete(id)
          throw fencedCommit(cp)
        }
      }
      try {
        await applyGuarded(cp, next, prepared, stored)
      } catch (e) {
        throw (
          refusedDuplicate(
            prepared,
            e,
            `The batch is recorded as pending and part of it may be applied; it is re-applied when the stream starts again. Resolve the clash (reset and replay the topology ${cp.topology}).`,
          ) ?? e
        )
      }
      const f = finishUpdate(cp, next)
      await checkpoints.updateOne(f.filter, f.update)
      if (chunks !== undefined) await journal.deleteMany({ _id: { $regex: chunkPrefix(cp) } })
      dirty.delete(id)
    }

    const describeBatch = (cp: CheckpointId, next: number, prepared: ReadonlyArray<Prepared>): string =>
      `${prepared.length} document write(s) to ${[...byTemplate(prepared).keys()].join(", ") || "no collection"} with checkpoint ${checkpointDocId(cp)} = ${next}`

    const commit: ReadModelStoreShape["commit"] = (stream, next, writes) =>
      Effect.gen(function* () {
        const cp = own(stream)
        const prepared = prepareBatch((name) => templates.get(name), writes)
        if (!prepared.ok) return yield* failed(prepared.problem)
        const batch = prepared.value
        const saw = naming.live ? seen.get(checkpointDocId(cp)) : undefined
        const attempt =
          mode === "transaction"
            ? commitInTransaction(cp, next, batch, saw)
            : Effect.tryPromise({
                try: () => commitGuarded(cp, next, batch, saw),
                catch: (cause) => classify(`Committing ${describeBatch(cp, next, batch)}`, where, cause),
              })
        yield* attempt.pipe(
          Effect.retry({ while: (e) => e.retryable, times: 3, schedule: Schedule.exponential("100 millis", 2) }),
        )
      })

    const finishReset = async (topology: string, names: ReadonlyArray<string>): Promise<void> => {
      for (const name of names) await db.collection<ModelDoc>(physical(name)).deleteMany({})
      // Back to 0 rather than deleted: the documents keep the fence's generation stamp that live commits are guarded by.
      await checkpoints.updateMany({ topology }, { $set: { next: Long.fromNumber(0) }, $unset: { pending: "" } })
      await journal.deleteMany({ _id: { $regex: new RegExp(`^${topology}/`) } })
      await checkpoints.deleteOne({ _id: resetId(topology) })
      for (const id of [...dirty]) if (id.startsWith(`${topology}/`)) dirty.delete(id)
    }

    const checkpoint: ReadModelStoreShape["checkpoint"] = (stream) =>
      Effect.gen(function* () {
        const cp = own(stream)
        const id = checkpointDocId(cp)
        yield* run(`Reading the reset record of topology ${cp.topology}`, async () => {
          const marker = await checkpoints.findOne({ _id: resetId(cp.topology) })
          if (Array.isArray(marker?.reset)) await finishReset(cp.topology, marker.reset as Array<string>)
        })
        // The generation is taken before the checkpoint is read: a fence in between makes the first commit fail, never pass.
        const entered = naming.live
          ? yield* run(`Reading the fence of topology ${cp.topology}`, () => enterStream(db, cp, timing))
          : undefined
        if (entered?.paused === true) return yield* pausedStream(cp.topology)
        const next = yield* run(`Reading checkpoint ${id}`, () => recover(cp))
        if (entered?.paused === false) seen.set(id, entered.generation)
        return next
      })

    const reset: ReadModelStoreShape["reset"] = (given, names) =>
      Effect.gen(function* () {
        const topology = naming.live ? given : naming.topology(given)
        for (const n of names) yield* get(n)
        // Several deletes cannot be one step without a transaction, and a large one should not be:
        // the marker makes an interrupted reset finish at the stream's next start.
        yield* run(`Resetting ${names.join(", ") || "no templates"} for topology ${topology}`, async () => {
          await checkpoints.updateOne({ _id: resetId(topology) }, { $set: { reset: [...names] } }, { upsert: true })
          await finishReset(topology, names)
        })
      })

    // A replay stopped mid-commit must not leave the commit running behind a second replay's back:
    // a variant's commit finishes (or fails) before the interruption goes through.
    const store = ReadModelStore.of({
      ensure,
      load,
      commit: naming.live ? commit : (cp, next, writes) => Effect.uninterruptible(commit(cp, next, writes)),
      checkpoint,
      scan,
      reset,
    })
    return { store, templates, recover, decode, readStored, checkUniqueIndexes }
  }

  const live = build(LIVE)

  // -----------------------------------------------------------------------
  // The router's outbox: one document per stream, large entries in journal chunks.

  const outboxChunkId = (stream: CheckpointId, next: number, i: number): string =>
    `outbox:${journalChunkId(stream, next, i)}`
  const outboxPrefix = (stream: CheckpointId): RegExp => new RegExp(`^outbox:${checkpointDocId(stream)}@`)

  const outbox: Outbox = {
    put: (stream, entry) =>
      run(`Recording the REC half of batch ${checkpointDocId(stream)} ${entry.from}..${entry.next}`, async () => {
        const text = JSON.stringify(entry.writes)
        // Old chunks are only ever read for the entry being replaced, so they may go first.
        await journal.deleteMany({ _id: { $regex: outboxPrefix(stream) } })
        let chunks: number | undefined
        if (Buffer.byteLength(text, "utf8") > INLINE_JOURNAL_BYTES) {
          const parts = chunkText(text)
          await journal.insertMany(parts.map((data, i) => ({ _id: outboxChunkId(stream, entry.next, i), data })))
          chunks = parts.length
        }
        await outboxes.replaceOne(
          { _id: checkpointDocId(stream) },
          {
            topology: stream.topology,
            from: entry.from,
            next: entry.next,
            ...(chunks === undefined ? { writes: text } : { chunks }),
          },
          { upsert: true },
        )
      }),
    get: (stream) =>
      run(`Reading the outbox of ${checkpointDocId(stream)}`, async (): Promise<OutboxEntry | undefined> => {
        const doc = await outboxes.findOne({ _id: checkpointDocId(stream) })
        if (doc === null) return undefined
        const next = Number(doc.next)
        let text = typeof doc.writes === "string" ? doc.writes : undefined
        if (text === undefined) {
          const count = Number(doc.chunks ?? 0)
          const ids = Array.from({ length: count }, (_, i) => outboxChunkId(stream, next, i))
          const parts = await journal.find({ _id: { $in: ids } }).toArray()
          const byId = new Map(parts.map((d) => [String(d._id), String(d.data)]))
          if (ids.some((id) => !byId.has(id))) return undefined
          text = ids.map((id) => byId.get(id)).join("")
        }
        return { from: Number(doc.from), next, writes: JSON.parse(text) as ReadonlyArray<RowWrite> }
      }),
    beginReset: (topology, names) =>
      run(`Recording a reset of topology ${topology}`, async () => {
        await outboxes.replaceOne({ _id: resetId(topology) }, { reset: [...names] }, { upsert: true })
      }),
    pendingReset: (topology) =>
      run(`Reading the reset record of topology ${topology}`, async () => {
        const doc = await outboxes.findOne({ _id: resetId(topology) })
        return Array.isArray(doc?.reset) ? (doc.reset as ReadonlyArray<string>) : undefined
      }),
    endReset: (topology) =>
      run(`Closing the reset of topology ${topology}`, async () => {
        await outboxes.deleteMany({ topology })
        await journal.deleteMany({ _id: { $regex: new RegExp(`^outbox:${topology}/`) } })
        await outboxes.deleteOne({ _id: resetId(topology) })
      }),
  }

  const check: RecBackend["check"] = (writes) =>
    Effect.gen(function* () {
      const prepared = prepareBatch((name) => live.templates.get(name), writes)
      if (!prepared.ok) return yield* failed(prepared.problem)
      const batch = prepared.value
      // Any stream's position will do: only which documents exist matters here.
      const probe: CheckpointId = { topology: "check", depot: "check", partition: 0 }
      yield* run(`Checking ${batch.length} document write(s) against unique indexes`, async () =>
        live.checkUniqueIndexes(batch, await live.readStored(probe, batch)),
      )
    })

  const replay = replayOps({
    db,
    run,
    template: (name) => live.templates.get(name),
    decode: live.decode,
    recover: live.recover,
    variantStore: (variant) => build(variantNaming(variant)).store,
    timing,
  })

  return { store: ReadModelStore.of({ ...live.store, replay }), outbox, check, mode }
}

/** The MongoDB store alone. */
export const make = (settings: MongoSettings): Effect.Effect<ReadModelStoreShape, StoreError, Scope.Scope> =>
  Effect.map(backend(settings), (b) => b.store)

/** The MongoDB store as a Layer; the client closes with the Layer's scope. */
export const layer = (settings: MongoSettings): Layer.Layer<ReadModelStore, StoreError> =>
  Layer.effect(ReadModelStore, make(settings))
