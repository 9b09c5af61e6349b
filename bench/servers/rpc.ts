/**
 * Baseline RPC servers for the AMQP benchmark, run as their own process:
 *   echo   — reply at once (what RabbitMQ + amqplib cost per round trip);
 *   insert — group-commit a multi-row INSERT into MariaDB, flushing as soon
 *            as the writer is idle, then reply (a hand-written minimal
 *            durable RPC server: what BEDS's `append` is compared with);
 *   sink   — consume a durable queue and ack every message, no reply (what
 *            RabbitMQ costs to deliver and forget what was published with
 *            confirms: the broker's share of BEDS's `none`).
 * Prints "ready" once consuming.
 */
import * as amqp from "amqplib"
import * as mariadb from "mariadb"

const mode = process.argv[2] ?? "echo"
const queue = process.argv[3] ?? "bench.rpc"
const conn = await amqp.connect("amqp://guest:guest@127.0.0.1:5672", { noDelay: true })
const ch = await conn.createChannel()
await ch.assertQueue(queue, mode === "sink" ? { durable: true } : { durable: false, autoDelete: true })
await ch.prefetch(1000)

let pool: mariadb.Pool | undefined
const pending: Array<{ msg: amqp.ConsumeMessage; row: unknown[] }> = []
let flushing = false
if (mode === "insert") {
  const admin = await mariadb.createConnection({ host: "127.0.0.1", user: "root" })
  await admin.query("CREATE DATABASE IF NOT EXISTS beds_bench_rpc")
  await admin.query("DROP TABLE IF EXISTS beds_bench_rpc.rpc_event")
  await admin.query(
    "CREATE TABLE beds_bench_rpc.rpc_event (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, message_id VARCHAR(255) NOT NULL UNIQUE, `key` VARCHAR(255) NOT NULL, payload TEXT NOT NULL, KEY (`key`))",
  )
  await admin.end()
  pool = mariadb.createPool({ host: "127.0.0.1", user: "root", database: "beds_bench_rpc", connectionLimit: 4 })
}

const reply = (msg: amqp.ConsumeMessage) => {
  ch.sendToQueue(msg.properties.replyTo, Buffer.from('{"ok":true}'), { correlationId: msg.properties.correlationId })
  ch.ack(msg)
}

const flush = async () => {
  if (flushing || pending.length === 0 || pool === undefined) return
  flushing = true
  while (pending.length > 0) {
    const batch = pending.splice(0, 1000)
    const c = await pool.getConnection()
    try {
      await c.beginTransaction()
      await c.query(
        `INSERT INTO rpc_event (message_id, \`key\`, payload) VALUES ${batch.map(() => "(?,?,?)").join(",")}`,
        batch.flatMap((b) => b.row),
      )
      await c.commit()
    } finally {
      await c.release()
    }
    for (const b of batch) reply(b.msg)
  }
  flushing = false
}

await ch.consume(queue, (msg) => {
  if (msg === null) return
  if (mode === "sink") return ch.ack(msg)
  if (mode === "echo") return reply(msg)
  pending.push({ msg, row: [msg.properties.messageId, msg.properties.headers?.key ?? "k", msg.content.toString()] })
  void flush()
})
process.stdout.write("ready\n")
process.on("SIGTERM", async () => {
  await conn.close().catch(() => undefined)
  await pool?.end().catch(() => undefined)
  process.exit(0)
})
