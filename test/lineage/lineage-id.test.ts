import fc from "fast-check"
import { describe, expect, it } from "vitest"
import * as Lineage from "../../src/lineage/lineage-id.ts"

const name = fc.stringMatching(/^[a-z][a-z0-9_]{0,8}$/)
const rootId = fc
  .tuple(name, fc.integer({ min: 0, max: 63 }), fc.integer({ min: 0, max: 10_000_000 }))
  .map(([d, p, o]) => Lineage.root(d, p, o))
/** A random path of descent from a random root. */
const step = fc.oneof(
  fc.tuple(name, fc.nat({ max: 50 })).map(
    ([t, n]) =>
      (id: string) =>
        Lineage.derived(id, t, n),
  ),
  fc.tuple(name, fc.nat({ max: 63 }), fc.nat({ max: 1_000_000 })).map(
    ([d, p, o]) =>
      (id: string) =>
        Lineage.adopted(id, d, p, o),
  ),
)
const chain = fc.tuple(rootId, fc.array(step, { maxLength: 8 })).map(([root, steps]) => {
  const ids = [root]
  for (const s of steps) ids.push(s(ids[ids.length - 1] as string))
  return ids
})

describe("lineage IDs", () => {
  it("name a root event by its position", () => {
    expect(Lineage.root("accounts", 3, 1234)).toBe("accounts:3:1234")
    expect(Lineage.positionOfSegment("accounts:3:1234")).toEqual({ depot: "accounts", partition: 3, offset: 1234 })
    expect(Lineage.depth("accounts:3:1234")).toBe(0)
    expect(Lineage.parentOf("accounts:3:1234")).toBeUndefined()
  })

  it("name a derived event by its parent, topology and emission index", () => {
    const child = Lineage.derived("accounts:3:1234", "overdraft", 0)
    expect(child).toBe("accounts:3:1234/overdraft.0")
    expect(Lineage.parentOf(child)).toBe("accounts:3:1234")
    expect(Lineage.rootOf(child)).toBe("accounts:3:1234")
    expect(Lineage.depth(child)).toBe(1)
  })

  it("reject malformed IDs", () => {
    for (const bad of [
      "",
      "accounts",
      "accounts:3",
      "Accounts:3:1",
      "accounts:3:1/",
      "accounts:3:1//x.1",
      "a:1:1/X.1",
      "a:-1:1",
      "a:1:1 ",
    ])
      expect(Lineage.isLineageId(bad), bad).toBe(false)
  })

  it("property: every ID in a chain is well formed and its ancestors are exactly the chain above it", () => {
    fc.assert(
      fc.property(chain, (ids) => {
        ids.forEach((id, i) => {
          expect(Lineage.isLineageId(id)).toBe(true)
          expect(Lineage.depth(id)).toBe(i)
          expect(Lineage.ancestors(id)).toEqual(ids.slice(0, i).reverse())
          expect(Lineage.rootOf(id)).toBe(ids[0])
        })
      }),
    )
  })

  it("property: descendants of X are exactly the IDs inside X's range", () => {
    fc.assert(
      fc.property(chain, chain, (a, b) => {
        for (const x of [...a, ...b])
          for (const y of [...a, ...b]) {
            const { lower, upper } = Lineage.descendantRange(x)
            const inRange = y >= lower && y < upper
            expect(inRange).toBe(Lineage.isAncestor(x, y))
          }
      }),
    )
  })

  it("keeps siblings that share a string prefix out of each other's range", () => {
    const { lower, upper } = Lineage.descendantRange("accounts:1:1")
    const inRange = (y: string) => y >= lower && y < upper
    expect(inRange("accounts:1:12")).toBe(false)
    expect(inRange("accounts:1:12/t.0")).toBe(false)
    expect(inRange("accounts:1:1/t.0")).toBe(true)
    expect(inRange("accounts:1:1/t.0/u.3")).toBe(true)
  })

  it("property: derivation is deterministic (same inputs, same ID)", () => {
    fc.assert(
      fc.property(rootId, name, fc.nat(), (r, t, n) => {
        expect(Lineage.derived(r, t, n)).toBe(Lineage.derived(r, t, n))
      }),
    )
  })
})
