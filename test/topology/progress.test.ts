/**
 * Progress: `full` waiters are released once every consuming topology has
 * applied their event, and a stream can tell whether anyone waits on it.
 */
import { describe, expect, it } from "vitest"
import * as Progress from "../../src/topology/progress.ts"

describe("progress", () => {
  it("releases a waiter once every topology of the depot passed its offset, with their replies", () => {
    const p = Progress.make()
    p.register("a", "d")
    p.register("b", "d")
    const got: Array<Progress.Applied> = []
    p.whenApplied("d", 0, 3, (x) => got.push(x))
    p.advance("a", "d", 0, 4, 3, ["from a"])
    expect(got).toEqual([])
    p.advance("b", "d", 0, 4, 0, [])
    expect(got).toEqual([{ topologies: ["a", "b"], values: { a: "from a" } }])
  })

  it("a partition is watched exactly while a full reply waits on it", () => {
    const p = Progress.make()
    p.register("a", "d")
    expect(p.watched("d", 0)).toBe(false)
    const cancel = p.whenApplied("d", 0, 5, () => undefined)
    p.whenApplied("d", 1, 0, () => undefined)
    expect(p.watched("d", 0)).toBe(true)
    cancel()
    expect(p.watched("d", 0)).toBe(false)
    expect(p.watched("d", 1)).toBe(true)
    p.advance("a", "d", 1, 1, 0, [])
    expect(p.watched("d", 1)).toBe(false)
    // A waiter on an offset already applied is answered at once and never watches.
    p.whenApplied("d", 1, 0, () => undefined)
    expect(p.watched("d", 1)).toBe(false)
  })
})
