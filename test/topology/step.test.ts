/**
 * Topologies declared with a synchronous `step`: the runner calls the step
 * directly, loads rows it asks for and re-runs it, and applies the same
 * failure, emit and reply rules as for Effect handlers.
 */
import { Effect, Schema } from "effect"
import fc from "fast-check"
import { beforeAll, describe, expect, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import * as Depot from "../../src/depot/depot.ts"
import type { Event } from "../../src/depot/event.ts"
import { StoreError } from "../../src/errors.ts"
import * as Lineage from "../../src/lineage/lineage-id.ts"
import type { ReadModelStoreShape } from "../../src/readmodel/store.ts"
import type { Declarations } from "../../src/runtime/engine.ts"
import { loadTemplates, parseTemplate } from "../../src/template/load.ts"
import { keyId, type Row, type Template } from "../../src/template/template.ts"
import { fold } from "../../src/topology/fold.ts"
import * as Topology from "../../src/topology/topology.ts"
import { fastRetries, memoryStores as stores, waitUntil, withEngine } from "../support/engine.ts"
import { depotEvents, publishAccountCommands } from "../support/engine-properties.ts"

const counters = Depot.make({
  name: "counters",
  partitions: 1,
  key: "counter id",
  events: {
    Bumped: Schema.Struct({}),
    Copied: Schema.Struct({ from: Schema.String }),
    Noted: Schema.Struct({ text: Schema.String }),
  },
})
const echoes = Depot.make({
  name: "echoes",
  partitions: 2,
  key: "counter id",
  events: { Echoed: Schema.Struct({ text: Schema.String }) },
})

let templates: ReadonlyArray<Template>
let counterTpl: Template
beforeAll(async () => {
  templates = await Effect.runPromise(loadTemplates("templates"))
  counterTpl = await Effect.runPromise(
    parseTemplate(
      `tla = "CNT"\nname = "cnt_counter"\nbackend = "rel"\nkey = ["id"]\n[fields.id]\ntype = "string"\nmax = 64\n` +
        `[fields.n]\ntype = "int"\ndefault = 0\n[fields.text]\ntype = "text"\nnullable = true\n`,
      "cnt_counter.toml",
    ),
  )
})

const decl = (t: Topology.Topology): Declarations => ({
  depots: [counters, echoes],
  topologies: [t],
  templates: [counterTpl],
})
const rowsOf = (models: ReadModelStoreShape) =>
  Effect.runPromise(Effect.map(models.scan("cnt_counter"), (rows) => rows.map((r) => [r.id, r.n])))

/** One account's balance row, or null to delete it (Closed): the logic both declarations share. */
const nextBalance = (prev: Row | undefined, event: Event): Row | null => {
  const p = event.payload as { owner?: string; amount?: number }
  const b = prev ?? { account_id: event.key, owner: null, balance: 0, events: 0, status: "open" }
  const events = (b.events as number) + 1
  switch (event.type) {
    case "Opened":
      return { ...b, owner: p.owner ?? null, events }
    case "Deposited":
      return { ...b, balance: (b.balance as number) + (p.amount ?? 0), events }
    case "Withdrawn":
      return { ...b, balance: (b.balance as number) - (p.amount ?? 0), events }
    default:
      return null
  }
}
const asStep = Topology.make({
  name: "balances",
  sources: [accounts],
  readModels: ["acc_balance"],
  step: (event, ctx) => {
    const row = nextBalance(ctx.get("acc_balance", event.key), event)
    if (row === null) ctx.remove("acc_balance", event.key)
    else ctx.put("acc_balance", row)
  },
})
const asHandle = Topology.make({
  name: "balances",
  sources: [accounts],
  readModels: ["acc_balance"],
  handle: (event, ctx) =>
    Effect.flatMap(ctx.get("acc_balance", event.key), (prev) => {
      const row = nextBalance(prev, event)
      return row === null ? ctx.remove("acc_balance", event.key) : ctx.put("acc_balance", row)
    }),
})

describe("step topologies", () => {
  it("property: a step topology run by the runner projects the fold of the same logic as an Effect handler", async () => {
    const command = fc.record({
      type: fc.constantFrom("Opened", "Deposited", "Withdrawn", "Closed"),
      key: fc.constantFrom("a", "b", "c", "d", "e"),
      amount: fc.integer({ min: 1, max: 1000 }),
    })
    await fc.assert(
      fc.asyncProperty(
        fc.array(command, { minLength: 1, maxLength: 40 }),
        fc.constantFrom(1, 3, 100),
        async (commands, batchMax) => {
          const s = await stores()
          const d: Declarations = { depots: [accounts], topologies: [asStep], templates }
          const options = { ...fastRetries, topology: { ...fastRetries.topology, batchMax } }
          const [rows, events] = await Effect.runPromise(
            withEngine(
              s,
              d,
              (engine) =>
                Effect.gen(function* () {
                  yield* publishAccountCommands(engine, commands, { concurrency: 4 })
                  yield* engine.settle()
                  return [yield* s.models.scan("acc_balance"), yield* depotEvents(s.depot, d)] as const
                }),
              options,
            ),
          )
          const { state } = await Effect.runPromise(fold(asHandle, templates, events))
          const actual = Object.fromEntries(rows.map((r) => [keyId([r.account_id as string]), r]))
          expect(actual).toEqual(Object.fromEntries(state.get("acc_balance") ?? new Map()))
        },
      ),
      { numRuns: 20 },
    )
  })

  it("a get of another key's row, not prefetched, sees the stored row: the runner loads it and re-runs the step", async () => {
    const copyCalls: Array<string> = []
    const copier = Topology.make({
      name: "copier",
      sources: [counters],
      readModels: ["cnt_counter"],
      step: Topology.matchStep(counters, {
        Bumped: (_p, event, ctx) => {
          const n = ((ctx.get("cnt_counter", event.key)?.n as number | undefined) ?? 0) + 1
          ctx.put("cnt_counter", { id: event.key, n })
        },
        Copied: (p, event, ctx) => {
          copyCalls.push(event.key)
          const from = ctx.get("cnt_counter", p.from)
          ctx.put("cnt_counter", { id: event.key, n: (from?.n as number | undefined) ?? -1 })
          ctx.reply({ copied: from?.n ?? null })
        },
      }),
    })
    const s = await stores()
    const reply = await Effect.runPromise(
      withEngine(s, decl(copier), (engine) =>
        Effect.gen(function* () {
          for (const id of ["1", "2", "3"]) yield* engine.publish("counters", "Bumped", "a", {}, { id, ack: "full" })
          const r = yield* engine.publish("counters", "Copied", "b", { from: "a" }, { id: "4", ack: "full" })
          yield* engine.publish("counters", "Copied", "c", { from: "nobody" }, { id: "5", ack: "full" })
          return r
        }),
      ),
    )
    expect(reply).toMatchObject({ ok: true, values: { copier: { copied: 3 } } })
    expect(await rowsOf(s.models)).toEqual([
      ["a", 3],
      ["b", 3],
      ["c", -1],
    ])
    // Each copy first ran without the other row (suspended by the get), then again once it was loaded.
    expect(copyCalls.filter((k) => k === "b").length).toBeGreaterThanOrEqual(2)
    expect(copyCalls.filter((k) => k === "c").length).toBeGreaterThanOrEqual(2)
  })

  it("within one event, a get after a put sees the new row, and after a remove sees none", async () => {
    const rereader = Topology.make({
      name: "rereader",
      sources: [counters],
      readModels: ["cnt_counter"],
      step: (event, ctx) => {
        ctx.put("cnt_counter", { id: event.key, n: 10 })
        const afterPut = ctx.get("cnt_counter", event.key)
        ctx.put("cnt_counter", { id: "shadow", n: 5 }) // a key the batch did not prefetch
        const shadow = ctx.get("cnt_counter", "shadow")
        ctx.remove("cnt_counter", "shadow")
        const afterRemove = ctx.get("cnt_counter", "shadow")
        ctx.put("cnt_counter", { id: event.key, n: ((afterPut?.n as number) ?? 0) + 1 })
        ctx.reply({ afterPut, shadow: shadow?.n ?? null, afterRemove: afterRemove ?? null })
      },
    })
    const s = await stores()
    const reply = await Effect.runPromise(
      withEngine(s, decl(rereader), (engine) =>
        engine.publish("counters", "Bumped", "k", {}, { id: "1", ack: "full" }),
      ),
    )
    const id = reply.ok ? reply.id : "?"
    expect(reply).toMatchObject({
      ok: true,
      values: { rereader: { afterPut: { id: "k", n: 10, beds_last_id: id }, shadow: 5, afterRemove: null } },
    })
    expect(await rowsOf(s.models)).toEqual([["k", 11]])
  })

  it("the handle of a step topology (for callers that only speak Handler) folds exactly as the step", async () => {
    const step: Topology.Step = (event, ctx) => {
      ctx.put("cnt_counter", { id: event.key, n: 10 })
      const afterPut = ctx.get("cnt_counter", event.key)
      ctx.put("cnt_counter", { id: "shadow", n: 5 })
      ctx.remove("cnt_counter", "shadow")
      const afterRemove = ctx.get("cnt_counter", "shadow")
      const before = ctx.get("cnt_counter", "total")
      ctx.put("cnt_counter", { id: "total", n: ((before?.n as number) ?? 0) + 1 })
      ctx.put("cnt_counter", {
        id: event.key,
        n: ((afterPut?.n as number) ?? 0) + (afterRemove === undefined ? 1 : 100),
      })
      ctx.emit("echoes", "Echoed", event.key, { text: "once" })
    }
    const asStep = Topology.make({ name: "wrapped", sources: [counters], readModels: ["cnt_counter"], step })
    const asHandle = Topology.make({
      name: "wrapped",
      sources: [counters],
      readModels: ["cnt_counter"],
      handle: asStep.handle,
    })
    const events: Array<Event> = ["a", "b", "a"].map((key, offset) => ({
      id: Lineage.root("counters", 0, offset),
      depot: "counters",
      partition: 0,
      offset,
      type: "Bumped",
      key,
      version: 1,
      payload: {},
      time: 0,
      parent: null,
      root: Lineage.root("counters", 0, offset),
      messageId: `m${offset}`,
      metadata: {},
    }))
    const viaStep = await Effect.runPromise(fold(asStep, [counterTpl], events))
    const viaHandle = await Effect.runPromise(fold(asHandle, [counterTpl], events))
    expect(viaHandle.emits).toEqual(viaStep.emits)
    expect(viaHandle.emits).toHaveLength(3)
    expect([...(viaHandle.state.get("cnt_counter") ?? new Map())]).toEqual([
      ...(viaStep.state.get("cnt_counter") ?? new Map()),
    ])
    expect(viaStep.state.get("cnt_counter")?.get("a")?.n).toBe(11)
    expect(viaStep.state.get("cnt_counter")?.get("total")?.n).toBe(3)
  })

  describe("failures", () => {
    const calls = new Map<string, number>()
    const guarded = (onFailure: "halt" | "park") =>
      Topology.make({
        name: "guarded",
        sources: [counters],
        readModels: ["cnt_counter"],
        onFailure,
        step: Topology.matchStep(counters, {
          Noted: (p, event, ctx) => {
            calls.set(p.text, (calls.get(p.text) ?? 0) + 1)
            if (p.text === "refused") throw new Topology.TopologyFailure("refused on purpose", false)
            if (p.text === "crash") throw new Error("step crashed")
            ctx.put("cnt_counter", { id: event.key, n: 0, text: p.text })
          },
        }),
      })
    const publishThree = (middle: string, onFailure: "halt" | "park") =>
      stores().then(async (s) => {
        const status = await Effect.runPromise(
          withEngine(
            s,
            decl(guarded(onFailure)),
            (engine) =>
              Effect.gen(function* () {
                yield* engine.publish("counters", "Noted", "x1", { text: "one" }, { id: "a" })
                yield* engine.publish("counters", "Noted", "x2", { text: middle }, { id: "b" })
                yield* engine.publish("counters", "Noted", "x3", { text: "two" }, { id: "c" })
                yield* waitUntil(() =>
                  Effect.map(engine.status(), (st) => st.streams[0]?.state === "halted" || st.streams[0]?.next === 3),
                )
                return (yield* engine.status()).streams[0]
              }),
            fastRetries,
          ),
        )
        return { status, rows: await rowsOf(s.models) }
      })

    it("a non-retryable TopologyFailure under park parks exactly that event and applies the others", async () => {
      const { status, rows } = await publishThree("refused", "park")
      expect(status).toMatchObject({ state: "running", next: 3, parked: [{ id: "counters:0:1", offset: 1 }] })
      expect(status?.parked[0]?.error).toContain("refused on purpose")
      expect(status?.parked[0]?.error).toContain("after 1 attempt(s)")
      expect(rows.map(([id]) => id)).toEqual(["x1", "x3"])
    })

    it("a non-retryable TopologyFailure under halt halts the stream at that event, with its message in status", async () => {
      const { status, rows } = await publishThree("refused", "halt")
      expect(status).toMatchObject({ state: "halted", next: 1, parked: [] })
      expect(status?.error).toContain("refused on purpose")
      expect(rows.map(([id]) => id)).toEqual(["x1"])
    })

    it("a step throwing a plain Error is retried, then parked", async () => {
      calls.clear()
      const { status, rows } = await publishThree("crash", "park")
      expect(status?.parked).toMatchObject([{ id: "counters:0:1", offset: 1 }])
      expect(status?.parked[0]?.error).toContain("the handler threw: step crashed (after 4 attempt(s))")
      // The first try plus 3 retries; the runner may call the step once more on its synchronous fast path.
      expect(calls.get("crash")).toBeGreaterThanOrEqual(4)
      expect(calls.get("crash")).toBeLessThanOrEqual(5)
      expect(rows.map(([id]) => id)).toEqual(["x1", "x3"])
    })
  })

  it("emit appends derived events with lineage IDs from the parent, once, even when the batch re-runs after a crash", async () => {
    const echo = Topology.make({
      name: "echo",
      sources: [counters],
      readModels: ["cnt_counter"],
      step: Topology.matchStep(counters, {
        Noted: (p, event, ctx) => {
          ctx.put("cnt_counter", { id: event.key, n: 1, text: p.text })
          ctx.emit("echoes", "Echoed", event.key, { text: p.text })
          ctx.emit("echoes", "Echoed", event.key, { text: `${p.text}!` })
        },
      }),
    })
    const s = await stores()
    let failures = 1 // the first commit dies after the children were appended: the batch runs again
    const flaky: ReadModelStoreShape = {
      ...s.models,
      commit: (cp, next, writes) =>
        failures-- > 0
          ? Effect.fail(new StoreError({ code: "STORE_FAILED", message: "crash", retryable: false }))
          : s.models.commit(cp, next, writes),
    }
    const d = decl(echo)
    const [reply, status, all] = await Effect.runPromise(
      withEngine(
        { depot: s.depot, models: flaky },
        d,
        (engine) =>
          Effect.gen(function* () {
            const r = yield* engine.publish("counters", "Noted", "k", { text: "hi" }, { id: "a", ack: "full" })
            return [r, (yield* engine.status()).streams[0], yield* depotEvents(s.depot, d)] as const
          }),
        fastRetries,
      ),
    )
    const parent = reply.ok ? reply.id : "?"
    expect(status).toMatchObject({ state: "running", next: 1, restarts: 1 })
    const children = all.filter((e) => e.depot === "echoes")
    expect(children.map((e) => [e.id, e.parent, e.root, e.type, e.key, e.payload])).toEqual([
      [Lineage.derived(parent, "echo", 0), parent, parent, "Echoed", "k", { text: "hi" }],
      [Lineage.derived(parent, "echo", 1), parent, parent, "Echoed", "k", { text: "hi!" }],
    ])
    expect(await rowsOf(s.models)).toEqual([["k", 1]])
  })
})

describe("step topologies writing REC rows", () => {
  let tagTpl: Template
  beforeAll(async () => {
    tagTpl = await Effect.runPromise(
      parseTemplate(
        `tla = "TAG"\nname = "tag_doc"\nbackend = "rec"\nkey = ["id"]\n[fields.id]\ntype = "string"\nmax = 64\n` +
          `[fields.n]\ntype = "int"\ndefault = 7\n[fields.tags]\ntype = "set"\nof = { type = "string", max = 5 }\n` +
          `[fields.items]\ntype = "list"\n[fields.items.of]\ntype = "object"\n[fields.items.of.fields.q]\ntype = "int"\n`,
        "tag_doc.toml",
      ),
    )
  })
  /** A step topology over tag_doc that parks the events it fails. */
  const tagging = (noted: (p: { readonly text: string }, event: Event, ctx: Topology.StepContext) => void) =>
    Topology.make({
      name: "tagger",
      sources: [counters],
      readModels: ["tag_doc"],
      onFailure: "park",
      step: Topology.matchStep(counters, { Noted: noted }),
    })
  const tagger = tagging((p, event, ctx) => {
    const items = (ctx.get("tag_doc", event.key)?.items ?? []) as ReadonlyArray<{ q: number }>
    ctx.put("tag_doc", { id: event.key, tags: [p.text, "b", "a", "b"], items: [...items, { q: items.length }] })
    const back = ctx.get("tag_doc", event.key) as Row
    ctx.reply({
      back,
      frozen: [back, back.tags, back.items, ...(back.items as Array<object>)].every(Object.isFrozen),
    })
  })
  const run = (texts: ReadonlyArray<string>, topology: Topology.Topology = tagger) =>
    stores().then(async (s) => {
      const replies = await Effect.runPromise(
        withEngine(
          s,
          { depots: [counters, echoes], topologies: [topology], templates: [tagTpl] },
          (engine) =>
            Effect.gen(function* () {
              const replies = yield* Effect.forEach(texts, (text, i) =>
                engine.publish("counters", "Noted", "d", { text }, { id: `n${i}`, ack: "full" }),
              )
              return { replies, parked: (yield* engine.status()).streams[0]?.parked ?? [] }
            }),
          fastRetries,
        ),
      )
      return { ...replies, rows: await Effect.runPromise(s.models.scan("tag_doc")) }
    })

  it("a row read back within the event is its canonical form, frozen, as a committed row reads back", async () => {
    const { replies, rows } = await run(["c", "d"])
    expect(replies[1]).toMatchObject({
      ok: true,
      values: { tagger: { back: { id: "d", n: 7, tags: ["a", "b", "d"], items: [{ q: 0 }, { q: 1 }] }, frozen: true } },
    })
    expect(rows).toMatchObject([{ id: "d", n: 7, tags: ["a", "b", "d"], items: [{ q: 0 }, { q: 1 }] }])
  })

  it("a step that changes a row it read back fails that event, and the stored document stays as it was", async () => {
    const mutator = tagging((p, event, ctx) => {
      ctx.put("tag_doc", { id: event.key, tags: [p.text], items: [{ q: 0 }] })
      // The row just staged, read back in the same batch: changing it would change what is written.
      if (p.text === "d") ((ctx.get("tag_doc", event.key) as Row).items as Array<{ q: number }>).push({ q: 99 })
    })
    const { parked, rows } = await run(["c", "d"], mutator)
    expect(parked).toMatchObject([{ offset: 1 }])
    expect(parked[0]?.error).toMatch(/not extensible|read.only|frozen/)
    expect(rows).toMatchObject([{ tags: ["c"], items: [{ q: 0 }] }])
  })

  it("a row its template refuses fails that event, naming the value, and the park policy goes on", async () => {
    const { replies, parked, rows } = await run(["c", "toolong", "d"])
    expect(replies.map((r) => r.ok)).toEqual([true, true, true])
    expect(parked).toMatchObject([{ offset: 1 }])
    expect(parked[0]?.error).toContain(
      'Topology "tagger" wrote a row its template refuses: tag_doc.tags[0]: "toolong" is 7 characters long',
    )
    expect(rows).toMatchObject([{ tags: ["a", "b", "d"], items: [{ q: 0 }, { q: 1 }] }])
  })
})
