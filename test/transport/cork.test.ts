/**
 * Write coalescing: whatever one pass of amqplib's multiplexer moves to the
 * socket leaves in one vectored write, across channels and whichever phase
 * of the event loop produced the frames.
 */
import { createRequire } from "node:module"
import * as path from "node:path"
import { PassThrough, Writable } from "node:stream"
import type * as amqp from "amqplib"
import { describe, expect, it } from "vitest"
import { coalesceWrites } from "../../src/transport/cork.ts"

// amqplib's own multiplexer, so the test breaks if a new amqplib changes what the wrapper relies on.
const require = createRequire(import.meta.url)
const { Mux } = require(path.join(path.dirname(require.resolve("amqplib")), "lib/mux.js")) as {
  Mux: new (socket: Writable) => { pipeFrom: (r: PassThrough) => void }
}

/** A socket that records each write call the kernel would see, a connection around it, and two channel buffers. */
const fakeConnection = () => {
  const calls: Array<number> = []
  const socket = new Writable({
    write(_chunk, _enc, cb) {
      calls.push(1)
      cb()
    },
    writev(chunks, cb) {
      calls.push(chunks.length)
      cb()
    },
  })
  const muxer = new Mux(socket)
  const channels = [new PassThrough(), new PassThrough(), new PassThrough()]
  for (const c of channels) muxer.pipeFrom(c)
  const connection = { connection: { stream: socket, muxer } } as unknown as amqp.ChannelModel
  return { calls, channels, connection }
}
const turns = () => new Promise((r) => setTimeout(() => setImmediate(() => setImmediate(r)), 5))

describe("coalesceWrites", () => {
  it("without it, each channel's frames of a pass are a write of their own", async () => {
    const { calls, channels } = fakeConnection()
    for (const c of channels) c.write("frame")
    await turns()
    expect(calls).toEqual([1, 1, 1])
  })

  it("makes one vectored write of a pass over several channels", async () => {
    const { calls, channels, connection } = fakeConnection()
    expect(coalesceWrites(connection)).toBe(true)
    for (const c of channels) c.write("frame")
    await turns()
    expect(calls).toEqual([3])
  })

  it("coalesces frames produced in a check phase, a timer and a microtask alike: one write per pass", async () => {
    const { calls, channels, connection } = fakeConnection()
    coalesceWrites(connection)
    const [a, b, c] = channels as [PassThrough, PassThrough, PassThrough]
    setImmediate(() => {
      a.write("1")
      b.write("2")
    })
    await turns()
    setTimeout(() => {
      b.write("3")
      c.write("4")
    }, 0)
    await turns()
    queueMicrotask(() => {
      a.write("5")
      c.write("6")
    })
    await turns()
    expect(calls).toEqual([2, 2, 2])
  })

  it("leaves a connection whose internals it does not know alone", () => {
    expect(coalesceWrites({} as amqp.ChannelModel)).toBe(false)
    expect(coalesceWrites({ connection: { stream: new PassThrough() } } as unknown as amqp.ChannelModel)).toBe(false)
  })
})
