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

/**
 * The synchronous twin of TopologyContext, for handlers that only fold rows
 * (no I/O of their own). Failures are thrown as TopologyFailure. A `get` of a
 * row the runner has not loaded yet suspends the event: the runner loads the
 * row and runs the step again, so a step must not keep state of its own.
 */
export interface StepContext {
  readonly get: (template: string, key: RowKey | string) => Row | undefined
  readonly put: (template: string, row: Row) => void
  readonly remove: (template: string, key: RowKey | string) => void
  readonly emit: (depot: string, type: string, key: string, payload: unknown) => void
  readonly reply: (value: unknown) => void
  readonly live: boolean
}

/**
 * A pure, synchronous handler. It runs without an Effect fiber per event,
 * which makes it several times cheaper than a Handler: prefer it for
 * projections, and use `handle` when a handler needs effects (I/O, time).
 */
export type Step = (event: Event, ctx: StepContext) => void

/** What to do with an event whose handler still fails after its retries. */
export type FailurePolicy = "halt" | "park"

export interface Topology {
  readonly name: string
  /** Bumped when the handler's logic changes; a change triggers a blue/green rebuild. */
  readonly version: number
  readonly sources: ReadonlyArray<Depot>
  /** Template names this topology writes. */
  readonly readModels: ReadonlyArray<string>
  /** The handler; for a topology declared with `step`, an Effect wrapper of it. */
  readonly handle: Handler
  /** Set when the topology was declared with a synchronous step; the runner then calls it directly. */
  readonly step?: Step | undefined
  readonly onFailure: FailurePolicy
  /**
   * Rows to load in one query before a batch runs, per event. Default: the
   * event's key in every read model with a single key field.
   */
  readonly prefetch?: ((event: Event) => ReadonlyArray<{ readonly template: string; readonly key: RowKey }>) | undefined
  readonly description?: string | undefined
}

/** Declares a topology. */
export const make = (
  spec: {
    readonly name: string
    readonly version?: number
    readonly sources: ReadonlyArray<Depot>
    readonly readModels: ReadonlyArray<string>
    readonly onFailure?: FailurePolicy
    readonly prefetch?: Topology["prefetch"]
    readonly description?: string
  } & ({ readonly handle: Handler; readonly step?: never } | { readonly step: Step; readonly handle?: never }),
): Topology => {
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
    handle: spec.step !== undefined ? stepHandler(spec.step) : spec.handle,
    step: spec.step,
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

/**
 * A step as an Effect handler, for callers that only speak Handler. A `get`
 * the context has not answered yet stops the step; the writes made before it
 * are run through `ctx`, the row is read (so it reflects them), and the step
 * runs again from the start, skipping the writes already made. Steps are
 * deterministic, so each run repeats the same calls in the same order.
 */
const stepHandler =
  (step: Step): Handler =>
  (event, ctx) =>
    Effect.suspend(() => {
      // Answers by position of the `get` call, so a second read of a row after a put sees the put.
      const answers: Array<{ readonly row: Row | undefined }> = []
      let executed = 0
      const run = (): Effect.Effect<void, TopologyFailure> => {
        const writes: Array<() => Effect.Effect<void, TopologyFailure>> = []
        let gets = 0
        let writeCalls = 0
        let missing: { readonly at: number; readonly template: string; readonly key: RowKey | string } | undefined
        const later = (write: () => Effect.Effect<void, TopologyFailure>) => {
          if (writeCalls++ >= executed) writes.push(write)
        }
        const stepCtx: StepContext = {
          live: ctx.live,
          get: (template, key) => {
            const at = gets++
            const answer = answers[at]
            if (answer !== undefined) return answer.row
            missing = { at, template, key }
            throw MISSING
          },
          put: (template, row) => later(() => ctx.put(template, row)),
          remove: (template, key) => later(() => ctx.remove(template, key)),
          emit: (depot, type, key, payload) => later(() => ctx.emit(depot, type, key, payload)),
          reply: (value) => later(() => ctx.reply(value)),
        }
        const runWrites = Effect.forEach(writes, (write) => write(), { discard: true })
        try {
          step(event, stepCtx)
        } catch (e) {
          if (e !== MISSING || missing === undefined) return Effect.fail(asFailure(e))
          const m = missing
          return runWrites.pipe(
            Effect.andThen(() => {
              executed += writes.length
              return ctx.get(m.template, m.key)
            }),
            Effect.flatMap((row) => {
              answers[m.at] = { row }
              return run()
            }),
          )
        }
        return runWrites
      }
      return run()
    })

/** Thrown by a StepContext's `get` to suspend the step until the row is loaded. */
export const MISSING: unique symbol = Symbol("beds/topology/missing-row")

/** A thrown value as a TopologyFailure: a thrown TopologyFailure keeps its retryability; anything else is a bug, retried. */
export const asFailure = (e: unknown): TopologyFailure =>
  e instanceof TopologyFailure
    ? e
    : new TopologyFailure(`the handler threw: ${e instanceof Error ? e.message : String(e)}`, true)

type StepHandlers<E extends EventSchemas> = {
  readonly [T in keyof E]?: (payload: PayloadOf<E, T>, event: Event, ctx: StepContext) => void
}

/** A step typed by a depot's event Schemas, like `match` for handlers. */
export const matchStep =
  <E extends EventSchemas>(_depot: Depot<E>, handlers: StepHandlers<E>): Step =>
  (event, ctx) => {
    const h = (handlers as Record<string, ((p: unknown, e: Event, c: StepContext) => void) | undefined>)[event.type]
    if (h) h(event.payload, event, ctx)
  }
