/**
 * AMQP benchmark: the real write path (client → RabbitMQ → engine process →
 * MariaDB, balances topology running) per ack level, beside baselines taken
 * in the same run on the same broker and database:
 *   (a) amqplib RPC with direct reply-to, no work;
 *   (b) the same RPC server doing a group-commit multi-row insert into MariaDB before replying;
 *   (c) publishing with confirms to a durable classic queue (for `none`),
 *       the message a client of the wire contract sends for a `none`
 *       command: the broker's cost grows with the properties it handles;
 *   (c0) the same with message_id alone, to show what the properties cost;
 *   (d) (c) with a consumer process that acks every message: not a
 *       target's baseline, but what the broker alone costs BEDS's `none`.
 * `none` is driven twice: at a second engine process that serves the
 * accounts depot alone (the write path the target is about: the issue ties
 * the balances topology to `full` only), and at the engine with balances,
 * whose projecting competes for the same two cores.
 * Servers run as their own processes, as the engine does. Every contender
 * first makes WARM_UP calls that are not measured; then the contenders take
 * turns over several rounds, and each ratio is BEDS over its baseline within
 * one round; each round ends with `full` paced at half the rate it reached in
 * that round, whose p99 is set against (b)'s of the round.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import * as readline from "node:readline"
import { fileURLToPath } from "node:url"
import * as amqp from "amqplib"
import * as Broker from "../src/broker/topology.ts"
import * as AmqpClient from "../src/client/amqp.ts"
import { dropDatabase, fmt, percentile, progress } from "./support.ts"

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

/** CPU time a process has used so far, in µs, from /proc (Linux; NaN elsewhere). */
const cpuMicros = (pid: number | undefined): number => {
  if (pid === undefined) return Number.NaN
  try {
    // Fields 14 and 15 (utime, stime) after the command name, in clock ticks of 1/100 s.
    const fields = (fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1] ?? "").split(" ")
    return (Number(fields[11]) + Number(fields[12])) * 10_000
  } catch {
    return Number.NaN
  }
}

/** The first process whose command name is `name` (beam.smp, mariadbd), if this machine shows them. */
const pidNamed = (name: string): number | undefined => {
  try {
    for (const entry of fs.readdirSync("/proc")) {
      if (!/^\d+$/.test(entry)) continue
      try {
        if (fs.readFileSync(`/proc/${entry}/comm`, "utf8").trim() === name) return Number(entry)
      } catch {}
    }
  } catch {}
  return undefined
}

/** Where the CPU of a contender's calls went, per call, in µs: its run and what it left to finish. */
export interface CpuPerCall {
  readonly broker: number
  /** The process answering: an RPC server, the sink, an engine; 0 for (c), which has none. */
  readonly server: number
  readonly mariadb: number
  /** This process: the clients and the bench's own loop. */
  readonly client: number
}

/** Seconds of each round's paced run of `full` at half its peak. */
const HALF_PEAK_S = 6

/** Calls made, unmeasured, before the measured rounds: every contender starts warm (JIT, pools, caches). */
const WARM_UP = 5_000

/** One measured run: its rate and percentiles, and what pooling runs needs. */
interface Measured extends Rate {
  readonly calls: number
  readonly seconds: number
  readonly lat: ReadonlyArray<number>
}

/** Makes calls 0..n-1 with `inFlight` of them pending at a time; `after(i, ms)` follows each. */
const keepInFlight = (
  n: number,
  inFlight: number,
  call: (i: number) => Promise<void>,
  after: (i: number, ms: number) => void = () => undefined,
) => {
  let next = 0
  return Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < n) {
        const i = next++
        const t = performance.now()
        await call(i)
        after(i, performance.now() - t)
      }
    }),
  )
}

const warm = (call: (i: number) => Promise<void>, inFlight: number) =>
  keepInFlight(WARM_UP, inFlight, (i) => call(1_000_000_000 + i))

