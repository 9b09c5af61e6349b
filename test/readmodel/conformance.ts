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
import {
  compareCodePoints,
  keyId,
  LAST_EVENT_COLUMN,
  type Row,
  type RowKey,
  type Template,
} from "../../src/template/template.ts"

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

/** The three templates of the classic cases, for one backend (their fields are valid in both). */
const classicTemplates = (backend: Template["backend"]): ReadonlyArray<Template> =>
  [cfAll, cfPair, cfNum].map((t) => (backend === t.backend ? t : { ...t, backend }))
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

const freshWith = (templates: ReadonlyArray<Template>) =>
  Effect.gen(function* () {
    const store = yield* ReadModelStore
    yield* store.ensure(templates)
    yield* store.reset(
      "conf",
      templates.map((t) => t.name),
    )
    return store
  })

const failure = <A, R>(effect: Effect.Effect<A, StoreError, R>) =>
  Effect.map(Effect.flip(effect), (e) => {
    assert.strictEqual(e._tag, "StoreError")
    return e
  })

const snapshotOf = (names: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const store = yield* ReadModelStore
    return {
      rows: yield* Effect.forEach(names, (n) => store.scan(n)),
      checkpoint: yield* store.checkpoint(cp("conf")),
    }
  })

/**
 * Registers the suite for one adapter. `makeLayer` builds a store; the suite
 * shares one build across its tests, as an engine shares one store.
 * `backends` says which templates the adapter holds (default: REL only): with
 * "rec", the classic cases run again on REC versions of their templates, and
 * the REC cases (nested shapes) run too.
 */
export const readModelConformance = <E>(
  name: string,
  makeLayer: () => Layer.Layer<ReadModelStore, E>,
  options: { readonly skip?: boolean; readonly backends?: ReadonlyArray<Template["backend"]> } = {},
): void => {
  const backends = options.backends ?? ["rel"]
  for (const backend of backends) classicCases(name, backend, makeLayer, options.skip === true)
  if (backends.includes("rec")) recCases(name, makeLayer, options.skip === true)
}

