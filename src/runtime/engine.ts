/**
 * The engine: depots, their writers, the topologies on them and the ingress,
 * wired together over whatever depot store and read-model store the Layer
 * is given. Transports (AMQP, embedded) and the in-process API all submit
 * through `Engine.submit`.
 */
import { Context, Effect, Layer } from "effect"
import type { Depot } from "../depot/depot.ts"
import type { AckLevel } from "../depot/event.ts"
import { DepotStore } from "../depot/store.ts"
import * as Writer from "../depot/writer.ts"
import { DepotWriter } from "../depot/writer.ts"
import type { StoreError } from "../errors.ts"
import { ReadModelStore } from "../readmodel/store.ts"
import type { Template } from "../template/template.ts"
import * as Progress from "../topology/progress.ts"
import * as Runner from "../topology/runner.ts"
import type { Topology } from "../topology/topology.ts"
import type { IncomingCommand, Reply } from "../transport/protocol.ts"
import * as Ingress from "./ingress.ts"

/** What an engine serves: declared depots, topologies and templates. */
export interface Declarations {
  readonly depots: ReadonlyArray<Depot>
  readonly topologies: ReadonlyArray<Topology>
  readonly templates: ReadonlyArray<Template>
}

export interface EngineOptions {
  readonly ingress: { readonly maxBodyBytes: number; readonly batchMax: number; readonly inFlight: number }
  readonly topology: {
    readonly batchMax: number
    readonly retries: number
    readonly retryBaseMs: number
    /** See RunnerOptions.lingerMs. */
    readonly lingerMs?: number | undefined
    /** See RunnerOptions.lingerFullMs. */
    readonly lingerFullMs?: number | undefined
    /** See RunnerOptions.keepRows. */
    readonly keepRows?: number | undefined
  }
  readonly allowExternalParents: boolean
  readonly now?: () => number
}

export const defaultOptions: EngineOptions = {
  ingress: { maxBodyBytes: 1 << 20, batchMax: 1000, inFlight: 10_000 },
  topology: { batchMax: 2000, retries: 5, retryBaseMs: 50 },
  allowExternalParents: false,
}

/** Options of the in-process `publish`. */
export interface PublishOptions {
  readonly ack?: AckLevel | undefined
  /** The message_id; required for safe retries. */
  readonly id: string
  readonly expect?: number | undefined
  readonly parent?: string | undefined
}

export interface EngineShape {
  readonly declarations: Declarations
  /** Handles a command from any transport; never fails (refusals are error replies). */
  readonly submit: (command: IncomingCommand) => Effect.Effect<Reply>
  /**
   * `submit` for transports: no fiber per command. Calls `done` once with the
   * reply; returns a cancel that drops a reply not sent yet.
   */
  readonly submitWith: (command: IncomingCommand, done: (reply: Reply) => void) => () => void
  /** The in-process API: append one event and get its reply. */
  readonly publish: (
    depot: string,
    type: string,
    key: string,
    payload: unknown,
    options: PublishOptions,
  ) => Effect.Effect<Reply>
  /** Waits until every topology on every depot has caught up with the depots' heads. */
  readonly settle: () => Effect.Effect<void, StoreError>
  readonly status: () => Effect.Effect<EngineStatus, StoreError>
  /** The engine's group-commit writer: a replay in this process appends first-time derived events through it. */
  readonly writer?: Writer.DepotWriterShape | undefined
}

export interface EngineStatus {
  readonly depots: ReadonlyArray<{
    readonly depot: string
    readonly partitions: ReadonlyArray<{ readonly partition: number; readonly head: number }>
  }>
  readonly streams: ReadonlyArray<Runner.StreamStatus & { readonly lag: number }>
  readonly writer: { readonly commits: number; readonly appends: number }
}

/** Most passes `settle` makes while derived events keep moving the heads. */
const SETTLE_ROUNDS = 20

