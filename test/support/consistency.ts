/**
 * Consistency under faults, the parts every engine shares: generated
 * multi-client histories of the accounts domain, a runner that sends them
 * through a `Transport` while a fault schedule runs beside the clients, and
 * the verdict: the history checker (src/testing/checker.ts) plus stricter
 * checks of the same guarantees that need what only a test knows (which
 * refusal code bad input must get, what an expected version promised).
 *
 * How a transport sends, what it reads after a `full` reply and which
 * faults exist belong to the engine under test (test/consistency/*).
 *
 * Clients are sequential, as a careful real client is: a command whose
 * outcome is unknown (no reply, no confirm, a transient error) is retried
 * with the same message_id before the client sends anything else. That is
 * what makes per-key order a promise the engine can keep.
 */
import { Effect } from "effect"
import fc from "fast-check"
import { step as balanceStep } from "../../projections/balances.ts"
import type { Event } from "../../src/depot/event.ts"
import type { DepotStoreShape } from "../../src/depot/store.ts"
import { StoreError } from "../../src/errors.ts"
import * as MemoryModels from "../../src/readmodel/memory.ts"
import type { Declarations } from "../../src/runtime/engine.ts"
import type { Row } from "../../src/template/template.ts"
import { check, type FaultRecord, type HistoryEntry, report, type Violation } from "../../src/testing/checker.ts"
import { snapshot, withEngine } from "../../src/testing/harness.ts"
import type { Reply, ReplyOk } from "../../src/transport/protocol.ts"

export type Ack = "none" | "append" | "full"
export type Invalid = "type" | "schema" | "key"
export type AccountType = "Opened" | "Deposited" | "Withdrawn" | "Closed"

/** One thing a client does. */
export type Step =
  | {
      readonly _tag: "send"
      readonly type: AccountType
      readonly key: string
      readonly amount: number
      readonly ack: Ack
      readonly expect: "no" | "right" | "wrong"
    }
  /** Bad input: must be refused with its code, never appended. */
  | {
      readonly _tag: "bad"
      readonly invalid: Invalid
      readonly key: string
      readonly variant: number
      readonly ack: Ack
    }
  /** Publishes one of this client's earlier commands again (same message_id, same content). */
  | { readonly _tag: "again"; readonly back: number; readonly ack: Ack }

/** A fault, fired once `at` percent of the history's commands have completed. */
export interface Fault<K extends string> {
  readonly at: number
  readonly kind: K
  /** Free parameter of the fault (a delay, a variant). */
  readonly arg: number
}

export interface Plan<K extends string> {
  readonly clients: ReadonlyArray<ReadonlyArray<Step>>
  readonly faults: ReadonlyArray<Fault<K>>
}

/** A small key space over 4 partitions: clients collide on keys all the time. */
export const KEYS = ["a", "b", "c", "d", "e"] as const

const ack = fc.constantFrom<Ack>("none", "append", "full")

export const stepArbitrary: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 14,
    arbitrary: fc.record({
      _tag: fc.constant("send" as const),
      type: fc.constantFrom<AccountType>("Opened", "Deposited", "Deposited", "Withdrawn", "Withdrawn", "Closed"),
      key: fc.constantFrom(...KEYS),
      amount: fc.integer({ min: 1, max: 500 }),
      ack,
      expect: fc.constantFrom<"no" | "right" | "wrong">("no", "no", "no", "right", "right", "wrong"),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      _tag: fc.constant("bad" as const),
      invalid: fc.constantFrom<Invalid>("type", "schema", "key"),
      key: fc.constantFrom(...KEYS),
      variant: fc.nat({ max: 2 }),
      ack,
    }),
  },
  { weight: 4, arbitrary: fc.record({ _tag: fc.constant("again" as const), back: fc.nat({ max: 6 }), ack }) },
)

export const planArbitrary = <K extends string>(options: {
  readonly clients: { readonly min: number; readonly max: number }
  readonly steps: { readonly min: number; readonly max: number }
  readonly faults: ReadonlyArray<K>
  readonly minFaults: number
  readonly maxFaults: number
}): fc.Arbitrary<Plan<K>> =>
  fc.record({
    clients: fc.array(fc.array(stepArbitrary, { minLength: options.steps.min, maxLength: options.steps.max }), {
      minLength: options.clients.min,
      maxLength: options.clients.max,
    }),
    faults: fc.array(
      fc.record({
        at: fc.integer({ min: 1, max: 90 }),
        kind: fc.constantFrom(...options.faults),
        arg: fc.nat({ max: 999 }),
      }),
      { minLength: options.minFaults, maxLength: options.maxFaults },
    ),
  })

