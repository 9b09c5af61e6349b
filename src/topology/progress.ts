/**
 * Where each topology stands, per depot partition, so that a `full` ack can
 * wait until every colocated topology has applied an event, and so that
 * tests and `beds status` can wait on explicit conditions instead of sleeps.
 */

import { Context, Effect, Layer } from "effect"
import { getOrCreate } from "../internal/map.ts"

/** What a `full` reply reports: which topologies applied the event, and what they returned. */
export interface Applied {
  readonly topologies: ReadonlyArray<string>
  readonly values: Readonly<Record<string, unknown>>
}

export interface ProgressShape {
  /** Declares that `topology` consumes `depot` (before it starts). */
  readonly register: (topology: string, depot: string) => void
  /**
   * A topology committed everything below `next` on a partition; `values[i]`
   * is its reply to the event at offset `first + i` (undefined: none).
   */
  readonly advance: (
    topology: string,
    depot: string,
    partition: number,
    next: number,
    first: number,
    values: ReadonlyArray<unknown>,
  ) => void
  /** The next offset a topology will process on a partition. */
  readonly position: (topology: string, depot: string, partition: number) => number
  /** Resolves once every topology consuming `depot` has applied `offset`. */
  readonly applied: (depot: string, partition: number, offset: number) => Effect.Effect<Applied>
  /** `applied` for callers outside a fiber: calls `done` once (maybe at once); returns a cancel. */
  readonly whenApplied: (depot: string, partition: number, offset: number, done: (a: Applied) => void) => () => void
  /** The topologies consuming a depot. */
  readonly consumers: (depot: string) => ReadonlyArray<string>
  /** Whether a `full` reply (any `applied` or `whenApplied` caller) waits on the partition. */
  readonly watched: (depot: string, partition: number) => boolean
}

export class Progress extends Context.Service<Progress, ProgressShape>()("beds/Progress") {}

interface Waiter {
  readonly offset: number
  readonly resume: (a: Applied) => void
}

/**
 * Replies kept per partition, for waiters that register after the topology
 * passed (a short race) and for waiters on other topologies still behind.
 * Above the largest batch a runner commits (catch-up batches included).
 */
const RECENT_VALUES = 32_768

export const make = (): ProgressShape => {
  const consumers = new Map<string, Array<string>>()
  const positions = new Map<string, number>()
  const waiters = new Map<string, Array<Waiter>>()
  // A ring per partition, slot = offset % RECENT_VALUES: O(1) to record and to drop the oldest.
  const recent = new Map<string, Array<{ offset: number; values: Record<string, unknown> } | undefined>>()

  const pk = (depot: string, partition: number) => `${depot}/${partition}`
  const pos = (topology: string, depot: string, partition: number) =>
    positions.get(`${topology}|${depot}/${partition}`) ?? 0

  const minPosition = (depot: string, partition: number) => {
    let min = Number.POSITIVE_INFINITY
    for (const t of consumers.get(depot) ?? []) min = Math.min(min, pos(t, depot, partition))
    return min
  }

  const valuesFor = (depot: string, partition: number, offset: number) => {
    const slot = recent.get(pk(depot, partition))?.[offset % RECENT_VALUES]
    return slot !== undefined && slot.offset === offset ? slot.values : {}
  }

  // Waiters per partition are kept sorted by offset, so releasing is a prefix cut, not a scan.
  const release = (depot: string, partition: number) => {
    const list = waiters.get(pk(depot, partition))
    if (list === undefined || list.length === 0) return
    const min = minPosition(depot, partition)
    let cut = 0
    while (cut < list.length && (list[cut] as Waiter).offset < min) cut++
    if (cut === 0) return
    const ready = list.splice(0, cut)
    const topologies = consumers.get(depot) ?? []
    for (const w of ready) w.resume({ topologies, values: valuesFor(depot, partition, w.offset) })
  }

  const insertSorted = (list: Array<Waiter>, w: Waiter) => {
    let i = list.length
    while (i > 0 && (list[i - 1] as Waiter).offset > w.offset) i--
    list.splice(i, 0, w)
  }

  const noop = () => undefined
  const whenApplied: ProgressShape["whenApplied"] = (depot, partition, offset, done) => {
    if (offset < minPosition(depot, partition)) {
      done({ topologies: consumers.get(depot) ?? [], values: valuesFor(depot, partition, offset) })
      return noop
    }
    const key = pk(depot, partition)
    const list = getOrCreate(waiters, key, () => [])
    const waiter: Waiter = { offset, resume: done }
    insertSorted(list, waiter)
    return () => {
      const l = waiters.get(key)
      const i = l ? l.indexOf(waiter) : -1
      if (l && i >= 0) l.splice(i, 1)
    }
  }

  return {
    register: (topology, depot) => {
      const list = consumers.get(depot) ?? []
      if (!list.includes(topology)) list.push(topology)
      consumers.set(depot, list)
    },
    advance: (topology, depot, partition, next, first, values) => {
      positions.set(`${topology}|${depot}/${partition}`, next)
      if (values.length > 0) {
        const key = pk(depot, partition)
        const ring = getOrCreate(recent, key, () => new Array(RECENT_VALUES))
        for (let j = Math.max(0, values.length - RECENT_VALUES); j < values.length; j++) {
          const value = values[j]
          if (value === undefined) continue
          const offset = first + j
          const i = offset % RECENT_VALUES
          let slot = ring[i]
          if (slot === undefined || slot.offset !== offset) ring[i] = slot = { offset, values: {} }
          slot.values[topology] = value
        }
      }
      release(depot, partition)
    },
    position: pos,
    consumers: (depot) => consumers.get(depot) ?? [],
    applied: (depot, partition, offset) =>
      Effect.callback<Applied>((resume) => {
        const cancel = whenApplied(depot, partition, offset, (a) => resume(Effect.succeed(a)))
        return Effect.sync(cancel)
      }),
    whenApplied,
    watched: (depot, partition) => (waiters.get(pk(depot, partition))?.length ?? 0) > 0,
  }
}

export const layer = Layer.sync(Progress, make)
