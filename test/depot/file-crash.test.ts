/**
 * Crash safety of the file depot store: what an interrupted append leaves
 * behind is cut off at the next open; damage to acknowledged events is
 * refused, never truncated.
 */
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterEach, beforeEach, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Logger } from "effect"
import * as Depot from "../../src/depot/depot.ts"
import type { AppendRequest, Event } from "../../src/depot/event.ts"
import * as FileDepot from "../../src/depot/file.ts"
import { DepotStore } from "../../src/depot/store.ts"

let dir = ""
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "beds-crash-"))
})
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true })
})

const depot = Depot.make({ name: "t", partitions: 1, key: "test key", events: {} })

const req = (messageId: string, key = "k"): AppendRequest => ({
  messageId,
  type: "Noted",
  key,
  payload: { note: messageId, pad: "x".repeat(100) },
  time: 1_767_225_600_000,
})

/** A store over `dir` with `depot` opened, and the warnings opening it logged. */
const reopen = (folder = dir) =>
  Effect.gen(function* () {
    const warnings: Array<string> = []
    const capture = Logger.make((o) => {
      if (o.logLevel === "Warn") warnings.push((Array.isArray(o.message) ? o.message : [o.message]).join(" "))
    })
    const store = Context.get(yield* Layer.build(FileDepot.layer(folder)), DepotStore)
    yield* store.open([depot]).pipe(Effect.provide(Logger.layer([capture])))
    return { store, warnings }
  })

/** Writes batches of these sizes into a fresh log and closes it; returns the events. */
const seed = (...sizes: ReadonlyArray<number>) =>
  Effect.scoped(
    Effect.gen(function* () {
      const { store } = yield* reopen()
      let n = 0
      for (const size of sizes)
        yield* store.append(
          depot.name,
          0,
          Array.from({ length: size }, () => req(`m${n++}`)),
        )
      return yield* store.read(depot.name, 0, 0, 1000)
    }),
  )

interface Rec {
  readonly at: number
  readonly size: number
  readonly index: number
  readonly batchSize: number
}

/** The records of a log, read by the documented framing. */
const recordsOf = (file: string): Array<Rec> => {
  const b = fs.readFileSync(file)
  const out: Array<Rec> = []
  for (let at = FileDepot.LOG_HEADER_BYTES; at + 16 <= b.length; ) {
    const size = b.readUInt32LE(at + 4) + 8
    if (at + size > b.length) break
    out.push({ at, size, batchSize: b.readUInt32LE(at + 8), index: b.readUInt32LE(at + 12) })
    at += size
  }
  return out
}

const flipByte = (file: string, position: number) => {
  const b = fs.readFileSync(file)
  b[position] = (b[position] as number) ^ 0x40
  fs.writeFileSync(file, b)
}

const logFile = () => FileDepot.logPath(dir, depot.name, 0)

describe("file depot store: torn tails", () => {
  it.effect("a last record cut short is dropped with a warning; everything before it is intact", () =>
    Effect.gen(function* () {
      const written = yield* seed(3, 2, 1)
      const file = logFile()
      const recs = recordsOf(file)
      const last = recs[5] as Rec
      fs.truncateSync(file, last.at + last.size - 5)
      yield* Effect.scoped(
        Effect.gen(function* () {
          const { store, warnings } = yield* reopen()
          expect(warnings.length).toBe(1)
          expect(warnings[0]).toContain(file)
          expect(warnings[0]).toContain(`cut ${last.size - 5} bytes`)
          expect(yield* store.head(depot.name, 0)).toBe(5)
          expect(yield* store.read(depot.name, 0, 0, 100)).toEqual(written.slice(0, 5))
          expect(yield* store.byMessageId(depot.name, "m5")).toBeUndefined()
          expect(yield* store.version(depot.name, 0, "k")).toBe(5)
          expect(fs.statSync(file).size).toBe(last.at)
          // The dropped append was never acknowledged, so its message_id may come again.
          const [again] = yield* store.append(depot.name, 0, [req("m5")])
          expect(again).toMatchObject({ duplicate: false, event: { offset: 5, version: 6 } })
          expect((yield* store.byKey(depot.name, "k", 4, 10)).map((e) => e.messageId)).toEqual(["m3", "m4", "m5"])
        }),
      )
      const { warnings } = yield* Effect.scoped(reopen())
      expect(warnings).toEqual([])
    }),
  )

  it.effect("garbage or zeros after the last record are cut off", () =>
    Effect.gen(function* () {
      const written = yield* seed(2, 2)
      const file = logFile()
      const size = fs.statSync(file).size
      for (const tail of [Buffer.from("not a record at all, just trailing bytes"), Buffer.alloc(4096)]) {
        fs.appendFileSync(file, tail)
        const { warnings } = yield* Effect.scoped(reopen())
        expect(warnings.length).toBe(1)
        expect(warnings[0]).toContain(`cut ${tail.length} bytes`)
        expect(fs.statSync(file).size).toBe(size)
      }
      const events = yield* Effect.scoped(Effect.flatMap(reopen(), ({ store }) => store.read(depot.name, 0, 0, 100)))
      expect(events).toEqual(written)
    }),
  )

  it.effect("a batch cut short at a record boundary is dropped whole: a batch is all or nothing", () =>
    Effect.gen(function* () {
      const written = yield* seed(2, 3)
      const file = logFile()
      const recs = recordsOf(file)
      fs.truncateSync(file, (recs[4] as Rec).at)
      const { store, warnings } = yield* reopen()
      expect(warnings[0]).toContain("a batch that ends after 2 of its 3 records")
      expect(warnings[0]).toContain(`from byte ${(recs[2] as Rec).at}`)
      expect(yield* store.read(depot.name, 0, 0, 100)).toEqual(written.slice(0, 2))
      expect(yield* store.byMessageId(depot.name, "m3")).toBeUndefined()
    }),
  )

  it.effect("damage inside the last batch, as lost pages after a power cut leave, drops that batch", () =>
    Effect.gen(function* () {
      const written = yield* seed(2, 3)
      const file = logFile()
      const recs = recordsOf(file)
      const hole = recs[3] as Rec
      const fd = fs.openSync(file, "r+")
      fs.writeSync(fd, Buffer.alloc(hole.size), 0, hole.size, hole.at)
      fs.closeSync(fd)
      const { store, warnings } = yield* reopen()
      expect(warnings.length).toBe(1)
      expect(yield* store.read(depot.name, 0, 0, 100)).toEqual(written.slice(0, 2))
    }),
  )
})

