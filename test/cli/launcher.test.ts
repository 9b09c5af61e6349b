/**
 * bin/beds.js on a Node older than 22.19 runs the command on the pinned Node
 * as a child and stands in for it: a signal sent to it reaches the engine,
 * which stops gracefully, and the launcher ends as the engine does.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as readline from "node:readline"
import { afterEach, describe, expect, it } from "vitest"
import { projectRoot } from "../support/engine-process.ts"

const olderThanPinned = (node: string): boolean => {
  const [major, minor] = execFileSync(node, ["-p", "process.versions.node"], { encoding: "utf8" })
    .trim()
    .split(".")
    .map(Number) as [number, number]
  return major < 22 || (major === 22 && minor < 19)
}
const oldNode = ["/usr/bin/node", "/usr/local/bin/node", "/bin/node"].find(
  (p) => fs.existsSync(p) && olderThanPinned(p),
)
if (oldNode === undefined)
  console.log("launcher tests skipped: no Node older than 22.19 here, and only on one does bin/beds.js re-run itself")

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

interface Launched {
  readonly launcher: ChildProcess
  readonly engine: number
  readonly stderr: Array<string>
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

const started: Array<Launched> = []
const dirs: Array<string> = []
afterEach(() => {
  // An engine the launcher failed to stop is stopped here, by its own pid.
  for (const l of started.splice(0)) {
    if (alive(l.engine)) process.kill(l.engine, "SIGKILL")
    if (l.launcher.exitCode === null && l.launcher.signalCode === null) l.launcher.kill("SIGKILL")
  }
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true })
})

/** `beds start` through the launcher on the old Node, once it printed `ready`; `engine` is the pinned Node's pid. */
const launch = (node: string): Promise<Launched> =>
  new Promise((resolve, reject) => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "beds-launcher-"))
    dirs.push(dataDir)
    const launcher = spawn(node, [path.join(projectRoot, "bin", "beds.js"), "--root", projectRoot, "start"], {
      env: { ...process.env, BEDS_ENV: "", BEDS__ENGINE__DATA_DIR: dataDir },
      stdio: ["pipe", "pipe", "pipe"],
    })
    const stderr: Array<string> = []
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
      launcher.once("exit", (code, signal) => r({ code, signal })),
    )
    void exited.then(() => reject(new Error(`the launcher exited before the engine was ready:\n${stderr.join("\n")}`)))
    readline.createInterface({ input: launcher.stderr as NodeJS.ReadableStream }).on("line", (l) => {
      stderr.push(l)
      if (!/\bready\b/.test(l)) return
      const children = execFileSync("pgrep", ["-P", String(launcher.pid)], { encoding: "utf8" })
        .trim()
        .split("\n")
      const launched: Launched = { launcher, engine: Number(children[0]), stderr, exited }
      started.push(launched)
      resolve(launched)
    })
  })

/** Resolves with the launcher's end, or fails after `ms`. */
const ended = (l: Launched, ms = 20_000) =>
  Promise.race([
    l.exited,
    new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error(`the launcher did not end in ${ms} ms:\n${l.stderr.join("\n")}`)), ms),
    ),
  ])

describe.skipIf(oldNode === undefined)("bin/beds.js on a Node older than 22.19", () => {
  it("a SIGTERM to the launcher stops the engine gracefully, and the launcher ends with its exit code", async () => {
    const l = await launch(oldNode as string)
    expect(l.engine).not.toBe(l.launcher.pid)
    l.launcher.kill("SIGTERM")
    expect(await ended(l)).toEqual({ code: 0, signal: null })
    expect(l.stderr.join("\n")).toMatch(/stopped cleanly/)
    expect(alive(l.engine)).toBe(false)
  }, 60_000)

  it("a SIGINT that reaches both, as a terminal's does, stops the engine once and cleanly", async () => {
    const l = await launch(oldNode as string)
    // A terminal signals the whole foreground group; the launcher passes its own on too.
    process.kill(l.engine, "SIGINT")
    l.launcher.kill("SIGINT")
    expect(await ended(l)).toEqual({ code: 0, signal: null })
    expect(l.stderr.join("\n")).toMatch(/stopped cleanly/)
    expect(alive(l.engine)).toBe(false)
  }, 60_000)
})
