/**
 * The topology runner's failure handling: retries, the halt and park
 * policies, and supervision of streams that die.
 */
import { Effect, Schema } from "effect"
import { beforeAll, describe, expect, it } from "vitest"
import * as Depot from "../../src/depot/depot.ts"
import { StoreError } from "../../src/errors.ts"
import type { ReadModelStoreShape } from "../../src/readmodel/store.ts"
import type { Declarations } from "../../src/runtime/engine.ts"
import { defaultOptions } from "../../src/runtime/engine.ts"
import { parseTemplate } from "../../src/template/load.ts"
import type { Template } from "../../src/template/template.ts"
import * as Topology from "../../src/topology/topology.ts"
import { fastRetries, memoryStores as stores, waitUntil, withEngine } from "../support/engine.ts"

const notes = Depot.make({
  name: "notes",
  partitions: 1,
  key: "note id",
  events: { Written: Schema.Struct({ text: Schema.String }) },
})

let template: Template
beforeAll(async () => {
  template = await Effect.runPromise(
    parseTemplate(
      `tla = "NTE"\nname = "nte_note"\nbackend = "rel"\nkey = ["id"]\n[fields.id]\ntype = "string"\nmax = 64\n[fields.text]\ntype = "text"\n`,
      "nte_note.toml",
    ),
  )
})

/** A topology that fails on texts starting with "fail" (`attempts` counts calls per event). */
const failing = (onFailure: "halt" | "park", failTimes: number, attempts: Map<string, number>) =>
  Topology.make({
    name: "notebook",
    sources: [notes],
    readModels: ["nte_note"],
    onFailure,
    handle: (event, ctx) =>
      Effect.gen(function* () {
        const n = (attempts.get(event.id) ?? 0) + 1
        attempts.set(event.id, n)
        const text = (event.payload as { text: string }).text
        if (text.startsWith("fail") && n <= failTimes)
          return yield* Effect.fail(new Topology.TopologyFailure(`cannot take "${text}"`))
        yield* ctx.put("nte_note", { id: event.key, text })
      }),
  })

const decl = (t: Topology.Topology): Declarations => ({ depots: [notes], topologies: [t], templates: [template] })

describe("topology runner", () => {
  it("retries a failing handler and applies the event once when a retry succeeds", async () => {
    const attempts = new Map<string, number>()
    const s = await stores()
    const reply = await Effect.runPromise(
      withEngine(
        s,
        decl(failing("halt", 2, attempts)),
        (engine) => engine.publish("notes", "Written", "n1", { text: "fail twice" }, { id: "a", ack: "full" }),
        fastRetries,
      ),
    )
    expect(reply).toMatchObject({ ok: true, applied: ["notebook"] })
    expect([...attempts.values()]).toEqual([3])
    expect(await Effect.runPromise(s.models.scan("nte_note"))).toMatchObject([{ id: "n1", text: "fail twice" }])
  })

  it("halts the partition when retries run out, keeps the event, and says why in the status", async () => {
    const s = await stores()
    const status = await Effect.runPromise(
      withEngine(
        s,
        decl(failing("halt", 99, new Map())),
        (engine) =>
          Effect.gen(function* () {
            yield* engine.publish("notes", "Written", "n1", { text: "fine" }, { id: "a" })
            yield* engine.publish("notes", "Written", "n2", { text: "fail always" }, { id: "b" })
            yield* engine.publish("notes", "Written", "n3", { text: "after" }, { id: "c" })
            yield* waitUntil(() => Effect.map(engine.status(), (st) => st.streams[0]?.state === "halted"))
            return yield* engine.status()
          }),
        fastRetries,
      ),
    )
    expect(status.streams[0]).toMatchObject({ state: "halted", next: 1, lag: 2 })
    expect(status.streams[0]?.error).toContain('cannot take "fail always"')
    expect((await Effect.runPromise(s.depot.read("notes", 0, 0, 10))).map((e) => e.key)).toEqual(["n1", "n2", "n3"])
    expect((await Effect.runPromise(s.models.scan("nte_note"))).map((r) => r.id)).toEqual(["n1"])
  })

  it("parks an event whose handler keeps failing and goes on with the next", async () => {
    const s = await stores()
    const status = await Effect.runPromise(
      withEngine(
        s,
        decl(failing("park", 99, new Map())),
        (engine) =>
          Effect.gen(function* () {
            yield* engine.publish("notes", "Written", "n1", { text: "fail always" }, { id: "a" })
            yield* engine.publish("notes", "Written", "n2", { text: "after" }, { id: "b", ack: "full" })
            return yield* engine.status()
          }),
        fastRetries,
      ),
    )
    expect(status.streams[0]).toMatchObject({ state: "running", next: 2 })
    expect(status.streams[0]?.parked).toMatchObject([{ id: "notes:0:0", offset: 0 }])
    expect((await Effect.runPromise(s.models.scan("nte_note"))).map((r) => r.id)).toEqual(["n2"])
  })

  it("restarts a stream that died on a store failure, from its checkpoint, and catches up", async () => {
    const s = await stores()
    let failures = 1
    const flaky: ReadModelStoreShape = {
      ...s.models,
      commit: (cp, next, writes) =>
        failures-- > 0
          ? Effect.fail(new StoreError({ code: "STORE_FAILED", message: "disk full", retryable: false }))
          : s.models.commit(cp, next, writes),
    }
    const status = await Effect.runPromise(
      withEngine(
        { depot: s.depot, models: flaky },
        decl(failing("halt", 0, new Map())),
        (engine) =>
          Effect.gen(function* () {
            yield* engine.publish("notes", "Written", "n1", { text: "one" }, { id: "a" })
            yield* engine.publish("notes", "Written", "n2", { text: "two" }, { id: "b", ack: "full" })
            return yield* engine.status()
          }),
        fastRetries,
      ),
    )
    expect(status.streams[0]).toMatchObject({ state: "running", next: 2, restarts: 1 })
    expect((await Effect.runPromise(s.models.scan("nte_note"))).map((r) => r.id)).toEqual(["n1", "n2"])
  })
})

