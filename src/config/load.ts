/**
 * Reads the configuration: `beds.toml` (required base), then
 * `env_<BEDS_ENV>.toml`, then `BEDS__SECTION__KEY` environment variables and
 * `BEDS_MONGO_URL`, deep-merged in that order and decoded with the Schema.
 * Every failure says which file or variable to change, and how.
 */
import { readdir, readFile } from "node:fs/promises"
import * as path from "node:path"
import { Effect, Result, Schema, type SchemaAST, type SchemaIssue } from "effect"
import { parse, TomlError } from "smol-toml"
import { ConfigError } from "../errors.ts"
import { Config } from "./schema.ts"

/** The decoded configuration and where each of its values came from. */
export interface LoadedConfig {
  readonly config: Config
  /** Absolute paths of the files read, base first. */
  readonly files: string[]
  /**
   * Which file (absolute path) or environment variable (its name) set a key
   * path such as `mariadb.port`. A table's origin lists every source that
   * contributed to it, comma-separated; a path nothing set gives `"not set"`.
   */
  readonly origin: (path: string) => string
}

export interface LoadOptions {
  /** The config folder; defaults to env `BEDS_CONFIG_DIR`, then `<cwd>/config`. */
  readonly dir?: string | undefined
  /** The environment to read `BEDS_*` variables from; defaults to `process.env`. */
  readonly env?: Record<string, string | undefined> | undefined
}

type Table = Record<string, unknown>

const ENV_PREFIX = /^beds__/i
const BASE_FILE = "beds.toml"

const isTable = (u: unknown): u is Table =>
  typeof u === "object" && u !== null && !Array.isArray(u) && !(u instanceof Date)

const nonEmpty = (s: string | undefined): string | undefined => (s === undefined || s === "" ? undefined : s)

const show = (u: unknown): string => {
  if (u === undefined) return "nothing"
  if (typeof u === "number" && !Number.isFinite(u)) return String(u)
  if (u instanceof Date) return JSON.stringify(u.toISOString())
  try {
    return JSON.stringify(u) ?? String(u)
  } catch {
    return String(u)
  }
}

// ---------------------------------------------------------------------------
// Layering with provenance

/**
 * Tracks which source set each leaf (a non-table value, or an empty table).
 * Leaves are what replace one another when layers merge, so they are where
 * provenance is exact.
 */
class Origins {
  private readonly leaves = new Map<string, string>()

  set(keyPath: ReadonlyArray<string>, source: string, value: unknown): void {
    this.clear(keyPath)
    this.record(keyPath, source, value)
  }

  private record(keyPath: ReadonlyArray<string>, source: string, value: unknown): void {
    if (isTable(value) && Object.keys(value).length > 0) {
      for (const [k, v] of Object.entries(value)) this.record([...keyPath, k], source, v)
    } else {
      this.leaves.set(keyPath.join("."), source)
    }
  }

  private clear(keyPath: ReadonlyArray<string>): void {
    const key = keyPath.join(".")
    // A table that receives its first key is no longer an empty-table leaf.
    for (let i = 1; i < keyPath.length; i++) this.leaves.delete(keyPath.slice(0, i).join("."))
    for (const k of [...this.leaves.keys()]) if (k === key || k.startsWith(key + ".")) this.leaves.delete(k)
  }

  /** The sources of a key path, in the order they were layered; empty when nothing set it. */
  sources = (keyPath: string): string[] => {
    const exact = this.leaves.get(keyPath)
    if (exact !== undefined) return [exact]
    const segments = keyPath.split(".")
    for (let i = segments.length - 1; i > 0; i--) {
      const above = this.leaves.get(segments.slice(0, i).join("."))
      if (above !== undefined) return [above]
    }
    const below = new Set<string>()
    for (const [k, source] of this.leaves) if (keyPath === "" || k.startsWith(keyPath + ".")) below.add(source)
    return [...below]
  }

  of = (keyPath: string): string => {
    const found = this.sources(keyPath)
    return found.length > 0 ? found.join(", ") : "not set"
  }
}

