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

/**
 * Nested shapes a REC template may declare (TOML `type = "map"` etc.), for
 * query-shaped documents. REL templates keep such values in `json` fields.
 */
export const ShapeKinds = ["map", "list", "set", "counter", "object"] as const
export type ShapeKind = (typeof ShapeKinds)[number]

/**
 * A nested shape. `counter`: an integer that starts at 0 and is never null.
 * `map`: string keys to values of one type. `list`: values of one type, in
 * order. `set`: distinct scalars, kept sorted. `object`: declared fields.
 */
export type Shape =
  | { readonly kind: "counter" }
  | { readonly kind: "map" | "list" | "set"; readonly of: ValueType }
  | { readonly kind: "object"; readonly fields: ReadonlyArray<Field> }

/** The type of a value: a field's, or a map value's, list item's or set member's. */
export interface ValueType {
  /**
   * The scalar type; for a shaped value, how it is stored where there are no
   * shapes: `int` for a counter, `json` for the others.
   */
  readonly type: FieldType
  /** For `string`: the longest value in characters. */
  readonly max?: number | undefined
  /** For `enum`: the allowed values. */
  readonly values?: ReadonlyArray<string> | undefined
  /** REC templates only: the nested shape, when the value has one. */
  readonly shape?: Shape | undefined
}

/** The type name a template file uses for a value type ("map", "int", ...). */
export const typeName = (v: ValueType): string => v.shape?.kind ?? v.type

export interface Field extends ValueType {
  readonly name: string
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

/** The value a shaped field takes when nothing else is given: empty, zero, or its fields' defaults. */
const implicitDefault = (shape: Shape): unknown => {
  switch (shape.kind) {
    case "counter":
      return 0
    case "map":
      return {}
    case "list":
    case "set":
      return []
    case "object": {
      const entries: Array<[string, unknown]> = []
      for (const f of shape.fields) {
        const d = defaultOf(f)
        if (d === undefined) return undefined
        entries.push([f.name, d])
      }
      return Object.fromEntries(entries)
    }
  }
}

/**
 * The value a field takes when a written row leaves it out. A shaped field
 * that is not nullable and declares no default starts empty (counter 0, map
 * {}, list and set []), an object with its fields' defaults.
 */
export const defaultOf = (field: Field): unknown => {
  if (field.default === undefined) {
    if (field.nullable) return null
    return field.shape === undefined ? undefined : implicitDefault(field.shape)
  }
  if (field.type === "json" && typeof field.default === "string") return JSON.parse(field.default)
  return field.default
}

/** Largest |time| a REC field holds: the range JavaScript Dates and MongoDB dates share. */
export const MAX_REC_TIME = 8_640_000_000_000_000
/** Deepest nesting of a `json` value in a REC field (MongoDB documents nest at most 100 levels). */
export const MAX_REC_JSON_DEPTH = 80

const jsonDepth = (v: unknown): number => {
  if (typeof v !== "object" || v === null) return 0
  let deepest = 0
  for (const x of Array.isArray(v) ? v : Object.values(v)) deepest = Math.max(deepest, jsonDepth(x))
  return deepest + 1
}

/** Code-point order of strings (UTF-16 order differs above U+D7FF); the order MongoDB and utf8mb4_nopad_bin sort by. */
export const compareCodePoints = (a: string, b: string): number => {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i)
    let y = b.charCodeAt(i)
    if (x !== y) {
      if (x >= 0xd800 && y >= 0xd800) {
        x = x >= 0xe000 ? x - 0x800 : x + 0x2000
        y = y >= 0xe000 ? y - 0x800 : y + 0x2000
      }
      return x - y
    }
  }
  return a.length - b.length
}

/**
 * Key order as both stores sort keys: MariaDB's primary key (utf8mb4_nopad_bin)
 * and MongoDB's `_id` — strings by code point, numbers by value, compound keys
 * field by field.
 */
export const compareKeys = (a: RowKey, b: RowKey): number => {
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as string | number
    const y = b[i] as string | number
    const c = typeof x === "number" && typeof y === "number" ? x - y : compareCodePoints(String(x), String(y))
    if (c !== 0) return c
  }
  return 0
}

