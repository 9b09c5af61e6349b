/**
 * Group commit: one writer fiber per partition. Appends queue up while the
 * previous commit is in flight and go out together in the next one, so a
 * lightly loaded engine commits each append at once (sub-millisecond) and a
 * busy one commits hundreds per transaction — no fixed timer to wait for.
 */
import { Context, Deferred, Effect, Fiber, Layer, Queue, Schedule } from "effect"
import type { StoreError } from "../errors.ts"
import type { Depot } from "./depot.ts"
import type { AppendOutcome, AppendRequest, Event } from "./event.ts"
import { DepotStore } from "./store.ts"

interface Pending {
  readonly request: AppendRequest
  readonly done: Deferred.Deferred<AppendOutcome, StoreError>
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
    const queues = new Map<string, Queue.Queue<Pending>>()
    const fibers: Array<Fiber.Fiber<unknown, unknown>> = []

    const storeAppend = (depot: string, partition: number, batch: ReadonlyArray<Pending>) =>
      Effect.gen(function* () {
        const outcomes = yield* store
          .append(
            depot,
            partition,
            batch.map((p) => p.request),
          )
          .pipe(Effect.retry({ schedule: retryPolicy, while: (e) => e.retryable }))
        stats.commits++
        stats.appends += batch.length
        const fresh: Array<Event> = []
        for (const o of outcomes) if (o._tag === "Appended" && !o.duplicate) fresh.push(o.event)
        if (fresh.length > 0) {
          const head = (fresh[fresh.length - 1] as Event).offset + 1
          for (const l of listeners) l(depot, partition, fresh, head)
        }
        for (let i = 0; i < batch.length; i++)
          Deferred.doneUnsafe((batch[i] as Pending).done, Effect.succeed(outcomes[i] as AppendOutcome))
      })

    /**
     * Requests that must name a stored parent are checked here, in queue
     * order. A parent may sit earlier in the same batch (not yet committed):
     * then the batch is cut before the child, the prefix committed, and the
     * child checked again.
     */
    const commit = (depot: string, partition: number, batch: ReadonlyArray<Pending>): Effect.Effect<void> =>
      Effect.gen(function* () {
        let rest = batch
        while (rest.length > 0) {
          let cut = rest.length
          for (let i = 0; i < rest.length; i++) {
            const r = (rest[i] as Pending).request
            if (r.checkParent !== true || r.parent === undefined) continue
            if (
              (yield* store.byId(r.parent).pipe(Effect.retry({ schedule: retryPolicy, while: (e) => e.retryable }))) !==
              undefined
            )
              continue
            cut = i
            break
          }
          if (cut === 0) {
            // The first request's parent is neither stored nor earlier in this batch.
            const first = rest[0] as Pending
            Deferred.doneUnsafe(
              first.done,
              Effect.succeed({ _tag: "UnknownParent", parent: first.request.parent as string }),
            )
            rest = rest.slice(1)
            continue
          }
          yield* storeAppend(depot, partition, rest.slice(0, cut))
          rest = rest.slice(cut)
        }
      }).pipe(
        Effect.catch((error: StoreError) =>
          Effect.sync(() => {
            for (const p of batch) Deferred.doneUnsafe(p.done, Effect.fail(error))
          }),
        ),
      )

    for (const depot of depots)
      for (let partition = 0; partition < depot.partitions; partition++) {
        const queue = yield* Queue.bounded<Pending>(options.inFlight)
        queues.set(`${depot.name}/${partition}`, queue)
        const loop = Effect.forever(
          Effect.flatMap(Queue.takeBetween(queue, 1, options.batchMax), (batch) =>
            commit(depot.name, partition, batch),
          ),
        )
        fibers.push(yield* Effect.forkDetach(loop))
      }
    yield* Effect.addFinalizer(() => Effect.forEach(fibers, Fiber.interrupt, { discard: true }))

    const append: DepotWriterShape["append"] = (depot, partition, request) =>
      Effect.suspend(() => {
        const queue = queues.get(`${depot}/${partition}`)
        if (queue === undefined) return Effect.die(new Error(`no writer for ${depot}/${partition}`))
        return Effect.flatMap(Deferred.make<AppendOutcome, StoreError>(), (done) =>
          Effect.andThen(Queue.offer(queue, { request, done }), Deferred.await(done)),
        )
      })

    return DepotWriter.of({
      append,
      listen: (l) => Effect.sync(() => void listeners.push(l)),
      stats: () => ({ ...stats }),
    })
  })

export const layer = (depots: ReadonlyArray<Depot>, options: WriterOptions) =>
  Layer.effect(DepotWriter, make(depots, options))