/** Deep merge in place: tables merge key by key, everything else replaces. */
const mergeInto = (
  target: Table,
  patch: Table,
  source: string,
  origins: Origins,
  prefix: ReadonlyArray<string> = [],
): void => {
  for (const [k, v] of Object.entries(patch)) {
    const keyPath = [...prefix, k]
    const current = Object.hasOwn(target, k) ? target[k] : undefined
    if (isTable(v) && isTable(current) && Object.keys(v).length > 0) {
      mergeInto(current, v, source, origins, keyPath)
    } else if (isTable(v) && isTable(current)) {
      // An empty table adds nothing to one that already exists.
    } else {
      target[k] = isTable(v) ? structuredClone(v) : v
      origins.set(keyPath, source, v)
    }
  }
}

/** `{a: {b: value}}` from `["a", "b"]`. */
const nest = (keyPath: ReadonlyArray<string>, value: unknown): Table => {
  let out: unknown = value
  for (let i = keyPath.length - 1; i >= 0; i--) out = { [keyPath[i]!]: out }
  return out as Table
}

const getAt = (root: unknown, keyPath: ReadonlyArray<PropertyKey>): unknown => {
  let cur = root
  for (const k of keyPath) {
    if (!isTable(cur) && !Array.isArray(cur)) return undefined
    cur = (cur as Record<PropertyKey, unknown>)[k]
  }
  return cur
}

// ---------------------------------------------------------------------------
// The Schema, as a map of known keys

const objectsOf = (ast: SchemaAST.AST): SchemaAST.Objects | undefined => {
  if (ast._tag === "Objects") return ast
  if (ast._tag === "Union") {
    for (const member of ast.types) {
      const found = objectsOf(member)
      if (found !== undefined) return found
    }
  }
  return undefined
}

const knownKeys = (objects: SchemaAST.Objects): string[] => objects.propertySignatures.map((p) => String(p.name))

type Step =
  | { readonly ok: true; readonly ast: SchemaAST.AST }
  | { readonly ok: false; readonly at: number; readonly known: string[]; readonly leaf: boolean }

/** The schema of a key path, or where along the path it stops being a known key. */
const schemaAt = (root: SchemaAST.AST, keyPath: ReadonlyArray<PropertyKey>): Step => {
  let ast = root
  for (let i = 0; i < keyPath.length; i++) {
    const objects = objectsOf(ast)
    if (objects === undefined) return { ok: false, at: i, known: [], leaf: true }
    const name = keyPath[i]
    const property = objects.propertySignatures.find((p) => p.name === name)
    if (property !== undefined) ast = property.type
    else if (objects.indexSignatures[0] !== undefined && typeof name === "string") ast = objects.indexSignatures[0].type
    else return { ok: false, at: i, known: knownKeys(objects), leaf: false }
  }
  return { ok: true, ast }
}

const LEADING_A_VALUE = /^a value /

/** What a value must look like, in words a person filling in a TOML file understands. */
const describe = (ast: SchemaAST.AST): string => {
  let base: string
  switch (ast._tag) {
    case "String":
      base = "a string"
      break
    case "Number":
      base = "a number"
      break
    case "Boolean":
      base = "true or false"
      break
    case "Literal":
      base = JSON.stringify(ast.literal)
      break
    case "Union": {
      const members = ast.types.filter((t) => t._tag !== "Undefined")
      base = members.every((t) => t._tag === "Literal")
        ? `one of ${members.map((t) => JSON.stringify((t as SchemaAST.Literal).literal)).join(", ")}`
        : members.map(describe).join(" or ")
      break
    }
    case "Arrays": {
      const item = ast.rest[0]
      const each = item === undefined ? undefined : describe(item)
      const noun = each === undefined ? undefined : /^an? (\w+)$/.exec(each)?.[1]
      base =
        each === undefined
          ? "an array"
          : noun !== undefined
            ? `an array of ${noun}s`
            : `an array whose items are each ${each}`
      break
    }
    case "Objects":
      base = "a table"
      break
    default:
      base = ast._tag.toLowerCase()
  }
  const suffixes: string[] = []
  const visit = (check: SchemaAST.Check<unknown>): void => {
    if (check._tag === "FilterGroup") {
      for (const c of check.checks) visit(c)
      return
    }
    const expected = check.annotations?.expected
    const id = (check.annotations?.representation as { id?: unknown } | undefined)?.id
    if (id === "effect/schema/isInt") base = "an integer"
    else if (typeof expected === "string" && LEADING_A_VALUE.test(expected))
      suffixes.push(expected.replace(LEADING_A_VALUE, ""))
    else if (typeof expected === "string") base = expected
  }
  for (const check of ast.checks ?? []) visit(check)
  return [base, ...suffixes].join(" ")
}

