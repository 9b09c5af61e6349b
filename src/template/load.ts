/**
 * Reading templates: TOML files under templates/, one template each (see
 * templates/acc_balance.toml). Decoding checks the file's shape; then
 * `checkTemplate` checks the decoded model, so templates built in code get the
 * same checks as files. Every refusal names the file, the key path, what is
 * wrong and how to fix it.
 */
import * as fs from "node:fs/promises"
import * as path from "node:path"
import { Effect } from "effect"
import { parse, TomlDate, TomlError } from "smol-toml"
import { DeclarationError } from "../errors.ts"
import { indexBytes, MAX_INDEX_BYTES, MAX_INDEX_COLUMNS, MAX_ROW_BYTES, rowBytes, storedBytes } from "./ddl.ts"
import {
  checkValue,
  codePoints,
  type Field,
  type FieldType,
  FieldTypes,
  type Index,
  isSafeIdentifier,
  isWellFormed,
  KEY_TYPES,
  MAX_KEY_STRING,
  MAX_STRING,
  type Template,
} from "./template.ts"

type Code = DeclarationError["code"]

/** Thrown inside the synchronous checks, turned into the Effect's failure at the boundary. */
function reject(code: Code, file: string, at: string, what: string): never {
  throw new DeclarationError({ code, message: `${file}: ${at}: ${what}` })
}

const IDENTIFIER_RULE =
  "use 1-64 characters of a-z, 0-9 and _, starting with a letter and not starting with beds_ (reserved for system columns and tables)"

const show = (v: unknown): string => {
  if (v instanceof Date) return v.toISOString()
  if (typeof v === "string") return JSON.stringify(v)
  if (Array.isArray(v)) return "an array"
  if (typeof v === "object" && v !== null) return "a table"
  return String(v)
}

const distance = (a: string, b: string): number => {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0] as number
    d[0] = i
    for (let j = 1; j <= b.length; j++) {
      const cur = d[j] as number
      d[j] = Math.min(cur + 1, (d[j - 1] as number) + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1))
      prev = cur
    }
  }
  return d[b.length] as number
}

const suggest = (name: string, allowed: ReadonlyArray<string>): string => {
  const best = allowed.map((k) => [k, distance(name, k)] as const).sort((x, y) => x[1] - y[1])[0]
  return best !== undefined && best[1] <= 2 ? ` (did you mean ${best[0]}?)` : ""
}

// ---------------------------------------------------------------------------
// Semantic checks on the model.

const identifier = (file: string, at: string, name: string): void => {
  if (!isSafeIdentifier(name))
    reject("UNSAFE_IDENTIFIER", file, at, `${JSON.stringify(name)} is not a safe name: ${IDENTIFIER_RULE}.`)
}

const checkField = (t: Template, f: Field): void => {
  const at = `fields.${f.name}`
  identifier(t.file, at, f.name)
  if (!(FieldTypes as ReadonlyArray<string>).includes(f.type))
    reject("BAD_TEMPLATE", t.file, `${at}.type`, `unknown type ${show(f.type)}; use one of ${FieldTypes.join(", ")}.`)
  if (f.type === "string") {
    if (f.max === undefined || !Number.isInteger(f.max) || f.max < 1 || f.max > MAX_STRING)
      reject(
        "BAD_TEMPLATE",
        t.file,
        `${at}.max`,
        `a string field needs max = 1..${MAX_STRING} (its longest value in characters)${f.max === undefined ? "" : `, not ${f.max}`}; for longer values use type = "text".`,
      )
  } else if (f.max !== undefined)
    reject(
      "BAD_TEMPLATE",
      t.file,
      `${at}.max`,
      `max applies to string fields only; remove it from this ${f.type} field.`,
    )
  if (f.type === "enum") {
    const values = f.values ?? []
    if (values.length === 0)
      reject("BAD_TEMPLATE", t.file, `${at}.values`, `an enum field needs values = ["a", "b", ...], at least one.`)
    for (const [i, v] of values.entries()) {
      if (
        typeof v !== "string" ||
        v.length === 0 ||
        codePoints(v) > MAX_KEY_STRING ||
        !isWellFormed(v) ||
        // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is refused
        /[\u0000-\u001f\u007f]/.test(v)
      )
        reject(
          "BAD_TEMPLATE",
          t.file,
          `${at}.values[${i}]`,
          `${show(v)} is not a usable enum value: use a non-empty string of at most ${MAX_KEY_STRING} characters, without control characters.`,
        )
      if (values.indexOf(v) !== i)
        reject("BAD_TEMPLATE", t.file, `${at}.values[${i}]`, `${show(v)} is listed twice; list each value once.`)
    }
  } else if (f.values !== undefined)
    reject(
      "BAD_TEMPLATE",
      t.file,
      `${at}.values`,
      `values applies to enum fields only; remove it, or make the field type = "enum".`,
    )
  if (f.default !== undefined) {
    const at2 = `${at}.default`
    if (f.default === null) {
      if (!f.nullable) reject("BAD_TEMPLATE", t.file, at2, `the default is null but the field is not nullable.`)
    } else if (f.type === "json") {
      let ok = typeof f.default === "string"
      try {
        if (ok) JSON.parse(f.default as string)
      } catch {
        ok = false
      }
      if (!ok) reject("BAD_TEMPLATE", t.file, at2, `the default of a json field must be JSON text.`)
    } else {
      const checked = checkValue(t, f, f.default)
      if (!checked.ok)
        reject("BAD_TEMPLATE", t.file, at2, `the default ${checked.problem.replace(`${t.name}.${f.name}: `, "")}.`)
    }
  }
}