/** Keeps `inFlight` calls going for `n` calls; latency per call. */
const drive = async (
  label: string,
  n: number,
  inFlight: number,
  call: (i: number) => Promise<void>,
): Promise<Measured> => {
  const lat: Array<number> = new Array(n)
  const bar = progress(label, n)
  let done = 0
  const t0 = performance.now()
  await keepInFlight(n, inFlight, call, (i, ms) => {
    lat[i] = ms
    if (++done % 1000 === 0) bar.update(done)
  })
  bar.stop()
  const seconds = (performance.now() - t0) / 1000
  const sorted = [...lat].sort((a, b) => a - b)
  return { perSec: n / seconds, p50: percentile(sorted, 50), p99: percentile(sorted, 99), calls: n, seconds, lat }
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
  readonly rounds: number
  readonly echo: Rate
  readonly insert: Rate
  readonly confirms: Rate
  readonly bare: Rate
  readonly consumed: Rate
  /** `fullHalf`: one paced run per round, at half the rate `full` reached in that round. */
  readonly beds: { noneDepot: Rate; none: Rate; append: Rate; full: Rate; fullHalf: ReadonlyArray<Rate> }
  /** Per round, BEDS over its baseline of the same round. */
  readonly ratios: {
    noneDepot: ReadonlyArray<number>
    none: ReadonlyArray<number>
    noneOfBare: ReadonlyArray<number>
    noneOfConsumed: ReadonlyArray<number>
    append: ReadonlyArray<number>
    full: ReadonlyArray<number>
    /** p99 of `full` at half peak over the p99 of (b), in the same round. */
    fullHalfP99: ReadonlyArray<number>
  }
  /** Per contender, over all its rounds; empty where /proc cannot be read. */
  readonly cpu: ReadonlyArray<{ readonly label: string; readonly perCall: CpuPerCall }>
  readonly engineRssMb: number
  /** Of the second engine, which serves the depot alone. */
  readonly depotEngineRssMb: number
}

/** Broker names of the engine that serves the depot alone: its own, so that nothing else consumes them. */
const DEPOT_ONLY_PREFIX = "bench-depot"

type Contender = "echo" | "insert" | "confirms" | "bare" | "consumed" | "noneDepot" | "none" | "append" | "full"

/** A contender's calls of every round: rate over all of them, latency percentiles over all of them. */
const pooled = (
  runs: ReadonlyArray<Rate & { readonly calls: number; readonly seconds: number; readonly lat: ReadonlyArray<number> }>,
): Rate => {
  const lat = runs.flatMap((r) => r.lat).sort((a, b) => a - b)
  const calls = runs.reduce((n, r) => n + r.calls, 0)
  const seconds = runs.reduce((n, r) => n + r.seconds, 0)
  return { perSec: calls / seconds, p50: percentile(lat, 50), p99: percentile(lat, 99) }
}

/**
 * The contenders run one after another in `rounds` rounds of n / rounds
 * calls each, so that a slow spell of this shared machine hits baselines
 * and BEDS alike; each ratio is taken within a round.
 */
