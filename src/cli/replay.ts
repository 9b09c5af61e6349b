/**
 * `beds replay <topology>`: rebuilds a topology's read models beside the live
 * ones and swaps them in atomically while the engine keeps serving (see
 * src/replay/replay.ts for how), or with --from/--to builds a snapshot as of
 * an offset or a time, left beside the live models.
 *
 * With MariaDB read models it works beside a running engine, from any host.
 * With memory read models (the embedded default) the models live inside one
 * process: this verb then boots the engine here, rebuilds beside it and
 * swaps, which shows that a replay reproduces the model but changes nothing
 * a separately running engine serves.
 *
 * Exit codes: 0 done; 1 refused or failed (VERIFY_MISMATCH, REPLAY_RUNNING,
 * REPLAY_HALTED, REPLAY_FAILED, LIVE_MOVED, a store error); 2 bad usage or configuration
 * (UNKNOWN_TOPOLOGY, BAD_BOUND, BAD_RANGE, OFFSET_PAST_HEAD,
 * TIME_BEFORE_FIRST_EVENT, BAD_OPTIONS, REPLAY_UNSUPPORTED); 3 a service is
 * unreachable; 130 interrupted (progress is kept: run it again to resume).
 */
import cliProgress from "cli-progress"
import { Command } from "commander"
import { Cause, Context, Effect, Exit, Fiber, Layer } from "effect"
import { DepotStore } from "../depot/store.ts"
import type { DepotWriterShape } from "../depot/writer.ts"
import { ReadModelStore } from "../readmodel/store.ts"
import { ReplayError, USAGE_CODES } from "../replay/error.ts"
import { findTopology, parseBound, type ReplayProgress, type ReplaySummary, replay } from "../replay/replay.ts"
import { replayStoresLayer } from "../replay/stores.ts"
import { boot } from "../runtime/boot.ts"
import * as Declarations from "../runtime/declarations.ts"
import { Engine } from "../runtime/engine.ts"
import { configOf, rootOf } from "./context.ts"
import { ExitCode } from "./run.ts"

interface Options {
  readonly from?: string
  readonly to?: string
  readonly verify?: boolean
  readonly force?: boolean
  readonly json?: boolean
  readonly batch?: string
}

const num = (n: number, digits = 0) =>
  Number.isFinite(n)
    ? n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits })
    : "n/a"

