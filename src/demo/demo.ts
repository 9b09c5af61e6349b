/**
 * `beds demo`, the main job: runs the engine on the configured backends
 * (the embedded default, or RabbitMQ + MariaDB with BEDS_ENV=dev), publishes
 * a realistic workload, kills the engine with SIGKILL mid-stream, restarts
 * it, proves nothing acknowledged was lost, rebuilds the read models from
 * the depot and prints them. Every check that fails makes it exit non-zero.
 */

import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as readline from "node:readline"
import cliProgress from "cli-progress"
import { Context, Effect, Exit, Layer, Scope } from "effect"
import * as AmqpClient from "../client/amqp.ts"
import type { BedsClientShape } from "../client/client.ts"
import * as EmbeddedClient from "../client/embedded.ts"
import type { LoadedConfig } from "../config/load.ts"
import { DepotStore } from "../depot/store.ts"
import { canonical } from "../internal/canonical.ts"
import { ReadModelStore } from "../readmodel/store.ts"
import { boot } from "../runtime/boot.ts"
import { Engine, type EngineShape } from "../runtime/engine.ts"
import { keyId } from "../template/template.ts"
import { fold } from "../topology/fold.ts"
import * as Amqp from "../transport/amqp.ts"
import type { Reply } from "../transport/protocol.ts"
import { type DemoCommand, workload } from "./workload.ts"

export interface DemoOptions {
  readonly root: string
  readonly loaded: LoadedConfig
  readonly accounts: number
  readonly commands: number
  readonly inFlight: number
  readonly keep: boolean
}

const out = (line = "") => process.stdout.write(`${line}\n`)
const fmt = (n: number, d = 0) => n.toLocaleString("en-US", { maximumFractionDigits: d, minimumFractionDigits: d })
const pct = (sorted: ReadonlyArray<number>, p: number) =>
  sorted.length === 0
    ? Number.NaN
    : (sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number)

/** A running engine the demo talks to, in this process. */
interface Session {
  readonly engine: EngineShape
  readonly depot: Context.Service.Shape<typeof DepotStore>
  readonly models: Context.Service.Shape<typeof ReadModelStore>
  readonly client: BedsClientShape
  readonly close: () => Promise<void>
}

const openSession = async (loaded: LoadedConfig, root: string, quiet: boolean): Promise<Session> => {
  const scope = await Effect.runPromise(Scope.make())
  const log = quiet ? () => undefined : (l: string) => out(`  ${l}`)
  const c = loaded.config
  const ctx = await Effect.runPromise(Layer.buildWithScope(boot(loaded, root, log), scope))
  const engine = Context.get(ctx, Engine)
  await Effect.runPromise(engine.settle())
  let client: BedsClientShape
  if (c.engine.transport === "amqp") {
    await Effect.runPromise(
      Layer.buildWithScope(
        Amqp.layer(Amqp.settingsFromConfig(c.amqp)).pipe(Layer.provide(Layer.succeed(Engine, engine))),
        scope,
      ),
    )
    const amqpClient = await AmqpClient.connect(c.amqp.url, { connectionName: "beds demo", prefix: c.amqp.prefix })
    await Effect.runPromise(
      Scope.addFinalizer(
        scope,
        Effect.promise(() => amqpClient.close()),
      ),
    )
    client = AmqpClient.fromClient(amqpClient)
  } else client = await Effect.runPromise(EmbeddedClient.make(engine))
  return {
    engine,
    depot: Context.get(ctx, DepotStore),
    models: Context.get(ctx, ReadModelStore),
    client,
    close: () => Effect.runPromise(Scope.close(scope, Exit.void)),
  }
}

interface Outcome {
  readonly command: DemoCommand
  readonly reply: Reply | { readonly ok: true; readonly ack: "none" }
  readonly ms: number
}