/** A command as it goes on the wire. */
export interface WireCommand {
  readonly type: string
  readonly key: string
  readonly payload: unknown
  readonly messageId: string
  readonly ack: Ack
  readonly expect?: number | undefined
}

/** What a client learned from one attempt. */
export interface Outcome {
  readonly reply?: Reply | undefined
  /** The transport took the command for sure (broker confirm, or a reply came). */
  readonly confirmed: boolean
  /** Why nothing came back, for the report. */
  readonly failure?: string | undefined
}

export type ReadAfter = Readonly<Record<string, Readonly<Record<string, Row | undefined>>>>

export interface Transport {
  readonly send: (client: number, command: WireCommand) => Promise<Outcome>
  /** The rows a `full` reply promises to reflect, read right after it. */
  readonly readAfter?: ((command: WireCommand, reply: ReplyOk) => Promise<ReadAfter>) | undefined
}

export interface Harness<K extends string> {
  readonly transport: Transport
  /** Carries out one fault; returns when it is over (the engine may still be recovering). */
  readonly inject: (fault: Fault<K>) => Promise<void>
  /** Attempts per command after the first, and the delay before the first retry (doubling, capped at 1 s). */
  readonly retries: number
  readonly retryDelayMs: number
  /**
   * Think time between a client's commands, 0-3 times this (fixed by the
   * plan). A transport that queues while the engine is down (AMQP) would
   * otherwise let clients finish during the first restart, and the faults
   * planned after it would find no traffic left.
   */
  readonly pauseMs?: number | undefined
}

/** A history as the clients saw it. */
export interface Run {
  readonly history: ReadonlyArray<HistoryEntry>
  readonly faults: ReadonlyArray<FaultRecord>
  /** How long each fault took to inject (and, for restarts, to recover), in ms, in `faults` order. */
  readonly faultMs: ReadonlyArray<number>
  /** Faults the plan had; those due after the clients finished were not injected. */
  readonly planned: number
}

/** Codes after which a client retries the same command: the engine said nothing definite. */
export const TRANSIENT = new Set(["UNAVAILABLE", "TIMEOUT", "INTERNAL", "FENCED"])

/** The code a bad input must be refused with. */
export const expectedCode: Record<Invalid, string> = {
  type: "UNKNOWN_TYPE",
  schema: "SCHEMA_MISMATCH",
  key: "MISSING_KEY",
}

const badCommand = (s: Extract<Step, { _tag: "bad" }>): { type: string; key: string; payload: unknown } => {
  switch (s.invalid) {
    case "type":
      return { type: ["Frozen", "deposited", "Transferred"][s.variant] ?? "Frozen", key: s.key, payload: { amount: 5 } }
    case "schema":
      return [
        { type: "Deposited", key: s.key, payload: { amount: 0 } },
        { type: "Withdrawn", key: s.key, payload: { amount: "ten" } },
        { type: "Opened", key: s.key, payload: { owner: "" } },
      ][s.variant] as { type: string; key: string; payload: unknown }
    case "key":
      return { type: "Deposited", key: "", payload: { amount: 5 } }
  }
}

const payloadOf = (type: AccountType, key: string, amount: number): unknown =>
  type === "Opened" ? { owner: `owner-${key}-${amount % 7}` } : type === "Closed" ? {} : { amount }

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/** Whether an attempt settled the command (the client may go on). */
const settles = (o: Outcome, level: Ack): boolean => {
  if (o.reply !== undefined) return o.reply.ok || !TRANSIENT.has(o.reply.error.code)
  return level === "none" && o.confirmed
}

/**
 * Runs a plan: every client concurrently, each sequentially, and the faults
 * beside them. `tag` prefixes every message_id, so histories never share one.
 */