describe("topology runner and store refusals", () => {
  it("a document over MongoDB's size limit fails its event, and the park policy goes on with the next", async () => {
    const big = await Effect.runPromise(
      parseTemplate(
        `tla = "BIG"\nname = "big_doc"\nbackend = "rec"\nkey = ["id"]\n[fields.id]\ntype = "string"\nmax = 64\n[fields.blob]\ntype = "text"\n[fields.more]\ntype = "text"\n`,
        "big_doc.toml",
      ),
    )
    const hoarder = Topology.make({
      name: "hoarder",
      sources: [notes],
      readModels: ["big_doc"],
      onFailure: "park",
      handle: (event, ctx) => {
        const text = (event.payload as { text: string }).text
        // Each field fits its type; together they pass MongoDB's 16 MiB per document.
        const half = text === "huge" ? "x".repeat(9 * 1024 * 1024) : text
        return ctx.put("big_doc", { id: event.key, blob: half, more: half })
      },
    })
    const s = await stores()
    const status = await Effect.runPromise(
      withEngine(
        s,
        { depots: [notes], topologies: [hoarder], templates: [big] },
        (engine) =>
          Effect.gen(function* () {
            yield* engine.publish("notes", "Written", "n1", { text: "huge" }, { id: "a" })
            yield* engine.publish("notes", "Written", "n2", { text: "small" }, { id: "b", ack: "full" })
            return yield* engine.status()
          }),
        fastRetries,
      ),
    )
    expect(status.streams[0]).toMatchObject({ state: "running", next: 2, restarts: 0 })
    expect(status.streams[0]?.parked[0]?.error).toContain("big_doc")
    expect(status.streams[0]?.parked[0]?.error).toContain("16 MiB")
    expect((await Effect.runPromise(s.models.scan("big_doc"))).map((r) => r.id)).toEqual(["n2"])
  })
})

