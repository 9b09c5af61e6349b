/**
 * What REC templates become in MongoDB: the indexes of each collection, the
 * plan `beds templates` prints for a DBA beside the REL DDL, and the drift
 * check that decides which differences between a template and what is
 * already stored may be applied without touching a stored value.
 *
 * MongoDB keeps no schema, so drift is judged against the template each
 * collection was last ensured with (recorded in `beds_templates`) and against
 * the collection's actual indexes.
 */
import { BSON, type Document } from "mongodb"
import { toBson } from "../readmodel/mongo-ops.ts"
import {
  checkValue,
  defaultOf,
  type Field,
  LAST_EVENT_COLUMN,
  type Template,
  typeName,
  type ValueType,
} from "./template.ts"

/** A MongoDB index as BEDS creates it. */
export interface IndexSpec {
  readonly name: string
  /** Field paths in order, each ascending. */
  readonly key: Readonly<Record<string, 1>>
  readonly unique: boolean
  /** Unique indexes leave out documents with a null part, so that NULLs never collide (as in MariaDB). */
  readonly partialFilterExpression?: Document | undefined
}

/** The BSON type a scalar value is stored as (see mongo-ops.ts toBson). */
export const bsonType = (v: ValueType): string => {
  if (v.shape?.kind === "counter") return "long"
  if (v.shape !== undefined) return v.shape.kind === "object" || v.shape.kind === "map" ? "object" : "array"
  switch (v.type) {
    case "string":
    case "text":
    case "enum":
      return "string"
    case "int":
      return "long"
    case "float":
      return "double"
    case "bool":
      return "bool"
    case "time":
      return "date"
    case "json":
      return "any"
  }
}

/** The value type at a dotted path through objects and lists of objects. */
export const specAt = (template: Template, path: string): ValueType | undefined => {
  let fields: ReadonlyArray<Field> = template.fields
  let spec: ValueType | undefined
  for (const segment of path.split(".")) {
    spec = fields.find((f) => f.name === segment)
    while (spec?.shape?.kind === "list" && spec.shape.of.shape?.kind === "object") spec = spec.shape.of
    fields = spec?.shape?.kind === "object" ? spec.shape.fields : []
  }
  return spec
}

/** The indexes a REC template's collection has (besides `_id`). */
export const indexSpecs = (template: Template): ReadonlyArray<IndexSpec> =>
  template.indexes.map((index) => ({
    name: index.name,
    key: Object.fromEntries(index.fields.map((f) => [f, 1 as const])),
    unique: index.unique,
    partialFilterExpression: index.unique
      ? Object.fromEntries(
          index.fields.map((f) => {
            const spec = specAt(template, f)
            return [f, { $type: spec === undefined ? "string" : bsonType(spec) }]
          }),
        )
      : undefined,
  }))

/** An index as `listIndexes` describes it. */
export interface ActualIndex {
  readonly name: string
  readonly key: Document
  readonly unique?: boolean | undefined
  readonly partialFilterExpression?: Document | undefined
}

/** What is stored for a template's collection. */
export interface ActualCollection {
  readonly exists: boolean
  /** Documents in the collection (an estimate is enough: only zero matters). */
  readonly documents: number
  /** The template the collection was last ensured with, if any. */
  readonly recorded: Template | undefined
  readonly indexes: ReadonlyArray<ActualIndex>
}

/** A change `ensure` may apply: none of them alters a stored value. */
export type Step =
  | { readonly kind: "createCollection" }
  | { readonly kind: "createIndex"; readonly index: IndexSpec }
  /** Gives documents written before a field existed its default, as MariaDB's ADD COLUMN ... DEFAULT does. */
  | { readonly kind: "fillDefault"; readonly field: string; readonly value: unknown }
  | { readonly kind: "record" }

/**
 * `safe`: steps that bring the collection to the template without changing
 * or losing a stored value. `unsafe`: differences that could, each a
 * sentence; any of them means nothing should be applied.
 */
export interface CollectionMigration {
  readonly safe: ReadonlyArray<Step>
  readonly unsafe: ReadonlyArray<string>
}

const sameJson = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b)

const comparable = (t: Template): unknown => {
  const { file: _file, description: _d, ...rest } = t
  return JSON.parse(JSON.stringify(rest, (k, v) => (k === "description" ? undefined : v)))
}

