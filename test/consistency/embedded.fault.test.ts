/**
 * Consistency of the embedded engine under faults, judged by the history
 * checker:
 *
 *  - in process: several clients against an engine over durable stores
 *    (memory, or the file depot reopened at every restart), with crashes
 *    (the engine's scope torn down mid-flight, then a restart on the same
 *    stores) and injected store failures: appends that fail before or after
 *    they took effect, read-model commits that fail before or after;
 *  - as a child process (`beds start`, JSON lines on stdio, file depot):
 *    SIGKILL at random points, then a restart on the same data folder.
 *
 * `npm test` runs the CI profile; `npm run test:soak` the long one.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as readline from "node:readline"
import { Effect, Fiber, References, type Scope } from "effect"
import fc from "fast-check"
import { afterAll, beforeAll, describe, it } from "vitest"
import * as FileDepot from "../../src/depot/file.ts"
import * as MemoryDepot from "../../src/depot/memory.ts"
import type { DepotStoreShape } from "../../src/depot/store.ts"
import { StoreError } from "../../src/errors.ts"
import * as MemoryModels from "../../src/readmodel/memory.ts"
import type { ReadModelStoreShape } from "../../src/readmodel/store.ts"
import * as DeclarationsLoader from "../../src/runtime/declarations.ts"
import type { Declarations, EngineShape } from "../../src/runtime/engine.ts"
import { defaultOptions } from "../../src/runtime/engine.ts"
import type { FinalState } from "../../src/testing/checker.ts"
import { snapshot, withEngine } from "../../src/testing/harness.ts"
import type { Reply } from "../../src/transport/protocol.ts"
import {
  count,
  type Fault,
  type Outcome,
  planArbitrary,
  type ReadAfter,
  replay,
  replayParameters,
  runPlan,
  runs,
  soak,
  summary,
  tally,
  verdict,
  type WireCommand,
} from "../support/consistency.ts"
import { type EngineProcess, kill, projectRoot, startEngine } from "../support/engine-process.ts"

let declarations: Declarations
beforeAll(async () => {
  declarations = await Effect.runPromise(DeclarationsLoader.load(projectRoot))
})

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), "beds-consistency-"))

// ---------------------------------------------------------------------------
// In process

type InProcessFault =
  | "crash"
  | "depot-transient"
  | "depot-ambiguous"
  | "depot-fatal"
  | "commit-fail"
  | "commit-fail-after"
  | "commit-fatal"

/** Store failures armed by the fault schedule, each consumed by the next call it applies to. */
interface Armed {
  depotTransient: number
  depotAmbiguous: number
  depotFatal: number
  commitFail: number
  commitFailAfter: number
  commitFatal: number
}

const disarmed = (): Armed => ({
  depotTransient: 0,
  depotAmbiguous: 0,
  depotFatal: 0,
  commitFail: 0,
  commitFailAfter: 0,
  commitFatal: 0,
})

const injected = (retryable: boolean, what: string) =>
  new StoreError({ code: retryable ? "STORE_UNAVAILABLE" : "STORE_FAILED", message: `injected: ${what}`, retryable })

const faultyDepot = (store: DepotStoreShape, armed: Armed): DepotStoreShape => ({
  ...store,
  append: (depot, partition, requests) =>
    Effect.suspend(() => {
      if (armed.depotFatal > 0) {
        armed.depotFatal--
        return Effect.fail(injected(false, "append refused"))
      }
      if (armed.depotTransient > 0) {
        armed.depotTransient--
        return Effect.fail(injected(true, "append lost before it took effect"))
      }
      if (armed.depotAmbiguous > 0) {
        armed.depotAmbiguous--
        // The commit happened but its answer was lost, as when a connection drops during COMMIT.
        return Effect.andThen(
          store.append(depot, partition, requests),
          Effect.fail(injected(true, "append took effect, answer lost")),
        )
      }
      return store.append(depot, partition, requests)
    }),
})

const faultyModels = (models: ReadModelStoreShape, armed: Armed): ReadModelStoreShape => ({
  ...models,
  commit: (cp, next, writes) =>
    Effect.suspend(() => {
      if (armed.commitFatal > 0) {
        armed.commitFatal--
        return Effect.fail(injected(false, "read-model commit refused"))
      }
      if (armed.commitFail > 0) {
        armed.commitFail--
        return Effect.fail(injected(true, "read-model commit lost before it took effect"))
      }
      if (armed.commitFailAfter > 0) {
        armed.commitFailAfter--
        return Effect.andThen(
          models.commit(cp, next, writes),
          Effect.fail(injected(true, "read-model commit took effect, answer lost")),
        )
      }
      return models.commit(cp, next, writes)
    }),
})

