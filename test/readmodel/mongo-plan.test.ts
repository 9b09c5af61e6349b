/**
 * REC templates as MongoDB sees them: what the loader accepts and refuses
 * for nested shapes and index paths (each refusal naming the file, the key
 * path and the fix), the indexes and index plan derived from templates, and
 * the drift check between a template and its collection.
 */
import * as fs from "node:fs"
import { Effect } from "effect"
import { Long } from "mongodb"
import { describe, expect, it } from "vitest"
import type { DeclarationError } from "../../src/errors.ts"
import { parseTemplate } from "../../src/template/load.ts"
import {
  type ActualCollection,
  indexSpecs,
  planCollection,
  renderIndexPlan,
  stepText,
} from "../../src/template/mongo-plan.ts"
import type { Template } from "../../src/template/template.ts"

const FILE = "templates/rec.toml"
const HEAD = `tla = "REC"\nname = "rec"\nbackend = "rec"\nkey = ["id"]\n\n[fields.id]\ntype = "string"\nmax = 10\n`
const parse = (text: string, file = FILE): Template => Effect.runSync(parseTemplate(text, file))
const refuse = (text: string): DeclarationError => Effect.runSync(Effect.flip(parseTemplate(text, FILE)))

describe("REC templates: nested shapes", () => {
  it("loads the ledger template with its shapes", () => {
    const t = parse(fs.readFileSync("templates/ldg_account.toml", "utf8"), "templates/ldg_account.toml")
    expect(t.backend).toBe("rec")
    const byName = new Map(t.fields.map((f) => [f.name, f]))
    expect(byName.get("events")).toMatchObject({ type: "int", shape: { kind: "counter" } })
    expect(byName.get("counts")).toMatchObject({
      type: "json",
      shape: { kind: "map", of: { shape: { kind: "counter" } } },
    })
    expect(byName.get("entries")?.shape).toMatchObject({ kind: "list", of: { shape: { kind: "object" } } })
    expect(t.indexes.map((i) => i.fields)).toEqual([["owner"], ["status", "balance"], ["entries.event"]])
  })

  it("accepts every shape, nested, and index paths MongoDB can serve", () => {
    const t = parse(`${HEAD}
[fields.c]
type = "counter"

[fields.tags]
type = "set"
of = { type = "enum", values = ["a", "b"] }

[fields.m]
type = "map"
of = { type = "map", of = { type = "list", of = { type = "string", max = 5 } } }
default = { x = { y = ["z"] } }

[fields.items]
type = "list"

[fields.items.of]
type = "object"

[fields.items.of.fields.q]
type = "int"

[fields.items.of.fields.sub]
type = "object"
nullable = true

[fields.items.of.fields.sub.fields.r]
type = "float"

[fields.o]
type = "object"

[fields.o.fields.a]
type = "int"
default = 1

[fields.o.fields.email]
type = "string"
max = 40
nullable = true

[fields.doc]
type = "json"
nullable = true

[[indexes]]
name = "multi"
fields = ["items.sub.r", "o.a", "c"]

[[indexes]]
name = "by_tag"
fields = ["tags", "doc"]

[[indexes]]
name = "by_email"
fields = ["o.email"]
unique = true
`)
    expect(t.fields.find((f) => f.name === "m")?.default).toBe(JSON.stringify({ x: { y: ["z"] } }))
    expect(t.fields.find((f) => f.name === "items")?.shape).toMatchObject({
      kind: "list",
      of: { type: "json", shape: { kind: "object", fields: [{ name: "q" }, { name: "sub", nullable: true }] } },
    })
  })

  const cases: ReadonlyArray<readonly [string, string, DeclarationError["code"], ReadonlyArray<string>]> = [
    [
      "a shape in a REL template",
      `${HEAD.replace(`backend = "rec"`, `backend = "rel"`)}[fields.m]\ntype = "map"\nof = { type = "int" }\n`,
      "BAD_TEMPLATE",
      [`fields.m.type: "map" is a REC type`, `use type = "json" here, or make the template backend = "rec"`],
    ],
    [
      "a map without the type of its values",
      `${HEAD}[fields.m]\ntype = "map"\n`,
      "BAD_TEMPLATE",
      ["fields.m.of: a map field needs the type of its values", `of = { type = "string", max = 40 }`],
    ],
    [
      "of on a scalar",
      `${HEAD}[fields.n]\ntype = "int"\nof = { type = "int" }\n`,
      "BAD_TEMPLATE",
      ["fields.n.of: of applies to map, list and set fields only"],
    ],
    [
      "fields on a map",
      `${HEAD}[fields.m]\ntype = "map"\nof = { type = "int" }\n[fields.m.fields.x]\ntype = "int"\n`,
      "BAD_TEMPLATE",
      ["fields.m.fields: fields applies to object fields only"],
    ],
    [
      "an unknown key in an element type",
      `${HEAD}[fields.m]\ntype = "map"\nof = { type = "int", nullable = true }\n`,
      "BAD_TEMPLATE",
      ["fields.m.of.nullable: unknown key", "allowed here: type, max, values, of, fields"],
    ],
    [
      "a set of floats",
      `${HEAD}[fields.s]\ntype = "set"\nof = { type = "float" }\n`,
      "BAD_TEMPLATE",
      ["fields.s.of.type: a set holds distinct scalars", "string, enum, int, time, bool, not float", `type = "list"`],
    ],
    [
      "a set of objects",
      `${HEAD}[fields.s]\ntype = "set"\n[fields.s.of]\ntype = "object"\n[fields.s.of.fields.a]\ntype = "int"\n`,
      "BAD_TEMPLATE",
      ["fields.s.of.type: a set holds distinct scalars", "not object"],
    ],
    [
      "a nullable counter",
      `${HEAD}[fields.c]\ntype = "counter"\nnullable = true\n`,
      "BAD_TEMPLATE",
      ["fields.c.nullable: a counter is never null (it starts at 0); remove nullable."],
    ],
    [
      "a counter in the key",
      HEAD.replace(`key = ["id"]`, `key = ["c"]`).concat(`[fields.c]\ntype = "counter"\n`),
      "BAD_TEMPLATE",
      ["key[0]: key field c is a counter field; key fields must be string, int, enum."],
    ],
    [
      "a path in the key",
      HEAD.replace(`key = ["id"]`, `key = ["o.a"]`).concat(
        `[fields.o]\ntype = "object"\n[fields.o.fields.a]\ntype = "int"\n`,
      ),
      "BAD_TEMPLATE",
      [`key[0]: "o.a" is a path into a field; key fields are top-level fields`, "declare [fields.a] at the top level"],
    ],
    [
      "an object without fields",
      `${HEAD}[fields.o]\ntype = "object"\n`,
      "BAD_TEMPLATE",
      ["fields.o.fields: an object field needs its fields as tables, e.g. [fields.o.fields.total]"],
    ],
    [
      "a nested field of an unknown type",
      `${HEAD}[fields.o]\ntype = "object"\n[fields.o.fields.x]\ntype = "integer"\n`,
      "BAD_TEMPLATE",
      [`fields.o.fields.x.type: unknown type "integer"`, "map, list, set, counter, object"],
    ],
    [
      "a nested field with an unsafe name",
      `${HEAD}[fields.o]\ntype = "object"\n[fields.o.fields.Bad]\ntype = "int"\n`,
      "UNSAFE_IDENTIFIER",
      [`fields.o.fields.Bad: "Bad" is not a safe name`],
    ],
    [
      "a default that does not fit the shape",
      `${HEAD}[fields.l]\ntype = "list"\nof = { type = "int" }\ndefault = ["x"]\n`,
      "BAD_TEMPLATE",
      [`fields.l.default: the default rec.l[0]: "x" is not an integer`],
    ],
    [
      "an index path into a map",
      `${HEAD}[fields.m]\ntype = "map"\nof = { type = "int" }\n[[indexes]]\nname = "by_m"\nfields = ["m.x"]\n`,
      "BAD_TEMPLATE",
      [`indexes[0].fields[0]: index by_m names "m.x", but m is a map`, "Index a list of objects instead"],
    ],
    [
      "an index on a whole object",
      `${HEAD}[fields.o]\ntype = "object"\n[fields.o.fields.a]\ntype = "int"\n[[indexes]]\nname = "by_o"\nfields = ["o"]\n`,
      "BAD_TEMPLATE",
      [`index by_o names "o", a whole object; index one of its scalar fields instead, e.g. "o.a"`],
    ],
    [
      "an index path through a scalar",
      `${HEAD}[fields.n]\ntype = "int"\n[[indexes]]\nname = "by_n"\nfields = ["n.x"]\n`,
      "BAD_TEMPLATE",
      [`but n is a int field, not an object, so it has no field "x"`],
    ],
    [
      "an index path to an undeclared nested field",
      `${HEAD}[fields.o]\ntype = "object"\n[fields.o.fields.a]\ntype = "int"\n[[indexes]]\nname = "by_o"\nfields = ["o.b"]\n`,
      "UNKNOWN_FIELD",
      [`indexes[0].fields[0]: index by_o names "o.b", but o has no field "b"`],
    ],
    [
      "an index over two lists",
      `${HEAD}[fields.tags]\ntype = "set"\nof = { type = "string", max = 5 }\n[fields.items]\ntype = "list"\n[fields.items.of]\ntype = "object"\n[fields.items.of.fields.q]\ntype = "int"\n[[indexes]]\nname = "par"\nfields = ["tags", "items.q"]\n`,
      "BAD_TEMPLATE",
      ["indexes[0].fields: index par names tags and items.q", "cannot index parallel arrays", "one index per list"],
    ],
    [
      "a unique index on a set",
      `${HEAD}[fields.tags]\ntype = "set"\nof = { type = "string", max = 5 }\n[[indexes]]\nname = "u"\nfields = ["tags"]\nunique = true\n`,
      "BAD_TEMPLATE",
      ["unique index u names tags, which goes through the list or set tags", "Make the index non-unique"],
    ],
    [
      "a unique index on a json field",
      `${HEAD}[fields.doc]\ntype = "json"\n[[indexes]]\nname = "u"\nfields = ["doc"]\nunique = true\n`,
      "BAD_TEMPLATE",
      ["unique index u names doc, a json field"],
    ],
    [
      "an index naming a field and a path inside it",
      `${HEAD}[fields.o]\ntype = "object"\n[fields.o.fields.a]\ntype = "int"\n[[indexes]]\nname = "x"\nfields = ["o.a", "o"]\n`,
      "BAD_TEMPLATE",
      ["indexes[0].fields[0]: index x names both o.a and o, one inside the other; name one of them."],
    ],
    [
      "an index path with an unsafe segment",
      `${HEAD}[[indexes]]\nname = "x"\nfields = ["id.$"]\n`,
      "UNSAFE_IDENTIFIER",
      [`indexes[0].fields[0]: "id.$" is not a field path`],
    ],
    [
      "shapes nested too deep",
      `${HEAD}[fields.deep]\ntype = "list"\nof = ${Array.from({ length: 17 }, () => `{ type = "list", of = `).join("")}{ type = "int" }${" }".repeat(17)}\n`,
      "BAD_TEMPLATE",
      ["nest more than 16 levels deep"],
    ],
  ]

  for (const [what, text, code, parts] of cases)
    it(`refuses ${what}, naming the file, the key path and the fix`, () => {
      const e = refuse(text)
      expect(e.code).toBe(code)
      expect(e.message.startsWith(`${FILE}: `)).toBe(true)
      for (const part of parts) expect(e.message).toContain(part)
    })
})

const base = parse(`${HEAD}
[fields.n]
type = "int"
default = 0

[fields.s]
type = "string"
max = 20
nullable = true

[fields.kind]
type = "enum"
values = ["a", "b"]
default = "a"

[fields.o]
type = "object"

[fields.o.fields.a]
type = "int"
default = 0

[fields.o.fields.at]
type = "time"
nullable = true

[[indexes]]
name = "by_n"
fields = ["n"]

[[indexes]]
name = "by_at"
fields = ["o.at", "kind"]
unique = true
`)

const empty: ActualCollection = { exists: false, documents: 0, recorded: undefined, indexes: [] }
const current = (t: Template, documents = 5): ActualCollection => ({
  exists: true,
  documents,
  recorded: t,
  indexes: [{ name: "_id_", key: { _id: 1 } }, ...indexSpecs(t).map((i) => ({ ...i, unique: i.unique || undefined }))],
})
const edit = (t: Template, f: (text: string) => string): Template => {
  const text = `${HEAD}
[fields.n]
type = "int"
default = 0

[fields.s]
type = "string"
max = 20
nullable = true

[fields.kind]
type = "enum"
values = ["a", "b"]
default = "a"

[fields.o]
type = "object"

[fields.o.fields.a]
type = "int"
default = 0

[fields.o.fields.at]
type = "time"
nullable = true

[[indexes]]
name = "by_n"
fields = ["n"]

[[indexes]]
name = "by_at"
fields = ["o.at", "kind"]
unique = true
`
  return { ...parse(f(text)), file: t.file }
}

describe("indexes", () => {
  it("index nested paths; a unique index leaves out documents with a null part", () => {
    expect(indexSpecs(base)).toEqual([
      { name: "by_n", key: { n: 1 }, unique: false, partialFilterExpression: undefined },
      {
        name: "by_at",
        key: { "o.at": 1, kind: 1 },
        unique: true,
        partialFilterExpression: { "o.at": { $type: "date" }, kind: { $type: "string" } },
      },
    ])
  })

  it("prints the collections and indexes of REC templates for a DBA, beside a note for REL ones", () => {
    const ldg = parse(fs.readFileSync("templates/ldg_account.toml", "utf8"), "templates/ldg_account.toml")
    const acb = parse(fs.readFileSync("templates/acc_balance.toml", "utf8"), "templates/acc_balance.toml")
    const plan = renderIndexPlan([acb, ldg])
    for (const line of [
      "// BEDS read-model collections, derived from 1 REC template(s).",
      `db.createCollection("beds_checkpoint")`,
      "// ACB acc_balance (templates/acc_balance.toml)",
      "// REL template: a MariaDB table, see the SQL DDL.",
      "// LDG ldg_account (templates/ldg_account.toml)",
      "// _id: account_id",
      `db.createCollection("ldg_account")`,
      `db.getCollection("ldg_account").createIndex({"entries.event":1}, {"name":"by_entry_event"})`,
      `db.getCollection("ldg_account").createIndex({"status":1,"balance":1}, {"name":"by_status_balance"})`,
      "counts: { <key>: long (counter) }",
      "entries: [ { event: string, at: date, kind: enum(deposit|withdrawal), amount: long, balance: long } ]",
    ])
      expect(plan).toContain(line)
    expect(
      stepText("rec", { kind: "createIndex", index: indexSpecs(base)[1] as ReturnType<typeof indexSpecs>[number] }),
    ).toBe(
      `db.getCollection("rec").createIndex({"o.at":1,"kind":1}, {"name":"by_at","unique":true,"partialFilterExpression":{"o.at":{"$type":"date"},"kind":{"$type":"string"}}})`,
    )
  })
})

describe("drift between a template and its collection", () => {
  it("creates what is missing on an empty database and records the template", () => {
    expect(planCollection(base, empty)).toEqual({
      safe: [
        { kind: "createCollection" },
        ...indexSpecs(base).map((index) => ({ kind: "createIndex", index })),
        { kind: "record" },
      ],
      unsafe: [],
    })
  })

  it("has nothing to do when the collection matches; ignores descriptions and the file", () => {
    expect(planCollection({ ...base, description: "new words", file: "elsewhere.toml" }, current(base))).toEqual({
      safe: [],
      unsafe: [],
    })
  })

  it("applies safe changes: new defaulted or nullable fields, wider strings and enums, nullable fields, new indexes", () => {
    const wider = edit(base, (t) =>
      t
        .replace("max = 20", "max = 40")
        .replace(`values = ["a", "b"]`, `values = ["a", "b", "c"]`)
        .replace(
          `[fields.o.fields.a]\ntype = "int"\ndefault = 0`,
          `[fields.o.fields.a]\ntype = "int"\ndefault = 0\nnullable = true`,
        )
        .concat(
          `\n[fields.added]\ntype = "int"\ndefault = 3\n\n[fields.maybe]\ntype = "string"\nmax = 5\nnullable = true\n`,
        )
        .concat(`\n[fields.o.fields.later]\ntype = "bool"\ndefault = true\n`)
        .concat(`\n[[indexes]]\nname = "by_s"\nfields = ["s"]\n`),
    )
    const plan = planCollection(wider, current(base))
    expect(plan.unsafe).toEqual([])
    expect(plan.safe).toEqual([
      { kind: "fillDefault", field: "added", value: Long.fromNumber(3) },
      { kind: "fillDefault", field: "maybe", value: null },
      {
        kind: "createIndex",
        index: { name: "by_s", key: { s: 1 }, unique: false, partialFilterExpression: undefined },
      },
      { kind: "record" },
    ])
    // An empty collection needs no defaults written.
    expect(planCollection(wider, current(base, 0)).safe.map((s) => s.kind)).toEqual(["createIndex", "record"])
  })

  it("refuses unsafe changes, naming each", () => {
    const changed = edit(base, (t) =>
      t
        .replace(`key = ["id"]`, `key = ["id", "region"]`)
        .replace("max = 20", "max = 10")
        .replace(`values = ["a", "b"]`, `values = ["a"]`)
        .replace(`[fields.s]\ntype = "string"\nmax = 10\nnullable = true`, `[fields.s]\ntype = "string"\nmax = 10`)
        .replace(`[fields.o.fields.a]\ntype = "int"\ndefault = 0\n`, "")
        .replace(`fields = ["n"]`, `fields = ["n", "kind"]`)
        .concat(`\n[fields.required]\ntype = "int"\n`)
        .concat(`\n[fields.region]\ntype = "string"\nmax = 5\n`)
        .concat(`\n[fields.o.fields.must]\ntype = "int"\n`),
    )
    const plan = planCollection(changed, {
      ...current(base),
      indexes: [
        ...current(base).indexes,
        { name: "dba_unique", key: { s: 1 }, unique: true },
        { name: "dba", key: { n: 1, s: 1 } },
      ],
    })
    for (const expected of [
      "key: the documents are keyed by (id); the template's key is (id, region)",
      "s held strings of up to 20 characters; the template now allows 10",
      `kind allowed "b", which the template's values no longer include`,
      "field s was nullable, but the template now says it is not",
      "field o.a is in the stored documents but not in the template",
      "field o.must is new and is not nullable without a default",
      "field required is new and is not nullable without a default",
      "index by_n is an index on (n) in the collection; the template declares an index on (n, kind)",
      "index dba_unique is a unique index on (s) in the collection but not in the template",
    ])
      expect(plan.unsafe.join("\n")).toContain(expected)
    expect(plan.unsafe.join("\n")).not.toContain("index dba ")
    const retyped = edit(base, (t) =>
      t.replace(`[fields.n]\ntype = "int"\ndefault = 0`, `[fields.n]\ntype = "counter"`),
    )
    expect(planCollection(retyped, current(base)).unsafe).toEqual([
      "n is int in the stored documents; the template now says counter (stored values would not read back)",
    ])
    const dropped = { ...base, fields: base.fields.filter((f) => f.name !== "s"), indexes: base.indexes }
    expect(planCollection(dropped, current(base)).unsafe).toEqual([
      "field s is in the stored documents but not in the template (dropping it would lose its values)",
    ])
  })

  it("refuses a collection with documents but no record of its template", () => {
    const plan = planCollection(base, { ...current(base), recorded: undefined })
    expect(plan.unsafe).toEqual([
      "the collection holds 5 document(s) but BEDS has no record of the template they were written with; drop the collection (BEDS rebuilds it by replay) or restore its beds_templates entry",
    ])
    expect(planCollection(base, { ...current(base, 0), recorded: undefined }).unsafe).toEqual([])
  })
})