/** Compares two value types; pushes what stored values might not fit. */
const compareTypes = (path: string, was: ValueType, now: ValueType, unsafe: Array<string>): void => {
  if (typeName(was) !== typeName(now)) {
    unsafe.push(
      `${path} is ${typeName(was)} in the stored documents; the template now says ${typeName(now)} (stored values would not read back)`,
    )
    return
  }
  if (now.type === "string" && (now.max ?? 0) < (was.max ?? 0))
    unsafe.push(`${path} held strings of up to ${was.max} characters; the template now allows ${now.max}`)
  if (now.type === "enum") {
    const removed = (was.values ?? []).filter((v) => !(now.values ?? []).includes(v))
    if (removed.length > 0)
      unsafe.push(
        `${path} allowed ${removed.map((v) => JSON.stringify(v)).join(", ")}, which the template's values no longer include (documents may hold ${removed.length === 1 ? "it" : "them"})`,
      )
  }
  const a = was.shape
  const b = now.shape
  if (a === undefined || b === undefined) return
  if ((a.kind === "map" || a.kind === "list" || a.kind === "set") && a.kind === b.kind)
    compareTypes(`${path}${a.kind === "map" ? ".<key>" : "[]"}`, a.of, (b as typeof a).of, unsafe)
  if (a.kind === "object" && b.kind === "object") compareFields(`${path}.`, a.fields, b.fields, unsafe)
}

const compareFields = (
  prefix: string,
  was: ReadonlyArray<Field>,
  now: ReadonlyArray<Field>,
  unsafe: Array<string>,
): void => {
  for (const f of now) {
    const old = was.find((x) => x.name === f.name)
    const path = `${prefix}${f.name}`
    if (old === undefined) {
      if (defaultOf(f) === undefined)
        unsafe.push(
          `field ${path} is new and is not nullable without a default, so documents already stored would have no value for it (give it a default or make it nullable)`,
        )
      continue
    }
    compareTypes(path, old, f, unsafe)
    if (old.nullable && !f.nullable)
      unsafe.push(`field ${path} was nullable, but the template now says it is not (documents may hold null)`)
  }
  for (const old of was)
    if (!now.some((f) => f.name === old.name))
      unsafe.push(
        `field ${prefix}${old.name} is in the stored documents but not in the template (dropping it would lose its values)`,
      )
}

const tuple = (names: ReadonlyArray<string>): string => `(${names.join(", ")})`

/**
 * Compares a template with its collection. Safe: creating a missing
 * collection or index, adding a field that has a default or is nullable (its
 * default is written into the documents already there), widening a string or
 * an enum, making a field nullable. Unsafe: a changed key, a field removed or
 * changed in type, narrowed values, an index whose fields or uniqueness
 * changed, a unique index the template does not declare, or a collection that
 * holds documents BEDS has no record of. Non-unique indexes the template does
 * not declare are left alone: a DBA may have added them for queries.
 */
export const planCollection = (template: Template, actual: ActualCollection): CollectionMigration => {
  const safe: Array<Step> = []
  const unsafe: Array<string> = []
  if (!actual.exists) safe.push({ kind: "createCollection" })
  const recorded = actual.recorded
  if (recorded === undefined) {
    if (actual.documents > 0)
      unsafe.push(
        `the collection holds ${actual.documents} document(s) but BEDS has no record of the template they were written with; drop the collection (BEDS rebuilds it by replay) or restore its beds_templates entry`,
      )
  } else {
    if (!sameJson(recorded.key, template.key))
      unsafe.push(
        `key: the documents are keyed by ${tuple(recorded.key)}; the template's key is ${tuple(template.key)}`,
      )
    compareFields("", recorded.fields, template.fields, unsafe)
    if (actual.documents > 0)
      for (const f of template.fields)
        if (!recorded.fields.some((x) => x.name === f.name)) {
          const d = defaultOf(f)
          const canonical = d === undefined ? undefined : checkValue(template, f, d)
          if (canonical?.ok) safe.push({ kind: "fillDefault", field: f.name, value: toBson(f, canonical.value) })
        }
  }
  const byName = new Map(actual.indexes.map((i) => [i.name, i]))
  const wanted = indexSpecs(template)
  for (const spec of wanted) {
    const has = byName.get(spec.name)
    if (has === undefined) {
      safe.push({ kind: "createIndex", index: spec })
      continue
    }
    const sameKey = sameJson(
      Object.entries(has.key).map(([k, v]) => [k, Number(v)]),
      Object.entries(spec.key),
    )
    const sameUnique = (has.unique === true) === spec.unique
    const sameFilter = sameJson(has.partialFilterExpression ?? null, spec.partialFilterExpression ?? null)
    if (!sameKey || !sameUnique || !sameFilter)
      unsafe.push(
        `index ${spec.name} is ${has.unique === true ? "a unique index" : "an index"} on ${tuple(Object.keys(has.key))}${has.partialFilterExpression ? ` with partial filter ${JSON.stringify(has.partialFilterExpression)}` : ""} in the collection; the template declares ${spec.unique ? "a unique index" : "an index"} on ${tuple(Object.keys(spec.key))}${spec.partialFilterExpression ? ` with partial filter ${JSON.stringify(spec.partialFilterExpression)}` : ""}`,
      )
  }
  const wantedNames = new Set(wanted.map((i) => i.name))
  for (const index of actual.indexes)
    if (index.unique === true && index.name !== "_id_" && !wantedNames.has(index.name))
      unsafe.push(
        `index ${index.name} is a unique index on ${tuple(Object.keys(index.key))} in the collection but not in the template (it would refuse documents the template allows)`,
      )
  if (recorded === undefined || !sameJson(comparable(recorded), comparable(template))) safe.push({ kind: "record" })
  return { safe, unsafe }
}

