/**
 * The depot-store conformance suite. Every adapter registers it unchanged:
 *
 *   depotStoreConformance("file", () => FileDepot.layer(dir), { reopen: true })
 *
 * `makeLayer` is called once per store instance a test needs; instances made
 * by one `makeLayer` share their storage (a database, a folder) when the
 * adapter has any. Tests never share depots: each uses fresh depot names, so
 * storage may outlive a test. Like the engine, tests keep each key in one
 * partition of its depot.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import * as fc from "fast-check"
import * as Depot from "../../src/depot/depot.ts"
import type { AppendOutcome, AppendRequest, Event } from "../../src/depot/event.ts"
import { DepotStore, type DepotStoreShape } from "../../src/depot/store.ts"
import type { StoreError } from "../../src/errors.ts"

/** What an adapter can do beyond the port's minimum. */
export interface DepotStoreCapabilities {
  /** A new instance over the same storage sees everything appended before. */
  readonly reopen?: boolean
  /** Two instances may write the same storage; a stale one must be FENCED. */
  readonly fencing?: boolean
  /** Runs of the model-based property (default 100). */
  readonly propertyRuns?: number
  /** Offers `appendAll`: batches of several partitions in one commit. */
  readonly appendAll?: boolean
}

const T0 = 1_767_225_600_000

/** A request with sensible defaults; `extra` overrides. */
const req = (messageId: string, key: string, extra: Partial<AppendRequest> = {}): AppendRequest => ({
  messageId,
  type: "Noted",
  key,
  payload: { note: messageId },
  time: T0,
  ...extra,
})

const eventOf = (o: AppendOutcome | undefined): Event => {
  if (o?._tag !== "Appended") throw new Error(`expected an Appended outcome, got ${JSON.stringify(o)}`)
  return o.event
}

const fresh = (o: AppendOutcome | undefined): Event => {
  if (o?._tag !== "Appended" || o.duplicate) throw new Error(`expected a new event, got ${JSON.stringify(o)}`)
  return o.event
}

const duplicateOf = (o: AppendOutcome | undefined): Event => {
  if (o?._tag !== "Appended" || !o.duplicate) throw new Error(`expected a duplicate, got ${JSON.stringify(o)}`)
  return o.event
}

// ---------------------------------------------------------------------------
// The model: what a depot must contain after a sequence of requests, as a
// fold over them. State is the depot's events; everything else derives from it.

interface ModelRequest {
  readonly partition: number
  readonly request: AppendRequest
}

const modelVersion = (events: ReadonlyArray<Event>, partition: number, key: string): number =>
  events.filter((e) => e.partition === partition && e.key === key).length

const modelStep = (
  depot: string,
  events: ReadonlyArray<Event>,
  { partition, request: r }: ModelRequest,
): readonly [ReadonlyArray<Event>, AppendOutcome] => {
  const original = events.find((e) => e.messageId === r.messageId)
  if (original !== undefined) return [events, { _tag: "Appended", event: original, duplicate: true }]
  const actual = modelVersion(events, partition, r.key)
  if (r.expect !== undefined && r.expect !== actual)
    return [events, { _tag: "VersionConflict", key: r.key, expected: r.expect, actual }]
  const offset = events.filter((e) => e.partition === partition).length
  const own = `${depot}:${partition}:${offset}`
  const id = r.childId ?? (r.parent !== undefined ? `${r.parent}/${own}` : own)
  const cut = id.lastIndexOf("/")
  const event: Event = {
    id,
    depot,
    partition,
    offset,
    type: r.type,
    key: r.key,
    version: actual + 1,
    payload: r.payload,
    time: r.time,
    parent: cut < 0 ? null : id.slice(0, cut),
    root: id.split("/")[0] as string,
    messageId: r.messageId,
    metadata: r.metadata ?? {},
  }
  return [[...events, event], { _tag: "Appended", event, duplicate: false }]
}

// Generated requests name their expectation and lineage abstractly; they are
// made concrete against the model just before they are folded in.
interface GenRequest {
  readonly mid: number
  readonly keyIndex: number
  readonly expect:
    | { readonly kind: "none" }
    | { readonly kind: "right" }
    | { readonly kind: "wrong"; readonly delta: number }
  readonly lineage: "root" | "adopted" | "derived"
  readonly pick: number
  readonly payload: unknown
  readonly metadata: Readonly<Record<string, string>> | undefined
}
interface GenBatch {
  readonly partition: number
  readonly requests: ReadonlyArray<GenRequest>
}

const PROPERTY_PARTITIONS = 2
const KEYS_OF: ReadonlyArray<ReadonlyArray<string>> = [
  ["a", "c", "ключ"],
  ["b", "d", "b "],
]

