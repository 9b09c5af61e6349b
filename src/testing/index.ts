/**
 * `beds/testing`: what users test their own depots and topologies with.
 * Kept apart from the runtime entry point so test helpers never ship in it.
 */
export * as Checker from "./checker.ts"
export type { CheckOptions, Stores, TestCommand, TopologyProperty } from "./harness.ts"
export { checkTopology, memoryStores, scenario, snapshot, withEngine } from "./harness.ts"
export * as Model from "./model.ts"
