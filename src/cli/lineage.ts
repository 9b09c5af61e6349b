/**
 * `beds lineage <id>`: an event with its ancestors up to the root and its
 * descendants, as an indented tree (or JSON with --json). `--from-root`
 * shows the whole tree of the event's root instead; the program's own
 * `--root <dir>` names the project folder, hence the longer name.
 *
 * Exit codes: 0 found, 1 no such event, 2 not a lineage ID (or bad usage),
 * 3 the depot store is unreachable.
 */
import { Command, InvalidArgumentError } from "commander"
import { Effect } from "effect"
import type { Event } from "../depot/event.ts"
import { type Ancestor, type LineageNode, type LineageTree, parseId, tree } from "../lineage/query.ts"
import { rootOf } from "./context.ts"
import { isoTime, loadProject, printJson, runVerb, withStores } from "./project.ts"

const describe = (id: string, e: Event | undefined): string =>
  e === undefined
    ? `${id}  (not stored)`
    : `${id}  ${e.type}  key=${JSON.stringify(e.key)}  ${e.depot}/${e.partition}@${e.offset}  ${isoTime(e.time)}`

/** The tree as text lines: the ancestors as a chain from the root, then the tree under the top. */
export const renderTree = (t: LineageTree): ReadonlyArray<string> => {
  const lines: Array<string> = []
  const mark = (id: string) => (id === t.id ? "  ◀" : "")
  const chain: ReadonlyArray<Ancestor> = [...t.ancestors].reverse()
  chain.forEach((a, depth) => {
    lines.push(`${depth === 0 ? "" : `${"   ".repeat(depth - 1)}└─ `}${describe(a.id, a.event)}`)
  })
  const visit = (node: LineageNode, prefix: string, connector: string, childPrefix: string) => {
    lines.push(`${prefix}${connector}${describe(node.id, node.event)}${mark(node.id)}`)
    node.children.forEach((child, i) => {
      const last = i === node.children.length - 1
      visit(child, childPrefix, last ? "└─ " : "├─ ", `${childPrefix}${last ? "   " : "│  "}`)
    })
  }
  const depth = chain.length
  if (depth === 0) visit(t.tree, "", "", "")
  else visit(t.tree, "   ".repeat(depth - 1), "└─ ", "   ".repeat(depth))
  return lines
}

const positiveInt = (text: string): number => {
  const n = Number(text)
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError("expected a whole number of 1 or more.")
  return n
}

export const lineageCommand = () =>
  new Command("lineage")
    .description("show an event, its ancestors up to the root and its descendants as a tree")
    .argument("<id>", 'lineage ID of the event, e.g. "accounts:3:1234/overdraft.0"')
    .option("--from-root", "show the whole tree of the event's root, with the event marked")
    .option("--limit <n>", "most descendants to show", positiveInt, 10_000)
    .option("--json", "print JSON for scripts")
    .action(async (id: string, opts: { fromRoot?: boolean; limit: number; json?: boolean }, c: Command) => {
      const root = rootOf(c)
      await runVerb(
        Effect.gen(function* () {
          // A malformed ID is refused before any store is opened.
          yield* parseId(id)
          const project = yield* loadProject(root)
          const t = yield* withStores(
            project,
            { templates: [], log: (l) => process.stderr.write(`beds: ${l}\n`) },
            tree(id, { root: opts.fromRoot === true, limit: opts.limit }),
          )
          if (opts.json === true) {
            printJson(t)
            return
          }
          const out = [
            ...renderTree(t),
            "",
            `${t.count} descendant(s) of ${t.top}${t.truncated ? ` — the first ${t.count} in ID order; raise --limit to see more` : ""}`,
          ]
          process.stdout.write(`${out.join("\n")}\n`)
        }),
      )
    })
