#!/usr/bin/env node
// The `beds` command. BEDS ships TypeScript sources, written so that Node's
// own type stripping runs them; tsx loads them where Node will not (inside
// node_modules, or a Node without type stripping). Effect 4
// needs Node >= 22.19: when started on an older node, run on the Node 22
// that the package pins (node_modules/node), so `npx beds` works anywhere.
import { spawn } from "node:child_process"
import { existsSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const here = dirname(fileURLToPath(import.meta.url))
const [major, minor] = process.versions.node.split(".").map(Number)
if (major < 22 || (major === 22 && minor < 19)) {
  const pinned = [
    join(here, "..", "node_modules", "node", "bin", "node"),
    join(here, "..", "..", "node", "bin", "node"),
  ].find(existsSync)
  if (pinned === undefined) {
    console.error(`beds needs Node >= 22.19 (found ${process.version}); run "npm install" in the project first.`)
    process.exit(1)
  }
  // This process stands in for the one on the pinned Node: a supervisor that
  // stops it (SIGTERM to this pid) must stop the engine gracefully, not leave
  // it running, so signals are passed on and the child's end is this one's.
  const child = spawn(pinned, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: "inherit" })
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => child.kill(signal))
  child.on("error", (e) => {
    console.error(`beds could not run ${pinned}: ${e.message}`)
    process.exit(1)
  })
  child.on("exit", (code, signal) => {
    if (signal === null) process.exit(code ?? 1)
    process.removeAllListeners(signal)
    process.kill(process.pid, signal)
  })
} else {
  // Node strips types natively, but never inside node_modules.
  const native = process.features.typescript && !here.split(/[\\/]/).includes("node_modules")
  if (!native) {
    const { register } = await import("tsx/esm/api")
    register()
  }
  await import("../src/cli/main.ts")
}
