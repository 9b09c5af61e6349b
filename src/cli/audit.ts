/**
 * `beds audit`: checks the depots' lineage invariants and that every read
 * model equals the fold of its depot (src/lineage/audit.ts), with a progress
 * bar on a terminal and a plain line every few seconds otherwise.
 *
 * On MariaDB the look-ups run as one set query per page
 * (src/lineage/audit-mariadb.ts) over a small pool of their own; on the other
 * adapters they go through the depot-store port.
 *
 * Exit codes: 0 clean, 1 violations (each named), 2 bad usage (unknown depot
 * or topology), 3 a store is unreachable.
 */

import cliProgress from "cli-progress"
import { Command, InvalidArgumentError } from "commander"
import { Context, Effect, Layer } from "effect"
import { type AuditOptions, type AuditProgress, type AuditReport, audit, selection } from "../lineage/audit.ts"
import * as AuditMariaDb from "../lineage/audit-mariadb.ts"
import * as MariaDb from "../mariadb/client.ts"
import { rootOf } from "./context.ts"
import { loadProject, printJson, runVerb, withStores } from "./project.ts"
import { ExitCode } from "./run.ts"

/** Shows progress on stderr: a bar on a terminal, else a line every few seconds and at the end of each phase. */
const progressReporter = (): { readonly update: (p: AuditProgress) => void; readonly stop: () => void } => {
  if (process.stderr.isTTY === true) {
    const bar = new cliProgress.SingleBar(
      {
        format: "audit {phase} [{bar}] {percentage}% {value}/{total} {at}",
        stream: process.stderr,
        hideCursor: true,
        clearOnComplete: true,
      },
      cliProgress.Presets.shades_classic,
    )
    let phase: string | undefined
    return {
      update: (p) => {
        if (phase !== p.phase) {
          if (phase !== undefined) bar.stop()
          phase = p.phase
          bar.start(Math.max(1, p.total), p.done, { phase: p.phase, at: p.at })
        } else bar.update(p.done, { at: p.at })
      },
      stop: () => {
        if (phase !== undefined) bar.stop()
      },
    }
  }
  let last = 0
  const finished = new Set<string>()
  return {
    update: (p) => {
      const now = Date.now()
      const end = p.done >= p.total
      if (end ? finished.has(p.phase) : now - last < 2000) return
      if (end) finished.add(p.phase)
      last = now
      const pct = p.total > 0 ? Math.floor((100 * p.done) / p.total) : 100
      process.stderr.write(`beds audit: ${p.phase} ${p.done}/${p.total} (${pct}%)${p.at ? ` ${p.at}` : ""}\n`)
    },
    stop: () => {},
  }
}

/** The report as text lines: one per check, then each listed violation. */
export const renderReport = (r: AuditReport): ReadonlyArray<string> => {
  const lines = [
    `audited depots [${r.depots.join(", ")}] and the read models of [${r.topologies.join(", ")}]: ${r.events} event(s) read${r.externalParents > 0 ? `, ${r.externalParents} with an external parent` : ""}`,
  ]
  const width = Math.max(...r.checks.map((c) => c.name.length))
  for (const c of r.checks)
    lines.push(
      `  ${c.violations === 0 ? "ok  " : "FAIL"}  ${c.name.padEnd(width)}  ${String(c.checked).padStart(9)} checked  ${String(c.violations).padStart(6)} violation(s)  ${c.description}`,
    )
  if (r.violations.length > 0) {
    lines.push("", "violations:")
    for (const v of r.violations) {
      const where =
        v.template !== undefined
          ? `${v.template}${v.key !== undefined ? ` key ${v.key}` : ""}`
          : v.depot !== undefined
            ? `${v.depot}/${v.partition}@${v.offset}${v.id !== undefined ? ` ${v.id}` : ""}`
            : ""
      lines.push(`  ${v.check}  ${where}${where ? ": " : ""}${v.message}`)
    }
    if (r.unlisted > 0) lines.push(`  … and ${r.unlisted} more (raise --max-violations to list them)`)
  }
  const total = r.checks.reduce((n, c) => n + c.violations, 0)
  lines.push("", r.ok ? "audit: clean" : `audit: ${total} violation(s)`)
  return lines
}

const collect = (value: string, previous: ReadonlyArray<string> | undefined): ReadonlyArray<string> => [
  ...(previous ?? []),
  value,
]

const positiveInt = (text: string): number => {
  const n = Number(text)
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError("expected a whole number of 1 or more.")
  return n
}

export const auditCommand = () =>
  new Command("audit")
    .description("check lineage invariants of the depots and that every read model equals the fold of its depot")
    .option("--depot <name>", "check this depot's lineage (repeatable; default: all)", collect)
    .option("--topology <name>", "check this topology's read models (repeatable; default: all)", collect)
    .option("--max-violations <n>", "violations listed per check (all are counted)", positiveInt, 100)
    .option("--page <n>", "events per read", positiveInt, 1000)
    .option("--json", "print the report as JSON")
    .action(
      async (
        opts: {
          depot?: ReadonlyArray<string>
          topology?: ReadonlyArray<string>
          maxViolations: number
          page: number
          json?: boolean
        },
        c: Command,
      ) => {
        const root = rootOf(c)
        const progress = progressReporter()
        await runVerb(
          Effect.gen(function* () {
            const project = yield* loadProject(root)
            const config = project.loaded.config
            const options: AuditOptions = {
              depots: opts.depot,
              topologies: opts.topology,
              maxViolations: opts.maxViolations,
              pageSize: opts.page,
              allowExternalParents: config.engine.allow_external_parents,
              onProgress: progress.update,
            }
            const run =
              config.engine.depot === "mariadb"
                ? Effect.scoped(
                    Effect.gen(function* () {
                      const ctx = yield* Layer.build(MariaDb.layer({ ...config.mariadb, pool: 2 }))
                      const lookups = yield* AuditMariaDb.lookups.pipe(
                        Effect.provideService(MariaDb.MariaDb, Context.get(ctx, MariaDb.MariaDb)),
                      )
                      return yield* audit(project.declarations, { ...options, lookups })
                    }),
                  )
                : audit(project.declarations, options)
            const { topologies } = yield* selection(project.declarations, options)
            const report = yield* withStores(
              project,
              {
                templates: [...new Set(topologies.flatMap((t) => t.readModels))],
                log: (l) => process.stderr.write(`beds: ${l}\n`),
              },
              run,
            ).pipe(Effect.ensuring(Effect.sync(progress.stop)))
            if (opts.json === true) printJson(report)
            else process.stdout.write(`${renderReport(report).join("\n")}\n`)
            if (!report.ok) process.exitCode = ExitCode.failed
          }),
        )
      },
    )
