/**
 * The transport conformance suite: what a client sees through any transport
 * (AMQP, embedded). Every transport registers it unchanged:
 *
 *   transportConformance("amqp over memory stores", async () => ({ client, engine, depot, models, close }))
 *
 * `setup` runs once for the suite. It must serve `conformanceDeclarations()`
 * (the accounts depot, the balances topology, the acc_balance template) with
 * `conformanceOptions` (a small body limit, so BODY_TOO_LARGE is cheap to
 * provoke). Tests use fresh keys, so they share one engine.
 */
import { randomUUID } from "node:crypto"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { accounts } from "../../depots/accounts.ts"
import { balances } from "../../projections/balances.ts"
import type {
  BedsClientShape,
  Confirmed,
  PublishFailed,
  PublishOptions,
  PublishRejected,
} from "../../src/client/client.ts"
import { partitionOf } from "../../src/depot/depot.ts"
import type { Event } from "../../src/depot/event.ts"
import type { DepotStoreShape } from "../../src/depot/store.ts"
import type { ErrorCode } from "../../src/errors.ts"
import type { ReadModelStoreShape } from "../../src/readmodel/store.ts"
import { type Declarations, defaultOptions, type EngineOptions, type EngineShape } from "../../src/runtime/engine.ts"
import { loadTemplates } from "../../src/template/load.ts"
import type { ReplyOk } from "../../src/transport/protocol.ts"

/** What a transport gives the suite. */
export interface TransportHarness {
  readonly client: BedsClientShape
  readonly engine: EngineShape
  /** The store the engine appends to, to check what was (not) appended. */
  readonly depot: DepotStoreShape
  /** The read models the engine's topologies write, to check read-your-writes. */
  readonly models: ReadModelStoreShape
  readonly close: () => Promise<void>
}

/** The body limit every harness must configure. */
export const CONFORMANCE_MAX_BODY = 16 * 1024

