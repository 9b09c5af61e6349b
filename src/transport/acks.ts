/**
 * Acknowledgements of one AMQP channel's deliveries, coalesced: deliveries
 * settle in any order (a `full` reply waits longer than an `append` one),
 * but the broker hears one cumulative ack (`multiple`) for every run of
 * settled deliveries at the front, once per turn of the event loop. A
 * delivery is still acknowledged only after it settled, and never before
 * an earlier unsettled one — so the broker redelivers exactly the
 * unsettled ones if the channel dies.
 */

/** What the coalescer needs from a channel. */
export interface AckSink {
  /** Acknowledges `tag` and, with `multiple`, every earlier delivery. */
  readonly ack: (tag: number, multiple: boolean) => void
  /** Rejects one delivery without requeueing it (the queue dead-letters it). */
  readonly nack: (tag: number) => void
}

export class Acks {
  /** Delivery tags in delivery order; those before `head` are acknowledged. */
  private order: Array<number> = []
  private head = 0
  private readonly settled = new Map<number, "ack" | "nack">()
  private scheduled = false
  private readonly sink: AckSink

  constructor(sink: AckSink) {
    this.sink = sink
  }

  /** Records a delivery, in the order the channel delivered it. */
  delivered(tag: number): void {
    this.order.push(tag)
  }

  ack(tag: number): void {
    this.settled.set(tag, "ack")
    this.schedule()
  }

  nack(tag: number): void {
    this.settled.set(tag, "nack")
    this.schedule()
  }

  /** Deliveries not yet acknowledged to the broker. */
  get outstanding(): number {
    return this.order.length - this.head
  }

  /** Sends what can be sent now; called on the next turn after a settle, and before a channel closes. */
  flush(): void {
    this.scheduled = false
    let last: number | undefined
    while (this.head < this.order.length) {
      const tag = this.order[this.head] as number
      const how = this.settled.get(tag)
      if (how === undefined) break
      this.settled.delete(tag)
      this.head++
      if (how === "ack") last = tag
      else {
        if (last !== undefined) this.sink.ack(last, true)
        last = undefined
        this.sink.nack(tag)
      }
    }
    if (last !== undefined) this.sink.ack(last, true)
    if (this.head > 4096 && this.head * 2 > this.order.length) {
      this.order = this.order.slice(this.head)
      this.head = 0
    }
  }

  private schedule(): void {
    if (this.scheduled) return
    this.scheduled = true
    setImmediate(() => {
      try {
        this.flush()
      } catch {
        // The channel is gone: the broker redelivers everything not acknowledged.
      }
    })
  }
}
