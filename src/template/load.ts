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
  SET_MEMBER_TYPES,
  type Shape,
  type ShapeKind,
  ShapeKinds,
  type Template,
  typeName,
  type ValueType,
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

/** How deep REC shapes may nest (objects in lists in maps ...), well inside MongoDB's 100 levels. */
export const MAX_SHAPE_DEPTH = 16

const SCALAR_OR_SHAPE = [...FieldTypes, ...ShapeKinds].join(", ")

/** The storage type each shape has in the model (what a template without shapes would declare). */
export const shapeStorageType = (kind: ShapeKind): FieldType => (kind === "counter" ? "int" : "json")

/** Checks a value type: a field's, or a map value's, list item's or set member's. */
const checkValueType = (t: Template, at: string, v: ValueType, depth: number): void => {
  if (v.shape !== undefined) {
    checkShape(t, at, v, v.shape, depth)
    return
  }
  if (!(FieldTypes as ReadonlyArray<string>).includes(v.type))
    reject(
      "BAD_TEMPLATE",
      t.file,
      `${at}.type`,
      `unknown type ${show(v.type)}; use one of ${t.backend === "rec" ? SCALAR_OR_SHAPE : FieldTypes.join(", ")}.`,
    )
  if (v.type === "string") {
    if (v.max === undefined || !Number.isInteger(v.max) || v.max < 1 || v.max > MAX_STRING)
      reject(
        "BAD_TEMPLATE",
        t.file,
        `${at}.max`,
        `a string field needs max = 1..${MAX_STRING} (its longest value in characters)${v.max === undefined ? "" : `, not ${v.max}`}; for longer values use type = "text".`,
      )
  } else if (v.max !== undefined)
    reject(
      "BAD_TEMPLATE",
      t.file,
      `${at}.max`,
      `max applies to string fields only; remove it from this ${v.type} field.`,
    )
  if (v.type === "enum") {
    const values = v.values ?? []
    if (values.length === 0)
      reject("BAD_TEMPLATE", t.file, `${at}.values`, `an enum field needs values = ["a", "b", ...], at least one.`)
    for (const [i, x] of values.entries()) {
      if (
        typeof x !== "string" ||
        x.length === 0 ||
        codePoints(x) > MAX_KEY_STRING ||
        !isWellFormed(x) ||
        // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is refused
        /[\u0000-\u001f\u007f]/.test(x)
      )
        reject(
          "BAD_TEMPLATE",
          t.file,
          `${at}.values[${i}]`,
          `${show(x)} is not a usable enum value: use a non-empty string of at most ${MAX_KEY_STRING} characters, without control characters.`,
        )
      if (values.indexOf(x) !== i)
        reject("BAD_TEMPLATE", t.file, `${at}.values[${i}]`, `${show(x)} is listed twice; list each value once.`)
    }
  } else if (v.values !== undefined)
    reject(
      "BAD_TEMPLATE",
      t.file,
      `${at}.values`,
      `values applies to enum fields only; remove it, or make the field type = "enum".`,
    )
}