const checkKeyFields = (t: Template, byName: ReadonlyMap<string, Field>): void => {
  if (t.key.length === 0)
    reject("BAD_TEMPLATE", t.file, "key", `the key is empty; list the fields that identify a row, e.g. key = ["id"].`)
  let bytes = 0
  for (const [i, name] of t.key.entries()) {
    const at = `key[${i}]`
    const f = byName.get(name)
    if (f === undefined)
      reject(
        "UNKNOWN_FIELD",
        t.file,
        at,
        `no field named ${show(name)}${suggest(name, [...byName.keys()])}; declare [fields.${name}] or fix the key.`,
      )
    if (t.key.indexOf(name) !== i)
      reject("BAD_TEMPLATE", t.file, at, `${name} appears twice in the key; list each key field once.`)
    if (f.nullable) reject("BAD_TEMPLATE", t.file, at, `key field ${name} is nullable; key fields cannot be null.`)
    if (!KEY_TYPES.includes(f.type))
      reject(
        "BAD_TEMPLATE",
        t.file,
        at,
        `key field ${name} is a ${f.type} field; key fields must be ${KEY_TYPES.join(", ")}.`,
      )
    if (f.type === "string" && (f.max ?? 0) > MAX_KEY_STRING)
      reject(
        "BAD_TEMPLATE",
        t.file,
        `fields.${name}.max`,
        `key field ${name} has max = ${f.max}; key strings hold at most ${MAX_KEY_STRING} characters.`,
      )
    if (f.default !== undefined)
      reject("BAD_TEMPLATE", t.file, `fields.${name}.default`, `key field ${name} cannot have a default; remove it.`)
    bytes += indexBytes(f) ?? 0
  }
  if (t.backend === "rel" && (t.key.length > MAX_INDEX_COLUMNS || bytes > MAX_INDEX_BYTES))
    reject(
      "BAD_TEMPLATE",
      t.file,
      "key",
      `the key takes ${t.key.length} fields and ${bytes} bytes; MariaDB allows ${MAX_INDEX_COLUMNS} fields and ${MAX_INDEX_BYTES} bytes (4 per string character): shorten the key strings.`,
    )
}

