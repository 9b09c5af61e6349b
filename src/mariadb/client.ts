/**
 * The MariaDB connection pool as a service, shared by the MariaDB depot store
 * and the MariaDB read models. Driver errors are classified here, once: lost
 * connections and deadlocks are retryable, everything else is not.
 */
import { Context, Effect, Layer } from "effect"
import * as mariadb from "mariadb"
import { StoreError } from "../errors.ts"
import { isCorkable, whileCorked } from "../internal/cork.ts"

export interface MariaDbSettings {
  readonly host: string
  readonly port: number
  readonly user: string
  readonly password: string
  readonly database: string
  readonly pool: number
  readonly connect_timeout_ms: number
}

export interface MariaDbShape {
  readonly pool: mariadb.Pool
  readonly settings: MariaDbSettings
  /** Runs `f` on one connection inside a transaction; rolls back on failure. */
  readonly transaction: <A>(
    what: string,
    f: (conn: mariadb.PoolConnection) => Promise<A>,
  ) => Effect.Effect<A, StoreError>
  /** Runs `f` on one connection in autocommit mode; `what` names the operation in errors. */
  readonly withConnection: <A>(
    what: string,
    f: (conn: mariadb.PoolConnection) => Promise<A>,
  ) => Effect.Effect<A, StoreError>
  /** Runs `f` with the pool; `what` names the operation in errors. */
  readonly run: <A>(what: string, f: (pool: mariadb.Pool) => Promise<A>) => Effect.Effect<A, StoreError>
}

/**
 * Runs `send` with the connection's socket corked: the statements it
 * pipelines leave in one write instead of one each. On loopback every write
 * wakes the server, so a commit of five statements pays for one wake-up, not
 * five. The driver reaches its socket only through its testing accessor; a
 * driver without it just sends as before.
 */
export const corked = <A>(conn: mariadb.PoolConnection, send: () => A): A => {
  const socket = (conn as unknown as { __tests?: { getSocket?: () => unknown } }).__tests?.getSocket?.()
  return isCorkable(socket) ? whileCorked(socket, send) : send()
}

export class MariaDb extends Context.Service<MariaDb, MariaDbShape>()("beds/MariaDb") {}

const RETRYABLE_ERRNO = new Set([
  1205, // lock wait timeout
  1213, // deadlock
  2002, // can't connect
  2003,
  2006, // server has gone away
  2013, // lost connection during query
  1927, // connection killed
  1053, // server shutdown in progress
  4031, // client disconnected for inactivity
])

/** Turns a driver error into a StoreError that says what failed and whether retrying may help. */
export const classify = (what: string, settings: MariaDbSettings, cause: unknown): StoreError => {
  const e = cause as { errno?: number; code?: string; sqlMessage?: string; message?: string; fatal?: boolean }
  const where = `MariaDB at ${settings.host}:${settings.port}/${settings.database}`
  // 1045 and 1698: wrong user or password; 1044: the user may not use this database. Waiting fixes
  // neither, though the driver marks the first two fatal, as it does a lost connection.
  if (e.errno === 1045 || e.errno === 1698 || e.errno === 1044)
    return new StoreError({
      code: "LOGIN_REFUSED",
      message: `${what}: ${where} refused user "${settings.user}" (${e.sqlMessage ?? e.message}). Check mariadb.user and mariadb.password (or BEDS__MARIADB__PASSWORD), and that the user may create and use database ${settings.database}.`,
      retryable: false,
      cause,
    })
  const connectionLost =
    e.code === "ER_GET_CONNECTION_TIMEOUT" ||
    e.code === "ECONNREFUSED" ||
    e.code === "ECONNRESET" ||
    e.code === "ER_SOCKET_UNEXPECTED_CLOSE" ||
    e.code === "ER_CONNECTION_ALREADY_CLOSED" ||
    e.code === "ER_POOL_ALREADY_CLOSED" ||
    e.fatal === true
  const retryable = connectionLost || (e.errno !== undefined && RETRYABLE_ERRNO.has(e.errno))
  if (connectionLost || e.errno === 2002 || e.errno === 2003)
    return new StoreError({
      code: "STORE_UNAVAILABLE",
      message: `${what}: cannot reach ${where} (${e.code ?? e.errno ?? "error"}: ${e.sqlMessage ?? e.message}). Is the server running? Start it with: start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd`,
      retryable,
      cause,
    })
  return new StoreError({
    code: "STORE_FAILED",
    message: `${what} failed on ${where}: ${e.sqlMessage ?? e.message ?? String(cause)}`,
    retryable,
    cause,
  })
}

/**
 * Connects once, logs in and creates the database if it is missing: what
 * start-up checks of the primary before anything else uses it.
 */
export const connectPrimary = (settings: MariaDbSettings): Effect.Effect<void, StoreError> =>
  Effect.tryPromise({
    try: async () => {
      const conn = await mariadb.createConnection({
        host: settings.host,
        port: settings.port,
        user: settings.user,
        password: settings.password,
        connectTimeout: settings.connect_timeout_ms,
      })
      try {
        await conn.query(
          `CREATE DATABASE IF NOT EXISTS \`${settings.database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`,
        )
      } finally {
        await conn.end()
      }
    },
    catch: (cause) => classify("Connecting", settings, cause),
  })

/** Creates the database if missing, then a pool on it. */
export const make = (settings: MariaDbSettings) =>
  Effect.gen(function* () {
    yield* connectPrimary(settings)
    const pool = yield* Effect.acquireRelease(
      Effect.sync(() =>
        mariadb.createPool({
          host: settings.host,
          port: settings.port,
          user: settings.user,
          password: settings.password,
          database: settings.database,
          connectionLimit: settings.pool,
          connectTimeout: settings.connect_timeout_ms,
          acquireTimeout: Math.max(settings.connect_timeout_ms, 10_000),
          bigIntAsNumber: true,
          insertIdAsNumber: true,
          decimalAsNumber: true,
          autoJsonMap: false,
          checkDuplicate: false,
          timezone: "Z",
        }),
      ),
      (pool) => Effect.promise(() => pool.end().catch(() => undefined)),
    )
    const run: MariaDbShape["run"] = (what, f) =>
      Effect.tryPromise({ try: () => f(pool), catch: (cause) => classify(what, settings, cause) })
    const transaction: MariaDbShape["transaction"] = (what, f) =>
      Effect.tryPromise({
        try: async () => {
          const conn = await pool.getConnection()
          try {
            await conn.beginTransaction()
            const a = await f(conn)
            await conn.commit()
            return a
          } catch (e) {
            await conn.rollback().catch(() => undefined)
            throw e
          } finally {
            await conn.release().catch(() => undefined)
          }
        },
        catch: (cause) => classify(what, settings, cause),
      })
    const withConnection: MariaDbShape["withConnection"] = (what, f) =>
      Effect.tryPromise({
        try: async () => {
          const conn = await pool.getConnection()
          try {
            return await f(conn)
          } finally {
            await conn.release().catch(() => undefined)
          }
        },
        catch: (cause) => classify(what, settings, cause),
      })
    return MariaDb.of({ pool, settings, run, transaction, withConnection })
  })

/** The pool as a Layer, closed when the Layer's scope ends. */
export const layer = (settings: MariaDbSettings): Layer.Layer<MariaDb, StoreError> =>
  Layer.effect(MariaDb, make(settings))
