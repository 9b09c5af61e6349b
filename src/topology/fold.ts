/**
 * The reference fold: a topology applied to a list of events one at a time,
 * with no batching, no coalescing and no storage. What the runner writes
 * must always equal this (audit and property tests compare them), so it is
 * kept deliberately simple.
 */

import { Effect } from "effect"
import type { Event } from "../depot/event.ts"
import { getOrCreate } from "../internal/map.ts"
import { keyId, keyOf, LAST_EVENT_COLUMN, type Row, type RowKey, type Template } from "../template/template.ts"
import { asFailure, type StepContext, type Topology, type TopologyContext, TopologyFailure } from "./topology.ts"

/** template name → keyId → row. */
export type ModelState = Map<string, Map<string, Row>>

/** Emitted events, in order, with their parent. */
export interface FoldEmit {
  readonly parent: string
  readonly n: number
  readonly depot: string
  readonly type: string
  readonly key: string
  readonly payload: unknown
}

/**
 * Folds events (already in the order the runner sees them: offset order per
 * partition; partitions are independent as long as a handler only touches
 * rows keyed within its partition). Handler failures are returned, not thrown.
 */
export const fold = (
  topology: Topology,
  templates: ReadonlyArray<Template>,
  events: Iterable<Event>,
  state: ModelState = new Map(),
): Effect.Effect<{ readonly state: ModelState; readonly emits: ReadonlyArray<FoldEmit> }, TopologyFailure> =>
  Effect.gen(function* () {
    const byName = new Map(templates.map((t) => [t.name, t]))
    const emits: Array<FoldEmit> = []
    const norm = (k: RowKey | string): RowKey => (typeof k === "string" ? [k] : k)
    const table = (name: string) => {
      const m = getOrCreate(state, name, () => new Map())
      return m
    }
    const putRow = (t: string, row: Row, id: string) => {
      const tpl = byName.get(t)
      if (tpl === undefined) return new TopologyFailure(`unknown template ${t}`, false)
      table(t).set(keyId(keyOf(tpl, row)), { ...row, [LAST_EVENT_COLUMN]: id })
      return undefined
    }
    for (const event of events) {
      let n = 0
      if (topology.step !== undefined) {
        const stepCtx: StepContext = {
          live: false,
          get: (t, k) => table(t).get(keyId(norm(k))),
          put: (t, row) => {
            const failure = putRow(t, row, event.id)
            if (failure) throw failure
          },
          remove: (t, k) => void table(t).delete(keyId(norm(k))),
          emit: (depot, type, key, payload) => void emits.push({ parent: event.id, n: n++, depot, type, key, payload }),
          reply: () => undefined,
        }
        try {
          topology.step(event, stepCtx)
        } catch (e) {
          return yield* Effect.fail(asFailure(e))
        }
        continue
      }
      const ctx: TopologyContext = {
        live: false,
        get: (t, k) => Effect.sync(() => table(t).get(keyId(norm(k)))),
        put: (t, row) =>
          Effect.suspend(() => {
            const failure = putRow(t, row, event.id)
            return failure ? Effect.fail(failure) : Effect.void
          }),
        remove: (t, k) => Effect.sync(() => void table(t).delete(keyId(norm(k)))),
        emit: (depot, type, key, payload) =>
          Effect.sync(() => void emits.push({ parent: event.id, n: n++, depot, type, key, payload })),
        reply: () => Effect.void,
      }
      yield* topology.handle(event, ctx)
    }
    return { state, emits }
  })