interface Life {
  readonly engine: EngineShape
  /** The depot without injected faults, for the final state and the replay. */
  readonly raw: DepotStoreShape
  readonly abort: AbortController
  readonly fiber: Fiber.Fiber<unknown, unknown>
}

/**
 * An engine that can die and come back on the same stores. The read models
 * (memory) outlive every life, as a database would; the depot is either one
 * memory store for all lives or the file depot, reopened by each life.
 */
class InProcessEngine {
  private life: Life | undefined
  private waiters: Array<() => void> = []
  readonly armed = disarmed()
  private readonly models: ReadModelStoreShape

  private readonly openDepot: Effect.Effect<DepotStoreShape, StoreError, Scope.Scope>
  readonly rawModels: ReadModelStoreShape
  constructor(openDepot: Effect.Effect<DepotStoreShape, StoreError, Scope.Scope>, rawModels: ReadModelStoreShape) {
    this.openDepot = openDepot
    this.rawModels = rawModels
    this.models = faultyModels(rawModels, this.armed)
  }

  async start(): Promise<void> {
    const abort = new AbortController()
    const { openDepot, models, armed } = this
    let started: (l: Omit<Life, "fiber" | "abort">) => void = () => undefined
    const ready = new Promise<Omit<Life, "fiber" | "abort">>((r) => {
      started = r
    })
    // Injected failures make the engine log errors by design; the verdict says what matters.
    const quiet = Effect.provideService(References.MinimumLogLevel, "None")
    const fiber = Effect.runFork(
      Effect.scoped(
        Effect.gen(function* () {
          const raw = yield* openDepot
          yield* withEngine(
            { depot: faultyDepot(raw, armed), models },
            declarations,
            (engine) =>
              Effect.andThen(
                Effect.sync(() => started({ engine, raw })),
                Effect.never,
              ),
            defaultOptions,
          )
        }),
      ).pipe(quiet),
    )
    const ended = new Promise<never>((_, reject) =>
      fiber.addObserver((exit) => {
        abort.abort()
        reject(new Error(`the engine ended: ${exit._tag === "Failure" ? String(exit.cause) : "done"}`))
      }),
    )
    ended.catch(() => undefined)
    const life = await Promise.race([ready, ended])
    this.life = { ...life, abort, fiber }
    for (const w of this.waiters.splice(0)) w()
  }

  /** Tears the engine down wherever it is, as a crash would; what it held in memory is gone. */
  async crash(): Promise<void> {
    const life = this.life
    this.life = undefined
    if (life === undefined) return
    life.abort.abort()
    await Effect.runPromise(Fiber.interrupt(life.fiber))
  }

  private async current(timeoutMs: number): Promise<Life | undefined> {
    if (this.life !== undefined) return this.life
    const timer = sleep(timeoutMs)
    await Promise.race([new Promise<void>((r) => this.waiters.push(r)), timer])
    return this.life
  }

  readonly send = async (_client: number, c: WireCommand): Promise<Outcome> => {
    const life = await this.current(5000)
    if (life === undefined) return { confirmed: false, failure: "no engine running" }
    try {
      const reply = await Effect.runPromise(
        life.engine.publish("accounts", c.type, c.key, c.payload, { id: c.messageId, ack: c.ack, expect: c.expect }),
        { signal: life.abort.signal },
      )
      return { reply, confirmed: true }
    } catch {
      return { confirmed: false, failure: "the engine crashed" }
    }
  }

  readonly readAfter = async (c: WireCommand): Promise<ReadAfter> => {
    const templates = [
      "acc_balance",
      "ldg_account",
      ...(c.type === "Deposited" || c.type === "Withdrawn" ? ["ovd_state"] : []),
    ]
    const out: Record<string, Record<string, Record<string, unknown> | undefined>> = {}
    for (const t of templates) {
      const rows = await Effect.runPromise(this.rawModels.load(t, [[c.key]]))
      out[t] = { [c.key]: rows.get(c.key) }
    }
    return out
  }

