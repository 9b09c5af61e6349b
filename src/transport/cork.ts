/**
 * Batches an AMQP connection's socket writes per turn of the event loop.
 * amqplib writes every frame to the socket as its own write — one system
 * call per reply, publish or ack, which at thousands of messages a second
 * costs more CPU than the rest of the path. Corking the socket on the first
 * send of a turn and uncorking it once amqplib has flushed its channel
 * buffers turns them into one vectored write. Messages still leave within
 * the same turn; only the number of system calls changes.
 */
import type * as amqp from "amqplib"

interface Corkable {
  cork(): void
  uncork(): void
  readonly destroyed?: boolean
}

/**
 * A function to call before each send on `connection`. amqplib moves frames
 * from channel buffers to the socket in a setImmediate scheduled from a
 * stream event (a nextTick); the uncork runs one check phase later, after
 * every such move this turn started.
 */
export const corker = (connection: amqp.ChannelModel): (() => void) => {
  const socket = (connection as unknown as { connection?: { stream?: Partial<Corkable> } }).connection?.stream
  if (socket === undefined || typeof socket.cork !== "function" || typeof socket.uncork !== "function")
    return () => undefined
  const s = socket as Corkable
  let corked = false
  const uncork = () => {
    corked = false
    if (!s.destroyed) s.uncork()
  }
  return () => {
    if (corked) return
    corked = true
    s.cork()
    setImmediate(() => setImmediate(uncork))
  }
}
