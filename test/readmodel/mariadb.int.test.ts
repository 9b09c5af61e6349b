/**
 * The MariaDB read-model adapter against a real server: the conformance
 * suite, then schema drift on real tables (safe changes applied, unsafe ones
 * refused with each difference named).
 */
import { afterAll, assert, describe, expect, layer } from "@effect/vitest"
import { Effect, Layer } from "effect"
import * as Client from "../../src/mariadb/client.ts"
import { MariaDb } from "../../src/mariadb/client.ts"
import * as Store from "../../src/readmodel/mariadb.ts"
import { ReadModelStore } from "../../src/readmodel/store.ts"
import { planMigration } from "../../src/template/ddl.ts"
import { parseTemplate } from "../../src/template/load.ts"
import { LAST_EVENT_COLUMN } from "../../src/template/template.ts"
import { dropDatabase, mariaDbAvailable, mariaDbSettings } from "../support/services.ts"
import { readModelConformance } from "./conformance.ts"

const settings = mariaDbSettings("readmodel")
const available = await mariaDbAvailable()
const makeLayer = () => Store.layer.pipe(Layer.provideMerge(Client.layer(settings)))

afterAll(async () => {
  if (available) await dropDatabase(settings)
})

readModelConformance("mariadb", makeLayer, { skip: !available })

const template = (text: string) => Effect.runSync(parseTemplate(text, "drift/dr_acct.toml"))

const V1 = `
tla = "DRA"
name = "dr_acct"
backend = "rel"
key = ["id"]

[fields.id]
type = "string"
max = 32

[fields.owner]
type = "string"
max = 50
nullable = true

[fields.status]
type = "enum"
values = ["open", "closed"]
default = "open"

[[indexes]]
name = "by_owner"
fields = ["owner"]
`

/** V1 plus only safe changes. */
const V2 = `${V1.replace(`values = ["open", "closed"]`, `values = ["open", "closed", "suspended"]`)}
[fields.note]
type = "text"
nullable = true

[fields.score]
type = "int"
default = 5

[fields.flag]
type = "bool"
default = true

[fields.kind]
type = "enum"
values = ["x", "y"]
default = "x"

[fields.meta]
type = "json"
default = { tags = [] }

[[indexes]]
name = "by_status"
fields = ["status", "score"]
`