// ---------------------------------------------------------------------------
// Suggestions

/** Optimal string alignment distance: a swap of two neighbours counts as one edit ("hots" → "host"). */
const editDistance = (a: string, b: string): number => {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  )
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1
      let best = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost)
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, d[i - 2]![j - 2]! + 1)
      d[i]![j] = best
    }
  }
  return d[a.length]![b.length]!
}

/** The closest known key, if it is close enough to be a likely typo. */
const nearest = (name: string, known: ReadonlyArray<string>): string | undefined => {
  const wanted = name.toLowerCase()
  let best: { key: string; distance: number } | undefined
  for (const key of known) {
    const distance = editDistance(wanted, key.toLowerCase())
    if (best === undefined || distance < best.distance) best = { key, distance }
  }
  if (best === undefined) return undefined
  const allowed = Math.max(1, Math.floor(Math.max(wanted.length, best.key.length) / 3))
  return best.distance <= allowed ? best.key : undefined
}

// ---------------------------------------------------------------------------
// Reading files

const readText = (file: string): Effect.Effect<string | undefined, ConfigError> =>
  Effect.tryPromise({
    try: () => readFile(file, "utf8"),
    catch: (cause) => cause as NodeJS.ErrnoException,
  }).pipe(
    Effect.catch((e) =>
      e.code === "ENOENT"
        ? Effect.succeed(undefined)
        : Effect.fail(
            new ConfigError({
              code: "CONFIG_UNREADABLE",
              message: `Cannot read ${file}: ${e.message}. Check that it is a readable file.`,
            }),
          ),
    ),
  )

const parseToml = (file: string, text: string): Effect.Effect<Table, ConfigError> =>
  Effect.try({
    try: () => parse(text, { unsafeKeyBehaviour: "throw" }) as Table,
    catch: (cause) => {
      if (cause instanceof TomlError) {
        const reason = cause.message.split("\n")[0]!.replace(/^Invalid TOML document: /, "")
        return new ConfigError({
          code: "CONFIG_SYNTAX",
          message:
            `TOML syntax error in ${file} at line ${cause.line}, column ${cause.column}: ${reason}.\n` +
            `${cause.codeblock.trimEnd()}\nFix the TOML at that spot (strings need double quotes, tables are [section]).`,
        })
      }
      return new ConfigError({ code: "CONFIG_SYNTAX", message: `Cannot parse ${file}: ${String(cause)}` })
    },
  })

const listEnvFiles = (dir: string): Effect.Effect<string[]> =>
  Effect.tryPromise(() => readdir(dir)).pipe(
    Effect.map((names) => names.filter((n) => /^env_.+\.toml$/.test(n)).sort()),
    Effect.orElseSucceed(() => [] as string[]),
  )

// ---------------------------------------------------------------------------
// Environment variables

/** A TOML value when the text is one (number, boolean, array, quoted string, inline table), else the text itself. */
const parseEnvValue = (raw: string): unknown => {
  try {
    const doc = parse(`v = ${raw}`, { unsafeKeyBehaviour: "throw" })
    const keys = Object.keys(doc)
    // A bare date would be read as a TOML datetime; nothing in the config wants one, so keep the text.
    if (keys.length !== 1 || keys[0] !== "v" || doc.v instanceof Date) return raw
    return doc.v
  } catch {
    return raw
  }
}

