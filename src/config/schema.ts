/**
 * The configuration model. Files: config/beds.toml (base, embedded
 * defaults), then config/env_<BEDS_ENV>.toml, then single keys from
 * environment variables `BEDS__<SECTION>__<KEY>` (see load.ts and README).
 */
import { Schema } from "effect"

const Port = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 65535 }))
const Positive = Schema.Int.check(Schema.isGreaterThan(0))

export const MariaDbConfig = Schema.Struct({
  host: Schema.String,
  port: Port,
  user: Schema.String,
  password: Schema.String,
  database: Schema.String.check(Schema.isPattern(/^[A-Za-z0-9_]{1,64}$/)),
  pool: Positive,
  connect_timeout_ms: Positive,
})

export const AmqpConfig = Schema.Struct({
  url: Schema.String,
  prefetch: Positive,
  queue_type: Schema.Literals(["classic", "quorum"]),
  heartbeat_s: Schema.Int,
})

export const MongoConfig = Schema.Struct({
  url: Schema.String,
  database: Schema.String,
})

export const Config = Schema.Struct({
  engine: Schema.Struct({
    /** This node's role; decides which depots and topologies it serves. */
    role: Schema.String,
    /** Where the embedded file depot keeps its files. */
    data_dir: Schema.String,
    /** Depot store adapter. */
    depot: Schema.Literals(["file", "mariadb", "memory"]),
    /** REL read-model adapter. */
    rel: Schema.Literals(["memory", "mariadb"]),
    /** REC read-model adapter. */
    rec: Schema.Literals(["memory", "mongodb"]),
    /** Command transport. */
    transport: Schema.Literals(["embedded", "amqp"]),
    log_level: Schema.Literals(["debug", "info", "warn", "error"]),
  }),
  ingress: Schema.Struct({
    max_body_bytes: Positive,
    /** Most appends in one group commit. */
    batch_max: Positive,
    /** Commands in flight per partition before the transport pushes back. */
    in_flight: Positive,
  }),
  topology: Schema.Struct({
    batch_max: Positive,
    retries: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
    retry_base_ms: Positive,
  }),
  roles: Schema.Record(
    Schema.String,
    Schema.Struct({
      depots: Schema.Array(Schema.String),
      topologies: Schema.Array(Schema.String),
    }),
  ),
  mariadb: MariaDbConfig,
  amqp: AmqpConfig,
  mongodb: Schema.optional(MongoConfig),
})
export type Config = typeof Config.Type