describe("topology runner linger", () => {
  /** Counts the read-model commits of a store. */
  const counting = (models: ReadModelStoreShape) => {
    const counter = { commits: 0 }
    const store: ReadModelStoreShape = {
      ...models,
      commit: (c, next, writes) =>
        Effect.andThen(
          Effect.sync(() => counter.commits++),
          models.commit(c, next, writes),
        ),
    }
    return { store, counter }
  }
  const copier = Topology.make({
    name: "copier",
    sources: [notes],
    readModels: ["nte_note"],
    step: (event, ctx) => ctx.put("nte_note", { id: event.key, text: (event.payload as { text: string }).text }),
  })
  /** A first command, then a stream of appends 2 ms apart: the stream stays busy. */
  const commitsFor = async (lingerMs: number) => {
    const s = await stores()
    const { store, counter } = counting(s.models)
    await Effect.runPromise(
      withEngine(
        { depot: s.depot, models: store },
        decl(copier),
        (engine) =>
          Effect.gen(function* () {
            for (let i = 0; i < 40; i++) {
              yield* engine.publish("notes", "Written", `n${i % 5}`, { text: `t${i}` }, { id: `m${i}` })
              yield* Effect.sleep("2 millis")
            }
            yield* engine.settle()
          }),
        { ...defaultOptions, topology: { ...defaultOptions.topology, lingerMs } },
      ),
    )
    expect(await Effect.runPromise(s.models.scan("nte_note"))).toHaveLength(5)
    return counter.commits
  }

  it("a busy live stream waits for short batches to fill, so it commits fewer, larger batches; the result is the same", async () => {
    const eager = await commitsFor(0)
    const lingering = await commitsFor(30)
    expect(eager).toBeGreaterThan(20)
    expect(lingering).toBeLessThan(eager / 2)
  })

  /**
   * The stream committed a moment ago (so it counts as busy) and holds one
   * append nobody waits on, which it lingers over; then a `full` command
   * comes. Returns how long its reply took.
   */
  const fullDuringLinger = async (lingerMs: number, lingerFullMs: number | undefined) => {
    const s = await stores()
    return Effect.runPromise(
      withEngine(
        s,
        decl(copier),
        (engine) =>
          Effect.gen(function* () {
            yield* engine.publish("notes", "Written", "n0", { text: "first" }, { id: "m0", ack: "full" })
            yield* engine.publish("notes", "Written", "n1", { text: "lingered" }, { id: "m1" })
            yield* Effect.sleep("20 millis")
            const t0 = performance.now()
            const reply = yield* engine.publish("notes", "Written", "n2", { text: "x" }, { id: "m2", ack: "full" })
            expect(reply).toMatchObject({ ok: true, applied: ["copier"] })
            return performance.now() - t0
          }),
        { ...defaultOptions, topology: { ...defaultOptions.topology, lingerMs, lingerFullMs } },
      ),
    )
  }

  it("a full command cuts a long linger short: its reply waits at most the full linger", async () => {
    expect(await fullDuringLinger(10_000, 5)).toBeLessThan(3_000)
  })

  it("without a shorter full linger, a full reply waits out the linger", async () => {
    expect(await fullDuringLinger(1_500, undefined)).toBeGreaterThan(1_000)
  })

  it("a stream that caught up waits for the writer's next commit without asking the store", async () => {
    const s = await stores()
    let reads = 0
    const depot = {
      ...s.depot,
      read: (...args: Parameters<typeof s.depot.read>) =>
        Effect.andThen(
          Effect.sync(() => reads++),
          s.depot.read(...args),
        ),
    }
    await Effect.runPromise(
      withEngine({ depot, models: s.models }, decl(copier), (engine) =>
        Effect.gen(function* () {
          yield* engine.publish("notes", "Written", "n0", { text: "t" }, { id: "m0", ack: "full" })
          const before = reads
          for (let i = 1; i <= 20; i++)
            yield* engine.publish("notes", "Written", `n${i}`, { text: "t" }, { id: `m${i}`, ack: "full" })
          expect(reads - before).toBe(0)
        }),
      ),
    )
  })

  it("a stream still sees appends made behind its writer's back, through the store, within the safety poll", async () => {
    const s = await stores()
    await Effect.runPromise(
      withEngine(s, decl(copier), (engine) =>
        Effect.gen(function* () {
          yield* engine.publish("notes", "Written", "n0", { text: "t" }, { id: "m0", ack: "full" })
          // Another process's writer: straight into the store, past this engine's writer and tail.
          yield* s.depot.append("notes", 0, [
            { messageId: "other", type: "Written", key: "n9", payload: { text: "o" }, time: 0 },
          ])
          yield* waitUntil(() => Effect.map(s.models.scan("nte_note"), (rows) => rows.some((r) => r.id === "n9")))
        }),
      ),
    )
  })

  it("an idle stream does not wait: a lone command's full reply comes without the linger", async () => {
    const s = await stores()
    const t0 = performance.now()
    const reply = await Effect.runPromise(
      withEngine(
        s,
        decl(copier),
        (engine) => engine.publish("notes", "Written", "n1", { text: "x" }, { id: "m1", ack: "full" }),
        { ...defaultOptions, topology: { ...defaultOptions.topology, lingerMs: 10_000 } },
      ),
    )
    expect(reply).toMatchObject({ ok: true, applied: ["copier"] })
    expect(performance.now() - t0).toBeLessThan(5000)
  })
})
