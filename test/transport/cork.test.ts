/**
 * Socket corking per event-loop turn: frames amqplib moves to the socket in
 * the turn's next check phase leave in one vectored write.
 */
import { Writable } from "node:stream"
import type * as amqp from "amqplib"
import { describe, expect, it } from "vitest"
import { corker } from "../../src/transport/cork.ts"

/** A socket that records each write call the kernel would see, and a connection around it. */
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
  return { calls, socket, connection: { connection: { stream: socket } } as unknown as amqp.ChannelModel }
}
const turn = () => new Promise((r) => setImmediate(() => setImmediate(() => setImmediate(r))))

describe("corker", () => {
  it("turns the writes amqplib makes after a turn's sends into one vectored write", async () => {
    const { calls, socket, connection } = fakeConnection()
    const cork = corker(connection)
    for (let i = 0; i < 3; i++) cork()
    // amqplib moves channel buffers to the socket in a setImmediate scheduled from a nextTick.
    process.nextTick(() =>
      setImmediate(() => {
        for (const x of ["a", "b", "c"]) socket.write(x)
      }),
    )
    await turn()
    expect(calls).toEqual([3])
  })

  it("corks again on a later turn, and leaves a connection without a corkable socket alone", async () => {
    const { calls, socket, connection } = fakeConnection()
    const cork = corker(connection)
    cork()
    setImmediate(() => socket.write("a"))
    await turn()
    cork()
    setImmediate(() => {
      socket.write("b")
      socket.write("c")
    })
    await turn()
    expect(calls).toEqual([1, 2])
    expect(() => corker({} as amqp.ChannelModel)()).not.toThrow()
  })
})
