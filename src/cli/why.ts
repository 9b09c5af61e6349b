/**
 * `beds why <template> <key>`: the events that produced a read-model row's
 * current state, in order, each with what caused it (see
 * src/lineage/provenance.ts for the rule and its limit).
 *
 * Exit codes: 0 answered, 1 no such row or the row's event is not stored,
 * 2 unknown template or a key that does not fit it, 3 a store is unreachable.
 */
import { Command, InvalidArgumentError } from "commander"
import { Effect } from "effect"
import { LineageError } from "../lineage/error.ts"
import { type Provenance, why } from "../lineage/provenance.ts"
import type { RowKey } from "../template/template.ts"
import { rootOf } from "./context.ts"
import { isoTime, loadProject, printJson, runVerb, withStores } from "./project.ts"

/** A key from the command line: a JSON array for a multi-field key, else the text as it is. */
const parseKey = (text: string): Effect.Effect<RowKey | string, LineageError> => {
  if (!text.startsWith("[")) return Effect.succeed(text)
  try {
    const parsed: unknown = JSON.parse(text)
    if (Array.isArray(parsed) && parsed.every((p) => typeof p === "string" || typeof p === "number"))
      return Effect.succeed(parsed as RowKey)
  } catch {
    // reported below
  }
  return Effect.fail(
    new LineageError({
      code: "BAD_KEY",
      message: `Key ${text} looks like a JSON array but is not one of strings and numbers, e.g. '["acc-1", 3]'.`,
    }),
  )
}

/** The answer as text lines. */
export const renderProvenance = (p: Provenance): ReadonlyArray<string> => {
  const lines = [
    `${p.template} ${JSON.stringify(p.key.length === 1 ? p.key[0] : p.key)} = ${JSON.stringify(p.row)}`,
    `written by topology ${p.topology}; last event ${p.last.id}`,
    `rule ${p.rule}: ${p.note}`,
    "",
    `${p.events.length} event(s), in the order they were applied${p.omitted > 0 ? ` (${p.omitted} earlier one(s) not shown; raise --limit)` : ""}:`,
  ]
  for (const { event: e, causes } of p.events) {
    lines.push(
      `  ${e.id}  ${e.type}  key=${JSON.stringify(e.key)} v${e.version}  ${e.depot}/${e.partition}@${e.offset}  ${isoTime(e.time)}  ${JSON.stringify(e.payload)}`,
    )
    for (const c of causes)
      lines.push(
        `      ← caused by ${c.id}${c.event === undefined ? "  (not stored)" : `  ${c.event.type}  key=${JSON.stringify(c.event.key)}  ${c.event.depot}/${c.event.partition}@${c.event.offset}`}`,
      )
  }
  return lines
}

const positiveInt = (text: string): number => {
  const n = Number(text)
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError("expected a whole number of 1 or more.")
  return n
}

export const whyCommand = () =>
  new Command("why")
    .description("list the events that produced a read-model row's current state, with their causes")
    .argument("<template>", "template name, e.g. acc_balance")
    .argument("<key>", "the row's key; a JSON array for a multi-field key, e.g. '[\"acc-1\", 3]'")
    .option("--limit <n>", "most events to list (the latest)", positiveInt, 1000)
    .option("--json", "print JSON for scripts")
    .action(async (template: string, key: string, opts: { limit: number; json?: boolean }, c: Command) => {
      const root = rootOf(c)
      await runVerb(
        Effect.gen(function* () {
          const rowKey = yield* parseKey(key)
          const project = yield* loadProject(root)
          const answer = yield* withStores(
            project,
            { templates: [template], log: (l) => process.stderr.write(`beds: ${l}\n`) },
            why(project.declarations, template, rowKey, { limit: opts.limit }),
          )
          if (opts.json === true) printJson(answer)
          else process.stdout.write(`${renderProvenance(answer).join("\n")}\n`)
        }),
      )
    })
