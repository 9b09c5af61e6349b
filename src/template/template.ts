/**
 * Templates: declarative read-model definitions, one TOML file each under
 * templates/. A REL template becomes a MariaDB table; a REC template a
 * MongoDB collection. This module holds the decoded model; parsing lives in
 * load.ts, DDL in ddl.ts.
 */

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
  /** Value for rows written before the field existed. */
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
