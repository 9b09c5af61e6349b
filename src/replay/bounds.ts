/**
 * `--from` / `--to` of a replay: what a user may write, and how it becomes a
 * range of offsets per (depot, partition). Both ends are inclusive: `--to 99`
 * is the model as of (after) the event at offset 99 of each partition.
 *
 *   - `1234`: the same offset in every partition (partitions whose head is
 *     lower are taken whole);
 *   - `0:120,3:98` or `accounts/0:120`: offsets per partition (partitions not
 *     named are not bounded);
 *   - `2026-01-05T12:00:00Z` (any ISO 8601 date-time) or `@1767614400000`
 *     (epoch ms): per partition, `--to` stops before the first event stamped
 *     after that time, `--from` starts at the first event stamped at or after it.
 */
import { createHash } from "node:crypto"
import { Effect } from "effect"
import type { Event } from "../depot/event.ts"
import type { DepotStoreShape } from "../depot/store.ts"
import type { StoreError } from "../errors.ts"
import { ReplayError } from "./error.ts"

export type Bound =
  | { readonly kind: "offset"; readonly offset: number; readonly text: string }
  | {
      readonly kind: "offsets"
      readonly offsets: ReadonlyArray<{
        readonly depot?: string | undefined
        readonly partition: number
        readonly offset: number
      }>
      readonly text: string
    }
  | { readonly kind: "time"; readonly time: number; readonly text: string }

/** One source partition of a topology and its head (event count). */
export interface SourceStream {
  readonly depot: string
  readonly partition: number
  readonly head: number
}

/** Offsets [from, until) of one source partition. */
export interface StreamRange extends SourceStream {
  readonly from: number
  readonly until: number
}

const ENTRY = /^(?:([a-z][a-z0-9_]{0,62})\/)?(\d{1,4}):(\d{1,15})$/

/** Parses a `--from`/`--to` value; a ReplayError (BAD_BOUND) says what was expected. */
export const parseBound = (text: string, option: string): Bound | ReplayError => {
  const t = text.trim()
  const bad = (why: string) =>
    new ReplayError({
      code: "BAD_BOUND",
      message: `${option} ${JSON.stringify(text)}: ${why}. Use an offset (1234), offsets per partition (0:120,3:98 or accounts/0:120), an ISO 8601 time (2026-01-05T12:00:00Z) or epoch milliseconds (@1767614400000).`,
    })
  if (/^\d{1,15}$/.test(t)) return { kind: "offset", offset: Number(t), text: t }
  if (/^@\d{1,15}$/.test(t)) return { kind: "time", time: Number(t.slice(1)), text: t }
  if (t.includes(":") && !/[T ]/.test(t.slice(0, 11)) && /^[a-z0-9_/:,\s]+$/.test(t)) {
    const offsets: Array<{ depot?: string | undefined; partition: number; offset: number }> = []
    for (const part of t.split(",")) {
      const m = ENTRY.exec(part.trim())
      if (m === null)
        return bad(`${JSON.stringify(part.trim())} is not <partition>:<offset> or <depot>/<partition>:<offset>`)
      offsets.push({ depot: m[1], partition: Number(m[2]), offset: Number(m[3]) })
    }
    return { kind: "offsets", offsets, text: t }
  }
  if (/^\d{4}-\d{2}-\d{2}/.test(t)) {
    const time = Date.parse(t)
    if (Number.isFinite(time)) return { kind: "time", time, text: t }
    return bad("not a valid date-time")
  }
  return bad("not understood")
}

const heads = (streams: ReadonlyArray<SourceStream>) =>
  streams.map((s) => `${s.depot}/${s.partition}=${s.head}`).join(", ")

/** Reads up to `limit` events of a partition from offset `from`: the depot store's `read`. */
export type ReadPartition = DepotStoreShape["read"]

/** Reads a partition in chunks until `found`; the offset of the first event that matches, else the head. */
const firstOffset = (read: ReadPartition, s: SourceStream, found: (e: Event) => boolean) =>
  Effect.gen(function* () {
    let from = 0
    while (from < s.head) {
      const batch = yield* read(s.depot, s.partition, from, 10_000)
      if (batch.length === 0) break
      for (const e of batch) if (found(e)) return e.offset
      from = (batch[batch.length - 1] as Event).offset + 1
    }
    return s.head
  })

/**
 * Turns bounds into a range per source partition. Fails with
 * OFFSET_PAST_HEAD, TIME_BEFORE_FIRST_EVENT, BAD_BOUND or BAD_RANGE.
 */
