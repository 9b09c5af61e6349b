import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import { load } from "../../src/config/load.ts"
import { BedsConfig, layer } from "../../src/config/service.ts"
import type { ConfigError } from "../../src/errors.ts"

/** A complete, valid base: the tests change one thing at a time from here. */
const BASE = `
[engine]
role = "all"
data_dir = "data"
depot = "file"
rel = "memory"
rec = "memory"
transport = "embedded"
log_level = "info"
allow_external_parents = false

[ingress]
max_body_bytes = 1048576
batch_max = 1000
in_flight = 10000

[topology]
batch_max = 2000
retries = 5
retry_base_ms = 50

[roles.all]
depots = ["*"]
topologies = ["*"]

[mariadb]
host = "127.0.0.1"
port = 3306
user = "root"
password = ""
database = "beds"
pool = 8
connect_timeout_ms = 5000

[amqp]
url = "amqp://guest:guest@127.0.0.1:5672"
prefetch = 1000
queue_type = "classic"
heartbeat_s = 30
prefix = "beds"
`

const made: string[] = []
afterAll(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true })
})

/** A fresh config folder holding the given files. */
const folder = (files: Record<string, string>): string => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "beds-config-"))
  made.push(dir)
  for (const [name, text] of Object.entries(files)) writeFileSync(path.join(dir, name), text)
  return dir
}

const ok = (options: Parameters<typeof load>[0]) => Effect.runPromise(load(options))
const failure = (options: Parameters<typeof load>[0]): Promise<ConfigError> =>
  Effect.runPromise(Effect.flip(load(options)))

const SHIPPED = path.resolve(import.meta.dirname, "../../config")