interface EnvOverride {
  readonly name: string
  readonly keyPath: string[]
  readonly value: unknown
}

const envOverrides = (env: Record<string, string | undefined>): Effect.Effect<EnvOverride[], ConfigError> => {
  const overrides: EnvOverride[] = []
  const problems: string[] = []
  for (const name of Object.keys(env).sort()) {
    const raw = env[name]
    if (raw === undefined || !ENV_PREFIX.test(name)) continue
    const keyPath = name.replace(ENV_PREFIX, "").toLowerCase().split("__")
    if (keyPath.some((segment) => segment === "")) {
      problems.push(
        `- ${name}: malformed name; use BEDS__<SECTION>__<KEY> with exactly two underscores between parts, e.g. BEDS__MARIADB__PORT.`,
      )
      continue
    }
    const step = schemaAt(Config.ast, keyPath)
    if (!step.ok) {
      const known = keyPath.slice(0, step.at).join(".")
      const bad = keyPath.slice(0, step.at + 1).join(".")
      if (step.leaf) {
        problems.push(
          `- ${name}: ${known} is a single value, it has no key ${keyPath[step.at]}. Set ${envName(keyPath.slice(0, step.at))} instead.`,
        )
      } else {
        const guess = nearest(keyPath[step.at]!, step.known)
        const hint =
          guess !== undefined
            ? ` Did you mean ${envName([...keyPath.slice(0, step.at), guess, ...keyPath.slice(step.at + 1)])}?`
            : ` Known keys ${step.at === 0 ? "at the top level" : `under [${known}]`}: ${step.known.join(", ")}.`
        problems.push(`- ${name}: there is no configuration key ${bad}.${hint} Rename or unset the variable.`)
      }
      continue
    }
    overrides.push({ name, keyPath, value: parseEnvValue(raw) })
  }
  return problems.length === 0
    ? Effect.succeed(overrides)
    : Effect.fail(
        new ConfigError({
          code: "CONFIG_INVALID",
          message: `Environment variables name unknown configuration keys:\n${problems.join("\n")}`,
        }),
      )
}

const envName = (keyPath: ReadonlyArray<string>): string => ["BEDS", ...keyPath.map((s) => s.toUpperCase())].join("__")

// ---------------------------------------------------------------------------
// Decoding, and turning Schema issues into instructions

interface Problem {
  readonly kind: "invalid" | "missing" | "unknown"
  readonly keyPath: ReadonlyArray<PropertyKey>
  /** Keys allowed beside an unknown one. */
  readonly known?: string[]
  /** A fallback description when the schema at the path cannot be found. */
  readonly expected?: string
}

const collect = (issue: SchemaIssue.Issue, keyPath: ReadonlyArray<PropertyKey>, out: Problem[]): void => {
  switch (issue._tag) {
    case "Pointer":
      collect(issue.issue, [...keyPath, ...issue.path], out)
      return
    case "Composite":
      for (const inner of issue.issues) collect(inner, keyPath, out)
      return
    case "AnyOf":
      // A table that half-matches an optional section reports its own keys; say those, not "expected a table or nothing".
      if (issue.issues.length > 0) for (const inner of issue.issues) collect(inner, keyPath, out)
      else out.push({ kind: "invalid", keyPath })
      return
    case "Encoding":
      collect(issue.issue, keyPath, out)
      return
    case "MissingKey":
      out.push({ kind: "missing", keyPath })
      return
    case "UnexpectedKey": {
      const objects = objectsOf(issue.ast)
      out.push({ kind: "unknown", keyPath, known: objects === undefined ? [] : knownKeys(objects) })
      return
    }
    case "Filter": {
      const expected = issue.filter.annotations?.expected
      out.push(typeof expected === "string" ? { kind: "invalid", keyPath, expected } : { kind: "invalid", keyPath })
      return
    }
    case "InvalidValue": {
      const expected = issue.annotations?.expected ?? issue.annotations?.message
      out.push(typeof expected === "string" ? { kind: "invalid", keyPath, expected } : { kind: "invalid", keyPath })
      return
    }
    default:
      out.push({ kind: "invalid", keyPath })
  }
}

