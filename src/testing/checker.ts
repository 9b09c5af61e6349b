/**
 * The history checker: given what clients sent and heard (a recorded
 * history, faults included) and what the engine holds at the end (its
 * depots and read models), it names every broken guarantee. It never looks
 * at how the engine works, only at what it promised, so it judges any
 * engine, transport or adapter the same way.
 */

import { Effect } from "effect"
import type { Event } from "../depot/event.ts"
import { canonical } from "../internal/canonical.ts"
import * as Lineage from "../lineage/lineage-id.ts"
import type { Declarations } from "../runtime/engine.ts"
import { keyId, type Row } from "../template/template.ts"
import { fold } from "../topology/fold.ts"
import type { Reply } from "../transport/protocol.ts"

/** One command as a client sent it, and what it heard back. */
export interface HistoryEntry {
  /** Which client sent it; per-key order is checked per client. */
  readonly client: string
  /** Position in that client's own sending order. */
  readonly seq: number
  readonly depot: string
  readonly type: string
  readonly key: string
  readonly payload: unknown
  readonly messageId: string
  readonly ack: "none" | "append" | "full"
  /** The reply; undefined when none came (ack none, timeout, crash). */
  readonly reply?: Reply | undefined
  /** The broker confirmed the publish (or the embedded transport took it). */
  readonly confirmed: boolean
  /** For `full` replies: the rows read right after the reply, per template and key id. */
  readonly readAfter?: Readonly<Record<string, Readonly<Record<string, Row | undefined>>>> | undefined
  /** Whether it was meant to be refused (bad input); refused commands must not be in the depot. */
  readonly invalid?: boolean | undefined
  /** Sent while the client was sending with an expected version; a conflict is then a valid outcome. */
  readonly expect?: number | undefined
}

/** A fault injected during the history, for the report. */
export interface FaultRecord {
  readonly at: number
  readonly kind: string
}

/** What the engine holds at the end. */
export interface FinalState {
  /** Every event of every depot, any order. */
  readonly events: ReadonlyArray<Event>
  /** Every row of every template, by template name. */
  readonly readModels: Readonly<Record<string, ReadonlyArray<Row>>>
  /** message_ids dead-lettered with a reason (AMQP); refused commands of the embedded transport count as replied. */
  readonly deadLettered?: ReadonlySet<string> | undefined
  /** Read models rebuilt from scratch by a replay, when the run did one. */
  readonly replayed?: Readonly<Record<string, ReadonlyArray<Row>>> | undefined
}

export interface Violation {
  /** Which guarantee: a short stable name. */
  readonly check: string
  readonly message: string
}

/** Rows of a template keyed by key id, for comparisons. */
const byKey = (declarations: Declarations, template: string, rows: ReadonlyArray<Row>) => {
  const t = declarations.templates.find((x) => x.name === template)
  const out = new Map<string, Row>()
  for (const r of rows) out.set(keyId((t?.key ?? []).map((k) => r[k] as string | number)), r)
  return out
}

const compareModels = (
  check: string,
  declarations: Declarations,
  expected: ReadonlyMap<string, ReadonlyMap<string, Row>>,
  actual: Readonly<Record<string, ReadonlyArray<Row>>>,
  out: Array<Violation>,
) => {
  for (const [template, want] of expected) {
    const have = byKey(declarations, template, actual[template] ?? [])
    for (const [id, row] of want) {
      const got = have.get(id)
      if (canonical(got) !== canonical(row))
        out.push({ check, message: `${template} ${id}: expected ${canonical(row)}, found ${canonical(got)}` })
    }
    for (const id of have.keys())
      if (!want.has(id)) out.push({ check, message: `${template} ${id}: a row the fold of the depot does not have` })
  }
}

/**
 * Checks a history against the final state. Returns every violation found
 * (empty when all guarantees held).
 */
