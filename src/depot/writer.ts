/**
 * Group commit: one writer fiber per partition. Appends queue up while the
 * previous commit is in flight and go out together in the next one, so a
 * lightly loaded engine commits each append at once (sub-millisecond) and a
 * busy one commits hundreds per transaction — no fixed timer to wait for.
 *
 * The queue is a plain array of callbacks rather than Effect queues and
 * deferreds: this is the hottest path of the engine and each append should
 * cost one closure, not a handful of fibers' worth of allocations.
 */
import { Context, Effect, Fiber, Layer, Schedule } from "effect"
import type { StoreError } from "../errors.ts"
import type { Depot } from "./depot.ts"
import type { AppendOutcome, AppendRequest, Event } from "./event.ts"
import { DepotStore } from "./store.ts"

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

    const take = (p: Partition): Array<Pending> => {
      const batch = p.pending.length <= options.batchMax ? p.pending : p.pending.slice(0, options.batchMax)
      p.pending = p.pending.length <= options.batchMax ? [] : p.pending.slice(options.batchMax)
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

    for (const depot of depots)
      for (let partition = 0; partition < depot.partitions; partition++) {
        const p: Partition = { depot: depot.name, partition, pending: [], blocked: [], wake: undefined }
        partitions.set(`${depot.name}/${partition}`, p)
        const loop = Effect.forever(
          Effect.andThen(
            nonEmpty(p),
            Effect.suspend(() => commit(p.depot, p.partition, take(p))),
          ),
        )
        fibers.push(yield* Effect.forkDetach(loop))
      }
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
