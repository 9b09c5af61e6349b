/**
 * The audit's look-ups on MariaDB: one query per page instead of one point
 * read per event, which is what makes auditing millions of events practical.
 *
 * Everything else the audit needs goes through the depot-store port, whose
 * paged reads already see duplicate offsets and gaps (see audit.ts), so this
 * module holds only the two set queries:
 *   - events by ID: `id IN (...)`, point reads of uq_event_id in one round trip;
 *   - message_id owners: `(depot, message_id IN (...))`, point reads of
 *     uq_event_message. They return every row carrying a message_id, so a
 *     duplicate is named with all the events that share it, even on a table
 *     whose unique key was dropped (the query then scans, and still answers).
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
            for (const chunk of chunks([...new Set(ids)]))
              for (const r of (await pool.query(BY_IDS, [chunk])) as Array<Row>) {
                const e = toEvent(r)
                if (!found.has(e.id)) found.set(e.id, e)
              }
            return found
          }),
    messageIdClashes: (depot, events) =>
      events.length === 0
        ? Effect.succeed([])
        : db.run(`Looking up the message_ids of ${events.length} event(s) in ${depot}`, async (pool) => {
            const owners = new Map<string, EventRef>()
            for (const chunk of chunks([...new Set(events.map((e) => e.messageId))]))
              for (const r of (await pool.query(OWNERS, [depot, chunk])) as Array<Row>) {
                const ref: EventRef = { depot, partition: r[1] as number, offset: r[2] as number, id: r[3] as string }
                const seen = owners.get(r[0] as string)
                if (seen === undefined || before(ref, seen)) owners.set(r[0] as string, ref)
              }
            return events.flatMap((event) => {
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