const eta = (s: number | undefined) =>
  s === undefined || !Number.isFinite(s) ? "?" : s < 90 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`

/** A bar on a terminal; a line every few seconds when stderr is a file or a pipe. */
const progressView = () => {
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        format: "replay {topology} {phase} [{bar}] {percentage}% {value}/{total} events, {rate} events/s, eta {left}",
        hideCursor: true,
        stream: process.stderr,
        etaBuffer: 20,
      },
      cliProgress.Presets.shades_classic,
    )
    let started = false
    return {
      update: (p: ReplayProgress) => {
        const payload = { topology: p.topology, phase: p.phase.padEnd(8), rate: num(p.perSec), left: eta(p.etaSeconds) }
        if (!started) {
          bar.start(Math.max(1, p.total), p.done, payload)
          started = true
        }
        bar.setTotal(Math.max(1, p.total))
        bar.update(p.done, payload)
      },
      stop: () => started && bar.stop(),
    }
  }
  let last = 0
  let lastPhase = ""
  return {
    update: (p: ReplayProgress) => {
      const now = performance.now()
      if (now - last < 2000 && p.phase === lastPhase) return
      last = now
      lastPhase = p.phase
      const pct = p.total > 0 ? ` (${num((100 * p.done) / p.total)}%)` : ""
      process.stderr.write(
        `replay ${p.topology}: ${p.phase} ${num(p.done)}/${num(p.total)} events${pct}, ${num(p.perSec)} events/s, eta ${eta(p.etaSeconds)}\n`,
      )
    },
    stop: () => undefined,
  }
}

const printSummary = (s: ReplaySummary) => {
  const out: Array<string> = []
  out.push(
    s.mode === "swap"
      ? `replay ${s.topology}@v${s.version}: rebuilt and swapped in`
      : `replay ${s.topology}@v${s.version}: snapshot ${s.variant} built beside the live models (not swapped)`,
  )
  out.push(
    `  events   ${num(s.events)} in ${num(s.seconds, 2)} s (${num(s.perSec)} events/s), ${s.rounds} round(s)${s.resumed ? ", resumed from an earlier run" : ""}${s.droppedStale ? ", a stale copy from another version was dropped first" : ""}`,
  )
  out.push(
    `  tables   ${s.tables.map((t) => (t.table === t.template ? t.table : `${t.template} -> ${t.table}`)).join(", ")}`,
  )
  out.push(
    `  ${s.mode === "swap" ? "live at " : "range   "} ${s.positions.map((p) => (s.mode === "swap" ? `${p.depot}/${p.partition}@${p.to}` : `${p.depot}/${p.partition} [${p.from}, ${p.to})`)).join(" ")}`,
  )
  if (s.mode === "swap") out.push(`  paused   live commits held back ${num(s.pausedMs)} ms for the swap`)
  if (s.verify !== undefined)
    out.push(
      `  verify   ${s.verify.tables.map((t) => `${t.template}: ${t.differing === 0 ? "equal" : `${t.differing} row(s) differ`}`).join(", ")}${s.verify.forced ? " (swapped anyway: --force)" : ""}`,
    )
  if (s.derived.existing + s.derived.appended + s.derived.skipped > 0)
    out.push(
      `  derived  ${s.derived.existing} already in the depot, ${s.derived.appended} appended${s.derived.skipped > 0 ? `, ${s.derived.skipped} not appended (snapshot)` : ""}`,
    )
  if (s.parked.length > 0)
    out.push(
      `  parked   ${s.parked.length} event(s): ${s.parked
        .slice(0, 5)
        .map((p) => p.id)
        .join(", ")}`,
    )
  process.stdout.write(`${out.join("\n")}\n`)
}

const printDifferences = (details: unknown) => {
  const tables = (details as { tables?: Array<{ template: string; differing: number; first: Array<unknown> }> })?.tables
  for (const t of tables ?? []) {
    if (t.differing === 0) continue
    process.stderr.write(`  ${t.template}: ${t.differing} differing row(s); first:\n`)
    for (const d of t.first as Array<{ key: ReadonlyArray<unknown>; live: unknown; copy: unknown }>)
      process.stderr.write(
        `    key ${JSON.stringify(d.key.length === 1 ? d.key[0] : d.key)}\n      live:    ${JSON.stringify(d.live)}\n      rebuilt: ${JSON.stringify(d.copy)}\n`,
      )
  }
}

const exitCodeOf = (e: unknown): number => {
  const tag = (e as { _tag?: string })?._tag
  const code = (e as { code?: string })?.code
  if (e instanceof ReplayError) return USAGE_CODES.has(e.code) ? ExitCode.usage : ExitCode.failed
  if (tag === "ConfigError" || tag === "DeclarationError") return ExitCode.usage
  if (code === "STORE_UNAVAILABLE") return ExitCode.unavailable
  return ExitCode.failed
}

export const replayCommand = () =>
  new Command("replay")
    .description(
      "rebuild a topology's read models beside the live ones and swap them in atomically (or, with --from/--to, build a snapshot)",
    )
    .argument("<topology>", "the topology to rebuild")
    .option(
      "--from <offset|time>",
      "snapshot from this offset or time (inclusive): 1234, 0:120,3:98, 2026-01-05T12:00:00Z or @<epoch ms>",
    )
    .option("--to <offset|time>", "snapshot as of this offset or time (inclusive), into <table>__at_<to>; not swapped")
    .option("--verify", "compare the rebuilt model with the live one before swapping; refuse to swap when they differ")
    .option("--force", "with --verify: swap even when they differ")
    .option("--json", "print the summary (or the error) as JSON on stdout")
    .option(
      "--batch <events>",
      "events per batch: larger coalesces more events per row, smaller holds less in memory",
      "100000",
    )
    .action(async (name: string, opts: Options, cmd: Command) => {
      const root = rootOf(cmd)
      const view = progressView()
      const program = Effect.gen(function* () {
        const loaded = yield* configOf(root)
        const bound = (text: string | undefined, option: string) => {
          if (text === undefined) return Effect.succeed(undefined)
          const b = parseBound(text, option)
          return b instanceof ReplayError ? Effect.fail(b) : Effect.succeed(b)
        }
        const batch = Number(opts.batch ?? 10_000)
        if (!Number.isInteger(batch) || batch < 1)
          return yield* new ReplayError({
            code: "BAD_OPTIONS",
            message: `--batch ${opts.batch}: give a positive integer.`,
          })
        const from = yield* bound(opts.from, "--from")
        const to = yield* bound(opts.to, "--to")
        const declarations = yield* Declarations.load(root)
        const known = findTopology(declarations, name)
        if (known instanceof ReplayError) return yield* known
        const run = (writer?: DepotWriterShape) =>
          replay(declarations, {
            topology: name,
            from,
            to,
            verify: opts.verify,
            force: opts.force,
            batchMax: batch,
            onProgress: view.update,
            writer,
          })
        // Memory read models exist only inside an engine: a topology with any of them is replayed beside an
        // engine booted here; the others work on their stores directly.
        const engineConfig = loaded.config.engine
        const onMemory = known.readModels.some(
          (m) =>
            (declarations.templates.find((t) => t.name === m)?.backend === "rec"
              ? engineConfig.rec
              : engineConfig.rel) === "memory",
        )
        if (!onMemory) return yield* run().pipe(Effect.provide(replayStoresLayer(loaded, root, declarations)))
        return yield* Effect.scoped(
          Effect.gen(function* () {
            const ctx = yield* Layer.build(boot(loaded, root, (line) => process.stderr.write(`${line}\n`)))
            const engine = Context.get(ctx, Engine)
            yield* engine.settle()
            return yield* run(engine.writer).pipe(
              Effect.provideService(DepotStore, Context.get(ctx, DepotStore)),
              Effect.provideService(ReadModelStore, Context.get(ctx, ReadModelStore)),
            )
          }),
        )
      })

      const fiber = Effect.runFork(program)
      let interrupted = false
      // Handled every time, so that a repeated signal does not kill the replay halfway through stopping.
      const stop = () => {
        if (interrupted) return
        interrupted = true
        Effect.runFork(Fiber.interrupt(fiber))
      }
      process.on("SIGINT", stop)
      process.on("SIGTERM", stop)
      const exit = await Effect.runPromise(Fiber.await(fiber))
      process.off("SIGINT", stop)
      process.off("SIGTERM", stop)
      view.stop()
      if (Exit.isSuccess(exit)) {
        if (opts.json === true) process.stdout.write(`${JSON.stringify({ ok: true, ...exit.value }, null, 2)}\n`)
        else printSummary(exit.value)
        return
      }
      if (interrupted || Cause.hasInterruptsOnly(exit.cause)) {
        const message = `replay of ${name} interrupted; its progress is kept: run the same command again to resume.`
        if (opts.json === true)
          process.stdout.write(`${JSON.stringify({ ok: false, error: { code: "INTERRUPTED", message } })}\n`)
        process.stderr.write(`beds: ${message}\n`)
        process.exitCode = 130
        return
      }
      const error = Cause.squash(exit.cause)
      const code = (error as { code?: string })?.code
      const message = error instanceof Error ? error.message : String(error)
      if (opts.json === true)
        process.stdout.write(
          `${JSON.stringify({ ok: false, error: { code: code ?? "INTERNAL", message, details: (error as { details?: unknown })?.details } }, null, 2)}\n`,
        )
      process.stderr.write(`beds: ${code ? `${code}: ` : ""}${message}\n`)
      if (code === "VERIFY_MISMATCH" && opts.json !== true) printDifferences((error as ReplayError).details)
      if ((error as { _tag?: string })?._tag === undefined && error instanceof Error && process.env.BEDS_DEBUG)
        process.stderr.write(`${error.stack}\n`)
      process.exitCode = exitCodeOf(error)
    })