export const runPlan = async <K extends string>(plan: Plan<K>, tag: string, harness: Harness<K>): Promise<Run> => {
  const history: Array<HistoryEntry> = []
  const faults: Array<FaultRecord> = []
  const faultMs: Array<number> = []
  const total = plan.clients.reduce((n, c) => n + c.length, 0)
  let waiting: Array<() => void> = []
  let finished = false
  const progressed = () => {
    const w = waiting
    waiting = []
    for (const f of w) f()
  }
  const record = (e: HistoryEntry) => {
    history.push(e)
    progressed()
  }

  const client = async (c: number, steps: ReadonlyArray<Step>) => {
    // `again` picks only commands whose fate is sealed: appended, refused for good, or bound to be
    // appended (no expected version). One refused with VERSION_CONFLICT may still be appended by a
    // republish, later than commands sent after it, which per-key order would rightly call a reorder.
    const mine: Array<{ wire: Omit<WireCommand, "ack">; invalid: Invalid | undefined; sealed: boolean }> = []
    const known = new Map<string, number>()
    let seq = 0
    let n = 0
    for (const [i, s] of steps.entries()) {
      if (harness.pauseMs !== undefined && i > 0) await sleep(harness.pauseMs * ((c * 7 + i * 13) % 4))
      let command: (typeof mine)[number] | undefined
      if (s._tag === "again") {
        const sealed = mine.filter((m) => m.sealed)
        command = sealed[sealed.length - 1 - (s.back % Math.max(1, sealed.length))]
        if (command === undefined) continue
      } else {
        const messageId = `${tag}-c${c}-${n++}`
        if (s._tag === "bad") {
          command = { wire: { ...badCommand(s), messageId }, invalid: s.invalid, sealed: false }
        } else {
          const v = known.get(s.key) ?? 0
          const expect = s.expect === "right" ? v : s.expect === "wrong" ? v + 1 + (s.amount % 3) : undefined
          command = {
            wire: { type: s.type, key: s.key, payload: payloadOf(s.type, s.key, s.amount), messageId, expect },
            invalid: undefined,
            sealed: false,
          }
        }
        mine.push(command)
      }
      for (let attempt = 0; ; attempt++) {
        const wire: WireCommand = { ...command.wire, ack: s.ack }
        const outcome = await harness.transport.send(c, wire)
        const reply = outcome.reply
        const readAfter =
          s.ack === "full" && reply?.ok === true && harness.transport.readAfter !== undefined
            ? await harness.transport.readAfter(wire, reply)
            : undefined
        if (reply?.ok === true && reply.version > (known.get(wire.key) ?? 0)) known.set(wire.key, reply.version)
        if (reply?.ok === false && reply.error.code === "VERSION_CONFLICT") {
          const actual = (reply.error.details as { actual?: unknown } | undefined)?.actual
          if (typeof actual === "number") known.set(wire.key, actual)
        }
        record({
          client: `c${c}`,
          seq: seq++,
          depot: "accounts",
          type: wire.type,
          key: wire.key,
          payload: wire.payload,
          messageId: wire.messageId,
          ack: wire.ack,
          reply,
          confirmed: outcome.confirmed,
          readAfter,
          invalid: command.invalid !== undefined ? true : undefined,
          expect: wire.expect,
          ...(outcome.failure === undefined ? {} : { failure: outcome.failure }),
        } as HistoryEntry)
        if (settles(outcome, s.ack)) {
          command.sealed ||= command.invalid !== undefined || wire.expect === undefined || reply?.ok === true
          break
        }
        if (attempt >= harness.retries) break
        await sleep(Math.min(1000, harness.retryDelayMs * 2 ** attempt))
      }
    }
  }

  const scheduled = plan.faults
    .map((f) => ({ ...f, after: Math.max(1, Math.floor((total * f.at) / 100)) }))
    .sort((a, b) => a.after - b.after)
  const scheduler = (async () => {
    for (const f of scheduled) {
      while (!finished && history.length < f.after) await new Promise<void>((r) => waiting.push(r))
      if (finished) return
      faults.push({ at: history.length, kind: f.kind })
      const t0 = performance.now()
      await harness.inject(f)
      faultMs.push(performance.now() - t0)
    }
  })()
  try {
    await Promise.all(plan.clients.map((steps, c) => client(c, steps)))
  } finally {
    finished = true
    progressed()
    await scheduler
  }
  return { history, faults, faultMs, planned: plan.faults.length }
}

// ---------------------------------------------------------------------------
// The verdict

/** What a test knows beyond the history: which refusals were allowed for valid commands, dead letters. */
export interface StrictOptions {
  /** Error codes a valid command may get besides VERSION_CONFLICT (e.g. under injected store failures). */
  readonly allowedErrors?: ReadonlySet<string> | undefined
  /** AMQP: every refused command that reached the broker must be dead-lettered. */
  readonly deadLettered?: ReadonlySet<string> | undefined
}