const classicCases = <E>(
  name: string,
  backend: Template["backend"],
  makeLayer: () => Layer.Layer<ReadModelStore, E>,
  skip: boolean,
): void => {
  const TEMPLATES = classicTemplates(backend)
  const NAMES = TEMPLATES.map((t) => t.name)
  const cfAll = TEMPLATES[0] as Template
  const fresh = freshWith(TEMPLATES)
  const snapshot = snapshotOf(NAMES)
  describe.skipIf(skip)(`read-model conformance: ${name}${backend === "rel" ? "" : " (REC templates)"}`, () => {
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

      it.effect(
        "conditional stores refuse writes whose seen no longer holds (ROW_CONFLICT), and accept a retry of a commit that landed; others ignore seen",
        () =>
          Effect.gen(function* () {
            const store = yield* fresh
            const ID3 = "conf:0:3"
            const seen = (w: RowWrite, was: string | null): RowWrite => ({ ...w, seen: was })
            yield* store.commit(cp("conf"), 1, [put("cf_all", ["a"], allRow("a")), put("cf_all", ["b"], allRow("b"))])
            if (store.conditional?.("cf_all") !== true) {
              // seen is advice for conditional stores only: elsewhere a write is a write.
              yield* store.commit(cp("conf"), 2, [seen(put("cf_all", ["a"], allRow("a", { n: 2 })), "conf:9:9")])
              expect(yield* store.scan("cf_all")).toEqual([allRow("a", { n: 2 }), allRow("b")])
              return
            }
            const before = yield* snapshot
            const conflicts: Array<[string, RowWrite]> = [
              ["update seen at another lineage ID", seen(put("cf_all", ["a"], allRow("a", { n: 2 })), ID2)],
              ["update of a row seen absent", seen(put("cf_all", ["b"], allRow("b", { n: 2 })), null)],
              ["update of a row gone", seen(put("cf_all", ["c"], allRow("c", { n: 2 })), ID)],
              ["delete seen at another lineage ID", seen(del("cf_all", ["a"]), ID2)],
              ["delete of a row seen absent", seen(del("cf_all", ["b"]), null)],
            ]
            for (const [what, write] of conflicts) {
              const good = seen(put("cf_all", ["d"], allRow("d", { [LAST_EVENT_COLUMN]: ID3 })), null)
              const e = yield* failure(store.commit(cp("conf"), 5, [good, write]))
              expect(e.code, what).toBe("ROW_CONFLICT")
              assert.isFalse(e.retryable, what)
              expect(yield* snapshot, what).toEqual(before)
            }
            // The writes as seen right: every kind applies.
            const batch = [
              seen(put("cf_all", ["a"], allRow("a", { n: 3, [LAST_EVENT_COLUMN]: ID3 })), ID),
              seen(del("cf_all", ["b"]), ID),
              seen(put("cf_all", ["c"], allRow("c", { [LAST_EVENT_COLUMN]: ID3 })), null),
              seen(del("cf_all", ["gone"]), null),
            ]
            yield* store.commit(cp("conf"), 5, batch)
            const after = yield* snapshot
            expect(after.rows[0]).toEqual([
              allRow("a", { n: 3, [LAST_EVENT_COLUMN]: ID3 }),
              allRow("c", { [LAST_EVENT_COLUMN]: ID3 }),
            ])
            expect(after.checkpoint).toBe(5)
            // A retry of that commit (its answer was lost) finds its own rows: it succeeds and writes nothing.
            yield* store.commit(cp("conf"), 5, batch)
            expect(yield* snapshot).toEqual(after)
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

/** Nested shapes: a counter, maps, lists (of objects, of lists), a set, objects, and a unique path index. */
export const cfRec = template(
  "conformance/cf_rec.toml",
  `
tla = "CFR"
name = "cf_rec"
backend = "rec"
description = "Every nested shape."
key = ["id"]

[fields.id]
type = "string"
max = 40

[fields.hits]
type = "counter"

[fields.tags]
type = "set"
of = { type = "string", max = 20 }

[fields.scores]
type = "map"
of = { type = "float" }

[fields.by_kind]
type = "map"
of = { type = "counter" }

[fields.entries]
type = "list"

[fields.entries.of]
type = "object"

[fields.entries.of.fields.seq]
type = "int"

[fields.entries.of.fields.at]
type = "time"

[fields.entries.of.fields.note]
type = "string"
max = 30
nullable = true

[fields.entries.of.fields.flags]
type = "set"
of = { type = "int" }

[fields.totals]
type = "object"

[fields.totals.fields.in]
type = "int"
default = 0

[fields.totals.fields.out]
type = "int"
default = 0

[fields.profile]
type = "object"
nullable = true

[fields.profile.fields.email]
type = "string"
max = 60
nullable = true

[fields.profile.fields.since]
type = "time"

[fields.grid]
type = "list"
of = { type = "list", of = { type = "int" } }

[fields.extra]
type = "json"
nullable = true

[[indexes]]
name = "by_email"
fields = ["profile.email"]
unique = true

[[indexes]]
name = "by_tag"
fields = ["tags"]

[[indexes]]
name = "by_seq"
fields = ["entries.seq", "totals.in"]
`,
)

/** A complete cf_rec row as it reads back: shapes start empty, the object takes its fields' defaults. */
const recRow = (id: string, fields: Row = {}): Row => ({
  id,
  hits: 0,
  tags: [],
  scores: {},
  by_kind: {},
  entries: [],
  totals: { in: 0, out: 0 },
  profile: null,
  grid: [],
  extra: null,
  [LAST_EVENT_COLUMN]: ID,
  ...fields,
})

const nest = (levels: number): unknown => (levels === 0 ? 1 : [nest(levels - 1)])

const recCases = <E>(name: string, makeLayer: () => Layer.Layer<ReadModelStore, E>, skip: boolean): void => {
  const fresh = freshWith([cfRec])
  const snapshot = snapshotOf([cfRec.name])
  const rec = (id: string, fields: Row = {}) => put("cf_rec", [id], recRow(id, fields))
  describe.skipIf(skip)(`read-model conformance: ${name} (REC shapes)`, () => {
    layer(makeLayer(), { timeout: "60 seconds" })((it) => {
      it.effect("shaped fields start empty; nested values read back in canonical form", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          yield* store.commit(cp("conf"), 1, [put("cf_rec", ["a"], { id: "a", [LAST_EVENT_COLUMN]: ID })])
          expect((yield* store.load("cf_rec", [["a"]])).get("a")).toEqual(recRow("a"))
          yield* store.commit(cp("conf"), 2, [
            put("cf_rec", ["b"], {
              id: "b",
              hits: Number.MAX_SAFE_INTEGER,
              tags: new Set(["zeta", "alpha", "Beta", "😀", "é", "alpha"]),
              scores: new Map([
                ["b", 0.1 + 0.2],
                ["a", -0],
                ["c", -1.5e-300],
              ]),
              by_kind: { Opened: 1, Deposited: 3 },
              entries: [
                { seq: 2, at: 1_700_000_000_000, note: "first", flags: [3, 1, 3] },
                { seq: 1, at: -1, flags: [] },
              ],
              totals: { in: 10 },
              profile: { email: "b@example.com", since: 0 },
              grid: [[1, 2], [], [-3]],
              extra: { nested: [1, { deep: true }], n: 2 ** 40, f: 0.5 },
              [LAST_EVENT_COLUMN]: ID2,
            }),
          ])
          const b = recRow("b", {
            hits: Number.MAX_SAFE_INTEGER,
            tags: ["Beta", "alpha", "zeta", "é", "😀"],
            scores: { a: 0, b: 0.1 + 0.2, c: -1.5e-300 },
            by_kind: { Deposited: 3, Opened: 1 },
            entries: [
              { seq: 2, at: 1_700_000_000_000, note: "first", flags: [1, 3] },
              { seq: 1, at: -1, note: null, flags: [] },
            ],
            totals: { in: 10, out: 0 },
            profile: { email: "b@example.com", since: 0 },
            grid: [[1, 2], [], [-3]],
            extra: { nested: [1, { deep: true }], n: 2 ** 40, f: 0.5 },
            [LAST_EVENT_COLUMN]: ID2,
          })
          const loaded = (yield* store.load("cf_rec", [["b"]])).get("b") as Record<string, Record<string, unknown>>
          expect(loaded).toEqual(b)
          // Map keys come back in code-point order, and -0 as 0.
          expect(Object.keys(loaded.scores as object)).toEqual(["a", "b", "c"])
          assert.isTrue(Object.is(loaded.scores?.a, 0))
          expect(yield* store.scan("cf_rec")).toEqual([recRow("a"), b])
        }),
      )

      it.effect("map keys and json keys may be any string", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          const keys = ["", " ", ".", "a.b", "$", "$set", "%", "%2E", "%25", "x\u0000y", "ключ", "😀", "__proto__"]
          const byKind = Object.fromEntries(keys.map((k, i) => [k, i]))
          const extra = { $where: { "a.b": [{ "": 1, "%": "%", "\u0000": null }] }, ["__proto__"]: { x: 1 } }
          yield* store.commit(cp("conf"), 1, [rec("k", { by_kind: byKind, extra })])
          const loaded = (yield* store.load("cf_rec", [["k"]])).get("k") as Record<string, object>
          expect(loaded).toEqual(recRow("k", { by_kind: byKind, extra }))
          expect(Object.keys(loaded.by_kind as object)).toEqual([...keys].sort(compareCodePoints))
          expect(Object.hasOwn(loaded.extra as object, "__proto__")).toBe(true)
        }),
      )

      it.effect("a write replaces the whole document: map entries and list items go with it", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          yield* store.commit(cp("conf"), 1, [
            rec("r", {
              by_kind: { x: 1, y: 2 },
              entries: [{ seq: 1, at: 1, note: null, flags: [1] }],
              tags: ["a", "b"],
              profile: { email: "r@x", since: 1 },
            }),
          ])
          yield* store.commit(cp("conf"), 2, [rec("r", { by_kind: { y: 5 }, [LAST_EVENT_COLUMN]: ID2 })])
          expect(yield* store.scan("cf_rec")).toEqual([recRow("r", { by_kind: { y: 5 }, [LAST_EVENT_COLUMN]: ID2 })])
          yield* store.commit(cp("conf"), 3, [del("cf_rec", ["r"])])
          expect(yield* store.scan("cf_rec")).toEqual([])
        }),
      )

      it.effect("a unique index on a path into an object refuses a clash; null objects and fields never clash", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          const who = (email: string | null) => ({ profile: { email, since: 1 } })
          yield* store.commit(cp("conf"), 1, [
            rec("u1", who("one@x")),
            rec("u2", who("two@x")),
            rec("u3"),
            rec("u4", who(null)),
          ])
          const before = yield* snapshot
          const e = yield* failure(store.commit(cp("conf"), 2, [rec("u3", {}), rec("u5", who("one@x"))]))
          assert.isFalse(e.retryable)
          expect(yield* snapshot).toEqual(before)
          // Nulls never clash; a value freed in the same batch (by a delete or an update) may be reused.
          yield* store.commit(cp("conf"), 3, [
            rec("u6"),
            rec("u7", who(null)),
            del("cf_rec", ["u1"]),
            rec("u2", who("second@x")),
            rec("u8", who("one@x")),
            rec("u9", who("two@x")),
          ])
          expect(
            (yield* store.scan("cf_rec")).map((r) => [r.id, (r.profile as { email: string } | null)?.email ?? null]),
          ).toEqual([
            ["u2", "second@x"],
            ["u3", null],
            ["u4", null],
            ["u6", null],
            ["u7", null],
            ["u8", "one@x"],
            ["u9", "two@x"],
          ])
          expect(yield* store.checkpoint(cp("conf"))).toBe(3)
        }),
      )

      it.effect("a refused shaped value fails the whole commit: no document and no checkpoint change", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          yield* store.commit(cp("conf"), 10, [rec("y", { hits: 1 })])
          const before = yield* snapshot
          const good = [rec("x"), rec("y", { hits: 2 })]
          const bad: Array<[string, Row]> = [
            ["counter that is not an integer", { hits: 1.5 }],
            ["counter that is null", { hits: null }],
            ["map value of the wrong type", { by_kind: { a: "x" } }],
            ["map given as an array", { by_kind: [1] }],
            ["map value that is null", { scores: { a: null } }],
            ["map key that UTF-8 cannot store", { by_kind: { "\uD800": 1 } }],
            ["list item of the wrong type", { grid: [[1, "2"]] }],
            ["list item that is null", { entries: [null] }],
            ["list item with an unknown field", { entries: [{ seq: 1, at: 1, flags: [], bogus: 1 }] }],
            ["set member that is an object", { tags: [{}] }],
            ["set member longer than max", { tags: ["x".repeat(21)] }],
            ["object with an unknown field", { totals: { in: 1, extra: 2 } }],
            ["object missing a required field", { profile: { email: "p@x" } }],
            ["object that is an array", { totals: [] }],
            ["json nested deeper than a document can hold", { extra: nest(100) }],
            ["time outside the dates MongoDB can hold", { profile: { email: null, since: 9e15 } }],
          ]
          for (const [what, fields] of bad) {
            const e = yield* failure(store.commit(cp("conf"), 20, [...good, rec("z", fields)]))
            assert.isFalse(e.retryable, what)
            expect(yield* snapshot, what).toEqual(before)
          }
        }),
      )

      it.effect("a document over MongoDB's 16 MiB is refused, naming the template, the key and the limit", () =>
        Effect.gen(function* () {
          const store = yield* fresh
          const e = yield* failure(
            store.commit(cp("conf"), 1, [rec("small"), rec("big", { extra: "x".repeat(17 * 1024 * 1024) })]),
          )
          assert.isFalse(e.retryable)
          for (const part of ["cf_rec", '("big")', "16 MiB"]) expect(e.message).toContain(part)
          expect(yield* store.scan("cf_rec")).toEqual([])
          // Just under the limit is fine.
          const large = "y".repeat(15 * 1024 * 1024)
          yield* store.commit(cp("conf"), 2, [rec("large", { extra: large })])
          const stored = (yield* store.load("cf_rec", [["large"]])).get("large")
          expect(String(stored?.extra).length).toBe(large.length)
        }),
      )
    })
  })
}
