/**
 * The lineage verbs as a user runs them: `beds lineage`, `beds why` and
 * `beds audit` in their own process, on a project folder holding the example
 * cascade (links to this project's files), over a throw-away MariaDB database
 * filled by an engine here. Checks output, JSON and exit codes (0 ok, 1 not
 * found or violations, 2 bad usage, 3 no store).
 */
import { execFile } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { withEngine } from "../support/engine.ts"
import { mariaDbAvailable } from "../support/services.ts"
import { lineageMariaDbStores } from "./mariadb.ts"
import { exampleDeclarations, settleCascades } from "./support.ts"

const available = await mariaDbAvailable()

interface Run {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

describe.skipIf(!available)("beds lineage / why / audit (CLI, MariaDB)", () => {
  let maria: Awaited<ReturnType<typeof lineageMariaDbStores>>
  let withdrawal: string
  let alert: string
  let root: string

  /** A project with exactly the example cascade, whatever else this repository declares. */
  const exampleProject = (): string => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "beds-lineage-cli-"))
    const files = {
      depots: ["accounts.ts", "alerts.ts"],
      projections: ["balances.ts", "overdraft.ts", "alert_log.ts"],
      templates: ["acc_balance.toml", "ovd_state.toml", "alr_alert.toml"],
    }
    for (const [folder, names] of Object.entries(files)) {
      fs.mkdirSync(path.join(dir, folder))
      for (const name of names)
        if (folder === "templates") fs.copyFileSync(path.resolve(folder, name), path.join(dir, folder, name))
        // Linked, so that their relative imports resolve into this repository.
        else fs.symlinkSync(path.resolve(folder, name), path.join(dir, folder, name))
    }
    fs.symlinkSync(path.resolve("config"), path.join(dir, "config"))
    return dir
  }

  const beds = (args: ReadonlyArray<string>, env: Record<string, string> = {}): Promise<Run> =>
    new Promise((resolve) => {
      const { BEDS_ENV: _env, BEDS_CONFIG_DIR: _dir, ...inherited } = process.env
      execFile(
        process.execPath,
        ["bin/beds.js", "--root", root, ...args],
        {
          env: {
            ...inherited,
            BEDS__ENGINE__DEPOT: "mariadb",
            BEDS__ENGINE__REL: "mariadb",
            BEDS__MARIADB__DATABASE: maria.settings.database,
            ...env,
          },
          timeout: 60_000,
        },
        (error, stdout, stderr) =>
          resolve({ code: error === null ? 0 : typeof error.code === "number" ? error.code : -1, stdout, stderr }),
      )
    })

  beforeAll(async () => {
    root = exampleProject()
    maria = await lineageMariaDbStores("cli")
    const stores = await maria.fresh()
    const decl = await exampleDeclarations()
    withdrawal = await Effect.runPromise(
      withEngine(stores, decl, (engine) =>
        Effect.gen(function* () {
          yield* engine.publish("accounts", "Opened", "acc-1", { owner: "Ada" }, { id: "1" })
          yield* engine.publish("accounts", "Deposited", "acc-1", { amount: 100 }, { id: "2" })
          const w = yield* engine.publish("accounts", "Withdrawn", "acc-1", { amount: 250 }, { id: "3" })
          yield* settleCascades(engine)
          const id = w.ok ? w.id : ""
          yield* engine.publish(
            "accounts",
            "Deposited",
            "acc-1",
            { amount: 500 },
            { id: "4", parent: `${id}/overdraft.0` },
          )
          yield* settleCascades(engine)
          return id
        }),
      ),
    )
    alert = `${withdrawal}/overdraft.0`
  })
  afterAll(async () => {
    await maria?.close()
    if (root !== undefined) fs.rmSync(root, { recursive: true, force: true })
  })

  it("lineage prints the event with its ancestors and descendants as a tree", async () => {
    const r = await beds(["lineage", alert])
    expect(r.stderr).toBe("")
    expect(r.code).toBe(0)
    const lines = r.stdout.split("\n")
    expect(lines[0]).toMatch(
      new RegExp(`^${withdrawal}  Withdrawn  key="acc-1"  accounts/\\d@2  \\d{4}-\\d\\d-\\d\\dT`),
    )
    expect(lines[1]).toMatch(new RegExp(`^└─ ${alert}  OverdraftFlagged  key="acc-1"  alerts/\\d@0  .*  ◀$`))
    expect(lines[2]).toMatch(new RegExp(`^   └─ ${alert}/accounts:\\d:3  Deposited  key="acc-1"  accounts/\\d@3  `))
    expect(r.stdout).toContain(`1 descendant(s) of ${alert}`)
  })

  it("lineage --json gives scripts the event, its ancestors nearest first and the tree; --from-root starts at the root", async () => {
    const r = await beds(["lineage", alert, "--json"])
    expect(r.code).toBe(0)
    const json = JSON.parse(r.stdout)
    expect(json).toMatchObject({
      id: alert,
      top: alert,
      event: { depot: "alerts", type: "OverdraftFlagged", parent: withdrawal },
      ancestors: [{ id: withdrawal, event: { type: "Withdrawn" } }],
      tree: { id: alert, children: [{ event: { type: "Deposited" }, children: [] }] },
      count: 1,
      truncated: false,
    })
    const whole = JSON.parse((await beds(["lineage", alert, "--json", "--from-root"])).stdout)
    expect(whole).toMatchObject({ id: alert, top: withdrawal, ancestors: [], count: 2 })
  })

  it("lineage exits 1 for an unknown event and 2 for a malformed ID, saying which", async () => {
    const unknown = await beds(["lineage", "accounts:0:999"])
    expect(unknown.code).toBe(1)
    expect(unknown.stderr).toContain("UNKNOWN_EVENT")
    const malformed = await beds(["lineage", "accounts/0/1"])
    expect(malformed.code).toBe(2)
    expect(malformed.stderr).toContain("BAD_ID")
    expect(malformed.stdout).toBe("")
  })

  it("why lists the events behind a row with their causes, as text and JSON", async () => {
    const text = await beds(["why", "alr_alert", "acc-1"])
    expect(text.code).toBe(0)
    expect(text.stdout).toContain("written by topology alert_log")
    expect(text.stdout).toContain(`  ${alert}  OverdraftFlagged  key="acc-1" v1`)
    expect(text.stdout).toContain(`      ← caused by ${withdrawal}  Withdrawn`)
    const json = JSON.parse((await beds(["why", "acc_balance", "acc-1", "--json"])).stdout)
    expect(json).toMatchObject({ rule: "key-history", topology: "balances", omitted: 0 })
    expect(json.events.map((e: { event: { type: string } }) => e.event.type)).toEqual([
      "Opened",
      "Deposited",
      "Withdrawn",
      "Deposited",
    ])
    expect(json.events[3].causes.map((c: { id: string }) => c.id)).toEqual([alert, withdrawal])
  })

  it("why exits 2 for an unknown template or a bad key and 1 for a missing row", async () => {
    expect(await beds(["why", "nope", "acc-1"])).toMatchObject({
      code: 2,
      stderr: expect.stringContaining("UNKNOWN_TEMPLATE"),
    })
    expect(await beds(["why", "acc_balance", "[1, {}]"])).toMatchObject({
      code: 2,
      stderr: expect.stringContaining("BAD_KEY"),
    })
    expect(await beds(["why", "acc_balance", "zz"])).toMatchObject({
      code: 1,
      stderr: expect.stringContaining("NO_ROW"),
    })
  })

  it("audit exits 0 on a clean depot and 1 naming each violation; JSON for scripts; 2 for an unknown depot", async () => {
    const clean = await beds(["audit"])
    expect(clean).toMatchObject({ code: 0 })
    expect(clean.stdout).toContain("audit: clean")
    // Not a terminal: progress comes as plain lines on stderr.
    expect(clean.stderr).toMatch(/^beds audit: events \d+\/\d+/m)

    await maria.sql("UPDATE ovd_state SET balance = 1 WHERE account_id = 'acc-1'")
    const broken = await beds(["audit", "--json"])
    expect(broken.code).toBe(1)
    const report = JSON.parse(broken.stdout)
    expect(report).toMatchObject({ ok: false })
    expect(report.violations).toEqual([
      {
        check: "read_models",
        template: "ovd_state",
        key: "acc-1",
        message: "row acc-1 differs from the fold: balance is 1, the fold says 350",
      },
    ])
    const text = await beds(["audit", "--topology", "overdraft"])
    expect(text.code).toBe(1)
    expect(text.stdout).toContain("  FAIL  read_models")
    expect(text.stdout).toContain("read_models  ovd_state key acc-1: row acc-1 differs from the fold")
    const narrowed = await beds(["audit", "--depot", "alerts"])
    expect(narrowed.code).toBe(0)
    expect(await beds(["audit", "--depot", "nope"])).toMatchObject({
      code: 2,
      stderr: expect.stringContaining("UNKNOWN_NAME"),
    })
  })

  it("exits 3 when the depot store cannot be reached", async () => {
    const r = await beds(["lineage", alert], { BEDS__MARIADB__PORT: "1", BEDS__MARIADB__CONNECT_TIMEOUT_MS: "1000" })
    expect(r.code).toBe(3)
    expect(r.stderr).toContain("STORE_UNAVAILABLE")
  })
})
