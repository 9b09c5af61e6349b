import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import type { DeclarationError } from "../../src/errors.ts"
import { checkEnsured, checkTemplate, loadTemplates, parseTemplate } from "../../src/template/load.ts"
import type { Template } from "../../src/template/template.ts"

const FILE = "templates/tst.toml"
const HEAD = `tla = "TST"\nname = "tst"\nbackend = "rel"\n`
const ID = `\n[fields.id]\ntype = "string"\nmax = 10\n`
/** A valid template with one key field; cases append to it or replace parts of it. */
const BASE = `${HEAD}key = ["id"]\n${ID}`

const parse = (text: string) => Effect.runSync(parseTemplate(text, FILE))
const refuse = (text: string): DeclarationError => Effect.runSync(Effect.flip(parseTemplate(text, FILE)))

describe("loadTemplates", () => {
  it.effect("loads the example template", () =>
    Effect.gen(function* () {
      const templates = yield* loadTemplates("templates")
      // Other example templates sit beside it; this test pins acc_balance.
      const acb = templates.find((t) => t.name === "acc_balance")
      expect(acb).toEqual({
        tla: "ACB",
        name: "acc_balance",
        backend: "rel",
        description: "One row per account: owner, balance in cents, event count, status.",
        key: ["account_id"],
        fields: [
          { name: "account_id", type: "string", max: 64, nullable: false },
          { name: "owner", type: "string", max: 200, nullable: true },
          { name: "balance", type: "int", nullable: false, default: 0 },
          {
            name: "events",
            type: "int",
            nullable: false,
            default: 0,
            description: "How many events of the account were applied.",
          },
          { name: "status", type: "enum", values: ["open", "closed"], nullable: false, default: "open" },
        ],
        indexes: [{ name: "by_owner", fields: ["owner"], unique: false }],
        file: path.join("templates", "acc_balance.toml"),
      })
    }),
  )

  const withDir = <A, E>(files: Record<string, string>, f: (dir: string) => Effect.Effect<A, E>) =>
    Effect.acquireUseRelease(
      Effect.promise(async () => {
        const dir = await fs.mkdtemp(path.join(os.tmpdir(), "beds-templates-"))
        for (const [name, text] of Object.entries(files)) await fs.writeFile(path.join(dir, name), text)
        return dir
      }),
      f,
      (dir) => Effect.promise(() => fs.rm(dir, { recursive: true, force: true })),
    )

  it.effect("reads only *.toml files, in file-name order", () =>
    withDir({ "b.toml": BASE.replace(/tst/g, "bbb").replace("TST", "BBB"), "a.toml": BASE, "notes.md": "x" }, (dir) =>
      Effect.map(loadTemplates(dir), (ts) => expect(ts.map((t) => t.name)).toEqual(["tst", "bbb"])),
    ),
  )

  it.effect("refuses a TLA used twice, naming both files", () =>
    withDir({ "a.toml": BASE, "b.toml": BASE.replace(`name = "tst"`, `name = "other"`) }, (dir) =>
      Effect.map(Effect.flip(loadTemplates(dir)), (e) => {
        expect(e.code).toBe("BAD_TEMPLATE")
        expect(e.message).toContain(path.join(dir, "a.toml"))
        expect(e.message).toContain(path.join(dir, "b.toml"))
        expect(e.message).toContain("TST")
      }),
    ),
  )

  it.effect("refuses a name used twice", () =>
    withDir({ "a.toml": BASE, "b.toml": BASE.replace(`tla = "TST"`, `tla = "OTH"`) }, (dir) =>
      Effect.map(Effect.flip(loadTemplates(dir)), (e) => {
        expect(e.code).toBe("BAD_TEMPLATE")
        expect(e.message).toContain("tst is already the name")
      }),
    ),
  )

  it.effect("says which directory it cannot read", () =>
    Effect.map(Effect.flip(loadTemplates("/nonexistent/beds/templates")), (e) => {
      expect(e.code).toBe("BAD_TEMPLATE")
      expect(e.message).toContain("/nonexistent/beds/templates")
    }),
  )
})

