/**
 * The read-model conformance suite: every adapter of the ReadModelStore port
 * runs it unchanged (test/readmodel/<adapter>.test.ts). It pins down what
 * topologies rely on: rows read back equal to what was written, atomic
 * commits of rows and checkpoint, and the same refusals everywhere.
 */
import { assert, describe, expect, layer } from "@effect/vitest"
import { Effect, type Layer } from "effect"
import type { StoreError } from "../../src/errors.ts"
import { type CheckpointId, ReadModelStore, type RowWrite } from "../../src/readmodel/store.ts"
import { parseTemplate } from "../../src/template/load.ts"
import { keyId, LAST_EVENT_COLUMN, type Row, type RowKey } from "../../src/template/template.ts"

const template = (file: string, text: string) => Effect.runSync(parseTemplate(text, file))

/** Every field type, defaults, nullables, a secondary index. */
export const cfAll = template(
  "conformance/cf_all.toml",
  `
tla = "CFA"
name = "cf_all"
backend = "rel"
description = "Every field type."
key = ["id"]

[fields.id]
type = "string"
max = 40

[fields.s]
type = "string"
max = 12
nullable = true

[fields.txt]
type = "text"
nullable = true

[fields.n]
type = "int"
default = 7

[fields.f]
type = "float"
nullable = true

[fields.b]
type = "bool"
default = false

[fields.at]
type = "time"
nullable = true

[fields.doc]
type = "json"
nullable = true

[fields.color]
type = "enum"
values = ["red", "green", "blue"]
default = "red"

[fields.tag]
type = "string"
max = 20
default = "none"

[[indexes]]
name = "by_color"
fields = ["color", "n"]
`,
)

/** A compound key and a unique secondary index. */
export const cfPair = template(
  "conformance/cf_pair.toml",
  `
tla = "CFP"
name = "cf_pair"
backend = "rel"
key = ["tenant", "seq"]

[fields.tenant]
type = "string"
max = 20

[fields.seq]
type = "int"

[fields.label]
type = "string"
max = 40

[fields.email]
type = "string"
max = 60
nullable = true

[[indexes]]
name = "by_email"
fields = ["email"]
unique = true
`,
)

/** An int key, an enum in the key, a non-null JSON default. */
export const cfNum = template(
  "conformance/cf_num.toml",
  `
tla = "CFN"
name = "cf_num"
backend = "rel"
key = ["num", "kind"]

[fields.num]
type = "int"

[fields.kind]
type = "enum"
values = ["a", "b"]

[fields.doc]
type = "json"
default = { list = [], ok = true }
`,
)

const TEMPLATES = [cfAll, cfPair, cfNum]
const NAMES = TEMPLATES.map((t) => t.name)
const ID = "conf:0:1"
const ID2 = "conf:1:42/balances.3"

const cp = (topology: string, partition = 0, depot = "conf"): CheckpointId => ({ topology, depot, partition })
const put = (template: string, key: RowKey, row: Row): RowWrite => ({ template, key, row })
const del = (template: string, key: RowKey): RowWrite => ({ template, key, row: null })

/** A complete cf_all row as it reads back: every field, defaults filled in. */
const allRow = (id: string, fields: Row = {}): Row => ({
  id,
  s: null,
  txt: null,
  n: 7,
  f: null,
  b: false,
  at: null,
  doc: null,
  color: "red",
  tag: "none",
  [LAST_EVENT_COLUMN]: ID,
  ...fields,
})

const pairRow = (tenant: string, seq: number, label: string, email: string | null = null): Row => ({
  tenant,
  seq,
  label,
  email,
  [LAST_EVENT_COLUMN]: ID,
})

const fresh = Effect.gen(function* () {
  const store = yield* ReadModelStore
  yield* store.ensure(TEMPLATES)
  yield* store.reset("conf", NAMES)
  return store
})

const failure = <A, R>(effect: Effect.Effect<A, StoreError, R>) =>
  Effect.map(Effect.flip(effect), (e) => {
    assert.strictEqual(e._tag, "StoreError")
    return e
  })

