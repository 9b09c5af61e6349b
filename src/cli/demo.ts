/**
 * `beds demo`: the main job (see src/demo/demo.ts). `npm start` runs it.
 */
import { Command, InvalidArgumentError } from "commander"
import { Effect } from "effect"
import { runDemo } from "../demo/demo.ts"
import { configOf, rootOf } from "./context.ts"
import { ExitCode, runCli } from "./run.ts"

const positive = (v: string) => {
  const n = Number(v)
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError("expected a whole number ≥ 1")
  return n
}

export const demoCommand = () =>
  new Command("demo")
    .description("run the engine on a realistic workload, crash it, restart it and prove nothing acknowledged was lost")
    .option("--accounts <n>", "accounts to open", positive, 500)
    .option("--commands <n>", "commands to publish after opening them", positive, 12_000)
    .option("--in-flight <n>", "commands in flight at once", positive, 256)
    .option("--keep", "keep the demo's data folder")
    .action(async (opts: { accounts: number; commands: number; inFlight: number; keep?: boolean }, cmd: Command) => {
      const root = rootOf(cmd)
      await runCli(
        Effect.gen(function* () {
          const loaded = yield* configOf(root)
          const ok = yield* Effect.promise(() =>
            runDemo({
              root,
              loaded,
              accounts: opts.accounts,
              commands: opts.commands,
              inFlight: opts.inFlight,
              keep: opts.keep === true,
            }),
          )
          if (!ok) process.exitCode = ExitCode.failed
        }),
      )
    })
