/**
 * Replay on MariaDB: the shared properties (properties.ts) on the production
 * stores, then `beds replay` as a separate process beside an engine that
 * keeps taking `full` commands — killed with SIGKILL and run again, locked
 * out by another replay — snapshots in their own tables, and the start-up
 * version step. Throw-away database beds_t_replay_<pid>.
 */
import { spawn } from "node:child_process"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { Context, Effect, Exit, Fiber, Layer, Scope } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import { balances, step } from "../../projections/balances.ts"
import { load } from "../../src/config/load.ts"
import { partitionOf } from "../../src/depot/depot.ts"
import type { AppendRequest } from "../../src/depot/event.ts"
import * as MariaDbDepot from "../../src/depot/mariadb.ts"
import * as MariaDb from "../../src/mariadb/client.ts"
import * as MariaDbModels from "../../src/readmodel/mariadb.ts"
import { parseBound } from "../../src/replay/bounds.ts"
import { rebuildChangedTopologies } from "../../src/replay/startup.ts"
import type { Declarations, EngineShape } from "../../src/runtime/engine.ts"
import { loadTemplates } from "../../src/template/load.ts"
import { withEngine } from "../support/engine.ts"
import { depotEvents, expectReadModelsEqualFold, type Stores } from "../support/engine-properties.ts"
import { dropDatabase, mariaDbAvailable, mariaDbSettings } from "../support/services.ts"
import { MARK, markLive, replayFailure, replayProperties, runReplay } from "./properties.ts"

const available = await mariaDbAvailable()
const settings = mariaDbSettings("replay")
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..")
const node = path.join(root, "node_modules", "node", "bin", "node")
const bin = path.join(root, "bin", "beds.js")
const cliEnv = {
  BEDS__ENGINE__DEPOT: "mariadb",
  BEDS__ENGINE__REL: "mariadb",
  BEDS__MARIADB__DATABASE: settings.database,
  BEDS__MARIADB__HOST: settings.host,
  BEDS__MARIADB__PORT: String(settings.port),
}

interface Cli {
  readonly exited: Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }>
  /** Resolves once the replay printed its first progress line (the process is past start-up). */
  readonly replaying: Promise<void>
  readonly kill: () => void
}

/** `beds replay ...` as a child process on the test database. */
const cli = (...args: Array<string>): Cli => {
  const child = spawn(node, [bin, "--root", root, "replay", ...args], {
    env: { ...process.env, ...cliEnv, BEDS_ENV: "" },
    stdio: ["ignore", "pipe", "pipe"],
  })
  let stdout = ""
  let stderr = ""
  let started: () => void = () => undefined
  const replaying = new Promise<void>((r) => {
    started = r
  })
  child.stdout.on("data", (d) => (stdout += d))
  child.stderr.on("data", (d) => {
    stderr += d
    if (stderr.includes("replay balances:")) started()
  })
  return {
    replaying,
    exited: new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal, stdout, stderr }))),
    kill: () => child.kill("SIGKILL"),
  }
}