/**
 * Checks the checker cannot make without knowing what the test meant:
 *  - at most one reply per message_id says `duplicate: false` (guarantee 2);
 *  - every ok reply names the stored event's position and version;
 *  - a key's versions are 1..n in offset order, and a command appended
 *    with an expected version e was appended as version e + 1;
 *  - bad input gets its stable refusal code, valid input none but
 *    VERSION_CONFLICT (and what `allowedErrors` admits) (guarantee 7);
 *  - AMQP: refused commands are dead-lettered (guarantee 7);
 *  - a `full` reply's balance is the balance of the depot up to the event
 *    (the read model the reply came from reflected it: guarantee 4).
 */
export const strictChecks = (
  history: ReadonlyArray<HistoryEntry>,
  events: ReadonlyArray<Event>,
  options: StrictOptions = {},
): Array<Violation> => {
  const out: Array<Violation> = []
  const byMessage = new Map<string, Event>()
  const byId = new Map<string, Event>()
  for (const e of events) {
    byMessage.set(`${e.depot}|${e.messageId}`, e)
    byId.set(e.id, e)
  }
  const originals = new Map<string, number>()
  for (const h of history) {
    const r = h.reply
    if (h.invalid === true) {
      const want =
        h.key === ""
          ? expectedCode.key
          : ["Opened", "Deposited", "Withdrawn", "Closed"].includes(h.type)
            ? expectedCode.schema
            : expectedCode.type
      if (r !== undefined && (r.ok || r.error.code !== want))
        out.push({
          check: "refusal-code",
          message: `${h.messageId} (bad input ${h.type} ${JSON.stringify(h.key)} ${JSON.stringify(h.payload)}) got ${r.ok ? "ok" : r.error.code}, not ${want}`,
        })
      if (options.deadLettered !== undefined && h.confirmed && !options.deadLettered.has(h.messageId))
        out.push({ check: "dead-lettered", message: `${h.messageId} was refused but is not in the dead-letter queue` })
      continue
    }
    if (r === undefined) continue
    if (!r.ok) {
      const code = r.error.code
      const conflict = code === "VERSION_CONFLICT" && h.expect !== undefined
      if (!conflict && options.allowedErrors?.has(code) !== true)
        out.push({
          check: "refusal-code",
          message: `${h.messageId} (valid ${h.type} ${h.key}) was refused with ${code}: ${r.error.message}`,
        })
      const actual = (r.error.details as { actual?: unknown } | undefined)?.actual
      if (conflict && actual === h.expect)
        out.push({ check: "expect", message: `${h.messageId}: VERSION_CONFLICT although the key was at ${actual}` })
      continue
    }
    if (!r.duplicate) originals.set(h.messageId, (originals.get(h.messageId) ?? 0) + 1)
    const e = byId.get(r.id)
    if (e !== undefined && (e.partition !== r.partition || e.offset !== r.offset || e.version !== r.version))
      out.push({
        check: "reply-position",
        message: `${h.messageId}: reply says ${r.partition}/${r.offset} v${r.version}, ${r.id} is stored at ${e.partition}/${e.offset} v${e.version}`,
      })
    const balance = (r.values as { balances?: { balance?: unknown } } | undefined)?.balances?.balance
    if (h.ack === "full" && e !== undefined && typeof balance === "number") {
      let folded: ReturnType<typeof balanceStep> | undefined
      const upTo = events
        .filter((x) => x.depot === e.depot && x.key === e.key && x.offset <= e.offset)
        .sort((a, b) => a.offset - b.offset)
      for (const x of upTo) folded = balanceStep(folded, x.key, x.type, x.payload)
      if (folded?.balance !== balance)
        out.push({
          check: "full-reply-value",
          message: `${h.messageId}: the full reply said balance ${balance}, the depot up to ${e.id} gives ${folded?.balance}`,
        })
    }
  }
  for (const [id, n] of originals)
    if (n > 1) out.push({ check: "single-original", message: `${id} got ${n} replies that were not marked duplicate` })

  // Versions per key, and expected versions honoured.
  const keys = new Map<string, Array<Event>>()
  for (const e of events) {
    const k = `${e.depot}|${e.key}`
    const list = keys.get(k) ?? []
    list.push(e)
    keys.set(k, list)
  }
  for (const [k, list] of keys) {
    list.sort((a, b) => a.offset - b.offset)
    list.forEach((e, i) => {
      if (e.version !== i + 1)
        out.push({ check: "versions", message: `${k}: ${e.id} has version ${e.version}, expected ${i + 1}` })
    })
  }
  for (const h of history) {
    if (h.expect === undefined) continue
    const e = byMessage.get(`${h.depot}|${h.messageId}`)
    if (e !== undefined && e.version !== h.expect + 1)
      out.push({
        check: "expect",
        message: `${h.messageId} was sent expecting version ${h.expect} but was appended as version ${e.version}`,
      })
  }
  return dedupe(out)
}

