/**
 * The audit's look-ups on MariaDB: one query per page instead of one point
 * read per event, which is what makes auditing millions of events practical.
 *
 * Everything else the audit needs goes through the depot-store port, whose
 * paged reads already see duplicate offsets and gaps (see audit.ts), so this
 * module holds only the two set queries, each sent as IN lists of CHUNK
 * values at once over the pool:
 *   - events by ID: `id IN (...)`, point reads of uq_event_id in one round trip;
 *   - message_id owners: `(depot, message_id IN (...))`, point reads of
 *     uq_event_message. They return every row carrying a message_id, so a
 *     duplicate is named with all the events that share it, even on a table
 *     whose unique key was dropped (the query then scans, and still answers).
 *     The first pass asks only for positions, which the index holds; the IDs
 *     are read only for message_ids not held once by their own event.
 * No index is forced: a test or an operator may have dropped one, and the
 * query must still run.
 */
import { Effect } from "effect"
import type { Event } from "../depot/event.ts"
import { SELECT, TABLE, toEvent } from "../depot/mariadb.ts"
import { MariaDb } from "../mariadb/client.ts"
import type { AuditLookups, EventRef } from "./audit.ts"
import type { LineageId } from "./lineage-id.ts"

/** IDs per IN list: long enough to save round trips, short enough for max_allowed_packet. */
const CHUNK = 500

const BY_IDS = {
  sql: `${SELECT} WHERE id IN (?)`,
  rowsAsArray: true,
}
// Covered by uq_event_message, which holds the primary key (depot, part, off):
// no row is read. That answers for every message_id found once, at its own
// event's position: that row is the event itself.
const POSITIONS = {
  sql: `SELECT message_id, part, off FROM ${TABLE} WHERE depot = ? AND message_id IN (?)`,
  rowsAsArray: true,
}
// The rest (a message_id found twice, elsewhere, or not at all) are named by their IDs.
const OWNERS = {
  sql: `SELECT message_id, part, off, id FROM ${TABLE} WHERE depot = ? AND message_id IN (?)`,
  rowsAsArray: true,
}

type Row = ReadonlyArray<unknown>

const chunks = <A>(all: ReadonlyArray<A>): Array<ReadonlyArray<A>> => {
  const out: Array<ReadonlyArray<A>> = []
  for (let i = 0; i < all.length; i += CHUNK) out.push(all.slice(i, i + CHUNK))
  return out
}

/** Orders events by position, then ID: the first of a message_id's events is taken as its holder. */
const before = (a: EventRef, b: EventRef): boolean =>
  a.partition !== b.partition ? a.partition < b.partition : a.offset !== b.offset ? a.offset < b.offset : a.id < b.id

/** The audit's look-ups over the MariaDB pool. */
export const lookups: Effect.Effect<AuditLookups, never, MariaDb> = Effect.gen(function* () {
  const db = yield* MariaDb
  return {
    events: (ids) =>
      ids.length === 0
        ? Effect.succeed(new Map())
        : db.run(`Looking up ${ids.length} event(s) by lineage ID`, async (pool) => {
            const found = new Map<LineageId, Event>()
            for (const rows of await Promise.all(
              chunks([...new Set(ids)]).map((chunk) => pool.query(BY_IDS, [chunk]) as Promise<Array<Row>>),
            ))
              for (const r of rows) {
                const e = toEvent(r)
                if (!found.has(e.id)) found.set(e.id, e)
              }
            return found
          }),
    messageIdClashes: (depot, events) =>
      events.length === 0
        ? Effect.succeed([])
        : db.run(`Looking up the message_ids of ${events.length} event(s) in ${depot}`, async (pool) => {
            const query = (sql: typeof OWNERS, messageIds: ReadonlyArray<string>) =>
              Promise.all(chunks(messageIds).map((chunk) => pool.query(sql, [depot, chunk]) as Promise<Array<Row>>))
            // Where each message_id is held, and how many times.
            const positions = new Map<string, { partition: number; offset: number; count: number }>()
            for (const rows of await query(POSITIONS, [...new Set(events.map((e) => e.messageId))]))
              for (const r of rows) {
                const seen = positions.get(r[0] as string)
                if (seen === undefined)
                  positions.set(r[0] as string, { partition: r[1] as number, offset: r[2] as number, count: 1 })
                else seen.count++
              }
            const owned = (e: Event) => {
              const at = positions.get(e.messageId)
              return at !== undefined && at.count === 1 && at.partition === e.partition && at.offset === e.offset
            }
            const owners = new Map<string, EventRef>()
            const doubtful = [...new Set(events.filter((e) => !owned(e)).map((e) => e.messageId))]
            if (doubtful.length > 0)
              for (const rows of await query(OWNERS, doubtful))
                for (const r of rows) {
                  const ref: EventRef = { depot, partition: r[1] as number, offset: r[2] as number, id: r[3] as string }
                  const seen = owners.get(r[0] as string)
                  if (seen === undefined || before(ref, seen)) owners.set(r[0] as string, ref)
                }
            return events.flatMap((event) => {
              if (owned(event)) return []
              const holder = owners.get(event.messageId)
              return holder !== undefined &&
                holder.id === event.id &&
                holder.partition === event.partition &&
                holder.offset === event.offset
                ? []
                : [{ event, holder }]
            })
          }),
  } satisfies AuditLookups
})
