#!/usr/bin/env node
// The `beds` command. BEDS ships TypeScript sources, written so that Node's
// own type stripping runs them; tsx loads them where Node will not (inside
// node_modules, or a Node without type stripping). Effect 4
// needs Node >= 22.19: when started on an older node, re-run on the Node 22
// that the package pins (node_modules/node), so `npx beds` works anywhere.
import { spawnSync } from "node:child_process"
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
  const r = spawnSync(pinned, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: "inherit" })
  process.exit(r.status ?? 1)
}
// Node strips types natively, but never inside node_modules.
const native = process.features.typescript && !here.split(/[\\/]/).includes("node_modules")
if (!native) {
  const { register } = await import("tsx/esm/api")
  register()
}
await import("../src/cli/main.ts")