// ---------------------------------------------------------------------------
// Printing.

const js = (v: unknown): string => JSON.stringify(v)

const indexOptions = (index: IndexSpec): string =>
  js({
    name: index.name,
    ...(index.unique ? { unique: true } : {}),
    ...(index.partialFilterExpression ? { partialFilterExpression: index.partialFilterExpression } : {}),
  })

/** A safe step as a mongosh statement, for logs and for a DBA. */
export const stepText = (collection: string, step: Step): string => {
  switch (step.kind) {
    case "createCollection":
      return `db.createCollection(${js(collection)})`
    case "createIndex":
      return `db.getCollection(${js(collection)}).createIndex(${js(step.index.key)}, ${indexOptions(step.index)})`
    case "fillDefault":
      return `db.getCollection(${js(collection)}).updateMany({ ${js(step.field)}: { $exists: false } }, { $set: { ${js(step.field)}: ${BSON.EJSON.stringify(step.value, { relaxed: true })} } })`
    case "record":
      return `// record the template in beds_templates`
  }
}

/** A value type as a document outline shows it. */
const outline = (v: ValueType): string => {
  const s = v.shape
  if (s === undefined) return v.type === "enum" ? `enum(${(v.values ?? []).join("|")})` : bsonType(v)
  switch (s.kind) {
    case "counter":
      return "long (counter)"
    case "map":
      return `{ <key>: ${outline(s.of)} }`
    case "list":
      return `[ ${outline(s.of)} ]`
    case "set":
      return `[ ${outline(s.of)} ] (set, sorted)`
    case "object":
      return `{ ${s.fields.map((f) => `${f.name}: ${outline(f)}${f.nullable ? " | null" : ""}`).join(", ")} }`
  }
}

const oneLine = (s: string): string => s.replace(/\s*[\r\n]+\s*/g, " ").trim()

/**
 * The MongoDB collections and indexes of every REC template, in mongosh
 * syntax, for a DBA to review beside the REL DDL (`beds templates`).
 */
export const renderIndexPlan = (templates: ReadonlyArray<Template>): string => {
  const rec = templates.filter((t) => t.backend === "rec")
  const parts = [
    `// BEDS read-model collections, derived from ${rec.length} REC template(s).`,
    "// The engine creates missing collections and indexes itself at start-up;",
    "// this is what it would create on an empty database.",
    "",
    "// System: projection checkpoints (with the pending batch on a standalone server),",
    "// journal chunks of large pending batches, and the template each collection was ensured with.",
    `db.createCollection("beds_checkpoint")`,
    `db.createCollection("beds_journal")`,
    `db.createCollection("beds_templates")`,
  ]
  for (const t of templates) {
    parts.push("", `// ${t.tla} ${t.name} (${oneLine(t.file)})`)
    if (t.description !== undefined && t.description.trim() !== "") parts.push(`// ${oneLine(t.description)}`)
    if (t.backend !== "rec") {
      parts.push("// REL template: a MariaDB table, see the SQL DDL.")
      continue
    }
    parts.push(
      `// _id: ${t.key.length === 1 ? t.key[0] : `{ ${t.key.join(", ")} }`}`,
      `// document: { ${t.fields.map((f) => `${f.name}: ${outline(f)}${f.nullable ? " | null" : ""}`).join(", ")}, ${LAST_EVENT_COLUMN}: string, _beds: { pos: { <topology>: { <depot>: { <partition>: long } } } } }`,
      stepText(t.name, { kind: "createCollection" }),
    )
    for (const index of indexSpecs(t)) parts.push(stepText(t.name, { kind: "createIndex", index }))
  }
  return `${parts.join("\n")}\n`
}
