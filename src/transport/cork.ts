/**
 * One system call per pass of amqplib's frame multiplexer.
 *
 * amqplib queues each channel's frames in a buffer and moves them to the
 * socket in a "mux pass" that a setImmediate schedules; each channel's
 * frames become one `socket.write`, so a pass over several channels (the
 * ingress answers on one channel per partition, and acks on each) makes
 * several system calls, and every reply or ack written after a pass makes
 * its own. At thousands of messages a second those calls cost more CPU than
 * the rest of the path. Corking the socket for the length of each pass turns
 * everything the pass writes into one vectored write, and messages still
 * leave in the same turn they would have left in.
 *
 * An earlier version corked on the first send of a turn and uncorked two
 * check phases later. Whether the pass ran inside that window depended on
 * the order of immediates, and about 40 % of writes under load missed it;
 * wrapping the pass itself cannot miss.
 */
import type * as amqp from "amqplib"

interface Corkable {
  cork(): void
  uncork(): void
  readonly destroyed?: boolean
}

interface MuxLike {
  _readIncoming?: () => void
}

/**
 * Makes each mux pass of `connection` leave as one vectored write. Returns
 * false, changing nothing, where amqplib's internals are not what this
 * expects (a newer amqplib): messages then flow as before, one write each.
 */
export const coalesceWrites = (connection: amqp.ChannelModel): boolean => {
  const inner = (connection as unknown as { connection?: { stream?: Partial<Corkable>; muxer?: MuxLike } }).connection
  const socket = inner?.stream
  const mux = inner?.muxer
  const pass = mux?._readIncoming
  if (
    mux === undefined ||
    typeof pass !== "function" ||
    typeof socket?.cork !== "function" ||
    typeof socket.uncork !== "function"
  )
    return false
  const s = socket as Corkable
  // An own property shadows the prototype's method for every caller: the scheduled pass and the drain handler.
  mux._readIncoming = () => {
    s.cork()
    try {
      pass.call(mux)
    } finally {
      if (!s.destroyed) s.uncork()
    }
  }
  return true
}