describe("config loading", () => {
  describe("layering", () => {
    it("reads beds.toml alone when BEDS_ENV is unset", async () => {
      const dir = folder({ "beds.toml": BASE })
      const loaded = await ok({ dir, env: {} })
      expect(loaded.config.engine.depot).toBe("file")
      expect(loaded.config.mariadb.port).toBe(3306)
      expect(loaded.config.roles.all).toEqual({ depots: ["*"], topologies: ["*"] })
      expect(loaded.config.mongodb).toBeUndefined()
      expect(loaded.files).toEqual([path.join(dir, "beds.toml")])
      expect(loaded.origin("mariadb.port")).toBe(path.join(dir, "beds.toml"))
      expect(loaded.origin("mariadb.nothing")).toBe("not set")
    })

    it("deep-merges env_<BEDS_ENV>.toml over the base: tables key by key, other values replace", async () => {
      const dir = folder({
        "beds.toml": BASE,
        "env_dev.toml": `
[engine]
depot = "mariadb"

[mariadb]
port = 3307

[roles.all]
depots = ["accounts"]

[roles.app]
depots = ["accounts"]
topologies = []
`,
      })
      const base = path.join(dir, "beds.toml")
      const dev = path.join(dir, "env_dev.toml")
      const loaded = await ok({ dir, env: { BEDS_ENV: "dev" } })
      expect(loaded.files).toEqual([base, dev])
      expect(loaded.config.engine.depot).toBe("mariadb")
      expect(loaded.config.engine.rel).toBe("memory")
      expect(loaded.config.mariadb).toMatchObject({ host: "127.0.0.1", port: 3307, user: "root" })
      // An array is a value, not a table: the env file's replaces the base's entirely.
      expect(loaded.config.roles.all).toEqual({ depots: ["accounts"], topologies: ["*"] })
      expect(loaded.config.roles.app).toEqual({ depots: ["accounts"], topologies: [] })
      expect(loaded.origin("mariadb.port")).toBe(dev)
      expect(loaded.origin("mariadb.host")).toBe(base)
      expect(loaded.origin("roles.all.depots")).toBe(dev)
      expect(loaded.origin("roles.all.depots.0")).toBe(dev)
      expect(loaded.origin("mariadb")).toBe(`${base}, ${dev}`)
    })

    it("applies BEDS__SECTION__KEY variables last, reading their values as TOML when they are TOML", async () => {
      const dir = folder({ "beds.toml": BASE, "env_dev.toml": "[mariadb]\nport = 3307\n" })
      const loaded = await ok({
        dir,
        env: {
          BEDS_ENV: "dev",
          BEDS__MARIADB__PORT: "3308",
          BEDS__ENGINE__DEPOT: "mariadb",
          BEDS__MARIADB__HOST: "db.internal",
          BEDS__MARIADB__PASSWORD: '"s3cret"',
          BEDS__ROLES__ALL__DEPOTS: '["accounts", "orders"]',
          beds__amqp__prefetch: "50",
          BEDS__Amqp__Queue_Type: "quorum",
          BEDS__ROLES__APP: '{ depots = ["accounts"], topologies = [] }',
          BEDS__MARIADB__DATABASE: undefined,
        },
      })
      expect(loaded.config.mariadb.port).toBe(3308)
      expect(loaded.config.engine.depot).toBe("mariadb")
      expect(loaded.config.mariadb.host).toBe("db.internal")
      expect(loaded.config.mariadb.password).toBe("s3cret")
      expect(loaded.config.mariadb.database).toBe("beds")
      expect(loaded.config.roles.all?.depots).toEqual(["accounts", "orders"])
      expect(loaded.config.amqp.prefetch).toBe(50)
      expect(loaded.config.amqp.queue_type).toBe("quorum")
      expect(loaded.origin("mariadb.port")).toBe("BEDS__MARIADB__PORT")
      expect(loaded.origin("amqp.prefetch")).toBe("beds__amqp__prefetch")
      expect(loaded.config.roles.app).toEqual({ depots: ["accounts"], topologies: [] })
      expect(loaded.origin("roles.app.depots")).toBe("BEDS__ROLES__APP")
    })

    it("keeps an empty variable as an empty string", async () => {
      const dir = folder({ "beds.toml": BASE.replace('password = ""', 'password = "x"') })
      const loaded = await ok({ dir, env: { BEDS__MARIADB__PASSWORD: "" } })
      expect(loaded.config.mariadb.password).toBe("")
    })

    it("finds the folder through BEDS_CONFIG_DIR, and the dir option wins over it", async () => {
      const viaEnv = folder({ "beds.toml": BASE })
      const viaOption = folder({ "beds.toml": BASE.replace("port = 3306", "port = 4000") })
      const a = await ok({ env: { BEDS_CONFIG_DIR: viaEnv } })
      expect(a.files).toEqual([path.join(viaEnv, "beds.toml")])
      expect(a.config.mariadb.port).toBe(3306)
      const b = await ok({ dir: viaOption, env: { BEDS_CONFIG_DIR: viaEnv } })
      expect(b.config.mariadb.port).toBe(4000)
    })

    it('sets mongodb.url from BEDS_MONGO_URL, with database "beds" unless one is configured', async () => {
      const url = "mongodb://127.0.0.1:27017"
      const plain = await ok({ dir: folder({ "beds.toml": BASE }), env: { BEDS_MONGO_URL: url } })
      expect(plain.config.mongodb).toEqual({ url, database: "beds" })
      expect(plain.origin("mongodb.url")).toBe("BEDS_MONGO_URL")

      const named = folder({ "beds.toml": BASE + '\n[mongodb]\nurl = "mongodb://old"\ndatabase = "reads"\n' })
      const withDb = await ok({ dir: named, env: { BEDS_MONGO_URL: url } })
      expect(withDb.config.mongodb).toEqual({ url, database: "reads" })
    })

    it("provides the loaded configuration as the BedsConfig service", async () => {
      const dir = folder({ "beds.toml": BASE })
      const port = await Effect.runPromise(
        Effect.gen(function* () {
          const loaded = yield* BedsConfig
          return loaded.config.mariadb.port
        }).pipe(Effect.provide(layer({ dir, env: {} }))),
      )
      expect(port).toBe(3306)
    })
  })

  describe("errors say what to change and where", () => {
    it("a missing beds.toml names the path and how to point BEDS at another folder", async () => {
      const dir = folder({})
      const e = await failure({ dir, env: {} })
      expect(e.code).toBe("CONFIG_UNREADABLE")
      expect(e.message).toContain(path.join(dir, "beds.toml"))
      expect(e.message).toContain("BEDS_CONFIG_DIR")
    })

    it("a missing env_<BEDS_ENV>.toml names the path and lists the env files that exist", async () => {
      const dir = folder({ "beds.toml": BASE, "env_dev.toml": "", "env_test.toml": "" })
      const e = await failure({ dir, env: { BEDS_ENV: "prod" } })
      expect(e.code).toBe("CONFIG_UNREADABLE")
      expect(e.message).toContain(path.join(dir, "env_prod.toml"))
      expect(e.message).toContain("env_dev.toml, env_test.toml")
      expect(e.message).toContain("BEDS_ENV")
    })

    it("a TOML syntax error names the file, line and column", async () => {
      const dir = folder({ "beds.toml": BASE, "env_dev.toml": '[mariadb]\nhost = "a"\nport = = 3\n' })
      const e = await failure({ dir, env: { BEDS_ENV: "dev" } })
      expect(e.code).toBe("CONFIG_SYNTAX")
      expect(e.message).toContain(path.join(dir, "env_dev.toml"))
      expect(e.message).toContain("line 3")
      expect(e.message).toMatch(/column \d+/)
    })

    it("a value of the wrong type names the file, key path, what was expected and what was found", async () => {
      const dir = folder({ "beds.toml": BASE, "env_dev.toml": '[mariadb]\nport = "3306"\n' })
      const e = await failure({ dir, env: { BEDS_ENV: "dev" } })
      expect(e.code).toBe("CONFIG_INVALID")
      expect(e.message).toContain("mariadb.port")
      expect(e.message).toContain(path.join(dir, "env_dev.toml"))
      expect(e.message).toContain("expected an integer between 1 and 65535")
      expect(e.message).toContain('found "3306"')
      expect(e.message).toContain("Change `port` under [mariadb]")
    })

    it("an out-of-range port is rejected with the allowed range", async () => {
      const dir = folder({ "beds.toml": BASE.replace("port = 3306", "port = 70000") })
      const e = await failure({ dir, env: {} })
      expect(e.code).toBe("CONFIG_INVALID")
      expect(e.message).toContain("mariadb.port")
      expect(e.message).toContain("between 1 and 65535")
      expect(e.message).toContain("found 70000")
    })

    it("a bad choice lists the allowed values", async () => {
      const dir = folder({ "beds.toml": BASE.replace('depot = "file"', 'depot = "postgres"') })
      const e = await failure({ dir, env: {} })
      expect(e.code).toBe("CONFIG_INVALID")
      expect(e.message).toContain("engine.depot")
      expect(e.message).toContain('one of "file", "mariadb", "memory"')
      expect(e.message).toContain('found "postgres"')
    })

    it("a value from an environment variable is blamed on that variable", async () => {
      const dir = folder({ "beds.toml": BASE })
      const e = await failure({ dir, env: { BEDS__MARIADB__PORT: "abc" } })
      expect(e.code).toBe("CONFIG_INVALID")
      expect(e.message).toContain("mariadb.port (set in environment variable BEDS__MARIADB__PORT)")
      expect(e.message).toContain('found "abc"')
    })

    it("an unknown key is an error that suggests the nearest known key", async () => {
      const dir = folder({ "beds.toml": BASE.replace('host = "127.0.0.1"', 'host = "127.0.0.1"\nhots = "db"') })
      const e = await failure({ dir, env: {} })
      expect(e.code).toBe("CONFIG_INVALID")
      expect(e.message).toContain("mariadb.hots")
      expect(e.message).toContain("did you mean `mariadb.host`?")
      expect(e.message).toContain(`Rename or remove \`hots\` under [mariadb] in ${path.join(dir, "beds.toml")}.`)
    })

    it("an unknown key with no close match lists the known keys", async () => {
      const dir = folder({ "beds.toml": BASE + "\n[telemetry]\nenabled = true\n" })
      const e = await failure({ dir, env: {} })
      expect(e.message).toContain("telemetry")
      expect(e.message).toContain(
        "known keys at the top level: engine, ingress, topology, roles, mariadb, amqp, mongodb",
      )
    })

    it("an environment variable naming an unknown key is an error that suggests the right name", async () => {
      const dir = folder({ "beds.toml": BASE })
      const e = await failure({
        dir,
        env: { BEDS__MARIADB__HOTS: "db", BEDS__NOPE__X: "1", BEDS__MARIADB__PORT__X: "1" },
      })
      expect(e.code).toBe("CONFIG_INVALID")
      expect(e.message).toContain("BEDS__MARIADB__HOTS")
      expect(e.message).toContain("Did you mean BEDS__MARIADB__HOST?")
      expect(e.message).toContain("BEDS__NOPE__X")
      expect(e.message).toContain("Known keys at the top level: engine")
      expect(e.message).toContain("BEDS__MARIADB__PORT__X: mariadb.port is a single value")
    })

    it("a malformed variable name is an error", async () => {
      const dir = folder({ "beds.toml": BASE })
      const e = await failure({ dir, env: { BEDS__MARIADB____PORT: "1" } })
      expect(e.code).toBe("CONFIG_INVALID")
      expect(e.message).toContain("BEDS__MARIADB____PORT: malformed name")
    })

    it("a missing required key names the key and the files that were read", async () => {
      const dir = folder({ "beds.toml": BASE.replace("heartbeat_s = 30", ""), "env_dev.toml": "" })
      const e = await failure({ dir, env: { BEDS_ENV: "dev" } })
      expect(e.code).toBe("CONFIG_INVALID")
      expect(e.message).toContain("amqp.heartbeat_s is missing")
      expect(e.message).toContain("Add `heartbeat_s = ...` under [amqp]")
      expect(e.message).toContain(`${path.join(dir, "beds.toml")}, ${path.join(dir, "env_dev.toml")}`)
    })

    it("reports every problem at once", async () => {
      const dir = folder({
        "beds.toml": BASE.replace("port = 3306", "port = 0").replace("retries = 5", "retries = -1"),
      })
      const e = await failure({ dir, env: { BEDS__ENGINE__LOG_LEVEL: "loud" } })
      expect(e.message).toContain("Invalid configuration (3 problems)")
      expect(e.message).toContain("mariadb.port")
      expect(e.message).toContain("topology.retries")
      expect(e.message).toContain("expected an integer greater than or equal to 0, found -1")
      expect(e.message).toContain("engine.log_level (set in environment variable BEDS__ENGINE__LOG_LEVEL)")
    })

    it("a role that is not defined under [roles] is an error listing the defined ones", async () => {
      const dir = folder({ "beds.toml": BASE.replace('role = "all"', 'role = "app"') })
      const e = await failure({ dir, env: {} })
      expect(e.code).toBe("CONFIG_INVALID")
      expect(e.message).toContain('engine.role = "app"')
      expect(e.message).toContain("[roles.app]")
      expect(e.message).toContain("one of: all")
    })
    it('engine.rec = "mongodb" without MongoDB settings is an error naming both ways to give them', async () => {
      const dir = folder({ "beds.toml": BASE.replace('rec = "memory"', 'rec = "mongodb"') })
      const e = await failure({ dir, env: {} })
      expect(e.code).toBe("CONFIG_INVALID")
      expect(e.message).toContain('engine.rec = "mongodb"')
      expect(e.message).toContain("BEDS_MONGO_URL")
      expect(e.message).toContain("[mongodb]")
      await expect(ok({ dir, env: { BEDS_MONGO_URL: "mongodb://127.0.0.1" } })).resolves.toBeDefined()
    })

    it("an unknown table set by two files names both", async () => {
      const dir = folder({ "beds.toml": BASE + "\n[mariadbb]\nhost = 1\n", "env_dev.toml": "[mariadbb]\nport = 2\n" })
      const e = await failure({ dir, env: { BEDS_ENV: "dev" } })
      expect(e.message).toContain(
        `mariadbb (set in ${path.join(dir, "beds.toml")} and ${path.join(dir, "env_dev.toml")}) is not a known key; did you mean \`mariadb\`?`,
      )
    })
  })

  describe("the shipped config/ folder", () => {
    it("beds.toml alone gives the embedded default", async () => {
      const loaded = await ok({ dir: SHIPPED, env: {} })
      expect(loaded.config.engine).toMatchObject({
        depot: "file",
        rel: "memory",
        rec: "memory",
        transport: "embedded",
        data_dir: "data",
        role: "all",
      })
      expect(loaded.config.roles.all).toEqual({ depots: ["*"], topologies: ["*"] })
    })

    it.each([
      ["dev", "beds"],
      ["test", "beds_test"],
    ])("env_%s.toml selects the local services with database %s", async (name, database) => {
      const loaded = await ok({ dir: SHIPPED, env: { BEDS_ENV: name } })
      expect(loaded.config.engine).toMatchObject({ depot: "mariadb", rel: "mariadb", transport: "amqp" })
      expect(loaded.config.mariadb).toMatchObject({
        host: "127.0.0.1",
        port: 3306,
        user: "root",
        password: "",
        database,
      })
      expect(loaded.config.amqp.url).toBe("amqp://guest:guest@127.0.0.1:5672")
    })
  })
})
