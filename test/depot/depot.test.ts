/**
 * Depot declarations: the key → partition function, which must never change
 * (it would move keys between partitions and break per-key order).
 */
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { partitionOf } from "../../src/depot/depot.ts"

/** FNV-1a (32 bit) over the key's UTF-8 bytes, written out plainly: the definition. */
const reference = (key: string, partitions: number): number => {
  let h = 0x811c9dc5
  for (const byte of Buffer.from(key, "utf8")) {
    h ^= byte
    h = Math.imul(h, 0x01000193) >>> 0
  }
  return h % partitions
}

describe("partitionOf", () => {
  it("keeps the partitions keys have always had", () => {
    // Pinned values: a change here moves stored keys to other partitions.
    expect([partitionOf("acc-1", 4), partitionOf("acc-2", 4), partitionOf("acc-7", 2), partitionOf("", 8)]).toEqual([
      reference("acc-1", 4),
      reference("acc-2", 4),
      reference("acc-7", 2),
      reference("", 8),
    ])
    expect(reference("a", 1 << 30)).toBe(0xe40c292c % (1 << 30))
  })

  it("property: equals FNV-1a over the UTF-8 bytes for any key, ASCII or not", () => {
    fc.assert(
      fc.property(
        fc.oneof(fc.string(), fc.string({ unit: "grapheme" }), fc.string({ unit: "binary" })),
        fc.integer({ min: 1, max: 1024 }),
        (key, p) => partitionOf(key, p) === reference(key, p),
      ),
      { numRuns: 2000 },
    )
  })
})