const snapshot = Effect.gen(function* () {
  const store = yield* ReadModelStore
  return {
    rows: yield* Effect.forEach(NAMES, (n) => store.scan(n)),
    checkpoint: yield* store.checkpoint(cp("conf")),
  }
})

/**
 * Registers the suite for one adapter. `makeLayer` builds a store; the suite
 * shares one build across its tests, as an engine shares one store.
 */
export const readModelConformance = <E>(
  name: string,
  makeLayer: () => Layer.Layer<ReadModelStore, E>,
  options: { readonly skip?: boolean } = {},
): void => {
  describe.skipIf(options.skip === true)(`read-model conformance: ${name}`, () => {
    layer(makeLayer(), { timeout: "60 seconds" })((it) => {
      it.effect("ensure is idempotent", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          yield* store.ensure(TEMPLATES)
          yield* store.ensure([cfAll])
          yield* store.commit(cp("conf"), 1, [put("cf_all", ["x"], allRow("x"))])
          yield* store.ensure(TEMPLATES)
          expect(yield* store.scan("cf_all")).toEqual([allRow("x")])
        }),
      )

      it.effect("rows read back equal to what was written: every type, unicode, nulls, defaults", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          const long = "Ünïcødé 😀 文字 ".repeat(5000)
          const rows: Array<Row> = [
            allRow("a", {
              s: "héllo wörld",
              txt: long,
              n: Number.MAX_SAFE_INTEGER,
              f: 0.1 + 0.2,
              b: true,
              at: 1_700_000_000_123,
              doc: { nested: [1, "two", null, { x: true, y: 1.5e-7 }], ключ: "値", empty: {} },
              color: "green",
              tag: "x",
            }),
            allRow("a ", {
              s: "",
              txt: "",
              n: Number.MIN_SAFE_INTEGER,
              f: -1.7976931348623157e308,
              at: -86_400_000,
              doc: [],
              color: "blue",
              [LAST_EVENT_COLUMN]: ID2,
            }),
            allRow("😀", { s: "😀".repeat(12), f: 5e-324, doc: "just a string" }),
            allRow("é", { doc: 0, f: 3 }),
            allRow("～", { doc: false, f: -0.5 }),
            allRow("𝒜", { s: "a'b\\c\"d`e", txt: "line\nbreak\ttab\0nul" }),
          ]
          yield* store.commit(
            cp("conf"),
            1,
            rows.map((r) => put("cf_all", [r.id as string], r)),
          )
          // Left-out fields take their defaults (or null).
          yield* store.commit(cp("conf"), 2, [put("cf_all", ["Z"], { id: "Z", [LAST_EVENT_COLUMN]: ID })])
          const all = [...rows, allRow("Z")]

          const loaded = yield* store.load("cf_all", all.map((r) => [r.id as string]).concat([["absent"], ["A"]]))
          expect(loaded.size).toBe(all.length)
          for (const r of all) expect(loaded.get(keyId([r.id as string]))).toEqual(r)
          expect(loaded.has("absent")).toBe(false)

          // Key order is code-point order: "a" < "a " (no padding), BMP < astral.
          const scanned = yield* store.scan("cf_all")
          expect(scanned.map((r) => r.id)).toEqual(["Z", "a", "a ", "é", "～", "𝒜", "😀"])
          for (const r of scanned) expect(r).toEqual(all.find((x) => x.id === r.id))
        }),
      )

      it.effect("canonical forms: -0 reads back as 0, keys are normalised to their field types", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          yield* store.commit(cp("conf"), 1, [
            put("cf_all", ["neg"], allRow("neg", { f: -0, n: -0 })),
            put("cf_num", [5, "a"], { num: 5, kind: "a", [LAST_EVENT_COLUMN]: ID }),
          ])
          const row = (yield* store.load("cf_all", [["neg"]])).get("neg")
          assert.isTrue(Object.is(row?.f, 0))
          assert.isTrue(Object.is(row?.n, 0))
          // An int key asked for as a string finds the row, keyed as it was asked.
          const byString = yield* store.load("cf_num", [["5", "a"]])
          expect(byString.get(keyId(["5", "a"]))).toEqual({
            num: 5,
            kind: "a",
            doc: { list: [], ok: true },
            [LAST_EVENT_COLUMN]: ID,
          })
        }),
      )

      it.effect("compound and int keys: load many at once, scan in key order", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          const pairs = [
            pairRow("acme", 10, "ten"),
            pairRow("acme", 2, "two", "two@acme"),
            pairRow("acme", -1, "minus one"),
            pairRow("beta", 1, "beta one"),
            pairRow("Acme", 5, "upper"),
          ]
          const nums = [10, -3, 2].map((num) => ({ num, kind: "b", doc: { num }, [LAST_EVENT_COLUMN]: ID }))
          yield* store.commit(cp("conf"), 3, [
            ...pairs.map((r) => put("cf_pair", [r.tenant as string, r.seq as number], r)),
            ...nums.map((r) => put("cf_num", [r.num, "b"], r)),
          ])
          const loaded = yield* store.load("cf_pair", [
            ["acme", 10],
            ["acme", 2],
            ["beta", 2],
            ["zeta", 1],
          ])
          expect([...loaded.keys()].sort()).toEqual([keyId(["acme", 10]), keyId(["acme", 2])].sort())
          expect(loaded.get(keyId(["acme", 2]))).toEqual(pairs[1])
          expect((yield* store.scan("cf_pair")).map((r) => [r.tenant, r.seq])).toEqual([
            ["Acme", 5],
            ["acme", -1],
            ["acme", 2],
            ["acme", 10],
            ["beta", 1],
          ])
          expect((yield* store.scan("cf_num")).map((r) => r.num)).toEqual([-3, 2, 10])
          expect((yield* store.load("cf_num", [])).size).toBe(0)
        }),
      )

      it.effect("a write replaces the whole row; deletes remove rows", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          yield* store.commit(cp("conf"), 1, [
            put("cf_all", ["u"], allRow("u", { n: 1, s: "first", doc: { v: 1 } })),
            put("cf_all", ["d"], allRow("d")),
            put("cf_all", ["k"], allRow("k")),
          ])
          yield* store.commit(cp("conf"), 2, [
            put("cf_all", ["u"], { id: "u", color: "blue", [LAST_EVENT_COLUMN]: ID2 }),
            del("cf_all", ["d"]),
            del("cf_all", ["never-there"]),
            put("cf_all", ["new"], allRow("new")),
          ])
          expect(yield* store.scan("cf_all")).toEqual([
            allRow("k"),
            allRow("new"),
            allRow("u", { color: "blue", [LAST_EVENT_COLUMN]: ID2 }),
          ])
          yield* store.commit(cp("conf"), 3, [del("cf_all", ["k"]), del("cf_all", ["new"]), del("cf_all", ["u"])])
          expect(yield* store.scan("cf_all")).toEqual([])
        }),
      )

      it.effect("a batch of thousands of rows is one commit and one load", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          const rows = Array.from({ length: 3000 }, (_, i) =>
            allRow(`k${String(i).padStart(5, "0")}`, { n: i, f: i / 7, b: i % 2 === 0, doc: { i } }),
          )
          yield* store.commit(
            cp("conf"),
            3000,
            rows.map((r) => put("cf_all", [r.id as string], r)),
          )
          const loaded = yield* store.load(
            "cf_all",
            rows.map((r) => [r.id as string]),
          )
          expect(loaded.size).toBe(3000)
          expect(loaded.get("k01234")).toEqual(rows[1234])
          expect(yield* store.scan("cf_all")).toEqual(rows)
          expect(yield* store.checkpoint(cp("conf"))).toBe(3000)
        }),
      )

      it.effect("checkpoints start at 0 and move with each commit, per topology, depot and partition", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          expect(yield* store.checkpoint(cp("cp_a", 0))).toBe(0)
          yield* store.commit(cp("cp_a", 0), 5, [])
          yield* store.commit(cp("cp_a", 3), 11, [put("cf_all", ["c"], allRow("c"))])
          expect(yield* store.checkpoint(cp("cp_a", 0))).toBe(5)
          expect(yield* store.checkpoint(cp("cp_a", 3))).toBe(11)
          expect(yield* store.checkpoint(cp("cp_a", 1))).toBe(0)
          expect(yield* store.checkpoint(cp("cp_a", 0, "other"))).toBe(0)
          expect(yield* store.checkpoint(cp("cp_b", 0))).toBe(0)
          yield* store.commit(cp("cp_a", 0), 9, [])
          expect(yield* store.checkpoint(cp("cp_a", 0))).toBe(9)
          yield* store.reset("cp_a", [])
        }),
      )

      it.effect("a refused row fails the whole commit: no row and no checkpoint change", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          yield* store.commit(cp("conf"), 10, [put("cf_all", ["y"], allRow("y", { n: 1 }))])
          const before = yield* snapshot
          const good = [put("cf_all", ["x"], allRow("x")), put("cf_all", ["y"], allRow("y", { n: 2 }))]
          const bad: Array<[string, RowWrite]> = [
            ["enum value not in values", put("cf_all", ["z"], allRow("z", { color: "purple" }))],
            ["string longer than max", put("cf_all", ["z"], allRow("z", { s: "😀".repeat(13) }))],
            ["null in a not-null field", put("cf_all", ["z"], allRow("z", { n: null }))],
            [
              "missing not-null field without default",
              put("cf_pair", ["t", 1], { tenant: "t", seq: 1, [LAST_EVENT_COLUMN]: ID }),
            ],
            ["int that is not an integer", put("cf_all", ["z"], allRow("z", { n: 1.5 }))],
            ["int beyond 2^53", put("cf_all", ["z"], allRow("z", { n: 2 ** 60 }))],
            ["float that is not finite", put("cf_all", ["z"], allRow("z", { f: Number.NaN }))],
            ["bool that is a number", put("cf_all", ["z"], allRow("z", { b: 1 }))],
            ["time that is a Date", put("cf_all", ["z"], allRow("z", { at: new Date(0) }))],
            ["json that is not plain JSON", put("cf_all", ["z"], allRow("z", { doc: { d: new Date(0) } }))],
            ["unpaired surrogate", put("cf_all", ["z"], allRow("z", { s: "\uD800x" }))],
            ["unknown field", put("cf_all", ["z"], { ...allRow("z"), extra: 1 })],
            ["unknown field named like an Object method", put("cf_all", ["z"], { ...allRow("z"), toString: "x" })],
            ["missing lineage ID", put("cf_all", ["z"], { id: "z" })],
            ["malformed lineage ID", put("cf_all", ["z"], allRow("z", { [LAST_EVENT_COLUMN]: "not an id" }))],
            ["key that does not match the row", put("cf_all", ["z"], allRow("w"))],
            ["key of the wrong arity", put("cf_pair", ["t"], pairRow("t", 1, "l"))],
            ["unknown template", put("cf_nope", ["z"], allRow("z"))],
            ["row written twice", put("cf_all", ["x"], allRow("x"))],
          ]
          for (const [what, write] of bad) {
            const e = yield* failure(store.commit(cp("conf"), 20, [...good, write]))
            assert.isFalse(e.retryable, what)
            expect(yield* snapshot, what).toEqual(before)
          }
        }),
      )

      it.effect("a unique index refuses a clashing row and the commit leaves nothing behind", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          yield* store.commit(cp("conf"), 1, [
            put("cf_pair", ["t", 1], pairRow("t", 1, "one", "one@t")),
            put("cf_pair", ["t", 2], pairRow("t", 2, "two", "two@t")),
            put("cf_pair", ["t", 3], pairRow("t", 3, "three")),
            put("cf_pair", ["t", 4], pairRow("t", 4, "four")),
          ])
          const before = yield* snapshot
          // The clash comes last, after a delete, an update and an insert that were fine.
          const e = yield* failure(
            store.commit(cp("conf"), 2, [
              del("cf_pair", ["t", 3]),
              put("cf_pair", ["t", 5], pairRow("t", 5, "five", "five@t")),
              put("cf_pair", ["t", 4], pairRow("t", 4, "four", "one@t")),
            ]),
          )
          assert.isFalse(e.retryable)
          expect(yield* snapshot).toEqual(before)
          // A new row clashing with an existing one must not turn into an update of that row.
          yield* failure(store.commit(cp("conf"), 2, [put("cf_pair", ["t", 9], pairRow("t", 9, "nine", "two@t"))]))
          expect(yield* snapshot).toEqual(before)
          // NULLs never clash; a value freed in the same batch (by a delete or an update) may be reused.
          yield* store.commit(cp("conf"), 3, [
            del("cf_pair", ["t", 1]),
            put("cf_pair", ["t", 2], pairRow("t", 2, "two", "second@t")),
            put("cf_pair", ["t", 6], pairRow("t", 6, "six", "one@t")),
            put("cf_pair", ["t", 7], pairRow("t", 7, "seven", "two@t")),
            put("cf_pair", ["t", 8], pairRow("t", 8, "eight")),
          ])
          expect((yield* store.scan("cf_pair")).map((r) => [r.seq, r.email])).toEqual([
            [2, "second@t"],
            [3, null],
            [4, null],
            [6, "one@t"],
            [7, "two@t"],
            [8, null],
          ])
          expect(yield* store.checkpoint(cp("conf"))).toBe(3)
        }),
      )

      it.effect("callers cannot change stored rows: rows are copied in, and rows handed out are copies or frozen", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          const doc = { list: [1, 2] }
          const written = { ...allRow("m"), doc }
          yield* store.commit(cp("conf"), 1, [put("cf_all", ["m"], written)])
          doc.list.push(3)
          const first = (yield* store.load("cf_all", [["m"]])).get("m") as { doc: { list: Array<number> } }
          // A frozen row refuses the change (TypeError); a copied one takes it harmlessly.
          const attempt = (f: () => void) => {
            try {
              f()
            } catch (e) {
              expect(e).toBeInstanceOf(TypeError)
            }
          }
          attempt(() => first.doc.list.push(4))
          attempt(() => {
            ;(first as Record<string, unknown>).n = 99
          })
          expect((yield* store.load("cf_all", [["m"]])).get("m")).toEqual(allRow("m", { doc: { list: [1, 2] } }))
          expect(yield* store.scan("cf_all")).toEqual([allRow("m", { doc: { list: [1, 2] } })])
        }),
      )

      it.effect("reset clears the templates' rows and that topology's checkpoints only", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          yield* store.commit(cp("rs_one", 0), 4, [put("cf_all", ["r"], allRow("r"))])
          yield* store.commit(cp("rs_one", 1, "other"), 6, [put("cf_pair", ["t", 1], pairRow("t", 1, "kept"))])
          yield* store.commit(cp("rs_two", 0), 8, [])
          const e = yield* failure(store.reset("rs_one", ["cf_all", "cf_nope"]))
          expect(e.message).toContain("cf_nope")
          expect(yield* store.scan("cf_all")).toHaveLength(1)
          expect(yield* store.checkpoint(cp("rs_one", 0))).toBe(4)

          yield* store.reset("rs_one", ["cf_all"])
          expect(yield* store.scan("cf_all")).toEqual([])
          expect(yield* store.scan("cf_pair")).toEqual([pairRow("t", 1, "kept")])
          expect(yield* store.checkpoint(cp("rs_one", 0))).toBe(0)
          expect(yield* store.checkpoint(cp("rs_one", 1, "other"))).toBe(0)
          expect(yield* store.checkpoint(cp("rs_two", 0))).toBe(8)
          yield* store.reset("rs_two", [])
          expect(yield* store.checkpoint(cp("rs_two", 0))).toBe(0)
        }),
      )

      it.effect("an unknown template is an error that names it", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          for (const e of [
            yield* failure(store.load("cf_nope", [["x"]])),
            yield* failure(store.scan("cf_nope")),
            yield* failure(store.commit(cp("conf"), 1, [put("cf_nope", ["x"], allRow("x"))])),
            yield* failure(store.reset("conf", ["cf_nope"])),
          ]) {
            expect(e.message).toContain('"cf_nope"')
            assert.isFalse(e.retryable)
          }
          const invalid = { ...cfAll, name: "cf_bad", tla: "CFB", key: ["missing"] }
          expect((yield* failure(store.ensure([invalid]))).message).toContain("missing")
          const clash = { ...cfAll, name: "cf_other" }
          expect((yield* failure(store.ensure([clash]))).message).toContain("CFA")
        }),
      )
    })
  })
}
