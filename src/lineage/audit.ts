/**
 * The audit: proves that depots keep their lineage invariants and that every
 * read model is the fold of its depot, and names each violation.
 *
 * It runs over the ports (DepotStore, ReadModelStore), so every adapter can be
 * audited, and streams each partition in pages: memory holds two pages (the
 * next is read while one is checked), the reference folds' state (the size of
 * the read models, which `scan` returns whole anyway) and at most
 * `maxViolations` listed violations per check.
 *
 * Reading a partition in pages also sees what the adapter's own constraints
 * should have prevented: a page that ends inside a run of one offset is cut
 * before that offset and the next page starts at it, so two events at one
 * offset are always compared, even on a table whose primary key was dropped.
 *
 * Checks that need other events than the page's (a parent, the holder of a
 * message_id, an emitted child) go through `AuditLookups`, asked once per
 * page (parents and message_ids at once): over the port that is one point
 * read per event, concurrently; an adapter may answer a page in one query
 * instead (audit-mariadb.ts).
 *
 * Across partitions there is no common order. "A parent precedes its child"
 * is checked by offset within a partition, and elsewhere by time: a derived
 * event carries its parent's time and an adopted one its append time, so a
 * child older than its parent was misplaced. Clocks of different nodes may
 * disagree by their skew, which this check cannot tell from a fault.
 *
 * Read models are compared with the fold of the events each topology has
 * checkpointed (offsets below its checkpoint per partition), so a topology
 * that lags is not reported; rows written while the audit runs may be.
 */
import { Effect } from "effect"
import type { Depot } from "../depot/depot.ts"
import * as DepotDecl from "../depot/depot.ts"
import type { Event } from "../depot/event.ts"
import { DepotStore, type DepotStoreShape } from "../depot/store.ts"
import type { StoreError } from "../errors.ts"
import { canonical } from "../internal/canonical.ts"
import { ReadModelStore } from "../readmodel/store.ts"
import type { Declarations } from "../runtime/engine.ts"
import { checkKey, checkRow, keyId, keyOf, type Row, type Template } from "../template/template.ts"
import { type FoldEmit, fold, type ModelState } from "../topology/fold.ts"
import type { Topology } from "../topology/topology.ts"
import { LineageError } from "./error.ts"
import type { LineageId } from "./lineage-id.ts"
import * as Lineage from "./lineage-id.ts"

/** The checks, in report order. Names are stable: scripts read them from `--json`. */
export const CHECKS = [
  { name: "offsets", description: "offsets are gapless and unique per partition" },
  { name: "message_ids", description: "message_ids are unique per depot, and each finds its event" },
  { name: "ids", description: "IDs agree with the parent and root fields (depth) and the event's position" },
  { name: "parents", description: "every parent exists" },
  { name: "order", description: "every parent precedes its child" },
  { name: "roots", description: "every child has its parent's root" },
  { name: "cycles", description: "parent links form no cycle" },
  { name: "read_models", description: "every read-model row equals the fold of its depot" },
  { name: "emits", description: "every event a fold emits is in its depot, as emitted" },
] as const

export type CheckName = (typeof CHECKS)[number]["name"]

const order = new Map<CheckName, number>(CHECKS.map((c, i) => [c.name, i]))

/** One thing found wrong, with where it is. */
export interface Violation {
  readonly check: CheckName
  readonly depot?: string | undefined
  readonly partition?: number | undefined
  readonly offset?: number | undefined
  readonly id?: string | undefined
  readonly template?: string | undefined
  readonly key?: string | undefined
  readonly message: string
}

export interface CheckResult {
  readonly name: CheckName
  readonly description: string
  /** How many events (or rows, or emits) the check looked at. */
  readonly checked: number
  readonly violations: number
}

export interface AuditReport {
  readonly ok: boolean
  /** Depots whose lineage was checked. */
  readonly depots: ReadonlyArray<string>
  /** Topologies whose read models were compared with their fold. */
  readonly topologies: ReadonlyArray<string>
  /** Events read. */
  readonly events: number
  /** Children whose parent is outside the depots, accepted under `allowExternalParents`. */
  readonly externalParents: number
  readonly checks: ReadonlyArray<CheckResult>
  /** The first `maxViolations` violations of each check. */
  readonly violations: ReadonlyArray<Violation>
  /** Violations counted but not listed. */
  readonly unlisted: number
}