const checkIndex = (t: Template, index: Index, i: number, byName: ReadonlyMap<string, Field>): void => {
  const at = `indexes[${i}]`
  identifier(t.file, `${at}.name`, index.name)
  if (index.name === "primary")
    reject("UNSAFE_IDENTIFIER", t.file, `${at}.name`, `"primary" is reserved for the key; choose another name.`)
  if (t.indexes.findIndex((x) => x.name === index.name) !== i)
    reject("BAD_TEMPLATE", t.file, `${at}.name`, `index ${index.name} is declared twice; give each index its own name.`)
  if (index.fields.length === 0)
    reject("BAD_TEMPLATE", t.file, `${at}.fields`, `index ${index.name} has no fields; list at least one.`)
  let bytes = 0
  for (const [j, name] of index.fields.entries()) {
    const f = byName.get(name)
    if (f === undefined)
      reject(
        "UNKNOWN_FIELD",
        t.file,
        `${at}.fields[${j}]`,
        `index ${index.name} names ${show(name)}, which is not a field${suggest(name, [...byName.keys()])}; declare it or fix the index.`,
      )
    if (index.fields.indexOf(name) !== j)
      reject("BAD_TEMPLATE", t.file, `${at}.fields[${j}]`, `${name} appears twice in index ${index.name}.`)
    const b = indexBytes(f)
    if (b === undefined && t.backend === "rel")
      reject(
        "BAD_TEMPLATE",
        t.file,
        `${at}.fields[${j}]`,
        `${name} is a ${f.type} field, which MariaDB cannot index whole; index a string field instead.`,
      )
    bytes += b ?? 0
  }
  if (t.backend === "rel" && (index.fields.length > MAX_INDEX_COLUMNS || bytes > MAX_INDEX_BYTES))
    reject(
      "BAD_TEMPLATE",
      t.file,
      `${at}.fields`,
      `index ${index.name} takes ${index.fields.length} fields and ${bytes} bytes; MariaDB allows ${MAX_INDEX_COLUMNS} fields and ${MAX_INDEX_BYTES} bytes (4 per string character).`,
    )
}

const checkModel = (t: Template): void => {
  if (typeof t.tla !== "string" || !/^[A-Z]{3}$/.test(t.tla))
    reject(
      "BAD_TEMPLATE",
      t.file,
      "tla",
      `${show(t.tla)} is not a TLA: use three upper-case letters, e.g. tla = "ACB".`,
    )
  identifier(t.file, "name", t.name)
  if (t.backend !== "rel" && t.backend !== "rec")
    reject(
      "BAD_TEMPLATE",
      t.file,
      "backend",
      `${show(t.backend)} is not a backend: use "rel" (a MariaDB table) or "rec" (a MongoDB collection).`,
    )
  if (t.fields.length === 0)
    reject("BAD_TEMPLATE", t.file, "fields", `the template has no fields; declare them as [fields.<name>] tables.`)
  const byName = new Map<string, Field>()
  for (const f of t.fields) {
    if (byName.has(f.name))
      reject("BAD_TEMPLATE", t.file, `fields.${f.name}`, `field ${f.name} is declared twice; give each its own name.`)
    checkField(t, f)
    byName.set(f.name, f)
  }
  checkKeyFields(t, byName)
  for (const [i, index] of t.indexes.entries()) checkIndex(t, index, i, byName)
  if (t.backend === "rel" && rowBytes(t) > MAX_ROW_BYTES) {
    const widest = [...t.fields].sort((a, b) => storedBytes(b) - storedBytes(a))[0]
    reject(
      "BAD_TEMPLATE",
      t.file,
      "fields",
      `a row takes up to ${rowBytes(t)} bytes, more than MariaDB's ${MAX_ROW_BYTES} (string fields count 4 bytes per character of max); make long fields such as ${widest?.name} type = "text".`,
    )
  }
}

/** Checks a decoded or hand-built template; undefined when it is valid. */
export const checkTemplate = (template: Template): DeclarationError | undefined => {
  try {
    checkModel(template)
    return undefined
  } catch (e) {
    if (e instanceof DeclarationError) return e
    throw e
  }
}

/** Checks that TLAs and names are unique across templates; undefined when they are. */
export const checkTemplates = (templates: ReadonlyArray<Template>): DeclarationError | undefined => {
  const byTla = new Map<string, Template>()
  const byName = new Map<string, Template>()
  for (const t of templates) {
    const a = byTla.get(t.tla)
    if (a !== undefined && a !== t)
      return new DeclarationError({
        code: "BAD_TEMPLATE",
        message: `${t.file}: tla: ${t.tla} is already the TLA of ${a.name} (${a.file}); give each template its own TLA.`,
      })
    const b = byName.get(t.name)
    if (b !== undefined && b !== t)
      return new DeclarationError({
        code: "BAD_TEMPLATE",
        message: `${t.file}: name: ${t.name} is already the name of the template in ${b.file}; give each template its own name.`,
      })
    byTla.set(t.tla, t)
    byName.set(t.name, t)
  }
  return undefined
}

