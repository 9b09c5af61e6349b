// The test command: unit and integration tests first, then the fault tier on
// its own (its tests restart services, which must not happen under the other
// tiers' feet). Prints one closing line with the totals of both runs.
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

const [major, minor] = process.versions.node.split(".").map(Number)
if (major < 22 || (major === 22 && minor < 19)) {
  console.error(
    `BEDS needs Node >= 22.19, found ${process.version}. Run the tests through npm (npm test) so the pinned Node is used.`,
  )
  process.exit(1)
}
console.log(`node ${process.version}`)

const extra = process.argv.slice(2)
// A filtered run (npm test -- some/path) may leave one tier empty; a full run never does.
const filtered = extra.length > 0
const runs = [
  ["--project", "unit", "--project", "integration"],
  ["--project", "fault"],
]
const totals = { passed: 0, failed: 0, skipped: 0 }
let status = 0
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "beds-test-"))
runs.forEach((args, i) => {
  const out = path.join(dir, `run${i}.json`)
  const r = spawnSync(
    "vitest",
    [
      "run",
      ...args,
      ...(filtered ? ["--passWithNoTests"] : []),
      "--reporter=default",
      "--reporter=json",
      `--outputFile.json=${out}`,
      ...extra,
    ],
    {
      stdio: "inherit",
    },
  )
  if (r.status !== 0) status = r.status ?? 1
  try {
    const j = JSON.parse(fs.readFileSync(out, "utf8"))
    totals.passed += j.numPassedTests
    totals.failed += j.numFailedTests
    totals.skipped += j.numPendingTests + (j.numTodoTests ?? 0)
  } catch {
    status = status || 1
  }
})
fs.rmSync(dir, { recursive: true, force: true })
console.log(`${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped`)
process.exit(status)