export interface AuditProgress {
  readonly phase: "events" | "read models"
  readonly done: number
  readonly total: number
  /** What is being read, e.g. "accounts/3" or "acc_balance". */
  readonly at: string
}

/** Where an event is and what it is called. */
export interface EventRef {
  readonly id: LineageId
  readonly depot: string
  readonly partition: number
  readonly offset: number
}

/**
 * Look-ups beyond reading partitions, asked once per page so that an adapter
 * can answer a page in one query.
 */
export interface AuditLookups {
  /** Stored events by ID; IDs not stored are missing from the map. */
  readonly events: (ids: ReadonlyArray<LineageId>) => Effect.Effect<ReadonlyMap<LineageId, Event>, StoreError>
  /**
   * The events of a page that the depot does not hold their message_id for:
   * each with the event that holds it, or undefined when the message_id
   * finds no event at all (a repeat would then be appended again).
   */
  readonly messageIdClashes: (
    depot: string,
    events: ReadonlyArray<Event>,
  ) => Effect.Effect<ReadonlyArray<{ readonly event: Event; readonly holder: EventRef | undefined }>, StoreError>
}

export interface AuditOptions {
  /** Depots whose lineage to check; default: all (or the sources of `topologies` when given). */
  readonly depots?: ReadonlyArray<string> | undefined
  /** Topologies whose read models to check; default: all (or those reading `depots` when given). */
  readonly topologies?: ReadonlyArray<string> | undefined
  /** Events per read. */
  readonly pageSize?: number | undefined
  /** Violations listed per check; all are counted. */
  readonly maxViolations?: number | undefined
  /** Accept adopted events whose parent is not stored (engine.allow_external_parents). */
  readonly allowExternalParents?: boolean | undefined
  /** Defaults to `portLookups` over the DepotStore. */
  readonly lookups?: AuditLookups | undefined
  readonly onProgress?: ((progress: AuditProgress) => void) | undefined
}

const samePlace = (a: EventRef, b: EventRef): boolean =>
  a.id === b.id && a.depot === b.depot && a.partition === b.partition && a.offset === b.offset

/** Look-ups over the port: one `byId` or `byMessageId` per event, run concurrently. */
export const portLookups = (store: DepotStoreShape, concurrency = 16): AuditLookups => ({
  events: (ids) =>
    Effect.map(
      Effect.forEach(ids, (id) => Effect.map(store.byId(id), (e) => [id, e] as const), { concurrency }),
      (pairs) => {
        const found = new Map<LineageId, Event>()
        for (const [id, e] of pairs) if (e !== undefined) found.set(id, e)
        return found
      },
    ),
  messageIdClashes: (depot, events) =>
    Effect.map(
      Effect.forEach(events, (e) => store.byMessageId(depot, e.messageId), { concurrency }),
      (holders) =>
        holders.flatMap((holder, i) => {
          const event = events[i] as Event
          return holder !== undefined && samePlace(holder, event) ? [] : [{ event, holder }]
        }),
    ),
})

const at = (e: EventRef): string => `${e.depot}/${e.partition}@${e.offset}`
const iso = (t: number): string => (Number.isFinite(t) ? new Date(t).toISOString() : String(t))
const lastSegment = (id: string): string => id.slice(id.lastIndexOf("/") + 1)

/** Longest parent chain walked when looking for a cycle. */
const MAX_WALK = 10_000
/** Events with a parent field that disagrees with their ID, kept for the cycle walk. */
const MAX_DEVIANTS = 10_000

class Tally {
  readonly checked = new Map<CheckName, number>(CHECKS.map((c) => [c.name, 0]))
  readonly counts = new Map<CheckName, number>(CHECKS.map((c) => [c.name, 0]))
  readonly listed: Array<Violation> = []
  private readonly listedPer = new Map<CheckName, number>()
  private readonly cap: number
  constructor(cap: number) {
    this.cap = cap
  }

  check(name: CheckName, n = 1): void {
    this.checked.set(name, (this.checked.get(name) ?? 0) + n)
  }

  add(v: Violation): void {
    this.counts.set(v.check, (this.counts.get(v.check) ?? 0) + 1)
    const n = this.listedPer.get(v.check) ?? 0
    if (n < this.cap) {
      this.listed.push(v)
      this.listedPer.set(v.check, n + 1)
    }
  }