describe("file depot store: damage to acknowledged events", () => {
  it.effect("a bad checksum in the middle refuses to open, naming the file and byte, and changes nothing", () =>
    Effect.gen(function* () {
      yield* seed(2, 2, 2)
      const file = logFile()
      const recs = recordsOf(file)
      const bad = recs[1] as Rec
      flipByte(file, bad.at + bad.size - 3)
      const before = fs.readFileSync(file)
      const error = yield* Effect.flip(Effect.scoped(reopen()))
      expect(error.code).toBe("CORRUPT")
      expect(error.message).toContain(file)
      expect(error.message).toContain(`damaged at byte ${bad.at}`)
      expect(error.message).toContain("checksum")
      expect(error.message).toContain(`Valid events follow at byte ${(recs[2] as Rec).at}`)
      expect(error.message).toContain("Restore")
      expect(error.message).toContain(`truncate the log at byte ${(recs[0] as Rec).at}`)
      expect(fs.readFileSync(file).equals(before)).toBe(true)
    }),
  )

  it.effect("a damaged length in the middle is corruption, not a torn tail", () =>
    Effect.gen(function* () {
      yield* seed(1, 1, 1)
      const file = logFile()
      const recs = recordsOf(file)
      const b = fs.readFileSync(file)
      b.writeUInt32LE(0x7fff_0000, (recs[0] as Rec).at + 4)
      fs.writeFileSync(file, b)
      const error = yield* Effect.flip(Effect.scoped(reopen()))
      expect(error.code).toBe("CORRUPT")
      expect(error.message).toContain(`damaged at byte ${FileDepot.LOG_HEADER_BYTES}`)
      expect(error.message).toContain("runs past the end of the file")
      expect(fs.statSync(file).size).toBe(b.length)
    }),
  )

  it.effect("well-formed records in the wrong place are corruption wherever they are", () =>
    Effect.gen(function* () {
      yield* seed(2, 1)
      const file = logFile()
      const first = recordsOf(file)[0] as Rec
      // A copy of the first record at the end: valid checksum, but offset 0 again.
      fs.appendFileSync(file, fs.readFileSync(file).subarray(first.at, first.at + first.size))
      const error = yield* Effect.flip(Effect.scoped(reopen()))
      expect(error.code).toBe("CORRUPT")
      expect(error.message).toContain("offset 0 where offset 3 should follow")
    }),
  )
})

interface Line {
  readonly kind: "ack" | "dup"
  readonly messageId: string
  readonly partition: number
  readonly offset: number
}

const WRITER = path.resolve("test/depot/fixtures/crash-writer.ts")