const dedupe = (vs: ReadonlyArray<Violation>) => {
  const seen = new Set<string>()
  return vs.filter((v) => {
    const k = `${v.check}|${v.message}`
    if (seen.has(k)) return false
    seen.add(k)
    return true
  })
}

const short = (r: Reply | undefined): string => {
  if (r === undefined) return "-"
  if (!r.ok) return `ERR ${r.error.code}`
  return `ok ${r.id} v${r.version}${r.duplicate ? " dup" : ""}`
}

/** The history as lines a person can read, faults in place. */
export const describeRun = (run: Run, limit = 400): string => {
  const lines: Array<string> = []
  let f = 0
  run.history.forEach((h, i) => {
    while (f < run.faults.length && (run.faults[f] as FaultRecord).at <= i)
      lines.push(`  ---- fault ${(run.faults[f++] as FaultRecord).kind}`)
    const failure = (h as HistoryEntry & { failure?: string }).failure
    lines.push(
      `  ${String(i).padStart(4)} ${h.client}#${h.seq} ${h.messageId} ${h.type} ${JSON.stringify(h.key)} ${JSON.stringify(h.payload)} ack=${h.ack}` +
        `${h.expect === undefined ? "" : ` expect=${h.expect}`}${h.invalid ? " INVALID" : ""} -> ${short(h.reply)}` +
        `${h.confirmed ? "" : " (unconfirmed)"}${failure === undefined ? "" : ` [${failure}]`}`,
    )
  })
  while (f < run.faults.length) lines.push(`  ---- fault ${(run.faults[f++] as FaultRecord).kind}`)
  return lines.length > limit
    ? [...lines.slice(0, limit), `  … ${lines.length - limit} more lines`].join("\n")
    : lines.join("\n")
}

/** Runs the checker and the strict checks; throws a readable report (with the history) on any violation. */
export const verdict = async (
  what: string,
  declarations: Declarations,
  run: Run,
  final: Parameters<typeof check>[2],
  options: StrictOptions = {},
): Promise<void> => {
  const violations = [
    ...(await Effect.runPromise(check(declarations, run.history, final))),
    ...strictChecks(run.history, final.events, { ...options, deadLettered: final.deadLettered ?? undefined }),
  ]
  if (violations.length === 0) return
  throw new Error(
    `${what}: ${report(violations, run.faults)}\n` +
      `history (${run.history.length} attempts, ${final.events.length} events stored):\n${describeRun(run)}\n` +
      "To run this plan again: BEDS_SEED=<seed> BEDS_PATH=<path> with the seed and path fast-check prints.",
  )
}

// ---------------------------------------------------------------------------
// Replay from scratch

/**
 * A depot store a replay may read but never change: appends of events that
 * are already stored (derived events, found by their lineage ID as
 * message_id) answer as duplicates, anything else fails and is remembered,
 * so a replay that would add to the depot is caught instead of masked.
 */
export const readOnly = (store: DepotStoreShape, refused: Array<string>): DepotStoreShape => ({
  ...store,
  append: (depot, partition, requests) =>
    Effect.forEach(requests, (r) =>
      Effect.flatMap(store.byMessageId(depot, r.messageId), (e) => {
        if (e !== undefined) return Effect.succeed({ _tag: "Appended", event: e, duplicate: true } as const)
        refused.push(`${depot}/${partition} ${r.messageId} ${r.type} ${r.key}`)
        return Effect.fail(
          new StoreError({
            code: "STORE_FAILED",
            message: `a replay tried to append ${r.messageId}, which the depot does not hold`,
            retryable: false,
          }),
        )
      }),
    ),
})

