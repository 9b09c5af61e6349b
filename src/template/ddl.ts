/**
 * MariaDB DDL derived from REL templates: the tables the MariaDB read-model
 * store creates, the text `beds templates sql` prints for a DBA, and the
 * drift check that decides which differences between a template and its
 * existing table may be applied without touching a stored value.
 *
 * Every identifier goes through `quoteId`, which accepts only names that
 * template validation allows (or the engine's own `beds_` names); string
 * literals go through `sqlString`.
 */
import { MAX_LENGTH as LINEAGE_MAX_LENGTH } from "../lineage/lineage-id.ts"
import { codePoints, type Field, IDENTIFIER, LAST_EVENT_COLUMN, type Template } from "./template.ts"

/** The system table holding each topology's next offset per depot partition. */
export const CHECKPOINT_TABLE = "beds_checkpoint"

/**
 * Character set and collation of every read-model table. NO PAD binary
 * collation: strings compare by their exact code points, so "a" and "a " are
 * two keys (as they are in JavaScript and in the memory adapter); the PAD
 * SPACE `utf8mb4_bin` would make them collide.
 */
export const CHARSET = "utf8mb4"
export const COLLATION = "utf8mb4_nopad_bin"

/** MariaDB's limit on the bytes of one row's in-row columns. */
export const MAX_ROW_BYTES = 65535
/** InnoDB's limit on the bytes of one index key (DYNAMIC rows). */
export const MAX_INDEX_BYTES = 3072
/** InnoDB's limit on the columns of one index. */
export const MAX_INDEX_COLUMNS = 16

/** Quotes an identifier; any name template validation would refuse is a defect here, never SQL. */
export const quoteId = (name: string): string => {
  if (!IDENTIFIER.test(name)) throw new Error(`Refusing to use ${JSON.stringify(name)} as an SQL identifier.`)
  return `\`${name}\``
}

/**
 * A string literal. Doubling quotes keeps the literal closed whether or not
 * the server treats backslashes as escapes; backslashes are doubled for the
 * default mode, in which they are.
 */
export const sqlString = (s: string): string =>
  `'${s.replace(/\\/g, "\\\\").replace(/'/g, "''").replace(/\0/g, "\\0")}'`

/** Width of an enum's VARCHAR: its longest value, in characters. */
export const enumWidth = (field: Field): number => Math.max(1, ...(field.values ?? []).map(codePoints))

/** The column type as information_schema.COLUMNS.COLUMN_TYPE spells it (integer display widths dropped). */
export const columnType = (field: Field): string => {
  switch (field.type) {
    case "string":
      return `varchar(${field.max})`
    case "enum":
      return `varchar(${enumWidth(field)})`
    case "text":
      return "mediumtext"
    case "int":
    case "time":
      return "bigint"
    case "float":
      return "double"
    case "bool":
      return "tinyint(1)"
    case "json":
      return "longtext"
  }
}

const isCharacter = (field: Field): boolean =>
  field.type === "string" || field.type === "enum" || field.type === "text" || field.type === "json"

/** The collation a field's column must have (null for non-character columns). */
export const columnCollation = (field: Field): string | null => (isCharacter(field) ? COLLATION : null)

const defaultSql = (field: Field): string => {
  const d = field.default
  if (d === undefined) return ""
  if (d === null) return " DEFAULT NULL"
  if (typeof d === "boolean") return ` DEFAULT ${d ? 1 : 0}`
  if (typeof d === "number") return ` DEFAULT ${d}`
  return ` DEFAULT ${sqlString(d)}`
}

/** A field's column definition, as in CREATE TABLE or ALTER TABLE ADD COLUMN. */
export const columnSql = (field: Field): string =>
  `${quoteId(field.name)} ${columnType(field).toUpperCase()}` +
  (isCharacter(field) ? ` CHARACTER SET ${CHARSET} COLLATE ${COLLATION}` : "") +
  (field.nullable ? " NULL" : " NOT NULL") +
  defaultSql(field)

/** The provenance column every read-model table has; lineage IDs are ASCII and compared bytewise. */
export const lastEventColumnSql = `${quoteId(LAST_EVENT_COLUMN)} VARCHAR(${LINEAGE_MAX_LENGTH}) CHARACTER SET ascii COLLATE ascii_bin NOT NULL`

