/**
 * BEDS's public API, one namespace per concept. Test helpers live apart, in
 * `beds/testing`, so they never ship inside the runtime entry point.
 */
export * as AmqpClient from "./client/amqp.ts"
export * as Client from "./client/client.ts"
export * as EmbeddedClient from "./client/embedded.ts"
export * as Config from "./config/load.ts"
export * as Depot from "./depot/depot.ts"
export * as Event from "./depot/event.ts"
export * as DepotStore from "./depot/store.ts"
export * as Errors from "./errors.ts"
export * as Lineage from "./lineage/lineage-id.ts"
export * as ReadModelStore from "./readmodel/store.ts"
export * as Boot from "./runtime/boot.ts"
export * as Engine from "./runtime/engine.ts"
export * as Template from "./template/template.ts"
export * as Topology from "./topology/topology.ts"
export * as Protocol from "./transport/protocol.ts"