export const resolveRanges = (
  streams: ReadonlyArray<SourceStream>,
  from: Bound | undefined,
  to: Bound | undefined,
  read: ReadPartition,
): Effect.Effect<ReadonlyArray<StreamRange>, ReplayError | StoreError> =>
  Effect.gen(function* () {
    if (from?.kind === "offset" && to?.kind === "offset" && from.offset > to.offset)
      return yield* new ReplayError({
        code: "BAD_RANGE",
        message: `--from ${from.offset} lies after --to ${to.offset}; the range is inclusive at both ends, so --from must not be greater than --to.`,
      })
    if (from?.kind === "time" && to?.kind === "time" && from.time > to.time)
      return yield* new ReplayError({
        code: "BAD_RANGE",
        message: `--from ${from.text} lies after --to ${to.text}.`,
      })
    const maxHead = Math.max(0, ...streams.map((s) => s.head))
    let firstTime: number | undefined
    const earliest = Effect.gen(function* () {
      if (firstTime !== undefined) return firstTime
      let t = Number.POSITIVE_INFINITY
      for (const s of streams)
        if (s.head > 0) {
          const [e] = yield* read(s.depot, s.partition, 0, 1)
          if (e !== undefined) t = Math.min(t, e.time)
        }
      firstTime = t
      return t
    })

    const resolve = (bound: Bound | undefined, end: "from" | "to") =>
      Effect.gen(function* () {
        const option = end === "from" ? "--from" : "--to"
        const out = new Map<string, number>()
        const key = (s: SourceStream) => `${s.depot}/${s.partition}`
        if (bound === undefined) {
          for (const s of streams) out.set(key(s), end === "from" ? 0 : s.head)
          return out
        }
        switch (bound.kind) {
          case "offset": {
            if (bound.offset >= maxHead)
              return yield* new ReplayError({
                code: "OFFSET_PAST_HEAD",
                message: `${option} ${bound.offset} is past the head of every partition (${heads(streams)}); the last event of a partition is at head - 1.`,
                details: { heads: streams },
              })
            for (const s of streams)
              out.set(key(s), end === "from" ? Math.min(bound.offset, s.head) : Math.min(bound.offset + 1, s.head))
            return out
          }
          case "offsets": {
            for (const s of streams) out.set(key(s), end === "from" ? 0 : s.head)
            for (const entry of bound.offsets) {
              const matching = streams.filter(
                (s) => s.partition === entry.partition && (entry.depot === undefined || entry.depot === s.depot),
              )
              if (matching.length === 0)
                return yield* new ReplayError({
                  code: "BAD_BOUND",
                  message: `${option}: ${entry.depot === undefined ? "" : `${entry.depot}/`}${entry.partition} is not a source partition of this topology (${heads(streams)}).`,
                })
              for (const s of matching) {
                if (entry.offset >= s.head)
                  return yield* new ReplayError({
                    code: "OFFSET_PAST_HEAD",
                    message: `${option}: offset ${entry.offset} is past the head of ${s.depot}/${s.partition} (${s.head} event(s): offsets 0 to ${s.head - 1}).`,
                    details: { heads: streams },
                  })
                out.set(key(s), end === "from" ? entry.offset : entry.offset + 1)
              }
            }
            return out
          }
          case "time": {
            const first = yield* earliest
            if (!(bound.time >= first))
              return yield* new ReplayError({
                code: "TIME_BEFORE_FIRST_EVENT",
                message: Number.isFinite(first)
                  ? `${option} ${bound.text} lies before the first event (${new Date(first).toISOString()}); ${end === "from" ? "leave --from out to start at the first event" : "no model existed then"}.`
                  : `${option} ${bound.text}: the topology's depots hold no events yet.`,
              })
            for (const s of streams)
              out.set(
                key(s),
                yield* firstOffset(read, s, (e) => (end === "from" ? e.time >= bound.time : e.time > bound.time)),
              )
            return out
          }
        }
      })

    const starts = yield* resolve(from, "from")
    const ends = yield* resolve(to, "to")
    const ranges = streams.map((s) => ({
      ...s,
      from: starts.get(`${s.depot}/${s.partition}`) ?? 0,
      until: ends.get(`${s.depot}/${s.partition}`) ?? s.head,
    }))
    const inverted = ranges.find((r) => r.from > r.until)
    if (inverted !== undefined)
      return yield* new ReplayError({
        code: "BAD_RANGE",
        message: `--from lies after --to on ${inverted.depot}/${inverted.partition} (offsets ${inverted.from} > ${inverted.until - 1}).`,
        details: { ranges },
      })
    return ranges
  })

const boundTag = (b: Bound): string => {
  switch (b.kind) {
    case "offset":
      return String(b.offset)
    case "time":
      return `t${b.time}`
    case "offsets":
      return `p${createHash("sha256").update(b.text).digest("hex").slice(0, 8)}`
  }
}

/** The variant name of a snapshot: `at_<to>`, `from_<from>_at_<to>` or `from_<from>`. */
export const snapshotName = (from: Bound | undefined, to: Bound | undefined): string =>
  [from === undefined ? undefined : `from_${boundTag(from)}`, to === undefined ? undefined : `at_${boundTag(to)}`]
    .filter((x) => x !== undefined)
    .join("_")