export const check = (
  declarations: Declarations,
  history: ReadonlyArray<HistoryEntry>,
  final: FinalState,
): Effect.Effect<ReadonlyArray<Violation>> =>
  Effect.gen(function* () {
    const out: Array<Violation> = []
    const byMessage = new Map<string, Array<Event>>()
    for (const e of final.events) {
      const k = `${e.depot}|${e.messageId}`
      const list = byMessage.get(k) ?? []
      list.push(e)
      byMessage.set(k, list)
    }

    // 1. Every command answered ok at append/full is in the depot exactly once, where the reply said.
    for (const h of history) {
      const r = h.reply
      if (r === undefined || !r.ok) continue
      const found = byMessage.get(`${h.depot}|${h.messageId}`) ?? []
      if (found.length !== 1)
        out.push({
          check: "acknowledged-once",
          message: `${h.messageId} was acknowledged but is in the depot ${found.length} time(s)`,
        })
      else if (found[0]?.id !== r.id)
        out.push({
          check: "acknowledged-once",
          message: `${h.messageId} was acknowledged as ${r.id} but is stored as ${found[0]?.id}`,
        })
    }

    // 2. Every confirmed command is in the depot or was refused with a reason.
    for (const h of history) {
      if (!h.confirmed) continue
      const inDepot = byMessage.has(`${h.depot}|${h.messageId}`)
      const refused = (h.reply !== undefined && !h.reply.ok) || final.deadLettered?.has(h.messageId) === true
      if (!inDepot && !refused)
        out.push({
          check: "confirmed-accounted",
          message: `${h.messageId} was confirmed but is neither in the depot nor refused with a reason`,
        })
    }

    // 3. Nothing is in the depot that no client sent (derived events aside), and no message_id twice.
    const sent = new Set(history.map((h) => `${h.depot}|${h.messageId}`))
    for (const [k, list] of byMessage) {
      const derived = list.every((e) => e.id === e.messageId && Lineage.depth(e.id) > 0)
      if (!sent.has(k) && !derived)
        out.push({ check: "no-phantoms", message: `${k} is in the depot but no client sent it` })
      if (list.length > 1) out.push({ check: "no-phantoms", message: `${k} is in the depot ${list.length} times` })
    }
    for (const h of history)
      if (h.invalid === true && byMessage.has(`${h.depot}|${h.messageId}`))
        out.push({ check: "refused-not-stored", message: `${h.messageId} was invalid input but was appended` })

    // 4. Per-key order matches each client's sending order (for commands that were appended once).
    const positions = new Map<string, Array<{ seq: number; event: Event; messageId: string }>>()
    for (const h of history) {
      const found = byMessage.get(`${h.depot}|${h.messageId}`)
      if (found?.length !== 1) continue
      const e = found[0] as Event
      // A repeat of an earlier message_id is the earlier command, not a new one.
      if (e.key !== h.key) continue
      const k = `${h.client}|${h.depot}|${h.key}`
      const list = positions.get(k) ?? []
      if (!list.some((x) => x.messageId === h.messageId)) list.push({ seq: h.seq, event: e, messageId: h.messageId })
      positions.set(k, list)
    }
    for (const [k, list] of positions) {
      const bySeq = [...list].sort((a, b) => a.seq - b.seq)
      for (let i = 1; i < bySeq.length; i++)
        if ((bySeq[i] as { event: Event }).event.offset < (bySeq[i - 1] as { event: Event }).event.offset)
          out.push({
            check: "per-key-order",
            message: `${k}: ${(bySeq[i] as { messageId: string }).messageId} was sent after ${(bySeq[i - 1] as { messageId: string }).messageId} but stored before it`,
          })
    }

    // 5. After a full reply, the read made right after it reflects the event.
    for (const h of history) {
      if (h.ack !== "full" || h.reply === undefined || !h.reply.ok || h.readAfter === undefined) continue
      const id = h.reply.id
      for (const [template, rows] of Object.entries(h.readAfter))
        for (const [key, row] of Object.entries(rows)) {
          const last = row?.beds_last_id
          if (typeof last !== "string" || !isAtOrAfter(final.events, last, id))
            out.push({
              check: "read-your-writes",
              message: `${template} ${key} read after the full reply to ${h.messageId} (${id}) shows last event ${String(last)}`,
            })
        }
    }

    // 6. Each read model equals the fold of its depot (and the replay, when one was run).
    const expected = new Map<string, Map<string, Row>>()
    for (const t of declarations.topologies) {
      const events = final.events
        .filter((e) => t.sources.some((s) => s.name === e.depot))
        .sort((a, b) =>
          a.depot === b.depot ? a.partition - b.partition || a.offset - b.offset : a.depot < b.depot ? -1 : 1,
        )
      const folded = yield* Effect.result(fold(t, declarations.templates, events))
      if (folded._tag === "Failure") {
        out.push({ check: "fold", message: `topology ${t.name} fails on its own depot: ${folded.failure.message}` })
        continue
      }
      for (const [name, rows] of folded.success.state) expected.set(name, new Map(rows))
      for (const name of t.readModels) if (!expected.has(name)) expected.set(name, new Map())
    }
    compareModels("read-model-equals-fold", declarations, expected, final.readModels, out)
    if (final.replayed !== undefined) compareModels("replay-equals-live", declarations, expected, final.replayed, out)

    // 7. Lineage: offsets gapless per partition; parents exist, precede and share the root.
    const byId = new Map(final.events.map((e) => [e.id, e]))
    const partitions = new Map<string, Array<number>>()
    for (const e of final.events) {
      const k = `${e.depot}/${e.partition}`
      const list = partitions.get(k) ?? []
      list.push(e.offset)
      partitions.set(k, list)
    }
    for (const [k, offsets] of partitions) {
      offsets.sort((a, b) => a - b)
      offsets.forEach((o, i) => {
        if (o !== i) out.push({ check: "lineage", message: `${k}: offsets not gapless at ${i} (found ${o})` })
      })
    }
    for (const e of final.events) {
      if (e.root !== Lineage.rootOf(e.id))
        out.push({ check: "lineage", message: `${e.id}: root field ${e.root} does not match its ID` })
      if (e.parent === null) continue
      if (e.parent !== Lineage.parentOf(e.id))
        out.push({ check: "lineage", message: `${e.id}: parent field ${e.parent} does not match its ID` })
      const p = byId.get(e.parent)
      const external = declarations.depots.every((d) => !e.parent?.startsWith(`${d.name}:`))
      if (p === undefined && !external)
        out.push({ check: "lineage", message: `${e.id}: parent ${e.parent} is not stored` })
    }
    return out
  })

/** Whether the event `later` is `id` itself or was appended after it (same partition), or descends from it. */
const isAtOrAfter = (events: ReadonlyArray<Event>, later: string, id: string): boolean => {
  if (later === id || Lineage.isAncestor(id, later)) return true
  const a = events.find((e) => e.id === id)
  const b = events.find((e) => e.id === later)
  return (
    a !== undefined && b !== undefined && a.depot === b.depot && a.partition === b.partition && b.offset >= a.offset
  )
}

/** A readable report of violations, for failing test output. */
export const report = (violations: ReadonlyArray<Violation>, faults: ReadonlyArray<FaultRecord> = []): string =>
  [
    `${violations.length} violation(s)${faults.length ? ` under faults ${faults.map((f) => `${f.kind}@${f.at}`).join(", ")}` : ""}:`,
    ...violations.slice(0, 20).map((v) => `  [${v.check}] ${v.message}`),
    ...(violations.length > 20 ? [`  … and ${violations.length - 20} more`] : []),
  ].join("\n")