  async inject(f: Fault<InProcessFault>): Promise<void> {
    const a = this.armed
    switch (f.kind) {
      case "crash":
        await this.crash()
        await sleep(f.arg % 50)
        await this.start()
        return
      case "depot-transient":
        a.depotTransient += 1 + (f.arg % 3)
        return
      case "depot-ambiguous":
        a.depotAmbiguous += 1
        return
      case "depot-fatal":
        a.depotFatal += 1
        return
      case "commit-fail":
        a.commitFail += 1 + (f.arg % 2)
        return
      case "commit-fail-after":
        a.commitFailAfter += 1
        return
      case "commit-fatal":
        a.commitFatal += 1
        return
    }
  }

  /** Lets the last life catch up, then takes the final state and replays the depot on fresh read models. */
  async final(): Promise<FinalState> {
    Object.assign(this.armed, disarmed())
    if (this.life === undefined) await this.start()
    const life = this.life as Life
    const models = this.rawModels
    try {
      return await Effect.runPromise(
        Effect.gen(function* () {
          // Twice: settle reads every depot's head up front, and derived events may still be appended after that.
          const settle = life.engine.settle()
          const settled = yield* Effect.result(Effect.timeout(settle, "30 seconds"))
          if (settled._tag === "Failure") {
            const status = yield* life.engine.status()
            return yield* Effect.die(
              new Error(
                `the engine did not settle in 30 s: ${JSON.stringify(status.streams.filter((s) => s.lag !== 0 || s.state !== "running"))}`,
              ),
            )
          }
          const state = yield* snapshot({ depot: life.raw, models }, declarations)
          const replayed = yield* replay(life.raw, declarations)
          return { ...state, replayed }
        }),
      )
    } finally {
      await this.crash()
    }
  }
}

const inProcessFaults: ReadonlyArray<InProcessFault> = [
  "crash",
  "crash",
  "crash",
  "depot-transient",
  "depot-ambiguous",
  "depot-fatal",
  "commit-fail",
  "commit-fail-after",
  "commit-fatal",
]

// ---------------------------------------------------------------------------
// Child process over stdio

/** `beds start` with the embedded transport on a data folder, restarted after each kill. */
class ChildEngine {
  private proc: EngineProcess | undefined
  private readonly pending = new Map<string, (o: Outcome) => void>()
  private waiters: Array<() => void> = []
  private correlation = 0
  lives = 0

  private readonly dataDir: string
  constructor(dataDir: string) {
    this.dataDir = dataDir
  }

  async start(): Promise<void> {
    const proc = await startEngine({ BEDS_ENV: "", BEDS__ENGINE__DATA_DIR: this.dataDir })
    this.lives++
    readline.createInterface({ input: proc.child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      let reply: (Reply & { correlation_id?: unknown }) | undefined
      try {
        reply = JSON.parse(line) as Reply & { correlation_id?: unknown }
      } catch {
        return
      }
      const id = reply?.correlation_id
      if (typeof id !== "string") return
      const resolve = this.pending.get(id)
      if (resolve === undefined) return
      this.pending.delete(id)
      const { correlation_id: _, ...body } = reply
      resolve({ reply: body as Reply, confirmed: true })
    })
    void proc.exited.then(() => {
      if (this.proc === proc) this.proc = undefined
      this.dropPending("the engine process died")
    })
    this.proc = proc
    for (const w of this.waiters.splice(0)) w()
  }

  private dropPending(why: string) {
    for (const [id, resolve] of this.pending) {
      this.pending.delete(id)
      resolve({ confirmed: false, failure: why })
    }
  }

  async kill(): Promise<void> {
    const proc = this.proc
    this.proc = undefined
    if (proc !== undefined) await kill(proc)
    this.dropPending("the engine process was killed")
  }

  /** Ends stdin: the engine finishes what it took, stops cleanly and exits 0. */
  async close(): Promise<void> {
    const proc = this.proc
    this.proc = undefined
    if (proc === undefined) return
    ;(proc.child.stdin as NodeJS.WritableStream).end()
    const code = await Promise.race([proc.exited, sleep(30_000).then(() => "timeout" as const)])
    if (code !== 0) {
      await kill(proc)
      throw new Error(
        `the engine did not stop cleanly on end of input (${code}):\n${proc.stderr.slice(-20).join("\n")}`,
      )
    }
  }

