/**
 * The depot store in memory: the embedded engine's fastest mode and the
 * store for unit tests. Nothing survives the process; an instance is its own
 * storage, so there is no cache to go stale and nothing to fence.
 *
 * Events share the payload and metadata objects they were appended with:
 * treat both as immutable, as every other adapter's readers must anyway.
 *
 * The append rules themselves live here too (`planAppend`), as a pure
 * function every adapter applies after fetching what it needs to know, so
 * that deduplication, versions, expectations and lineage IDs cannot drift
 * between adapters.
 */
import { Effect, Layer } from "effect"
import { StoreError } from "../errors.ts"
import * as Lineage from "../lineage/lineage-id.ts"
import type { AppendOutcome, AppendRequest, Event } from "./event.ts"
import { DepotStore, type DepotStoreShape } from "./store.ts"

/** What one batch does to a partition, decided before anything is written. */
export interface AppendPlan {
  /** One per request, in request order. */
  readonly outcomes: ReadonlyArray<AppendOutcome>
  /** The events to write, in offset order starting at the head. */
  readonly events: ReadonlyArray<Event>
  /** Every key the batch looked at, with its version after the batch. */
  readonly versions: ReadonlyMap<string, number>
}

const NO_METADATA: Readonly<Record<string, string>> = Object.freeze({})

/**
 * Applies the port's append rules to one batch: a message_id already stored
 * (`original`) or appended earlier in the batch yields that event as a
 * duplicate; a failed `expect` yields a VersionConflict and appends nothing;
 * everything else becomes an event at the next offset. `versionOf` is asked
 * at most once per key, before the batch has touched it.
 */
export const planAppend = (
  depot: string,
  partition: number,
  head: number,
  requests: ReadonlyArray<AppendRequest>,
  original: (messageId: string) => Event | undefined,
  versionOf: (key: string) => number,
): AppendPlan => {
  const outcomes: Array<AppendOutcome> = new Array(requests.length)
  const events: Array<Event> = []
  const versions = new Map<string, number>()
  const fresh = new Map<string, Event>()
  for (let i = 0; i < requests.length; i++) {
    const r = requests[i] as AppendRequest
    const seen = fresh.get(r.messageId) ?? original(r.messageId)
    if (seen !== undefined) {
      outcomes[i] = { _tag: "Appended", event: seen, duplicate: true }
      continue
    }
    let current = versions.get(r.key)
    if (current === undefined) {
      current = versionOf(r.key)
      versions.set(r.key, current)
    }
    if (r.expect !== undefined && r.expect !== current) {
      outcomes[i] = { _tag: "VersionConflict", key: r.key, expected: r.expect, actual: current }
      continue
    }
    const offset = head + events.length
    let id: string
    let parent: string | null
    let root: string
    if (r.childId !== undefined) {
      // Ancestry must be readable from the ID alone, so the ID decides the parent.
      id = r.childId
      parent = Lineage.parentOf(r.childId) ?? r.parent ?? null
      root = Lineage.rootOf(id)
    } else if (r.parent !== undefined) {
      id = Lineage.adopted(r.parent, depot, partition, offset)
      parent = r.parent
      root = Lineage.rootOf(r.parent)
    } else {
      id = Lineage.root(depot, partition, offset)
      parent = null
      root = id
    }
    const event: Event = {
      id,
      depot,
      partition,
      offset,
      type: r.type,
      key: r.key,
      version: current + 1,
      payload: r.payload,
      time: r.time,
      parent,
      root,
      messageId: r.messageId,
      metadata: r.metadata ?? NO_METADATA,
    }
    versions.set(r.key, current + 1)
    fresh.set(r.messageId, event)
    events.push(event)
    outcomes[i] = { _tag: "Appended", event, duplicate: false }
  }
  return { outcomes, events, versions }
}

interface PartitionLog {
  readonly events: Array<Event>
  readonly versions: Map<string, number>
}

interface DepotLog {
  readonly partitions: Map<number, PartitionLog>
  readonly byMessageId: Map<string, Event>
}

