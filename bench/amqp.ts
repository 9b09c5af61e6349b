/**
 * AMQP benchmark: the real write path (client → RabbitMQ → engine process →
 * MariaDB, balances topology running) per ack level, beside baselines taken
 * in the same run on the same broker and database:
 *   (a) amqplib RPC with direct reply-to, no work;
 *   (b) the same RPC server doing a group-commit multi-row insert into MariaDB before replying;
 *   (c) publishing with confirms to a durable classic queue (for `none`).
 * Servers run as their own processes, as the engine does. Each measured run
 * follows WARM_UP calls that are not measured.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import * as readline from "node:readline"
import { fileURLToPath } from "node:url"
import * as amqp from "amqplib"
import * as mariadb from "mariadb"
import * as AmqpClient from "../src/client/amqp.ts"
import { fmt, percentile, progress } from "./support.ts"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const URL = "amqp://guest:guest@127.0.0.1:5672"

interface Rate {
  readonly perSec: number
  readonly p50: number
  readonly p99: number
}

const start = (cmd: string, args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = process.env) =>
  new Promise<ChildProcess>((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ["ignore", "pipe", "pipe"], cwd: root })
    const watch = (s: NodeJS.ReadableStream) =>
      readline.createInterface({ input: s }).on("line", (l) => {
        if (/\bready\b/.test(l)) resolve(child)
      })
    watch(child.stdout as NodeJS.ReadableStream)
    watch(child.stderr as NodeJS.ReadableStream)
    child.once("exit", (code) => reject(new Error(`${cmd} ${args.join(" ")} exited (${code}) before it was ready`)))
  })

const stop = (child: ChildProcess) =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null) return resolve()
    child.once("exit", () => resolve())
    child.kill("SIGTERM")
    setTimeout(() => child.kill("SIGKILL"), 15_000).unref()
  })

/** Peak resident memory of a process, from /proc (MB). */
const peakRss = (pid: number | undefined): number => {
  if (pid === undefined) return Number.NaN
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"))
    return m ? Number(m[1]) / 1024 : Number.NaN
  } catch {
    return Number.NaN
  }
}

/** Calls made, unmeasured, before each measured run: every contender starts warm (JIT, pools, caches). */
const WARM_UP = 5_000

/** Keeps `inFlight` calls going for `n` calls, after WARM_UP calls not measured; latency per call. */
const drive = async (label: string, n: number, inFlight: number, call: (i: number) => Promise<void>): Promise<Rate> => {
  const warm = Math.min(WARM_UP, Math.floor(n / 10))
  let next = 0
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < warm) await call(n + next++)
    }),
  )
  const lat: Array<number> = new Array(n)
  const bar = progress(label, n)
  next = 0
  let done = 0
  const t0 = performance.now()
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < n) {
        const i = next++
        const t = performance.now()
        await call(i)
        lat[i] = performance.now() - t
        if (++done % 1000 === 0) bar.update(done)
      }
    }),
  )
  bar.stop()
  const seconds = (performance.now() - t0) / 1000
  const sorted = lat.sort((a, b) => a - b)
  return { perSec: n / seconds, p50: percentile(sorted, 50), p99: percentile(sorted, 99) }
}

/** Calls at a fixed rate for `seconds`; latency per call. */
const paced = async (
  label: string,
  rate: number,
  seconds: number,
  call: (i: number) => Promise<void>,
): Promise<Rate> => {
  const n = Math.max(1, Math.floor(rate * seconds))
  const lat: Array<number> = []
  const bar = progress(label, n)
  const t0 = performance.now()
  const calls: Array<Promise<void>> = []
  for (let i = 0; i < n; i++) {
    const due = t0 + (i / rate) * 1000
    const wait = due - performance.now()
    if (wait > 1) await new Promise((r) => setTimeout(r, wait))
    const t = performance.now()
    calls.push(call(i).then(() => void lat.push(performance.now() - t)))
    if (i % 1000 === 0) bar.update(i)
  }
  await Promise.all(calls)
  bar.stop()
  const sorted = lat.sort((a, b) => a - b)
  return { perSec: n / ((performance.now() - t0) / 1000), p50: percentile(sorted, 50), p99: percentile(sorted, 99) }
}

/** A raw RPC client over direct reply-to. */
const rpcClient = async (queue: string) => {
  const conn = await amqp.connect(URL, { noDelay: true })
  const ch = await conn.createChannel()
  const waiting = new Map<string, () => void>()
  await ch.consume(
    "amq.rabbitmq.reply-to",
    (m) => {
      if (m) waiting.get(m.properties.correlationId)?.()
    },
    { noAck: true },
  )
  let seq = 0
  const call = (i: number) =>
    new Promise<void>((resolve) => {
      const id = String(seq++)
      waiting.set(id, () => {
        waiting.delete(id)
        resolve()
      })
      ch.sendToQueue(queue, Buffer.from(JSON.stringify({ amount: 1 + (i % 100) })), {
        correlationId: id,
        replyTo: "amq.rabbitmq.reply-to",
        messageId: randomUUID(),
        headers: { key: `acc-${i % 10_000}` },
      })
    })
  return { call, close: () => conn.close() }
}

