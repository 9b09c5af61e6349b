/**
 * A line transport for the embedded engine: one JSON command per line in,
 * one JSON reply per line out. It lets shell scripts, other processes and
 * crash tests drive an engine that has no broker, with the same semantics
 * as AMQP (every command goes through the same ingress).
 *
 * In:  {"depot":"accounts","type":"Deposited","key":"acc-1","payload":{...},
 *       "message_id":"m-1","ack":"full","expect":3,"parent":"...","correlation_id":"c1"}
 * Out: the reply body of the wire contract plus "correlation_id".
 */
import * as readline from "node:readline"
import { Effect } from "effect"
import type { EngineShape } from "../runtime/engine.ts"

interface Line {
  readonly depot?: unknown
  readonly type?: unknown
  readonly key?: unknown
  readonly payload?: unknown
  readonly message_id?: unknown
  readonly ack?: unknown
  readonly expect?: unknown
  readonly parent?: unknown
  readonly correlation_id?: unknown
}

const str = (u: unknown) => (typeof u === "string" ? u : undefined)

/**
 * Serves commands from `input` until it ends; resolves when every reply has
 * been written. Replies for `ack: none` are written too (marked), so a
 * driving process can count what was appended.
 */
export const serve = (engine: EngineShape, input: NodeJS.ReadableStream, output: NodeJS.WritableStream) =>
  Effect.promise(
    () =>
      new Promise<number>((resolve) => {
        const rl = readline.createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY })
        let pending = 0
        let ended = false
        let served = 0
        const write = (o: unknown) => output.write(`${JSON.stringify(o)}\n`)
        const done = () => {
          if (ended && pending === 0) resolve(served)
        }
        rl.on("line", (text) => {
          if (text.trim() === "") return
          let line: Line
          try {
            line = JSON.parse(text) as Line
          } catch (e) {
            write({ ok: false, error: { code: "BAD_JSON", message: `Line is not JSON: ${(e as Error).message}` } })
            return
          }
          pending++
          const correlation = line.correlation_id
          Effect.runPromise(
            engine.submit({
              depot: str(line.depot) ?? "",
              type: str(line.type),
              key: str(line.key),
              messageId: str(line.message_id),
              body: { payload: line.payload },
              ack: str(line.ack),
              parent: str(line.parent),
              expect: typeof line.expect === "number" || typeof line.expect === "string" ? line.expect : undefined,
            }),
          ).then((reply) => {
            served++
            write(correlation === undefined ? reply : { ...reply, correlation_id: correlation })
            pending--
            done()
          })
        })
        rl.on("close", () => {
          ended = true
          done()
        })
      }),
  )
