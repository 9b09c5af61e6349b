/**
 * The read-model port: where topologies keep what they compute. Adapters:
 * MariaDB for REL templates (`mariadb.ts`), MongoDB for REC templates
 * (`mongodb.ts`), memory for both (`memory.ts`); each passes
 * test/readmodel/conformance.ts unchanged.
 *
 * Exactly-once: `commit` writes a batch's rows and the topology's checkpoint
 * atomically (each adapter says how), so a batch is applied entirely or not
 * at all, and re-running from the stored checkpoint is always safe.
 */
import { Context, type Effect, type Scope } from "effect"
import type { StoreError } from "../errors.ts"
import type { Row, RowKey, Template } from "../template/template.ts"

/** One row write: `row` null deletes the row. The row includes its key fields. */
export interface RowWrite {
  readonly template: string
  readonly key: RowKey
  readonly row: Row | null
  /**
   * The row as the writer last saw it: null when absent, else the lineage ID
   * in its LAST_EVENT_COLUMN. A store that is `conditional` for the template
   * refuses the commit with ROW_CONFLICT when the row is no longer so;
   * undefined writes unconditionally.
   */
  readonly seen?: string | null | undefined
}

/** Which stream of events a checkpoint belongs to. */
export interface CheckpointId {
  readonly topology: string
  readonly depot: string
  readonly partition: number
}

export interface ReadModelStoreShape {
  /** Creates missing tables/collections; fails with SCHEMA_DRIFT on a change it cannot apply safely. */
  readonly ensure: (templates: ReadonlyArray<Template>) => Effect.Effect<void, StoreError>
  /** Rows by key; absent keys are missing from the result map (keyed by keyId). */
  readonly load: (template: string, keys: ReadonlyArray<RowKey>) => Effect.Effect<ReadonlyMap<string, Row>, StoreError>
  /**
   * Writes rows and sets the checkpoint to `next` (the next offset to process)
   * in one atomic step. Each touched row appears at most once in `writes`.
   */
  readonly commit: (
    checkpoint: CheckpointId,
    next: number,
    writes: ReadonlyArray<RowWrite>,
  ) => Effect.Effect<void, StoreError>
  /**
   * True when `commit` checks the `seen` of this template's writes. A writer
   * may then keep rows between batches instead of loading them again: a row
   * changed behind its back fails the commit instead of being overwritten.
   * A refused commit fails with ROW_CONFLICT and writes nothing, unless the
   * checkpoint already stands at `next` (an earlier attempt of the same
   * commit landed), in which case it succeeds without writing.
   */
  readonly conditional?: ((template: string) => boolean) | undefined
  /** The next offset to process for a checkpoint (0 when none is stored). */
  readonly checkpoint: (checkpoint: CheckpointId) => Effect.Effect<number, StoreError>
  /** Every row of a template, in key order. */
  readonly scan: (template: string) => Effect.Effect<ReadonlyArray<Row>, StoreError>
  /** Removes every row of these templates and the checkpoints of this topology (rebuild from scratch). */
  readonly reset: (topology: string, templates: ReadonlyArray<string>) => Effect.Effect<void, StoreError>
  /**
   * Refuses writes as `commit` would for reasons in the rows themselves
   * (field values, a document over the backend's size limit), without
   * writing. The runner asks at each write, so the topology's failure policy
   * (halt or park) takes the event instead of the stream failing at commit.
   */
  readonly check?: ((writes: ReadonlyArray<RowWrite>) => Effect.Effect<void, StoreError>) | undefined
  /** Blue/green operations for replays (src/replay/replay.ts); an adapter without them cannot replay. */
  readonly replay?: ReadModelReplayShape | undefined
}

/** Who holds a topology's replay lock. */
export interface ReplayLockHolder {
  readonly host: string
  readonly pid: number
  /** Epoch milliseconds. */
  readonly since: number
}

/** What a store keeps about a topology's live read models. */
export interface TopologyRecord {
  /** The topology version the live read models were built with; undefined until one is recorded. */
  readonly version: number | undefined
  /** Bumped by every `fence`: a live stream that read its checkpoint under an older generation cannot commit. */
  readonly generation: number
  /** Between `fence` and `unfence`/`swap`, while the replay lock is held. */
  readonly fenced: boolean
}