  event(check: CheckName, e: EventRef, message: string): void {
    this.add({ check, depot: e.depot, partition: e.partition, offset: e.offset, id: e.id, message })
  }
}

const unknownName = (what: string, name: string, known: ReadonlyArray<{ readonly name: string }>) =>
  new LineageError({
    code: "UNKNOWN_NAME",
    message: `No ${what} is named ${JSON.stringify(name)}; declared: ${known.map((k) => k.name).join(", ") || "none"}.`,
  })

/** What an audit reads: the depots to check, the topologies to fold, and every depot to stream. */
export const selection = (
  declarations: Declarations,
  options: Pick<AuditOptions, "depots" | "topologies">,
): Effect.Effect<
  {
    readonly depots: ReadonlyArray<Depot>
    readonly topologies: ReadonlyArray<Topology>
    readonly streamed: ReadonlyArray<Depot>
  },
  LineageError
> =>
  Effect.gen(function* () {
    for (const name of options.depots ?? [])
      if (!declarations.depots.some((d) => d.name === name))
        return yield* unknownName("depot", name, declarations.depots)
    for (const name of options.topologies ?? [])
      if (!declarations.topologies.some((t) => t.name === name))
        return yield* unknownName("topology", name, declarations.topologies)
    const wantDepots = options.depots !== undefined && options.depots.length > 0 ? options.depots : undefined
    const wantTopologies =
      options.topologies !== undefined && options.topologies.length > 0 ? options.topologies : undefined
    const topologies = declarations.topologies.filter((t) =>
      wantTopologies !== undefined
        ? wantTopologies.includes(t.name)
        : wantDepots === undefined || t.sources.some((s) => wantDepots.includes(s.name)),
    )
    const depots = declarations.depots.filter((d) =>
      wantDepots !== undefined
        ? wantDepots.includes(d.name)
        : wantTopologies === undefined || topologies.some((t) => t.sources.some((s) => s.name === d.name)),
    )
    const streamed = declarations.depots.filter(
      (d) => depots.includes(d) || topologies.some((t) => t.sources.some((s) => s.name === d.name)),
    )
    return { depots, topologies, streamed }
  })

/**
 * Audits the declared depots and read models (narrowed by `options`). The
 * read-model store must know the templates (the engine, or `ensure`, has
 * set them up). Never fails for a violation: they are in the report.
 */
