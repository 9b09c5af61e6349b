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
import { Context, type Effect } from "effect"
import type { StoreError } from "../errors.ts"
import type { Row, RowKey, Template } from "../template/template.ts"

/** One row write: `row` null deletes the row. The row includes its key fields. */
export interface RowWrite {
  readonly template: string
  readonly key: RowKey
  readonly row: Row | null
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
  /** The next offset to process for a checkpoint (0 when none is stored). */
  readonly checkpoint: (checkpoint: CheckpointId) => Effect.Effect<number, StoreError>
  /** Every row of a template, in key order. */
  readonly scan: (template: string) => Effect.Effect<ReadonlyArray<Row>, StoreError>
  /** Removes every row of these templates and the checkpoints of this topology (rebuild from scratch). */
  readonly reset: (topology: string, templates: ReadonlyArray<string>) => Effect.Effect<void, StoreError>
}

/** Read models of REL templates (and REC ones where the adapter serves both). */
export class ReadModelStore extends Context.Service<ReadModelStore, ReadModelStoreShape>()("beds/ReadModelStore") {}
