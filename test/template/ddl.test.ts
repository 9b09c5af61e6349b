import * as fs from "node:fs"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import {
  type ActualTable,
  CHECKPOINT_TABLE,
  checkLiterals,
  columnType,
  createTableSql,
  planMigration,
  quoteId,
  renderDdl,
  sqlString,
} from "../../src/template/ddl.ts"
import { parseTemplate } from "../../src/template/load.ts"
import { LAST_EVENT_COLUMN, type Template } from "../../src/template/template.ts"

const parse = (text: string, file = "templates/t.toml") => Effect.runSync(parseTemplate(text, file))
const accBalance = parse(fs.readFileSync("templates/acc_balance.toml", "utf8"), "templates/acc_balance.toml")

const EVERY = parse(`
tla = "EVT"
name = "every"
backend = "rel"
description = "Every type."
key = ["id", "n"]

[fields.id]
type = "string"
max = 32

[fields.n]
type = "int"

[fields.s]
type = "string"
max = 100
nullable = true
default = "it's a \\\\ test"

[fields.t]
type = "text"
nullable = true

[fields.f]
type = "float"
default = 1.5

[fields.b]
type = "bool"
default = true

[fields.at]
type = "time"
default = 2024-01-01T00:00:00Z

[fields.j]
type = "json"
default = { a = [1] }

[fields.e]
type = "enum"
values = ["short", "a'quote", "😀😀😀😀😀😀😀"]
default = "short"

[[indexes]]
name = "by_e"
fields = ["e", "f"]
unique = true
`)

describe("createTableSql", () => {
  it("derives the acc_balance table", () => {
    expect(createTableSql(accBalance)).toBe(
      [
        "CREATE TABLE IF NOT EXISTS `acc_balance` (",
        "  `account_id` VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,",
        "  `owner` VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NULL,",
        "  `balance` BIGINT NOT NULL DEFAULT 0,",
        "  `events` BIGINT NOT NULL DEFAULT 0,",
        "  `status` VARCHAR(6) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL DEFAULT 'open',",
        "  `beds_last_id` VARCHAR(700) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,",
        "  PRIMARY KEY (`account_id`),",
        "  KEY `by_owner` (`owner`),",
        "  CONSTRAINT `status` CHECK (`status` IN ('open', 'closed'))",
        ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin",
      ].join("\n"),
    )
  })

  it("maps every field type to its column, with defaults as SQL literals", () => {
    const lines = createTableSql(EVERY).split("\n")
    expect(lines).toEqual([
      "CREATE TABLE IF NOT EXISTS `every` (",
      "  `id` VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,",
      "  `n` BIGINT NOT NULL,",
      "  `s` VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NULL DEFAULT 'it''s a \\\\ test',",
      "  `t` MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NULL,",
      "  `f` DOUBLE NOT NULL DEFAULT 1.5,",
      "  `b` TINYINT(1) NOT NULL DEFAULT 1,",
      `  \`at\` BIGINT NOT NULL DEFAULT ${Date.UTC(2024, 0, 1)},`,
      "  `j` LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL DEFAULT '{\"a\":[1]}',",
      // Sized in characters: seven emoji are seven characters.
      "  `e` VARCHAR(7) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL DEFAULT 'short',",
      "  `beds_last_id` VARCHAR(700) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,",
      "  PRIMARY KEY (`id`, `n`),",
      "  UNIQUE KEY `by_e` (`e`, `f`),",
      "  CONSTRAINT `e` CHECK (`e` IN ('short', 'a''quote', '😀😀😀😀😀😀😀'))",
      ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin",
    ])
  })

  it("never quotes an identifier that validation would refuse", () => {
    expect(quoteId("ok_name1")).toBe("`ok_name1`")
    for (const bad of ["x`; DROP TABLE y", "Upper", "1st", "", "a".repeat(65)]) expect(() => quoteId(bad)).toThrow()
    expect(() => createTableSql({ ...accBalance, name: "acc`balance" })).toThrow()
    expect(() => createTableSql({ ...accBalance, key: ["account id"] })).toThrow()
  })

  it("escapes string literals", () => {
    expect(sqlString("plain")).toBe("'plain'")
    expect(sqlString("it's")).toBe("'it''s'")
    expect(sqlString("back\\slash")).toBe("'back\\\\slash'")
    expect(sqlString("\\'; DROP TABLE x; --")).toBe("'\\\\''; DROP TABLE x; --'")
    expect(sqlString("nul\0")).toBe("'nul\\0'")
  })
})