const genRequest: fc.Arbitrary<GenRequest> = fc.record({
  mid: fc.integer({ min: 0, max: 11 }),
  keyIndex: fc.integer({ min: 0, max: 2 }),
  expect: fc.oneof(
    fc.constant({ kind: "none" as const }),
    fc.constant({ kind: "right" as const }),
    fc.record({ kind: fc.constant("wrong" as const), delta: fc.integer({ min: -2, max: 2 }).filter((d) => d !== 0) }),
  ),
  lineage: fc.constantFrom("root" as const, "adopted" as const, "derived" as const),
  pick: fc.nat(),
  // Stores keep JSON: -0 comes back as 0, so the model starts from JSON too.
  payload: fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.parse(JSON.stringify(v)) as unknown),
  metadata: fc.option(
    fc.dictionary(fc.stringMatching(/^[a-z-]{1,8}$/), fc.string({ unit: "grapheme", maxLength: 6 })),
    {
      nil: undefined,
    },
  ),
})

const genBatches: fc.Arbitrary<ReadonlyArray<GenBatch>> = fc.array(
  fc.record({
    partition: fc.integer({ min: 0, max: PROPERTY_PARTITIONS - 1 }),
    requests: fc.array(genRequest, { maxLength: 8 }),
  }),
  { maxLength: 8 },
)

const concretize = (
  depot: string,
  events: ReadonlyArray<Event>,
  partition: number,
  g: GenRequest,
  child: () => number,
): AppendRequest => {
  const key = KEYS_OF[partition]?.[g.keyIndex] as string
  const current = modelVersion(events, partition, key)
  const expectValue =
    g.expect.kind === "none" ? undefined : g.expect.kind === "right" ? current : Math.max(0, current + g.expect.delta)
  // Parents are earlier events when there are any (short IDs only, to stay far below the length limit).
  const candidates = events.filter((e) => e.id.length < 300)
  // Otherwise a position this depot never fills, so that child IDs stay unique to the run.
  const parent = candidates.length > 0 ? (candidates[g.pick % candidates.length] as Event).id : `${depot}:999:1`
  const base: AppendRequest = {
    messageId: `m${g.mid}`,
    type: "Generated",
    key,
    payload: g.payload,
    time: T0 + g.pick,
    expect: expectValue,
    metadata: g.metadata,
  }
  if (g.lineage === "adopted") return { ...base, parent }
  if (g.lineage === "derived") return { ...base, parent, childId: `${parent}/prop.${child()}` }
  return base
}

/** Folds one generated batch into the model: its concrete requests, their outcomes, the model after them. */
const foldBatch = (depot: string, before: ReadonlyArray<Event>, batch: GenBatch, child: () => number) => {
  let events = before
  const requests: Array<AppendRequest> = []
  const outcomes: Array<AppendOutcome> = []
  for (const g of batch.requests) {
    const request = concretize(depot, events, batch.partition, g, child)
    const [next, outcome] = modelStep(depot, events, { partition: batch.partition, request })
    events = next
    requests.push(request)
    outcomes.push(outcome)
  }
  return { events, requests, outcomes }
}

// ---------------------------------------------------------------------------