const publishAll = async (
  client: BedsClientShape,
  commands: ReadonlyArray<DemoCommand>,
  inFlight: number,
  label: string,
) => {
  const results: Array<Outcome> = new Array(commands.length)
  const bar = process.stdout.isTTY
    ? new cliProgress.SingleBar(
        { format: `  ${label.padEnd(22)} [{bar}] {value}/{total} {rate} cmd/s`, hideCursor: true },
        cliProgress.Presets.shades_classic,
      )
    : undefined
  bar?.start(commands.length, 0, { rate: 0 })
  const t0 = performance.now()
  let next = 0
  let done = 0
  let lastLine = t0
  const worker = async () => {
    while (next < commands.length) {
      const i = next++
      const c = commands[i] as DemoCommand
      const t = performance.now()
      const reply: Outcome["reply"] = await Effect.runPromise(
        client.publish(c.depot, c.type, c.key, c.payload, { id: c.id, ack: c.ack, expect: c.expect }).pipe(
          Effect.map((r) => ("offset" in r ? r : { ok: true as const, ack: "none" as const })),
          Effect.catchTags({
            PublishRejected: (e) => Effect.succeed({ ok: false as const, error: { code: e.code, message: e.message } }),
            PublishFailed: (e) => Effect.succeed({ ok: false as const, error: { code: e.code, message: e.message } }),
          }),
        ),
      )
      results[i] = { command: c, reply, ms: performance.now() - t }
      done++
      const now = performance.now()
      if (bar && done % 200 === 0) bar.update(done, { rate: fmt(done / ((now - t0) / 1000)) })
      if (!bar && now - lastLine > 2000) {
        lastLine = now
        out(`  ${label}: ${done}/${commands.length}`)
      }
    }
  }
  await Promise.all(Array.from({ length: inFlight }, worker))
  const seconds = (performance.now() - t0) / 1000
  bar?.update(commands.length, { rate: fmt(commands.length / seconds) })
  bar?.stop()
  return { results, seconds }
}

/** Starts `beds start` as a child process and feeds it JSON lines (embedded) or waits for `ready` (AMQP). */
const spawnEngine = (root: string, env: NodeJS.ProcessEnv) => {
  const bin = path.join(path.dirname(new URL(import.meta.url).pathname), "..", "..", "bin", "beds.js")
  const child = spawn(process.execPath, [bin, "--root", root, "start"], { env, stdio: ["pipe", "pipe", "pipe"] })
  const ready = new Promise<void>((resolve, reject) => {
    const rl = readline.createInterface({ input: child.stderr as NodeJS.ReadableStream })
    rl.on("line", (l) => {
      if (l.includes("ready")) resolve()
    })
    child.once("exit", (code) => reject(new Error(`the engine process exited (${code}) before it was ready`)))
  })
  return { child, ready }
}

const kill = (child: ChildProcess) =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve()
    child.once("exit", () => resolve())
    child.kill("SIGKILL")
  })