  readonly send = async (_client: number, c: WireCommand): Promise<Outcome> => {
    if (this.proc === undefined) await Promise.race([new Promise<void>((r) => this.waiters.push(r)), sleep(20_000)])
    const proc = this.proc
    if (proc === undefined) return { confirmed: false, failure: "no engine running" }
    const id = `r${this.correlation++}`
    const answer = new Promise<Outcome>((resolve) => {
      this.pending.set(id, resolve)
      setTimeout(() => {
        if (this.pending.delete(id)) resolve({ confirmed: false, failure: "no reply within 15 s" })
      }, 15_000)
    })
    ;(proc.child.stdin as NodeJS.WritableStream).write(
      `${JSON.stringify({ depot: "accounts", type: c.type, key: c.key, payload: c.payload, message_id: c.messageId, ack: c.ack, expect: c.expect, correlation_id: id })}\n`,
    )
    return answer
  }

  async inject(f: Fault<"sigkill">): Promise<void> {
    await this.kill()
    await sleep(f.arg % 300)
    await this.start()
  }
}

/** The data folder as a restarted embedded engine holds it: its depot, its rebuilt read models, and a replay. */
const finalOfDataDir = (dataDir: string): Promise<FinalState> =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function* () {
        const depot = yield* FileDepot.make(dataDir)
        const models = yield* MemoryModels.make
        const state = yield* withEngine({ depot, models }, declarations, (engine) =>
          Effect.andThen(Effect.timeout(engine.settle(), "30 seconds"), snapshot({ depot, models }, declarations)),
        )
        const replayed = yield* replay(depot, declarations)
        return { ...state, replayed }
      }),
    ),
  )

// ---------------------------------------------------------------------------

const inProcess = tally()
const child = tally()
afterAll(() => {
  console.log(summary("embedded in-process", inProcess))
  console.log(summary("embedded child process (stdio)", child))
})

describe("consistency of the embedded engine under faults", () => {
  const inProcessRuns = runs(180, 3000)
  it(`in process: ${inProcessRuns} generated histories with crashes and store failures`, async () => {
    await fc.assert(
      fc.asyncProperty(
        planArbitrary({
          clients: { min: 2, max: 4 },
          steps: { min: 5, max: soak ? 60 : 30 },
          faults: inProcessFaults,
          minFaults: 1,
          maxFaults: 5,
        }),
        fc.constantFrom<"memory" | "file">("memory", "memory", "file"),
        async (plan, store) => {
          const dir = store === "file" ? tmp() : undefined
          try {
            const memory = MemoryDepot.make()
            const engine = new InProcessEngine(
              dir === undefined ? Effect.succeed(memory) : FileDepot.make(dir),
              await Effect.runPromise(MemoryModels.make),
            )
            await engine.start()
            const run = await runPlan(plan, `h${inProcess.histories}`, {
              transport: engine,
              inject: (f) => engine.inject(f),
              retries: 20,
              retryDelayMs: 5,
            })
            const final = await engine.final()
            count(inProcess, run, final.events.length)
            const fatal = run.faults.some((f) => f.kind === "depot-fatal")
            await verdict(`in-process engine (${store} depot)`, declarations, run, final, {
              allowedErrors: new Set(fatal ? ["UNAVAILABLE"] : []),
            })
          } finally {
            if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
          }
        },
      ),
      { numRuns: inProcessRuns, ...replayParameters() },
    )
  }, 3_600_000)

  const childRuns = runs(10, 120)
  it(`child process over stdio: ${childRuns} generated histories with SIGKILLs`, async () => {
    await fc.assert(
      fc.asyncProperty(
        // A history costs seconds here: shrinking is bounded so a failure is reported in minutes.
        fc.limitShrink(
          planArbitrary({
            clients: { min: 2, max: 4 },
            steps: { min: 10, max: soak ? 60 : 30 },
            faults: ["sigkill"] as const,
            minFaults: 1,
            maxFaults: soak ? 4 : 2,
          }),
          30,
        ),
        async (plan) => {
          const dir = tmp()
          const engine = new ChildEngine(dir)
          try {
            await engine.start()
            const run = await runPlan(plan, `s${child.histories}`, {
              transport: engine,
              inject: (f) => engine.inject(f),
              retries: 10,
              retryDelayMs: 20,
            })
            await engine.close()
            const final = await finalOfDataDir(dir)
            count(child, run, final.events.length)
            await verdict("engine child process (stdio, file depot)", declarations, run, final)
          } finally {
            await engine.kill()
            fs.rmSync(dir, { recursive: true, force: true })
          }
        },
      ),
      { numRuns: childRuns, ...replayParameters() },
    )
  }, 3_600_000)
})