/** Registers the depot-store conformance tests for one adapter. */
export const depotStoreConformance = <E>(
  name: string,
  makeLayer: () => Layer.Layer<DepotStore, E>,
  capabilities: DepotStoreCapabilities = {},
): void => {
  const tag = Math.random().toString(36).slice(2, 7)
  let seq = 0
  /** A depot name no other test (or earlier run on the same storage) uses. */
  const freshName = (label = "d"): string => `${label}_${tag}_${seq++}`

  /** A new store instance, released with the test's scope. */
  // Suspended: the adapter's layer is made when a test runs, not when tests are collected
  // (a file store's folder only exists by then).
  const instance = Effect.suspend(() => Effect.map(Layer.build(makeLayer()), (ctx) => Context.get(ctx, DepotStore)))

  const declare = (name: string) => Depot.make({ name, partitions: 4, key: "test key", events: {} })

  /** A fresh instance with these depots opened. */
  const storeWith = (...depots: ReadonlyArray<string>) =>
    Effect.gen(function* () {
      const store = yield* instance
      yield* store.open(depots.map(declare))
      return store
    })

  const readAll = (store: DepotStoreShape, depot: string, partition: number) => store.read(depot, partition, 0, 100_000)

  const run = <A>(effect: Effect.Effect<A, StoreError>) => Effect.runPromise(effect)

  /** The store holds exactly the model's events: logs, heads, versions and message_ids. */
  const matchesModel = async (store: DepotStoreShape, d: string, events: ReadonlyArray<Event>) => {
    for (let p = 0; p < PROPERTY_PARTITIONS; p++) {
      const mine = events.filter((e) => e.partition === p)
      expect(await run(readAll(store, d, p))).toEqual(mine)
      expect(await run(store.head(d, p))).toBe(mine.length)
      for (const key of KEYS_OF[p] ?? []) expect(await run(store.version(d, p, key))).toBe(modelVersion(events, p, key))
    }
    for (let m = 0; m < 12; m++)
      expect(await run(store.byMessageId(d, `m${m}`))).toEqual(events.find((e) => e.messageId === `m${m}`))
  }

  /** One generated batch made concrete against the model, and the outcomes the model gives it. */
  type Step = { readonly requests: Array<AppendRequest>; readonly outcomes: Array<AppendOutcome> }

  /**
   * The model-based property: random runs of batches on a fresh depot, sent
   * to the store by `play`, after which the store holds exactly the model's
   * events. `step` folds one batch into the model (in the order `play`
   * sends them) and gives its requests and expected outcomes.
   */
  const modelProperty = (
    label: string,
    play: (
      store: DepotStoreShape,
      d: string,
      batches: ReadonlyArray<GenBatch>,
      step: (batch: GenBatch) => Step,
    ) => Promise<void>,
  ) =>
    Effect.gen(function* () {
      const store = yield* instance
      yield* Effect.promise(() =>
        fc.assert(
          fc.asyncProperty(genBatches, async (batches) => {
            const d = freshName(label)
            await run(store.open([declare(d)]))
            let events: ReadonlyArray<Event> = []
            let childSeq = 0
            await play(store, d, batches, (batch) => {
              const folded = foldBatch(d, events, batch, () => childSeq++)
              events = folded.events
              return folded
            })
            await matchesModel(store, d, events)
          }),
          { numRuns: capabilities.propertyRuns ?? 100 },
        ),
      )
    })

  describe(`DepotStore conformance: ${name}`, () => {
    describe("offsets", () => {
      it.effect("start at 0 and grow by one per event, in request order, across batches", () =>
        Effect.gen(function* () {
          const d = freshName()
          const store = yield* storeWith(d)
          const sizes = [3, 1, 5]
          const outcomes: Array<AppendOutcome> = []
          let n = 0
          for (const size of sizes) {
            const batch = Array.from({ length: size }, () => {
              const i = n++
              return req(`m${i}`, `k${i % 2}`, { type: i % 2 === 0 ? "Opened" : "Closed" })
            })
            outcomes.push(...(yield* store.append(d, 0, batch)))
          }
          expect(outcomes.map((o) => fresh(o).offset)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8])
          const events = yield* readAll(store, d, 0)
          expect(events.map((e) => e.offset)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8])
          expect(events.map((e) => e.messageId)).toEqual(outcomes.map((_, i) => `m${i}`))
          expect(events.map((e) => e.type)).toEqual(outcomes.map((_, i) => (i % 2 === 0 ? "Opened" : "Closed")))
          expect(events).toEqual(outcomes.map(fresh))
        }),
      )

      it.effect("an empty batch appends nothing", () =>
        Effect.gen(function* () {
          const d = freshName()
          const store = yield* storeWith(d)
          expect(yield* store.append(d, 0, [])).toEqual([])
          yield* store.append(d, 0, [req("m0", "k")])
          expect(yield* store.append(d, 0, [])).toEqual([])
          expect(yield* store.head(d, 0)).toBe(1)
        }),
      )

      it.effect("a batch of 1000 is appended gaplessly", () =>
        Effect.gen(function* () {
          const d = freshName()
          const store = yield* storeWith(d)
          yield* store.append(d, 1, [req("first", "k0")])
          const batch = Array.from({ length: 1000 }, (_, i) => req(`m${i}`, `k${i % 37}`))
          const out = yield* store.append(d, 1, batch)
          expect(out.map((o) => fresh(o).offset)).toEqual(Array.from({ length: 1000 }, (_, i) => i + 1))
          expect(yield* store.head(d, 1)).toBe(1001)
          const events = yield* readAll(store, d, 1)
          expect(events.length).toBe(1001)
          expect(events.every((e, i) => e.offset === i)).toBe(true)
          expect(yield* store.version(d, 1, "k0")).toBe(1 + Math.ceil(1000 / 37))
        }),
      )

      it.effect("head is the next offset: 0 when empty, the event count after appends", () =>
        Effect.gen(function* () {
          const d = freshName()
          const store = yield* storeWith(d)
          expect(yield* store.head(d, 0)).toBe(0)
          expect(yield* store.head(freshName("never"), 0)).toBe(0)
          yield* store.append(d, 0, [req("a", "k"), req("b", "k")])
          expect(yield* store.head(d, 0)).toBe(2)
          yield* store.append(d, 0, [req("c", "k")])
          expect(yield* store.head(d, 0)).toBe(3)
        }),
      )

      it.effect("read returns events from an offset, in order, at most limit", () =>
        Effect.gen(function* () {
          const d = freshName()
          const store = yield* storeWith(d)
          yield* store.append(
            d,
            2,
            Array.from({ length: 6 }, (_, i) => req(`m${i}`, "k")),
          )
          yield* store.append(
            d,
            2,
            Array.from({ length: 4 }, (_, i) => req(`n${i}`, "j")),
          )
          const offsets = (events: ReadonlyArray<Event>) => events.map((e) => e.offset)
          expect(offsets(yield* store.read(d, 2, 0, 100))).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
          expect(offsets(yield* store.read(d, 2, 3, 4))).toEqual([3, 4, 5, 6])
          expect(offsets(yield* store.read(d, 2, 8, 100))).toEqual([8, 9])
          expect(offsets(yield* store.read(d, 2, 9, 1))).toEqual([9])
          expect(yield* store.read(d, 2, 10, 5)).toEqual([])
          expect(yield* store.read(d, 2, 0, 0)).toEqual([])
          expect(yield* store.read(d, 3, 0, 10)).toEqual([])
          expect(yield* store.read(freshName("never"), 0, 0, 10)).toEqual([])
        }),
      )
    })

    describe("versions and expectations", () => {
      it.effect("a key's version counts its events, within and across batches", () =>
        Effect.gen(function* () {
          const d = freshName()
          const store = yield* storeWith(d)
          const first = yield* store.append(d, 0, [req("1", "a"), req("2", "b"), req("3", "a")])
          expect(first.map((o) => fresh(o).version)).toEqual([1, 1, 2])
          const second = yield* store.append(d, 0, [req("4", "a")])
          expect(fresh(second[0]).version).toBe(3)
          expect(yield* store.version(d, 0, "a")).toBe(3)
          expect(yield* store.version(d, 0, "b")).toBe(1)
          expect(yield* store.version(d, 0, "nobody")).toBe(0)
        }),
      )

      it.effect("a right expect appends; a wrong one appends nothing and reports the actual version", () =>
        Effect.gen(function* () {
          const d = freshName()
          const store = yield* storeWith(d)
          const out = yield* store.append(d, 0, [
            req("1", "a", { expect: 0 }),
            req("2", "a", { expect: 0 }),
            req("3", "a", { expect: 1 }),
            req("4", "b", { expect: 5 }),
            req("5", "b"),
          ])
          expect(fresh(out[0]).version).toBe(1)
          expect(out[1]).toEqual({ _tag: "VersionConflict", key: "a", expected: 0, actual: 1 })
          expect(fresh(out[2])).toMatchObject({ version: 2, offset: 1 })
          expect(out[3]).toEqual({ _tag: "VersionConflict", key: "b", expected: 5, actual: 0 })
          expect(fresh(out[4])).toMatchObject({ version: 1, offset: 2 })
          expect(yield* store.head(d, 0)).toBe(3)

          const next = yield* store.append(d, 0, [req("6", "a", { expect: 7 })])
          expect(next).toEqual([{ _tag: "VersionConflict", key: "a", expected: 7, actual: 2 }])
          expect(yield* store.head(d, 0)).toBe(3)
          expect(yield* store.version(d, 0, "a")).toBe(2)
          expect((yield* readAll(store, d, 0)).map((e) => e.messageId)).toEqual(["1", "3", "5"])
          expect(fresh((yield* store.append(d, 0, [req("7", "a", { expect: 2 })]))[0]).version).toBe(3)
        }),
      )
    })

    describe("duplicates", () => {
      it.effect("a repeated message_id in a later batch returns the original, flagged", () =>
        Effect.gen(function* () {
          const d = freshName()
          const store = yield* storeWith(d)
          const [o1] = yield* store.append(d, 0, [req("m1", "a", { payload: { v: 1 } }), req("m2", "b")])
          const original = fresh(o1)
          const again = yield* store.append(d, 0, [
            req("m1", "z", { payload: { v: 2 }, type: "Other" }),
            req("m3", "a"),
          ])
          expect(duplicateOf(again[0])).toEqual(original)
          expect(fresh(again[1])).toMatchObject({ offset: 2, version: 2 })
          expect(yield* store.head(d, 0)).toBe(3)
          expect(yield* store.version(d, 0, "z")).toBe(0)
          expect(yield* store.byMessageId(d, "m1")).toEqual(original)
        }),
      )

      it.effect("a repeated message_id within one batch returns the earlier request's event", () =>
        Effect.gen(function* () {
          const d = freshName()
          const store = yield* storeWith(d)
          const out = yield* store.append(d, 0, [req("m1", "a"), req("m2", "a"), req("m1", "b"), req("m1", "a")])
          const first = fresh(out[0])
          expect(fresh(out[1]).offset).toBe(1)
          expect(duplicateOf(out[2])).toEqual(first)
          expect(duplicateOf(out[3])).toEqual(first)
          expect(yield* store.head(d, 0)).toBe(2)
          expect(yield* store.version(d, 0, "a")).toBe(2)
          expect(yield* store.version(d, 0, "b")).toBe(0)
        }),
      )

      it.effect("a repeat is answered with the original even when its expect no longer holds", () =>
        Effect.gen(function* () {
          const d = freshName()
          const store = yield* storeWith(d)
          const original = fresh((yield* store.append(d, 0, [req("m1", "a", { expect: 0 })]))[0])
          const again = yield* store.append(d, 0, [req("m1", "a", { expect: 0 })])
          expect(duplicateOf(again[0])).toEqual(original)
        }),
      )

      it.effect("a message_id whose request conflicted was not appended, so it may come again", () =>
        Effect.gen(function* () {
          const d = freshName()
          const store = yield* storeWith(d)
          const out = yield* store.append(d, 0, [req("m1", "a", { expect: 3 }), req("m1", "a", { expect: 0 })])
          expect(out[0]?._tag).toBe("VersionConflict")
          expect(fresh(out[1]).offset).toBe(0)
          expect(yield* store.byMessageId(d, "m1")).toEqual(eventOf(out[1]))
          expect(yield* store.byMessageId(d, "never")).toBeUndefined()
        }),
      )

      it.effect("message_ids are unique per depot: a repeat on another partition returns the original", () =>
        Effect.gen(function* () {
          const d = freshName()
          const store = yield* storeWith(d)
          const original = fresh((yield* store.append(d, 0, [req("m1", "a")]))[0])
          const again = yield* store.append(d, 2, [req("m1", "q"), req("m2", "q")])
          expect(duplicateOf(again[0])).toEqual(original)
          expect(fresh(again[1])).toMatchObject({ partition: 2, offset: 0 })
          expect(yield* store.head(d, 2)).toBe(1)
        }),
      )
    })

    describe("lineage", () => {
      it.effect("a root event is named by its position and is its own root", () =>
        Effect.gen(function* () {
          const d = freshName("acc")
          const store = yield* storeWith(d)
          yield* store.append(d, 2, [req("x", "k")])
          const e = fresh((yield* store.append(d, 2, [req("y", "k")]))[0])
          expect(e).toMatchObject({ id: `${d}:2:1`, parent: null, root: `${d}:2:1`, depot: d, partition: 2 })
        }),
      )

      it.effect("an event with a parent is adopted under it; a derived event keeps its child ID", () =>
        Effect.gen(function* () {
          const d = freshName("acc")
          const store = yield* storeWith(d)
          const out = yield* store.append(d, 1, [
            req("r", "k"),
            req("adopted", "k", { parent: `${d}:1:0` }),
            req("deep", "k", { parent: `${d}:1:0/flow.3` }),
            req("derived", "k", { parent: `${d}:1:0`, childId: `${d}:1:0/flow.0` }),
            req("grandchild", "k", { childId: `${d}:1:0/flow.0/audit.2` }),
          ])
          const [root, adopted, deep, derived, grandchild] = out.map(fresh)
          expect(root).toMatchObject({ id: `${d}:1:0`, parent: null, root: `${d}:1:0` })
          expect(adopted).toMatchObject({ id: `${d}:1:0/${d}:1:1`, parent: `${d}:1:0`, root: `${d}:1:0`, offset: 1 })
          expect(deep).toMatchObject({ id: `${d}:1:0/flow.3/${d}:1:2`, parent: `${d}:1:0/flow.3`, root: `${d}:1:0` })
          expect(derived).toMatchObject({ id: `${d}:1:0/flow.0`, parent: `${d}:1:0`, root: `${d}:1:0`, offset: 3 })
          expect(grandchild).toMatchObject({
            id: `${d}:1:0/flow.0/audit.2`,
            parent: `${d}:1:0/flow.0`,
            root: `${d}:1:0`,
            offset: 4,
          })
        }),
      )

      it.effect("byId finds an event by its lineage ID, in any depot", () =>
        Effect.gen(function* () {
          const d = freshName("acc")
          const e2 = freshName("alerts")
          const store = yield* storeWith(d, e2)
          const root = fresh((yield* store.append(d, 0, [req("r", "k")]))[0])
          const child = fresh((yield* store.append(e2, 3, [req("c", "k", { childId: `${root.id}/alarm.0` })]))[0])
          expect(yield* store.byId(root.id)).toEqual(root)
          expect(yield* store.byId(child.id)).toEqual(child)
          expect(child).toMatchObject({ depot: e2, partition: 3, offset: 0, parent: root.id, root: root.id })
          expect(yield* store.byId(`${d}:0:999`)).toBeUndefined()
          expect(yield* store.byMessageId(e2, "c")).toEqual(child)
          expect(yield* store.byMessageId(d, "c")).toBeUndefined()
        }),
      )

      it.effect("descendants are exactly the events below an ID, in ID order, never siblings sharing a prefix", () =>
        Effect.gen(function* () {
          const d = freshName("acc")
          const other = freshName("alerts")
          const store = yield* storeWith(d, other)
          yield* store.append(
            d,
            1,
            Array.from({ length: 13 }, (_, i) => req(`r${i}`, `k${i}`)),
          )
          const x = `${d}:1:1`
          const sibling = `${d}:1:12`
          yield* store.append(other, 0, [
            req("c0", "k", { childId: `${x}/audit.0` }),
            req("c1", "k", { childId: `${x}/audit.1` }),
            req("c2", "k", { parent: x }),
            req("c3", "k", { childId: `${x}/audit.0/fan.0` }),
            req("s0", "k", { childId: `${sibling}/audit.0` }),
            req("s1", "k", { parent: `${d}:1:10` }),
          ])
          yield* store.append(d, 1, [req("c4", "k1", { parent: x }), req("c5", "k1", { childId: `${x}/audit.10` })])
          const expected = [
            `${x}/audit.0`,
            `${x}/audit.1`,
            `${x}/${other}:0:2`,
            `${x}/audit.0/fan.0`,
            `${x}/${d}:1:13`,
            `${x}/audit.10`,
          ].sort()
          const found = yield* store.descendants(x, 100)
          expect(found.map((e) => e.id)).toEqual(expected)
          expect(found.find((e) => e.id === `${x}/audit.0/fan.0`)).toMatchObject({
            parent: `${x}/audit.0`,
            root: x,
            depot: other,
          })
          expect((yield* store.descendants(x, 2)).map((e) => e.id)).toEqual(expected.slice(0, 2))
          expect((yield* store.descendants(sibling, 100)).map((e) => e.id)).toEqual([`${sibling}/audit.0`])
          expect((yield* store.descendants(`${x}/audit.0`, 100)).map((e) => e.id)).toEqual([`${x}/audit.0/fan.0`])
          expect(yield* store.descendants(`${d}:1:5`, 100)).toEqual([])
          expect(yield* store.descendants(`${d}:1:99`, 100)).toEqual([])
        }),
      )
    })

    describe("contents", () => {
      it.effect("payload, metadata, key, type and time round-trip exactly", () =>
        Effect.gen(function* () {
          const d = freshName()
          const store = yield* storeWith(d)
          const rich = {
            text: 'Grüße, 世界 — 👩‍👩‍👧 "quoted" \\ back\nslash\ttab \u0000 end',
            nested: { a: [1, [2, [3, { deep: true }]]], empty: {}, none: null, list: [] },
            numbers: {
              int: 42,
              neg: -7,
              zero: 0,
              float: 0.1 + 0.2,
              big: Number.MAX_SAFE_INTEGER,
              small: -Number.MAX_SAFE_INTEGER,
              huge: 1.5e300,
              tiny: 5e-324,
            },
            flags: [true, false],
          }
          const metadata = { "trace-id": "4bf92f35", user: "Zoë 🚀", empty: "" }
          const requests = [
            req("rich", "ключ-🔑", { payload: rich, metadata, type: "Renamed", time: T0 + 123 }),
            req("string", "k", { payload: "plain text ✓" }),
            req("number", "k", { payload: 3.25 }),
            req("array", "k", { payload: [1, "two", { three: 3 }] }),
            req("null", "k", { payload: null }),
            req("spaced", "k ", { payload: { trailing: "space " } }),
            req("spaced ", "k", {}),
          ]
          const out = (yield* store.append(d, 0, requests)).map(fresh)
          const events = yield* readAll(store, d, 0)
          expect(events).toEqual(out)
          expect(events.map((e) => e.payload)).toEqual(requests.map((r) => r.payload))
          expect(events[0]).toMatchObject({ key: "ключ-🔑", type: "Renamed", time: T0 + 123, metadata })
          expect(events[1]?.metadata).toEqual({})
          // Keys and message_ids that differ only by trailing spaces are different.
          expect([out[5]?.key, out[6]?.messageId]).toEqual(["k ", "spaced "])
          expect(yield* store.version(d, 0, "k ")).toBe(1)
          expect(yield* store.version(d, 0, "k")).toBe(5)
          expect(yield* store.byMessageId(d, "spaced")).toEqual(events[5])
          expect(yield* store.byMessageId(d, "spaced ")).toEqual(events[6])
          expect(yield* store.byId(`${d}:0:0`)).toEqual(events[0])
        }),
      )

      it.effect("partitions are independent logs", () =>
        Effect.gen(function* () {
          const d = freshName()
          const store = yield* storeWith(d)
          yield* store.append(d, 0, [req("a", "p0"), req("b", "p0")])
          const [c] = yield* store.append(d, 3, [req("c", "p3")])
          expect(fresh(c)).toMatchObject({ id: `${d}:3:0`, offset: 0, partition: 3, version: 1 })
          expect(yield* store.head(d, 0)).toBe(2)
          expect(yield* store.head(d, 3)).toBe(1)
          expect(yield* store.head(d, 1)).toBe(0)
          expect((yield* readAll(store, d, 3)).map((e) => e.messageId)).toEqual(["c"])
          expect((yield* readAll(store, d, 0)).map((e) => e.messageId)).toEqual(["a", "b"])
        }),
      )

      it.effect("depots are independent: offsets, versions and message_ids", () =>
        Effect.gen(function* () {
          const d1 = freshName()
          const d2 = freshName()
          const store = yield* storeWith(d1, d2)
          // Opening is idempotent.
          yield* store.open([declare(d1), declare(d2)])
          const [a] = yield* store.append(d1, 0, [req("same", "k"), req("other", "k")])
          const [b] = yield* store.append(d2, 0, [req("same", "k")])
          expect(fresh(a)).toMatchObject({ depot: d1, offset: 0, version: 1, id: `${d1}:0:0` })
          expect(fresh(b)).toMatchObject({ depot: d2, offset: 0, version: 1, id: `${d2}:0:0` })
          expect(yield* store.version(d1, 0, "k")).toBe(2)
          expect(yield* store.version(d2, 0, "k")).toBe(1)
          expect((yield* store.byMessageId(d2, "same"))?.depot).toBe(d2)
          expect(yield* store.head(d2, 0)).toBe(1)
        }),
      )
    })

    it.effect.runIf(capabilities.reopen === true)(
      "a new instance over the same storage sees everything and continues the log",
      () =>
        Effect.gen(function* () {
          const d = freshName()
          const first = yield* storeWith(d)
          const written = (yield* first.append(d, 1, [
            req("m0", "a", { metadata: { by: "first" } }),
            req("m1", "a", { parent: "ext:0:7" }),
            req("m2", "b", { childId: `${d}:1:0/topo.0` }),
          ])).map(fresh)

          const second = yield* storeWith(d)
          expect(yield* second.head(d, 1)).toBe(3)
          expect(yield* readAll(second, d, 1)).toEqual(written)
          expect(yield* second.version(d, 1, "a")).toBe(2)
          expect(yield* second.byId(`${d}:1:0/topo.0`)).toEqual(written[2])
          expect(yield* second.byMessageId(d, "m1")).toEqual(written[1])
          expect((yield* second.descendants(`${d}:1:0`, 10)).map((e) => e.id)).toEqual([`${d}:1:0/topo.0`])
          const out = yield* second.append(d, 1, [req("m1", "a"), req("m3", "a", { expect: 2 })])
          expect(duplicateOf(out[0])).toEqual(written[1])
          expect(fresh(out[1])).toMatchObject({ offset: 3, version: 3, id: `${d}:1:3` })
        }),
    )

    it.effect.runIf(capabilities.fencing === true)(
      "a stale writer is fenced instead of forking the log, then re-reads",
      () =>
        Effect.gen(function* () {
          const d = freshName()
          const a = yield* storeWith(d)
          const b = yield* storeWith(d)
          yield* a.append(d, 0, [req("k1", "x"), req("k2", "x")])
          const taken = fresh((yield* b.append(d, 0, [req("k3", "x")]))[0])
          expect(taken).toMatchObject({ offset: 2, version: 3 })

          const fenced: StoreError = yield* Effect.flip(a.append(d, 0, [req("k4", "x")]))
          expect(fenced._tag).toBe("StoreError")
          expect(fenced.code).toBe("FENCED")
          const log = yield* readAll(a, d, 0)
          expect(log.map((e) => [e.offset, e.messageId, e.version])).toEqual([
            [0, "k1", 1],
            [1, "k2", 2],
            [2, "k3", 3],
          ])
          expect(yield* a.byMessageId(d, "k4")).toBeUndefined()

          // Fencing dropped what `a` remembered, so its next attempt starts from the truth.
          expect(fresh((yield* a.append(d, 0, [req("k4", "x")]))[0])).toMatchObject({ offset: 3, version: 4 })
          const stale: StoreError = yield* Effect.flip(b.append(d, 0, [req("k5", "y")]))
          expect(stale.code).toBe("FENCED")
          expect(yield* b.head(d, 0)).toBe(4)
          expect(yield* b.version(d, 0, "y")).toBe(0)
        }),
    )

    it.effect(
      "matches the model: random batches with duplicates, expectations and lineage",
      () =>
        modelProperty("p", async (store, d, batches, step) => {
          for (const batch of batches) {
            const { requests, outcomes } = step(batch)
            expect(await run(store.append(d, batch.partition, requests))).toEqual(outcomes)
          }
        }),
      120_000,
    )

    /** The store's `appendAll`, which the adapter declared it offers. */
    const appendAllOf = (store: DepotStoreShape) => {
      const appendAll = store.appendAll
      if (appendAll === undefined) throw new Error(`${name} declares appendAll but does not offer it`)
      return appendAll
    }

    it.effect.runIf(capabilities.appendAll === true)(
      "appendAll commits several partitions' batches at once, each with the outcomes append gives",
      () =>
        Effect.gen(function* () {
          const d = freshName()
          const store = yield* storeWith(d)
          yield* store.append(d, 1, [req("old", "b")])
          const out = yield* appendAllOf(store)([
            { depot: d, partition: 0, requests: [req("m0", "a"), req("m1", "a"), req("m2", "c", { expect: 1 })] },
            { depot: d, partition: 1, requests: [req("m3", "b", { expect: 1 }), req("m3", "b")] },
            { depot: d, partition: 2, requests: [] },
          ])
          expect(out).toHaveLength(3)
          expect((out[0] ?? []).map((o) => o._tag)).toEqual(["Appended", "Appended", "VersionConflict"])
          expect((out[0] ?? []).slice(0, 2).map((o) => fresh(o).offset)).toEqual([0, 1])
          expect(fresh(out[1]?.[0])).toMatchObject({ offset: 1, version: 2, id: `${d}:1:1` })
          expect(duplicateOf(out[1]?.[1])).toEqual(fresh(out[1]?.[0]))
          expect(out[2]).toEqual([])
          expect(yield* readAll(store, d, 0)).toEqual((out[0] ?? []).slice(0, 2).map(fresh))
          expect((yield* readAll(store, d, 1)).map((e) => e.messageId)).toEqual(["old", "m3"])
          expect(yield* store.version(d, 0, "a")).toBe(2)
          // What appendAll wrote is what the next append builds on.
          expect(fresh((yield* store.append(d, 0, [req("m4", "a")]))[0])).toMatchObject({ offset: 2, version: 3 })
        }),
    )

    it.effect.runIf(capabilities.appendAll === true && capabilities.fencing === true)(
      "appendAll with a fenced partition among its batches appends nothing to any of them",
      () =>
        Effect.gen(function* () {
          const d = freshName()
          const a = yield* storeWith(d)
          const b = yield* storeWith(d)
          yield* a.append(d, 0, [req("k1", "x")])
          yield* a.append(d, 1, [req("k2", "y")])
          yield* b.append(d, 1, [req("k3", "y")])
          const failed = yield* Effect.flip(
            appendAllOf(a)([
              { depot: d, partition: 0, requests: [req("k4", "x")] },
              { depot: d, partition: 1, requests: [req("k5", "y")] },
            ]),
          )
          expect(failed._tag).toBe("StoreError")
          expect((yield* readAll(a, d, 0)).map((e) => e.messageId)).toEqual(["k1"])
          expect((yield* readAll(a, d, 1)).map((e) => e.messageId)).toEqual(["k2", "k3"])
          // Alone, the partition nobody else wrote appends; the fenced one says so.
          expect(fresh((yield* a.append(d, 0, [req("k4", "x")]))[0])).toMatchObject({ offset: 1, version: 2 })
          expect((yield* Effect.flip(a.append(d, 1, [req("k5", "y")]))).code).toBe("FENCED")
        }),
    )

    it.effect.runIf(capabilities.appendAll === true)(
      "appendAll matches the model or appends nothing: random runs of batches of distinct partitions",
      () =>
        modelProperty("pa", async (store, d, batches, step) => {
          const appendAll = appendAllOf(store)
          // Consecutive batches of distinct partitions go to appendAll together.
          const runs: Array<Array<GenBatch>> = []
          for (const batch of batches) {
            const last = runs[runs.length - 1]
            if (last !== undefined && !last.some((b) => b.partition === batch.partition)) last.push(batch)
            else runs.push([batch])
          }
          for (const group of runs) {
            const steps = group.map((batch) => ({ partition: batch.partition, ...step(batch) }))
            const together = await run(
              Effect.result(appendAll(steps.map((c) => ({ depot: d, partition: c.partition, requests: c.requests })))),
            )
            if (together._tag === "Success") expect(together.success).toEqual(steps.map((c) => c.outcomes))
            // Refused: nothing of it may have landed, so each batch alone gives the model's outcomes.
            else for (const c of steps) expect(await run(store.append(d, c.partition, c.requests))).toEqual(c.outcomes)
          }
        }),
      120_000,
    )

    it.effect("byKey reads one key's history from a version, in version order", () =>
      Effect.gen(function* () {
        const d = freshName("hist")
        const store = yield* storeWith(d)
        yield* store.append(d, 2, [req("h1", "a"), req("h2", "b"), req("h3", "a")])
        yield* store.append(d, 2, [req("h4", "a"), req("h1", "a")])
        const all = yield* readAll(store, d, 2)
        const ofA = all.filter((e) => e.key === "a")
        expect((yield* store.byKey(d, "a", 1, 100)).map((e) => e.version)).toEqual([1, 2, 3])
        expect(yield* store.byKey(d, "a", 1, 100)).toEqual(ofA)
        expect(yield* store.byKey(d, "a", 2, 1)).toEqual([ofA[1]])
        expect(yield* store.byKey(d, "a", 3, 100)).toEqual([ofA[2]])
        expect(yield* store.byKey(d, "a", 4, 100)).toEqual([])
        expect(yield* store.byKey(d, "a", 1, 0)).toEqual([])
        expect((yield* store.byKey(d, "b", 1, 100)).map((e) => e.messageId)).toEqual(["h2"])
        expect(yield* store.byKey(d, "nobody", 1, 100)).toEqual([])
        expect(yield* store.byKey(freshName("none"), "a", 1, 100)).toEqual([])
      }),
    )

    it.effect("a derived event appended again (a re-run batch) is answered with the original, not a failure", () =>
      Effect.gen(function* () {
        const d = freshName("rerun")
        const store = yield* storeWith(d)
        const root = fresh((yield* store.append(d, 1, [req("r", "k")]))[0])
        const id = `${root.id}/topo.0`
        const child = req(id, "k", { childId: id, parent: root.id })
        const first = fresh((yield* store.append(d, 1, [child]))[0])
        expect(duplicateOf((yield* store.append(d, 1, [child]))[0])).toEqual(first)
        expect(yield* store.head(d, 1)).toBe(2)
      }),
    )
  })
}
