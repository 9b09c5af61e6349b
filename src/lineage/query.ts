/**
 * Lineage queries: an event's ancestors and descendants, as Effects over the
 * depot-store port, so they work on every adapter.
 *
 * Both directions cost what the ID format promises (see lineage-id.ts):
 *   - ancestors come from the ID alone: its prefixes are parsed, then each is
 *     fetched by `byId` (one unique-index point read apiece, run together);
 *   - descendants are one range scan of the ID index, [X + "/", X + "0"),
 *     built into a tree by each ID's parent prefix.
 */
import { Effect } from "effect"
import type { Event } from "../depot/event.ts"
import { DepotStore } from "../depot/store.ts"
import type { StoreError } from "../errors.ts"
import { LineageError } from "./error.ts"
import type { LineageId } from "./lineage-id.ts"
import * as Lineage from "./lineage-id.ts"

/** One ancestor: its ID (known from the descendant's ID) and the stored event, if the depot holds it. */
export interface Ancestor {
  readonly id: LineageId
  /** Undefined for a parent outside this engine's depots (`engine.allow_external_parents`) or a lost event. */
  readonly event: Event | undefined
}

/** A node of a lineage tree. `event` is undefined only for an ID between two stored events that is not stored itself. */
export interface LineageNode {
  readonly id: LineageId
  readonly event: Event | undefined
  /** Direct children, in emission order (`overdraft.2` before `overdraft.10`). */
  readonly children: ReadonlyArray<LineageNode>
}

/** An event's descendants as a tree under it. */
export interface Descendants {
  readonly tree: LineageNode
  /** Descendants found (the top node not counted). */
  readonly count: number
  /** True when there were more than the limit; the tree then holds the first `count` in ID order. */
  readonly truncated: boolean
}

/** An event in context: the ancestors of the tree's top and the tree below it. */
export interface LineageTree extends Descendants {
  /** The event asked about. */
  readonly id: LineageId
  readonly event: Event
  /** Where the tree starts: the event itself, or its root with `{ root: true }`. */
  readonly top: LineageId
  /** Ancestors of `top`, nearest first, ending with the root (empty when `top` is a root). */
  readonly ancestors: ReadonlyArray<Ancestor>
}

/** Most descendants a query returns unless told otherwise. */
export const DEFAULT_LIMIT = 10_000

/** Fails with BAD_ID unless `id` is a well-formed lineage ID. */
export const parseId = (id: string): Effect.Effect<LineageId, LineageError> =>
  Lineage.isLineageId(id)
    ? Effect.succeed(id)
    : Effect.fail(
        new LineageError({
          code: "BAD_ID",
          message: `${JSON.stringify(id.length > 100 ? `${id.slice(0, 100)}…` : id)} is not a lineage ID: expected <depot>:<partition>:<offset>, optionally followed by /<topology>.<n> or /<depot>:<partition>:<offset> segments, e.g. "accounts:3:1234/overdraft.0".`,
        }),
      )

const unknownEvent = (id: LineageId) =>
  new LineageError({
    code: "UNKNOWN_EVENT",
    message: `No stored event has the lineage ID ${id}, and none descends from it. Check the ID (copy it from a reply or from beds_last_id) and that this is the project and depot store that appended it.`,
  })

/** The ancestors of `id`, nearest first, ending with the root; read from the ID, then fetched by ID. */
export const ancestors = (id: string): Effect.Effect<ReadonlyArray<Ancestor>, LineageError | StoreError, DepotStore> =>
  Effect.gen(function* () {
    const valid = yield* parseId(id)
    const store = yield* DepotStore
    return yield* Effect.forEach(
      Lineage.ancestors(valid),
      (a) => Effect.map(store.byId(a), (event): Ancestor => ({ id: a, event })),
      { concurrency: 8 },
    )
  })

const collate = new Intl.Collator("en", { numeric: true }).compare

/**
 * Sibling order: numeric, so `overdraft.2` comes before `overdraft.10`. Two
 * `<topology>.<n>` segments of one topology with different n compare by n
 * without the collator (a third of the time of building a 10,000-node tree); the rest
 * (adopted segments, other topologies, leading zeros) go to the collator.
 */
const segmentOrder = (a: string, b: string): number => {
  const dot = a.lastIndexOf(".")
  if (dot > 0 && dot === b.lastIndexOf(".") && a.startsWith(b.slice(0, dot + 1))) {
    const x = a.slice(dot + 1)
    const y = b.slice(dot + 1)
    if (x !== y && plainNumber(x) && plainNumber(y)) return Number(x) - Number(y)
  }
  return collate(a, b)
}

/** Digits only, without a leading zero (but "0" itself), at most 9 of them as in a derived segment. */
const plainNumber = (s: string): boolean => {
  if (s.length === 0 || s.length > 9 || (s.length > 1 && s.charCodeAt(0) === 48)) return false
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c < 48 || c > 57) return false
  }
  return true
}

