/**
 * `beds start` on RabbitMQ and MariaDB: the ordered start-up (IPL) logs its
 * steps in order, the broker before the databases and consumers last; a
 * service that is down or refuses the login stops it with a non-zero exit
 * naming the step, the address and the remedy.
 */
import { spawnSync } from "node:child_process"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { accounts } from "../../depots/accounts.ts"
import * as Broker from "../../src/broker/topology.ts"
import { kill, projectRoot, startEngine } from "../support/engine-process.ts"
import { dropDatabase, mariaDbAvailable, mariaDbSettings, rabbitAvailable } from "../support/services.ts"

const available = (await rabbitAvailable()) && (await mariaDbAvailable())
const URL = "amqp://guest:guest@127.0.0.1:5672"
const settings = mariaDbSettings("start")
const prefix = `bedsstart${process.pid}`
const env = { BEDS_ENV: "dev", BEDS__MARIADB__DATABASE: settings.database, BEDS__AMQP__PREFIX: prefix }

/** Runs `beds start` to its end (it fails at start-up) with these settings over the dev ones. */
const refusedStart = (overrides: Record<string, string>) =>
  spawnSync(
    path.join(projectRoot, "node_modules", "node", "bin", "node"),
    [path.join(projectRoot, "bin", "beds.js"), "--root", projectRoot, "start"],
    { env: { ...process.env, ...env, ...overrides }, encoding: "utf8", timeout: 60_000 },
  )

describe.runIf(available)("beds start", () => {
  afterAll(async () => {
    await Broker.remove(URL, [accounts, { name: "alerts", partitions: 2 }], { prefix, deadLetters: true }).catch(
      () => undefined,
    )
    await dropDatabase(settings)
  })

  it("logs each step with its duration, in order: config, declarations, broker, MariaDB, storage, catch-up, consumers, ready", async () => {
    const engine = await startEngine(env)
    try {
      const steps = [
        /^ipl: config /,
        /^ipl: declarations and templates +ok +[\d.]+ ms$/,
        /^ipl: RabbitMQ 127\.0\.0\.1:5672: login, topology +ok +[\d.]+ ms$/,
        /^ipl: MariaDB 127\.0\.0\.1:3306 primary +ok +[\d.]+ ms$/,
        /^ipl: topology versions +ok +[\d.]+ ms$/,
        /^ipl: storage, DDL, recovery, topologies +ok +[\d.]+ ms$/,
        /^ipl: topologies catching up +ok +[\d.]+ ms$/,
        /^ipl: RabbitMQ 127\.0\.0\.1:5672: consumers +ok +[\d.]+ ms$/,
        /^beds ready in \d+ ms/,
      ]
      const at = steps.map((re) => engine.stderr.findIndex((line) => re.test(line)))
      expect(
        at.every((i) => i >= 0),
        engine.stderr.join("\n"),
      ).toBe(true)
      expect([...at].sort((a, b) => a - b)).toEqual(at)
    } finally {
      await kill(engine)
    }
  }, 60_000)

  interface Refusal {
    readonly name: string
    readonly overrides: Record<string, string>
    readonly exit: number
    /** The step's FAILED line. */
    readonly failed: RegExp
    readonly says: ReadonlyArray<string>
    readonly never: ReadonlyArray<string>
  }
  const refusals: ReadonlyArray<Refusal> = [
    {
      name: "an unreachable broker: exit 3, the step and the address named, how to start it; no database touched",
      overrides: { BEDS__AMQP__URL: "amqp://guest:guest@127.0.0.1:1" },
      exit: 3,
      failed: /^ipl: RabbitMQ 127\.0\.0\.1:1: login, topology +FAILED/m,
      says: ["beds: UNREACHABLE:", "cannot reach RabbitMQ at 127.0.0.1:1", "rabbitmq-server -detached"],
      never: ["MariaDB"],
    },
    {
      name: "a broker that refuses the password: exit 2, LOGIN_REFUSED, the password not shown",
      overrides: { BEDS__AMQP__URL: "amqp://guest:not-the-password@127.0.0.1:5672" },
      exit: 2,
      failed: /^ipl: RabbitMQ 127\.0\.0\.1:5672: login, topology +FAILED/m,
      says: ["beds: LOGIN_REFUSED:", "Check the user, password and vhost in amqp.url"],
      never: ["not-the-password"],
    },
    {
      name: "an unreachable MariaDB: exit 3 at the MariaDB step, after the broker's, with the address and how to start it",
      overrides: { BEDS__MARIADB__PORT: "1" },
      exit: 3,
      failed:
        /^ipl: RabbitMQ 127\.0\.0\.1:5672: login, topology +ok.*\n(.*\n)*ipl: MariaDB 127\.0\.0\.1:1 primary +FAILED/m,
      says: ["beds: STORE_UNAVAILABLE:", "cannot reach MariaDB at 127.0.0.1:1/", "start-stop-daemon --start"],
      never: [],
    },
    {
      name: "a MariaDB that refuses the password: exit 2, LOGIN_REFUSED, naming the user and the setting to fix",
      overrides: { BEDS__MARIADB__PASSWORD: "not-the-password" },
      exit: 2,
      failed: /^ipl: MariaDB 127\.0\.0\.1:3306 primary +FAILED/m,
      says: ["beds: LOGIN_REFUSED:", 'refused user "root"', "mariadb.password"],
      never: ["not-the-password"],
    },
  ]

  it.each(refusals)("$name", ({ overrides, exit, failed, says, never }) => {
    const r = refusedStart(overrides)
    expect(r.status, r.stderr).toBe(exit)
    expect(r.stderr).toMatch(failed)
    for (const text of says) expect(r.stderr).toContain(text)
    for (const text of never) expect(r.stderr).not.toContain(text)
  })
})