describe("parseTemplate", () => {
  it("accepts every field type, defaults included", () => {
    const t = parse(`${BASE}
[fields.s]
type = "string"
max = 16000
nullable = true
[fields.t]
type = "text"
default = "it's \\\\ fine"
[fields.i]
type = "int"
default = -42
[fields.f]
type = "float"
default = 2
[fields.b]
type = "bool"
default = true
[fields.at]
type = "time"
default = 2024-01-02T03:04:05.678Z
[fields.at2]
type = "time"
default = 1700000000000
[fields.j]
type = "json"
default = { a = [1, "x"], b = { c = true } }
[fields.e]
type = "enum"
values = ["😀", "b"]
default = "😀"
description = "An emoji enum."
[[indexes]]
name = "by_e"
fields = ["e", "i"]
unique = true
`)
    const f = (name: string) => t.fields.find((x) => x.name === name)
    expect(f("s")).toEqual({ name: "s", type: "string", max: 16000, nullable: true })
    expect(f("t")?.default).toBe("it's \\ fine")
    expect(f("i")?.default).toBe(-42)
    expect(f("f")?.default).toBe(2)
    expect(f("b")?.default).toBe(true)
    expect(f("at")?.default).toBe(Date.UTC(2024, 0, 2, 3, 4, 5, 678))
    expect(f("at2")?.default).toBe(1_700_000_000_000)
    expect(JSON.parse(f("j")?.default as string)).toEqual({ a: [1, "x"], b: { c: true } })
    expect(f("e")).toMatchObject({ values: ["😀", "b"], default: "😀", description: "An emoji enum." })
    expect(t.indexes).toEqual([{ name: "by_e", fields: ["e", "i"], unique: true }])
  })

  it("accepts a compound key of string, int and enum fields", () => {
    const t = parse(
      `${HEAD}key = ["id", "n", "e"]\n${ID}[fields.n]\ntype = "int"\n[fields.e]\ntype = "enum"\nvalues = ["a"]\n`,
    )
    expect(t.key).toEqual(["id", "n", "e"])
  })

  it("allows REC templates what only MariaDB cannot do", () => {
    const t = parse(
      `${BASE.replace(`"rel"`, `"rec"`)}[fields.doc]\ntype = "json"\n[[indexes]]\nname = "by_doc"\nfields = ["doc"]\n`,
    )
    expect(t.backend).toBe("rec")
  })

  const cases: ReadonlyArray<readonly [string, string, DeclarationError["code"], ReadonlyArray<string>]> = [
    ["TOML syntax", `${BASE}\n[fields.x\n`, "BAD_TEMPLATE", ["not valid TOML at line 10, column"]],
    ["missing tla", BASE.replace(`tla = "TST"\n`, ""), "BAD_TEMPLATE", ["tla: missing"]],
    ["missing name", BASE.replace(`name = "tst"\n`, ""), "BAD_TEMPLATE", ["name: missing"]],
    ["missing backend", BASE.replace(`backend = "rel"\n`, ""), "BAD_TEMPLATE", ["backend: missing"]],
    ["missing key", BASE.replace(`key = ["id"]\n`, ""), "BAD_TEMPLATE", ["key: missing"]],
    ["missing fields", `${HEAD}key = ["id"]\n`, "BAD_TEMPLATE", ["fields: missing"]],
    [
      "unknown top-level key",
      `descripton = "x"\n${BASE}`,
      "BAD_TEMPLATE",
      ["descripton: unknown key (did you mean description?)"],
    ],
    [
      "unknown field key",
      `${BASE}nulable = true\n`,
      "BAD_TEMPLATE",
      ["fields.id.nulable: unknown key (did you mean nullable?)", "allowed here: type, max"],
    ],
    [
      "unknown index key",
      `${BASE}[[indexes]]\nname = "x"\nfields = ["id"]\nuniq = true\n`,
      "BAD_TEMPLATE",
      ["indexes[0].uniq: unknown key (did you mean unique?)"],
    ],
    ["lower-case TLA", BASE.replace(`"TST"`, `"tst"`), "BAD_TEMPLATE", ["tla:", "three upper-case letters"]],
    ["four-letter TLA", BASE.replace(`"TST"`, `"TSTS"`), "BAD_TEMPLATE", ["tla:"]],
    ["TLA with a digit", BASE.replace(`"TST"`, `"T5T"`), "BAD_TEMPLATE", ["tla:"]],
    ["TLA not a string", BASE.replace(`"TST"`, `3`), "BAD_TEMPLATE", ["tla: expected a string"]],
    [
      "upper-case name",
      BASE.replace(`name = "tst"`, `name = "Tst"`),
      "UNSAFE_IDENTIFIER",
      ["name:", `"Tst" is not a safe name`, "a-z, 0-9 and _"],
    ],
    ["name with a dash", BASE.replace(`name = "tst"`, `name = "acc-balance"`), "UNSAFE_IDENTIFIER", ["name:"]],
    [
      "name with SQL in it",
      BASE.replace(`name = "tst"`, 'name = "x`; DROP TABLE y; --"'),
      "UNSAFE_IDENTIFIER",
      ["name:"],
    ],
    ["name starting with a digit", BASE.replace(`name = "tst"`, `name = "1tst"`), "UNSAFE_IDENTIFIER", ["name:"]],
    [
      "reserved name",
      BASE.replace(`name = "tst"`, `name = "beds_checkpoint"`),
      "UNSAFE_IDENTIFIER",
      ["name:", "reserved"],
    ],
    [
      "name of 65 characters",
      BASE.replace(`name = "tst"`, `name = "${"a".repeat(65)}"`),
      "UNSAFE_IDENTIFIER",
      ["name:"],
    ],
    ["unknown backend", BASE.replace(`"rel"`, `"sql"`), "BAD_TEMPLATE", ["backend:", `use "rel"`]],
    ["unsafe field name", `${BASE}[fields.Owner]\ntype = "int"\n`, "UNSAFE_IDENTIFIER", ["fields.Owner:"]],
    [
      "reserved field name",
      `${BASE}[fields.beds_last_id]\ntype = "int"\n`,
      "UNSAFE_IDENTIFIER",
      ["fields.beds_last_id:", "reserved"],
    ],
    ["field that is not a table", `${BASE}[fields]\nx = 1\n`, "BAD_TEMPLATE", ["fields.x: expected a table"]],
    [
      "field without type",
      `${BASE}[fields.x]\nnullable = true\n`,
      "BAD_TEMPLATE",
      ["fields.x.type: missing", "string, text, int"],
    ],
    [
      "unknown type",
      `${BASE}[fields.x]\ntype = "integer"\n`,
      "BAD_TEMPLATE",
      [`fields.x.type: unknown type "integer"`, "string, text, int, float, bool, time, json, enum"],
    ],
    [
      "string without max",
      `${BASE}[fields.x]\ntype = "string"\n`,
      "BAD_TEMPLATE",
      ["fields.x.max:", "needs max = 1..16383", `type = "text"`],
    ],
    ["string max 0", `${BASE}[fields.x]\ntype = "string"\nmax = 0\n`, "BAD_TEMPLATE", ["fields.x.max:", "not 0"]],
    [
      "string max too large",
      `${BASE}[fields.x]\ntype = "string"\nmax = 16384\n`,
      "BAD_TEMPLATE",
      ["fields.x.max:", "not 16384"],
    ],
    [
      "string max not an integer",
      `${BASE}[fields.x]\ntype = "string"\nmax = 1.5\n`,
      "BAD_TEMPLATE",
      ["fields.x.max: expected an integer"],
    ],
    [
      "max on an int field",
      `${BASE}[fields.x]\ntype = "int"\nmax = 5\n`,
      "BAD_TEMPLATE",
      ["fields.x.max:", "string fields only"],
    ],
    ["enum without values", `${BASE}[fields.x]\ntype = "enum"\n`, "BAD_TEMPLATE", ["fields.x.values:", "at least one"]],
    ["enum with empty values", `${BASE}[fields.x]\ntype = "enum"\nvalues = []\n`, "BAD_TEMPLATE", ["fields.x.values:"]],
    [
      "enum with a repeated value",
      `${BASE}[fields.x]\ntype = "enum"\nvalues = ["a", "a"]\n`,
      "BAD_TEMPLATE",
      ["fields.x.values[1]:", "listed twice"],
    ],
    [
      "enum with an empty value",
      `${BASE}[fields.x]\ntype = "enum"\nvalues = [""]\n`,
      "BAD_TEMPLATE",
      ["fields.x.values[0]:"],
    ],
    [
      "enum with a control character",
      `${BASE}[fields.x]\ntype = "enum"\nvalues = ["a\\nb"]\n`,
      "BAD_TEMPLATE",
      ["fields.x.values[0]:", "control characters"],
    ],
    [
      "enum values not strings",
      `${BASE}[fields.x]\ntype = "enum"\nvalues = [1, 2]\n`,
      "BAD_TEMPLATE",
      ["fields.x.values: expected a list of strings"],
    ],
    [
      "values on a string field",
      `${BASE}[fields.x]\ntype = "string"\nmax = 3\nvalues = ["a"]\n`,
      "BAD_TEMPLATE",
      ["fields.x.values:", "enum fields only"],
    ],
    [
      "nullable not a boolean",
      `${BASE}[fields.x]\ntype = "int"\nnullable = "yes"\n`,
      "BAD_TEMPLATE",
      ["fields.x.nullable: expected true or false"],
    ],
    [
      "description not a string",
      `${BASE}[fields.x]\ntype = "int"\ndescription = 1\n`,
      "BAD_TEMPLATE",
      ["fields.x.description:"],
    ],
    ["empty key", BASE.replace(`key = ["id"]`, `key = []`), "BAD_TEMPLATE", ["key:", "the key is empty"]],
    ["key not a list", BASE.replace(`key = ["id"]`, `key = "id"`), "BAD_TEMPLATE", ["key: expected a list of strings"]],
    [
      "key naming no field",
      BASE.replace(`key = ["id"]`, `key = ["idd"]`),
      "UNKNOWN_FIELD",
      ["key[0]:", `no field named "idd" (did you mean id?)`, "[fields.idd]"],
    ],
    ["key field twice", BASE.replace(`key = ["id"]`, `key = ["id", "id"]`), "BAD_TEMPLATE", ["key[1]:", "twice"]],
    [
      "nullable key field",
      BASE.replace(`max = 10\n`, `max = 10\nnullable = true\n`),
      "BAD_TEMPLATE",
      ["key[0]:", "nullable"],
    ],
    [
      "float key field",
      `${HEAD}key = ["f"]\n[fields.f]\ntype = "float"\n`,
      "BAD_TEMPLATE",
      ["key[0]:", "must be string, int, enum"],
    ],
    ["json key field", `${HEAD}key = ["j"]\n[fields.j]\ntype = "json"\n`, "BAD_TEMPLATE", ["key[0]:"]],
    [
      "key string longer than 255",
      BASE.replace(`max = 10`, `max = 256`),
      "BAD_TEMPLATE",
      ["fields.id.max:", "at most 255"],
    ],
    [
      "key field with a default",
      BASE.replace(`max = 10\n`, `max = 10\ndefault = "x"\n`),
      "BAD_TEMPLATE",
      ["fields.id.default:", "cannot have a default"],
    ],
    [
      "key over 3072 bytes",
      `${HEAD}key = ["a", "b", "c", "d"]\n${["a", "b", "c", "d"].map((n) => `[fields.${n}]\ntype = "string"\nmax = 255\n`).join("")}`,
      "BAD_TEMPLATE",
      ["key:", "4080 bytes", "3072"],
    ],
    ["index without name", `${BASE}[[indexes]]\nfields = ["id"]\n`, "BAD_TEMPLATE", ["indexes[0].name: missing"]],
    ["index without fields", `${BASE}[[indexes]]\nname = "x"\n`, "BAD_TEMPLATE", ["indexes[0].fields: missing"]],
    [
      "index with no fields",
      `${BASE}[[indexes]]\nname = "x"\nfields = []\n`,
      "BAD_TEMPLATE",
      ["indexes[0].fields:", "no fields"],
    ],
    [
      "unsafe index name",
      `${BASE}[[indexes]]\nname = "By Id"\nfields = ["id"]\n`,
      "UNSAFE_IDENTIFIER",
      ["indexes[0].name:"],
    ],
    [
      "index named primary",
      `${BASE}[[indexes]]\nname = "primary"\nfields = ["id"]\n`,
      "UNSAFE_IDENTIFIER",
      ["indexes[0].name:", "reserved for the key"],
    ],
    [
      "index naming no field",
      `${BASE}[[indexes]]\nname = "x"\nfields = ["idx"]\n`,
      "UNKNOWN_FIELD",
      ["indexes[0].fields[0]:", `"idx"`, "did you mean id?"],
    ],
    [
      "index field twice",
      `${BASE}[[indexes]]\nname = "x"\nfields = ["id", "id"]\n`,
      "BAD_TEMPLATE",
      ["indexes[0].fields[1]:", "twice"],
    ],
    [
      "two indexes of one name",
      `${BASE}[[indexes]]\nname = "x"\nfields = ["id"]\n[[indexes]]\nname = "x"\nfields = ["id"]\n`,
      "BAD_TEMPLATE",
      ["indexes[1].name:", "declared twice"],
    ],
    [
      "index on a text field",
      `${BASE}[fields.t]\ntype = "text"\n[[indexes]]\nname = "x"\nfields = ["t"]\n`,
      "BAD_TEMPLATE",
      ["indexes[0].fields[0]:", "cannot index"],
    ],
    [
      "index on a json field",
      `${BASE}[fields.j]\ntype = "json"\n[[indexes]]\nname = "x"\nfields = ["j"]\n`,
      "BAD_TEMPLATE",
      ["indexes[0].fields[0]:"],
    ],
    [
      "index unique not a boolean",
      `${BASE}[[indexes]]\nname = "x"\nfields = ["id"]\nunique = 1\n`,
      "BAD_TEMPLATE",
      ["indexes[0].unique: expected true or false"],
    ],
    [
      "index over 3072 bytes",
      `${BASE}[fields.s]\ntype = "string"\nmax = 1000\n[[indexes]]\nname = "by_s"\nfields = ["s"]\n`,
      "BAD_TEMPLATE",
      ["indexes[0].fields:", "4000 bytes"],
    ],
    ["indexes not a list", `indexes = 1\n${BASE}`, "BAD_TEMPLATE", ["indexes: expected [[indexes]] tables"]],
    [
      "int default that is a string",
      `${BASE}[fields.x]\ntype = "int"\ndefault = "0"\n`,
      "BAD_TEMPLATE",
      ["fields.x.default:", 'the default "0" is not an integer'],
    ],
    [
      "int default that is a fraction",
      `${BASE}[fields.x]\ntype = "int"\ndefault = 0.5\n`,
      "BAD_TEMPLATE",
      ["fields.x.default:"],
    ],
    [
      "float default that is infinite",
      `${BASE}[fields.x]\ntype = "float"\ndefault = inf\n`,
      "BAD_TEMPLATE",
      ["fields.x.default:", "finite"],
    ],
    [
      "bool default that is a string",
      `${BASE}[fields.x]\ntype = "bool"\ndefault = "yes"\n`,
      "BAD_TEMPLATE",
      ["fields.x.default:", "not a boolean"],
    ],
    [
      "enum default not among values",
      `${BASE}[fields.x]\ntype = "enum"\nvalues = ["a"]\ndefault = "b"\n`,
      "BAD_TEMPLATE",
      ["fields.x.default:", `is not one of "a"`],
    ],
    [
      "string default longer than max",
      `${BASE}[fields.x]\ntype = "string"\nmax = 2\ndefault = "abc"\n`,
      "BAD_TEMPLATE",
      ["fields.x.default:", "at most 2"],
    ],
    [
      "time default in local time",
      `${BASE}[fields.x]\ntype = "time"\ndefault = 2024-01-01T00:00:00\n`,
      "BAD_TEMPLATE",
      ["fields.x.default:", "offset date-time"],
    ],
    [
      "time default that is a fraction",
      `${BASE}[fields.x]\ntype = "time"\ndefault = 1.5\n`,
      "BAD_TEMPLATE",
      ["fields.x.default:", "milliseconds"],
    ],
    [
      "date default for a string",
      `${BASE}[fields.x]\ntype = "string"\nmax = 40\ndefault = 2024-01-01\n`,
      "BAD_TEMPLATE",
      ["fields.x.default:", "date"],
    ],
    [
      "row over MariaDB's 65,535 bytes",
      `${BASE}${[1, 2, 3, 4, 5].map((i) => `[fields.s${i}]\ntype = "string"\nmax = 4000\n`).join("")}`,
      "BAD_TEMPLATE",
      ["fields:", "65535", `type = "text"`],
    ],
  ]

  it.each(cases)("refuses: %s", (_, text, code, fragments) => {
    const e = refuse(text)
    expect(e._tag).toBe("DeclarationError")
    expect(e.code).toBe(code)
    expect(e.message.startsWith(`${FILE}: `)).toBe(true)
    for (const fragment of fragments) expect(e.message).toContain(fragment)
  })
})

