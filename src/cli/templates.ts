/**
 * `beds templates`: shows what the engine derives from templates/ — the
 * MariaDB DDL of REL templates — so a DBA can review it before start-up.
 */
import * as path from "node:path"
import { Command } from "commander"
import { Effect } from "effect"
import { renderDdl } from "../template/ddl.ts"
import { loadTemplates } from "../template/load.ts"
import { renderIndexPlan } from "../template/mongo-plan.ts"
import { runCli } from "./run.ts"

export const templatesCommand = () => {
  const cmd = new Command("templates").description("inspect read-model templates")
  cmd
    .command("sql")
    .description("print the MariaDB DDL derived from the REL templates")
    .action(async (_opts, c: Command) => {
      const root = c.optsWithGlobals().root as string
      await runCli(
        Effect.gen(function* () {
          const templates = yield* loadTemplates(path.join(root, "templates"))
          process.stdout.write(`${renderDdl(templates.filter((t) => t.backend === "rel"))}\n`)
        }),
      )
    })
  cmd
    .command("plan")
    .description(
      "print everything the engine derives: the DDL of REL templates and the MongoDB index plan of REC templates",
    )
    .action(async (_opts, c: Command) => {
      const root = c.optsWithGlobals().root as string
      await runCli(
        Effect.gen(function* () {
          const templates = yield* loadTemplates(path.join(root, "templates"))
          process.stdout.write(`${renderDdl(templates.filter((t) => t.backend === "rel"))}\n\n`)
          process.stdout.write(`${renderIndexPlan(templates.filter((t) => t.backend === "rec"))}\n`)
        }),
      )
    })
  cmd
    .command("mongo")
    .description("print the MongoDB collections and indexes derived from the REC templates")
    .action(async (_opts, c: Command) => {
      const root = c.optsWithGlobals().root as string
      await runCli(
        Effect.gen(function* () {
          const templates = yield* loadTemplates(path.join(root, "templates"))
          process.stdout.write(`${renderIndexPlan(templates.filter((t) => t.backend === "rec"))}\n`)
        }),
      )
    })
  return cmd
}
