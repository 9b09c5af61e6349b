import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterEach, beforeEach, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import * as Depot from "../../src/depot/depot.ts"
import type { AppendOutcome, AppendRequest, Event } from "../../src/depot/event.ts"
import * as FileDepot from "../../src/depot/file.ts"
import { DepotStore, type DepotStoreShape } from "../../src/depot/store.ts"
import { depotStoreConformance } from "./conformance.ts"

let dir = ""
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "beds-file-"))
})
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true })
})

depotStoreConformance("file", () => FileDepot.layer(dir), { reopen: true })

const declare = (name: string, partitions = 4) => Depot.make({ name, partitions, key: "test key", events: {} })

const req = (messageId: string, key: string, extra: Partial<AppendRequest> = {}): AppendRequest => ({
  messageId,
  type: "Noted",
  key,
  payload: { note: messageId },
  time: 1_767_225_600_000,
  ...extra,
})

const fresh = (o: AppendOutcome | undefined): Event => {
  if (o?._tag !== "Appended" || o.duplicate) throw new Error(`expected a new event, got ${JSON.stringify(o)}`)
  return o.event
}

/** A store over `folder`, released with the enclosing scope. */
const storeAt = (folder: string) =>
  Effect.map(Layer.build(FileDepot.layer(folder)), (ctx) => Context.get(ctx, DepotStore))

/** Runs `f` against a store that is closed again before this returns. */
const session = <A, E>(folder: string, f: (store: DepotStoreShape) => Effect.Effect<A, E>) =>
  Effect.scoped(Effect.flatMap(storeAt(folder), f))