describe.skipIf(!available)("MariaDB read models: schema drift", () => {
  layer(makeLayer(), { timeout: "60 seconds" })((it) => {
    it.effect("a missing table is created; safe changes are applied to an existing one", () =>
      Effect.gen(function* () {
        const store = yield* ReadModelStore
        const db = yield* MariaDb
        expect(yield* Store.describeTable("dr_acct")).toBeUndefined()
        yield* store.ensure([template(V1)])
        yield* store.commit({ topology: "drift", depot: "d", partition: 0 }, 1, [
          {
            template: "dr_acct",
            key: ["a1"],
            row: { id: "a1", owner: "Ann", status: "closed", [LAST_EVENT_COLUMN]: "d:0:0" },
          },
        ])

        const v2 = template(V2)
        yield* store.ensure([v2])
        const actual = yield* Store.describeTable("dr_acct")
        assert.isDefined(actual)
        expect(planMigration(v2, actual!)).toEqual({ safe: [], unsafe: [] })
        expect(actual!.indexes.map((i) => i.name).sort()).toEqual(["PRIMARY", "by_owner", "by_status"])

        // Rows already there got the new fields' defaults.
        expect(yield* store.scan("dr_acct")).toEqual([
          {
            id: "a1",
            owner: "Ann",
            status: "closed",
            note: null,
            score: 5,
            flag: true,
            kind: "x",
            meta: { tags: [] },
            [LAST_EVENT_COLUMN]: "d:0:0",
          },
        ])
        // The widened enum takes its new, longer value; the database itself still refuses others.
        yield* store.commit({ topology: "drift", depot: "d", partition: 0 }, 2, [
          {
            template: "dr_acct",
            key: ["a2"],
            row: { id: "a2", status: "suspended", kind: "y", [LAST_EVENT_COLUMN]: "d:0:1" },
          },
        ])
        const refused = yield* Effect.flip(
          db.run("raw insert", (pool) =>
            pool.query(
              `INSERT INTO dr_acct (id, status, kind, meta, ${LAST_EVENT_COLUMN}) VALUES ('a3', 'bogus', 'x', '{}', 'd:0:2')`,
            ),
          ),
        )
        expect(refused.message).toContain("status")

        // Idempotent: a second ensure has nothing to do.
        yield* store.ensure([v2])
        expect(yield* store.scan("dr_acct")).toHaveLength(2)
      }),
    )

    it.effect("unsafe changes are refused with every difference named, and nothing is applied", () =>
      Effect.gen(function* () {
        const store = yield* ReadModelStore
        yield* store.ensure([template(V2)])
        const before = yield* Store.describeTable("dr_acct")
        const v3 = template(
          V2.replace(`key = ["id"]`, `key = ["id", "region"]`)
            .replace(`[fields.owner]\ntype = "string"\nmax = 50`, `[fields.owner]\ntype = "int"`)
            .replace(`values = ["open", "closed", "suspended"]`, `values = ["open", "suspended"]`)
            .replace(`[fields.note]\ntype = "text"\nnullable = true`, `[fields.note]\ntype = "text"`)
            .replace(`[fields.flag]\ntype = "bool"\ndefault = true\n`, "")
            .replace(`fields = ["owner"]`, `fields = ["owner", "score"]`)
            .concat(`\n[fields.added_later]\ntype = "string"\nmax = 10\nnullable = true\n`)
            .concat(`\n[fields.required_later]\ntype = "int"\n`)
            .concat(`\n[fields.region]\ntype = "string"\nmax = 10\n`),
        )
        const e = yield* Effect.flip(store.ensure([v3]))
        expect(e.code).toBe("SCHEMA_DRIFT")
        assert.isFalse(e.retryable)
        for (const expected of [
          "dr_acct (DRA, drift/dr_acct.toml)",
          'column owner is varchar(50) in the table; the template (type = "int") needs bigint',
          'column status allows "closed" in the table',
          "column note allows NULL in the table",
          "column flag is in the table but not in the template",
          "column required_later is missing from the table and is not nullable without a default",
          "key: the table's primary key is (id); the template's key is (id, region)",
          "index by_owner is an index on (owner) in the table; the template declares an index on (owner, score)",
          "replay into a new template",
          "migrate the table by hand",
        ])
          expect(e.message).toContain(expected)
        // The safe part of the same change (a new nullable column) was not applied either.
        expect(yield* Store.describeTable("dr_acct")).toEqual(before)
        // The store still serves the template it had.
        yield* store.scan("dr_acct")
      }),
    )

    it.effect("quotes, backslashes and emoji survive DDL, information_schema and the drift check", () =>
      Effect.gen(function* () {
        const store = yield* ReadModelStore
        const t = Effect.runSync(
          parseTemplate(
            `
tla = "DRE"
name = "dr_every"
backend = "rel"
key = ["id", "kind"]

[fields.id]
type = "int"

[fields.kind]
type = "enum"
values = ["a'b", "c\\\\d", "😀", "plain"]

[fields.s]
type = "string"
max = 30
default = "it's \\\\ \\"quoted\\""

[fields.f]
type = "float"
default = -2.5e-3

[fields.at]
type = "time"
default = 2024-02-29T12:00:00Z

[fields.j]
type = "json"
default = { "key with 'quote'" = ["\\\\"] }

[[indexes]]
name = "by_s"
fields = ["s", "f"]
unique = true
`,
            "drift/dr_every.toml",
          ),
        )
        yield* store.ensure([t])
        const actual = yield* Store.describeTable("dr_every")
        expect(planMigration(t, actual!)).toEqual({ safe: [], unsafe: [] })
        yield* store.ensure([t])
        const rows = ["a'b", "c\\d", "😀"].map((kind, i) => ({
          id: i,
          kind,
          s: `s${i}`,
          [LAST_EVENT_COLUMN]: `d:0:${i}`,
        }))
        yield* store.commit(
          { topology: "drift", depot: "d", partition: 1 },
          3,
          rows.map((r) => ({ template: "dr_every", key: [r.id, r.kind], row: r })),
        )
        const scanned = yield* store.scan("dr_every")
        expect(scanned.map((r) => r.kind)).toEqual(["a'b", "c\\d", "😀"])
        expect(scanned[0]).toMatchObject({
          f: -2.5e-3,
          at: Date.UTC(2024, 1, 29, 12),
          j: { "key with 'quote'": ["\\"] },
        })
        // Rows added by a later column get the same default the engine writes.
        const db = yield* MariaDb
        const raw: Array<{ s: string }> = yield* db.run("raw select", (pool) =>
          pool.query("SELECT s FROM dr_every WHERE id = 0"),
        )
        expect(raw[0]?.s).toBe("s0")
        yield* db.run("raw insert", (pool) =>
          pool.query(`INSERT INTO dr_every (id, kind, ${LAST_EVENT_COLUMN}) VALUES (9, 'plain', 'd:0:9')`),
        )
        expect((yield* store.load("dr_every", [[9, "plain"]])).get(JSON.stringify([9, "plain"]))).toEqual({
          id: 9,
          kind: "plain",
          s: `it's \\ "quoted"`,
          f: -2.5e-3,
          at: Date.UTC(2024, 1, 29, 12),
          j: { "key with 'quote'": ["\\"] },
          [LAST_EVENT_COLUMN]: "d:0:9",
        })
      }),
    )

    it.effect("the MariaDB store refuses REC templates", () =>
      Effect.gen(function* () {
        const store = yield* ReadModelStore
        const rec = template(V1.replace(`backend = "rel"`, `backend = "rec"`).replace("dr_acct", "dr_rec"))
        const e = yield* Effect.flip(store.ensure([{ ...rec, tla: "DRR" }]))
        expect(e.message).toContain("REC template")
        expect(yield* Store.describeTable("dr_rec")).toBeUndefined()
      }),
    )
  })
})