/** Runs the writer until a random moment after it is ready, then SIGKILLs it. */
const killedRun = (run: number, resend: ReadonlyArray<string>) =>
  new Promise<{ lines: Array<Line>; output: string }>((resolve, reject) => {
    // tsx's own launcher would run the script in a grandchild that outlives the kill, so load tsx into one process.
    const child = spawn(process.execPath, ["--import", "tsx", WRITER, dir, String(run), resend.join(",")], {
      stdio: ["ignore", "pipe", "pipe"],
    })
    let out = ""
    let err = ""
    let killer: NodeJS.Timeout | undefined
    const giveUp = setTimeout(() => child.kill("SIGKILL"), 30_000)
    child.stdout.setEncoding("utf8")
    child.stderr.setEncoding("utf8")
    child.stdout.on("data", (chunk: string) => {
      out += chunk
      if (killer === undefined && /(^|\n)ready\n/.test(out))
        killer = setTimeout(() => child.kill("SIGKILL"), Math.random() * 400)
    })
    child.stderr.on("data", (chunk: string) => {
      err += chunk
    })
    child.on("close", (code, signal) => {
      clearTimeout(giveUp)
      if (killer !== undefined) clearTimeout(killer)
      if (signal !== "SIGKILL" || killer === undefined)
        return reject(new Error(`writer run ${run} ended with ${signal ?? code}, not by our kill:\n${out}\n${err}`))
      const lines: Array<Line> = []
      // The last line may be cut short by the kill.
      for (const l of out.split("\n").slice(0, -1)) {
        const [kind, messageId, partition, offset] = l.split(" ")
        if (kind === "ack" || kind === "dup")
          lines.push({ kind, messageId: messageId as string, partition: Number(partition), offset: Number(offset) })
      }
      resolve({ lines, output: out + err })
    })
  })

describe("file depot store: SIGKILL during appends", () => {
  it.effect(
    "every acknowledged event survives exactly once, offsets stay gapless, and appends continue",
    () =>
      Effect.gen(function* () {
        const acked = new Map<string, Line>()
        let cuts = 0
        let injected = 0
        for (let run = 0; run < 15; run++) {
          const known = [...acked.keys()]
          const resend = Array.from({ length: Math.min(10, known.length) }, () => {
            return known[Math.floor(Math.random() * known.length)] as string
          })
          const { lines, output } = yield* Effect.promise(() => killedRun(run, resend))
          if (output.includes("bytes off its end")) cuts++
          // SIGKILL rarely tears a write (the kernel finishes the syscall), so tear some by hand, as a power cut would.
          if (run % 4 === 3) {
            const junk = Buffer.alloc(1 + Math.floor(Math.random() * 5000), Math.floor(Math.random() * 256))
            fs.appendFileSync(FileDepot.logPath(dir, "crash", run % 2), junk)
            injected++
          }
          for (const l of lines) {
            if (l.kind === "dup") {
              // A resent id is answered with the original's position, across restarts.
              expect(acked.get(l.messageId), l.messageId).toMatchObject({ partition: l.partition, offset: l.offset })
              continue
            }
            expect(acked.has(l.messageId), `${l.messageId} acknowledged twice`).toBe(false)
            acked.set(l.messageId, l)
          }
        }
        expect(acked.size).toBeGreaterThan(0)
        expect(cuts).toBeGreaterThanOrEqual(injected)
        yield* Effect.scoped(
          Effect.gen(function* () {
            const store = Context.get(yield* Layer.build(FileDepot.layer(dir)), DepotStore)
            const crash = Depot.make({ name: "crash", partitions: 2, key: "account", events: {} })
            yield* store.open([crash])
            const seen = new Map<string, Event>()
            for (let p = 0; p < 2; p++) {
              const events: ReadonlyArray<Event> = yield* store.read("crash", p, 0, 10_000_000)
              expect(events.length).toBe(yield* store.head("crash", p))
              const versions = new Map<string, number>()
              events.forEach((e, i) => {
                expect(e.offset).toBe(i)
                expect(seen.has(e.messageId), `${e.messageId} stored twice`).toBe(false)
                seen.set(e.messageId, e)
                const v = (versions.get(e.key) ?? 0) + 1
                expect(e.version).toBe(v)
                versions.set(e.key, v)
              })
              const key = events[events.length - 1]?.key
              if (key !== undefined)
                expect(yield* store.byKey("crash", key, 1, 1_000_000)).toEqual(events.filter((e) => e.key === key))
            }
            for (const [id, l] of acked)
              expect(seen.get(id), `acknowledged ${id}`).toMatchObject({ partition: l.partition, offset: l.offset })
            // The message_id index rebuilt at open agrees with the log.
            const sample = [...acked.keys()].filter((_, i) => i % 97 === 0)
            for (const id of sample) expect(yield* store.byMessageId("crash", id)).toEqual(seen.get(id))
            const head = yield* store.head("crash", 1)
            const [next] = yield* store.append("crash", 1, [
              { messageId: "after", type: "Noted", key: "k", payload: null, time: 0 },
            ])
            expect(next).toMatchObject({ duplicate: false, event: { offset: head } })
          }),
        )
        console.log(
          `crash test: ${acked.size} acknowledged events over 15 kills; ${cuts} opens cut a torn tail (${injected} made by hand)`,
        )
      }),
    180_000,
  )
})