/** Checks a nested shape; only REC templates may have one. */
const checkShape = (t: Template, at: string, v: ValueType, shape: Shape, depth: number): void => {
  const kind = shape.kind
  if (!(ShapeKinds as ReadonlyArray<string>).includes(kind))
    reject("BAD_TEMPLATE", t.file, `${at}.type`, `unknown type ${show(kind)}; use one of ${SCALAR_OR_SHAPE}.`)
  if (t.backend !== "rec")
    reject(
      "BAD_TEMPLATE",
      t.file,
      `${at}.type`,
      `"${kind}" is a REC type: a REL template (a MariaDB table) cannot store nested shapes; use type = "json" here, or make the template backend = "rec".`,
    )
  if (depth > MAX_SHAPE_DEPTH)
    reject(
      "BAD_TEMPLATE",
      t.file,
      `${at}.type`,
      `shapes nest more than ${MAX_SHAPE_DEPTH} levels deep here; flatten the shape (MongoDB documents nest at most 100 levels).`,
    )
  if (v.type !== shapeStorageType(kind))
    reject(
      "BAD_TEMPLATE",
      t.file,
      `${at}.type`,
      `a ${kind} value is stored as type "${shapeStorageType(kind)}" in the model, not "${v.type}"; build it with type = "${shapeStorageType(kind)}" and shape = { kind = "${kind}" }.`,
    )
  if (v.max !== undefined)
    reject("BAD_TEMPLATE", t.file, `${at}.max`, `max applies to string fields only; remove it from this ${kind} field.`)
  if (v.values !== undefined)
    reject(
      "BAD_TEMPLATE",
      t.file,
      `${at}.values`,
      `values applies to enum fields only; remove it from this ${kind} field (a ${kind === "map" || kind === "list" || kind === "set" ? `${kind} declares its value type with of = { type = "..." }` : "counter holds integers"}).`,
    )
  switch (shape.kind) {
    case "counter":
      return
    case "map":
    case "list":
    case "set": {
      const of = shape.of as ValueType | undefined
      if (of === undefined || typeof of !== "object")
        reject(
          "BAD_TEMPLATE",
          t.file,
          `${at}.of`,
          `a ${kind} field needs the type of its ${kind === "map" ? "values" : kind === "list" ? "items" : "members"}, e.g. of = { type = "string", max = 40 }.`,
        )
      if (kind === "set" && (of.shape !== undefined || !SET_MEMBER_TYPES.includes(of.type)))
        reject(
          "BAD_TEMPLATE",
          t.file,
          `${at}.of.type`,
          `a set holds distinct scalars compared by value: use of = { type = ... } with one of ${SET_MEMBER_TYPES.join(", ")}, not ${typeName(of)}; for other values use type = "list".`,
        )
      checkValueType(t, `${at}.of`, of, depth + 1)
      return
    }
    case "object": {
      if (!Array.isArray(shape.fields) || shape.fields.length === 0)
        reject(
          "BAD_TEMPLATE",
          t.file,
          `${at}.fields`,
          `an object field needs its fields, e.g. [${at}.fields.total] with type = "int".`,
        )
      const seen = new Set<string>()
      for (const sub of shape.fields) {
        if (seen.has(sub.name))
          reject(
            "BAD_TEMPLATE",
            t.file,
            `${at}.fields.${sub.name}`,
            `field ${sub.name} is declared twice; give each its own name.`,
          )
        seen.add(sub.name)
        checkField(t, sub, `${at}.fields.${sub.name}`, depth + 1)
      }
      return
    }
  }
}