export const audit = (
  declarations: Declarations,
  options: AuditOptions = {},
): Effect.Effect<AuditReport, LineageError | StoreError, DepotStore | ReadModelStore> =>
  Effect.gen(function* () {
    const store = yield* DepotStore
    const models = yield* ReadModelStore
    const lookups = options.lookups ?? portLookups(store)
    const pageSize = Math.max(2, options.pageSize ?? 1000)
    const tally = new Tally(Math.max(0, options.maxViolations ?? 100))
    const progress = options.onProgress ?? (() => {})
    const { depots, topologies, streamed } = yield* selection(declarations, options)
    const checked = new Set(depots.map((d) => d.name))
    const depotByName = new Map(declarations.depots.map((d) => [d.name, d]))
    const states = new Map<string, ModelState>(topologies.map((t) => [t.name, new Map()]))
    const deviants: Array<Event> = []
    let deviantsDropped = 0
    let externalParents = 0
    let events = 0

    const heads = yield* Effect.forEach(streamed, (d) =>
      Effect.forEach(
        Array.from({ length: d.partitions }, (_, p) => p),
        (p) => store.head(d.name, p),
      ),
    )
    const total = heads.flat().reduce((a, b) => a + b, 0)

    /** Lineage checks of one page (events of one partition, in offset order). */
    const checkLineage = (depot: Depot, page: ReadonlyArray<Event>) =>
      Effect.gen(function* () {
        const wanted = new Map<Event, LineageId>()
        for (const e of page) {
          tally.check("ids")
          if (!Lineage.isLineageId(e.id)) {
            tally.event("ids", e, `ID ${JSON.stringify(e.id)} is not a well-formed lineage ID`)
            if (e.parent !== null) {
              wanted.set(e, e.parent)
              if (deviants.length < MAX_DEVIANTS) deviants.push(e)
              else deviantsDropped++
            }
            continue
          }
          const parentById = Lineage.parentOf(e.id) ?? null
          if (e.parent !== parentById) {
            tally.event(
              "ids",
              e,
              `parent field is ${e.parent ?? "null"}, but the ID says ${parentById ?? "none (a root)"} (depth ${Lineage.depth(e.id)})`,
            )
            if (deviants.length < MAX_DEVIANTS) deviants.push(e)
            else deviantsDropped++
          }
          const rootById = Lineage.rootOf(e.id)
          if (e.root !== rootById) tally.event("ids", e, `root field is ${e.root}, but the ID says ${rootById}`)
          const last = lastSegment(e.id)
          const named = Lineage.positionOfSegment(last)
          if (parentById === null || named !== undefined) {
            // A root's ID and an adopted event's last segment name the event's own position.
            if (
              named === undefined ||
              named.depot !== e.depot ||
              named.partition !== e.partition ||
              named.offset !== e.offset
            )
              tally.event("ids", e, `ID ends in ${last}, but the event is at ${e.depot}:${e.partition}:${e.offset}`)
          }
          const parent = e.parent ?? parentById
          if (parent !== null) wanted.set(e, parent)
        }
        // Both look-ups at once: neither needs the other's answer.
        const [clashes, found] = yield* Effect.all(
          [
            lookups.messageIdClashes(depot.name, page),
            wanted.size === 0
              ? Effect.succeed(new Map<LineageId, Event>() as ReadonlyMap<LineageId, Event>)
              : lookups.events([...new Set(wanted.values())]),
          ],
          { concurrency: 2 },
        )
        tally.check("message_ids", page.length)
        for (const { event, holder } of clashes)
          tally.event(
            "message_ids",
            event,
            holder === undefined
              ? `message_id ${JSON.stringify(event.messageId)} does not find this event, so a repeat of its command would be appended again`
              : `message_id ${JSON.stringify(event.messageId)} is already held by ${holder.id} at ${at(holder)}`,
          )
        for (const [e, parentId] of wanted) {
          tally.check("parents")
          const p = found.get(parentId)
          if (p === undefined) {
            const adopted = Lineage.positionOfSegment(lastSegment(e.id)) !== undefined
            if (options.allowExternalParents === true && adopted) externalParents++
            else
              tally.event(
                "parents",
                e,
                `parent ${parentId} is not stored${adopted ? "" : ": a derived event's parent must be in a depot"}`,
              )
            continue
          }
          tally.check("order")
          tally.check("roots")
          if (p.depot === e.depot && p.partition === e.partition) {
            if (!(p.offset < e.offset))
              tally.event("order", e, `appended at offset ${e.offset}, before its parent ${p.id} at offset ${p.offset}`)
          } else if (p.time > e.time)
            tally.event(
              "order",
              e,
              `time ${iso(e.time)} is before its parent ${p.id}'s time ${iso(p.time)} (${at(p)}); a child cannot be older than its parent`,
            )
          if (p.root !== e.root)
            tally.event("roots", e, `root is ${e.root}, but its parent ${p.id}'s root is ${p.root}`)
        }
      })

    /** Folds one page into the topologies reading it, and checks what they emit. */
    const foldPage = (
      depot: Depot,
      page: ReadonlyArray<Event>,
      folders: ReadonlyArray<{ readonly topology: Topology; readonly next: number }>,
    ) =>
      Effect.gen(function* () {
        const emitted: Array<{ readonly topology: Topology; readonly emit: FoldEmit }> = []
        for (const { topology, next } of folders)
          for (const e of page) {
            if (e.offset >= next) break
            const state = states.get(topology.name) as ModelState
            const result = yield* Effect.result(fold(topology, declarations.templates, [e], state))
            if (result._tag === "Failure") {
              tally.event(
                "read_models",
                e,
                `topology ${topology.name}'s handler fails on this event in the reference fold (${result.failure.message}); its rows cannot be checked past it`,
              )
              continue
            }
            for (const emit of result.success.emits) emitted.push({ topology, emit })
          }
        if (emitted.length === 0) return
        const ids = emitted.map(({ topology, emit }) => Lineage.derived(emit.parent, topology.name, emit.n))
        const found = yield* lookups.events([...new Set(ids)])
        const parents = new Map(page.map((e) => [e.id, e]))
        for (let i = 0; i < emitted.length; i++) {
          const { topology, emit } = emitted[i] as (typeof emitted)[number]
          const id = ids[i] as LineageId
          const parent = parents.get(emit.parent) as Event
          // Named by the parent until the child is found: that is the event whose processing is in question.
          const where = {
            check: "emits" as const,
            depot: depot.name,
            partition: parent.partition,
            offset: parent.offset,
            id: parent.id,
          }
          tally.check("emits")
          const target = depotByName.get(emit.depot)
          if (target === undefined) {
            tally.add({ ...where, message: `${topology.name} emits into ${emit.depot}, which is not declared` })
            continue
          }
          const decoded = DepotDecl.decodePayload(target, emit.type, emit.payload)
          if (!decoded.ok) {
            tally.add({ ...where, message: `${topology.name} emits an invalid event: ${decoded.error.message}` })
            continue
          }
          const child = found.get(id)
          if (child === undefined) {
            tally.add({
              ...where,
              message: `${topology.name} emits ${emit.type} ${JSON.stringify(emit.key)} into ${emit.depot} while processing ${emit.parent}, but no event ${id} is stored`,
            })
            continue
          }
          const partition = DepotDecl.partitionOf(emit.key, target.partitions)
          const differences = [
            child.depot !== emit.depot || child.partition !== partition
              ? `it is at ${at(child)}, not in ${emit.depot}/${partition}`
              : undefined,
            child.type !== emit.type ? `its type is ${child.type}, not ${emit.type}` : undefined,
            child.key !== emit.key
              ? `its key is ${JSON.stringify(child.key)}, not ${JSON.stringify(emit.key)}`
              : undefined,
            canonical(child.payload) !== canonical(decoded.payload)
              ? `its payload is ${canonical(child.payload)}, not ${canonical(decoded.payload)}`
              : undefined,
          ].filter((d): d is string => d !== undefined)
          if (differences.length > 0)
            tally.event("emits", child, `${id} is not what ${topology.name} emits: ${differences.join("; ")}`)
        }
      })

    let done = 0
    for (const depot of streamed) {
      const audited = checked.has(depot.name)
      const readers = topologies.filter((t) => t.sources.some((s) => s.name === depot.name))
      for (let p = 0; p < depot.partitions; p++) {
        const folders = yield* Effect.forEach(readers, (topology) =>
          Effect.map(models.checkpoint({ topology: topology.name, depot: depot.name, partition: p }), (next) => ({
            topology,
            next,
          })),
        )
        let expected = 0
        let previous: Event | undefined
        /** The checks of one page, in offset order; pages are checked one after the other. */
        const checkPage = (take: ReadonlyArray<Event>) =>
          Effect.gen(function* () {
            if (audited) {
              for (const e of take) {
                tally.check("offsets")
                if (previous !== undefined && e.offset === previous.offset)
                  tally.event("offsets", e, `offset ${e.offset} is taken twice: by ${previous.id} and by ${e.id}`)
                else if (e.offset > expected)
                  tally.event(
                    "offsets",
                    e,
                    e.offset === expected + 1
                      ? `offset ${expected} is missing`
                      : `offsets ${expected} to ${e.offset - 1} are missing`,
                  )
                else if (e.offset < expected)
                  tally.event("offsets", e, `offset ${e.offset} is read after offset ${expected - 1}`)
                expected = Math.max(expected, e.offset + 1)
                previous = e
              }
              yield* checkLineage(depot, take)
            }
            if (folders.length > 0) yield* foldPage(depot, take, folders)
            done += take.length
            progress({ phase: "events", done: Math.min(done, total), total, at: `${depot.name}/${p}` })
          })
        let page = yield* store.read(depot.name, p, 0, pageSize)
        while (page.length > 0) {
          let take = page
          let from: number
          const lastOffset = (page[page.length - 1] as Event).offset
          if (page.length >= pageSize) {
            // Keep the events of the last offset for the next page, which starts at it and so holds all of them.
            const cut = page.findIndex((e) => e.offset === lastOffset)
            if (cut > 0) take = page.slice(0, cut)
            from = cut > 0 ? lastOffset : lastOffset + 1
          } else from = lastOffset + 1
          events += take.length
          // The next page is read while this one is checked.
          const [next] = yield* Effect.all([store.read(depot.name, p, from, pageSize), checkPage(take)], {
            concurrency: 2,
          })
          page = next
        }
      }
    }

    // A cycle needs at least one parent field that is not the ID's parent (those only shorten the ID).
    const cycles = new Set<string>()
    tally.check("cycles", events)
    for (const start of deviants) {
      const seen = new Map<LineageId, number>([[start.id, 0]])
      const chain: Array<LineageId> = [start.id]
      let current: Event = start
      for (let hop = 0; hop < MAX_WALK && current.parent !== null; hop++) {
        const next: LineageId = current.parent
        const loopAt = seen.get(next)
        if (loopAt !== undefined) {
          const loop = chain.slice(loopAt)
          const name = [...loop].sort()[0] as string
          if (!cycles.has(name)) {
            cycles.add(name)
            tally.event("cycles", start, `parent links form a cycle: ${[...loop, next].join(" → ")}`)
          }
          break
        }
        const parent = (yield* lookups.events([next])).get(next)
        if (parent === undefined) break
        seen.set(next, chain.length)
        chain.push(next)
        current = parent
      }
    }
    if (deviantsDropped > 0)
      tally.add({
        check: "cycles",
        message: `${deviantsDropped} more events have a parent field that disagrees with their ID; fix the ones listed under "ids" and audit again to check them for cycles`,
      })

    const compared = [...new Set(topologies.flatMap((t) => t.readModels))]
    for (let i = 0; i < compared.length; i++) {
      const name = compared[i] as string
      progress({ phase: "read models", done: i, total: compared.length, at: name })
      const template = declarations.templates.find((t) => t.name === name) as Template
      yield* compareTemplate(template, topologies, states, yield* models.scan(name), tally)
    }
    progress({ phase: "read models", done: compared.length, total: compared.length, at: "" })

    const checks = CHECKS.map(
      (c): CheckResult => ({
        name: c.name,
        description: c.description,
        checked: tally.checked.get(c.name) ?? 0,
        violations: tally.counts.get(c.name) ?? 0,
      }),
    )
    const violations = checks.reduce((n, c) => n + c.violations, 0)
    return {
      ok: violations === 0,
      depots: depots.map((d) => d.name),
      topologies: topologies.map((t) => t.name),
      events,
      externalParents,
      checks,
      violations: [...tally.listed].sort((a, b) => (order.get(a.check) ?? 0) - (order.get(b.check) ?? 0)),
      unlisted: violations - tally.listed.length,
    }
  })