// ---------------------------------------------------------------------------
// Decoding the TOML shape.

type Table = Record<string, unknown>

const TOP_KEYS = ["tla", "name", "backend", "description", "key", "fields", "indexes"]
const FIELD_KEYS = ["type", "max", "values", "nullable", "default", "description"]
const INDEX_KEYS = ["name", "fields", "unique"]

const isTable = (v: unknown): v is Table =>
  typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date)

const onlyKeys = (file: string, table: Table, allowed: ReadonlyArray<string>, prefix: string): void => {
  for (const k of Object.keys(table))
    if (!allowed.includes(k))
      reject(
        "BAD_TEMPLATE",
        file,
        `${prefix}${k}`,
        `unknown key${suggest(k, allowed)}; allowed here: ${allowed.join(", ")}.`,
      )
}

const str = (file: string, at: string, v: unknown, example: string): string => {
  if (typeof v !== "string") reject("BAD_TEMPLATE", file, at, `expected a string, e.g. ${example}, got ${show(v)}.`)
  return v as string
}

const strings = (file: string, at: string, v: unknown, example: string): ReadonlyArray<string> => {
  if (!Array.isArray(v) || v.some((x) => typeof x !== "string"))
    reject("BAD_TEMPLATE", file, at, `expected a list of strings, e.g. ${example}, got ${show(v)}.`)
  return v as ReadonlyArray<string>
}

const bool = (file: string, at: string, v: unknown): boolean => {
  if (typeof v !== "boolean") reject("BAD_TEMPLATE", file, at, `expected true or false, got ${show(v)}.`)
  return v as boolean
}

/** A TOML default in the model's form: JSON text for json fields, milliseconds for time fields. */
const decodeDefault = (file: string, at: string, type: unknown, v: unknown): Field["default"] => {
  if (type === "json") {
    if (v instanceof Date) reject("BAD_TEMPLATE", file, at, `a json default cannot be a date; write it as a string.`)
    return JSON.stringify(v)
  }
  if (v instanceof TomlDate) {
    if (type === "time" && v.isDateTime() && !v.isLocal()) return v.getTime()
    reject(
      "BAD_TEMPLATE",
      file,
      at,
      type === "time"
        ? `a time default must be an offset date-time such as 2024-01-01T00:00:00Z (or milliseconds since the epoch), not ${show(v)}.`
        : `a date is not a ${String(type)} value.`,
    )
  }
  if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") return v
  return reject("BAD_TEMPLATE", file, at, `${show(v)} cannot be a default of a ${String(type)} field.`)
}

const decodeField = (file: string, name: string, raw: unknown): Field => {
  const at = `fields.${name}`
  if (!isTable(raw))
    reject("BAD_TEMPLATE", file, at, `expected a table [fields.${name}] with at least type = "...", got ${show(raw)}.`)
  const t = raw as Table
  onlyKeys(file, t, FIELD_KEYS, `${at}.`)
  if (t.type === undefined) reject("BAD_TEMPLATE", file, `${at}.type`, `missing; use one of ${FieldTypes.join(", ")}.`)
  const type = str(file, `${at}.type`, t.type, `type = "string"`)
  if (t.max !== undefined && (typeof t.max !== "number" || !Number.isInteger(t.max)))
    reject("BAD_TEMPLATE", file, `${at}.max`, `expected an integer, got ${show(t.max)}.`)
  return {
    name,
    type: type as FieldType,
    max: t.max as number | undefined,
    values: t.values === undefined ? undefined : strings(file, `${at}.values`, t.values, `["open", "closed"]`),
    nullable: t.nullable === undefined ? false : bool(file, `${at}.nullable`, t.nullable),
    default: t.default === undefined ? undefined : decodeDefault(file, `${at}.default`, type, t.default),
    description: t.description === undefined ? undefined : str(file, `${at}.description`, t.description, `"..."`),
  }
}