/** The CHECK that keeps an enum column to its values; named after the column so drift checks can find it. */
export const enumCheckSql = (field: Field): string =>
  `CONSTRAINT ${quoteId(field.name)} CHECK (${quoteId(field.name)} IN (${(field.values ?? []).map(sqlString).join(", ")}))`

const columnList = (names: ReadonlyArray<string>): string => names.map(quoteId).join(", ")

const indexSql = (index: Template["indexes"][number]): string =>
  `${index.unique ? "UNIQUE KEY" : "KEY"} ${quoteId(index.name)} (${columnList(index.fields)})`

const TABLE_OPTIONS = `ENGINE=InnoDB DEFAULT CHARSET=${CHARSET} COLLATE=${COLLATION}`

/** CREATE TABLE for a REL template (IF NOT EXISTS, so concurrent start-ups do not collide). */
export const createTableSql = (template: Template): string => {
  const lines = [
    ...template.fields.map(columnSql),
    lastEventColumnSql,
    `PRIMARY KEY (${columnList(template.key)})`,
    ...template.indexes.map(indexSql),
    ...template.fields.filter((f) => f.type === "enum").map(enumCheckSql),
  ]
  return `CREATE TABLE IF NOT EXISTS ${quoteId(template.name)} (\n  ${lines.join(",\n  ")}\n) ${TABLE_OPTIONS}`
}

/**
 * The checkpoint table: per (topology, depot, partition), the next offset to
 * project. Adapters write it in the same transaction as the rows.
 */
export const checkpointTableSql = `CREATE TABLE IF NOT EXISTS ${quoteId(CHECKPOINT_TABLE)} (
  ${quoteId("topology")} VARCHAR(63) NOT NULL,
  ${quoteId("depot")} VARCHAR(63) NOT NULL,
  ${quoteId("part")} SMALLINT NOT NULL,
  ${quoteId("next")} BIGINT NOT NULL,
  PRIMARY KEY (${columnList(["topology", "depot", "part"])})
) ${TABLE_OPTIONS}`

const oneLine = (s: string): string => s.replace(/\s*[\r\n]+\s*/g, " ").trim()

/** The DDL of every REL template, for a DBA to review (`beds templates sql`). */
export const renderDdl = (templates: ReadonlyArray<Template>): string => {
  const parts = [
    `-- BEDS read-model tables, derived from ${templates.length} template(s).`,
    "-- The engine creates missing tables and applies safe additions itself at start-up;",
    "-- this is what it would create on an empty database.",
    "",
    "-- System: projection checkpoints, written in the same transaction as the rows.",
    `${checkpointTableSql};`,
  ]
  for (const t of templates) {
    parts.push("", `-- ${t.tla} ${t.name} (${oneLine(t.file)})`)
    if (t.description !== undefined && t.description.trim() !== "") parts.push(`-- ${oneLine(t.description)}`)
    if (t.backend === "rel") parts.push(`${createTableSql(t)};`)
    else parts.push("-- REC template: a MongoDB collection, no SQL.")
  }
  return `${parts.join("\n")}\n`
}

// ---------------------------------------------------------------------------
// Sizes, checked when a template is loaded so that CREATE TABLE cannot fail.

const lengthBytes = (bytes: number): number => (bytes > 255 ? 2 : 1)

/** Bytes a column takes in MariaDB's row-size accounting (long text counts as its pointer). */
export const storedBytes = (field: Field): number => {
  switch (field.type) {
    case "string":
      return (field.max ?? 0) * 4 + lengthBytes((field.max ?? 0) * 4)
    case "enum":
      return enumWidth(field) * 4 + lengthBytes(enumWidth(field) * 4)
    case "text":
      return 11
    case "json":
      return 12
    case "int":
    case "time":
    case "float":
      return 8
    case "bool":
      return 1
  }
}

/** Bytes a field takes in an index key (utf8mb4: four per character); undefined when it cannot be indexed. */
export const indexBytes = (field: Field): number | undefined => {
  switch (field.type) {
    case "string":
      return (field.max ?? 0) * 4
    case "enum":
      return enumWidth(field) * 4
    case "text":
    case "json":
      return undefined
    case "int":
    case "time":
    case "float":
      return 8
    case "bool":
      return 1
  }
}

/** Bytes of a row of this template in MariaDB's accounting, system column and NULL bitmap included. */
export const rowBytes = (template: Template): number =>
  template.fields.reduce((n, f) => n + storedBytes(f), 0) +
  LINEAGE_MAX_LENGTH +
  2 +
  Math.ceil(template.fields.filter((f) => f.nullable).length / 8)

