import { describe, expect, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import { CommandRejected } from "../../src/errors.ts"
import { type Accepted, validate } from "../../src/runtime/ingress.ts"
import type { IncomingCommand } from "../../src/transport/protocol.ts"

const depots = new Map([[accounts.name, accounts]])
const options = { maxBodyBytes: 200, allowExternalParents: false, now: () => 1_700_000_000_000 }
const good: IncomingCommand = {
  depot: "accounts",
  type: "Deposited",
  key: "acc-1",
  messageId: "m-1",
  body: { raw: '{"amount":500}' },
}
const codeOf = (c: Partial<IncomingCommand>) => {
  const r = validate(depots, { ...good, ...c }, options)
  return r instanceof CommandRejected ? r.code : "OK"
}

describe("ingress validation", () => {
  it("accepts a well-formed command and routes it by key", () => {
    const r = validate(depots, good, options) as Accepted
    expect(r).not.toBeInstanceOf(CommandRejected)
    expect(r.ack).toBe("append")
    expect(r.request).toMatchObject({ messageId: "m-1", type: "Deposited", key: "acc-1", payload: { amount: 500 } })
    expect(r.partition).toBeGreaterThanOrEqual(0)
    expect(r.partition).toBeLessThan(accounts.partitions)
    expect((validate(depots, { ...good, messageId: "m-2" }, options) as Accepted).partition).toBe(r.partition)
  })

  it("gives each kind of bad input its stable code", () => {
    expect(codeOf({ ack: "sometimes" })).toBe("BAD_ACK_LEVEL")
    expect(codeOf({ messageId: undefined })).toBe("MISSING_MESSAGE_ID")
    expect(codeOf({ messageId: "" })).toBe("MISSING_MESSAGE_ID")
    expect(codeOf({ depot: "nope" })).toBe("UNKNOWN_DEPOT")
    expect(codeOf({ type: "Stolen" })).toBe("UNKNOWN_TYPE")
    expect(codeOf({ type: undefined })).toBe("UNKNOWN_TYPE")
    expect(codeOf({ key: "" })).toBe("MISSING_KEY")
    expect(codeOf({ body: { raw: "{not json" } })).toBe("BAD_JSON")
    expect(codeOf({ body: { raw: new Uint8Array([0xff, 0xfe, 0x7b]) } })).toBe("BAD_JSON")
    expect(codeOf({ body: { raw: `{"amount":1,"pad":"${"x".repeat(300)}"}` } })).toBe("BODY_TOO_LARGE")
    expect(codeOf({ body: { raw: '{"amount":-5}' } })).toBe("SCHEMA_MISMATCH")
    expect(codeOf({ body: { raw: '{"amount":"5"}' } })).toBe("SCHEMA_MISMATCH")
    expect(codeOf({ expect: "two" })).toBe("BAD_EXPECT")
    expect(codeOf({ expect: -1 })).toBe("BAD_EXPECT")
    expect(codeOf({ parent: "not a lineage id" })).toBe("BAD_PARENT")
    expect(codeOf({ parent: "accounts:0:1", expect: "3" })).toBe("OK")
  })

  it("says what to fix in a schema mismatch, naming the field", () => {
    const r = validate(depots, { ...good, body: { raw: '{"amount":"5"}' } }, options) as CommandRejected
    expect(r.message).toContain("accounts/Deposited")
    expect(r.message).toContain("amount")
    expect(r.details).toMatchObject({ issues: [{ path: ["amount"] }] })
  })

  it("lists the known types and depots when one is unknown", () => {
    expect((validate(depots, { ...good, type: "Stolen" }, options) as CommandRejected).message).toContain(
      "Opened, Deposited, Withdrawn, Closed",
    )
    expect((validate(depots, { ...good, depot: "nope" }, options) as CommandRejected).message).toContain("accounts")
  })
})