export const runDemo = async (o: DemoOptions): Promise<boolean> => {
  const failures: Array<string> = []
  const check = (ok: boolean, what: string) => {
    out(`  ${ok ? "✓" : "✗"} ${what}`)
    if (!ok) failures.push(what)
  }
  const started = performance.now()
  const run = `demo${Date.now().toString(36)}`
  const c = o.loaded.config
  const embedded = c.engine.transport === "embedded"
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "beds-demo-"))
  // The demo owns its storage: a fresh data folder, or a fresh `beds_demo` database.
  const loaded: LoadedConfig = {
    ...o.loaded,
    config: { ...c, engine: { ...c.engine, data_dir: dataDir }, mariadb: { ...c.mariadb, database: "beds_demo" } },
  }
  const childEnv = {
    ...process.env,
    BEDS__ENGINE__DATA_DIR: dataDir,
    BEDS__MARIADB__DATABASE: "beds_demo",
  }
  if (c.engine.depot === "mariadb" || c.engine.rel === "mariadb") {
    const mariadb = await import("mariadb")
    const conn = await mariadb.createConnection({
      host: c.mariadb.host,
      port: c.mariadb.port,
      user: c.mariadb.user,
      password: c.mariadb.password,
    })
    await conn.query("DROP DATABASE IF EXISTS beds_demo")
    await conn.end()
  }

  out(`BEDS demo — depot=${c.engine.depot}, read models=${c.engine.rel}, transport=${c.engine.transport}`)
  out(`\n1. Start-up`)
  let session = await openSession(loaded, o.root, false)

  out(`\n2. Workload: ${fmt(o.accounts)} accounts, ${fmt(o.commands)} commands, ${o.inFlight} in flight`)
  const commands = workload(run, o.accounts, o.commands)
  const { results, seconds } = await publishAll(session.client, commands, o.inFlight, "publishing")
  out(`  ${fmt(commands.length)} commands in ${fmt(seconds, 2)} s = ${fmt(commands.length / seconds)} commands/s`)

  out(`\n3. Latency per ack level (ms)`)
  out(`  ${"ack".padEnd(8)}${"count".padStart(8)}${"p50".padStart(9)}${"p99".padStart(9)}${"max".padStart(9)}`)
  for (const ack of ["none", "append", "full"] as const) {
    const ms = results
      .filter((r) => r.command.ack === ack && r.reply.ok)
      .map((r) => r.ms)
      .sort((a, b) => a - b)
    out(
      `  ${ack.padEnd(8)}${fmt(ms.length).padStart(8)}${fmt(pct(ms, 50), 2).padStart(9)}${fmt(pct(ms, 99), 2).padStart(9)}${fmt(ms[ms.length - 1] ?? Number.NaN, 2).padStart(9)}`,
    )
  }

  out(`\n4. Replies`)
  const byCode = new Map<string, number>()
  for (const r of results) {
    const k = r.reply.ok ? ("duplicate" in r.reply && r.reply.duplicate ? "ok (duplicate)" : "ok") : r.reply.error.code
    byCode.set(k, (byCode.get(k) ?? 0) + 1)
  }
  for (const [k, n] of [...byCode].sort()) out(`  ${k.padEnd(18)} ${fmt(n)}`)
  const wrong = results.filter((r) => {
    const e = r.command.expectation
    if (e === "ok" || e === "duplicate") return !r.reply.ok
    return r.reply.ok || r.reply.error.code !== e
  })
  check(
    wrong.length === 0,
    `every command got the reply it must get (${wrong.length} did not${wrong[0] ? `, e.g. ${JSON.stringify(wrong[0].reply).slice(0, 160)}` : ""})`,
  )
  // Per message_id: one original, every repeat answered with the same position.
  const positions = new Map<string, { id: string; originals: number }>()
  let inconsistent = 0
  for (const r of results)
    if (r.reply.ok && "id" in r.reply) {
      const seen = positions.get(r.command.id)
      if (seen === undefined) positions.set(r.command.id, { id: r.reply.id, originals: r.reply.duplicate ? 0 : 1 })
      else {
        if (seen.id !== r.reply.id) inconsistent++
        if (!r.reply.duplicate) seen.originals++
      }
    }
  check(
    inconsistent === 0 && [...positions.values()].every((p) => p.originals <= 1),
    `repeated message_ids were appended once and answered with the original position (${fmt([...byCode].find(([k]) => k === "ok (duplicate)")?.[1] ?? 0)} duplicates)`,
  )
  const fullOk = results.filter((r) => r.command.ack === "full" && r.reply.ok)
  check(
    fullOk.every((r) => "applied" in r.reply && (r.reply.applied ?? []).includes("balances")),
    `every full reply named the topologies that applied it (${fmt(fullOk.length)} full replies)`,
  )
  await session.close()

  out(`\n5. Crash: a separate engine process is killed with SIGKILL mid-stream`)
  const crashCommands = workload(`${run}k`, o.accounts, 20_000, 7)
    .slice(o.accounts)
    .filter((x) => x.expectation === "ok")
  const acked = new Map<string, { id: string; offset: number; partition: number }>()
  const proc = spawnEngine(o.root, childEnv)
  await proc.ready
  let sent = 0
  if (embedded) {
    const rl = readline.createInterface({ input: proc.child.stdout as NodeJS.ReadableStream })
    rl.on("line", (l) => {
      try {
        const r = JSON.parse(l) as Reply & { correlation_id?: string }
        if (r.ok && r.correlation_id)
          acked.set(r.correlation_id, { id: r.id, offset: r.offset, partition: r.partition })
      } catch {
        // A line torn by the kill: not acknowledged.
      }
    })
    const stdin = proc.child.stdin as NodeJS.WritableStream
    stdin.on("error", () => undefined)
    for (const x of crashCommands) {
      stdin.write(
        `${JSON.stringify({ depot: x.depot, type: x.type, key: x.key, payload: x.payload, message_id: x.id, ack: "append", correlation_id: x.id })}\n`,
      )
      sent++
    }
    const deadline = Date.now() + 5000
    while (acked.size < crashCommands.length / 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5))
  } else {
    const client = AmqpClient.fromClient(
      await AmqpClient.connect(c.amqp.url, { connectionName: "beds demo crash", prefix: c.amqp.prefix }),
    )
    let stop = false
    const worker = async () => {
      while (!stop && sent < crashCommands.length) {
        const x = crashCommands[sent++] as DemoCommand
        const r = await Effect.runPromise(
          Effect.result(
            client.publish(x.depot, x.type, x.key, x.payload, { id: x.id, ack: "append", timeoutMs: 3000 }),
          ),
        )
        if (r._tag === "Success" && "offset" in r.success)
          acked.set(x.id, { id: r.success.id, offset: r.success.offset, partition: r.success.partition })
      }
    }
    const workers = Array.from({ length: 64 }, worker)
    const deadline = Date.now() + 5000
    while (acked.size < 2000 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5))
    stop = true
    await kill(proc.child)
    await Promise.all(workers)
  }
  await kill(proc.child)
  out(`  sent ${fmt(sent)} commands, ${fmt(acked.size)} acknowledged before the kill`)

  out(`\n6. Restart and rebuild`)
  const t0 = performance.now()
  session = await openSession(loaded, o.root, true)
  const status = await Effect.runPromise(session.engine.status())
  const total = status.depots.reduce((n, d) => n + d.partitions.reduce((m, p) => m + p.head, 0), 0)
  const rebuildSeconds = (performance.now() - t0) / 1000
  out(
    `  restarted and caught up on ${fmt(total)} events in ${fmt(rebuildSeconds * 1000)} ms (${fmt(total / rebuildSeconds)} events/s${c.engine.rel === "memory" ? ", read models rebuilt from the depot" : ""})`,
  )
  // Every acknowledged command is in the depot exactly once: republishing it is answered as a duplicate at the same position.
  let lost = 0
  let moved = 0
  const ackedList = [...acked]
  await Promise.all(
    Array.from({ length: 32 }, async (_, w) => {
      for (let i = w; i < ackedList.length; i += 32) {
        const [messageId, pos] = ackedList[i] as [string, { id: string; offset: number; partition: number }]
        const x = crashCommands.find((y) => y.id === messageId) as DemoCommand
        const r = await Effect.runPromise(
          Effect.result(session.client.publish(x.depot, x.type, x.key, x.payload, { id: messageId })),
        )
        if (r._tag !== "Success" || !("duplicate" in r.success) || !r.success.duplicate) lost++
        else if (r.success.id !== pos.id) moved++
      }
    }),
  )
  check(
    lost === 0 && moved === 0,
    `all ${fmt(acked.size)} acknowledged commands survived the SIGKILL, each once, at its acknowledged position`,
  )

  const verify = await verifyFold(session)
  check(
    verify.equal,
    `every read model equals the fold of its depot (${fmt(verify.rows)} rows, ${fmt(verify.events)} events)${verify.differences.length ? `: ${verify.differences.join("; ")}` : ""}`,
  )

  out(`\n7. Final read model acc_balance (top 10 by balance)`)
  out(
    `  ${"account".padEnd(10)}${"owner".padEnd(16)}${"balance".padStart(14)}${"events".padStart(8)}  status  last event`,
  )
  for (const r of verify.top)
    out(
      `  ${String(r.account_id).padEnd(10)}${String(r.owner ?? "")
        .slice(0, 15)
        .padEnd(
          16,
        )}${fmt(Number(r.balance) / 100, 2).padStart(14)}${String(r.events).padStart(8)}  ${String(r.status).padEnd(7)} ${r.beds_last_id}`,
    )
  await session.close()
  if (!o.keep) fs.rmSync(dataDir, { recursive: true, force: true })

  out(
    `\nSummary: ${fmt(total)} events in the depot, ${fmt(verify.rows)} read-model rows, ${failures.length === 0 ? "all checks passed" : `${failures.length} check(s) FAILED`} in ${fmt((performance.now() - started) / 1000, 1)} s${o.keep ? ` (data kept in ${dataDir})` : ""}`,
  )
  return failures.length === 0
}

