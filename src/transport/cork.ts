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
 * The cork wraps the pass itself rather than a window of the event loop
 * (cork at the first send of a turn, uncork a few check phases later):
 * whether a pass falls inside such a window depends on the order of
 * immediates, and under load many would not.
 */
import type * as amqp from "amqplib"
import { isCorkable, whileCorked } from "../internal/cork.ts"

interface MuxLike {
  _readIncoming?: () => void
}

/**
 * Makes each mux pass of `connection` leave as one vectored write. Returns
 * false, changing nothing, where amqplib's internals are not what this
 * expects (a newer amqplib): messages then flow as before, one write each.
 */
export const coalesceWrites = (connection: amqp.ChannelModel): boolean => {
  const inner = (connection as unknown as { connection?: { stream?: unknown; muxer?: MuxLike } }).connection
  const socket = inner?.stream
  const mux = inner?.muxer
  const pass = mux?._readIncoming
  if (mux === undefined || typeof pass !== "function" || !isCorkable(socket)) return false
  // An own property shadows the prototype's method for every caller: the scheduled pass and the drain handler.
  mux._readIncoming = () => whileCorked(socket, () => pass.call(mux))
  return true
}