interface Building {
  readonly id: LineageId
  event: Event | undefined
  readonly children: Array<Building>
}

/** Sorts every node's children by segmentOrder, each segment cut once. */
const sortTree = (n: Building): LineageNode => {
  if (n.children.length > 1) {
    const keyed = n.children.map((c) => ({ segment: c.id.slice(c.id.lastIndexOf("/") + 1), node: c }))
    // Ties (`t.7` and `t.007`) in ID order, whatever order the events came in.
    keyed.sort(
      (a, b) => segmentOrder(a.segment, b.segment) || (a.segment < b.segment ? -1 : a.segment > b.segment ? 1 : 0),
    )
    for (let i = 0; i < keyed.length; i++) n.children[i] = (keyed[i] as (typeof keyed)[number]).node
  }
  for (const c of n.children) sortTree(c)
  return n
}

/** Whether `id` lies under `above` (a proper descendant), without building `above + "/"`. */
const under = (above: LineageId, id: string): boolean =>
  id.length > above.length && id.charCodeAt(above.length) === 47 && id.startsWith(above)

const byId = (a: Event, b: Event): number => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)

/**
 * Builds the tree under `top` from its descendants. The parent of each node is
 * the one its ID names; an ID in between that is not stored gets a node
 * without an event, so every stored descendant stays reachable.
 *
 * In ID order (as the range scan returns them) an ID comes right before its
 * own descendants, all of them together (`X/t.1/…` sorts before `X/t.10`,
 * since "/" is below every digit), so one pass with the path to the current
 * node as a stack places every event without looking anything up.
 */
export const buildTree = (top: LineageId, topEvent: Event | undefined, events: ReadonlyArray<Event>): LineageNode => {
  const root: Building = { id: top, event: topEvent, children: [] }
  const below = events.filter((e) => under(top, e.id))
  let ordered = true
  for (let i = 1; i < below.length && ordered; i++) ordered = (below[i - 1] as Event).id <= (below[i] as Event).id
  if (!ordered) below.sort(byId)
  const path: Array<Building> = [root]
  for (const e of below) {
    let at = path[path.length - 1] as Building
    while (at !== root && at.id !== e.id && !under(at.id, e.id)) {
      path.pop()
      at = path[path.length - 1] as Building
    }
    if (at.id === e.id) {
      at.event = e
      continue
    }
    // One node per generation between `at` and the event; those not stored stay without an event.
    for (let from = at.id.length + 1; ; ) {
      const slash = e.id.indexOf("/", from)
      const made: Building = { id: slash < 0 ? e.id : e.id.slice(0, slash), event: undefined, children: [] }
      at.children.push(made)
      path.push(made)
      at = made
      if (slash < 0) break
      from = slash + 1
    }
    at.event = e
  }
  return sortTree(root)
}

/** Every node of a tree, parents before children. */
export const nodesOf = (tree: LineageNode): ReadonlyArray<LineageNode> => {
  const out: Array<LineageNode> = []
  const visit = (n: LineageNode) => {
    out.push(n)
    for (const c of n.children) visit(c)
  }
  visit(tree)
  return out
}

/**
 * The descendants of `id` as a tree, from one range scan. Fails with
 * UNKNOWN_EVENT when neither the event nor any descendant is stored.
 */
export const descendants = (
  id: string,
  options: { readonly limit?: number } = {},
): Effect.Effect<Descendants, LineageError | StoreError, DepotStore> =>
  Effect.gen(function* () {
    const valid = yield* parseId(id)
    const store = yield* DepotStore
    const limit = Math.max(0, options.limit ?? DEFAULT_LIMIT)
    const [event, found] = yield* Effect.all([store.byId(valid), store.descendants(valid, limit + 1)], {
      concurrency: 2,
    })
    if (event === undefined && found.length === 0) return yield* unknownEvent(valid)
    const truncated = found.length > limit
    const events = truncated ? found.slice(0, limit) : found
    return { tree: buildTree(valid, event, events), count: events.length, truncated }
  })

/**
 * An event in context: with `root: false` (the default) its ancestors and the
 * tree of its descendants; with `root: true` the whole tree of its root, which
 * holds the event, its ancestors, their other descendants and its own.
 */
export const tree = (
  id: string,
  options: { readonly root?: boolean; readonly limit?: number } = {},
): Effect.Effect<LineageTree, LineageError | StoreError, DepotStore> =>
  Effect.gen(function* () {
    const valid = yield* parseId(id)
    const store = yield* DepotStore
    const event = yield* store.byId(valid)
    if (event === undefined) return yield* unknownEvent(valid)
    const top = options.root === true ? Lineage.rootOf(valid) : valid
    const [above, below] = yield* Effect.all(
      [ancestors(top), descendants(top, options.limit === undefined ? {} : { limit: options.limit })],
      { concurrency: 2 },
    )
    return { id: valid, event, top, ancestors: above, ...below }
  })