/** Engine options every harness must use. */
export const conformanceOptions: EngineOptions = {
  ...defaultOptions,
  ingress: { ...defaultOptions.ingress, maxBodyBytes: CONFORMANCE_MAX_BODY },
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..")

/** What every harness serves: the example domain. */
export const conformanceDeclarations = (): Effect.Effect<Declarations, unknown> =>
  Effect.map(loadTemplates(path.join(root, "templates")), (templates) => ({
    depots: [accounts],
    topologies: [balances],
    templates: templates.filter((t) => t.name === "acc_balance"),
  }))

const DEPOT = accounts.name

export const transportConformance = (name: string, setup: () => Promise<TransportHarness>) =>
  describe(`transport conformance: ${name}`, () => {
    let h: TransportHarness
    beforeAll(async () => {
      h = await setup()
    })
    afterAll(async () => {
      await h?.close()
    })

    const key = (what: string) => `${what}-${randomUUID().slice(0, 8)}`

    const publish = (type: string, k: string, payload: unknown, options?: PublishOptions, depot = DEPOT) =>
      Effect.runPromise(h.client.publish(depot, type, k, payload, options))

    const ok = async (type: string, k: string, payload: unknown, options?: PublishOptions): Promise<ReplyOk> => {
      const r = await publish(type, k, payload, options)
      if (r.ack === "none") throw new Error("expected a reply, got a confirm")
      return r as ReplyOk
    }

    const refusal = (type: string, k: string, payload: unknown, options?: PublishOptions, depot = DEPOT) =>
      Effect.runPromise(Effect.flip(h.client.publish(depot, type, k, payload, options))) as Promise<
        PublishRejected | PublishFailed
      >

    const run = <A>(e: Effect.Effect<A, unknown>) => Effect.runPromise(e as Effect.Effect<A>)

    const eventsOf = async (k: string): Promise<ReadonlyArray<Event>> => {
      const p = partitionOf(k, accounts.partitions)
      const all = await run(h.depot.read(DEPOT, p, 0, 1_000_000))
      return all.filter((e) => e.key === k)
    }

    const row = async (k: string) => (await run(h.models.load("acc_balance", [[k]]))).get(k)

    it("append: replies with the event's lineage ID and position once it is in the depot", async () => {
      const k = key("append")
      const id = randomUUID()
      const first = await ok("Opened", k, { owner: "Ada" }, { ack: "append", id })
      expect(first).toMatchObject({
        ok: true,
        ack: "append",
        depot: DEPOT,
        partition: partitionOf(k, accounts.partitions),
        version: 1,
        duplicate: false,
      })
      expect(first.id).toBe(`${DEPOT}:${first.partition}:${first.offset}`)
      expect(Number.isInteger(first.offset) && first.offset >= 0).toBe(true)
      const stored = await run(h.depot.byMessageId(DEPOT, id))
      expect(stored).toMatchObject({
        id: first.id,
        offset: first.offset,
        type: "Opened",
        key: k,
        payload: { owner: "Ada" },
      })

      const second = await ok("Deposited", k, { amount: 250 })
      expect(second).toMatchObject({ ack: "append", partition: first.partition, version: 2, duplicate: false })
      expect(second.offset).toBeGreaterThan(first.offset)
    })

    it("append is the default ack level", async () => {
      const r = await ok("Opened", key("default"), { owner: "Bo" })
      expect(r.ack).toBe("append")
    })

    it("full: names the topologies that applied the event and carries their values; read-your-writes", async () => {
      const k = key("full")
      await ok("Opened", k, { owner: "Cy" }, { ack: "full" })
      const r = await ok("Deposited", k, { amount: 700 }, { ack: "full" })
      expect(r).toMatchObject({ ok: true, ack: "full", version: 2, duplicate: false })
      expect(r.applied).toEqual(["balances"])
      expect(r.values).toEqual({ balances: { balance: 700 } })
      // Read right after the reply, with no waiting: the contract's read-your-writes.
      expect(await row(k)).toMatchObject({ account_id: k, owner: "Cy", balance: 700, events: 2, status: "open" })
      await ok("Withdrawn", k, { amount: 200 }, { ack: "full" })
      expect(await row(k)).toMatchObject({ balance: 500, events: 3 })
    })

    it("none: resolves on the broker's confirm, and the event is appended soon after", async () => {
      const k = key("none")
      const id = randomUUID()
      const confirmed = (await publish("Opened", k, { owner: "Di" }, { ack: "none", id })) as Confirmed
      expect(confirmed).toEqual({ ok: true, ack: "none", messageId: id })
      const generated = (await publish("Deposited", k, { amount: 5 }, { ack: "none" })) as Confirmed
      expect(generated.messageId).toMatch(/^[0-9a-f-]{36}$/)
      const deadline = Date.now() + 10_000
      let found: Event | undefined
      while (found === undefined && Date.now() < deadline) {
        found = await run(h.depot.byMessageId(DEPOT, generated.messageId))
        if (found === undefined) await new Promise((r) => setTimeout(r, 20))
      }
      expect(found).toMatchObject({ type: "Deposited", key: k, version: 2 })
      expect(await run(h.depot.byMessageId(DEPOT, id))).toMatchObject({ type: "Opened", version: 1 })
    })

    it("a republished message_id is answered as a duplicate with the original position, and applied once", async () => {
      const k = key("dup")
      const id = randomUUID()
      await ok("Opened", k, { owner: "Ed" }, { ack: "full" })
      const original = await ok("Deposited", k, { amount: 100 }, { ack: "full", id })
      const again = await ok("Deposited", k, { amount: 999 }, { ack: "full", id })
      expect(again).toMatchObject({
        ok: true,
        duplicate: true,
        id: original.id,
        depot: original.depot,
        partition: original.partition,
        offset: original.offset,
        version: original.version,
      })
      const atAppend = await ok("Deposited", k, { amount: 1 }, { ack: "append", id })
      expect(atAppend).toMatchObject({ duplicate: true, offset: original.offset })
      expect((await eventsOf(k)).length).toBe(2)
      expect(await row(k)).toMatchObject({ balance: 100, events: 2 })
    })

    it("expect: the right version appends; a wrong one is VERSION_CONFLICT with the current version and appends nothing", async () => {
      const k = key("expect")
      expect(await ok("Opened", k, { owner: "Flo" }, { expect: 0 })).toMatchObject({ version: 1 })
      expect(await ok("Deposited", k, { amount: 10 }, { expect: 1 })).toMatchObject({ version: 2 })
      const id = randomUUID()
      const conflict = await refusal("Deposited", k, { amount: 10 }, { expect: 1, id })
      expect(conflict).toMatchObject({
        _tag: "PublishRejected",
        code: "VERSION_CONFLICT",
        details: { expected: 1, actual: 2 },
      })
      expect(conflict.message).toContain("2")
      expect(await run(h.depot.byMessageId(DEPOT, id))).toBeUndefined()
      expect((await eventsOf(k)).length).toBe(2)
      const fresh = await refusal("Opened", key("expect-new"), { owner: "Gus" }, { expect: 3 })
      expect(fresh).toMatchObject({ code: "VERSION_CONFLICT", details: { expected: 3, actual: 0 } })
    })

    const badInputs: ReadonlyArray<{
      readonly code: ErrorCode
      readonly type?: string
      readonly key?: string
      readonly payload?: unknown
      readonly options?: PublishOptions
      readonly depot?: string
    }> = [
      { code: "UNKNOWN_DEPOT", depot: "no_such_depot" },
      { code: "UNKNOWN_TYPE", type: "Stolen" },
      { code: "SCHEMA_MISMATCH", payload: { amount: -5 } },
      { code: "SCHEMA_MISMATCH", payload: { amount: "5" } },
      { code: "MISSING_KEY", key: "" },
      { code: "MISSING_MESSAGE_ID", options: { id: "" } },
      { code: "BAD_ACK_LEVEL", options: { ack: "sometimes" as "append" } },
      { code: "BAD_EXPECT", options: { expect: -1 } },
      { code: "BAD_EXPECT", options: { expect: 1.5 } },
      { code: "BAD_PARENT", options: { parent: "not a lineage id" } },
      { code: "UNKNOWN_PARENT", options: { parent: `${DEPOT}:0:999999999` } },
      { code: "BODY_TOO_LARGE", payload: { amount: 1, pad: "x".repeat(CONFORMANCE_MAX_BODY) } },
    ]

    it.each(badInputs)("bad input is refused with $code, a message, and nothing appended", async (c) => {
      const id = c.options?.id ?? randomUUID()
      const k = c.key ?? key("bad")
      const e = await refusal(c.type ?? "Deposited", k, c.payload ?? { amount: 1 }, { ...c.options, id }, c.depot)
      expect(e._tag).toBe("PublishRejected")
      expect(e.code).toBe(c.code)
      expect(e.message.length).toBeGreaterThan(10)
      if (id !== "") expect(await run(h.depot.byMessageId(DEPOT, id))).toBeUndefined()
      if (k !== "") expect(await eventsOf(k)).toEqual([])
    })

    it("a schema mismatch names the field in its details", async () => {
      const e = (await refusal("Deposited", key("schema"), { amount: "ten" })) as PublishRejected
      expect(e.code).toBe("SCHEMA_MISMATCH")
      expect(e.message).toContain("amount")
      expect(e.details).toMatchObject({ issues: [{ path: ["amount"] }] })
    })

    it("a parent that exists is adopted into the child's lineage ID", async () => {
      const parent = await ok("Opened", key("parent"), { owner: "Hal" })
      const child = await ok("Opened", key("child"), { owner: "Ivy" }, { parent: parent.id })
      expect(child.id.startsWith(`${parent.id}/`)).toBe(true)
    })

    it("keeps per-key order for many commands published concurrently", async () => {
      const keys = Array.from({ length: 4 }, (_, i) => key(`order${i}`))
      const perKey = 50
      const commands = Array.from({ length: perKey * keys.length }, (_, i) => ({
        k: keys[i % keys.length] as string,
        amount: Math.floor(i / keys.length) + 1,
      }))
      const replies = await Effect.runPromise(
        Effect.forEach(commands, (c) => h.client.publish(DEPOT, "Deposited", c.k, { amount: c.amount }), {
          concurrency: "unbounded",
        }),
      )
      for (const k of keys) {
        const mine = replies.filter((_, i) => commands[i]?.k === k) as ReadonlyArray<ReplyOk>
        expect(mine.map((r) => r.version)).toEqual(Array.from({ length: perKey }, (_, i) => i + 1))
        const offsets = mine.map((r) => r.offset)
        expect([...offsets].sort((a, b) => a - b)).toEqual(offsets)
        const stored = await eventsOf(k)
        expect(stored.map((e) => (e.payload as { amount: number }).amount)).toEqual(
          Array.from({ length: perKey }, (_, i) => i + 1),
        )
      }
    })
  })
