/**
 * Group commit: appends queue up per partition while the previous commit is
 * in flight and go out together in the next one, so a lightly loaded engine
 * commits each append at once (sub-millisecond) and a busy one commits
 * hundreds per transaction — no fixed timer to wait for.
 *
 * One writer fiber per partition, or, where the store can commit several
 * partitions at once (`appendAll`, the MariaDB store), a pool of writers
 * over all partitions: a commit carries the waiting batches of several
 * partitions (up to batchMax appends), so an engine under moderate load pays
 * one round trip and one log sync per round instead of one per partition.
 * Per-partition order holds either way: a partition's next batch is taken
 * only after its previous one was answered.
 *
 * The queue is a plain array of callbacks rather than Effect queues and
 * deferreds: this is the hottest path of the engine and each append should
 * cost one closure, not a handful of fibers' worth of allocations.
 */
import { Context, Effect, Fiber, Layer, Schedule } from "effect"
import type { StoreError } from "../errors.ts"
import type { Depot } from "./depot.ts"
import type { AppendOutcome, AppendRequest, Event } from "./event.ts"
import { DepotStore, type DepotStoreShape } from "./store.ts"

/** Receives an append's outcome, or the store's error. Called once. */
export type AppendCallback = (result: AppendOutcome | StoreError) => void

interface Pending {
  readonly request: AppendRequest
  readonly done: AppendCallback
}

interface Partition {
  readonly depot: string
  readonly partition: number
  /** Appends waiting for the next commit, in call order. */
  pending: Array<Pending>
  /** Appends beyond `inFlight`, admitted as the queue drains (backpressure). */
  readonly blocked: Array<Pending>
  /** Wakes the writer fiber when it sleeps on an empty queue. */
  wake: (() => void) | undefined
}

/** Called after each commit with the events it appended (duplicates excluded). */
export type AppendListener = (depot: string, partition: number, events: ReadonlyArray<Event>, head: number) => void

export interface DepotWriterShape {
  /** Appends one request through its partition's group commit; resolves once durable. */
  readonly append: (
    depot: string,
    partition: number,
    request: AppendRequest,
  ) => Effect.Effect<AppendOutcome, StoreError>
  /**
   * `append` for callers outside a fiber (transports): no Effect is built or
   * run per append. `done` is called once, from the writer's commit.
   */
  readonly appendWith: (depot: string, partition: number, request: AppendRequest, done: AppendCallback) => void
  /** Registers a listener for committed appends (topology runners, followers). */
  readonly listen: (listener: AppendListener) => Effect.Effect<void>
  /** Commits in the lifetime of this writer, and the appends they carried. */
  readonly stats: () => { readonly commits: number; readonly appends: number }
}

export class DepotWriter extends Context.Service<DepotWriter, DepotWriterShape>()("beds/DepotWriter") {}

export interface WriterOptions {
  /** Most appends in one commit. */
  readonly batchMax: number
  /** Appends waiting per partition before `append` suspends (backpressure). */
  readonly inFlight: number
}

/** Transient store failures are retried with capped backoff; the appends wait, nothing is acknowledged meanwhile. */
const retryPolicy = Schedule.min([Schedule.exponential("20 millis", 2), Schedule.spaced("2 seconds")])