/** Read models rebuilt from scratch: a fresh engine on empty in-memory read models over the same depot. */
export const replay = (depot: DepotStoreShape, declarations: Declarations, timeout = "60 seconds" as const) =>
  Effect.gen(function* () {
    const refused: Array<string> = []
    const stores = { depot: readOnly(depot, refused), models: yield* MemoryModels.make }
    const settled = yield* withEngine(stores, declarations, (engine) =>
      Effect.andThen(engine.settle(), snapshot(stores, declarations)),
    ).pipe(Effect.timeout(timeout), Effect.result)
    if (settled._tag === "Failure" || refused.length > 0)
      return yield* Effect.die(
        new Error(
          `replay from scratch did not finish${refused.length > 0 ? `: it tried to append ${refused.slice(0, 5).join("; ")}` : `: ${String(settled._tag === "Failure" ? settled.failure : "")}`}`,
        ),
      )
    return settled.success.readModels
  })

// ---------------------------------------------------------------------------
// Counting, for the line each profile prints

export interface Tally {
  histories: number
  commands: number
  attempts: number
  events: number
  /** `full` replies followed by a read of the read models. */
  reads: number
  planned: number
  /** Attempts answered as duplicates, refusals of bad input, version conflicts. */
  duplicates: number
  refusals: number
  conflicts: number
  readonly faults: Record<string, number>
  readonly faultMs: Record<string, number>
  readonly started: number
}

export const tally = (): Tally => ({
  histories: 0,
  commands: 0,
  attempts: 0,
  events: 0,
  reads: 0,
  planned: 0,
  duplicates: 0,
  refusals: 0,
  conflicts: 0,
  faults: {},
  faultMs: {},
  started: performance.now(),
})

export const count = (t: Tally, run: Run, events: number) => {
  t.histories++
  t.attempts += run.history.length
  t.commands += new Set(run.history.map((h) => h.messageId)).size
  t.events += events
  t.planned += run.planned
  for (const h of run.history) {
    if (h.readAfter !== undefined) t.reads++
    if (h.reply?.ok === true && h.reply.duplicate) t.duplicates++
    if (h.invalid === true) t.refusals++
    if (h.reply?.ok === false && h.reply.error.code === "VERSION_CONFLICT") t.conflicts++
  }
  run.faults.forEach((f, i) => {
    t.faults[f.kind] = (t.faults[f.kind] ?? 0) + 1
    t.faultMs[f.kind] = (t.faultMs[f.kind] ?? 0) + (run.faultMs[i] ?? 0)
  })
}

export const summary = (name: string, t: Tally): string => {
  const faults = Object.values(t.faults).reduce((a, b) => a + b, 0)
  const kinds = Object.entries(t.faults)
    .map(([k, n]) => `${k} ${n}${n > 0 ? ` ~${((t.faultMs[k] ?? 0) / n / 1000).toFixed(1)} s` : ""}`)
    .join(", ")
  return `consistency ${name}: ${t.histories} histories, ${faults} faults of ${t.planned} planned (${kinds || "none"}), ${t.commands} commands in ${t.attempts} attempts (${t.duplicates} duplicates, ${t.conflicts} version conflicts, ${t.refusals} bad inputs, ${t.reads} reads after full), ${t.events} events stored, wall ${((performance.now() - t.started) / 1000).toFixed(1)} s`
}

/** Profile: the CI defaults, raised by BEDS_SOAK=1 (`npm run test:soak`); BEDS_CONSISTENCY_SCALE multiplies either. */
export const soak = process.env.BEDS_SOAK === "1" || process.env.BEDS_SOAK === "true"
export const runs = (ci: number, long: number): number => {
  const scale = Number(process.env.BEDS_CONSISTENCY_SCALE ?? "1")
  return Math.max(1, Math.round((soak ? long : ci) * (Number.isFinite(scale) && scale > 0 ? scale : 1)))
}

/**
 * fast-check parameters from the environment, to run a failing history
 * again: a failure prints `{ seed, path }` with the shrunk plan, and
 *
 *   BEDS_SEED=<seed> BEDS_PATH=<path> npx vitest run --project fault test/consistency/<file> -t "<test>"
 *
 * replays that plan (commands and fault schedule). The interleaving of
 * clients and faults is timing, not seed: a race may need a few runs.
 */
export const replayParameters = (): { seed?: number; path?: string } => {
  const seed = process.env.BEDS_SEED
  const p = process.env.BEDS_PATH
  return {
    ...(seed === undefined ? {} : { seed: Number(seed) }),
    ...(p === undefined ? {} : { path: p }),
  }
}