/** Recomputes every read model from the depot apart and compares it with the stored one. */
const verifyFold = async (session: Session) => {
  const decl = session.engine.declarations
  return Effect.runPromise(
    Effect.gen(function* () {
      const store = yield* DepotStore
      const models = yield* ReadModelStore
      let equal = true
      let rows = 0
      let events = 0
      let top: ReadonlyArray<Record<string, unknown>> = []
      const differences: Array<string> = []
      for (const t of decl.topologies) {
        const all = []
        for (const d of t.sources)
          for (let p = 0; p < d.partitions; p++) {
            let from = 0
            while (true) {
              const batch = yield* store.read(d.name, p, from, 10_000)
              all.push(...batch)
              from += batch.length
              if (batch.length < 10_000) break
            }
          }
        events += all.length
        const { state } = yield* fold(t, decl.templates, all)
        for (const name of t.readModels) {
          const tpl = decl.templates.find((x) => x.name === name)
          if (tpl === undefined) continue
          const stored = yield* models.scan(name)
          rows += stored.length
          const expected = state.get(name) ?? new Map()
          if (stored.length !== expected.size) {
            equal = false
            differences.push(`${name}: ${stored.length} rows stored, ${expected.size} in the fold`)
          }
          for (const r of stored) {
            const id = keyId(tpl.key.map((k) => r[k] as string))
            const want = expected.get(id)
            if (canonical(want) !== canonical(r)) {
              equal = false
              if (differences.length < 3)
                differences.push(`${name} ${id}: stored ${canonical(r)}, fold ${canonical(want)}`)
            }
          }
          if (name === "acc_balance")
            top = [...stored].sort((a, b) => Number(b.balance) - Number(a.balance)).slice(0, 10)
        }
      }
      return { equal, rows, events, top, differences }
    }).pipe(
      Effect.provide(
        Layer.mergeAll(Layer.succeed(DepotStore, session.depot), Layer.succeed(ReadModelStore, session.models)),
      ),
    ),
  )
}