export const runAmqp = async (n: number, inFlight: number, rounds = 3): Promise<AmqpResult> => {
  const servers: Array<ChildProcess> = []
  const closers: Array<() => Promise<unknown>> = []
  try {
    // (a) and (b): RPC servers of their own, as the engine is.
    const rpc = async (mode: "echo" | "insert") => {
      const q = `bench.rpc.${mode}.${process.pid}`
      const server = await start(process.execPath, [path.join(root, "bench/servers/rpc.ts"), mode, q])
      servers.push(server)
      const client = await rpcClient(q)
      closers.push(client.close)
      return { call: client.call, server }
    }
    const echo = await rpc("echo")
    const insert = await rpc("insert")

    // (c) publish with confirms to a durable classic queue: the message a client of the wire
    // contract sends for a `none` command (type, content_type, the x-beds-ack header), so that
    // the broker handles the same properties as under BEDS; (c0) with message_id alone.
    const conn = await amqp.connect(URL, { noDelay: true })
    closers.push(() => conn.close())
    const confirmChannel = await conn.createConfirmChannel()
    const q = `bench.confirm.${process.pid}`
    await confirmChannel.assertQueue(q, { durable: true })
    closers.unshift(() => confirmChannel.deleteQueue(q))
    const command: amqp.Options.Publish = {
      persistent: true,
      type: "Deposited",
      contentType: "application/json",
      headers: { "x-beds-ack": "none" },
    }
    const publishConfirmed = (queue: string, i: number, properties: amqp.Options.Publish) =>
      new Promise<void>((resolve, reject) =>
        confirmChannel.sendToQueue(
          queue,
          Buffer.from(JSON.stringify({ amount: 1 + (i % 100) })),
          { ...properties, messageId: randomUUID() },
          (err) => (err ? reject(err) : resolve()),
        ),
      )
    const confirms = (i: number) => publishConfirmed(q, i, command)
    const bare = (i: number) => publishConfirmed(q, i, { persistent: true })

    // (d) the command's message into a queue a consumer process drains
    const sink = `bench.sink.${process.pid}`
    const sinkServer = await start(process.execPath, [path.join(root, "bench/servers/rpc.ts"), "sink", sink])
    servers.push(sinkServer)
    closers.unshift(() => confirmChannel.deleteQueue(sink))
    const consumed = (i: number) => publishConfirmed(sink, i, command)

    // BEDS: engine processes on RabbitMQ + MariaDB, each with a database and broker names of its own.
    const engineAt = async (database: string, prefix: string, topologies: ReadonlyArray<string>) => {
      await dropDatabase(database)
      const child = await start(process.execPath, [path.join(root, "bin/beds.js"), "start"], {
        ...process.env,
        BEDS_ENV: "dev",
        BEDS__MARIADB__DATABASE: database,
        BEDS__AMQP__PREFIX: prefix,
        BEDS__ROLES__BENCH: `{ depots = ["accounts"], topologies = [${topologies.map((t) => `"${t}"`).join(", ")}] }`,
        BEDS__ENGINE__ROLE: "bench",
      })
      servers.push(child)
      const client = await AmqpClient.connect(URL, { prefix, connectionName: `beds bench (${prefix})` })
      closers.unshift(() => client.close())
      const call = (ack: "none" | "append" | "full") => (i: number) =>
        client
          .publish("accounts", "Deposited", `acc-${i % 10_000}`, { amount: 1 + (i % 100) }, { ack, id: randomUUID() })
          .then(() => undefined)
      const queues = Array.from({ length: 4 }, (_, p) => `${prefix}.cmd.accounts.${p}`)
      return { child, call, queues }
    }
    // The contract's comparison: the accounts depot with the balances topology only
    // (BENCH_NO_TOPOLOGY: none, to see what the projection costs).
    const main = await engineAt("beds_bench_amqp", "beds", process.env.BENCH_NO_TOPOLOGY ? [] : ["balances"])
    // The write path alone: the same depot, served by an engine with no topology.
    const depotOnly = await engineAt("beds_bench_amqp_depot", DEPOT_ONLY_PREFIX, [])
    // `none` is answered by RabbitMQ's confirm, before the engine has taken the commands: wait
    // until it has, so that its work does not fall into the next contender's time.
    const queuesDrained = async (queues: ReadonlyArray<string>) => {
      const ch = await conn.createChannel()
      try {
        for (let i = 0; i < 600; i++) {
          let waiting = 0
          for (const queue of queues) waiting += (await ch.checkQueue(queue)).messageCount
          if (waiting === 0) break
          await new Promise((r) => setTimeout(r, 100))
        }
      } finally {
        await ch.close()
      }
      // And let the live streams commit what they lingered over.
      await new Promise((r) => setTimeout(r, 300))
    }

    const calls: Record<Contender, (i: number) => Promise<void>> = {
      echo: echo.call,
      insert: insert.call,
      confirms,
      bare,
      consumed,
      noneDepot: depotOnly.call("none"),
      none: main.call("none"),
      append: main.call("append"),
      full: main.call("full"),
    }
    const labels: Record<Contender, string> = {
      echo: "RPC echo",
      insert: "RPC insert",
      confirms: "publish + confirm",
      bare: "publish + confirm, bare message",
      consumed: "publish + confirm + consume",
      noneDepot: "BEDS none, depot only",
      none: "BEDS none",
      append: "BEDS append",
      full: "BEDS full",
    }
    const order: ReadonlyArray<Contender> = [
      "echo",
      "insert",
      "confirms",
      "bare",
      "consumed",
      "noneDepot",
      "none",
      "append",
      "full",
    ]
    const per = Math.max(1, Math.floor(n / rounds))
    // What a contender leaves behind is cleared before the next one starts, so that none of it
    // is done in another's time: (c)'s messages are purged (the broker then drops them from disk),
    // and confirmed is not yet consumed, so the consumers of `none` and (d) finish.
    const clear = async (c: Contender) => {
      if (c === "confirms" || c === "bare") {
        await confirmChannel.purgeQueue(q)
        await new Promise((r) => setTimeout(r, 300))
      }
      if (c === "noneDepot") await queuesDrained(depotOnly.queues)
      if (c === "none") await queuesDrained(main.queues)
      if (c === "consumed") await queuesDrained([sink])
    }
    for (const c of order) {
      await warm(calls[c], inFlight)
      await clear(c)
    }
    const runs = Object.fromEntries(order.map((c) => [c, [] as Array<Measured>])) as Record<Contender, Array<Measured>>
    // `full` at half the peak it reached in the same round, so that its p99 meets (b)'s of that
    // round: a stall of the disk (hundreds of ms, now and then, on this kind of machine) then
    // sets one round's p99, not the verdict.
    const halves: Array<Rate> = []
    const serverOf: Record<Contender, number | undefined> = {
      echo: echo.server.pid,
      insert: insert.server.pid,
      confirms: undefined,
      bare: undefined,
      consumed: sinkServer.pid,
      noneDepot: depotOnly.child.pid,
      none: main.child.pid,
      append: main.child.pid,
      full: main.child.pid,
    }
    const broker = pidNamed("beam.smp")
    const mariadbd = pidNamed("mariadbd")
    const cpuNow = (c: Contender) => {
      const server = serverOf[c]
      return {
        broker: cpuMicros(broker),
        server: server === undefined ? 0 : cpuMicros(server),
        mariadb: cpuMicros(mariadbd),
        client: cpuMicros(process.pid),
      }
    }
    const cpuSpent = Object.fromEntries(
      order.map((c) => [c, { broker: 0, server: 0, mariadb: 0, client: 0 }]),
    ) as Record<Contender, { -readonly [K in keyof CpuPerCall]: number }>
    for (let r = 0; r < rounds; r++) {
      for (const c of order) {
        const before = cpuNow(c)
        runs[c].push(await drive(`${labels[c]} (round ${r + 1}/${rounds})`, per, inFlight, calls[c]))
        await clear(c)
        const after = cpuNow(c)
        for (const k of ["broker", "server", "mariadb", "client"] as const) cpuSpent[c][k] += after[k] - before[k]
      }
      const peak = (runs.full[r] as Measured).perSec
      halves.push(await paced(`BEDS full at half peak (round ${r + 1}/${rounds})`, peak / 2, HALF_PEAK_S, calls.full))
    }
    const full = pooled(runs.full)
    const ratio = (x: Contender, base: Contender) =>
      runs[x].map((m, i) => m.perSec / (runs[base][i] as Measured).perSec)
    return {
      rounds,
      echo: pooled(runs.echo),
      insert: pooled(runs.insert),
      confirms: pooled(runs.confirms),
      bare: pooled(runs.bare),
      consumed: pooled(runs.consumed),
      beds: {
        noneDepot: pooled(runs.noneDepot),
        none: pooled(runs.none),
        append: pooled(runs.append),
        full,
        fullHalf: halves,
      },
      ratios: {
        noneDepot: ratio("noneDepot", "confirms"),
        none: ratio("none", "confirms"),
        noneOfBare: ratio("none", "bare"),
        noneOfConsumed: ratio("none", "consumed"),
        append: ratio("append", "insert"),
        full: ratio("full", "insert"),
        fullHalfP99: halves.map((h, i) => h.p99 / (runs.insert[i] as Measured).p99),
      },
      cpu: Number.isNaN(cpuMicros(process.pid))
        ? []
        : order.map((c) => {
            const calls = per * rounds
            const spent = cpuSpent[c]
            return {
              label: labels[c],
              perCall: {
                broker: spent.broker / calls,
                server: spent.server / calls,
                mariadb: spent.mariadb / calls,
                client: spent.client / calls,
              },
            }
          }),
      engineRssMb: peakRss(main.child.pid),
      depotEngineRssMb: peakRss(depotOnly.child.pid),
    }
  } finally {
    for (const close of closers) await close().catch(() => undefined)
    for (const server of servers) await stop(server)
    await Broker.remove(URL, [{ name: "accounts", partitions: 4 }], {
      prefix: DEPOT_ONLY_PREFIX,
      deadLetters: true,
    }).catch(() => undefined)
    for (const database of ["beds_bench_amqp", "beds_bench_amqp_depot", "beds_bench_rpc"])
      await dropDatabase(database).catch(() => undefined)
  }
}

