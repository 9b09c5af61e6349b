/**
 * Names of read-model variants (copies of a topology's models beside the live
 * ones, see the replay part of the read-model port), shared by the adapters
 * so that every backend names a shadow or a snapshot the same way.
 */
import { createHash } from "node:crypto"

/** The variant a replay builds and swaps in. */
export const SHADOW = "shadow"
/** Where the live models go during a swap, for the instant before they are dropped. */
export const OLD = "old"

/** Variant names: short, lower case, safe inside identifiers. */
export const VARIANT = /^[a-z0-9][a-z0-9_]{0,39}$/

/** MariaDB's limit on table names, MongoDB's practical one on collection names. */
const MAX_NAME = 64
/** The checkpoint table's `topology` column width. */
const MAX_CHECKPOINT_TOPOLOGY = 63

const hash = (s: string, length: number): string => createHash("sha256").update(s).digest("hex").slice(0, length)

/**
 * The table (collection) holding `variant` of template `name`:
 * `<name>__<variant>`, shortened with a hash when that would pass 64
 * characters (still unique: the hash covers the full name).
 */
export const variantTable = (name: string, variant: string): string => {
  if (!VARIANT.test(variant)) throw new Error(`Refusing variant name ${JSON.stringify(variant)}.`)
  const full = `${name}__${variant}`
  if (full.length <= MAX_NAME) return full
  const suffix = `_${hash(full, 8)}__${variant}`
  return `${name.slice(0, MAX_NAME - suffix.length)}${suffix}`
}

/**
 * The checkpoint owner of a variant: `<topology>~<variant>`. Topology names
 * cannot contain "~", so a variant's checkpoints never mix with a live
 * topology's.
 */
export const variantCheckpointTopology = (topology: string, variant: string): string => {
  const full = `${topology}~${variant}`
  if (full.length <= MAX_CHECKPOINT_TOPOLOGY) return full
  const suffix = `~${hash(full, 12)}`
  return `${topology.slice(0, MAX_CHECKPOINT_TOPOLOGY - suffix.length)}${suffix}`
}

/** MariaDB's named-lock name for a topology's replay lock (at most 64 characters). */
export const replayLockName = (topology: string): string => {
  const full = `beds_replay:${topology}`
  return full.length <= MAX_NAME ? full : `beds_replay:${hash(topology, 40)}`
}
