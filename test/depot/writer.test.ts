/**
 * The group-commit writer: per-partition order, one commit for several
 * partitions where the store offers `appendAll`, and a fallback to one
 * partition at a time that puts an error only where it belongs.
 */
import { Effect, Schema } from "effect"
import { describe, expect, it } from "vitest"
import * as Depot from "../../src/depot/depot.ts"
import type { AppendOutcome, AppendRequest } from "../../src/depot/event.ts"
import * as Memory from "../../src/depot/memory.ts"
import { DepotStore, type DepotStoreShape } from "../../src/depot/store.ts"
import * as Writer from "../../src/depot/writer.ts"
import { StoreError } from "../../src/errors.ts"

const logs = Depot.make({ name: "logs", partitions: 4, key: "log", events: { Noted: Schema.Struct({}) } })

const req = (messageId: string): AppendRequest => ({ messageId, type: "Noted", key: messageId, payload: {}, time: 0 })

/**
 * A memory store that records its commits (which partitions each carried)
 * and can hold them: while `held`, commits wait for `release`.
 */
const recordingStore = (options: {
  readonly appendAll: boolean
  readonly failAll?: boolean
  readonly fenced?: number
}) => {
  const base = Memory.make()
  const commits: Array<ReadonlyArray<number>> = []
  let inFlight = 0
  let maxInFlight = 0
  let gate: Promise<void> | undefined
  let open: () => void = () => undefined
  const hold = () => {
    gate = new Promise<void>((r) => {
      open = r
    })
  }
  const release = () => {
    gate = undefined
    open()
  }
  const around = <A>(partitions: ReadonlyArray<number>, effect: Effect.Effect<A, StoreError>) =>
    Effect.gen(function* () {
      inFlight++
      maxInFlight = Math.max(maxInFlight, inFlight)
      commits.push(partitions)
      const waitFor = gate
      if (waitFor !== undefined) yield* Effect.promise(() => waitFor)
      inFlight--
      return yield* effect
    })
  const fencedError = new StoreError({ code: "FENCED", message: "another writer", retryable: false })
  const store: DepotStoreShape = {
    ...base,
    append: (depot, partition, requests) =>
      around(
        [partition],
        partition === options.fenced ? Effect.fail(fencedError) : base.append(depot, partition, requests),
      ),
    appendAll: options.appendAll
      ? (batches) =>
          around(
            batches.map((b) => b.partition),
            options.failAll === true
              ? Effect.fail(new StoreError({ code: "STORE_FAILED", message: "refused", retryable: false }))
              : Effect.forEach(batches, (b) => base.append(b.depot, b.partition, b.requests)),
          )
      : undefined,
  }
  return { store, commits, hold, release, maxInFlight: () => maxInFlight }
}

/** A writer over `store`; `f` gets an append that resolves with its outcome. */
const withWriter = <A>(store: DepotStoreShape, batchMax: number, f: (append: Append) => Promise<A>) =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function* () {
        const writer = yield* Writer.make([logs], { batchMax, inFlight: 10_000 })
        const append = (partition: number, id: string) =>
          new Promise<AppendOutcome | StoreError>((resolve) => writer.appendWith("logs", partition, req(id), resolve))
        return yield* Effect.promise(() => f(append))
      }).pipe(Effect.provideService(DepotStore, store)),
    ),
  )

const tick = () => new Promise((r) => setTimeout(r, 10))

type Append = (partition: number, id: string) => Promise<AppendOutcome | StoreError>

/**
 * Holds the store's commits, appends "a0" to partition 0, then `more` while
 * that commit is in flight; runs `whileHeld`, releases, and returns every
 * outcome, the first one's first.
 */
const behindFirstCommit = async (
  s: ReturnType<typeof recordingStore>,
  append: Append,
  more: () => Array<Promise<AppendOutcome | StoreError>>,
  whileHeld: () => void = () => undefined,
) => {
  s.hold()
  const first = append(0, "a0")
  await tick()
  const rest = more()
  await tick()
  whileHeld()
  s.release()
  return Promise.all([first, ...rest])
}
const offsetOf = (o: AppendOutcome | StoreError) => (o._tag === "Appended" ? o.event.offset : -1)

describe("depot writer", () => {
  it("appends waiting on several partitions behind a commit in flight go out in one commit, each partition in order", async () => {
    const s = recordingStore({ appendAll: true })
    const outcomes = await withWriter(s.store, 1000, (append) =>
      behindFirstCommit(s, append, () => [
        append(1, "b0"),
        append(0, "a1"),
        append(2, "c0"),
        append(1, "b1"),
        append(3, "d0"),
      ]),
    )
    expect(s.commits).toHaveLength(2)
    expect(s.commits[0]).toEqual([0])
    expect([...(s.commits[1] ?? [])].sort()).toEqual([0, 1, 2, 3])
    expect(outcomes.map(offsetOf)).toEqual([0, 0, 1, 0, 1, 0])
  })

  it("a refused combined commit is retried one partition at a time: only the failing partition's appends fail", async () => {
    const s = recordingStore({ appendAll: true, failAll: true, fenced: 2 })
    const outcomes = await withWriter(s.store, 1000, (append) =>
      behindFirstCommit(s, append, () => [append(1, "b0"), append(2, "c0"), append(3, "d0")]),
    )
    expect(outcomes.map((o) => o._tag)).toEqual(["Appended", "Appended", "StoreError", "Appended"])
    expect((outcomes[2] as StoreError).code).toBe("FENCED")
    // The combined try, then each of its three partitions alone.
    expect(s.commits.slice(1).map((c) => c.length)).toEqual([3, 1, 1, 1])
  })

  it("with a full batch's worth waiting, a second commit runs beside the one in flight", async () => {
    const s = recordingStore({ appendAll: true })
    await withWriter(s.store, 10, (append) =>
      behindFirstCommit(
        s,
        append,
        () => Array.from({ length: 25 }, (_, i) => append(1, `b${i}`)),
        () => expect(s.maxInFlight()).toBe(2),
      ),
    )
    expect(s.commits.every((c) => c.length === 1)).toBe(true)
  })

  it("a small batch waits for the commit in flight instead of starting its own", async () => {
    const s = recordingStore({ appendAll: true })
    await withWriter(s.store, 10, (append) =>
      behindFirstCommit(
        s,
        append,
        () => [append(1, "b0"), append(2, "c0")],
        () => expect(s.maxInFlight()).toBe(1),
      ),
    )
  })

  it("without appendAll each partition has its own writer, committing beside the others", async () => {
    const s = recordingStore({ appendAll: false })
    const outcomes = await withWriter(s.store, 1000, (append) =>
      behindFirstCommit(
        s,
        append,
        () => [append(1, "b0")],
        () => expect(s.maxInFlight()).toBe(2),
      ),
    )
    expect(outcomes.map(offsetOf)).toEqual([0, 0])
    expect(s.commits).toEqual([[0], [1]])
  })
})
