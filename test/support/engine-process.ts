/**
 * `beds start` as a child process, for crash and shutdown tests: started on
 * the project's own declarations, killed for real (SIGKILL) or stopped
 * gracefully (SIGTERM), always reaped by the test.
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as path from "node:path"
import * as readline from "node:readline"
import { fileURLToPath } from "node:url"

export const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..")
const bin = path.join(projectRoot, "bin", "beds.js")
const node = path.join(projectRoot, "node_modules", "node", "bin", "node")

export interface EngineProcess {
  readonly child: ChildProcess
  /** Lines the engine printed on stdout (replies, with the stdio transport). */
  readonly lines: Array<string>
  readonly stderr: Array<string>
  readonly exited: Promise<number | null>
}

const live = new Set<ChildProcess>()
process.on("exit", () => {
  for (const c of live) c.kill("SIGKILL")
})

/** Starts an engine and resolves once it printed `ready`. */
export const startEngine = (env: NodeJS.ProcessEnv, timeoutMs = 30_000): Promise<EngineProcess> =>
  new Promise((resolve, reject) => {
    const child = spawn(node, [bin, "--root", projectRoot, "start"], {
      env: { ...process.env, ...env },
      stdio: ["pipe", "pipe", "pipe"],
    })
    live.add(child)
    const lines: Array<string> = []
    const stderr: Array<string> = []
    const exited = new Promise<number | null>((r) =>
      child.once("exit", (code) => {
        live.delete(child)
        r(code)
      }),
    )
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`engine not ready in ${timeoutMs} ms:\n${stderr.join("\n")}`))
    }, timeoutMs)
    readline.createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (l) => lines.push(l))
    readline.createInterface({ input: child.stderr as NodeJS.ReadableStream }).on("line", (l) => {
      stderr.push(l)
      if (l.includes("ready")) {
        clearTimeout(timer)
        resolve({ child, lines, stderr, exited })
      }
    })
    void exited.then((code) => {
      clearTimeout(timer)
      reject(new Error(`engine exited (${code}) before it was ready:\n${stderr.join("\n")}`))
    })
    ;(child.stdin as NodeJS.WritableStream).on("error", () => undefined)
  })

/** SIGKILL, then wait until the process is gone. */
export const kill = async (e: EngineProcess) => {
  if (e.child.exitCode === null && e.child.signalCode === null) e.child.kill("SIGKILL")
  await e.exited
}