describe.skipIf(!available)("replay (MariaDB)", () => {
  let declarations: Declarations
  let scope: Scope.Closeable
  let db: MariaDb.MariaDbShape
  let ctx: Context.Context<MariaDb.MariaDb>

  beforeAll(async () => {
    const templates = await Effect.runPromise(loadTemplates("templates"))
    declarations = { depots: [accounts], topologies: [balances], templates }
    scope = await Effect.runPromise(Scope.make())
    ctx = await Effect.runPromise(Layer.buildWithScope(MariaDb.layer(settings), scope))
    db = Context.get(ctx, MariaDb.MariaDb)
  })
  afterAll(async () => {
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
    await dropDatabase(settings)
  })

  /** Every table of the test database dropped (shadows, system tables and all), fresh store instances. */
  const fresh = async (): Promise<Stores> => {
    const tables: Array<{ name: string }> = await db.pool.query(
      "SELECT TABLE_NAME AS name FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()",
    )
    if (tables.length > 0) await db.pool.query(`DROP TABLE ${tables.map((t) => `\`${t.name}\``).join(", ")}`)
    return Effect.runPromise(
      Effect.gen(function* () {
        return { depot: yield* MariaDbDepot.make(), models: yield* MariaDbModels.make }
      }).pipe(Effect.provideContext(ctx)),
    )
  }

  replayProperties("mariadb", fresh, () => declarations, { scratch: 8, killed: 12, reads: 5, verify: 6 })

  /** Opens `keys` accounts through the engine, appends the rest straight into the depot (fast), lets the engine project all. */
  const fill = (stores: Stores, engine: EngineShape, n: number, keys = 200) =>
    Effect.gen(function* () {
      for (let i = 0; i < keys; i++)
        yield* engine.publish("accounts", "Opened", `acc-${i}`, { owner: `o${i}` }, { id: `open-${i}` })
      const now = Date.now()
      for (let i = keys; i < n; i += 2000) {
        const byPartition = new Map<number, Array<AppendRequest>>()
        for (let j = i; j < Math.min(n, i + 2000); j++) {
          const key = `acc-${j % keys}`
          const p = partitionOf(key, accounts.partitions)
          const list = byPartition.get(p) ?? []
          list.push({
            messageId: `f-${j}`,
            type: j % 5 === 0 ? "Withdrawn" : "Deposited",
            key,
            payload: { amount: 1 + (j % 7) },
            time: now,
          })
          byPartition.set(p, list)
        }
        for (const [p, requests] of byPartition) yield* stores.depot.append("accounts", p, requests)
      }
      yield* engine.settle()
    })

  it("`beds replay` in another process swaps the rebuilt model in while full commands keep coming; every full reply stays truthful", async () => {
    const stores = await fresh()
    await Effect.runPromise(
      withEngine(stores, declarations, (engine) =>
        Effect.gen(function* () {
          yield* fill(stores, engine, 20_000)
          yield* markLive(stores.models)
          const problems: Array<string> = []
          let running = true
          let replies = 0
          const publishers = Effect.forEach(
            Array.from({ length: 8 }, (_, i) => `acc-${i}`),
            (key) =>
              Effect.gen(function* () {
                for (let i = 0; running; i++) {
                  const reply = yield* engine.publish(
                    "accounts",
                    "Deposited",
                    key,
                    { amount: 1 },
                    { id: `live-${key}-${i}`, ack: "full" },
                  )
                  if (!reply.ok) {
                    problems.push(JSON.stringify(reply))
                    continue
                  }
                  replies++
                  const row = (yield* stores.models.load("acc_balance", [[key]])).get(key)
                  const events = ((row?.events as number) ?? -1) % MARK
                  if (events !== reply.version) problems.push(`${key} v${reply.version}: row says ${events}`)
                }
              }),
            { concurrency: "unbounded", discard: true },
          )
          const fiber = yield* Effect.forkChild(publishers)
          const result = yield* Effect.promise(() => cli("balances", "--json", "--batch", "500").exited)
          running = false
          yield* Fiber.join(fiber)
          expect(result.code, result.stderr).toBe(0)
          const summary = JSON.parse(result.stdout)
          expect(summary).toMatchObject({ ok: true, mode: "swap", topology: "balances" })
          expect(summary.events).toBeGreaterThanOrEqual(20_000)
          expect(replies).toBeGreaterThan(0)
          expect(problems).toEqual([])
          yield* engine.settle()
          const rows = yield* stores.models.scan("acc_balance")
          expect(rows.every((r) => (r.events as number) < MARK)).toBe(true)
          yield* expectReadModelsEqualFold(stores, declarations)
        }),
      ),
    )
  })

  it("SIGKILLed at random moments, `beds replay` run again resumes and gives the same model", async () => {
    const stores = await fresh()
    await Effect.runPromise(
      withEngine(stores, declarations, (engine) =>
        Effect.gen(function* () {
          yield* fill(stores, engine, 60_000)
          yield* markLive(stores.models)
          // Killed at random moments after start-up: while building, catching up, fenced or swapping.
          const delays = Array.from({ length: 4 }, () => Math.floor(Math.random() * 1500))
          let finished = false
          for (const delay of delays) {
            const run = cli("balances", "--batch", "200")
            yield* Effect.promise(() => Promise.race([run.replaying, run.exited]))
            yield* Effect.sleep(delay)
            run.kill()
            const killed = yield* Effect.promise(() => run.exited)
            expect([null, 0], killed.stderr).toContain(killed.code)
            // A run that got to the end before its kill swapped the rebuilt (unmarked) model in.
            if (killed.code === 0) finished = true
          }
          const last = yield* Effect.promise(
            () => cli("balances", "--json", "--verify", "--force", "--batch", "200").exited,
          )
          expect(last.code, last.stderr).toBe(0)
          const summary = JSON.parse(last.stdout)
          expect(summary.mode).toBe("swap")
          expect(summary.verify.equal).toBe(finished)
          const rows = yield* stores.models.scan("acc_balance")
          expect(rows.every((r) => (r.events as number) < MARK)).toBe(true)
          yield* expectReadModelsEqualFold(stores, declarations)
          // The engine still projects onto the swapped-in tables.
          const r = yield* engine.publish(
            "accounts",
            "Deposited",
            "acc-1",
            { amount: 1 },
            { id: "after-kills", ack: "full" },
          )
          expect(r.ok).toBe(true)
          yield* expectReadModelsEqualFold(stores, declarations)
        }),
      ),
    )
  })

  it("a second replay of the same topology fails clearly (REPLAY_RUNNING, exit 1) and names host and pid", async () => {
    const stores = await fresh()
    await Effect.runPromise(
      withEngine(stores, declarations, (engine) =>
        Effect.scoped(
          Effect.gen(function* () {
            yield* fill(stores, engine, 500, 10)
            const ops = stores.models.replay
            if (ops === undefined) throw new Error("no replay ops")
            const got = yield* ops.lock("balances", {
              host: "holder-host",
              pid: 31337,
              since: Date.parse("2026-01-01T00:00:00Z"),
            })
            expect(got.acquired).toBe(true)
            const result = yield* Effect.promise(() => cli("balances", "--json").exited)
            expect(result.code).toBe(1)
            const out = JSON.parse(result.stdout)
            expect(out.error.code).toBe("REPLAY_RUNNING")
            expect(out.error.message).toContain("holder-host")
            expect(out.error.message).toContain("31337")
            expect(out.error.details.holder).toMatchObject({ host: "holder-host", pid: 31337 })
          }),
        ),
      ),
    )
    // Released with its scope: the lock is free again.
    const again = await Effect.runPromise(runReplay(stores, declarations, { topology: "balances" }))
    expect(again.mode).toBe("swap")
  })

  it("bad input gets stable codes and exit code 2", async () => {
    await fresh()
    const cases: Array<[Array<string>, string]> = [
      [["nope"], "UNKNOWN_TOPOLOGY"],
      [["balances", "--from", "9", "--to", "3"], "BAD_RANGE"],
      [["balances", "--to", "tomorrow"], "BAD_BOUND"],
      [["balances", "--to", "3", "--verify"], "BAD_OPTIONS"],
    ]
    for (const [args, code] of cases) {
      const r = await cli(...args, "--json").exited
      expect(r.code, r.stderr).toBe(2)
      expect(JSON.parse(r.stdout).error.code).toBe(code)
    }
  })

  it("--to builds <table>__at_<offset> beside the live table, equal to the fold up to that offset", async () => {
    const stores = await fresh()
    await Effect.runPromise(
      withEngine(stores, declarations, (engine) =>
        Effect.gen(function* () {
          yield* fill(stores, engine, 3000, 50)
          const summary = yield* runReplay(stores, declarations, {
            topology: "balances",
            to: parseBound("400", "--to") as never,
          })
          expect(summary.tables).toEqual([{ template: "acc_balance", table: "acc_balance__at_400" }])
          const events = yield* depotEvents(stores.depot, declarations)
          const want = new Map<string, ReturnType<typeof step>>()
          for (const e of events) if (e.offset <= 400) want.set(e.key, step(want.get(e.key), e.key, e.type, e.payload))
          const rows: Array<Record<string, unknown>> = yield* Effect.promise(() =>
            db.pool.query(
              "SELECT account_id, owner, balance, events, status FROM acc_balance__at_400 ORDER BY account_id",
            ),
          )
          expect(new Map(rows.map((r) => [r.account_id as string, { ...r }]))).toEqual(
            new Map([...want].map(([k, v]) => [k, { ...v }])),
          )
          // Live table untouched, and a bad range refused.
          yield* expectReadModelsEqualFold(stores, declarations)
          const e = yield* replayFailure(stores, declarations, {
            topology: "balances",
            to: parseBound("0:99999", "--to") as never,
          })
          expect(e.code).toBe("OFFSET_PAST_HEAD")
        }),
      ),
    )
  })

  it('start-up: versions are recorded, a changed one refuses under "flag" and is rebuilt blue/green with --rebuild', async () => {
    const stores = await fresh()
    await Effect.runPromise(withEngine(stores, declarations, (engine) => fill(stores, engine, 2000, 20)))
    const loaded = (mode: "auto" | "flag") =>
      Effect.runPromise(
        load({
          dir: path.join(root, "config"),
          env: { ...cliEnv, BEDS__TOPOLOGY__REBUILD_ON_VERSION_CHANGE: mode },
        }),
      )
    const quiet = { log: () => undefined }
    const first = await Effect.runPromise(rebuildChangedTopologies(await loaded("flag"), root, quiet))
    expect(first.find((r) => r.topology === "balances")?.action).toBe("recorded")
    const ops = stores.models.replay
    if (ops === undefined) throw new Error("no replay ops")
    // As if the rows had been built by an older version of balances.
    await Effect.runPromise(ops.setVersion("balances", 0))
    await Effect.runPromise(markLive(stores.models))
    const refused = await Effect.runPromise(Effect.flip(rebuildChangedTopologies(await loaded("flag"), root, quiet)))
    expect(refused).toMatchObject({ code: "VERSION_CHANGED" })
    expect((refused as { message: string }).message).toContain("beds replay balances")
    expect((refused as { message: string }).message).toContain("beds start --rebuild")
    const rebuilt = await Effect.runPromise(
      rebuildChangedTopologies(await loaded("flag"), root, { ...quiet, rebuild: true }),
    )
    expect(rebuilt.find((r) => r.topology === "balances")).toMatchObject({ action: "rebuilt", previous: 0, version: 1 })
    expect((await Effect.runPromise(ops.record("balances")))?.version).toBe(1)
    const rows = await Effect.runPromise(stores.models.scan("acc_balance"))
    expect(rows.every((r) => (r.events as number) < MARK)).toBe(true)
    const again = await Effect.runPromise(rebuildChangedTopologies(await loaded("auto"), root, quiet))
    expect(again.find((r) => r.topology === "balances")?.action).toBe("same")
  })
})
