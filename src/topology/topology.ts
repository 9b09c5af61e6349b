/**
 * Declaring a topology: its sources (depots), the templates it writes, and a
 * handler run for each event in offset order per partition. Declaring is
 * separate from running (runner.ts); the same declaration runs embedded, on
 * MariaDB/MongoDB, live or in a replay.
 */
import { Effect, type Schema } from "effect"
import type { Depot, EventSchemas } from "../depot/depot.ts"
import type { Event } from "../depot/event.ts"
import { DeclarationError } from "../errors.ts"
import type { Row, RowKey } from "../template/template.ts"

/** What a handler may do while it processes one event. All effects are batched by the runner. */
export interface TopologyContext {
  /** The current row (including this batch's earlier writes), or undefined. */
  readonly get: (template: string, key: RowKey | string) => Effect.Effect<Row | undefined, TopologyFailure>
  /** Writes a whole row; its key comes from the template's key fields. */
  readonly put: (template: string, row: Row) => Effect.Effect<void, TopologyFailure>
  /** Deletes a row. */
  readonly remove: (template: string, key: RowKey | string) => Effect.Effect<void, TopologyFailure>
  /**
   * Emits a derived event into a depot. Its lineage ID is derived from the
   * event being processed, so re-processing never appends it twice.
   */
  readonly emit: (depot: string, type: string, key: string, payload: unknown) => Effect.Effect<void, TopologyFailure>
  /** A value returned to the publisher in a `full` reply. */
  readonly reply: (value: unknown) => Effect.Effect<void>
  /** False during a replay: side effects declared live-only must check it. */
  readonly live: boolean
}

/** A handler's failure; the runner retries it, then applies the topology's policy. */
export class TopologyFailure extends Error {
  readonly _tag = "TopologyFailure"
  readonly retryable: boolean
  constructor(message: string, retryable = true) {
    super(message)
    this.retryable = retryable
  }
}

export type Handler = (event: Event, ctx: TopologyContext) => Effect.Effect<void, TopologyFailure>

/** What to do with an event whose handler still fails after its retries. */
export type FailurePolicy = "halt" | "park"

export interface Topology {
  readonly name: string
  /** Bumped when the handler's logic changes; a change triggers a blue/green rebuild. */
  readonly version: number
  readonly sources: ReadonlyArray<Depot>
  /** Template names this topology writes. */
  readonly readModels: ReadonlyArray<string>
  readonly handle: Handler
  readonly onFailure: FailurePolicy
  /**
   * Rows to load in one query before a batch runs, per event. Default: the
   * event's key in every read model with a single key field.
   */
  readonly prefetch?: ((event: Event) => ReadonlyArray<{ readonly template: string; readonly key: RowKey }>) | undefined
  readonly description?: string | undefined
}

/** Declares a topology. */
export const make = (spec: {
  readonly name: string
  readonly version?: number
  readonly sources: ReadonlyArray<Depot>
  readonly readModels: ReadonlyArray<string>
  readonly handle: Handler
  readonly onFailure?: FailurePolicy
  readonly prefetch?: Topology["prefetch"]
  readonly description?: string
}): Topology => {
  if (!/^[a-z][a-z0-9_]{0,62}$/.test(spec.name))
    throw new DeclarationError({
      code: "BAD_TOPOLOGY",
      message: `Topology name "${spec.name}" is invalid: use 1-63 characters of a-z, 0-9 and _, starting with a letter.`,
    })
  if (spec.sources.length === 0)
    throw new DeclarationError({ code: "BAD_TOPOLOGY", message: `Topology "${spec.name}" has no source depot.` })
  return {
    name: spec.name,
    version: spec.version ?? 1,
    sources: spec.sources,
    readModels: spec.readModels,
    handle: spec.handle,
    onFailure: spec.onFailure ?? "halt",
    prefetch: spec.prefetch,
    description: spec.description,
  }
}

type PayloadOf<E extends EventSchemas, T extends keyof E> = Schema.Schema.Type<E[T]>

/**
 * A handler typed by a depot's event Schemas: one function per event type;
 * types without a function are ignored.
 */
export const match =
  <E extends EventSchemas>(
    _depot: Depot<E>,
    handlers: {
      readonly [T in keyof E]?: (
        payload: PayloadOf<E, T>,
        event: Event,
        ctx: TopologyContext,
      ) => Effect.Effect<void, TopologyFailure>
    },
  ): Handler =>
  (event, ctx) => {
    const h = (
      handlers as Record<
        string,
        ((p: unknown, e: Event, c: TopologyContext) => Effect.Effect<void, TopologyFailure>) | undefined
      >
    )[event.type]
    return h ? h(event.payload, event, ctx) : Effect.void
  }
