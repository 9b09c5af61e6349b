/**
 * Provenance: which events produced a read-model row's current state.
 *
 * Every row carries `beds_last_id`, the lineage ID of the last event a
 * topology applied to it (the runner sets it on every write). From there:
 *
 * Rule "key-history" — for a topology that loads rows by the default
 * prefetch (the event's key in each single-key template) and a row whose key
 * is that event's key, the row is a function of the key's events in the
 * source depot, in order, up to and including beds_last_id: versions
 * 1..v of that key, one range of the depot's (depot, key, version) index.
 * Events the handler ignored are listed too: they were applied and left the
 * row as it was. A topology with several source depots also applied the
 * key's events in its other sources, up to its checkpoint there; those come
 * after, per depot, since two depots share no order.
 *
 * Its limit: a handler may write rows under keys other than its event's key
 * (through ctx.put with another key, or a custom prefetch). The events of
 * those other keys are not found this way. When the topology declares a
 * custom prefetch or the row's key differs from its last event's key, the
 * answer falls back to rule "last-event": beds_last_id and its causes only.
 * `beds audit` proves either way that the row equals the fold of its depot.
 */
import { Effect } from "effect"
import * as DepotDecl from "../depot/depot.ts"
import type { Event } from "../depot/event.ts"
import { DepotStore } from "../depot/store.ts"
import type { StoreError } from "../errors.ts"
import { ReadModelStore } from "../readmodel/store.ts"
import type { Declarations } from "../runtime/engine.ts"
import { checkKey, keyId, LAST_EVENT_COLUMN, type Row, type RowKey } from "../template/template.ts"
import { LineageError } from "./error.ts"
import * as Lineage from "./lineage-id.ts"
import { type Ancestor, ancestors } from "./query.ts"

/** How the events were found; see the module comment. */
export type ProvenanceRule = "key-history" | "last-event"

/** One event that went into the row, with what caused it (nearest first; empty for a root event). */
export interface ProvenanceEvent {
  readonly event: Event
  readonly causes: ReadonlyArray<Ancestor>
}

/** Why a row is what it is. */
export interface Provenance {
  readonly template: string
  readonly key: RowKey
  readonly row: Row
  /** The topology that writes the template and applied `last`. */
  readonly topology: string
  /** The event named by the row's beds_last_id. */
  readonly last: Event
  readonly rule: ProvenanceRule
  /** The rule in words, with its limit for this row. */
  readonly note: string
  /** The events, in the order the topology applied them; the last of the first source's is `last`. */
  readonly events: ReadonlyArray<ProvenanceEvent>
  /** Earlier events left out by the limit (they are in the depot). */
  readonly omitted: number
}

/** Most events `why` lists unless told otherwise (the most recent ones). */
export const DEFAULT_LIMIT = 1000

/**
 * The events that produced the row of `template` under `key`, in order.
 * `key` is the key's value, or its values in key-field order.
 */
