import { describe, expect, it } from "@effect/vitest"
import * as Topology from "../../src/broker/topology.ts"
import { CommandRejected } from "../../src/errors.ts"
import { type DeliveryLike, decode } from "../../src/transport/amqp.ts"

const delivery = (
  properties: DeliveryLike["properties"],
  routingKey = "acc-1",
  content: Uint8Array = Buffer.from('{"amount":5}'),
): DeliveryLike => ({ content, fields: { routingKey }, properties })

describe("AMQP delivery decoding", () => {
  it("maps the wire table onto a command", () => {
    const body = Buffer.from('{"amount":5}')
    expect(
      decode(
        "accounts",
        delivery(
          {
            type: "Deposited",
            messageId: "m-1",
            contentType: "application/json",
            headers: { "x-beds-ack": "full", "x-beds-parent": "accounts:1:2", "x-beds-expect": 3 },
          },
          "acc-9",
          body,
        ),
      ),
    ).toEqual({
      depot: "accounts",
      type: "Deposited",
      key: "acc-9",
      messageId: "m-1",
      body: { raw: body },
      ack: "full",
      parent: "accounts:1:2",
      expect: 3,
    })
  })

  it("leaves what is absent absent, so the engine applies its defaults and its codes", () => {
    expect(decode("accounts", delivery({}))).toMatchObject({
      type: undefined,
      messageId: undefined,
      ack: undefined,
      parent: undefined,
      expect: undefined,
    })
  })

  it("reads header values however a client typed them", () => {
    const c = decode(
      "accounts",
      delivery({
        headers: { "x-beds-ack": Buffer.from("append"), "x-beds-expect": "7", "x-beds-parent": 42 },
      }),
    )
    expect(c).toMatchObject({ ack: "append", expect: "7", parent: "42" })
    const odd = decode("accounts", delivery({ headers: { "x-beds-ack": { a: 1 }, "x-beds-expect": true } }))
    expect(odd).toMatchObject({ ack: '{"a":1}', expect: "true" })
  })

  it("accepts JSON content types and refuses others with BAD_JSON", () => {
    for (const t of ["application/json", "application/json; charset=utf-8", "application/vnd.x+json", ""])
      expect(decode("accounts", delivery({ contentType: t }))).not.toBeInstanceOf(CommandRejected)
    const r = decode("accounts", delivery({ contentType: "text/plain" }))
    expect(r).toBeInstanceOf(CommandRejected)
    expect((r as CommandRejected).code).toBe("BAD_JSON")
    expect((r as CommandRejected).message).toContain("application/json")
  })

  it("refuses compressed bodies with BAD_JSON", () => {
    expect(decode("accounts", delivery({ contentEncoding: "utf-8" }))).not.toBeInstanceOf(CommandRejected)
    expect((decode("accounts", delivery({ contentEncoding: "gzip" })) as CommandRejected).code).toBe("BAD_JSON")
  })
})

describe("broker topology names", () => {
  it("are the wire contract's by default", () => {
    const n = Topology.names()
    expect(n.exchange("accounts")).toBe("beds.cmd.accounts")
    expect(n.queue("accounts", 3)).toBe("beds.cmd.accounts.3")
    expect(n.dlx).toBe("beds.dlx")
    expect(n.dead).toBe("beds.dead")
  })

  it("refuse a prefix that is not a safe name", () => {
    expect(() => Topology.names("a b")).toThrow(/prefix/)
  })
})

describe("broker declaration errors", () => {
  it("say exactly how to enable the consistent-hash exchange plugin when it is missing", () => {
    const e = Topology.classify(
      "Declaring",
      Object.assign(
        new Error(
          `Connection closed: 503 (COMMAND-INVALID) with message "COMMAND_INVALID - unknown exchange type 'x-consistent-hash'"`,
        ),
        { code: 503 },
      ),
    )
    expect(e.code).toBe("PLUGIN_MISSING")
    expect(e.message).toContain("rabbitmq-plugins enable rabbitmq_consistent_hash_exchange")
  })

  it("explain an inequivalent existing queue", () => {
    const e = Topology.classify(
      "Declaring",
      Object.assign(new Error("PRECONDITION_FAILED - inequivalent arg 'x-queue-type'"), { code: 406 }),
    )
    expect(e.code).toBe("MISMATCH")
    expect(e.message).toContain("queue_type")
  })

  const url = "amqp://ops:s3cret@127.0.0.1:5673/shop"

  it("tell a refused login from an unreachable broker, naming the address and never the password", () => {
    const refused = Topology.classify(
      "Declaring",
      new Error(
        'Handshake terminated by server: 403 (ACCESS-REFUSED) with message "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN."',
      ),
      url,
    )
    expect(refused.code).toBe("LOGIN_REFUSED")
    expect(refused.message).toContain('RabbitMQ at 127.0.0.1:5673 vhost "shop" refused the login')
    expect(refused.message).toContain("amqp.url")
    expect(refused.message).not.toContain("s3cret")

    const down = Topology.classify(
      "Declaring",
      Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5673"), { code: "ECONNREFUSED" }),
      url,
    )
    expect(down.code).toBe("UNREACHABLE")
    expect(down.message).toContain('cannot reach RabbitMQ at 127.0.0.1:5673 vhost "shop"')
    expect(down.message).toContain("rabbitmq-server")
    expect(down.message).not.toContain("s3cret")
  })

  it("take a vhost the broker will not open for a refused login, not for a broker that is down", () => {
    const e = Topology.classify(
      "Declaring",
      new Error("Expected ConnectionOpenOk; got <ConnectionClose channel:0>"),
      url,
    )
    expect(e.code).toBe("LOGIN_REFUSED")
    expect(e.message).toContain("vhost")
  })

  it("name the default port and vhost when the URL leaves them out", () => {
    expect(Topology.addressOf("amqp://guest:guest@127.0.0.1")).toBe("127.0.0.1:5672")
    expect(Topology.addressOf("amqps://u:p@127.0.0.1")).toBe("127.0.0.1:5671")
    expect(Topology.addressOf("not a url")).toBe("the configured amqp.url")
  })
})
