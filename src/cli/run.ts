/**
 * Runs a CLI verb's Effect and turns its failure into a message and an exit
 * code, never a stack trace: users act on the message.
 */
import { Cause, Effect, Exit } from "effect"

/** Exit codes, documented in the README. */
export const ExitCode = { ok: 0, failed: 1, usage: 2, unavailable: 3 } as const

const exitCodeOf = (error: unknown): number => {
  const tag = (error as { _tag?: string })?._tag
  const code = (error as { code?: string })?.code
  // A refused login is configuration to fix, like a bad config file.
  if (tag === "ConfigError" || tag === "DeclarationError" || code === "LOGIN_REFUSED") return ExitCode.usage
  if (code === "STORE_UNAVAILABLE" || code === "UNAVAILABLE" || code === "UNREACHABLE") return ExitCode.unavailable
  return ExitCode.failed
}

export const runCli = async <A, E>(effect: Effect.Effect<A, E>): Promise<void> => {
  const exit = await Effect.runPromiseExit(effect)
  if (Exit.isSuccess(exit)) return
  const error = Cause.squash(exit.cause)
  const tag = (error as { _tag?: string })?._tag
  const code = (error as { code?: string })?.code
  const message = error instanceof Error ? error.message : String(error)
  process.stderr.write(`beds: ${code ? `${code}: ` : ""}${message}\n`)
  if (tag === undefined && error instanceof Error && process.env.BEDS_DEBUG) process.stderr.write(`${error.stack}\n`)
  process.exitCode = exitCodeOf(error)
}
