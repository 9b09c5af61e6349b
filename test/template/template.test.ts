import { describe, expect, it } from "@effect/vitest"
import fc from "fast-check"
import { compareKeys, type RowKey } from "../../src/template/template.ts"

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
