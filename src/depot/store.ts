/**
 * The depot-store port. Adapters: MariaDB (`mariadb.ts`), the embedded file
 * log (`file.ts`) and memory (`memory.ts`); each passes the same conformance
 * suite (test/depot/conformance.ts).
 *
 * The engine runs one writer per partition (see writer.ts), so an adapter may
 * cache a partition's head and key versions; a stale writer must still fail
 * (`FENCED`) instead of forking the log.
 */
import { Context, type Effect } from "effect"
import type { StoreError } from "../errors.ts"
import type { LineageId } from "../lineage/lineage-id.ts"
import type { Depot } from "./depot.ts"
import type { AppendOutcome, AppendRequest, Event } from "./event.ts"

export interface DepotStoreShape {
  /** Prepares storage for these depots (tables, folders); idempotent. */
  readonly open: (depots: ReadonlyArray<Depot>) => Effect.Effect<void, StoreError>
  /**
   * Appends a batch to one partition in one durable commit. Outcomes come in
   * request order; later requests see earlier ones of the same batch (their
   * versions, their message_ids). A repeated message_id yields the original
   * event with `duplicate: true`; a failed `expect` appends nothing for that
   * request. Offsets start at 0 and have no gaps.
   */
  readonly append: (
    depot: string,
    partition: number,
    requests: ReadonlyArray<AppendRequest>,
  ) => Effect.Effect<ReadonlyArray<AppendOutcome>, StoreError>
  /**
   * Optional: appends batches of distinct partitions in one durable commit.
   * The outcomes, one list per batch, are those of appending the batches
   * one after another with `append`; or the call fails and nothing is
   * appended (an adapter may fail where a later batch repeats a message_id
   * of an earlier one). Adapters whose commits cost more than their rows (a
   * round trip, a log sync) offer it; the writer then commits every
   * partition's waiting appends together, and after a failure appends each
   * batch alone through `append`, which tells which partition failed and why.
   */
  readonly appendAll?:
    | ((
        batches: ReadonlyArray<PartitionBatch>,
      ) => Effect.Effect<ReadonlyArray<ReadonlyArray<AppendOutcome>>, StoreError>)
    | undefined
  /** Events of one partition with offset >= `from`, in offset order, at most `limit`. */
  readonly read: (
    depot: string,
    partition: number,
    from: number,
    limit: number,
  ) => Effect.Effect<ReadonlyArray<Event>, StoreError>
  /** The next offset the partition will assign (its event count). */
  readonly head: (depot: string, partition: number) => Effect.Effect<number, StoreError>
  /**
   * A key's version: how many events it has (0 for none). A key always lives
   * in one partition of its depot (`partitionOf`), so an adapter may index
   * versions by (depot, key) alone.
   */
  readonly version: (depot: string, partition: number, key: string) => Effect.Effect<number, StoreError>
  /** The event appended for a message_id, if any. */
  readonly byMessageId: (depot: string, messageId: string) => Effect.Effect<Event | undefined, StoreError>
  /** The event with this lineage ID, if any. */
  readonly byId: (id: LineageId) => Effect.Effect<Event | undefined, StoreError>
  /** All descendants of an event, in lineage-ID order (one index range scan). */
  readonly descendants: (id: LineageId, limit: number) => Effect.Effect<ReadonlyArray<Event>, StoreError>
  /**
   * One key's events with version >= `from` (versions start at 1), in version
   * order, at most `limit`: a key's history, for provenance. A key lives in
   * one partition, so this is that partition's events of the key.
   */
  readonly byKey: (
    depot: string,
    key: string,
    from: number,
    limit: number,
  ) => Effect.Effect<ReadonlyArray<Event>, StoreError>
}

/** One partition's batch of appends. */
export interface PartitionBatch {
  readonly depot: string
  readonly partition: number
  readonly requests: ReadonlyArray<AppendRequest>
}

/** The depot store the engine appends to and reads from. */
export class DepotStore extends Context.Service<DepotStore, DepotStoreShape>()("beds/DepotStore") {}
