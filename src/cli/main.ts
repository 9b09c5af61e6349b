/**
 * The `beds` command line. Each verb lives in its own module; this file only
 * wires them into one program. Exit codes: 0 success, 1 a check failed or a
 * command was refused, 2 bad usage or configuration, 3 a service is missing.
 */
import { Command } from "commander"
import { auditCommand } from "./audit.ts"
import { demoCommand } from "./demo.ts"
import { lineageCommand } from "./lineage.ts"
import { publishCommand } from "./publish.ts"
import { startCommand } from "./start.ts"
import { statusCommand } from "./status.ts"
import { templatesCommand } from "./templates.ts"
import { whyCommand } from "./why.ts"

const program = new Command()
  .name("beds")
  .description("BEDS: an event-sourced depot/projection engine.")
  .option("--root <dir>", "project folder holding depots/, projections/, templates/ and config/", process.cwd())
  .showHelpAfterError()

program.addCommand(startCommand())
program.addCommand(demoCommand())
program.addCommand(publishCommand())
program.addCommand(statusCommand())
program.addCommand(templatesCommand())
program.addCommand(lineageCommand())
program.addCommand(whyCommand())
program.addCommand(auditCommand())
program.addCommand((await import("./replay.ts")).replayCommand())

await program.parseAsync(process.argv)