const checkField = (t: Template, f: Field, at = `fields.${f.name}`, depth = 0): void => {
  identifier(t.file, at, f.name)
  checkValueType(t, at, f, depth)
  if (f.shape?.kind === "counter" && f.nullable)
    reject("BAD_TEMPLATE", t.file, `${at}.nullable`, `a counter is never null (it starts at 0); remove nullable.`)
  if (f.default !== undefined) {
    const at2 = `${at}.default`
    if (f.default === null) {
      if (!f.nullable) reject("BAD_TEMPLATE", t.file, at2, `the default is null but the field is not nullable.`)
    } else if (f.type === "json") {
      let parsed: unknown
      let ok = typeof f.default === "string"
      try {
        if (ok) parsed = JSON.parse(f.default as string)
      } catch {
        ok = false
      }
      if (!ok) reject("BAD_TEMPLATE", t.file, at2, `the default of a json field must be JSON text.`)
      if (f.shape !== undefined) {
        const checked = checkValue(t, f, parsed)
        if (!checked.ok)
          reject("BAD_TEMPLATE", t.file, at2, `the default ${checked.problem.replace(`${t.name}.${f.name}: `, "")}.`)
      }
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
    if (f === undefined && typeof name === "string" && name.includes("."))
      reject(
        "BAD_TEMPLATE",
        t.file,
        at,
        `${show(name)} is a path into a field; key fields are top-level fields of type ${KEY_TYPES.join(", ")}: declare [fields.${name.split(".").at(-1)}] at the top level and list it in the key.`,
      )
    if (f === undefined)
      reject(
        "UNKNOWN_FIELD",
        t.file,
        at,
        `no field named ${show(name)}${suggest(name, [...byName.keys()])}; declare [fields.${name}] or fix the key.`,
      )
    if (f.shape !== undefined)
      reject(
        "BAD_TEMPLATE",
        t.file,
        at,
        `key field ${name} is a ${f.shape.kind} field; key fields must be ${KEY_TYPES.join(", ")}.`,
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
  if (t.backend === "rec") {
    checkRecIndex(t, index, at, byName)
    return
  }
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

/** What an index path leads to in a REC template. */
interface IndexTarget {
  readonly spec: ValueType
  /** The list or set fields the path goes through or ends at (MongoDB indexes each member: "multikey"). */
  readonly arrays: ReadonlyArray<string>
}

/**
 * Resolves an index path such as "totals.in" or "entries.amount": through
 * object fields, and through lists of objects (each item is indexed). A map's
 * keys are data, so a path cannot name them; a path must end at a value an
 * index can order: a scalar, a counter, or a list or set of scalars.
 */
const resolveIndexPath = (
  t: Template,
  at: string,
  indexName: string,
  path: string,
  byName: ReadonlyMap<string, Field>,
): IndexTarget => {
  const segments = path.split(".")
  const arrays: Array<string> = []
  let fields: ReadonlyMap<string, Field> = byName
  let spec: ValueType | undefined
  let walked = ""
  for (const [n, segment] of segments.entries()) {
    const f = fields.get(segment)
    if (f === undefined)
      reject(
        "UNKNOWN_FIELD",
        t.file,
        at,
        walked === ""
          ? `index ${indexName} names ${show(path)}, which is not a field${suggest(segment, [...fields.keys()])}; declare it or fix the index.`
          : `index ${indexName} names ${show(path)}, but ${walked} has no field ${show(segment)}${suggest(segment, [...fields.keys()])} (it has ${[...fields.keys()].join(", ")}).`,
      )
    walked = walked === "" ? segment : `${walked}.${segment}`
    spec = f
    // Through a list of objects: the path goes on into each item.
    while (spec.shape?.kind === "list" && spec.shape.of.shape?.kind === "object" && n < segments.length - 1) {
      arrays.push(walked)
      spec = spec.shape.of
    }
    const last = n === segments.length - 1
    const shape = spec.shape
    if (shape?.kind === "map")
      reject(
        "BAD_TEMPLATE",
        t.file,
        at,
        `index ${indexName} names ${show(path)}, but ${walked} is a map: its keys are data, not declared fields, so an index cannot name them. Index a list of objects instead, or a field outside the map.`,
      )
    if (last) break
    if (shape?.kind !== "object")
      reject(
        "BAD_TEMPLATE",
        t.file,
        at,
        `index ${indexName} names ${show(path)}, but ${walked} is a ${spec === undefined ? "value" : typeName(spec)} field, not an object, so it has no field ${show(segments[n + 1])}; fix the path.`,
      )
    fields = new Map(shape.fields.map((x) => [x.name, x]))
  }
  const target = spec as ValueType
  const kind = target.shape?.kind
  const shapedItems = target.shape?.kind === "list" && target.shape.of.shape !== undefined
  if (kind === "object" || shapedItems)
    reject(
      "BAD_TEMPLATE",
      t.file,
      at,
      `index ${indexName} names ${show(path)}, a whole ${kind === "object" ? "object" : "list of shaped values"}; index one of its scalar fields instead, e.g. ${show(`${path}.${firstScalar(target) ?? "field"}`)}.`,
    )
  if (kind === "list" || kind === "set") arrays.push(walked)
  return { spec: target, arrays }
}

const firstScalar = (v: ValueType): string | undefined => {
  const s = v.shape
  if (s?.kind === "object") return s.fields.find((f) => f.shape === undefined)?.name ?? s.fields[0]?.name
  if (s?.kind === "list") return firstScalar(s.of)
  return undefined
}

/** REC indexes: paths checked as MongoDB would, and as the memory adapter can enforce. */
const checkRecIndex = (t: Template, index: Index, at: string, byName: ReadonlyMap<string, Field>): void => {
  const arrayPaths: Array<string> = []
  for (const [j, path] of index.fields.entries()) {
    const atj = `${at}.fields[${j}]`
    if (typeof path !== "string" || path.split(".").some((s) => !isSafeIdentifier(s)))
      reject(
        "UNSAFE_IDENTIFIER",
        t.file,
        atj,
        `${show(path)} is not a field path: use field names joined by dots, e.g. "totals.in"; ${IDENTIFIER_RULE}.`,
      )
    if (index.fields.indexOf(path) !== j)
      reject("BAD_TEMPLATE", t.file, atj, `${path} appears twice in index ${index.name}.`)
    const overlap = index.fields.find(
      (other) => other !== path && (path.startsWith(`${other}.`) || other.startsWith(`${path}.`)),
    )
    if (overlap !== undefined)
      reject(
        "BAD_TEMPLATE",
        t.file,
        atj,
        `index ${index.name} names both ${path} and ${overlap}, one inside the other; name one of them.`,
      )
    const target = resolveIndexPath(t, atj, index.name, path, byName)
    if (target.arrays.length > 0) arrayPaths.push(path)
    if (index.unique && target.arrays.length > 0)
      reject(
        "BAD_TEMPLATE",
        t.file,
        atj,
        `unique index ${index.name} names ${path}, which goes through the list or set ${target.arrays[0]}; MongoDB would compare every member across documents. Make the index non-unique, or make it unique on scalar fields.`,
      )
    if (index.unique && target.spec.type === "json")
      reject(
        "BAD_TEMPLATE",
        t.file,
        atj,
        `unique index ${index.name} names ${path}, a json field; uniqueness of JSON values depends on key order. Make it unique on scalar fields.`,
      )
  }
  if (arrayPaths.length > 1)
    reject(
      "BAD_TEMPLATE",
      t.file,
      `${at}.fields`,
      `index ${index.name} names ${arrayPaths.join(" and ")}, which are all lists or sets (or inside one); MongoDB cannot index parallel arrays. Split it into one index per list.`,
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

/**
 * Checks the templates a read-model store is asked to ensure: each one on its
 * own, then beside those the store holds already (TLAs and names unique).
 * `only` names the one backend a store holds, and the store in the message.
 */
export const checkEnsured = (
  held: Iterable<Template>,
  templates: ReadonlyArray<Template>,
  only?: { readonly backend: Template["backend"]; readonly store: string },
): DeclarationError | undefined => {
  for (const t of templates) {
    if (only !== undefined && t.backend !== only.backend)
      return new DeclarationError({
        code: "BAD_TEMPLATE",
        message: `Template ${t.name} (${t.file}) is a ${t.backend.toUpperCase()} template; the ${only.store} read-model store holds ${only.backend.toUpperCase()} templates only.`,
      })
    const bad = checkTemplate(t)
    if (bad !== undefined) return bad
  }
  const merged = new Map([...held].map((t) => [t.name, t]))
  for (const t of templates) merged.set(t.name, t)
  return checkTemplates(templates) ?? checkTemplates([...merged.values()])
}

// ---------------------------------------------------------------------------
// Decoding the TOML shape.

type Table = Record<string, unknown>

const TOP_KEYS = ["tla", "name", "backend", "description", "key", "fields", "indexes"]
const FIELD_KEYS = ["type", "max", "values", "nullable", "default", "description", "of", "fields"]
/** Keys of a map value's, list item's or set member's type (`of = { ... }`). */
const ELEMENT_KEYS = ["type", "max", "values", "of", "fields"]
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

/** A value type from its table: a scalar, or a shape with its `of` or `fields`. */
const decodeType = (file: string, at: string, t: Table): ValueType => {
  if (t.type === undefined)
    reject("BAD_TEMPLATE", file, `${at}.type`, `missing; use one of ${[...FieldTypes, ...ShapeKinds].join(", ")}.`)
  const type = str(file, `${at}.type`, t.type, `type = "string"`)
  if (t.max !== undefined && (typeof t.max !== "number" || !Number.isInteger(t.max)))
    reject("BAD_TEMPLATE", file, `${at}.max`, `expected an integer, got ${show(t.max)}.`)
  const max = t.max as number | undefined
  const values = t.values === undefined ? undefined : strings(file, `${at}.values`, t.values, `["open", "closed"]`)
  const kind = (ShapeKinds as ReadonlyArray<string>).includes(type) ? (type as ShapeKind) : undefined
  const listLike = kind === "map" || kind === "list" || kind === "set"
  if (t.of !== undefined && !listLike)
    reject(
      "BAD_TEMPLATE",
      file,
      `${at}.of`,
      `of applies to map, list and set fields only; remove it, or make the field type = "list".`,
    )
  if (t.fields !== undefined && kind !== "object")
    reject(
      "BAD_TEMPLATE",
      file,
      `${at}.fields`,
      `fields applies to object fields only; remove it, or make the field type = "object".`,
    )
  if (kind === undefined) return { type: type as FieldType, max, values }
  let shape: Shape
  if (kind === "counter") shape = { kind }
  else if (kind === "object") {
    if (!isTable(t.fields))
      reject(
        "BAD_TEMPLATE",
        file,
        `${at}.fields`,
        `an object field needs its fields as tables, e.g. [${at}.fields.total] with type = "int"${t.fields === undefined ? "" : `, got ${show(t.fields)}`}.`,
      )
    shape = {
      kind,
      fields: Object.entries(t.fields as Table).map(([name, f]) => decodeField(file, name, f, `${at}.fields.${name}`)),
    }
  } else {
    if (!isTable(t.of))
      reject(
        "BAD_TEMPLATE",
        file,
        `${at}.of`,
        `a ${kind} field needs the type of its ${kind === "map" ? "values" : kind === "list" ? "items" : "members"}, e.g. of = { type = "string", max = 40 }${t.of === undefined ? "" : `, got ${show(t.of)}`}.`,
      )
    onlyKeys(file, t.of as Table, ELEMENT_KEYS, `${at}.of.`)
    shape = { kind, of: decodeType(file, `${at}.of`, t.of as Table) }
  }
  return { type: shapeStorageType(kind), max, values, shape }
}

const decodeField = (file: string, name: string, raw: unknown, at = `fields.${name}`): Field => {
  if (!isTable(raw))
    reject("BAD_TEMPLATE", file, at, `expected a table [${at}] with at least type = "...", got ${show(raw)}.`)
  const t = raw as Table
  onlyKeys(file, t, FIELD_KEYS, `${at}.`)
  const v = decodeType(file, at, t)
  return {
    name,
    ...v,
    nullable: t.nullable === undefined ? false : bool(file, `${at}.nullable`, t.nullable),
    default: t.default === undefined ? undefined : decodeDefault(file, `${at}.default`, v.type, t.default),
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