export const why = (
  declarations: Declarations,
  template: string,
  key: RowKey | string,
  options: { readonly limit?: number } = {},
): Effect.Effect<Provenance, LineageError | StoreError, DepotStore | ReadModelStore> =>
  Effect.gen(function* () {
    const store = yield* DepotStore
    const models = yield* ReadModelStore
    const limit = Math.max(1, options.limit ?? DEFAULT_LIMIT)
    const tpl = declarations.templates.find((t) => t.name === template)
    if (tpl === undefined)
      return yield* new LineageError({
        code: "UNKNOWN_TEMPLATE",
        message: `No template is named ${JSON.stringify(template)}; templates/ declares ${declarations.templates.map((t) => t.name).join(", ") || "none"}.`,
      })
    const writers = declarations.topologies.filter((t) => t.readModels.includes(template))
    if (writers.length === 0)
      return yield* new LineageError({
        code: "UNKNOWN_TEMPLATE",
        message: `No declared topology writes template ${template} (${tpl.file}), so its rows have no events to trace.`,
      })
    const checked = checkKey(tpl, key)
    if (!checked.ok)
      return yield* new LineageError({
        code: "BAD_KEY",
        message: `${checked.problem}. Give the key as ${tpl.key.length === 1 ? `the ${tpl.key[0]} value` : `a JSON array of ${tpl.key.join(", ")}`}.`,
      })
    const rowKey = checked.value
    const row = (yield* models.load(template, [rowKey])).get(keyId(rowKey))
    if (row === undefined)
      return yield* new LineageError({
        code: "NO_ROW",
        message: `${template} has no row under key ${keyId(rowKey)}: no event has written it yet, or a topology removed it (\`beds lineage <id>\` shows what an event caused).`,
      })
    const lastId = row[LAST_EVENT_COLUMN]
    const last = typeof lastId === "string" && Lineage.isLineageId(lastId) ? yield* store.byId(lastId) : undefined
    if (last === undefined)
      return yield* new LineageError({
        code: "UNTRACEABLE",
        message: `${template} row ${keyId(rowKey)} names ${JSON.stringify(lastId)} as its last event (${LAST_EVENT_COLUMN}), which the depot store does not hold. The read models and the depot disagree: run \`beds audit --topology ${writers[0]?.name}\`, and rebuild the read model if it fails.`,
      })
    const topology =
      writers.find((t) => t.sources.some((s) => s.name === last.depot)) ?? (writers[0] as (typeof writers)[0])
    const keyed =
      topology.prefetch === undefined &&
      tpl.key.length === 1 &&
      String(rowKey[0]) === last.key &&
      topology.sources.some((s) => s.name === last.depot)

    const withCauses = (events: ReadonlyArray<Event>) =>
      Effect.forEach(
        events,
        (event) =>
          Effect.map(
            event.parent === null && Lineage.depth(event.id) === 0 ? Effect.succeed([]) : ancestors(event.id),
            (causes): ProvenanceEvent => ({ event, causes }),
          ),
        { concurrency: 8 },
      )

    if (!keyed) {
      const why =
        topology.prefetch !== undefined
          ? `topology ${topology.name} loads rows by its own prefetch, so the events of other keys may have written this row`
          : `the row's key ${keyId(rowKey)} is not the key ${JSON.stringify(last.key)} of its last event, so the row was written under another event's key`
      return {
        template,
        key: rowKey,
        row,
        topology: topology.name,
        last,
        rule: "last-event" as const,
        note: `Only the last event applied to the row (${LAST_EVENT_COLUMN}) and its causes are shown: ${why}, and which earlier events touched it cannot be read from the depot by key. \`beds audit --topology ${topology.name}\` checks that the row equals the fold of the depot.`,
        events: yield* withCauses([last]),
        omitted: 0,
      }
    }

    // The key's versions are 1..n without gaps, so the last `limit` up to `last` are one index range.
    const from = Math.max(1, last.version - limit + 1)
    const primary = yield* store.byKey(last.depot, last.key, from, last.version - from + 1)
    let omitted = from - 1
    const notes: Array<string> = []
    if (primary.at(-1)?.id !== last.id || primary.length !== last.version - from + 1)
      notes.push(
        `The depot's history of key ${JSON.stringify(last.key)} does not run gaplessly up to ${last.id} (version ${last.version}); run \`beds audit --depot ${last.depot}\`.`,
      )
    const others: Array<Event> = []
    for (const source of topology.sources) {
      if (source.name === last.depot) continue
      const partition = DepotDecl.partitionOf(last.key, source.partitions)
      const next = yield* models.checkpoint({ topology: topology.name, depot: source.name, partition })
      const version = yield* store.version(source.name, partition, last.key)
      const start = Math.max(1, version - limit + 1)
      const applied = (yield* store.byKey(source.name, last.key, start, version - start + 1)).filter(
        (e) => e.offset < next,
      )
      omitted += start - 1
      others.push(...applied)
    }
    if (topology.sources.length > 1)
      notes.push(
        `Topology ${topology.name} reads ${topology.sources.map((s) => s.name).join(", ")}: the events of each depot are in order, but two depots share no order, so ${last.depot}'s come first and the others' follow as far as the topology's checkpoint.`,
      )
    return {
      template,
      key: rowKey,
      row,
      topology: topology.name,
      last,
      rule: "key-history" as const,
      note: [
        `Topology ${topology.name} loads each row by its event's key, so this row is a function of key ${JSON.stringify(last.key)}'s events in ${last.depot} up to and including ${LAST_EVENT_COLUMN} (version ${last.version}), listed in order; events the handler ignored are included, they left the row as it was. This holds as long as the handler writes rows only under its event's key.`,
        ...notes,
      ].join(" "),
      events: yield* withCauses([...primary, ...others]),
      omitted,
    }
  })