export const printAmqp = (r: AmqpResult) => {
  const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number
  const pct = (x: number) => `${fmt(x * 100, 1)} %`
  const row = (name: string, x: Rate, vs?: { ratios: ReadonlyArray<number>; target: string }) =>
    console.log(
      `  ${name.padEnd(44)}${fmt(x.perSec).padStart(9)}/s  p50 ${fmt(x.p50, 2).padStart(7)} ms  p99 ${fmt(x.p99, 2).padStart(7)} ms${
        vs ? `  ${pct(median(vs.ratios))} ${vs.target}; rounds ${vs.ratios.map(pct).join(", ")}` : ""
      }`,
    )
  console.log(
    `\nAMQP write path (engine processes on RabbitMQ + MariaDB, with the balances topology unless said otherwise; ${r.rounds} interleaved rounds, median ratio of the rounds)`,
  )
  row("(a) raw RPC, direct reply-to, no work", r.echo)
  row("(b) raw RPC + group-commit INSERT", r.insert)
  row("(c) raw publish with confirms", r.confirms)
  row("(c0) the same, message_id alone", r.bare)
  row("(d) raw publish with confirms, a consumer acks", r.consumed)
  /** A further ratio of the row above, to another baseline. */
  const alsoOf = (baseline: string, ratios: ReadonlyArray<number>) =>
    console.log(
      `  ${"".padEnd(44)}${pct(median(ratios)).padStart(9)} of ${baseline}; rounds ${ratios.map(pct).join(", ")}`,
    )
  row("BEDS none, depot only (the write path)", r.beds.noneDepot, {
    ratios: r.ratios.noneDepot,
    target: "of (c), target >= 80 %",
  })
  row("BEDS none, with balances", r.beds.none, { ratios: r.ratios.none, target: "of (c)" })
  alsoOf("(c0)", r.ratios.noneOfBare)
  alsoOf("(d)", r.ratios.noneOfConsumed)
  row("BEDS append", r.beds.append, { ratios: r.ratios.append, target: "of (b), target >= 70 %" })
  row("BEDS full", r.beds.full, { ratios: r.ratios.full, target: "of (b), target >= 50 %" })
  for (const [i, h] of r.beds.fullHalf.entries()) row(`BEDS full at half its peak rate (round ${i + 1})`, h)
  const times = (x: number) => `${fmt(x, 2)}x`
  console.log(
    `  p99 of full at half peak / p99 of (b): ${times(median(r.ratios.fullHalfP99))} (target <= 2x); rounds ${r.ratios.fullHalfP99.map(times).join(", ")}`,
  )
  if (r.cpu.length > 0) {
    console.log("  CPU per call, µs, run and drain (broker + server + MariaDB + client = total):")
    for (const { label, perCall: x } of r.cpu)
      console.log(
        `    ${label.padEnd(32)}${[x.broker, x.server, x.mariadb, x.client].map((v) => fmt(v).padStart(5)).join(" +")} = ${fmt(x.broker + x.server + x.mariadb + x.client).padStart(5)}`,
      )
  }
  console.log(`  engine peak RSS ${fmt(r.engineRssMb)} MB (with balances), ${fmt(r.depotEngineRssMb)} MB (depot only)`)
}