export interface AmqpResult {
  readonly echo: Rate
  readonly insert: Rate
  readonly confirms: Rate
  readonly beds: { none: Rate; append: Rate; full: Rate; fullHalf: Rate }
  readonly engineRssMb: number
}

export const runAmqp = async (n: number, inFlight: number): Promise<AmqpResult> => {
  // (a) and (b)
  const baseline = async (mode: "echo" | "insert") => {
    const q = `bench.rpc.${mode}.${process.pid}`
    const server = await start(process.execPath, [path.join(root, "bench/servers/rpc.ts"), mode, q])
    const client = await rpcClient(q)
    try {
      return await drive(`RPC ${mode}`, n, inFlight, client.call)
    } finally {
      await client.close()
      await stop(server)
    }
  }
  const echo = await baseline("echo")
  const insert = await baseline("insert")

  // (c) publish with confirms to a durable classic queue
  const confirms = await (async () => {
    const conn = await amqp.connect(URL, { noDelay: true })
    const ch = await conn.createConfirmChannel()
    const q = `bench.confirm.${process.pid}`
    await ch.assertQueue(q, { durable: true })
    try {
      return await drive(
        "publish + confirm",
        n,
        inFlight,
        (i) =>
          new Promise<void>((resolve, reject) =>
            ch.sendToQueue(
              q,
              Buffer.from(JSON.stringify({ amount: i })),
              { persistent: true, messageId: randomUUID() },
              (err) => (err ? reject(err) : resolve()),
            ),
          ),
      )
    } finally {
      await ch.deleteQueue(q)
      await conn.close()
    }
  })()

  // BEDS: an engine process on RabbitMQ + MariaDB.
  const admin = await mariadb.createConnection({ host: "127.0.0.1", user: "root" })
  await admin.query("DROP DATABASE IF EXISTS beds_bench_amqp")
  await admin.end()
  const engine = await start(process.execPath, [path.join(root, "bin/beds.js"), "start"], {
    ...process.env,
    BEDS_ENV: "dev",
    BEDS__MARIADB__DATABASE: "beds_bench_amqp",
    // The contract's comparison: the accounts depot with the balances topology only
    // (BENCH_NO_TOPOLOGY: none, to see what the projection costs).
    BEDS__ROLES__BENCH: `{ depots = ["accounts"], topologies = [${process.env.BENCH_NO_TOPOLOGY ? "" : '"balances"'}] }`,
    BEDS__ENGINE__ROLE: "bench",
  })
  const client = await AmqpClient.connect(URL, { connectionName: "beds bench" })
  try {
    const run = (ack: "none" | "append" | "full") => (i: number) =>
      client
        .publish("accounts", "Deposited", `acc-${i % 10_000}`, { amount: 1 + (i % 100) }, { ack, id: randomUUID() })
        .then(() => undefined)
    const none = await drive("BEDS none", n, inFlight, run("none"))
    const append = await drive("BEDS append", n, inFlight, run("append"))
    const full = await drive("BEDS full", n, inFlight, run("full"))
    const fullHalf = await paced("BEDS full at half peak", full.perSec / 2, 8, run("full"))
    return { echo, insert, confirms, beds: { none, append, full, fullHalf }, engineRssMb: peakRss(engine.pid) }
  } finally {
    await client.close()
    await stop(engine)
  }
}

export const printAmqp = (r: AmqpResult) => {
  const row = (name: string, x: Rate, vs?: { base: Rate; target: string }) =>
    console.log(
      `  ${name.padEnd(44)}${fmt(x.perSec).padStart(9)}/s  p50 ${fmt(x.p50, 2).padStart(7)} ms  p99 ${fmt(x.p99, 2).padStart(7)} ms${vs ? `  ${fmt((x.perSec / vs.base.perSec) * 100, 1)} % (${vs.target})` : ""}`,
    )
  console.log(`\nAMQP write path (engine process on RabbitMQ + MariaDB, balances topology)`)
  row("(a) raw RPC, direct reply-to, no work", r.echo)
  row("(b) raw RPC + group-commit INSERT", r.insert)
  row("(c) raw publish with confirms", r.confirms)
  row("BEDS none", r.beds.none, { base: r.confirms, target: "of (c); target >= 80 %" })
  row("BEDS append", r.beds.append, { base: r.insert, target: "of (b); target >= 70 %" })
  row("BEDS full", r.beds.full, { base: r.insert, target: "of (b); target >= 50 %" })
  row("BEDS full at half its peak rate", r.beds.fullHalf)
  console.log(
    `  p99 of full at half peak / p99 of (b): ${fmt(r.beds.fullHalf.p99 / r.insert.p99, 2)} (target <= 2); engine peak RSS ${fmt(r.engineRssMb)} MB`,
  )
}