const dotted = (keyPath: ReadonlyArray<PropertyKey>): string => keyPath.map(String).join(".")

const section = (keyPath: ReadonlyArray<PropertyKey>): string =>
  keyPath.length <= 1 ? "at the top level" : `under [${dotted(keyPath.slice(0, -1))}]`

interface Provenance {
  readonly merged: Table
  readonly sources: (keyPath: string) => string[]
  readonly isFile: (source: string) => boolean
  readonly files: ReadonlyArray<string>
}

const label = (p: Provenance, source: string): string => (p.isFile(source) ? source : `environment variable ${source}`)

const setIn = (p: Provenance, key: string): string => {
  const found = p.sources(key)
  return found.length === 0 ? "not set" : found.map((s) => label(p, s)).join(" and ")
}

/** What to do about a value set by `sources`: edit the files, change or unset the variables. */
const remedy = (p: Provenance, key: string, keyPath: ReadonlyArray<PropertyKey>, fileVerb: string, envVerb: string) => {
  const name = String(keyPath[keyPath.length - 1] ?? "")
  return p
    .sources(key)
    .map((s) =>
      p.isFile(s) ? `${fileVerb} \`${name}\` ${section(keyPath)} in ${s}.` : `${envVerb} environment variable ${s}.`,
    )
    .join(" ")
}

const explain = (problem: Problem, p: Provenance): string => {
  const key = dotted(problem.keyPath)
  const name = String(problem.keyPath[problem.keyPath.length - 1] ?? "")
  const step = schemaAt(Config.ast, problem.keyPath)
  const expected = step.ok ? describe(step.ast) : (problem.expected ?? "a valid value")
  switch (problem.kind) {
    case "missing":
      return (
        `- ${key} is missing (expected ${expected}). Add \`${name} = ...\` ${section(problem.keyPath)} ` +
        `in one of the files read: ${p.files.join(", ")}.`
      )
    case "unknown": {
      const guess = nearest(name, problem.known ?? [])
      const hint =
        guess !== undefined
          ? `did you mean \`${dotted([...problem.keyPath.slice(0, -1), guess])}\`?`
          : `known keys ${section(problem.keyPath)}: ${(problem.known ?? []).join(", ")}.`
      return (
        `- ${key} (set in ${setIn(p, key)}) is not a known key; ${hint} ` +
        remedy(p, key, problem.keyPath, "Rename or remove", "Rename or unset")
      )
    }
    case "invalid":
      return (
        `- ${key} (set in ${setIn(p, key)}): expected ${expected}, found ${show(getAt(p.merged, problem.keyPath))}. ` +
        remedy(p, key, problem.keyPath, "Change", "Change or unset")
      )
  }
}

/** Rules that span several keys, checked once every value has its type. */
const crossCheck = (config: Config, p: Provenance): string[] => {
  const out: string[] = []
  const role = config.engine.role
  if (!Object.hasOwn(config.roles, role)) {
    const defined = Object.keys(config.roles)
    out.push(
      `- engine.role = ${JSON.stringify(role)} (set in ${setIn(p, "engine.role")}) names no role. ` +
        `Define [roles.${role}] with depots and topologies, or set engine.role to one of: ` +
        `${defined.length > 0 ? defined.join(", ") : "(no roles are defined)"}.`,
    )
  }
  if (config.engine.rec === "mongodb" && config.mongodb === undefined)
    out.push(
      `- engine.rec = "mongodb" (set in ${setIn(p, "engine.rec")}) needs MongoDB settings. ` +
        `Set BEDS_MONGO_URL, or add a [mongodb] table with url and database to one of: ${p.files.join(", ")}.`,
    )
  return out
}

const invalid = (lines: ReadonlyArray<string>) =>
  new ConfigError({
    code: "CONFIG_INVALID",
    message: `Invalid configuration (${lines.length} problem${lines.length === 1 ? "" : "s"}):\n${lines.join("\n")}`,
  })

const fail = (code: ConfigError["code"], message: string) => Effect.fail(new ConfigError({ code, message }))