/** Row by row: the stored rows against the folds of every topology (of those audited) writing the template. */
const compareTemplate = (
  template: Template,
  topologies: ReadonlyArray<Topology>,
  states: ReadonlyMap<string, ModelState>,
  stored: ReadonlyArray<Row>,
  tally: Tally,
) =>
  Effect.sync(() => {
    const canonicalKey = (row: Row): string => {
      const k = checkKey(template, keyOf(template, row))
      return k.ok ? keyId(k.value) : keyId(keyOf(template, row))
    }
    const expected = new Map<string, Row>()
    for (const t of topologies) {
      if (!t.readModels.includes(template.name)) continue
      for (const row of states.get(t.name)?.get(template.name)?.values() ?? []) {
        const key = canonicalKey(row)
        const checked = checkRow(template, row)
        if (!checked.ok) {
          tally.add({
            check: "read_models",
            template: template.name,
            key,
            message: `the fold of ${t.name} makes a row that does not fit the template: ${checked.problem}`,
          })
          continue
        }
        expected.set(key, checked.value)
      }
    }
    const actual = new Map<string, Row>()
    for (const row of stored) actual.set(canonicalKey(row), row)
    const keys = [...new Set([...actual.keys(), ...expected.keys()])].sort()
    for (const key of keys) {
      tally.check("read_models")
      const a = actual.get(key)
      const x = expected.get(key)
      const where = { check: "read_models" as const, template: template.name, key }
      if (a === undefined) {
        tally.add({ ...where, message: `row ${key} is missing; the fold has ${canonical(x)}` })
        continue
      }
      if (x === undefined) {
        tally.add({
          ...where,
          message: `row ${key} is not in the fold: no checkpointed event writes it (written by hand, or its events are gone)`,
        })
        continue
      }
      const fields = [...new Set([...Object.keys(x), ...Object.keys(a)])]
      const differing = fields.filter((f) => canonical(a[f]) !== canonical(x[f]))
      if (differing.length > 0)
        tally.add({
          ...where,
          message: `row ${key} differs from the fold: ${differing.map((f) => `${f} is ${canonical(a[f])}, the fold says ${canonical(x[f])}`).join("; ")}`,
        })
    }
  })
