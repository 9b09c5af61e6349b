/**
 * The main job passes: `beds demo` on the embedded default exits 0 with
 * every check passed (a smaller workload than the default, same steps).
 */
import { spawnSync } from "node:child_process"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { projectRoot } from "../support/engine-process.ts"

describe("beds demo", () => {
  it("runs the main job on the embedded default and every check passes", () => {
    const r = spawnSync(
      path.join(projectRoot, "node_modules", "node", "bin", "node"),
      [path.join(projectRoot, "bin", "beds.js"), "demo", "--accounts", "100", "--commands", "3000"],
      { cwd: projectRoot, env: { ...process.env, BEDS_ENV: "" }, encoding: "utf8", timeout: 120_000 },
    )
    expect(r.stderr).not.toMatch(/Error/)
    expect(r.stdout).toMatch(/all [\d,]+ acknowledged commands survived the SIGKILL/)
    expect(r.stdout).not.toContain("✗")
    expect(r.stdout).toContain("all checks passed")
    expect(r.status).toBe(0)
  }, 150_000)
})
