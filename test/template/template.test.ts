import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import fc from "fast-check"
import { parseTemplate } from "../../src/template/load.ts"
import { checkRow, compareKeys, LAST_EVENT_COLUMN, type Row, type RowKey } from "../../src/template/template.ts"

/** What both stores sort by: strings as their UTF-8 bytes, numbers by value, field after field. */
const byStoreOrder = (a: RowKey, b: RowKey): number => {
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as string | number
    const y = b[i] as string | number
    const c =
      typeof x === "number" && typeof y === "number"
        ? x - y
        : Buffer.compare(Buffer.from(String(x)), Buffer.from(String(y)))
    if (c !== 0) return Math.sign(c)
  }
  return 0
}

describe("compareKeys", () => {
  it("orders string keys as their UTF-8 bytes, also above U+D7FF where UTF-16 order differs", () => {
    expect(compareKeys(["\u{1F600}"], ["\uFF61"])).toBeGreaterThan(0)
    expect("\u{1F600}" < "\uFF61").toBe(true)
    fc.assert(
      fc.property(fc.string({ unit: "grapheme" }), fc.string({ unit: "grapheme" }), (a, b) => {
        expect(Math.sign(compareKeys([a], [b]))).toBe(byStoreOrder([a], [b]))
      }),
      { numRuns: 2000 },
    )
  })

  it("orders numbers by value and compound keys field by field", () => {
    const field = fc.oneof(fc.integer({ min: -1000, max: 1000 }), fc.string({ maxLength: 3 }))
    fc.assert(
      fc.property(
        fc.tuple(field, fc.integer({ min: -5, max: 5 })),
        fc.tuple(field, fc.integer({ min: -5, max: 5 })),
        (a, b) => {
          // Same types in each position, as keys of one template have.
          const x: RowKey = [typeof a[0] === typeof b[0] ? a[0] : String(a[0]), a[1]]
          const y: RowKey = [typeof a[0] === typeof b[0] ? b[0] : String(b[0]), b[1]]
          expect(Math.sign(compareKeys(x, y))).toBe(byStoreOrder(x, y))
        },
      ),
      { numRuns: 2000 },
    )
  })
})

describe("checkRow", () => {
  const shaped = Effect.runSync(
    parseTemplate(
      `
tla = "SHP"
name = "shaped"
backend = "rec"
key = ["id"]

[fields.id]
type = "string"
max = 10

[fields.m]
type = "map"
of = { type = "counter" }

[fields.items]
type = "list"

[fields.items.of]
type = "object"

[fields.items.of.fields.q]
type = "int"

[fields.items.of.fields.tags]
type = "set"
of = { type = "string", max = 3 }
`,
      "test/shaped.toml",
    ),
  )
  const refusal = (row: Row): string => {
    const r = checkRow(shaped, { id: "a", ...row, [LAST_EVENT_COLUMN]: "t:0:1" })
    return r.ok ? "accepted" : r.problem
  }

  it("names where a refused value sits: indexes, fields, and map keys quoted unless they are names", () => {
    expect(refusal({ items: [{ q: 1 }, { q: 1.5 }] })).toMatch(/^shaped\.items\[1\]\.q: 1\.5 is not an integer/)
    expect(refusal({ items: [{ q: 1, tags: ["ok", "long"] }] })).toMatch(
      /^shaped\.items\[0\]\.tags\[1\]: "long" is 4 characters long/,
    )
    expect(refusal({ m: { fine: 1, "a.b": "x" } })).toMatch(/^shaped\.m\["a\.b"\]: "x" is not a counter value/)
    expect(refusal({ m: { fine: "x" } })).toMatch(/^shaped\.m\.fine: "x" is not a counter value/)
    expect(refusal({ items: [{ q: 1, z: 2 }] })).toBe('shaped.items[0] has no field "z" (declared: q, tags)')
  })

  it("returns canonical values frozen, and a canonical value met again as it is, without walking it", () => {
    const first = checkRow(shaped, {
      id: "a",
      m: { b: 2, a: 1 },
      items: [{ q: 1, tags: ["y", "x", "y"] }],
      [LAST_EVENT_COLUMN]: "t:0:1",
    })
    if (!first.ok) throw new Error(first.problem)
    const items = first.value.items as ReadonlyArray<{ q: number; tags: ReadonlyArray<string> }>
    expect(items).toEqual([{ q: 1, tags: ["x", "y"] }])
    expect([items, items[0], items[0]?.tags, first.value.m].every(Object.isFrozen)).toBe(true)
    const again = checkRow(shaped, {
      ...first.value,
      items: [...items, { q: 2 }],
      [LAST_EVENT_COLUMN]: "t:0:2",
    })
    if (!again.ok) throw new Error(again.problem)
    expect(again.value.m).toBe(first.value.m)
    expect((again.value.items as ReadonlyArray<unknown>)[0]).toBe(items[0])
    expect(again.value.items).toEqual([
      { q: 1, tags: ["x", "y"] },
      { q: 2, tags: [] },
    ])
  })

  it("property: a row checked again, from its canonical parts or from fresh copies, gives the same row", () => {
    const tag = fc.string({ maxLength: 3 })
    const row = fc.record({
      m: fc.dictionary(fc.string({ maxLength: 4 }), fc.integer()),
      items: fc.array(fc.record({ q: fc.integer(), tags: fc.array(tag, { maxLength: 4 }) }, { requiredKeys: ["q"] }), {
        maxLength: 5,
      }),
    })
    fc.assert(
      fc.property(row, (fields) => {
        const first = checkRow(shaped, { id: "a", ...fields, [LAST_EVENT_COLUMN]: "t:0:1" })
        if (!first.ok) throw new Error(first.problem)
        const fromParts = checkRow(shaped, { ...first.value })
        const fromCopies = checkRow(shaped, structuredClone(first.value))
        expect(fromParts).toEqual(first)
        expect(fromCopies).toEqual(first)
      }),
    )
  })

  it("accepts a string whose UTF-16 length exceeds its limit while its code points do not", () => {
    expect(refusal({ items: [{ q: 1, tags: ["\u{1F600}\u{1F600}\u{1F600}"] }] })).toBe("accepted")
    expect(refusal({ items: [{ q: 1, tags: ["\u{1F600}\u{1F600}\u{1F600}\u{1F600}"] }] })).toMatch(
      /is 4 characters long; the field holds at most 3/,
    )
  })
})
