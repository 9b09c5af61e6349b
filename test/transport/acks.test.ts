/**
 * The ack coalescer: deliveries settle in any order, the broker hears
 * cumulative acks in delivery order, and nothing unsettled is ever covered.
 */
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { Acks } from "../../src/transport/acks.ts"

const recorder = () => {
  const sent: Array<string> = []
  const acks = new Acks({
    ack: (tag, multiple) => void sent.push(multiple ? `ack<=${tag}` : `ack ${tag}`),
    nack: (tag) => void sent.push(`nack ${tag}`),
  })
  return { acks, sent }
}

/** The deliveries the broker considers settled after `sent`, and how: the broker's own bookkeeping. */
const brokerView = (delivered: ReadonlyArray<number>, sent: ReadonlyArray<string>) => {
  const state = new Map<number, "ack" | "nack">()
  for (const s of sent) {
    const [what, arg] = s.split(/ |<=/) as [string, string]
    const tag = Number(arg)
    if (s.startsWith("ack<=")) {
      for (const d of delivered) if (d <= tag && !state.has(d)) state.set(d, "ack")
    } else state.set(tag, what === "nack" ? "nack" : "ack")
  }
  return state
}

describe("Acks", () => {
  it("acknowledges a run of settled deliveries with one cumulative ack", () => {
    const { acks, sent } = recorder()
    for (const t of [1, 2, 3, 4]) acks.delivered(t)
    acks.ack(2)
    acks.ack(1)
    acks.ack(3)
    acks.flush()
    expect(sent).toEqual(["ack<=3"])
    expect(acks.outstanding).toBe(1)
  })

  it("holds back a settled delivery behind an earlier unsettled one", () => {
    const { acks, sent } = recorder()
    for (const t of [1, 2, 3]) acks.delivered(t)
    acks.ack(2)
    acks.ack(3)
    acks.flush()
    expect(sent).toEqual([])
    acks.ack(1)
    acks.flush()
    expect(sent).toEqual(["ack<=3"])
  })

  it("sends a rejection on its own, acknowledging what came before it first", () => {
    const { acks, sent } = recorder()
    for (const t of [1, 2, 3, 4]) acks.delivered(t)
    acks.ack(1)
    acks.nack(2)
    acks.ack(3)
    acks.ack(4)
    acks.flush()
    expect(sent).toEqual(["ack<=1", "nack 2", "ack<=4"])
  })

  it("flushes by itself on the next turn of the event loop", async () => {
    const { acks, sent } = recorder()
    acks.delivered(7)
    acks.ack(7)
    expect(sent).toEqual([])
    await new Promise((r) => setImmediate(r))
    expect(sent).toEqual(["ack<=7"])
  })

  it("property: whatever the settle order and flush points, the broker sees exactly the settled deliveries, each as settled", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 60 }).chain((n) =>
          fc.record({
            n: fc.constant(n),
            order: fc.shuffledSubarray(
              Array.from({ length: n }, (_, i) => i + 1),
              { minLength: 0, maxLength: n },
            ),
            nacks: fc.uniqueArray(fc.integer({ min: 1, max: n })),
            flushes: fc.uniqueArray(fc.integer({ min: 0, max: n })),
          }),
        ),
        ({ n, order, nacks, flushes }) => {
          const { acks, sent } = recorder()
          const delivered = Array.from({ length: n }, (_, i) => i + 1)
          for (const t of delivered) acks.delivered(t)
          const how = new Map<number, "ack" | "nack">()
          order.forEach((t, i) => {
            const h = nacks.includes(t) ? "nack" : "ack"
            how.set(t, h)
            if (h === "nack") acks.nack(t)
            else acks.ack(t)
            if (flushes.includes(i)) acks.flush()
            // Never covers an unsettled delivery.
            for (const [t2] of brokerView(delivered, sent)) expect(how.has(t2)).toBe(true)
          })
          acks.flush()
          const view = brokerView(delivered, sent)
          // Exactly the settled prefix is acknowledged, each as settled.
          let prefix = 0
          while (prefix < n && how.has(prefix + 1)) prefix++
          expect([...view.keys()].sort((a, b) => a - b)).toEqual(delivered.slice(0, prefix))
          for (const [t, h] of view) expect(h).toBe(how.get(t))
          expect(acks.outstanding).toBe(n - prefix)
        },
      ),
      { numRuns: 300 },
    )
  })
})