/** Checks a scalar (a value of one of FieldTypes); `rec` adds what MongoDB cannot store. */
const checkScalar = (where: Where, spec: ValueType, value: unknown, rec: boolean): Checked<unknown> => {
  const bad = (what: string) => problem<unknown>(`${where}: ${describeValue(value)} ${what}`)
  switch (spec.type) {
    case "string":
    case "text": {
      if (typeof value !== "string") return bad(`is not a string`)
      if (!isWellFormed(value)) return bad(`holds an unpaired UTF-16 surrogate, which UTF-8 cannot store`)
      // length counts UTF-16 units, never fewer than code points: count those only when it matters
      if (spec.type === "string" && value.length > (spec.max ?? 0) && codePoints(value) > (spec.max ?? 0))
        return bad(`is ${codePoints(value)} characters long; the field holds at most ${spec.max}`)
      if (spec.type === "text" && Buffer.byteLength(value, "utf8") > MAX_TEXT_BYTES)
        return bad(`is longer than ${MAX_TEXT_BYTES} UTF-8 bytes`)
      return ok(value)
    }
    case "enum":
      if (typeof value !== "string" || !(spec.values ?? []).includes(value))
        return bad(`is not one of ${(spec.values ?? []).map((v) => JSON.stringify(v)).join(", ")}`)
      return ok(value)
    case "int":
    case "time":
      if (typeof value !== "number" || !Number.isSafeInteger(value))
        return bad(
          spec.type === "time"
            ? `is not a time: use integer milliseconds since 1970-01-01T00:00:00Z`
            : `is not an integer between -(2^53-1) and 2^53-1`,
        )
      if (rec && spec.type === "time" && Math.abs(value) > MAX_REC_TIME)
        return bad(
          `is outside the dates MongoDB and JavaScript share: use milliseconds between -${MAX_REC_TIME} and ${MAX_REC_TIME}`,
        )
      return ok(value === 0 ? 0 : value)
    case "float":
      if (typeof value !== "number" || !Number.isFinite(value)) return bad(`is not a finite number`)
      return ok(value === 0 ? 0 : value)
    case "bool":
      return typeof value === "boolean" ? ok(value) : bad(`is not a boolean`)
    case "json": {
      if (!isJsonValue(value))
        return bad(`is not plain JSON (null, boolean, finite number, string, array or plain object, recursively)`)
      const copy = JSON.parse(JSON.stringify(value))
      if (rec && jsonDepth(copy) > MAX_REC_JSON_DEPTH)
        return bad(`nests deeper than ${MAX_REC_JSON_DEPTH} levels, more than a MongoDB document can hold`)
      if (rec && typeof copy === "object" && copy !== null && !keysWellFormed(copy))
        return bad(`has an object key with an unpaired UTF-16 surrogate, which UTF-8 cannot store`)
      return ok(copy)
    }
  }
}

const keysWellFormed = (v: object): boolean =>
  Array.isArray(v)
    ? v.every((x) => typeof x !== "object" || x === null || keysWellFormed(x))
    : Object.entries(v).every(([k, x]) => isWellFormed(k) && (typeof x !== "object" || x === null || keysWellFormed(x)))

/** Scalar types a set may hold: compared by value, with one obvious order. */
export const SET_MEMBER_TYPES: ReadonlyArray<FieldType> = ["string", "enum", "int", "time", "bool"]

const compareMembers = (a: unknown, b: unknown): number =>
  typeof a === "string" && typeof b === "string" ? compareCodePoints(a, b) : Number(a) - Number(b)

/** A map value, list item or set member: never null. */
const checkElement = (where: Where, spec: ValueType, value: unknown): Checked<unknown> => {
  if (value === null || value === undefined)
    return problem(
      `${where}: ${describeValue(value)} is not allowed: map values, list items and set members cannot be null`,
    )
  return spec.shape === undefined ? checkScalar(where, spec, value, true) : checkShaped(where, spec.shape, value)
}

/** An object's declared field, as a row's field: default when left out, null only when nullable. */
const checkMember = (where: Where, field: Field, given: unknown): Checked<unknown> => {
  const value = given === undefined ? defaultOf(field) : given
  if (value === undefined) return problem(`${where} is missing: the field is not nullable and has no default`)
  if (value === null)
    return field.nullable ? ok(null) : problem(`${where}: null is not allowed: the field is not nullable`)
  return checkElement(where, field, value)
}

/**
 * Where a value sits in a row, for messages: a chain rendered only when a
 * message needs it, since every write of a REC row checks all its values and
 * nearly all of them are fine.
 */
class Path {
  readonly parent: Where
  /** An index, a field's name (always an identifier), or a map key. */
  readonly step: number | string
  constructor(parent: Where, step: number | string) {
    this.parent = parent
    this.step = step
  }
  toString(): string {
    const { parent, step } = this
    if (typeof step === "number") return `${parent}[${step}]`
    return IDENTIFIER.test(step) ? `${parent}.${step}` : `${parent}[${JSON.stringify(step)}]`
  }
}
type Where = string | Path

/**
 * The shape each canonical array and object was built for. They are frozen
 * when built, so one met again (a list item carried over from an earlier
 * version of the row) is known to be canonical without walking it: checking
 * a REC row at every write then costs what the write added, not the whole
 * document.
 */
const canonicalShape = new WeakMap<object, Shape>()

const settle = (shape: Shape, value: object): Checked<unknown> => {
  canonicalShape.set(Object.freeze(value), shape)
  return ok(value)
}

/** Whether `value` is a canonical value of `shape` built by the row check (and so frozen and valid). */
export const isCanonical = (shape: Shape, value: unknown): boolean =>
  typeof value === "object" && value !== null && canonicalShape.get(value) === shape