const decodeIndex = (file: string, raw: unknown, i: number): Index => {
  const at = `indexes[${i}]`
  if (!isTable(raw)) reject("BAD_TEMPLATE", file, at, `expected an [[indexes]] table with name and fields.`)
  const t = raw as Table
  onlyKeys(file, t, INDEX_KEYS, `${at}.`)
  if (t.name === undefined) reject("BAD_TEMPLATE", file, `${at}.name`, `missing; give the index a name.`)
  if (t.fields === undefined) reject("BAD_TEMPLATE", file, `${at}.fields`, `missing; list the indexed fields.`)
  return {
    name: str(file, `${at}.name`, t.name, `name = "by_owner"`),
    fields: strings(file, `${at}.fields`, t.fields, `fields = ["owner"]`),
    unique: t.unique === undefined ? false : bool(file, `${at}.unique`, t.unique),
  }
}

const decode = (raw: Table, file: string): Template => {
  onlyKeys(file, raw, TOP_KEYS, "")
  for (const k of ["tla", "name", "backend", "key", "fields"])
    if (raw[k] === undefined) reject("BAD_TEMPLATE", file, k, `missing; every template needs ${k}.`)
  const fields = raw.fields
  if (!isTable(fields)) reject("BAD_TEMPLATE", file, "fields", `expected [fields.<name>] tables, got ${show(fields)}.`)
  const indexes = raw.indexes ?? []
  if (!Array.isArray(indexes))
    reject("BAD_TEMPLATE", file, "indexes", `expected [[indexes]] tables, got ${show(indexes)}.`)
  return {
    tla: str(file, "tla", raw.tla, `tla = "ACB"`),
    name: str(file, "name", raw.name, `name = "acc_balance"`),
    backend: str(file, "backend", raw.backend, `backend = "rel"`) as Template["backend"],
    description: raw.description === undefined ? undefined : str(file, "description", raw.description, `"..."`),
    key: strings(file, "key", raw.key, `key = ["account_id"]`),
    fields: Object.entries(fields as Table).map(([name, f]) => decodeField(file, name, f)),
    indexes: (indexes as ReadonlyArray<unknown>).map((x, i) => decodeIndex(file, x, i)),
    file,
  }
}

/** Parses and checks one template; `file` names it in errors. */
export const parseTemplate = (text: string, file: string): Effect.Effect<Template, DeclarationError> =>
  Effect.try({
    try: () => {
      let raw: Table
      try {
        raw = parse(text) as Table
      } catch (e) {
        const detail = e instanceof TomlError ? `line ${e.line}, column ${e.column}: ${e.message}` : String(e)
        return reject("BAD_TEMPLATE", file, "TOML", `the file is not valid TOML at ${detail}`)
      }
      const template = decode(raw, file)
      checkModel(template)
      return template
    },
    catch: (e) =>
      e instanceof DeclarationError
        ? e
        : new DeclarationError({ code: "BAD_TEMPLATE", message: `${file}: cannot be read as a template: ${e}` }),
  })

/** Loads every `*.toml` template in `dir` (in file-name order) and checks that TLAs and names are unique. */
export const loadTemplates = (dir: string): Effect.Effect<ReadonlyArray<Template>, DeclarationError> =>
  Effect.gen(function* () {
    const unreadable = (what: string) => (e: unknown) =>
      new DeclarationError({
        code: "BAD_TEMPLATE",
        message: `${what}: ${(e as { message?: string }).message ?? String(e)}. Templates are *.toml files in ${dir}.`,
      })
    const entries = yield* Effect.tryPromise({
      try: () => fs.readdir(dir, { withFileTypes: true }),
      catch: unreadable(`Cannot read the templates directory ${dir}`),
    })
    const files = entries
      .filter((e) => e.isFile() && e.name.endsWith(".toml"))
      .map((e) => e.name)
      .sort()
    const templates: Array<Template> = []
    for (const name of files) {
      const file = path.join(dir, name)
      const text = yield* Effect.tryPromise({
        try: () => fs.readFile(file, "utf8"),
        catch: unreadable(`Cannot read ${file}`),
      })
      templates.push(yield* parseTemplate(text, file))
    }
    const clash = checkTemplates(templates)
    if (clash !== undefined) return yield* Effect.fail(clash)
    return templates
  })