describe("renderDdl", () => {
  it("prints the checkpoint table and one commented CREATE TABLE per REL template", () => {
    const rec = parse(
      `tla = "DOC"\nname = "docs"\nbackend = "rec"\ndescription = """Line one\nline two"""\nkey = ["id"]\n[fields.id]\ntype = "string"\nmax = 9\n`,
      "templates/docs.toml",
    )
    const multiLine = { ...accBalance, description: "Balances.\n-- not a comment breakout\nDROP TABLE x;" }
    const ddl = renderDdl([multiLine, rec])
    expect(ddl).toContain(`CREATE TABLE IF NOT EXISTS \`${CHECKPOINT_TABLE}\` (`)
    expect(ddl).toContain("PRIMARY KEY (`topology`, `depot`, `part`)")
    expect(ddl).toContain("-- ACB acc_balance (templates/acc_balance.toml)\n")
    expect(ddl).toContain(`${createTableSql(accBalance)};`)
    expect(ddl).toContain("-- DOC docs (templates/docs.toml)\n-- Line one line two\n-- REC template")
    // A description can never end its comment line.
    expect(ddl).toContain("-- Balances. -- not a comment breakout DROP TABLE x;\n")
    for (const line of ddl.split("\n")) if (line.includes("DROP TABLE")) expect(line.startsWith("-- ")).toBe(true)
    expect(ddl.endsWith(";\n") || ddl.endsWith("no SQL.\n")).toBe(true)
  })
})

/** What information_schema reports for a table created from `t` (MariaDB 10.11). */
const actualOf = (t: Template): ActualTable => ({
  columns: [
    ...t.fields.map((f) => ({
      name: f.name,
      type: columnType(f) === "bigint" ? "bigint(20)" : columnType(f),
      nullable: f.nullable,
      collation: ["string", "text", "json", "enum"].includes(f.type) ? "utf8mb4_nopad_bin" : null,
    })),
    { name: LAST_EVENT_COLUMN, type: "varchar(700)", nullable: false, collation: "ascii_bin" },
  ],
  indexes: [{ name: "PRIMARY", fields: t.key, unique: true }, ...t.indexes],
  checks: t.fields
    .filter((f) => f.type === "enum")
    .map((f) => ({
      name: f.name,
      clause:
        (f.values ?? []).length === 1
          ? `\`${f.name}\` = '${(f.values ?? [])[0]}'`
          : `\`${f.name}\` in (${(f.values ?? []).map((v) => `'${v.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`).join(",")})`,
    })),
})

const withField = (t: Template, field: Template["fields"][number]): Template => ({ ...t, fields: [...t.fields, field] })
const changeField = (t: Template, name: string, change: Partial<Template["fields"][number]>): Template => ({
  ...t,
  fields: t.fields.map((f) => (f.name === name ? { ...f, ...change } : f)),
})