// ---------------------------------------------------------------------------
// Drift: what a template wants against what the table has.

/** A column as information_schema.COLUMNS describes it. */
export interface ActualColumn {
  readonly name: string
  /** COLUMN_TYPE, e.g. "varchar(64)", "bigint(20)". */
  readonly type: string
  readonly nullable: boolean
  /** COLLATION_NAME; null for non-character columns. */
  readonly collation: string | null
}

/** An index as information_schema.STATISTICS describes it ("PRIMARY" for the primary key). */
export interface ActualIndex {
  readonly name: string
  readonly fields: ReadonlyArray<string>
  readonly unique: boolean
}

/** A CHECK constraint as information_schema.CHECK_CONSTRAINTS describes it. */
export interface ActualCheck {
  readonly name: string
  readonly clause: string
}

/** An existing table, as read from information_schema. */
export interface ActualTable {
  readonly columns: ReadonlyArray<ActualColumn>
  readonly indexes: ReadonlyArray<ActualIndex>
  readonly checks: ReadonlyArray<ActualCheck>
}

/**
 * `safe`: statements that bring the table to the template without changing
 * or losing a stored value. `unsafe`: differences that could, each a
 * sentence; any of them means nothing should be applied.
 */
export interface MigrationPlan {
  readonly safe: ReadonlyArray<string>
  readonly unsafe: ReadonlyArray<string>
}

/** COLUMN_TYPE without integer display widths, which carry no meaning ("bigint(20)" → "bigint"). */
const normalizeType = (type: string): string =>
  type
    .toLowerCase()
    .trim()
    .replace(/^(bigint|int|mediumint|smallint)\(\d+\)/, "$1")

const UNESCAPES: Readonly<Record<string, string>> = { "0": "\0", n: "\n", r: "\r", t: "\t", Z: "\x1a" }

/** The string literals of a CHECK clause as MariaDB prints it, e.g. "`s` in ('a','b\\'c')". */
export const checkLiterals = (clause: string): ReadonlyArray<string> =>
  [...clause.matchAll(/'((?:[^'\\]|\\.|'')*)'/g)].map((m) =>
    (m[1] ?? "").replace(/''/g, "'").replace(/\\(.)/g, (_, c: string) => UNESCAPES[c] ?? c),
  )

const sameList = (a: ReadonlyArray<string>, b: ReadonlyArray<string>): boolean =>
  a.length === b.length && a.every((x, i) => x === b[i])

const tuple = (names: ReadonlyArray<string>): string => `(${names.join(", ")})`
const quoted = (values: ReadonlyArray<string>): string => values.map((v) => JSON.stringify(v)).join(", ")

/**
 * Compares a template with its existing table. Safe: adding a missing column
 * that is nullable or has a default, adding a missing index, allowing more
 * enum values (widening the column if a new value is longer), dropping the
 * value check of a column that is no longer an enum. Everything else that
 * differs is unsafe: a changed type, collation or nullability, a changed key,
 * a column the template no longer has, an index whose fields or uniqueness
 * changed, a unique index the template does not declare, enum values taken
 * away. Non-unique indexes the template does not declare are left alone: a
 * DBA may have added them for queries, and they cannot refuse a row.
 */