describe("file depot store", () => {
  it.effect("keeps events, dedupe, versions and lineage across a restart, and continues the log", () =>
    Effect.gen(function* () {
      const written = yield* session(dir, (s) =>
        Effect.gen(function* () {
          yield* s.open([declare("acc"), declare("alerts", 2)])
          const a = (yield* s.append("acc", 1, [
            req("m0", "k", { metadata: { by: "me" } }),
            req("m1", "k", { payload: undefined }),
            req("m2", "j", { parent: "acc:1:0" }),
          ])).map(fresh)
          const b = (yield* s.append("alerts", 0, [req("c0", "x", { childId: "acc:1:0/alarm.0" })])).map(fresh)
          return [...a, ...b]
        }),
      )
      yield* session(dir, (s) =>
        Effect.gen(function* () {
          yield* s.open([declare("acc"), declare("alerts", 2)])
          expect(yield* s.head("acc", 1)).toBe(3)
          expect(yield* s.read("acc", 1, 0, 10)).toEqual(written.slice(0, 3))
          expect((yield* s.read("acc", 1, 1, 1))[0]?.payload).toBeUndefined()
          expect(yield* s.version("acc", 1, "k")).toBe(2)
          expect(yield* s.byMessageId("acc", "m2")).toEqual(written[2])
          expect(yield* s.byId("acc:1:0/acc:1:2")).toEqual(written[2])
          expect(yield* s.byId("acc:1:0/alarm.0")).toEqual(written[3])
          expect(yield* s.byId("acc:1:1")).toEqual(written[1])
          expect((yield* s.descendants("acc:1:0", 10)).map((e) => e.id)).toEqual(["acc:1:0/acc:1:2", "acc:1:0/alarm.0"])
          const again = yield* s.append("acc", 1, [req("m0", "k"), req("m3", "k", { expect: 2 })])
          expect(again[0]).toEqual({ _tag: "Appended", event: written[0], duplicate: true })
          expect(fresh(again[1])).toMatchObject({ offset: 3, version: 3, id: "acc:1:3" })
          expect(yield* s.byKey("acc", "k", 1, 10)).toEqual([written[0], written[1], fresh(again[1])])
          expect(yield* s.byKey("acc", "k", 2, 1)).toEqual([written[1]])
          expect(yield* s.byKey("acc", "j", 1, 10)).toEqual([written[2]])
          expect(yield* s.byKey("acc", "nobody", 1, 10)).toEqual([])
          const dupe = yield* Effect.flip(s.append("acc", 0, [req("z", "q", { childId: "acc:1:0/alarm.0" })]))
          expect(dupe.message).toContain("acc:1:0/alarm.0")
          expect(yield* s.head("acc", 0)).toBe(0)
        }),
      )
    }),
  )

  it.effect("refuses a folder it cannot write, naming it and what to do", () =>
    Effect.gen(function* () {
      // Tests run as root, so permissions cannot stop it; a file where a folder should be can.
      const blocker = path.join(dir, "not-a-folder")
      fs.writeFileSync(blocker, "x")
      const target = path.join(blocker, "data")
      const error = yield* Effect.flip(session(target, () => Effect.void))
      expect(error.code).toBe("STORE_UNAVAILABLE")
      expect(error.message).toContain(`"${target}" is not writable`)
      expect(error.message).toContain("engine.data_dir")
    }),
  )

  it.effect("refuses a log copied from another depot or partition", () =>
    Effect.gen(function* () {
      yield* session(dir, (s) => s.open([declare("one", 2), declare("two", 2)]))
      const two0 = FileDepot.logPath(dir, "two", 0)
      fs.copyFileSync(FileDepot.logPath(dir, "one", 0), two0)
      const foreign = yield* Effect.flip(session(dir, (s) => s.open([declare("two", 2)])))
      expect(foreign.code).toBe("CORRUPT")
      expect(foreign.message).toContain(two0)
      expect(foreign.message).toContain(`belongs to depot "one" partition 0`)

      fs.copyFileSync(FileDepot.logPath(dir, "one", 1), FileDepot.logPath(dir, "one", 0))
      const moved = yield* Effect.flip(session(dir, (s) => s.open([declare("one", 2)])))
      expect(moved.code).toBe("CORRUPT")
      expect(moved.message).toContain(`belongs to depot "one" partition 1, not to depot "one" partition 0`)
    }),
  )

  it.effect("refuses a depot whose partition count changed", () =>
    Effect.gen(function* () {
      yield* session(dir, (s) => s.open([declare("grow", 2), declare("shrink", 4)]))
      const grown = yield* Effect.flip(session(dir, (s) => s.open([declare("grow", 3)])))
      expect(grown.code).toBe("SCHEMA_DRIFT")
      expect(grown.message).toContain(FileDepot.logPath(dir, "grow", 0))
      expect(grown.message).toContain("written for 2 partitions")
      const shrunk = yield* Effect.flip(session(dir, (s) => s.open([declare("shrink", 2)])))
      expect(shrunk.code).toBe("SCHEMA_DRIFT")
      expect(shrunk.message).toContain("partition count changed")
      // Nothing was created for the partition the failed open would have added.
      expect(fs.existsSync(FileDepot.logPath(dir, "grow", 2))).toBe(false)
    }),
  )

  it.effect("refuses to stand an empty log in for a lost one", () =>
    Effect.gen(function* () {
      yield* session(dir, (s) =>
        Effect.gen(function* () {
          yield* s.open([declare("gone", 2)])
          yield* s.append("gone", 0, [req("a", "k")])
        }),
      )
      const lost = FileDepot.logPath(dir, "gone", 1)
      fs.rmSync(lost)
      const error = yield* Effect.flip(session(dir, (s) => s.open([declare("gone", 2)])))
      expect(error.code).toBe("CORRUPT")
      expect(error.message).toContain(`${lost} is missing`)
      expect(fs.existsSync(lost)).toBe(false)
    }),
  )

  it.effect("refuses a file that is not a depot log, or whose header is damaged", () =>
    Effect.gen(function* () {
      yield* session(dir, (s) => s.open([declare("h", 1)]))
      const file = FileDepot.logPath(dir, "h", 0)
      const header = fs.readFileSync(file)
      header[30] = (header[30] as number) ^ 1
      fs.writeFileSync(file, header)
      const damaged = yield* Effect.flip(session(dir, (s) => s.open([declare("h", 1)])))
      expect(damaged.code).toBe("CORRUPT")
      expect(damaged.message).toContain("damaged header")
      fs.writeFileSync(file, "hello")
      const foreign = yield* Effect.flip(session(dir, (s) => s.open([declare("h", 1)])))
      expect(foreign.code).toBe("CORRUPT")
      expect(foreign.message).toContain(`${file} is not a BEDS depot log`)
    }),
  )

  it.effect("one process per folder: a live owner fences, a dead one's lock is taken over", () =>
    Effect.gen(function* () {
      yield* session(dir, (s) => s.open([declare("l", 1)]))
      const lock = path.join(dir, "depots", "LOCK")
      expect(fs.existsSync(lock)).toBe(false)
      // The parent process (the test runner) is alive and is not this one.
      fs.writeFileSync(lock, `${process.ppid}\n`)
      const fenced = yield* Effect.flip(session(dir, () => Effect.void))
      expect(fenced.code).toBe("FENCED")
      expect(fenced.message).toContain(`process ${process.ppid}`)
      const dead = spawnSync(process.execPath, ["-e", "0"]).pid as number
      fs.writeFileSync(lock, `${dead}\n`)
      yield* session(dir, (s) =>
        Effect.gen(function* () {
          yield* s.open([declare("l", 1)])
          expect(fs.readFileSync(lock, "utf8")).toBe(`${process.pid}\n`)
          yield* s.append("l", 0, [req("a", "k")])
        }),
      )
      expect(fs.existsSync(lock)).toBe(false)
    }),
  )

  it.effect("a store that opens a depot fences the one of this process that had it before", () =>
    Effect.gen(function* () {
      const older = yield* storeAt(dir)
      yield* older.open([declare("f", 1)])
      yield* older.append("f", 0, [req("a", "k")])
      const newer = yield* storeAt(dir)
      yield* newer.open([declare("f", 1)])
      const error = yield* Effect.flip(older.append("f", 0, [req("b", "k")]))
      expect(error.code).toBe("FENCED")
      expect(fresh((yield* newer.append("f", 0, [req("b", "k")]))[0])).toMatchObject({ offset: 1, version: 2 })
    }),
  )

  it.effect("appending to a depot it was not asked to open fails clearly", () =>
    Effect.gen(function* () {
      const s = yield* storeAt(dir)
      const error = yield* Effect.flip(s.append("nope", 0, [req("a", "k")]))
      expect(error.message).toContain(`Depot "nope" is not open`)
      yield* s.open([declare("yes", 2)])
      const bad = yield* Effect.flip(s.append("yes", 2, [req("a", "k")]))
      expect(bad.message).toContain("no partition 2")
    }),
  )

  it.effect(
    "concurrent appends are serialized per partition, and a message_id is appended once across partitions",
    () =>
      Effect.gen(function* () {
        const s = yield* storeAt(dir)
        yield* s.open([declare("busy", 2)])
        // Every message_id is sent three times, to both partitions, all at once.
        const sends = Array.from({ length: 120 }, (_, i) => {
          const m = Math.floor(i / 3)
          return s.append("busy", i % 2, [req(`m${m}`, `k${m % 5}`), req(`solo${i}`, "s")])
        })
        const outcomes = (yield* Effect.all(sends, { concurrency: "unbounded" })).flat()
        const answers = new Map<string, Event>()
        for (const o of outcomes) {
          if (o._tag !== "Appended") throw new Error(`unexpected ${JSON.stringify(o)}`)
          const earlier = answers.get(o.event.messageId)
          if (earlier === undefined) answers.set(o.event.messageId, o.event)
          else expect(o.event).toEqual(earlier)
        }
        expect(outcomes.filter((o) => o._tag === "Appended" && !o.duplicate).length).toBe(40 + 120)
        const stored: Array<Event> = []
        for (const p of [0, 1]) {
          const events = yield* s.read("busy", p, 0, 1000)
          expect(events.map((e) => e.offset)).toEqual(events.map((_, i) => i))
          stored.push(...events)
        }
        expect(new Set(stored.map((e) => e.messageId)).size).toBe(160)
        expect(stored.length).toBe(160)
      }),
  )

  it.effect("large batches and records are written and read back whole", () =>
    Effect.gen(function* () {
      const s = yield* storeAt(dir)
      yield* s.open([declare("big", 1)])
      const blob = "x".repeat(9 << 20)
      const batch = Array.from({ length: 3000 }, (_, i) =>
        req(`m${i}`, `k${i % 10}`, { payload: { i, pad: "y".repeat(2000) } }),
      )
      yield* s.append("big", 0, [req("blob", "b", { payload: blob })])
      yield* s.append("big", 0, batch)
      const events = yield* s.read("big", 0, 0, 10_000)
      expect(events.length).toBe(3001)
      expect(events[0]?.payload).toBe(blob)
      expect(events.map((e) => e.offset)).toEqual(Array.from({ length: 3001 }, (_, i) => i))
      expect(events[3000]?.payload).toEqual({ i: 2999, pad: "y".repeat(2000) })
      // A reopen rebuilds the same indexes from the file.
      const again = yield* storeAt(dir)
      yield* again.open([declare("big", 1)])
      expect(yield* again.head("big", 0)).toBe(3001)
      expect(yield* again.version("big", 0, "k3")).toBe(300)
      expect((yield* again.byMessageId("big", "blob"))?.payload).toBe(blob)
    }),
  )
})