describe("planMigration", () => {
  it("finds nothing to do when the table matches", () => {
    expect(planMigration(accBalance, actualOf(accBalance))).toEqual({ safe: [], unsafe: [] })
    expect(planMigration(EVERY, actualOf(EVERY))).toEqual({ safe: [], unsafe: [] })
  })

  it("reads MariaDB's CHECK clauses back into values", () => {
    expect(checkLiterals("`e` in ('short','a\\'quote','b\\\\s','x''y')")).toEqual(["short", "a'quote", "b\\s", "x'y"])
    expect(checkLiterals("`e` = 'only'")).toEqual(["only"])
  })

  describe("safe", () => {
    it("adds a missing nullable column, a missing column with a default, and a missing enum with its check", () => {
      const wanted = [
        withField(accBalance, { name: "note", type: "text", nullable: true }),
        withField(accBalance, { name: "score", type: "float", nullable: false, default: 0.5 }),
        withField(accBalance, { name: "tier", type: "enum", values: ["a", "b"], nullable: false, default: "a" }),
      ]
      expect(wanted.map((t) => planMigration(t, actualOf(accBalance)))).toEqual([
        {
          safe: [
            "ALTER TABLE `acc_balance` ADD COLUMN `note` MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NULL",
          ],
          unsafe: [],
        },
        { safe: ["ALTER TABLE `acc_balance` ADD COLUMN `score` DOUBLE NOT NULL DEFAULT 0.5"], unsafe: [] },
        {
          safe: [
            "ALTER TABLE `acc_balance` ADD COLUMN `tier` VARCHAR(1) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL DEFAULT 'a', ADD CONSTRAINT `tier` CHECK (`tier` IN ('a', 'b'))",
          ],
          unsafe: [],
        },
      ])
    })

    it("adds missing indexes, unique or not", () => {
      const t: Template = {
        ...accBalance,
        indexes: [
          ...accBalance.indexes,
          { name: "by_status", fields: ["status", "balance"], unique: false },
          { name: "one_owner", fields: ["owner"], unique: true },
        ],
      }
      expect(planMigration(t, actualOf(accBalance))).toEqual({
        safe: [
          "ALTER TABLE `acc_balance` ADD KEY `by_status` (`status`, `balance`)",
          "ALTER TABLE `acc_balance` ADD UNIQUE KEY `one_owner` (`owner`)",
        ],
        unsafe: [],
      })
    })

    it("allows more enum values, widening the column when a new value is longer", () => {
      const same = changeField(accBalance, "status", { values: ["open", "closed", "frozen"] })
      expect(planMigration(same, actualOf(accBalance))).toEqual({
        safe: [
          "ALTER TABLE `acc_balance` DROP CONSTRAINT `status`, ADD CONSTRAINT `status` CHECK (`status` IN ('open', 'closed', 'frozen'))",
        ],
        unsafe: [],
      })
      const longer = changeField(accBalance, "status", { values: ["open", "closed", "suspended"] })
      expect(planMigration(longer, actualOf(accBalance)).safe).toEqual([
        "ALTER TABLE `acc_balance` MODIFY COLUMN `status` VARCHAR(9) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL DEFAULT 'open'",
        "ALTER TABLE `acc_balance` DROP CONSTRAINT `status`, ADD CONSTRAINT `status` CHECK (`status` IN ('open', 'closed', 'suspended'))",
      ])
    })

    it("restores a missing enum check and drops the check of a field that is no longer an enum", () => {
      const actual = actualOf(accBalance)
      expect(planMigration(accBalance, { ...actual, checks: [] }).safe).toEqual([
        "ALTER TABLE `acc_balance` ADD CONSTRAINT `status` CHECK (`status` IN ('open', 'closed'))",
      ])
      const plain = changeField(accBalance, "status", { type: "string", max: 6, values: undefined })
      expect(planMigration(plain, actual)).toEqual({
        safe: ["ALTER TABLE `acc_balance` DROP CONSTRAINT `status`"],
        unsafe: [],
      })
    })

    it("leaves alone a non-unique index the template does not declare", () => {
      const actual = actualOf(accBalance)
      const extra = { ...actual, indexes: [...actual.indexes, { name: "dba_idx", fields: ["balance"], unique: false }] }
      expect(planMigration(accBalance, extra)).toEqual({ safe: [], unsafe: [] })
    })
  })

  describe("unsafe", () => {
    const unsafe = (t: Template, actual: ActualTable = actualOf(accBalance)) => planMigration(t, actual).unsafe

    it("a changed type", () => {
      expect(unsafe(changeField(accBalance, "balance", { type: "float" }))).toEqual([
        'column balance is bigint(20) in the table; the template (type = "float") needs double',
      ])
      expect(unsafe(changeField(accBalance, "owner", { max: 300 }))).toEqual([
        'column owner is varchar(200) in the table; the template (type = "string") needs varchar(300)',
      ])
    })

    it("a changed nullability, either way", () => {
      expect(unsafe(changeField(accBalance, "owner", { nullable: false }))).toEqual([
        "column owner allows NULL in the table, but the template says it is not nullable (rows may hold NULL)",
      ])
      expect(unsafe(changeField(accBalance, "balance", { nullable: true }))).toEqual([
        "column balance is NOT NULL in the table, but the template says nullable = true",
      ])
    })

    it("a changed collation", () => {
      const actual = actualOf(accBalance)
      const ci = {
        ...actual,
        columns: actual.columns.map((c) => (c.name === "owner" ? { ...c, collation: "utf8mb4_general_ci" } : c)),
      }
      expect(unsafe(accBalance, ci)).toEqual([
        "column owner has collation utf8mb4_general_ci in the table; the template needs utf8mb4_nopad_bin",
      ])
    })

    it("a missing column that is not nullable and has no default", () => {
      expect(unsafe(withField(accBalance, { name: "region", type: "int", nullable: false }))).toEqual([
        "column region is missing from the table and is not nullable without a default, so the rows already there would have no value for it (give it a default or make it nullable)",
      ])
    })

    it("a column the template no longer has", () => {
      const t = { ...accBalance, fields: accBalance.fields.filter((f) => f.name !== "events") }
      expect(unsafe(t)).toEqual([
        "column events is in the table but not in the template (dropping it would lose its values)",
      ])
    })

    it("a changed key", () => {
      const t = { ...accBalance, key: ["account_id", "status"] }
      expect(unsafe(t)).toEqual([
        "key: the table's primary key is (account_id); the template's key is (account_id, status)",
      ])
      const actual = actualOf(accBalance)
      expect(unsafe(accBalance, { ...actual, indexes: actual.indexes.filter((i) => i.name !== "PRIMARY") })).toEqual([
        "key: the table has no primary key; the template's key is (account_id)",
      ])
    })

    it("an index whose fields or uniqueness changed, and a unique index the template does not declare", () => {
      const fields = { ...accBalance, indexes: [{ name: "by_owner", fields: ["owner", "status"], unique: false }] }
      expect(unsafe(fields)).toEqual([
        "index by_owner is an index on (owner) in the table; the template declares an index on (owner, status)",
      ])
      const unique = { ...accBalance, indexes: [{ name: "by_owner", fields: ["owner"], unique: true }] }
      expect(unsafe(unique)).toEqual([
        "index by_owner is an index on (owner) in the table; the template declares a unique index on (owner)",
      ])
      const actual = actualOf(accBalance)
      const extra = { ...actual, indexes: [...actual.indexes, { name: "one_owner", fields: ["owner"], unique: true }] }
      expect(unsafe(accBalance, extra)).toEqual([
        "index one_owner is a unique index on (owner) in the table but not in the template (it would refuse rows the template allows)",
      ])
    })

    it("enum values taken away", () => {
      expect(unsafe(changeField(accBalance, "status", { values: ["open"] }))).toEqual([
        'column status allows "closed" in the table, but the template\'s values do not include it (rows may hold it)',
      ])
    })

    it("a missing or changed provenance column", () => {
      const actual = actualOf(accBalance)
      const without = { ...actual, columns: actual.columns.filter((c) => c.name !== LAST_EVENT_COLUMN) }
      expect(unsafe(accBalance, without)).toEqual([
        "column beds_last_id (the lineage ID of the last event applied to each row) is missing from the table",
      ])
      const nullable = {
        ...actual,
        columns: actual.columns.map((c) => (c.name === LAST_EVENT_COLUMN ? { ...c, nullable: true } : c)),
      }
      expect(unsafe(accBalance, nullable)).toHaveLength(1)
    })

    it("lists every difference at once", () => {
      const t: Template = {
        ...changeField(accBalance, "balance", { type: "float" }),
        key: ["account_id", "status"],
        fields: changeField(accBalance, "balance", { type: "float" }).fields.filter((f) => f.name !== "events"),
      }
      expect(unsafe(t)).toHaveLength(3)
    })
  })
})
