/**
 * The configuration model. Files: config/beds.toml (base, embedded
 * defaults), then config/env_<BEDS_ENV>.toml, then single keys from
 * environment variables `BEDS__<SECTION>__<KEY>` (see load.ts and README).
 * Keys are snake_case so that they read the same in TOML and in env vars.
 */
import { Schema } from "effect"

const Port = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 65535 }))
const Positive = Schema.Int.check(Schema.isGreaterThan(0))
const NonNegative = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))

export const MariaDbConfig = Schema.Struct({
  host: Schema.String,
  port: Port,
  user: Schema.String,
  password: Schema.String,
  /** Created at start-up when missing; the pattern keeps it safe to quote as an identifier. */
  database: Schema.String.check(
    Schema.isPattern(/^[A-Za-z0-9_]{1,64}$/, {
      expected: "a database name of 1 to 64 letters, digits or underscores",
    }),
  ),
  /** Connections per process; each partition writer holds one while it commits. */
  pool: Positive,
  connect_timeout_ms: Positive,
  /** Read replicas ("host:port"), checked at start-up; a replica that does not answer is a warning, not a failure. */
  replicas: Schema.optional(Schema.Array(Schema.String.check(Schema.isPattern(/^[A-Za-z0-9_.-]+:[0-9]{1,5}$/)))),
})

export const AmqpConfig = Schema.Struct({
  /** `amqp://user:password@host:port/vhost`. */
  url: Schema.String,
  /** Unacknowledged deliveries per consumer; bounds memory and sets the batch ceiling. */
  prefetch: Positive,
  /** `quorum` for a replicated RabbitMQ cluster, `classic` for a single broker. */
  queue_type: Schema.Literals(["classic", "quorum"]),
  /** 0 disables heartbeats. */
  heartbeat_s: NonNegative,
  /** Names on the broker: `<prefix>.cmd.<depot>`, `<prefix>.dlx`, `<prefix>.dead`. The wire contract's is "beds"; another isolates installations sharing a vhost. */
  prefix: Schema.String.check(Schema.isPattern(/^[A-Za-z0-9_.-]{1,100}$/)),
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
    /** Accept `x-beds-parent` IDs naming events outside this engine's depots (else UNKNOWN_PARENT). */
    allow_external_parents: Schema.Boolean,
  }),
  ingress: Schema.Struct({
    /** Larger command bodies are rejected with BODY_TOO_LARGE. */
    max_body_bytes: Positive,
    /** Most appends in one group commit. */
    batch_max: Positive,
    /** Commands in flight per partition before the transport pushes back. */
    in_flight: Positive,
  }),
  topology: Schema.Struct({
    /** Most events folded into one read-model write. */
    batch_max: Positive,
    /** Retries of a failing handler before its failure policy applies. */
    retries: NonNegative,
    /** First retry delay; later ones back off exponentially. */
    retry_base_ms: Positive,
    /**
     * When a topology's declared version differs from the one its read models
     * were built with: "auto" rebuilds them blue/green at start, "flag" refuses
     * to start until `beds replay <name>` or `beds start --rebuild`. Absent: "auto".
     */
    rebuild_on_version_change: Schema.optionalKey(Schema.Literals(["auto", "flag"])),
    /**
     * Under load, a live stream waits up to this many milliseconds for a
     * short batch to fill before folding it: fewer, larger read-model
     * transactions. Idle streams never wait. Absent: 0.
     */
    linger_ms: Schema.optionalKey(NonNegative),
    /**
     * The linger while a `full` reply waits on the stream (capped at
     * linger_ms): what `full` pays in latency. Absent: linger_ms.
     */
    linger_full_ms: Schema.optionalKey(NonNegative),
    /**
     * Read-model rows each stream keeps between batches per template, so
     * it need not load them again (MariaDB tables). A row another writer
     * changed is caught at commit; one edited by hand without a new
     * beds_last_id is overwritten at its next event. Absent: 0 (off).
     */
    keep_rows: Schema.optionalKey(NonNegative),
  }),
  /** Node roles by name: the depots and topologies each serves ("*" = all). */
  roles: Schema.Record(
    Schema.String,
    Schema.Struct({
      depots: Schema.Array(Schema.String),
      topologies: Schema.Array(Schema.String),
    }),
  ),
  mariadb: MariaDbConfig,
  amqp: AmqpConfig,
  /** Only needed when engine.rec = "mongodb". */
  mongodb: Schema.optional(MongoConfig),
})
export type Config = typeof Config.Type