// ---------------------------------------------------------------------------

/**
 * Loads and validates the configuration. Fails with a ConfigError whose
 * message lists every problem found, each with the file or variable to fix.
 */
export const load = (options: LoadOptions = {}): Effect.Effect<LoadedConfig, ConfigError> =>
  Effect.gen(function* () {
    const env = options.env ?? process.env
    const fromEnv = nonEmpty(env.BEDS_CONFIG_DIR)
    const dir = path.resolve(options.dir ?? fromEnv ?? path.join(process.cwd(), "config"))
    const dirChosenBy =
      options.dir !== undefined
        ? "the dir option"
        : fromEnv !== undefined
          ? "BEDS_CONFIG_DIR"
          : "default: ./config under the working directory"

    const origins = new Origins()
    const merged: Table = {}
    const files: string[] = []

    const basePath = path.join(dir, BASE_FILE)
    const baseText = yield* readText(basePath)
    if (baseText === undefined)
      return yield* fail(
        "CONFIG_UNREADABLE",
        `Required base configuration ${basePath} not found (config folder ${dir}, from ${dirChosenBy}). ` +
          `Create ${BASE_FILE} there, or set BEDS_CONFIG_DIR to the folder that holds it.`,
      )
    mergeInto(merged, yield* parseToml(basePath, baseText), basePath, origins)
    files.push(basePath)

    const envChoice = nonEmpty(env.BEDS_ENV)
    if (envChoice !== undefined) {
      if (!/^[A-Za-z0-9_.-]+$/.test(envChoice) || envChoice.includes(".."))
        return yield* fail(
          "CONFIG_INVALID",
          `BEDS_ENV=${JSON.stringify(envChoice)} is not a usable environment name; use letters, digits, "_", "-" or "." (e.g. BEDS_ENV=dev for env_dev.toml).`,
        )
      const envPath = path.join(dir, `env_${envChoice}.toml`)
      const envText = yield* readText(envPath)
      if (envText === undefined) {
        const available = yield* listEnvFiles(dir)
        const choices =
          available.length === 0
            ? `There are no env_*.toml files in ${dir}; create ${path.basename(envPath)} or unset BEDS_ENV.`
            : `Files there: ${available.join(", ")}. Set BEDS_ENV to one of ${available
                .map((f) => f.slice("env_".length, -".toml".length))
                .join(", ")}, create ${path.basename(envPath)}, or unset BEDS_ENV.`
        return yield* fail(
          "CONFIG_UNREADABLE",
          `BEDS_ENV=${envChoice} needs ${envPath}, which does not exist. ${choices}`,
        )
      }
      mergeInto(merged, yield* parseToml(envPath, envText), envPath, origins)
      files.push(envPath)
    }

    for (const o of yield* envOverrides(env)) mergeInto(merged, nest(o.keyPath, o.value), o.name, origins)

    const mongoUrl = nonEmpty(env.BEDS_MONGO_URL)
    if (mongoUrl !== undefined) {
      mergeInto(merged, { mongodb: { url: mongoUrl } }, "BEDS_MONGO_URL", origins)
      if (getAt(merged, ["mongodb", "database"]) === undefined)
        mergeInto(merged, { mongodb: { database: "beds" } }, "BEDS_MONGO_URL", origins)
    }

    const fileSet = new Set(files)
    const provenance: Provenance = { merged, sources: origins.sources, isFile: (s) => fileSet.has(s), files }

    const decoded = Schema.decodeUnknownResult(Config)(merged, { errors: "all", onExcessProperty: "error" })
    if (Result.isFailure(decoded)) {
      const problems: Problem[] = []
      collect(decoded.failure.issue, [], problems)
      return yield* Effect.fail(invalid(problems.map((problem) => explain(problem, provenance))))
    }
    const config = decoded.success
    const conflicts = crossCheck(config, provenance)
    if (conflicts.length > 0) return yield* Effect.fail(invalid(conflicts))

    const origin = origins.of
    return { config, files, origin } satisfies LoadedConfig
  })