/**
 * Checks a shaped value and returns its canonical form: frozen arrays and
 * objects, map keys in code-point order, set members sorted and distinct,
 * object fields in declaration order with defaults filled in. A canonical
 * value is its own canonical form, so it is returned as it is.
 */
const checkShaped = (where: Where, shape: Shape, value: unknown): Checked<unknown> => {
  if (isCanonical(shape, value)) return ok(value)
  const bad = (what: string) => problem<unknown>(`${where}: ${describeValue(value)} ${what}`)
  switch (shape.kind) {
    case "counter":
      if (typeof value !== "number" || !Number.isSafeInteger(value))
        return bad(`is not a counter value: use an integer between -(2^53-1) and 2^53-1`)
      return ok(value === 0 ? 0 : value)
    case "list": {
      if (!Array.isArray(value)) return bad(`is not a list: use an array`)
      const out: Array<unknown> = []
      for (let i = 0; i < value.length; i++) {
        const c = checkElement(new Path(where, i), shape.of, value[i])
        if (!c.ok) return c
        out.push(c.value)
      }
      return settle(shape, out)
    }
    case "set": {
      const members = value instanceof Set ? [...value] : Array.isArray(value) ? value : undefined
      if (members === undefined) return bad(`is not a set: use a Set or an array`)
      const out: Array<unknown> = []
      for (let i = 0; i < members.length; i++) {
        const c = checkElement(new Path(where, i), shape.of, members[i])
        if (!c.ok) return c
        out.push(c.value)
      }
      out.sort(compareMembers)
      return settle(
        shape,
        out.filter((v, i) => i === 0 || v !== out[i - 1]),
      )
    }
    case "map": {
      const entries =
        value instanceof Map
          ? [...value.entries()]
          : typeof value === "object" && value !== null && !Array.isArray(value) && isPlainObject(value)
            ? Object.entries(value)
            : undefined
      if (entries === undefined) return bad(`is not a map: use a plain object (or a Map) with string keys`)
      const out: Array<[string, unknown]> = []
      for (const [k, v] of entries) {
        if (typeof k !== "string") return bad(`has the key ${describeValue(k)}; map keys are strings`)
        if (!isWellFormed(k)) return bad(`has a key with an unpaired UTF-16 surrogate, which UTF-8 cannot store`)
        if (v === undefined) continue
        const c = checkElement(new Path(where, k), shape.of, v)
        if (!c.ok) return c
        out.push([k, c.value])
      }
      out.sort((a, b) => compareCodePoints(a[0], b[0]))
      return settle(shape, Object.fromEntries(out))
    }
    case "object": {
      if (typeof value !== "object" || value === null || Array.isArray(value) || !isPlainObject(value))
        return bad(`is not an object: use a plain object with the fields ${shape.fields.map((f) => f.name).join(", ")}`)
      const given = value as Record<string, unknown>
      // declared names are identifiers (never __proto__), so plain assignment defines own fields
      const out: Record<string, unknown> = {}
      for (const f of shape.fields) {
        const c = checkMember(new Path(where, f.name), f, Object.hasOwn(given, f.name) ? given[f.name] : undefined)
        if (!c.ok) return c
        out[f.name] = c.value
      }
      for (const k of Object.keys(given))
        if (given[k] !== undefined && !Object.hasOwn(out, k))
          return problem(
            `${where} has no field ${JSON.stringify(k)} (declared: ${shape.fields.map((f) => f.name).join(", ")})`,
          )
      return settle(shape, out)
    }
  }
}

/**
 * Checks one field value and returns it in canonical form: -0 becomes 0
 * (MariaDB drops the sign, and every adapter must read back the same value)
 * and JSON is deep-copied, so the stored value cannot be changed through the
 * caller's reference. Shaped (REC) values are checked all the way down.
 */
export const checkValue = (template: Template, field: Field, value: unknown): Checked<unknown> => {
  // Fast paths for plainly valid scalars (rows are checked on every commit); anything else takes the full check.
  if (field.shape === undefined)
    switch (field.type) {
      case "int":
        if (typeof value === "number" && Number.isSafeInteger(value)) return ok(value === 0 ? 0 : value)
        break
      case "float":
        if (typeof value === "number" && Number.isFinite(value)) return ok(value === 0 ? 0 : value)
        break
      case "bool":
        if (typeof value === "boolean") return ok(value)
        break
      case "string":
        // length counts UTF-16 units, never fewer than code points
        if (typeof value === "string" && value.length <= (field.max ?? 0) && isWellFormed(value)) return ok(value)
        break
      case "enum":
        if (typeof value === "string" && field.values?.includes(value) === true) return ok(value)
        break
    }
  const where = `${template.name}.${field.name}`
  if (value === null)
    return field.nullable ? ok(null) : problem(`${where}: null is not allowed: the field is not nullable`)
  if (field.shape !== undefined) return checkShaped(where, field.shape, value)
  return checkScalar(where, field, value, template.backend === "rec")
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