/** A copy of a topology's read models beside the live ones, and a store that reads and writes it. */
export interface VariantHandle {
  /**
   * The copy under the live template names, with checkpoints of its own: a
   * topology runner given this store builds the copy and never touches the
   * live models or their checkpoints.
   */
  readonly store: ReadModelStoreShape
  /** True when the copy already existed with the same fingerprint and keeps its rows and checkpoints. */
  readonly resumed: boolean
  /** True when an existing copy had another fingerprint (older topology version, changed templates) and was dropped. */
  readonly dropped: boolean
}

/** A row that differs between the live model and a copy (null: missing on that side). */
export interface RowDifference {
  readonly key: RowKey
  readonly live: Row | null
  readonly copy: Row | null
}

/**
 * Blue/green operations. A variant is a named copy of some templates
 * ("shadow" for a replay that will be swapped in, "at_..." for a snapshot).
 *
 * Fencing contract, which every adapter must keep: `checkpoint` on the live
 * store remembers the topology's generation it saw; `commit` fails with
 * FENCED (not retryable) when the generation moved since, atomically with
 * the commit, so a batch folded from the old model never lands. While a
 * fence is up and its replay lock is held, `checkpoint` fails with FENCED
 * (retryable), so a restarted live stream waits for the swap to finish.
 */
export interface ReadModelReplayShape {
  /** Why this store cannot replay a topology at all (e.g. its models span two databases), or undefined. */
  readonly refusal?: ((topology: string, templates: ReadonlyArray<Template>) => string | undefined) | undefined
  /** The topology's record, undefined when none was ever written. */
  readonly record: (topology: string) => Effect.Effect<TopologyRecord | undefined, StoreError>
  /** Records the version the live models are built with. */
  readonly setVersion: (topology: string, version: number) => Effect.Effect<void, StoreError>
  /**
   * Takes the topology's replay lock until the scope closes (or the process
   * dies). Not acquired: the current holder is returned instead.
   */
  readonly lock: (
    topology: string,
    holder: ReplayLockHolder,
  ) => Effect.Effect<
    { readonly acquired: true } | { readonly acquired: false; readonly holder: ReplayLockHolder | undefined },
    StoreError,
    Scope.Scope
  >
  /**
   * Opens a variant of `templates` for `topology`, creating it when missing.
   * An existing variant with another `fingerprint`, or with a table missing,
   * is dropped and created empty.
   */
  readonly variant: (
    topology: string,
    templates: ReadonlyArray<Template>,
    variant: string,
    fingerprint: string,
  ) => Effect.Effect<VariantHandle, StoreError>
  /** Drops a variant's copies and checkpoints (missing ones are ignored). */
  readonly dropVariant: (
    topology: string,
    templates: ReadonlyArray<string>,
    variant: string,
  ) => Effect.Effect<void, StoreError>
  /** A live checkpoint, read without the fencing bookkeeping of `checkpoint`. */
  readonly peekCheckpoint: (checkpoint: CheckpointId) => Effect.Effect<number, StoreError>
  /** Raises the fence: returns once no live commit of the topology is in flight and none can start. */
  readonly fence: (topology: string) => Effect.Effect<void, StoreError>
  /** Lowers the fence without swapping. */
  readonly unfence: (topology: string) => Effect.Effect<void, StoreError>
  /**
   * Makes the "shadow" variant the live models in one step readers cannot
   * split, drops the old ones and the shadow's checkpoints, records
   * `version` and lowers the fence. The live checkpoints are kept: the shadow
   * must have been built to exactly them.
   */
  readonly swap: (
    topology: string,
    templates: ReadonlyArray<string>,
    version: number,
  ) => Effect.Effect<void, StoreError>
  /** Rows that differ between a live template and its variant, in key order: how many, and the first `limit`. */
  readonly diff: (
    template: string,
    variant: string,
    limit: number,
  ) => Effect.Effect<{ readonly count: number; readonly first: ReadonlyArray<RowDifference> }, StoreError>
}

/** Read models of REL templates (and REC ones where the adapter serves both). */
export class ReadModelStore extends Context.Service<ReadModelStore, ReadModelStoreShape>()("beds/ReadModelStore") {}
