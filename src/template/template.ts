/**
 * Templates: declarative read-model definitions, one TOML file each under
 * templates/. A REL template becomes a MariaDB table; a REC template a
 * MongoDB collection. This module holds the decoded model; parsing lives in
 * load.ts, DDL in ddl.ts.
 */
import { isLineageId } from "../lineage/lineage-id.ts"

/** Field types a template may declare. */
export const FieldTypes = ["string", "text", "int", "float", "bool", "time", "json", "enum"] as const
export type FieldType = (typeof FieldTypes)[number]

export interface Field {
  readonly name: string
  readonly type: FieldType
  /** For `string`: the longest value in characters. */
  readonly max?: number | undefined
  /** For `enum`: the allowed values. */
  readonly values?: ReadonlyArray<string> | undefined
  readonly nullable: boolean
  /**
   * Value for rows written before the field existed (and for written rows that
   * leave the field out). For `json` it is JSON text; for `time`, milliseconds
   * since the epoch.
   */
  readonly default?: string | number | boolean | null | undefined
  readonly description?: string | undefined
}

export interface Index {
  readonly name: string
  readonly fields: ReadonlyArray<string>
  readonly unique: boolean
}

export interface Template {
  /** Three-letter abbreviation, upper case, unique across templates. */
  readonly tla: string
  /** Table or collection name. */
  readonly name: string
  readonly backend: "rel" | "rec"
  readonly description?: string | undefined
  /** Key fields, in order; together they identify a row. */
  readonly key: ReadonlyArray<string>
  /** Every field (key fields included), in declaration order. */
  readonly fields: ReadonlyArray<Field>
  readonly indexes: ReadonlyArray<Index>
  /** Where it was declared, for error messages. */
  readonly file: string
}

/**
 * A system column on every read-model row: the lineage ID of the last event
 * applied to it (provenance; `beds why` starts from it).
 */
export const LAST_EVENT_COLUMN = "beds_last_id"

/** A row as topologies see it: field name → value. */
export type Row = Readonly<Record<string, unknown>>

/** A key value, one element per key field. */
export type RowKey = ReadonlyArray<string | number>

/** The canonical identity of a key, for maps and sets. */
export const keyId = (key: RowKey): string => (key.length === 1 ? String(key[0]) : JSON.stringify(key))

/** The key of a row under a template. */
export const keyOf = (template: Template, row: Row): RowKey => template.key.map((k) => row[k] as string | number)

/**
 * Names a template may give itself, its fields and its indexes. They are used
 * as SQL and MongoDB identifiers, always quoted, never built from anything
 * else; the `beds_` prefix is reserved for system columns and tables.
 */
export const IDENTIFIER = /^[a-z][a-z0-9_]{0,63}$/
export const RESERVED_PREFIX = "beds_"

/** Whether `name` may be used as a template, field or index name. */
export const isSafeIdentifier = (name: string): boolean => IDENTIFIER.test(name) && !name.startsWith(RESERVED_PREFIX)

/** Longest `string` field, in characters (its VARCHAR must fit MariaDB's 65,535-byte row). */
export const MAX_STRING = 16383
/** Longest `string` key field, in characters (utf8mb4 keys must fit 3,072 bytes). */
export const MAX_KEY_STRING = 255
/** Largest `text` value in UTF-8 bytes (MEDIUMTEXT). */
export const MAX_TEXT_BYTES = 16_777_215
/** Field types that may be part of a key. */
export const KEY_TYPES: ReadonlyArray<FieldType> = ["string", "int", "enum"]

/** A checked value, or why it was refused (a sentence naming the template and field). */
export type Checked<A> = { readonly ok: true; readonly value: A } | { readonly ok: false; readonly problem: string }

const ok = <A>(value: A): Checked<A> => ({ ok: true, value })
const problem = <A>(text: string): Checked<A> => ({ ok: false, problem: text })

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

/** Whether a string has no unpaired UTF-16 surrogate, i.e. can be stored as UTF-8. */
export const isWellFormed = (s: string): boolean => !LONE_SURROGATE.test(s)

/** Length in Unicode code points, the unit MariaDB counts VARCHAR lengths in. */
export const codePoints = (s: string): number => {
  let n = 0
  for (const _ of s) n++
  return n
}

const isPlainObject = (v: object): boolean => {
  const p = Object.getPrototypeOf(v)
  return p === Object.prototype || p === null
}

/** Whether `v` is exactly representable as JSON (so that it reads back equal to what was written). */
export const isJsonValue = (v: unknown): boolean => {
  switch (typeof v) {
    case "string":
      return true
    case "boolean":
      return true
    case "number":
      return Number.isFinite(v)
    case "object":
      if (v === null) return true
      if (Array.isArray(v)) return v.every(isJsonValue)
      return isPlainObject(v) && Object.values(v).every(isJsonValue)
    default:
      return false
  }
}

const describeValue = (v: unknown): string => {
  if (typeof v === "string") return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v)
  if (typeof v === "number" || typeof v === "boolean" || v === null || v === undefined) return String(v)
  if (typeof v === "bigint") return `${v}n`
  return Array.isArray(v) ? "an array" : typeof v === "object" ? "an object" : typeof v
}

