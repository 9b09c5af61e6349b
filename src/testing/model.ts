/**
 * A pure model of the engine's write path: per-partition logs, dedupe by
 * message_id, per-key versions and expected-version checks. Tests run the
 * real engine and this model side by side and compare every reply and the
 * final depot; it is written for obviousness, not speed.
 */

import type { Depot } from "../depot/depot.ts"
import * as DepotDecl from "../depot/depot.ts"
import { getOrCreate } from "../internal/map.ts"

export interface ModelCommand {
  readonly depot: string
  readonly type: string
  readonly key: string
  readonly payload: unknown
  readonly messageId: string
  readonly expect?: number | undefined
}

export interface ModelEvent extends ModelCommand {
  readonly partition: number
  readonly offset: number
  readonly version: number
}

export type ModelOutcome =
  | { readonly _tag: "Appended"; readonly event: ModelEvent; readonly duplicate: boolean }
  | { readonly _tag: "VersionConflict"; readonly expected: number; readonly actual: number }

export class EngineModel {
  readonly logs = new Map<string, Array<ModelEvent>>()
  private readonly byMessage = new Map<string, ModelEvent>()
  private readonly versions = new Map<string, number>()
  private readonly depots: ReadonlyMap<string, Depot>

  constructor(depots: ReadonlyArray<Depot>) {
    this.depots = new Map(depots.map((d) => [d.name, d]))
  }

  /** What the engine must answer to a valid command, given everything before it. */
  append(c: ModelCommand): ModelOutcome {
    const original = this.byMessage.get(`${c.depot}|${c.messageId}`)
    if (original !== undefined) return { _tag: "Appended", event: original, duplicate: true }
    const actual = this.versions.get(`${c.depot}|${c.key}`) ?? 0
    if (c.expect !== undefined && c.expect !== actual) return { _tag: "VersionConflict", expected: c.expect, actual }
    const depot = this.depots.get(c.depot)
    if (depot === undefined) throw new Error(`model: unknown depot ${c.depot}`)
    const partition = DepotDecl.partitionOf(c.key, depot.partitions)
    const log = this.log(c.depot, partition)
    const event: ModelEvent = { ...c, partition, offset: log.length, version: actual + 1 }
    log.push(event)
    this.versions.set(`${c.depot}|${c.key}`, actual + 1)
    this.byMessage.set(`${c.depot}|${c.messageId}`, event)
    return { _tag: "Appended", event, duplicate: false }
  }

  log(depot: string, partition: number): Array<ModelEvent> {
    const k = `${depot}/${partition}`
    return getOrCreate(this.logs, k, (): Array<ModelEvent> => [])
  }

  /** Every appended event of a depot, partition by partition in offset order. */
  events(depot: string): ReadonlyArray<ModelEvent> {
    const d = this.depots.get(depot)
    if (d === undefined) return []
    return Array.from({ length: d.partitions }, (_, p) => this.log(depot, p)).flat()
  }
}