export const make = (depots: ReadonlyArray<Depot>, options: WriterOptions) =>
  Effect.gen(function* () {
    const store = yield* DepotStore
    const listeners: Array<AppendListener> = []
    const stats = { commits: 0, appends: 0 }
    const partitions = new Map<string, Partition>()
    const fibers: Array<Fiber.Fiber<unknown, unknown>> = []
    const retrying = <A>(effect: Effect.Effect<A, StoreError>) =>
      Effect.retry(effect, { schedule: retryPolicy, while: (e) => e.retryable })

    /** Answers a pending append; a callback that throws cannot stop the others being answered. */
    const deliver = (p: Pending, result: AppendOutcome | StoreError) => {
      try {
        p.done(result)
      } catch (e) {
        Effect.runFork(Effect.logError(`an append's reply callback threw: ${String(e)}`))
      }
    }

    /** Tells listeners what a committed batch appended, then answers its appends. */
    const committed = (
      depot: string,
      partition: number,
      batch: ReadonlyArray<Pending>,
      outcomes: ReadonlyArray<AppendOutcome>,
    ) => {
      stats.appends += batch.length
      const fresh: Array<Event> = []
      for (const o of outcomes) if (o._tag === "Appended" && !o.duplicate) fresh.push(o.event)
      // Listeners rely on offset order; outcomes come in request order, which is the same for every correct store.
      for (let i = 1; i < fresh.length; i++)
        if ((fresh[i] as Event).offset < (fresh[i - 1] as Event).offset) {
          fresh.sort((a, b) => a.offset - b.offset)
          break
        }
      if (fresh.length > 0) {
        const head = (fresh[fresh.length - 1] as Event).offset + 1
        for (const l of listeners) l(depot, partition, fresh, head)
      }
      for (let i = 0; i < batch.length; i++) deliver(batch[i] as Pending, outcomes[i] as AppendOutcome)
    }

    const storeAppend = (depot: string, partition: number, batch: ReadonlyArray<Pending>) =>
      Effect.map(
        retrying(
          store.append(
            depot,
            partition,
            batch.map((p) => p.request),
          ),
        ),
        (outcomes) => {
          stats.commits++
          committed(depot, partition, batch, outcomes)
        },
      )

    /**
     * Requests that must name a stored parent are checked here, in queue
     * order. A parent may sit earlier in the same batch (not yet committed):
     * then the batch is cut before the child, the prefix committed, and the
     * child checked again.
     */
    const commit = (depot: string, partition: number, batch: ReadonlyArray<Pending>): Effect.Effect<void> => {
      // Appends not answered yet: on a failure, exactly these get the error.
      let rest = batch
      return Effect.gen(function* () {
        while (rest.length > 0) {
          let cut = rest.length
          for (let i = 0; i < rest.length; i++) {
            const r = (rest[i] as Pending).request
            if (r.checkParent !== true || r.parent === undefined) continue
            if ((yield* retrying(store.byId(r.parent))) !== undefined) continue
            cut = i
            break
          }
          if (cut === 0) {
            // The first request's parent is neither stored nor earlier in this batch.
            const first = rest[0] as Pending
            deliver(first, { _tag: "UnknownParent", parent: first.request.parent as string })
            rest = rest.slice(1)
            continue
          }
          yield* storeAppend(depot, partition, cut === rest.length ? rest : rest.slice(0, cut))
          rest = rest.slice(cut)
        }
      }).pipe(
        Effect.catch((error: StoreError) =>
          Effect.sync(() => {
            for (const p of rest) deliver(p, error)
          }),
        ),
      )
    }

    const take = (p: Partition, max = options.batchMax): Array<Pending> => {
      const batch = p.pending.length <= max ? p.pending : p.pending.slice(0, max)
      p.pending = p.pending.length <= max ? [] : p.pending.slice(max)
      while (p.blocked.length > 0 && p.pending.length < options.inFlight) p.pending.push(p.blocked.shift() as Pending)
      return batch
    }

    const nonEmpty = (p: Partition) =>
      Effect.callback<void>((resume) => {
        if (p.pending.length > 0) return resume(Effect.void)
        p.wake = () => {
          p.wake = undefined
          resume(Effect.void)
        }
        return Effect.sync(() => {
          p.wake = undefined
        })
      })

    const needsParentCheck = (batch: ReadonlyArray<Pending>) =>
      batch.some((p) => p.request.checkParent === true && p.request.parent !== undefined)

    type Taken = { readonly p: Partition; readonly batch: Array<Pending> }

    /**
     * Commits batches of several partitions: one `appendAll` for those that
     * name no parent to check; the one-partition path for the others, and
     * for every batch of a combined commit that failed (it says which
     * partition failed, and why).
     */
    const commitTaken = (taken: ReadonlyArray<Taken>, appendAll: NonNullable<DepotStoreShape["appendAll"]>) => {
      const together: Array<Taken> = []
      const alone: Array<Taken> = []
      for (const t of taken) (needsParentCheck(t.batch) ? alone : together).push(t)
      if (together.length === 1) alone.unshift(together.pop() as Taken)
      const eachAlone = (ts: ReadonlyArray<Taken>) =>
        Effect.forEach(ts, ({ p, batch }) => commit(p.depot, p.partition, batch), { discard: true })
      const combined =
        together.length === 0
          ? Effect.void
          : appendAll(
              together.map(({ p, batch }) => ({
                depot: p.depot,
                partition: p.partition,
                requests: batch.map((x) => x.request),
              })),
            ).pipe(
              Effect.andThen((outcomes) =>
                Effect.sync(() => {
                  stats.commits++
                  for (let i = 0; i < together.length; i++) {
                    const { p, batch } = together[i] as Taken
                    committed(p.depot, p.partition, batch, outcomes[i] as ReadonlyArray<AppendOutcome>)
                  }
                }),
              ),
              Effect.catch(() => eachAlone(together)),
            )
      return Effect.andThen(combined, eachAlone(alone))
    }

    /** A partition's own committer: its waiting appends go out together once its previous commit is answered. */
    const committerOf = (p: Partition) =>
      Effect.forever(
        Effect.andThen(
          nonEmpty(p),
          Effect.suspend(() => commit(p.depot, p.partition, take(p))),
        ),
      )

    /**
     * A pool of committers shared by all partitions: the loop returned is
     * one committer, to be started as many times as there are partitions,
     * and all of them share this pool's state. A committer takes the waiting
     * batches of partitions no other commit holds, up to batchMax appends in
     * all. While a commit is in flight another starts only with a full
     * batch's worth waiting: light load makes one commit of many partitions'
     * small batches at a time, heavy load one commit per partition, in
     * parallel.
     */
    const committerPool = (all: ReadonlyArray<Partition>, appendAll: NonNullable<DepotStoreShape["appendAll"]>) => {
      const busy = new Set<Partition>()
      let committing = 0
      const idle: Array<() => void> = []
      let woken = false
      const signal = () => {
        if (woken) return
        const next = idle.shift()
        if (next === undefined) return
        woken = true
        next()
      }
      const ready = () => {
        let waiting = 0
        for (const p of all) if (!busy.has(p)) waiting += p.pending.length
        return waiting > 0 && (committing === 0 || waiting >= options.batchMax)
      }
      for (const p of all) p.wake = () => busy.has(p) || !ready() || signal()
      const waitReady = Effect.callback<void>((resume) => {
        if (ready()) return resume(Effect.void)
        const resumeMe = () => resume(Effect.void)
        idle.push(resumeMe)
        return Effect.sync(() => {
          const i = idle.indexOf(resumeMe)
          if (i >= 0) idle.splice(i, 1)
        })
      })
      let cursor = 0
      const round = Effect.suspend(() => {
        woken = false
        const taken: Array<Taken> = []
        let budget = options.batchMax
        for (let k = 0; k < all.length && budget > 0; k++) {
          const p = all[(cursor + k) % all.length] as Partition
          if (p.pending.length === 0 || busy.has(p)) continue
          const batch = take(p, budget)
          budget -= batch.length
          busy.add(p)
          taken.push({ p, batch })
        }
        cursor = (cursor + 1) % all.length
        if (taken.length === 0) return Effect.void
        committing++
        // Another committer may take what is left over.
        if (ready()) signal()
        return commitTaken(taken, appendAll).pipe(
          Effect.ensuring(
            Effect.sync(() => {
              committing--
              for (const t of taken) busy.delete(t.p)
              if (ready()) signal()
            }),
          ),
        )
      })
      return Effect.forever(Effect.andThen(waitReady, round))
    }

    for (const depot of depots)
      for (let partition = 0; partition < depot.partitions; partition++)
        partitions.set(`${depot.name}/${partition}`, {
          depot: depot.name,
          partition,
          pending: [],
          blocked: [],
          wake: undefined,
        })
    const all = [...partitions.values()]
    const appendAll = store.appendAll
    const pooled = appendAll !== undefined && all.length > 1 ? committerPool(all, appendAll) : undefined
    for (const p of all) fibers.push(yield* Effect.forkDetach(pooled ?? committerOf(p)))
    yield* Effect.addFinalizer(() => Effect.forEach(fibers, Fiber.interrupt, { discard: true }))

    const appendWith: DepotWriterShape["appendWith"] = (depot, partition, request, done) => {
      const p = partitions.get(`${depot}/${partition}`)
      if (p === undefined) throw new Error(`no writer for ${depot}/${partition}`)
      const pending = { request, done }
      if (p.pending.length >= options.inFlight) p.blocked.push(pending)
      else p.pending.push(pending)
      p.wake?.()
    }

    const append: DepotWriterShape["append"] = (depot, partition, request) =>
      Effect.callback<AppendOutcome, StoreError>((resume) => {
        try {
          appendWith(depot, partition, request, (r) =>
            resume(r._tag === "StoreError" ? Effect.fail(r) : Effect.succeed(r)),
          )
        } catch (e) {
          resume(Effect.die(e))
        }
      })

    return DepotWriter.of({
      append,
      appendWith,
      listen: (l) => Effect.sync(() => void listeners.push(l)),
      stats: () => ({ ...stats }),
    })
  })

export const layer = (depots: ReadonlyArray<Depot>, options: WriterOptions) =>
  Layer.effect(DepotWriter, make(depots, options))