describe("checkTemplate", () => {
  const good = parse(BASE)

  it("accepts a valid template built in code", () => {
    expect(checkTemplate(good)).toBeUndefined()
  })

  it("refuses what TOML cannot express: repeated fields, null defaults on non-nullable fields, bad JSON", () => {
    const id = good.fields[0]!
    const cases: ReadonlyArray<[Template, string]> = [
      [{ ...good, fields: [id, id] }, "declared twice"],
      [{ ...good, fields: [id, { name: "x", type: "int", nullable: false, default: null }] }, "not nullable"],
      [{ ...good, fields: [id, { name: "x", type: "json", nullable: false, default: "{nope" }] }, "JSON text"],
      [{ ...good, fields: [] }, "no fields"],
      [{ ...good, name: "x`y" }, "not a safe name"],
    ]
    for (const [t, fragment] of cases) expect(checkTemplate(t)?.message).toContain(fragment)
  })
})

describe("checkEnsured", () => {
  const good = parse(BASE)
  const other = { ...good, tla: "OTH", name: "other", file: "templates/other.toml" }

  it("accepts templates that are valid and unique beside those held, including one held already", () => {
    expect(checkEnsured([good], [good, other])).toBeUndefined()
    expect(checkEnsured([], [other], { backend: "rel", store: "MariaDB" })).toBeUndefined()
  })

  it("refuses a template that is invalid on its own", () => {
    expect(checkEnsured([], [{ ...good, fields: [] }])?.message).toContain("no fields")
  })

  it("refuses a TLA that a held template has, and a TLA or name given twice; a held name is replaced", () => {
    expect(checkEnsured([good], [{ ...other, tla: good.tla }])?.message).toContain(`is already the TLA of ${good.name}`)
    expect(checkEnsured([], [good, { ...other, tla: good.tla }])?.message).toContain("is already the TLA")
    expect(checkEnsured([], [good, { ...other, name: good.name }])?.message).toContain("is already the name")
    // Ensuring a template under a held name is how a template changes (the store migrates it).
    expect(checkEnsured([good], [{ ...other, name: good.name }])).toBeUndefined()
  })

  it("refuses a template of a backend the store does not hold, naming the store", () => {
    expect(checkEnsured([], [good], { backend: "rec", store: "MongoDB" })?.message).toBe(
      `Template ${good.name} (${good.file}) is a REL template; the MongoDB read-model store holds REC templates only.`,
    )
  })
})
