/**
 * The shared MariaDB client against a real server: `corked` sends the
 * statements pipelined inside it in one write, and their answers are the
 * same as without it.
 */
import * as mariadb from "mariadb"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { corked } from "../../src/mariadb/client.ts"
import { dropDatabase, mariaDbAvailable, mariaDbSettings } from "../support/services.ts"

const available = await mariaDbAvailable()
const settings = mariaDbSettings("client")

describe.skipIf(!available)("MariaDB client", () => {
  let pool: mariadb.Pool
  beforeAll(async () => {
    const admin = await mariadb.createConnection({ host: settings.host, port: settings.port, user: settings.user })
    await admin.query(`CREATE DATABASE IF NOT EXISTS \`${settings.database}\``)
    await admin.end()
    pool = mariadb.createPool({
      host: settings.host,
      port: settings.port,
      user: settings.user,
      database: settings.database,
      connectionLimit: 1,
    })
  })
  afterAll(async () => {
    await pool?.end()
    await dropDatabase(settings)
  })

  /** Counts the writes the connection's socket makes while `f` runs. */
  const countingWrites = async (conn: mariadb.PoolConnection, f: () => Promise<unknown>) => {
    const socket = (
      conn as unknown as { __tests: { getSocket: () => Record<string, (...a: Array<unknown>) => unknown> } }
    ).__tests.getSocket()
    const calls = { n: 0 }
    const original = { write: socket._write, writev: socket._writev }
    socket._write = (...a) => {
      calls.n++
      return original.write?.apply(socket, a)
    }
    socket._writev = (...a) => {
      calls.n++
      return original.writev?.apply(socket, a)
    }
    try {
      return { result: await f(), writes: calls.n }
    } finally {
      socket._write = original.write as (...a: Array<unknown>) => unknown
      socket._writev = original.writev as (...a: Array<unknown>) => unknown
    }
  }

  it("statements pipelined inside corked leave in one write and answer as they would without it", async () => {
    const conn = await pool.getConnection()
    try {
      await conn.query("CREATE TEMPORARY TABLE t (x INT)")
      const send = () => [
        conn.query("SELECT 1 AS one"),
        conn.query("SELECT ? AS two", [2]),
        conn.batch("INSERT INTO t VALUES (?)", [[3], [4]]).then((r) => (r as { affectedRows: number }).affectedRows),
        conn.query("SELECT CONCAT(?, ?) AS s", ["a", "b"]),
      ]
      const plain = await countingWrites(conn, () => Promise.all(send()))
      const together = await countingWrites(conn, () => Promise.all(corked(conn, send)))
      expect(together.result).toEqual(plain.result)
      expect(plain.writes).toBeGreaterThanOrEqual(4)
      expect(together.writes).toBe(1)
    } finally {
      await conn.release()
    }
  })

  it("a failing statement inside corked fails alone; the connection goes on", async () => {
    const conn = await pool.getConnection()
    try {
      const [bad, good] = await Promise.allSettled(
        corked(conn, () => [conn.query("SELECT * FROM no_such_db.no_such_table"), conn.query("SELECT 7 AS seven")]),
      )
      expect(bad?.status).toBe("rejected")
      expect(good).toMatchObject({ status: "fulfilled", value: [{ seven: 7 }] })
      expect(await conn.query("SELECT 8 AS eight")).toMatchObject([{ eight: 8 }])
    } finally {
      await conn.release()
    }
  })
})