/** A new, empty in-memory store. */
export const make = (): DepotStoreShape => {
  const depots = new Map<string, DepotLog>()
  const byId = new Map<string, Event>()

  const depotLog = (depot: string): DepotLog => {
    let d = depots.get(depot)
    if (d === undefined) {
      d = { partitions: new Map(), byMessageId: new Map() }
      depots.set(depot, d)
    }
    return d
  }
  const partitionLog = (d: DepotLog, partition: number): PartitionLog => {
    let p = d.partitions.get(partition)
    if (p === undefined) {
      p = { events: [], versions: new Map() }
      d.partitions.set(partition, p)
    }
    return p
  }

  const append: DepotStoreShape["append"] = (depot, partition, requests) =>
    Effect.suspend(() => {
      const d = depotLog(depot)
      const p = partitionLog(d, partition)
      const plan = planAppend(
        depot,
        partition,
        p.events.length,
        requests,
        (messageId) => d.byMessageId.get(messageId),
        (key) => p.versions.get(key) ?? 0,
      )
      // Checked before any write so that a failed batch leaves nothing behind, as a rolled-back transaction would.
      for (const e of plan.events)
        if (byId.has(e.id))
          return Effect.fail(
            new StoreError({
              code: "STORE_FAILED",
              message: `Appending to ${depot}/${partition}: an event with lineage ID "${e.id}" already exists; a derived event's ID must be unique.`,
              retryable: false,
            }),
          )
      for (const e of plan.events) {
        p.events.push(e)
        d.byMessageId.set(e.messageId, e)
        byId.set(e.id, e)
      }
      for (const [key, v] of plan.versions) p.versions.set(key, v)
      return Effect.succeed(plan.outcomes)
    })

  const read: DepotStoreShape["read"] = (depot, partition, from, limit) =>
    Effect.sync(() => {
      const events = depots.get(depot)?.partitions.get(partition)?.events
      if (events === undefined || limit <= 0) return []
      return events.slice(Math.max(0, from), Math.max(0, from) + limit)
    })

  const head: DepotStoreShape["head"] = (depot, partition) =>
    Effect.sync(() => depots.get(depot)?.partitions.get(partition)?.events.length ?? 0)

  const version: DepotStoreShape["version"] = (depot, partition, key) =>
    Effect.sync(() => depots.get(depot)?.partitions.get(partition)?.versions.get(key) ?? 0)

  const byMessageId: DepotStoreShape["byMessageId"] = (depot, messageId) =>
    Effect.sync(() => depots.get(depot)?.byMessageId.get(messageId))

  const getById: DepotStoreShape["byId"] = (id) => Effect.sync(() => byId.get(id))

  // A scan is fine here: descendants serve audits and tooling, not the hot path.
  const descendants: DepotStoreShape["descendants"] = (id, limit) =>
    Effect.sync(() => {
      const { lower, upper } = Lineage.descendantRange(id)
      const found: Array<Event> = []
      for (const [k, e] of byId) if (k >= lower && k < upper) found.push(e)
      found.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
      return found.slice(0, Math.max(0, limit))
    })

  return {
    open: () => Effect.void,
    append,
    read,
    head,
    version,
    byMessageId,
    byId: getById,
    descendants,
    byKey: (depot, key, from, limit) => Effect.sync(() => keyHistory(depots.get(depot)?.partitions, key, from, limit)),
  }
}

/** A key's events from version `from`: a scan of the one partition that knows the key, fine for tooling. */
const keyHistory = (
  partitions: ReadonlyMap<number, PartitionLog> | undefined,
  key: string,
  from: number,
  limit: number,
): Array<Event> => {
  const out: Array<Event> = []
  if (partitions === undefined || limit <= 0) return out
  for (const p of partitions.values()) {
    if (!p.versions.has(key)) continue
    for (const e of p.events)
      if (e.key === key && e.version >= from) {
        out.push(e)
        if (out.length >= limit) break
      }
    break
  }
  return out
}

/** A fresh in-memory store per build of the Layer. */
export const layer: Layer.Layer<DepotStore> = Layer.sync(DepotStore, make)
