/**
 * Compound lineage IDs.
 *
 * Format: segments joined by `/`. The first segment names the root event by
 * its position, `<depot>:<partition>:<offset>`; every further segment names
 * one generation of descent:
 *   - `<topology>.<n>` for the n-th event a topology emitted while processing
 *     its parent (known before the child is appended, so the same on replay);
 *   - `<depot>:<partition>:<offset>` for a command a client published with
 *     `x-beds-parent` (its own position, so unique and stable).
 *
 * Hence the three properties the design asks for:
 *   - ancestry from the ID alone: every proper prefix ending before a `/` is an
 *     ancestor, the first segment is the root, depth = segments - 1;
 *   - descendants of X are exactly the IDs in the half-open range
 *     [`X/`, `X0`) — `/` (0x2F) and `0` (0x30) are adjacent in ASCII — so one
 *     index range scan finds them all;
 *   - deterministic: no clock, no randomness, only positions and emission order.
 */
import { Schema } from "effect"

const NAME = "[a-z][a-z0-9_]{0,62}"
const ROOT_SEGMENT = `${NAME}:[0-9]{1,4}:[0-9]{1,15}`
const CHILD_SEGMENT = `(?:${NAME}\\.[0-9]{1,9}|${ROOT_SEGMENT})`
const LINEAGE_RE = new RegExp(`^${ROOT_SEGMENT}(?:/${CHILD_SEGMENT}){0,62}$`)

/** Longest lineage ID accepted; it bounds the indexed column. */
export const MAX_LENGTH = 700

/** A lineage ID as a validated string. */
export const LineageId = Schema.String.check(
  Schema.makeFilter((s: string) =>
    s.length <= MAX_LENGTH && LINEAGE_RE.test(s)
      ? undefined
      : `Expected a lineage ID like "accounts:3:1234" or "accounts:3:1234/overdraft.0"`,
  ),
)
export type LineageId = string

/** Whether `s` is a well-formed lineage ID. */
export const isLineageId = (s: string): boolean => s.length <= MAX_LENGTH && LINEAGE_RE.test(s)

/** The ID of a root event: it is named by its own position. */
export const root = (depot: string, partition: number, offset: number): LineageId => `${depot}:${partition}:${offset}`

/** The ID of the n-th event emitted by `topology` while processing `parent`. */
export const derived = (parent: LineageId, topology: string, n: number): LineageId => `${parent}/${topology}.${n}`

/** The ID of a client command published with `x-beds-parent: parent`. */
export const adopted = (parent: LineageId, depot: string, partition: number, offset: number): LineageId =>
  `${parent}/${depot}:${partition}:${offset}`

/** The segments of an ID, root first. */
export const segments = (id: LineageId): ReadonlyArray<string> => id.split("/")

/** Generations below the root: 0 for a root event. */
export const depth = (id: LineageId): number => {
  let d = 0
  for (let i = 0; i < id.length; i++) if (id.charCodeAt(i) === 47) d++
  return d
}

/** The parent's ID, or undefined for a root. */
export const parentOf = (id: LineageId): LineageId | undefined => {
  const i = id.lastIndexOf("/")
  return i < 0 ? undefined : id.slice(0, i)
}

/** The root's ID (the first segment). */
export const rootOf = (id: LineageId): LineageId => {
  const i = id.indexOf("/")
  return i < 0 ? id : id.slice(0, i)
}

/** Every ancestor, nearest first, ending with the root. */
export const ancestors = (id: LineageId): ReadonlyArray<LineageId> => {
  const out: Array<LineageId> = []
  for (let p = parentOf(id); p !== undefined; p = parentOf(p)) out.push(p)
  return out
}

/** Whether `a` is a proper ancestor of `b`. */
export const isAncestor = (a: LineageId, b: LineageId): boolean => b.length > a.length && b.startsWith(`${a}/`)

/**
 * The half-open key range holding exactly the descendants of `id`
 * (`lower <= x < upper`), for an index range scan.
 */
export const descendantRange = (id: LineageId): { readonly lower: string; readonly upper: string } => ({
  lower: `${id}/`,
  upper: `${id}0`,
})

/** The position a root segment names, when the segment is one. */
export const positionOfSegment = (
  segment: string,
): { readonly depot: string; readonly partition: number; readonly offset: number } | undefined => {
  const m = /^([a-z][a-z0-9_]*):([0-9]+):([0-9]+)$/.exec(segment)
  return m ? { depot: m[1] as string, partition: Number(m[2]), offset: Number(m[3]) } : undefined
}
