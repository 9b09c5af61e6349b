/**
 * Real services for integration tests. Outside CI a missing service skips the
 * suite with one line saying why; under CI=true it fails, so a broken
 * machine can never pass as green.
 */
import * as net from "node:net"
import type { MariaDbSettings } from "../../src/mariadb/client.ts"

const probe = (host: string, port: number, timeoutMs = 1000): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = net.connect({ host, port })
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(timeoutMs, () => done(false))
    socket.once("connect", () => done(true))
    socket.once("error", () => done(false))
  })

export const isCI = process.env.CI === "true" || process.env.CI === "1"

const mariaHost = "127.0.0.1"
const mariaPort = Number(process.env.BEDS_TEST_MARIADB_PORT ?? 3306)
const amqpPort = Number(process.env.BEDS_TEST_AMQP_PORT ?? 5672)

/** Whether MariaDB answers; under CI a missing server throws instead. */
export const mariaDbAvailable = async (): Promise<boolean> => {
  const ok = await probe(mariaHost, mariaPort)
  if (!ok && isCI) throw new Error(`MariaDB is not listening on ${mariaHost}:${mariaPort}; CI requires it.`)
  if (!ok) console.warn(`[skip] MariaDB not reachable on ${mariaHost}:${mariaPort}: integration tests skipped.`)
  return ok
}

/** Whether RabbitMQ answers; under CI a missing broker throws instead. */
export const rabbitAvailable = async (): Promise<boolean> => {
  const ok = await probe(mariaHost, amqpPort)
  if (!ok && isCI) throw new Error(`RabbitMQ is not listening on ${mariaHost}:${amqpPort}; CI requires it.`)
  if (!ok) console.warn(`[skip] RabbitMQ not reachable on ${mariaHost}:${amqpPort}: integration tests skipped.`)
  return ok
}

/** Settings for a throw-away database, unique per test file and process. */
export const mariaDbSettings = (suite: string): MariaDbSettings => ({
  host: mariaHost,
  port: mariaPort,
  user: "root",
  password: "",
  database: `beds_t_${suite}_${process.pid}`.slice(0, 64),
  pool: 8,
  connect_timeout_ms: 3000,
})

/** Drops a test database (used in afterAll). */
export const dropDatabase = async (settings: MariaDbSettings): Promise<void> => {
  const mariadb = await import("mariadb")
  const conn = await mariadb.createConnection({
    host: settings.host,
    port: settings.port,
    user: settings.user,
    password: settings.password,
  })
  try {
    await conn.query(`DROP DATABASE IF EXISTS \`${settings.database}\``)
  } finally {
    await conn.end()
  }
}