/** The value a field takes when a written row leaves it out. */
const defaultOf = (field: Field): unknown => {
  if (field.default === undefined) return field.nullable ? null : undefined
  if (field.type === "json" && typeof field.default === "string") return JSON.parse(field.default)
  return field.default
}

/**
 * Checks one field value and returns it in canonical form: -0 becomes 0
 * (MariaDB drops the sign, and every adapter must read back the same value)
 * and JSON is deep-copied, so the stored value cannot be changed through the
 * caller's reference.
 */
export const checkValue = (template: Template, field: Field, value: unknown): Checked<unknown> => {
  const where = `${template.name}.${field.name}`
  const bad = (what: string) => problem<unknown>(`${where}: ${describeValue(value)} ${what}`)
  if (value === null) return field.nullable ? ok(null) : bad(`is not allowed: the field is not nullable`)
  switch (field.type) {
    case "string":
    case "text": {
      if (typeof value !== "string") return bad(`is not a string`)
      if (!isWellFormed(value)) return bad(`holds an unpaired UTF-16 surrogate, which UTF-8 cannot store`)
      if (field.type === "string" && codePoints(value) > (field.max ?? 0))
        return bad(`is ${codePoints(value)} characters long; the field holds at most ${field.max}`)
      if (field.type === "text" && Buffer.byteLength(value, "utf8") > MAX_TEXT_BYTES)
        return bad(`is longer than ${MAX_TEXT_BYTES} UTF-8 bytes`)
      return ok(value)
    }
    case "enum":
      if (typeof value !== "string" || !(field.values ?? []).includes(value))
        return bad(`is not one of ${(field.values ?? []).map((v) => JSON.stringify(v)).join(", ")}`)
      return ok(value)
    case "int":
    case "time":
      if (typeof value !== "number" || !Number.isSafeInteger(value))
        return bad(
          field.type === "time"
            ? `is not a time: use integer milliseconds since 1970-01-01T00:00:00Z`
            : `is not an integer between -(2^53-1) and 2^53-1`,
        )
      return ok(value === 0 ? 0 : value)
    case "float":
      if (typeof value !== "number" || !Number.isFinite(value)) return bad(`is not a finite number`)
      return ok(value === 0 ? 0 : value)
    case "bool":
      return typeof value === "boolean" ? ok(value) : bad(`is not a boolean`)
    case "json":
      if (!isJsonValue(value))
        return bad(`is not plain JSON (null, boolean, finite number, string, array or plain object, recursively)`)
      return ok(JSON.parse(JSON.stringify(value)))
  }
}

/**
 * Normalises a key to its fields' types (a numeric string for an `int` field
 * becomes a number, a number for a `string` field a string), so that every
 * adapter finds the same row for it.
 */
export const checkKey = (template: Template, key: RowKey | string): Checked<RowKey> => {
  const parts: RowKey = typeof key === "string" ? [key] : key
  if (parts.length !== template.key.length)
    return problem(
      `${template.name}: a key needs ${template.key.length} value(s) (${template.key.join(", ")}), got ${parts.length}`,
    )
  const out: Array<string | number> = []
  for (let i = 0; i < parts.length; i++) {
    const field = template.fields.find((f) => f.name === template.key[i])
    if (field === undefined) return problem(`${template.name}: key field ${template.key[i]} is not declared`)
    let v: unknown = parts[i]
    if (field.type === "int" && typeof v === "string" && /^-?[0-9]{1,16}$/.test(v)) v = Number(v)
    else if (field.type !== "int" && typeof v === "number") v = String(v)
    const checked = checkValue(template, field, v)
    if (!checked.ok) return checked
    out.push(checked.value as string | number)
  }
  return ok(out)
}

/**
 * Checks a row against its template and returns the complete stored form:
 * every field in declaration order (left-out fields take their default, or
 * null when nullable) plus LAST_EVENT_COLUMN, which must hold the lineage ID
 * of the last event applied. Fields the template does not declare are refused
 * rather than dropped, so every backend stores the same thing.
 */
export const checkRow = (template: Template, row: Row): Checked<Row> => {
  const out: Record<string, unknown> = {}
  for (const field of template.fields) {
    const given = row[field.name]
    const value = given === undefined ? defaultOf(field) : given
    if (value === undefined)
      return problem(`${template.name}.${field.name} is missing: the field is not nullable and has no default`)
    const checked = checkValue(template, field, value)
    if (!checked.ok) return checked
    out[field.name] = checked.value
  }
  const last = row[LAST_EVENT_COLUMN]
  if (typeof last !== "string" || !isLineageId(last))
    return problem(
      `${template.name}.${LAST_EVENT_COLUMN} is ${describeValue(last)}: every row must carry the lineage ID of the last event applied to it`,
    )
  out[LAST_EVENT_COLUMN] = last
  for (const name of Object.keys(row))
    if (!Object.hasOwn(out, name) && row[name] !== undefined)
      return problem(`${template.name} has no field ${JSON.stringify(name)} (declared: ${fieldNames(template)})`)
  return ok(out)
}

const fieldNames = (template: Template): string => template.fields.map((f) => f.name).join(", ")
