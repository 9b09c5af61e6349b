/**
 * Socket corking shared by the AMQP and MariaDB paths. On loopback every
 * write system call also wakes the receiving server, so writes made together
 * should leave together.
 */

/** The part of a Node socket corking needs. */
export interface Corkable {
  cork(): void
  uncork(): void
  readonly destroyed?: boolean
}

/** A value that has `cork` and `uncork`, as a socket does. */
export const isCorkable = (s: unknown): s is Corkable =>
  typeof (s as Partial<Corkable> | undefined)?.cork === "function" &&
  typeof (s as Partial<Corkable> | undefined)?.uncork === "function"

/** Runs `send` with `socket` corked: everything it writes leaves in one vectored write when it returns. */
export const whileCorked = <A>(socket: Corkable, send: () => A): A => {
  socket.cork()
  try {
    return send()
  } finally {
    if (socket.destroyed !== true) socket.uncork()
  }
}
