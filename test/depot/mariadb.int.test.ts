import { afterAll, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import * as mariadb from "mariadb"
import * as Depot from "../../src/depot/depot.ts"
import type { AppendRequest } from "../../src/depot/event.ts"
import * as MariaDbDepot from "../../src/depot/mariadb.ts"
import { DepotStore } from "../../src/depot/store.ts"
import * as MariaDb from "../../src/mariadb/client.ts"
import { dropDatabase, mariaDbAvailable, mariaDbSettings } from "../support/services.ts"
import { depotStoreConformance } from "./conformance.ts"

const available = await mariaDbAvailable()
const settings = { ...mariaDbSettings("depot"), pool: 4 }

const storeLayer = (options?: MariaDbDepot.Options) =>
  (options === undefined ? MariaDbDepot.layer : MariaDbDepot.layerWith(options)).pipe(
    Layer.provide(MariaDb.layer(settings)),
  )

const raw = () =>
  mariadb.createConnection({
    host: settings.host,
    port: settings.port,
    user: settings.user,
    password: settings.password,
    database: settings.database,
  })

const req = (messageId: string, key: string, extra: Partial<AppendRequest> = {}): AppendRequest => ({
  messageId,
  type: "Noted",
  key,
  payload: {},
  time: 0,
  ...extra,
})

describe.runIf(available)("MariaDB depot store", () => {
  afterAll(() => dropDatabase(settings))

  depotStoreConformance("mariadb", () => storeLayer(), {
    reopen: true,
    fencing: true,
    propertyRuns: 40,
    appendAll: true,
  })
  // Every key evicted at once: versions must then come from the table, every batch.
  depotStoreConformance("mariadb, key cache of 1", () => storeLayer({ keyCacheSize: 1 }), {
    propertyRuns: 25,
    appendAll: true,
  })

  const store = Effect.map(Layer.build(storeLayer()), (ctx) => Context.get(ctx, DepotStore))
  const declare = (name: string) => Depot.make({ name, partitions: 4, key: "test key", events: {} })

  // Live: the test waits on the real clock while the other transaction holds its lock.
  it.live("a message_id committed meanwhile by another partition is answered as a duplicate", () =>
    Effect.gen(function* () {
      const s = yield* store
      yield* s.open([declare("race")])
      const conn = yield* Effect.promise(raw)
      yield* Effect.addFinalizer(() => Effect.promise(() => conn.end()))
      // Another writer holds the row uncommitted, so the batch's duplicate check cannot see it yet.
      yield* Effect.promise(async () => {
        await conn.beginTransaction()
        await conn.query(
          "INSERT INTO beds_event (depot, part, off, id, type, `key`, version, payload, time, parent, root, message_id, metadata) VALUES ('race', 0, 0, 'race:0:0', 'Noted', 'k0', 1, '{}', 0, NULL, 'race:0:0', 'm', '{}')",
        )
      })
      const pending = Effect.runPromise(s.append("race", 1, [req("m", "k1"), req("n", "k1")]))
      yield* Effect.sleep("300 millis")
      yield* Effect.promise(() => conn.commit())
      const out = yield* Effect.promise(() => pending)
      expect(out[0]).toMatchObject({ _tag: "Appended", duplicate: true, event: { id: "race:0:0", partition: 0 } })
      expect(out[1]).toMatchObject({ _tag: "Appended", duplicate: false, event: { id: "race:1:0", offset: 0 } })
      expect(yield* s.head("race", 1)).toBe(1)
    }),
  )

  it.effect("the queries of an append ride on their indexes", () =>
    Effect.gen(function* () {
      const s = yield* store
      yield* s.open([declare("plan")])
      yield* s.append(
        "plan",
        0,
        Array.from({ length: 600 }, (_, i) => req(`m${i}`, `k${i % 3}`)),
      )
      const conn = yield* Effect.promise(raw)
      yield* Effect.addFinalizer(() => Effect.promise(() => conn.end()))
      const explain = (sql: string) =>
        Effect.promise(async () => {
          await conn.query("ANALYZE TABLE beds_event")
          return (await conn.query(`EXPLAIN ${sql}`)) as Array<{ key: string | null; type: string; Extra: string }>
        })
      const descendants = yield* explain(
        "SELECT id FROM beds_event WHERE id >= 'plan:0:1/' AND id < 'plan:0:10' ORDER BY id LIMIT 10",
      )
      expect(descendants[0]?.key).toBe("uq_event_id")
      const versions = yield* explain(
        "SELECT t.k, (SELECT e.version FROM beds_event e WHERE e.depot = 'plan' AND e.`key` = t.k ORDER BY e.version DESC LIMIT 1) FROM JSON_TABLE('[\"k1\",\"k2\"]', '$[*]' COLUMNS (k VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin PATH '$')) t",
      )
      // One descent per key, not a walk through its history.
      expect(versions[1]).toMatchObject({ key: "ix_event_key", type: "ref" })
      expect(versions[1]?.Extra).not.toContain("filesort")
      const version = yield* explain("SELECT MAX(version) FROM beds_event WHERE depot = 'plan' AND `key` = 'k1'")
      expect(version[0]?.Extra).toContain("Select tables optimized away")
      const head = yield* explain("SELECT MAX(off) FROM beds_event WHERE depot = 'plan' AND part = 0")
      expect(head[0]?.Extra).toContain("Select tables optimized away")
    }),
  )

  it.effect("a table of another shape is reported as schema drift", () =>
    Effect.gen(function* () {
      const drifted = { ...settings, database: `${settings.database}_drift`.slice(0, 64) }
      yield* Effect.addFinalizer(() => Effect.promise(() => dropDatabase(drifted)))
      const layer = MariaDbDepot.layer.pipe(Layer.provide(MariaDb.layer(drifted)))
      const s = Context.get(yield* Layer.build(layer), DepotStore)
      const conn = yield* Effect.promise(() => mariadb.createConnection({ ...drifted, port: drifted.port }))
      yield* Effect.promise(async () => {
        await conn.query("CREATE TABLE beds_event (depot VARCHAR(63) NOT NULL PRIMARY KEY)")
        await conn.end()
      })
      const error = yield* Effect.flip(s.open([declare("drift")]))
      expect(error.code).toBe("SCHEMA_DRIFT")
      expect(error.message).toContain("message_id")
    }),
  )
})