export const planMigration = (template: Template, actual: ActualTable): MigrationPlan => {
  const table = quoteId(template.name)
  const modify: Array<string> = []
  const add: Array<string> = []
  const checks: Array<string> = []
  const indexes: Array<string> = []
  const unsafe: Array<string> = []
  const columns = new Map(actual.columns.map((c) => [c.name, c]))
  const checkByName = new Map(actual.checks.map((c) => [c.name, c]))
  const isKey = new Set(template.key)

  for (const field of template.fields) {
    const col = columns.get(field.name)
    const wanted = columnType(field)
    if (col === undefined) {
      if (isKey.has(field.name)) continue // reported with the key below
      if (field.nullable || field.default !== undefined)
        add.push(
          `ALTER TABLE ${table} ADD COLUMN ${columnSql(field)}` +
            (field.type === "enum" ? `, ADD ${enumCheckSql(field)}` : ""),
        )
      else
        unsafe.push(
          `column ${field.name} is missing from the table and is not nullable without a default, so the rows already there would have no value for it (give it a default or make it nullable)`,
        )
      continue
    }
    const has = normalizeType(col.type)
    const check = checkByName.get(field.name)
    const allowed = field.type === "enum" && check !== undefined ? checkLiterals(check.clause) : undefined
    const removed = allowed?.filter((v) => !(field.values ?? []).includes(v)) ?? []
    if (has !== wanted) {
      const widening =
        field.type === "enum" &&
        removed.length === 0 &&
        /^varchar\(\d+\)$/.test(has) &&
        Number(has.slice(8, -1)) < enumWidth(field)
      if (widening) modify.push(`ALTER TABLE ${table} MODIFY COLUMN ${columnSql(field)}`)
      // an enum that lost values is reported once, below, with the values
      else if (removed.length === 0)
        unsafe.push(
          `column ${field.name} is ${col.type} in the table; the template (type = "${field.type}") needs ${wanted}`,
        )
    }
    const collation = columnCollation(field)
    if (collation !== null && col.collation !== null && col.collation !== collation)
      unsafe.push(`column ${field.name} has collation ${col.collation} in the table; the template needs ${collation}`)
    if (col.nullable !== field.nullable)
      unsafe.push(
        col.nullable
          ? `column ${field.name} allows NULL in the table, but the template says it is not nullable (rows may hold NULL)`
          : `column ${field.name} is NOT NULL in the table, but the template says nullable = true`,
      )
    if (field.type === "enum") {
      if (check === undefined) checks.push(`ALTER TABLE ${table} ADD ${enumCheckSql(field)}`)
      else if (removed.length > 0)
        unsafe.push(
          `column ${field.name} allows ${quoted(removed)} in the table, but the template's values do not include ${removed.length === 1 ? "it" : "them"} (rows may hold ${removed.length === 1 ? "it" : "them"})`,
        )
      else if (!sameList([...(allowed ?? [])].sort(), [...(field.values ?? [])].sort()))
        checks.push(`ALTER TABLE ${table} DROP CONSTRAINT ${quoteId(field.name)}, ADD ${enumCheckSql(field)}`)
    } else if (check !== undefined) checks.push(`ALTER TABLE ${table} DROP CONSTRAINT ${quoteId(field.name)}`)
  }

  const last = columns.get(LAST_EVENT_COLUMN)
  const lastType = `varchar(${LINEAGE_MAX_LENGTH})`
  if (last === undefined)
    unsafe.push(
      `column ${LAST_EVENT_COLUMN} (the lineage ID of the last event applied to each row) is missing from the table`,
    )
  else if (normalizeType(last.type) !== lastType || last.nullable || last.collation !== "ascii_bin")
    unsafe.push(
      `column ${LAST_EVENT_COLUMN} is ${last.type}${last.nullable ? " NULL" : " NOT NULL"} ${last.collation ?? ""} in the table; it must be ${lastType} NOT NULL ascii_bin`,
    )

  const declared = new Set([...template.fields.map((f) => f.name), LAST_EVENT_COLUMN])
  for (const col of actual.columns)
    if (!declared.has(col.name))
      unsafe.push(`column ${col.name} is in the table but not in the template (dropping it would lose its values)`)

  const indexByName = new Map(actual.indexes.map((i) => [i.name, i]))
  const primary = indexByName.get("PRIMARY")
  if (primary === undefined)
    unsafe.push(`key: the table has no primary key; the template's key is ${tuple(template.key)}`)
  else if (!sameList(primary.fields, template.key))
    unsafe.push(
      `key: the table's primary key is ${tuple(primary.fields)}; the template's key is ${tuple(template.key)}`,
    )

  for (const index of template.indexes) {
    const has = indexByName.get(index.name)
    if (has === undefined) indexes.push(`ALTER TABLE ${table} ADD ${indexSql(index)}`)
    else if (!sameList(has.fields, index.fields) || has.unique !== index.unique)
      unsafe.push(
        `index ${index.name} is ${has.unique ? "a unique index" : "an index"} on ${tuple(has.fields)} in the table; the template declares ${index.unique ? "a unique index" : "an index"} on ${tuple(index.fields)}`,
      )
  }
  const wantedIndexes = new Set(template.indexes.map((i) => i.name))
  for (const index of actual.indexes)
    if (index.unique && index.name !== "PRIMARY" && !wantedIndexes.has(index.name))
      unsafe.push(
        `index ${index.name} is a unique index on ${tuple(index.fields)} in the table but not in the template (it would refuse rows the template allows)`,
      )

  return { safe: [...modify, ...add, ...checks, ...indexes], unsafe }
}