export class Engine extends Context.Service<Engine, EngineShape>()("beds/Engine") {}

/** Opens storage, ensures read models, starts writers and topologies. */
export const make = (declarations: Declarations, options: EngineOptions = defaultOptions) =>
  Effect.gen(function* () {
    const store = yield* DepotStore
    const models = yield* ReadModelStore
    yield* store.open(declarations.depots)
    // Only what the served topologies write: a node that serves no REC topology needs no MongoDB.
    const used = new Set(declarations.topologies.flatMap((t) => t.readModels))
    yield* models.ensure(declarations.templates.filter((t) => used.has(t.name)))
    const progress = Progress.make()
    const writer = yield* Writer.make(declarations.depots, {
      batchMax: options.ingress.batchMax,
      inFlight: options.ingress.inFlight,
    })
    const runner = yield* Runner.make(declarations.topologies, declarations.templates, declarations.depots, {
      batchMax: options.topology.batchMax,
      retries: options.topology.retries,
      retryBaseMs: options.topology.retryBaseMs,
      lingerMs: options.topology.lingerMs,
      lingerFullMs: options.topology.lingerFullMs,
      keepRows: options.topology.keepRows,
      live: true,
    }).pipe(Effect.provideService(DepotWriter, writer), Effect.provideService(Progress.Progress, progress))

    const depots = new Map(declarations.depots.map((d) => [d.name, d]))
    const ingressOptions: Ingress.IngressOptions = {
      maxBodyBytes: options.ingress.maxBodyBytes,
      allowExternalParents: options.allowExternalParents,
      now: options.now ?? Date.now,
    }
    const deps = { depots, store, writer, progress, options: ingressOptions }
    const submit = (command: IncomingCommand) => Ingress.handle(deps, command)
    const submitWith = (command: IncomingCommand, done: (reply: Reply) => void) =>
      Ingress.handleWith(deps, command, done)

    const heads = Effect.forEach(declarations.depots, (d) =>
      Effect.map(
        Effect.forEach(
          Array.from({ length: d.partitions }, (_, p) => p),
          (p) => Effect.map(store.head(d.name, p), (head) => ({ partition: p, head })),
        ),
        (partitions) => ({ depot: d.name, partitions }),
      ),
    )

    // Topologies may emit derived events while it waits, which moves heads it already passed:
    // it waits again until a pass finds every head where it left it (bounded, for a busy engine).
    const settle = () =>
      Effect.gen(function* () {
        let before = ""
        for (let round = 0; round < SETTLE_ROUNDS; round++) {
          const all = yield* heads
          const now = JSON.stringify(all)
          if (now === before) return
          before = now
          for (const d of all)
            for (const { partition, head } of d.partitions)
              if (head > 0) yield* progress.applied(d.depot, partition, head - 1)
        }
      })

    const status = () =>
      Effect.map(heads, (all) => {
        const headOf = new Map<string, number>()
        for (const d of all) for (const p of d.partitions) headOf.set(`${d.depot}/${p.partition}`, p.head)
        return {
          depots: all,
          streams: runner.status().map((s) => ({ ...s, lag: (headOf.get(`${s.depot}/${s.partition}`) ?? 0) - s.next })),
          writer: writer.stats(),
        }
      })

    return Engine.of({
      declarations,
      submit,
      submitWith,
      publish: (depot, type, key, payload, o) =>
        submit({
          depot,
          type,
          key,
          messageId: o.id,
          body: { payload },
          ack: o.ack ?? "append",
          expect: o.expect,
          parent: o.parent,
        }),
      settle,
      status,
      writer,
    })
  })

/** The engine as a Layer over a DepotStore and a ReadModelStore. */
export const layer = (
  declarations: Declarations,
  options: EngineOptions = defaultOptions,
): Layer.Layer<Engine, StoreError, DepotStore | ReadModelStore> => Layer.effect(Engine, make(declarations, options))
